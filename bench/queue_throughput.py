"""Queue benchmark: batch throughput embedded vs 1 and 2 `vidx worker` processes, and the queue's own cost per file.

All in one run, on the same batch, each mode into a fresh data directory (and, for the queue,
a fresh PostgreSQL database and queue names on the given Redis):

    .venv/bin/python bench/queue_throughput.py ../shared/media --workers 1,2 --pings 200

  embedded  `vidx ingest FILES` (SQLite + FAISS, one process), wall time of the command
  queue-N   `vidx worker -c N` started, `vidx ingest --queue FILES`, until every job ended and the
            index sync caught up; wall time from the worker's start (boot and model loads included,
            as the embedded figure includes them)
  overhead  N empty jobs, each a chain of four stages that only do the job-row bookkeeping
            (begin, checkpoint, publish the next): the queue's round trip per file and per stage

Throughput is reported in files per hour and media-hours per hour.
"""

from __future__ import annotations

import sys
from pathlib import Path

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import tempfile
import time
import uuid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

import migrations  # noqa: E402
from indexer.jobs import TERMINAL, create_jobs  # noqa: E402
from indexer.pipeline import expand_paths  # noqa: E402
from store.catalog import Catalog, Job  # noqa: E402

PG_ADMIN = os.environ.get("VIDX_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _duration(path: Path) -> float:
    from indexer.probe import probe

    return probe(path).duration


class FreshDatabase:
    def __init__(self) -> None:
        import psycopg

        self.name = f"vidx_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = f"{PG_ADMIN.rsplit('/', 1)[0]}/{self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDX_") or k == "VIDX_CACHE_DIR"}
    env.update(extra)
    return env


def _drop_keys(broker: str, prefix: str) -> None:
    """Remove this run's queues and kombu bindings from a shared Redis."""
    if not broker.startswith("redis://"):
        return
    import redis

    client = redis.Redis.from_url(broker)
    for key in list(client.scan_iter(f"*{prefix}*")):
        client.delete(key)


def run_embedded(files: list[Path], tmp: Path) -> dict[str, float]:
    env = _env(VIDX_DATA_DIR=str(tmp / "embedded"))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vidx", "ingest", *map(str, files)], env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"embedded ingest exited {proc.returncode}: {proc.stderr[-800:]}")
    return {"wall_s": wall}


class Workers:
    def __init__(self, env: dict[str, str], processes: int, log: Path) -> None:
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vidx", "worker", "--concurrency", str(processes), "--loglevel", "WARNING"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
        )

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def _wait_jobs(catalog: Catalog, ids: list[int], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with catalog.session() as s:
            rows = s.execute(select(Job.state, Job.outcome).where(Job.id.in_(ids))).all()
        if rows and all(r.state in TERMINAL for r in rows):
            out: dict[str, int] = {}
            for r in rows:
                out[r.outcome or r.state] = out.get(r.outcome or r.state, 0) + 1
            return out
        time.sleep(0.25)
    raise RuntimeError(f"jobs not finished after {timeout}s")


def _wait_synced(catalog: Catalog, timeout: float) -> None:
    from indexer.embed import EMBEDDING_VERSION
    from store.queries import count_stale

    deadline = time.monotonic() + timeout
    while count_stale(catalog, EMBEDDING_VERSION) and time.monotonic() < deadline:
        time.sleep(0.25)


def run_queue(files: list[Path], tmp: Path, broker: str, processes: int, timeout: float) -> dict[str, float]:
    db = FreshDatabase()
    data = tmp / f"queue-{processes}"
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = _env(VIDX_BROKER_URL=broker, VIDX_DATABASE_URL=db.url, VIDX_DATA_DIR=str(data), VIDX_QUEUE_PREFIX=prefix)
    catalog = Catalog(db.url)
    migrations.upgrade(catalog.engine)
    t0 = time.perf_counter()
    workers = Workers(env, processes, tmp / f"worker-{processes}.log")
    try:
        proc = subprocess.run([sys.executable, "-m", "vidx", "ingest", "--queue", *map(str, files)], env=env,
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"enqueue failed: {proc.stderr[-800:]}")
        t_enqueued = time.perf_counter()
        ids = [int(line.split("\t")[0]) for line in proc.stdout.splitlines()]
        outcomes = _wait_jobs(catalog, ids, timeout)
        _wait_synced(catalog, 120)
        wall = time.perf_counter() - t0
    finally:
        workers.stop()
        catalog.dispose()
        db.drop()
        _drop_keys(broker, prefix)
    # wall_s counts from the worker's start (boot, models) like the embedded command's wall;
    # after_enqueue_s from the moment `ingest --queue` returned (workers booted meanwhile).
    return {"wall_s": wall, "after_enqueue_s": wall - (t_enqueued - t0),
            **{f"n_{k}": v for k, v in outcomes.items()}}


def run_overhead(tmp: Path, broker: str, pings: int) -> dict[str, float]:
    """Empty four-stage chains through one worker process: the queue's cost per file."""
    from indexer.tasks import PING_TASK, QueueConfig, create_app, enqueue
    from indexer.wiring import Deployment

    db = FreshDatabase()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = _env(VIDX_BROKER_URL=broker, VIDX_DATABASE_URL=db.url, VIDX_DATA_DIR=str(tmp / "ping"), VIDX_QUEUE_PREFIX=prefix)
    catalog = Catalog(db.url)
    migrations.upgrade(catalog.engine)
    app = create_app(QueueConfig(broker_url=broker, deployment=Deployment(tmp / "ping", db.url), prefix=prefix))
    workers = Workers(env, 1, tmp / "worker-ping.log")
    try:
        warm = create_jobs(catalog, [Path(f"/warm-{i}") for i in range(5)])
        enqueue(app, warm, task=PING_TASK)
        _wait_jobs(catalog, warm, 120)
        ids = create_jobs(catalog, [Path(f"/ping-{i}") for i in range(pings)])
        t0 = time.perf_counter()
        enqueue(app, ids, task=PING_TASK)
        _wait_jobs(catalog, ids, 600)
        wall = time.perf_counter() - t0
    finally:
        workers.stop()
        catalog.dispose()
        db.drop()
        _drop_keys(broker, prefix)
    return {"pings": pings, "wall_s": wall, "per_file_ms": 1000 * wall / pings, "per_stage_ms": 1000 * wall / pings / 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--exclude", default="big_buck_bunny_full.mp4", help="comma list of file names to leave out")
    parser.add_argument("--workers", default="1,2", help="worker process counts to run")
    parser.add_argument("--pings", type=int, default=200, help="empty jobs for the overhead figure (0: skip)")
    parser.add_argument("--broker", default=os.environ.get("VIDX_BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--repeat", type=int, default=1, help="rounds; modes interleaved within a round, medians reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    skip = {x.strip() for x in args.exclude.split(",") if x.strip()}
    files = [f.resolve() for f in expand_paths(args.paths) if f.name not in skip]
    media_s = sum(_duration(f) for f in files)
    report: dict[str, object] = {
        "files": len(files), "media_s": round(media_s, 1), "machine": f"{platform.node()} {os.cpu_count()} cores {platform.machine()}",
        "python": platform.python_version(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "modes": {},
    }
    modes: dict[str, dict[str, float]] = report["modes"]  # type: ignore[assignment]
    runs: dict[str, list[dict[str, float]]] = {}
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    for r in range(args.repeat):
        # Alternate the order between rounds so drift in a shared machine's load hits every mode.
        order: list[int | None] = [None, *counts]
        if r % 2:
            order.reverse()
        for n in order:
            with tempfile.TemporaryDirectory(prefix="vidx-bench-queue-") as tmp_s:
                load = os.getloadavg()[0]
                name = "embedded" if n is None else f"queue-{n}"
                res = run_embedded(files, Path(tmp_s)) if n is None else run_queue(files, Path(tmp_s), args.broker, n, args.timeout)
                res["load_before"] = load
                runs.setdefault(name, []).append(res)
                print(f"round {r + 1} {name}: {res['wall_s']:.1f} s (load {load:.1f})", file=sys.stderr)
    for name, rs in runs.items():
        walls = sorted(x["wall_s"] for x in rs)
        m = dict(rs[0])
        m["wall_s"] = statistics.median(walls)
        m["wall_runs_s"] = [round(w, 1) for w in walls]  # type: ignore[assignment]
        if "after_enqueue_s" in m:
            m["after_enqueue_s"] = statistics.median(x["after_enqueue_s"] for x in rs)
        modes[name] = m
    if args.pings:
        with tempfile.TemporaryDirectory(prefix="vidx-bench-queue-") as tmp_s:
            report["overhead"] = run_overhead(Path(tmp_s), args.broker, args.pings)
    for m in modes.values():
        m["files_per_hour"] = 3600 * len(files) / m["wall_s"]
        m["media_hours_per_hour"] = media_s / m["wall_s"]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{len(files)} files, {media_s / 60:.1f} min of media; {report['machine']}; {report['started']}")
    print("| mode | wall (median) | runs | from enqueue | files/hour | media-hours/hour | vs embedded |")
    print("|---|---|---|---|---|---|---|")
    base = modes["embedded"]["wall_s"]
    for name, m in modes.items():
        after = f"{m['after_enqueue_s']:.1f} s" if "after_enqueue_s" in m else "-"
        print(f"| {name} | {m['wall_s']:.1f} s | {', '.join(map(str, m['wall_runs_s']))} | {after} | "  # type: ignore[arg-type]
              f"{m['files_per_hour']:.0f} | {m['media_hours_per_hour']:.2f} | {base / m['wall_s']:.2f}x |")
    if "overhead" in report:
        o = report["overhead"]  # type: ignore[assignment]
        print(f"queue overhead: {o['per_file_ms']:.1f} ms per file ({o['per_stage_ms']:.1f} ms per stage), {o['pings']} empty jobs")  # type: ignore[index]


if __name__ == "__main__":
    main()
