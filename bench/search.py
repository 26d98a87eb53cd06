"""Hybrid search latency on the embedded default (SQLite + FAISS + BM25) at 10k, 100k and 1M synthetic clips.

    .venv/bin/python bench/search.py --sizes 10000,100000,1000000 --queries 200

Each size gets a fresh data directory holding a real catalog (media, clips and one transcript
segment per clip), a FAISS index with random unit `speech` and `visual` vectors, and a BM25 view
over text drawn from the real transcripts of ../shared/media (phone_call.stm, librivox). The
queries are 2-6 word phrases cut from the same sentences, so the lexical source has work to do.
The engine is the one `vidx search` runs, query embedding included. Prints one JSON line per size:
p50/p95 of the full hybrid search and of each stage, build times, and the process's RSS.
FAISS-alone and Qdrant-alone latencies and HNSW recall come from bench/search_index.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MEDIA = REPO.parent / "shared" / "media"
CLIPS_PER_MEDIA = 400


def sentences() -> list[str]:
    pool: list[str] = []
    stm = MEDIA / "phone_call.stm"
    if stm.is_file():
        for line in stm.read_text().splitlines():
            parts = line.split(maxsplit=6)
            if len(parts) == 7 and not parts[6].startswith("<"):
                pool.append(parts[6])
            elif len(parts) == 7:
                pool.append(parts[6].split(">", 1)[-1].strip())
    for txt in sorted((MEDIA / "librivox").glob("*.txt")):
        pool.append(txt.read_text().strip())
    pool = [p for p in pool if len(p.split()) >= 3]
    if not pool:
        raise ValueError(f"expected transcripts under {MEDIA}")
    return pool


def cut_queries(pool: list[str], n: int, seed: int) -> list[str]:
    """``n`` queries of 2-6 consecutive words cut from the sentences of ``pool``."""
    rnd = random.Random(seed)
    queries = []
    for _ in range(n):
        words = rnd.choice(pool).split()
        k = rnd.randint(2, min(6, len(words)))
        lo = rnd.randint(0, len(words) - k)
        queries.append(" ".join(words[lo : lo + k]))
    return queries


def build(data: Path, n: int, rng: np.random.Generator, pool: list[str]) -> dict[str, float]:
    from sqlalchemy import insert

    from indexer.embed import EMBEDDING_VERSION
    from store.catalog import Clip, Media, TranscriptSegment
    from store.vectors import Point, point_id
    from vidx.app import App
    from vidx.settings import Settings

    timings: dict[str, float] = {}
    app = App(Settings(data_dir=data))
    n_media = max(1, n // CLIPS_PER_MEDIA)
    texts = [pool[i] for i in rng.integers(0, len(pool), size=n)]
    t = time.perf_counter()
    with app.catalog.engine.begin() as conn:
        conn.execute(insert(Media), [
            {"id": m + 1, "path": f"/synthetic/media_{m:06d}.mp4", "content_hash": f"{m:064x}", "duration": CLIPS_PER_MEDIA * 1.5,
             "has_video": True, "has_audio": True, "status": "indexed", "clip_count": CLIPS_PER_MEDIA,
             "segment_count": CLIPS_PER_MEDIA, "synced_version": EMBEDDING_VERSION}
            for m in range(n_media)
        ])
        batch = 50_000
        for lo in range(0, n, batch):
            rows = range(lo, min(n, lo + batch))
            conn.execute(insert(Clip), [
                {"media_id": i // CLIPS_PER_MEDIA + 1, "clip_index": i % CLIPS_PER_MEDIA, "start": (i % CLIPS_PER_MEDIA) * 1.5,
                 "end": (i % CLIPS_PER_MEDIA) * 1.5 + 1.5, "shot": 0, "frame_count": 1}
                for i in rows
            ])
            conn.execute(insert(TranscriptSegment), [
                {"media_id": i // CLIPS_PER_MEDIA + 1, "segment_index": i % CLIPS_PER_MEDIA, "start": (i % CLIPS_PER_MEDIA) * 1.5,
                 "end": (i % CLIPS_PER_MEDIA) * 1.5 + 1.5, "text": texts[i], "words": []}
                for i in rows
            ])
    timings["catalog_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ids = [point_id(f"{i // CLIPS_PER_MEDIA:064x}", i % CLIPS_PER_MEDIA, EMBEDDING_VERSION) for i in range(n)]
    app.lexical.build(ids, [i // CLIPS_PER_MEDIA + 1 for i in range(n)], [i % CLIPS_PER_MEDIA for i in range(n)], texts)
    timings["lexical_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with app.vectors() as vectors:
        batch = 20_000
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            vecs = {}
            for name in ("speech", "visual"):
                v = rng.standard_normal((hi - lo, 384), dtype=np.float32)
                vecs[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
            vectors.upsert([
                Point(ids[i], {"speech": vecs["speech"][i - lo], "visual": vecs["visual"][i - lo]},
                      {"media_id": i // CLIPS_PER_MEDIA + 1, "clip_index": i % CLIPS_PER_MEDIA,
                       "start": (i % CLIPS_PER_MEDIA) * 1.5, "end": (i % CLIPS_PER_MEDIA) * 1.5 + 1.5, "has_speech": True})
                for i in range(lo, hi)
            ])
        vectors.flush()
    timings["vectors_s"] = time.perf_counter() - t
    return timings


def measure(data: Path, queries: list[str]) -> dict[str, object]:
    from vidx.app import App
    from vidx.settings import Settings

    app = App(Settings(data_dir=data))
    totals: list[float] = []
    stages: dict[str, list[float]] = {}
    with app.vectors(read_only=True) as vectors:
        engine = app.engine(vectors)
        for q in queries[:5]:  # warm-up: model load, index load, page cache
            engine.search(q)
        empty = 0
        for q in queries:
            t = time.perf_counter()
            found = engine.search(q)
            totals.append(time.perf_counter() - t)
            empty += not found
            for k, v in engine.last_timings.items():
                stages.setdefault(k, []).append(v)

    def pct(xs: list[float], p: float) -> float:
        return round(float(np.percentile(np.asarray(xs) * 1000, p)), 2)

    return {
        "hybrid_p50_ms": pct(totals, 50),
        "hybrid_p95_ms": pct(totals, 95),
        "stage_p50_ms": {k: pct(v, 50) for k, v in stages.items()},
        "queries": len(queries),
        "empty_results": empty,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None,
                        help="build each size under KEEP/<size> and keep it; a size already built there is reused "
                             "(the 1M HNSW build takes most of an hour on 2 cores, the measurement a minute)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    pool = sentences()
    queries = cut_queries(pool, args.queries, args.seed)
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}", file=sys.stderr)
    for size in (int(s) for s in args.sizes.split(",")):
        with contextlib.ExitStack() as stack:
            if args.keep is None:
                data = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"vidx-bench-{size}-")))
            else:
                data = args.keep / str(size)
            marker = data / "bench-built.json"
            if marker.is_file():
                built = json.loads(marker.read_text())
                print(f"# reusing the {size:,}-clip library in {data}", file=sys.stderr)
            else:
                if data.exists():
                    shutil.rmtree(data)  # a build that did not finish
                data.mkdir(parents=True)
                built = build(data, size, np.random.default_rng(args.seed), pool)
                marker.write_text(json.dumps(built))
            result = {"clips": size, **{k: round(v, 1) for k, v in built.items()}, **measure(data, queries)}
            result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
