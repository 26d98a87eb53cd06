"""Start-up time and peak memory of the light commands, this tree against an earlier commit, side by side.

    .venv/bin/python bench/startup.py --before a349a8b --runs 5 [--warm]

Builds one synthetic library of about 10k clips (bench/search.py's builder: a real catalog, FAISS
index and BM25 view, every file marked synced), then runs each command as a fresh process, the
earlier commit's and this tree's turn about, and reports the median wall time and peak RSS of
`vidx --help`, `vidx ls`, a cold `vidx search` and, as the reference, `python -c "import torch"`.
The earlier commit is checked out with `git worktree` and run by the same interpreter and packages
(its tree first on PYTHONPATH). ``--warm`` also runs bench/search.py (the warm search latency at
10k clips) in both trees. Prints one JSON line per command and side, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
QUERY = "they call me a yankee down here"


def build_library(data: Path, clips: int) -> None:
    """bench/search.py's synthetic library, every file marked as synced (so no search pre-syncs)."""
    import numpy as np
    from sqlalchemy import update

    from bench.search import build, sentences
    from store.catalog import Media, utcnow
    from vidx.app import App
    from vidx.settings import Settings

    build(data, clips, np.random.default_rng(0), sentences())
    app = App(Settings(data_dir=data))
    now = utcnow()
    with app.catalog.session() as session:
        session.execute(update(Media).values(indexed_at=now, synced_at=now))
    app.catalog.dispose()


def run_once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one fresh process.

    The peak RSS of a child starts from its parent's at the fork (Linux keeps the high-water mark
    across exec), so this process stays small: the library is built by a child of its own.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err[-800:]}")
    return wall, usage.ru_maxrss / 1024


def commands(python: str) -> dict[str, list[str]]:
    return {
        "vidx --help": [python, "-m", "vidx", "--help"],
        "vidx ls": [python, "-m", "vidx", "ls"],
        "vidx search (cold)": [python, "-m", "vidx", "search", QUERY, "--limit", "3"],
        'python -c "import torch"': [python, "-c", "import torch"],
    }


def time_ingest(path: Path, sides: dict[str, tuple[Path, dict[str, str]]], tmp: Path, runs: int) -> list[dict[str, object]]:
    """`vidx ingest FILE` into a fresh data directory per run, the two trees turn about; medians and realtime factor."""
    import av  # the duration, for the realtime factor

    with av.open(str(path)) as container:
        duration = float(container.duration or 0) / 1e6
    samples: dict[str, list[tuple[float, float]]] = {}
    for i in range(runs):
        for side, (tree, env) in sides.items():
            data = tmp / f"ingest-{side}-{i}"
            argv = [sys.executable, "-m", "vidx", "ingest", str(path), "--json"]
            samples.setdefault(side, []).append(run_once(argv, dict(env, VIDX_DATA_DIR=str(data)), tree))
    rows = []
    for side, runs_ in samples.items():
        wall = statistics.median(r[0] for r in runs_)
        rows.append({"command": f"vidx ingest {path.name}", "side": side, "runs": len(runs_), "wall_s_median": round(wall, 2),
                     "rss_mib_median": round(statistics.median(r[1] for r in runs_), 1),
                     "realtime_factor": round(duration / wall, 1) if wall else None})
    return rows


def warm_search(tree: Path, env: dict[str, str], queries: int) -> dict[str, object]:
    proc = subprocess.run([sys.executable, str(tree / "bench" / "search.py"), "--sizes", "10000", "--queries", str(queries)],
                          env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="a349a8b", help="The earlier commit to compare with.")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--warm", action="store_true", help="Also bench/search.py at 10k clips in both trees.")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ingest", type=Path, help="Also time `vidx ingest FILE` (fresh data dir each run) in both trees.")
    parser.add_argument("--build-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_only is not None:
        build_library(args.build_only, args.clips)
        return

    with tempfile.TemporaryDirectory(prefix="vidx-startup-") as tmp_s:
        tmp = Path(tmp_s)
        before = tmp / "before"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before],
                       check=True, capture_output=True)
        if (REPO.parent / "shared").is_dir():  # the earlier tree's benches look for ../shared/media beside it
            (tmp / "shared").symlink_to(REPO.parent / "shared")
        try:
            # Built by the earlier tree, then copied: this tree migrates its copy forward (a newer
            # schema revision), and the earlier tree could not open a catalog it has never heard of.
            data, data_after = tmp / "data", tmp / "data-after"
            base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            subprocess.run([sys.executable, str(before / "bench" / "startup.py"), "--clips", str(args.clips),
                            "--build-only", str(data)], check=True, cwd=before, env=dict(base, PYTHONPATH=str(before)))
            shutil.copytree(data, data_after)
            sides = {
                "before": (before, dict(base, VIDX_DATA_DIR=str(data), PYTHONPATH=str(before))),
                "after": (REPO, dict(base, VIDX_DATA_DIR=str(data_after), PYTHONPATH=str(REPO))),
            }
            for tree, env in sides.values():  # warm the page cache and any one-time export, then measure
                run_once(commands(sys.executable)["vidx search (cold)"], env, tree)
            samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for _ in range(args.runs):
                for name, argv in commands(sys.executable).items():
                    for side, (tree, env) in sides.items():  # turn about: a load spike hits both sides alike
                        samples.setdefault((name, side), []).append(run_once(argv, env, tree))
            rows = []
            for (name, side), runs in samples.items():
                row = {"command": name, "side": side, "runs": len(runs),
                       "wall_s_median": round(statistics.median(r[0] for r in runs), 3),
                       "rss_mib_median": round(statistics.median(r[1] for r in runs), 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if args.ingest is not None:
                ingest_rows = time_ingest(args.ingest.resolve(), sides, tmp, args.runs)
                rows += ingest_rows
                for row in ingest_rows:
                    print(json.dumps(row), flush=True)
            warm = {}
            if args.warm:
                for side, (tree, env) in sides.items():
                    warm[side] = warm_search(tree, env, args.queries)
                    print(json.dumps({"warm_search": side, **warm[side]}), flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], capture_output=True)

    print(f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}, {args.clips} clips, medians of {args.runs} runs")
    print(f"\n| command | before ({args.before}) | after | before / after (wall) |\n|---|---|---|---|")
    by = {(r["command"], r["side"]): r for r in rows}
    for name in dict.fromkeys(r["command"] for r in rows):
        b, a = by[(name, "before")], by[(name, "after")]
        print(f"| `{name}` | {b['wall_s_median']:.2f} s, {b['rss_mib_median']:.0f} MiB | "
              f"{a['wall_s_median']:.2f} s, {a['rss_mib_median']:.0f} MiB | {b['wall_s_median'] / a['wall_s_median']:.1f}x |")
    for side, result in warm.items():
        print(f"warm search ({side}): {json.dumps(result)}")


if __name__ == "__main__":
    main()
