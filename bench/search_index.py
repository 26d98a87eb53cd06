"""Vector index benchmark: query latency, recall@10, build time and memory of each backend by size.

    .venv/bin/python bench/search_index.py --sizes 10000,100000 --table

Each configuration (backend x size x data) runs in a fresh child process, so its RSS delta is that
of one index, and is capped (``--max-seconds`` for the fill; the child is killed at
``--kill-after`` x that). Configurations:

  faiss-exact  FaissIndex forced exact (IndexFlatIP) at every size
  faiss-hnsw   FaissIndex forced HNSW (fp16 storage, M=32, ef_construction=40, default ef_search:
               256 * (N / 100k) ** 0.4 in [128, 1024], reported as "ef")
  faiss        FaissIndex with its defaults (exact below hnsw_threshold=20,000, HNSW above)
  qdrant       QdrantIndex in local mode (QdrantClient(path=...))

Data: N points with a "speech" and a "visual" 384-d vector each, payload media_id = i // 400,
clip_index = i % 400, has_speech = i % 3 != 0.

  uniform     random normalised vectors (no structure: the worst case for any ANN index, since
              all neighbours are nearly equidistant)
  clustered   embedding-like: a 48-d latent subspace, clips of a media correlated (shared media
              direction), small isotropic noise

``--data`` applies to the HNSW configurations (where the data decides recall); exact and Qdrant
(brute force in local mode) run on the first kind only. Queries on "speech", limit 10: half are
perturbed copies of stored vectors (cosine about 0.9 to the original), half random draws from
the same distribution. Recall@10 is against numpy brute force over all stored vectors.
Latency: one query per call, after 10 warm-up queries; filtered latency for a selective filter
(5 random media, 2,000 points) and a broad one (has_speech=True, 2/3 of points), each capped at
``--filter-seconds``. Memory: the child's RSS after fill, build, flush and queries minus its RSS
before the index was opened (data chunks are generated and freed on the way), plus FAISS's own
accounting and the size on disk. Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 384
CHUNK = 10_000  # points per generated chunk: 25 media of 400 clips
PER_MEDIA = 400
NAMES = ("speech", "visual")
N_QUERIES = 200
SEED = 1234


# --- synthetic data (deterministic per chunk, so ground truth can regenerate it) -----------------


def _norm(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _basis(name_i: int) -> np.ndarray:
    rng = np.random.default_rng([SEED, name_i, 999])
    return np.linalg.qr(rng.standard_normal((DIM, 48)))[0].T.astype(np.float32)  # (48, DIM)


def chunk_vectors(data: str, name_i: int, c: int, n: int) -> np.ndarray:
    """Vectors of points [c*CHUNK, c*CHUNK + n) for vector name ``name_i``."""
    rng = np.random.default_rng([SEED, name_i, c])
    if data == "uniform":
        return _norm(rng.standard_normal((n, DIM), dtype=np.float32))
    media = rng.standard_normal((CHUNK // PER_MEDIA, 48), dtype=np.float32)
    z = 0.8 * media[np.arange(n) // PER_MEDIA] + rng.standard_normal((n, 48), dtype=np.float32)
    return _norm(z @ _basis(name_i) + 0.02 * rng.standard_normal((n, DIM), dtype=np.float32))


def queries(data: str, size: int) -> np.ndarray:
    """Half perturbed copies of stored "speech" vectors, half fresh draws."""
    rng = np.random.default_rng([SEED, 7])
    half = N_QUERIES // 2
    src = np.sort(rng.integers(0, size, half))
    stored = np.stack([chunk_vectors(data, 0, i // CHUNK, min(CHUNK, size - (i // CHUNK) * CHUNK))[i % CHUNK] for i in src])
    noise = _norm(rng.standard_normal((half, DIM), dtype=np.float32))
    pert = _norm(stored + 0.5 * noise)
    if data == "uniform":
        fresh = _norm(rng.standard_normal((half, DIM), dtype=np.float32))
    else:
        fresh = _norm(rng.standard_normal((half, 48), dtype=np.float32) @ _basis(0))
    return np.vstack([pert, fresh])


def ground_truth(data: str, size: int, q: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k point indexes on "speech" by chunked brute force."""
    best_s = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for c in range(0, (size + CHUNK - 1) // CHUNK):
        n = min(CHUNK, size - c * CHUNK)
        s = q @ chunk_vectors(data, 0, c, n).T
        s_all = np.hstack([best_s, s])
        i_all = np.hstack([best_i, c * CHUNK + np.arange(n)[None, :].repeat(len(q), 0)])
        top = np.argpartition(-s_all, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(s_all, top, 1), np.take_along_axis(i_all, top, 1)
    return best_i


# --- the child: one configuration ----------------------------------------------------------------


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def progress(**kw: Any) -> None:
    print(json.dumps(kw), file=sys.stderr, flush=True)


def pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(xs, p)) * 1e3, 3) if xs else float("nan")


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from store.vectors import FaissIndex, Filter, Point, QdrantIndex, point_id

    backend, size, data = cfg["backend"], cfg["size"], cfg["data"]
    cap = cfg["max_seconds"]
    names = tuple(cfg.get("names") or NAMES)
    dims = {name: DIM for name in names}
    work = Path(cfg["workdir"])
    out: dict[str, Any] = {"backend": backend, "size": size, "data": data, "dim": DIM, "names": list(names)}
    q = queries(data, size)
    rss0 = rss_mib()
    if backend == "qdrant":
        idx = QdrantIndex(dims, path=work / "qdrant")
    else:
        threshold = {"faiss-exact": 10**12, "faiss-hnsw": 1, "faiss": 20_000}[backend]
        idx = FaissIndex(work / "faiss", dims, hnsw_threshold=threshold, threads=cfg["threads"])
        out.update(hnsw_m=idx.policy.hnsw_m, ef_construction=idx.policy.ef_construction,
                   hnsw_threshold=idx.policy.hnsw_threshold, threads=cfg["threads"])

    # fill
    t0 = time.perf_counter()
    filled = 0
    for c in range(0, (size + CHUNK - 1) // CHUNK):
        n = min(CHUNK, size - c * CHUNK)
        vecs = [chunk_vectors(data, NAMES.index(name), c, n) for name in names]
        points = []
        for j in range(n):
            i = c * CHUNK + j
            payload = {"media_id": i // PER_MEDIA, "clip_index": i % PER_MEDIA, "start": 2.0 * (i % PER_MEDIA),
                       "end": 2.0 * (i % PER_MEDIA) + 2.0, "has_speech": i % 3 != 0}
            points.append(Point(point_id(f"{i // PER_MEDIA:016x}", i % PER_MEDIA, "bench"),
                                {name: vecs[k][j] for k, name in enumerate(names)}, payload))
        idx.upsert(points)
        filled += n
        del points, vecs
        elapsed = time.perf_counter() - t0
        progress(phase="fill", filled=filled, seconds=round(elapsed, 1))
        if elapsed > cap and filled < size:
            rate = filled / elapsed
            out["skipped"] = (f"fill capped by --max-seconds={cap}: {filled} of {size} points in {elapsed:.0f} s "
                              f"({rate:.0f} points/s); a full fill would take about {size / rate:.0f} s "
                              "at that rate (more if it slows down); measured on the partial fill")
            break
    out["filled"] = filled
    out["insert_s"] = round(time.perf_counter() - t0, 2)
    out["insert_points_per_s"] = round(filled / max(out["insert_s"], 1e-9))

    # build (FAISS builds HNSW lazily: stats() settles both names) and flush
    progress(phase="build")
    t = time.perf_counter()
    stats = idx.stats() if hasattr(idx, "stats") else None
    out["build_s"] = round(time.perf_counter() - t, 2)
    progress(phase="flush")
    t = time.perf_counter()
    idx.flush()
    out["flush_s"] = round(time.perf_counter() - t, 2)
    if stats:
        out["kind"] = stats["speech"]["kind"]
        if out["kind"] == "hnsw":
            out["ef"] = idx.policy.ef_for(stats["speech"]["vectors"])
        out["index_mib"] = round(sum(stats[n]["vector_bytes"] + stats[n]["graph_bytes"] for n in names) / 2**20, 1)

    # latency, one query per call
    progress(phase="queries")
    for i in range(10):
        idx.search("speech", q[i], 10)
    lat, results = [], []
    for row in q:
        t = time.perf_counter()
        hits = idx.search("speech", row, 10)
        lat.append(time.perf_counter() - t)
        results.append(hits)
    out["p50_ms"], out["p95_ms"] = pct(lat, 50), pct(lat, 95)
    rng = np.random.default_rng([SEED, 11])
    n_media = max(1, filled // PER_MEDIA)
    for label, make in (
        ("media5", lambda: Filter(media_ids=frozenset(rng.choice(n_media, min(5, n_media), replace=False).tolist()))),
        ("speech", lambda: Filter(has_speech=True)),
    ):
        lat_f: list[float] = []
        t_end = time.perf_counter() + cfg["filter_seconds"]
        for row in q:
            f = make()
            t = time.perf_counter()
            hits = idx.search("speech", row, 10, f)
            lat_f.append(time.perf_counter() - t)
            assert len(hits) == 10, (label, len(hits))
            if time.perf_counter() > t_end:
                break
        out[f"filter_{label}_p50_ms"], out[f"filter_{label}_p95_ms"] = pct(lat_f, 50), pct(lat_f, 95)
        out[f"filter_{label}_queries"] = len(lat_f)

    # recall@10 against brute force over what was stored
    progress(phase="ground truth")
    gt = ground_truth(data, filled, q)
    ids_of = {}
    for row_ids in gt:
        for i in row_ids.tolist():
            ids_of[i] = point_id(f"{i // PER_MEDIA:016x}", i % PER_MEDIA, "bench")
    rec = [len({ids_of[i] for i in want.tolist()} & {h.id for h in got}) / 10 for want, got in zip(gt, results)]
    half = len(q) // 2
    out["recall10"] = round(float(np.mean(rec)), 4)
    out["recall10_perturbed"] = round(float(np.mean(rec[:half])), 4)
    out["recall10_random"] = round(float(np.mean(rec[half:])), 4)

    out["rss_delta_mib"] = round(rss_mib() - rss0, 1)
    idx.close()
    out["disk_mib"] = round(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 2**20, 1)
    return out


# --- the parent ---------------------------------------------------------------------------------


def run_child(cfg: dict[str, Any], kill_after: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vidx-bench-", dir=cfg.get("tmp")) as work:
        cfg = {**cfg, "workdir": work}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            stdout, stderr = proc.communicate(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            last = [ln for ln in stderr.splitlines() if ln.startswith("{")]
            return {"backend": cfg["backend"], "size": cfg["size"], "data": cfg["data"],
                    "skipped": f"killed after {time.perf_counter() - t0:.0f} s (--kill-after); last progress: "
                               f"{last[-1] if last else 'none'}"}
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            return {"backend": cfg["backend"], "size": cfg["size"], "data": cfg["data"],
                    "error": f"exit {proc.returncode}: {stderr.strip()[-800:]}"}
        res = json.loads(lines[-1])
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        return res


TABLE_COLS = [
    ("backend", "backend"), ("size", "N"), ("data", "data"), ("names", "names"), ("filled", "filled"),
    ("kind", "kind"), ("ef", "ef"),
    ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("filter_media5_p50_ms", "media5 p50"),
    ("filter_speech_p50_ms", "speech p50"), ("recall10", "recall@10"), ("recall10_perturbed", "r@10 pert"),
    ("recall10_random", "r@10 rand"), ("insert_s", "insert s"), ("build_s", "build s"), ("flush_s", "flush s"),
    ("rss_delta_mib", "RSS MiB"), ("index_mib", "index MiB"), ("disk_mib", "disk MiB"),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h in TABLE_COLS) + " |", "|" + "---|" * len(TABLE_COLS)]
    for r in rows:
        cells = [r.get(k, "-") for k, _ in TABLE_COLS]
        lines.append("| " + " | ".join("+".join(c) if isinstance(c, list) else str(c) for c in cells) + " |")
    notes = [f"* {r['backend']} {r['size']} {r['data']}: {r.get('skipped') or r.get('error')}"
             for r in rows if r.get("skipped") or r.get("error")]
    return "\n".join(lines + notes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--backends", default="faiss-exact,faiss-hnsw,qdrant")
    ap.add_argument("--data", default="clustered,uniform", help="data kinds for the HNSW configurations")
    ap.add_argument("--max-seconds", type=float, default=300, help="cap on each configuration's fill")
    ap.add_argument("--kill-after", type=float, default=4.0, help="kill a child after this many x --max-seconds")
    ap.add_argument("--filter-seconds", type=float, default=20)
    ap.add_argument("--names", default=",".join(NAMES), help="vector names to fill (speech is always queried)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="FAISS OpenMP threads (build)")
    ap.add_argument("--tmp", default=None, help="directory for the indexes (default: system temp)")
    ap.add_argument("--table", action="store_true", help="print a markdown table at the end (stderr)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_config(json.loads(args.child))), flush=True)
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    datas = [d for d in args.data.split(",") if d]
    if "speech" not in args.names.split(",") or not set(args.names.split(",")) <= set(NAMES):
        ap.error(f"--names must include speech and be among {NAMES}")
    for d in datas:
        if d not in ("uniform", "clustered"):
            ap.error(f"unknown data kind {d!r}")
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                      "load_avg": os.getloadavg(), "argv": sys.argv[1:]}), flush=True)
    rows = []
    for size in sizes:
        for backend in args.backends.split(","):
            for data in datas if "hnsw" in backend or backend == "faiss" else datas[:1]:
                cfg = {"backend": backend, "size": size, "data": data, "max_seconds": args.max_seconds,
                       "filter_seconds": args.filter_seconds, "threads": args.threads, "tmp": args.tmp,
                       "names": [n for n in args.names.split(",") if n]}
                res = run_child(cfg, args.max_seconds * args.kill_after + 60)
                res["load_avg_1m"] = round(os.getloadavg()[0], 2)
                rows.append(res)
                print(json.dumps(res), flush=True)
    if args.table:
        print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    main()
