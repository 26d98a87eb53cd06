"""Ingest benchmark: full-ingest wall time, realtime factor and peak RSS against the per-stage floors.

Every measurement runs in a fresh child process (so peak RSS is that of one job and models
load cold), all side by side in one run:

    .venv/bin/python bench/ingest.py ../shared/media/big_buck_bunny_full.mp4 ../shared/media/talk.wav

  ingest   `vidx ingest FILE --json` into an empty data directory (wall, RSS, in-process stage timings)
  decode   the decode stage alone: one ffmpeg process, frames at feature_fps plus scdet cuts
  asr      transcription alone (faster-whisper tiny.en, VAD on, word timestamps)
  backbone EfficientNet-Lite0 alone on the file's sampled frames (decoded beforehand, not timed)

The floors exclude model loading; the ingest's `pipeline_s` (hash + probe + analyse + embed + write,
from its own timings) is what is compared with their sum.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(args: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a child; return (wall seconds, peak RSS in MiB, stdout)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode not in (0,):
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {text[-500:]}")
    return wall, usage.ru_maxrss // 1024, text


def floor(kind: str, path: Path) -> dict[str, float]:
    """One floor measured in this process (called in a child)."""
    import numpy as np

    from indexer.decode import VideoDecoder
    from indexer.backbone import FrameEncoder
    from indexer.probe import probe
    from indexer.transcribe import TranscribeOptions, iter_segments

    info = probe(path)
    if kind == "decode":
        if not info.has_video:
            return {"seconds": 0.0, "frames": 0}
        t0 = time.perf_counter()
        with VideoDecoder(path, fps=1.0, short_side=224) as dec:
            n = sum(1 for _ in dec)
        return {"seconds": time.perf_counter() - t0, "frames": n}
    if kind == "asr":
        if not info.has_audio:
            return {"seconds": 0.0, "segments": 0}
        cache = Path(tempfile.mkdtemp())
        options = TranscribeOptions()
        from indexer.transcribe import load_whisper

        load_whisper(options.model, cache, options.device, options.cpu_threads)
        t0 = time.perf_counter()
        stream, _ = iter_segments(path, options, cache)
        n = sum(1 for _ in stream)
        return {"seconds": time.perf_counter() - t0, "segments": n}
    if kind == "backbone":
        if not info.has_video:
            return {"seconds": 0.0, "frames": 0}
        with VideoDecoder(path, fps=1.0, short_side=224) as dec:
            frames = [f.rgb for f in dec]
        encoder = FrameEncoder(batch_size=16)
        encoder.encode(np.stack(frames[:2]))  # load and warm up outside the timing
        t0 = time.perf_counter()
        for i in range(0, len(frames), 16):
            encoder.encode(np.stack(frames[i : i + 16]))
        return {"seconds": time.perf_counter() - t0, "frames": len(frames)}
    raise ValueError(f"expected decode, asr or backbone, got {kind!r}")


def measure(path: Path, repeat: int) -> dict[str, object]:
    py = sys.executable
    rows: dict[str, list[float]] = {"ingest_wall": [], "pipeline": [], "rss": [], "decode": [], "asr": [], "backbone": []}
    stages: dict[str, float] = {}
    duration = 0.0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as data:
            env = dict(os.environ, VIDX_DATA_DIR=data)
            wall, rss, text = _child([py, "-m", "vidx", "ingest", str(path), "--json"], env)
            result = json.loads(text.strip().splitlines()[-1])
            if result["status"] != "indexed":
                raise RuntimeError(f"ingest of {path} ended {result['status']}: {result['reason']}")
            t = result["timings"]
            duration = result["duration"]
            rows["ingest_wall"].append(wall)
            rows["rss"].append(rss)
            rows["pipeline"].append(sum(t.get(k, 0.0) for k in ("hash", "probe", "analyse", "embed", "write")))
            stages = t
        for kind in ("decode", "asr", "backbone"):
            _, _, text = _child([py, __file__, "--floor", kind, str(path)])
            rows[kind].append(json.loads(text)["seconds"])
    med = {k: statistics.median(v) for k, v in rows.items()}
    floors = med["decode"] + med["asr"] + med["backbone"]
    return {
        "file": path.name,
        "duration_s": round(duration, 1),
        "ingest_wall_s": round(med["ingest_wall"], 2),
        "pipeline_s": round(med["pipeline"], 2),
        "realtime_factor": round(duration / med["ingest_wall"], 1),
        "pipeline_realtime_factor": round(duration / med["pipeline"], 1),
        "peak_rss_mib": int(med["rss"]),
        "floor_decode_s": round(med["decode"], 2),
        "floor_asr_s": round(med["asr"], 2),
        "floor_backbone_s": round(med["backbone"], 2),
        "floors_sum_s": round(floors, 2),
        "pipeline_over_floors": round(med["pipeline"] / floors, 2) if floors else None,
        "last_stage_timings": {k: round(v, 2) for k, v in stages.items()},
        "repeat": repeat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; medians are reported")
    parser.add_argument("--floor", choices=["decode", "asr", "backbone"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        sys.path.insert(0, str(REPO))
        print(json.dumps(floor(args.floor, args.files[0])))
        return
    if not args.files:
        parser.error("give at least one media file")
    print(f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}", file=sys.stderr)
    for path in args.files:
        print(json.dumps(measure(path.resolve(), args.repeat)), flush=True)


if __name__ == "__main__":
    main()
