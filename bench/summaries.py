"""Summary speed: chapters and summary of a long file from stored features (warm and cold), and the overview of a synthetic library.

    .venv/bin/python bench/summaries.py ../shared/media/big_buck_bunny_full.mp4 --speech ../shared/media/talk.wav

  warm      `Summarizer.summarize` + the catalog write for one file, models loaded (median of --runs)
  cold      `vidx chapters --recompute FILE` in a fresh process (median of --runs), model loading included
  overview  `library_overview` over a synthetic catalog of --files files x --chapters chapters (median of --runs)

``--speech WAV`` also makes a ~10-minute spoken file by repeating WAV (ffmpeg), so the text side
(sentence embeddings, keyphrases, summaries) is measured on speech as long as the video.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _long_speech(wav: Path, seconds: float, out: Path) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(wav), "-t", str(seconds),
                    "-ac", "1", "-ar", "16000", str(out)], check=True)
    return out


def _vidx(args: list[str], data_dir: Path) -> float:
    env = dict(os.environ, VIDX_DATA_DIR=str(data_dir))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vidx", *args], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def bench_files(files: list[Path], data_dir: Path, runs: int) -> list[dict[str, object]]:
    from indexer.summaries import load_file, summarize_media
    from store.queries import resolve_media
    from vidx.app import App
    from vidx.settings import Settings

    if not (data_dir / "catalog.sqlite").exists():
        _vidx(["ingest", *map(str, files)], data_dir)
    vapp = App(Settings(data_dir=data_dir))
    summarizer = vapp.summarizer()
    _ = summarizer.encoder  # loaded once, as in a worker
    rows = []
    for path in files:
        media = resolve_media(vapp.catalog, str(path), indexed_only=True)
        summarize_media(vapp.catalog, vapp.store, summarizer, media.id)  # warm-up: first-call allocations
        warm, load = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            load_file(vapp.catalog, vapp.store, media.id)
            load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            chapters = summarize_media(vapp.catalog, vapp.store, summarizer, media.id)
            warm.append(time.perf_counter() - t0)
        cold = [_vidx(["chapters", "--recompute", str(media.id)], data_dir) for _ in range(runs)]
        rows.append({"file": path.name, "duration_s": round(float(media.duration or 0), 1), "chapters": chapters,
                     "segments": media.segment_count, "warm_s": round(statistics.median(warm), 3),
                     "load_s": round(statistics.median(load), 3), "cold_s": round(statistics.median(cold), 2)})
    return rows


def synthetic_library(data_dir: Path, files: int, chapters: int, seed: int = 0) -> None:
    """A catalog of ``files`` indexed files with ``chapters`` chapters each, vectors drawn around 30 topics."""
    import migrations
    from store.catalog import Catalog, Chapter, FileSummary, Media, MediaStatus, utcnow

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, 384)).astype(np.float32)
    words = [f"word{i}" for i in range(300)]
    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    migrations.upgrade(catalog.engine)
    now = utcnow()
    with catalog.session() as session:
        for f in range(files):
            media = Media(path=f"/library/file{f:05d}.mp4", status=MediaStatus.INDEXED, duration=600.0, language="en",
                          content_hash=f"{f:064x}", indexed_at=now)
            session.add(media)
            session.flush()
            for c in range(chapters):
                t = int(rng.integers(30))
                v = centres[t] + 0.6 * rng.standard_normal(384).astype(np.float32)
                v /= np.linalg.norm(v)
                session.add(Chapter(media_id=media.id, chapter_index=c, start=c * 60.0, end=(c + 1) * 60.0,
                                    title=f"Topic {t}", keywords=[words[t * 10 + int(k)] for k in rng.integers(0, 10, 4)],
                                    summary="", source="speech", speech_share=1.0, score=0.0,
                                    vector=v.astype(np.float16).tobytes()))
            session.add(FileSummary(media_id=media.id, version="synthetic", summary="", speech_seconds=500.0,
                                    speech_share=0.83, computed_at=now))
    catalog.dispose()


def bench_overview(files: int, chapters: int, runs: int, tmp: Path) -> dict[str, object]:
    from search.overview import library_overview
    from store.catalog import Catalog

    data_dir = tmp / "synthetic"
    data_dir.mkdir()
    synthetic_library(data_dir, files, chapters)
    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    times = []
    overview = None
    for _ in range(runs):
        t0 = time.perf_counter()
        overview = library_overview(catalog)
        times.append(time.perf_counter() - t0)
    assert overview is not None
    return {"files": files, "chapters": files * chapters, "topics": len(overview.topics),
            "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--speech", type=Path, help="a spoken WAV repeated into a ~10-minute file")
    ap.add_argument("--speech-seconds", type=float, default=600.0)
    ap.add_argument("--data-dir", type=Path, help="keep the ingested library here (reused when it exists)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--overview-files", type=int, default=1000)
    ap.add_argument("--overview-chapters", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vidx-bench-summaries-") as tmp_name:
        tmp = Path(tmp_name)
        files = [p.resolve() for p in args.files]
        if args.speech:
            # Beside a kept data directory, so a rerun finds the same file already indexed.
            home = args.data_dir.parent if args.data_dir else tmp
            home.mkdir(parents=True, exist_ok=True)
            target = home / "speech_10min.wav"
            files.append(target if target.is_file() else _long_speech(args.speech, args.speech_seconds, target))
        data_dir = args.data_dir or tmp / "data"
        result = {
            "machine": f"{platform.node()} {os.cpu_count()} cores", "when": datetime.now(timezone.utc).isoformat(timespec="minutes"),
            "load": os.getloadavg()[0],
            "files": bench_files(files, data_dir, args.runs) if files else [],
            "overview": bench_overview(args.overview_files, args.overview_chapters, args.runs, tmp),
        }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['machine']}, {result['when']}, load {result['load']:.2f}")
    print("| file | length | segments | chapters | warm (models loaded) | of which loading arrays | cold process |")
    print("|---|---|---|---|---|---|---|")
    for r in result["files"]:
        print(f"| {r['file']} | {r['duration_s']} s | {r['segments']} | {r['chapters']} | {r['warm_s']} s | {r['load_s']} s | {r['cold_s']} s |")
    o = result["overview"]
    print(f"\noverview of {o['files']} files / {o['chapters']} chapters: {o['median_s']} s median "
          f"(max {o['max_s']} s), {o['topics']} topics")


if __name__ == "__main__":
    main()
