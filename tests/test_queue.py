"""The distributed mode with real services: `vidx worker` processes on Redis (and RabbitMQ), PostgreSQL catalogs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

import migrations
from conftest import _postgres_url, espeak, run_ffmpeg
from indexer.jobs import begin_stage, create_jobs, end_stage, list_jobs
from store.catalog import Catalog, Clip, FileSummary, Job, JobState, Media, MediaStatus, TranscriptSegment, utcnow

REDIS_URL = os.environ.get("VIDX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("VIDX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _reachable(url: str, default_port: int) -> bool:
    from urllib.parse import urlparse

    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or default_port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture()
def pg_url() -> Iterator[str]:
    yield from _postgres_url()


@pytest.fixture()
def redis_url() -> str:
    if not _reachable(REDIS_URL, 6379):
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (start it; .ci/run does)")
    return REDIS_URL


class Deployment:
    """One catalog, data directory and queue prefix; starts `vidx worker` processes and runs `vidx`."""

    def __init__(self, tmp: Path, broker: str, database: str, **settings: str) -> None:
        self.tmp = tmp
        self.data_dir = tmp / "vidx-data"
        self.env = dict(
            os.environ,
            VIDX_BROKER_URL=broker,
            VIDX_DATABASE_URL=database,
            VIDX_DATA_DIR=str(self.data_dir),
            VIDX_QUEUE_PREFIX=f"test-{uuid.uuid4().hex[:10]}",
            # One thread per process: the tests compare with an embedded ingest made the same way.
            VIDX_THREADS="1",
            VIDX_CACHE_DIR=os.environ.get("VIDX_CACHE_DIR", str(Path.home() / ".cache" / "vidx")),
            **settings,
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        self.catalog = Catalog(database)
        migrations.upgrade(self.catalog.engine)

    def worker(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"worker-{len(self.workers)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "vidx", "worker", "--loglevel", "INFO", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group (main process and prefork children), then reap it."""
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def vidx(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vidx", *args], capture_output=True, text=True, timeout=timeout, env=self.env)

    def enqueue(self, *paths: Path) -> list[int]:
        proc = self.vidx("ingest", "--queue", *map(str, paths))
        assert proc.returncode == 0, proc.stderr
        return [int(line.split("\t")[0]) for line in proc.stdout.splitlines()]

    def jobs(self, ids: list[int]) -> dict[int, Job]:
        with self.catalog.session() as s:
            return {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}

    def wait(self, ids: list[int], timeout: float = 300) -> dict[int, Job]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs(ids)
            if all(j.state in (JobState.DONE, JobState.FAILED, JobState.SKIPPED) for j in jobs.values()):
                return jobs
            time.sleep(0.5)
        raise AssertionError(f"jobs not finished after {timeout}s: {[(j.id, j.state, j.stage) for j in self.jobs(ids).values()]}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("worker-*.log")))

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                self.kill(proc, signal.SIGTERM)
        self.catalog.dispose()
        if self.env["VIDX_BROKER_URL"].startswith("redis://"):
            # The shared Redis keeps kombu's bindings and any leftover messages per queue name: drop ours.
            import redis

            prefix = self.env["VIDX_QUEUE_PREFIX"]
            try:
                client = redis.Redis.from_url(self.env["VIDX_BROKER_URL"], socket_connect_timeout=2)
                for key in list(client.scan_iter(f"*{prefix}*")):
                    client.delete(key)
            except redis.RedisError:
                pass


@pytest.fixture()
def deployment(tmp_path: Path, redis_url: str, pg_url: str) -> Iterator[Deployment]:
    d = Deployment(tmp_path, redis_url, pg_url)
    yield d
    d.close()


def _snapshot(catalog: Catalog) -> dict[str, dict]:
    """What a user sees of each file: status, duration, clips (times, shot, top tag) and transcript."""
    out = {}
    with catalog.session() as s:
        for m in s.scalars(select(Media)):
            out[Path(m.path).name] = {
                "status": m.status,
                "duration": round(m.duration or 0, 2),
                "streams": (m.has_video, m.has_audio),
                "clips": [(round(c.start, 2), round(c.end, 2), c.shot, (c.concepts or [[None]])[0][0]) for c in m.clips],
                "segments": [seg.text for seg in m.segments],
                "clip_count": m.clip_count,
            }
    return out


def _assert_one_clean_copy(catalog: Catalog) -> None:
    """No duplicate clips, no half-written rows: every indexed file's rows match its counts."""
    with catalog.session() as s:
        for m in s.scalars(select(Media)):
            clips = s.scalar(select(func.count()).select_from(Clip).where(Clip.media_id == m.id))
            segs = s.scalar(select(func.count()).select_from(TranscriptSegment).where(TranscriptSegment.media_id == m.id))
            if m.status == MediaStatus.INDEXED:
                assert clips == m.clip_count > 0 and segs == m.segment_count, m.path
                assert m.claimed_by is None
            else:
                assert clips == 0 and segs == 0, m.path


def _pid_maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def test_queued_batch_matches_embedded_ingest(
    deployment: Deployment, tmp_path: Path, cut_video: Path, silent_video: Path, speech_wav: Path, bad_files: dict[str, Path]
) -> None:
    from vidx.app import App
    from vidx.settings import Settings

    worker = deployment.worker("--concurrency", "1")
    poison = bad_files["garbage"]
    files = [poison, cut_video, silent_video, speech_wav]
    # A text file of paths, as a batch of thousands would be given.
    listing = tmp_path / "batch.txt"
    listing.write_text("# tonight's batch\n" + "\n".join(map(str, files)) + "\n\n")
    queued = deployment.vidx("ingest", "--queue", "--from-file", str(listing), "--json")
    assert queued.returncode == 0, queued.stderr
    import json

    ids = [json.loads(line)["job_id"] for line in queued.stdout.splitlines()]
    assert len(ids) == 4 and "queued 4 jobs" in queued.stderr

    waited = deployment.vidx("jobs", "--wait", "--timeout", "400", timeout=450)
    assert waited.returncode == 1, waited.stderr + deployment.logs()  # the poison file failed
    assert "3 indexed, 1 failed" in waited.stderr and "garbage.mkv" in waited.stderr
    jobs = deployment.wait(ids, timeout=10)
    bad = jobs[ids[0]]
    # The poison file failed once, with its reason, and the files queued behind it went through.
    assert bad.state == JobState.FAILED and bad.attempts == 1 and bad.error and "\n" not in bad.error
    assert all(jobs[i].state == JobState.DONE and jobs[i].attempts == 1 for i in ids[1:])
    listing_cli = deployment.vidx("jobs", "--json")
    rows = {r["id"]: r for r in json.loads(listing_cli.stdout)}
    assert rows[ids[0]]["state"] == "failed" and rows[ids[0]]["reason"] == bad.error
    # A failed job can be put back by id (and fails again, one attempt more); a done one cannot.
    retried = deployment.vidx("jobs", "retry", str(ids[0]))
    assert retried.returncode == 0 and "requeued 1" in retried.stderr, retried.stderr
    again = deployment.wait([ids[0]], timeout=120)[ids[0]]
    assert again.state == JobState.FAILED and again.attempts == 2 and again.error == bad.error
    refused = deployment.vidx("jobs", "retry", str(ids[1]))
    assert refused.returncode == 1 and "only failed" in refused.stderr

    # Models loaded in the worker's child, never in its parent (CTranslate2 comes with Whisper).
    children = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True).stdout.split()
    assert children and "ctranslate2" not in _pid_maps(worker.pid)
    assert any("ctranslate2" in _pid_maps(int(c)) for c in children)

    # The same files ingested the embedded way give the same catalog.
    embedded = App(Settings(data_dir=tmp_path / "embedded", threads=1, database_url=None))
    from indexer.pipeline import ingest_file

    for f in files:
        ingest_file(f, embedded.catalog, embedded.store, embedded.ingest_options(), embedder=embedded.embedder)
    queued_view, embedded_view = _snapshot(deployment.catalog), _snapshot(embedded.catalog)
    assert queued_view == embedded_view
    _assert_one_clean_copy(deployment.catalog)

    # The workers' single-writer sync put every clip in the search index, as `vidx ingest` would.
    with deployment.catalog.session() as s:
        assert all(m.synced_version for m in s.scalars(select(Media).where(Media.status == MediaStatus.INDEXED)))
    # ... and gave each indexed file its chapters and summary (from stored features, after the index).
    deadline = time.monotonic() + 120
    while True:
        with deployment.catalog.session() as s:
            indexed = s.scalars(select(Media).where(Media.status == MediaStatus.INDEXED)).all()
            chaptered = {m.path for m in indexed if m.chapters}
            summaries = s.scalar(select(func.count()).select_from(FileSummary))
        if (len(chaptered) == len(indexed) and summaries == len(indexed)) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert indexed and len(chaptered) == len(indexed) == summaries, deployment.logs()
    embedded.sync(summarize=True)
    with embedded.catalog.session() as s:
        assert {m.path for m in s.scalars(select(Media)) if m.chapters} == chaptered
    from indexer.embed import VECTOR_DIMS
    from store.vectors import open_index

    with open_index("faiss", VECTOR_DIMS, path=deployment.data_dir / "index" / "faiss", read_only=True) as q, embedded.vectors(read_only=True) as e:
        assert q.count() == e.count() > 0
    found = deployment.vidx("search", "quick brown fox", "--limit", "3", "--json")
    assert found.returncode == 0, found.stderr
    assert Path(json.loads(found.stdout)[0]["media_path"]).name in ("cuts.mp4", "speech.wav")
    embedded.catalog.dispose()


@pytest.mark.integration
def test_dev_media_through_two_worker_processes_matches_embedded(deployment: Deployment, tmp_path: Path, shared_media: Path) -> None:
    """Real third-party media (speech, hard cuts, no audio, 1080p) through `-c 2`: the same catalog as embedded."""
    from indexer.pipeline import ingest_file
    from vidx.app import App
    from vidx.settings import Settings

    files = [shared_media / n for n in ("jfk.wav", "bikes.mp4", "carphone.mp4", "deer.mp4")]
    deployment.worker("--concurrency", "2")
    ids = deployment.enqueue(*files)
    jobs = deployment.wait(ids, timeout=400)
    assert all(j.outcome == "indexed" for j in jobs.values()), [(j.path, j.error) for j in jobs.values()]
    embedded = App(Settings(data_dir=tmp_path / "embedded", threads=1, database_url=None))
    for f in files:
        assert ingest_file(f, embedded.catalog, embedded.store, embedded.ingest_options(), embedder=embedded.embedder).status == "indexed"
    assert _snapshot(deployment.catalog) == _snapshot(embedded.catalog)
    _assert_one_clean_copy(deployment.catalog)
    embedded.catalog.dispose()


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 s of moving test pattern with speech on the audio: long enough to kill a worker in the middle."""
    d = tmp_path_factory.mktemp("long")
    voice = espeak("one two three four five six seven eight nine ten " * 4, d / "voice.wav")
    out = d / "long.mp4"
    run_ffmpeg(
        "-f", "lavfi", "-i", "testsrc2=s=320x240:r=25:d=40", "-i", str(voice),
        "-filter_complex", "[1:a]apad=whole_dur=40[a]", "-map", "0:v", "-map", "[a]",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", "40", str(out),
    )
    return out


def test_worker_killed_mid_file_job_resumes_on_a_new_worker(tmp_path: Path, redis_url: str, pg_url: str, long_video: Path) -> None:
    # Redis gives an unacknowledged task back after the visibility timeout: short here, hours by default.
    d = Deployment(tmp_path, redis_url, pg_url, VIDX_QUEUE_VISIBILITY_TIMEOUT="8")
    try:
        first = d.worker("--concurrency", "1")
        [job_id] = d.enqueue(long_video)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            job = d.jobs([job_id])[job_id]
            if job.done_stage == "probe" and job.stage in ("features", "transcribe") and job.progress > 0:
                break
            assert job.state not in (JobState.DONE, JobState.FAILED), "the job ended before the worker could be killed"
            time.sleep(0.2)
        else:
            raise AssertionError(f"job never reached the analysis: {d.logs()}")
        d.kill(first)  # SIGKILL to the main process and its child, in the middle of the analysis
        job = d.jobs([job_id])[job_id]
        assert job.state == JobState.RUNNING and job.worker and job.attempts == 1
        with d.catalog.session() as s:
            assert s.scalar(select(func.count()).select_from(Clip)) == 0
        d.worker("--concurrency", "1")
        job = d.wait([job_id], timeout=300)[job_id]
        assert job.state == JobState.DONE, (job.error, d.logs())
        # The new worker took over from the dead one (one more attempt) and resumed after the probe.
        assert job.attempts == 2
        with d.catalog.session() as s:
            media = s.scalars(select(Media)).all()
            assert len(media) == 1 and media[0].status == MediaStatus.INDEXED
            starts = [c.start for c in media[0].clips]
            assert starts == sorted(set(starts)) and [c.clip_index for c in media[0].clips] == list(range(len(starts)))
            assert media[0].clips[-1].end == pytest.approx(media[0].duration, abs=0.05)
        _assert_one_clean_copy(d.catalog)
        assert not list((d.data_dir / "staging").glob("*.pkl"))
    finally:
        d.close()


def test_two_workers_racing_on_one_file_leave_one_copy(deployment: Deployment, cut_video: Path) -> None:
    deployment.worker("--concurrency", "1", "--name", "a@%h")
    deployment.worker("--concurrency", "1", "--name", "b@%h")
    ids = deployment.enqueue(cut_video, cut_video, cut_video)
    jobs = deployment.wait(ids, timeout=300)
    outcomes = sorted(j.outcome or "" for j in jobs.values())
    assert outcomes.count("indexed") == 1, (outcomes, [j.detail for j in jobs.values()], deployment.logs())
    assert all(j.state != JobState.FAILED for j in jobs.values())
    with deployment.catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Media)) == 1
    _assert_one_clean_copy(deployment.catalog)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of our own (append-only file, fsync always) that a test may stop and start."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir()
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (.ci/run installs it)")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if _reachable(self.url, self.port):
                return
            time.sleep(0.1)
        raise AssertionError("private redis-server did not start")

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)


def test_broker_outage_mid_batch_loses_nothing(tmp_path: Path, pg_url: str, gen_dir: Path) -> None:
    files = []
    for i, colour in enumerate(("red", "green", "blue", "yellow", "white")):
        f = gen_dir / f"outage-{colour}.mp4"
        if not f.exists():
            run_ffmpeg("-f", "lavfi", "-i", f"color=c={colour}:s=160x120:r=10:d={3 + i}", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(f))
        files.append(f)
    redis = PrivateRedis(tmp_path)
    redis.start()
    d = Deployment(tmp_path, redis.url, pg_url, VIDX_QUEUE_VISIBILITY_TIMEOUT="10")
    try:
        d.worker("--concurrency", "1")
        ids = d.enqueue(*files)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(j.state == JobState.DONE for j in d.jobs(ids).values()):
            time.sleep(0.2)
        # The broker dies hard with work queued and in flight, stays away a while, then comes back.
        redis.crash()
        time.sleep(6)
        redis.start()
        jobs = d.wait(ids, timeout=300)
        assert [jobs[i].outcome for i in ids] == ["indexed"] * len(files), d.logs()
        with d.catalog.session() as s:
            assert s.scalar(select(func.count()).select_from(Media)) == len(files)
        _assert_one_clean_copy(d.catalog)
    finally:
        d.close()
        if redis.proc is not None and redis.proc.poll() is None:
            redis.crash()


def test_rabbitmq_smoke(tmp_path: Path, pg_url: str, speech_wav: Path) -> None:
    if not _reachable(AMQP_URL, 5672):
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL} (start it; .ci/run does)")
    d = Deployment(tmp_path, AMQP_URL, pg_url)
    try:
        d.worker("--concurrency", "1")
        [job_id] = d.enqueue(speech_wav)
        job = d.wait([job_id], timeout=240)[job_id]
        assert job.state == JobState.DONE, (job.error, d.logs())
        with d.catalog.session() as s:
            m = s.scalars(select(Media)).one()
            assert "fox" in " ".join(seg.text.lower() for seg in m.segments)
    finally:
        d.close()
        from kombu import Connection

        prefix = d.env["VIDX_QUEUE_PREFIX"]
        with Connection(AMQP_URL) as conn:
            channel = conn.channel()
            for name in (f"{prefix}.ingest", f"{prefix}.sync"):
                try:
                    channel.queue_delete(name)
                    channel.exchange_delete(name)
                except Exception:  # noqa: BLE001 - best-effort cleanup of the shared broker
                    pass


def test_no_broker_is_a_clear_error(tmp_path: Path, cut_video: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIDX_BROKER_URL"}
    env["VIDX_DATA_DIR"] = str(tmp_path / "d")
    proc = subprocess.run([sys.executable, "-m", "vidx", "ingest", "--queue", str(cut_video)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "VIDX_BROKER_URL" in proc.stderr and "Traceback" not in proc.stderr
    env["VIDX_BROKER_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
    down = subprocess.run([sys.executable, "-m", "vidx", "ingest", "--queue", str(cut_video)], capture_output=True, text=True, env=env, timeout=120)
    assert down.returncode == 1 and "broker unreachable" in down.stderr and "Traceback" not in down.stderr


def test_stage_ownership_and_takeover(tmp_path: Path) -> None:
    """Unit level: a live owner keeps its stage, a dead one is taken over, a crashing file stops after max attempts."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    migrations.upgrade(catalog.engine)
    [job_id] = create_jobs(catalog, [tmp_path / "x.mp4"])
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert begin_stage(catalog, job_id, "probe", me) == "run"
    # Another process on this host while we (alive) hold it: busy.
    assert begin_stage(catalog, job_id, "probe", f"{socket.gethostname()}:1") == "busy"
    assert end_stage(catalog, job_id, "probe", me)
    assert begin_stage(catalog, job_id, "probe", me) == "done"  # a redelivered probe only passes on
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = f"{socket.gethostname()}:{dead.pid}"
    assert begin_stage(catalog, job_id, "analyse", ghost) == "run"
    with catalog.session() as s:
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=90)
    assert list_jobs(catalog, ids=[job_id])[0].silent_for() > 89  # `vidx jobs` flags it
    # The ghost's pid is gone: the next worker takes over at once and counts an attempt.
    assert begin_stage(catalog, job_id, "analyse", me, max_attempts=3) == "run"
    with catalog.session() as s:
        assert s.get(Job, job_id).attempts == 2
    # Seen from elsewhere with a zero heartbeat timeout, even we look gone: a third attempt.
    assert begin_stage(catalog, job_id, "analyse", ghost, heartbeat_timeout=0.0) == "run"
    assert begin_stage(catalog, job_id, "analyse", me, max_attempts=3) == "finished"
    with catalog.session() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.FAILED and "worker lost" in job.error
    catalog.dispose()


def test_importing_the_tasks_loads_no_model() -> None:
    code = (
        "import sys; from pathlib import Path; from indexer.tasks import QueueConfig, create_app; "
        "from indexer.wiring import Deployment; "
        "create_app(QueueConfig(broker_url='redis://127.0.0.1:1/0', deployment=Deployment(Path('/tmp'), 'sqlite://'))); "
        "print(sorted(m for m in ('faster_whisper', 'ctranslate2', 'transformers', 'torch') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_transient_error_releases_the_stage_and_the_retry_counts_no_attempt(tmp_path: Path, silent_video: Path) -> None:
    """A "not now" error (the catalog or a server away) is re-raised for the queue to retry, the job kept.

    Retries are not worker losses: they count nothing against VIDX_QUEUE_MAX_ATTEMPTS, so two
    database blips and then one crash do not fail the job as "worker lost 3 times".
    """
    from sqlalchemy.exc import OperationalError

    from indexer.analyse import IngestOptions
    from indexer.pipeline import StageEnv, run_stage
    from store.features import FeatureStore

    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    migrations.upgrade(catalog.engine)
    env = StageEnv(catalog, FeatureStore(tmp_path / "features"), IngestOptions(cache_dir=tmp_path / "cache"))
    [job_id] = create_jobs(catalog, [silent_video])
    me = f"{socket.gethostname()}:{os.getpid()}"
    step = run_stage(env, job_id, "probe", me, lambda: None)
    assert step.start == "run" and step.work is not None

    def away() -> None:
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    with pytest.raises(OperationalError):
        run_stage(env, job_id, "analyse", me, away, transient=(OperationalError,))
    with catalog.session() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.RUNNING and job.worker is None and job.done_stage == "probe" and job.attempts == 1
    with pytest.raises(OperationalError):
        run_stage(env, job_id, "analyse", me, away, retrying=True, transient=(OperationalError,))
    with catalog.session() as s:
        assert s.get(Job, job_id).attempts == 1  # two retries: still the first attempt
    # Now the worker dies mid-stage: the takeovers count, up to max_attempts=3 attempts in all.
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = f"{socket.gethostname()}:{dead.pid}"
    assert begin_stage(catalog, job_id, "analyse", ghost, retrying=True) == "run"
    assert begin_stage(catalog, job_id, "analyse", me, max_attempts=3) == "run"  # takeover: attempt 2
    with catalog.session() as s:
        assert s.get(Job, job_id).attempts == 2
    # Not transient: the same error fails the job at once, with its reason.
    step = run_stage(env, job_id, "analyse", me, away, retrying=True)
    assert step.result is not None and step.result.status == "failed" and "OperationalError" in step.result.reason
    with catalog.session() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.FAILED and job.attempts == 2 and "worker lost" not in job.error
    catalog.dispose()


def test_stage_retry_message_carries_job_id_once_with_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage retry goes through a real Celery app and broker (kombu's in-memory transport).

    The retried message must call the task as it was published (``args=[job_id]``) plus the retry
    count, with the backoff as its ETA; it once carried job_id twice (a TypeError on every retry,
    taken for "broker unreachable": a requeue loop with no backoff). Celery 5.7 rebinds such a
    keyword onto the inherited positional argument; 5.4-5.6 (pyproject allows them) do not, so
    the arguments given to ``retry`` are checked as well as the message.
    """
    from celery.exceptions import Retry
    from kombu import Exchange, Queue
    from sqlalchemy.exc import OperationalError

    import indexer.tasks as tasks
    from indexer.tasks import QueueConfig, create_app
    from indexer.wiring import Deployment

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    catalog = Catalog(url)
    migrations.upgrade(catalog.engine)
    [job_id] = create_jobs(catalog, [tmp_path / "x.mp4"])
    config = QueueConfig(broker_url="memory://", deployment=Deployment(tmp_path / "d", url), prefix=f"test-{uuid.uuid4().hex[:10]}")
    app = create_app(config)
    calls: list[tuple[int, str, bool]] = []

    def away(env, job, stage, owner, load, **kw):  # type: ignore[no-untyped-def]
        calls.append((job, stage, kw["retrying"]))
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    monkeypatch.setattr(tasks, "run_stage", away)
    task = app.tasks["vidx.analyse"]
    given: list[dict] = []
    real_retry = task.retry

    def spy(*a, **kw):  # type: ignore[no-untyped-def]
        given.append(kw)
        return real_retry(*a, **kw)

    monkeypatch.setattr(task, "retry", spy)
    queue = Queue(config.ingest_queue, Exchange(config.ingest_queue, type="direct"), routing_key=config.ingest_queue)

    def deliver(args: list, kwargs: dict, retries: int) -> tuple[list, dict, dict]:
        """Run the task as a worker does for a delivered message; return the retry it published."""
        task.push_request(id=uuid.uuid4().hex, args=args, kwargs=kwargs, retries=retries, is_eager=False, called_directly=False)
        try:
            with pytest.raises(Retry):
                task.run(*args, **kwargs)
        finally:
            task.pop_request()
        with app.connection_for_read() as conn:
            message = queue(conn.default_channel).get(no_ack=True)
        assert message is not None, "the retry was not published"
        body_args, body_kwargs, _ = message.decode()
        return body_args, body_kwargs, message.headers

    try:
        before = utcnow()
        args, kwargs, headers = deliver([job_id], {}, 0)
        assert args == [job_id] and kwargs == {"transient": 1}
        assert headers["task"] == "vidx.analyse" and headers["retries"] == 1
        from datetime import datetime

        eta = datetime.fromisoformat(headers["eta"])
        assert timedelta(seconds=4) < eta - before < timedelta(seconds=7)  # _backoff(0) == 5 s
        # The retried message itself runs (no "multiple values for argument 'job_id'") and backs off further.
        args, kwargs, headers = deliver(args, kwargs, 1)
        assert args == [job_id] and kwargs == {"transient": 2} and headers["retries"] == 2
        assert timedelta(seconds=9) < datetime.fromisoformat(headers["eta"]) - before < timedelta(seconds=13)
        assert calls == [(job_id, "analyse", False), (job_id, "analyse", True)]
        # As published: job_id positional, never also a keyword (whatever the Celery version does with it).
        assert [(kw["args"], kw["kwargs"]) for kw in given] == [([job_id], {"transient": 1}), ([job_id], {"transient": 2})]
    finally:
        tasks._context_cache.clear()
        catalog.dispose()


def test_worker_sync_follows_the_active_trained_model(tmp_path: Path) -> None:
    """The workers' index sync uses the model `vidx models activate` switched on, like `vidx` does."""
    from indexer.embed import EMBEDDING_VERSION
    from indexer.tasks import QueueConfig, _Context
    from indexer.training.registry import register, set_active
    from indexer.wiring import Deployment

    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    catalog = Catalog(url)
    migrations.upgrade(catalog.engine)
    ctx = _Context(QueueConfig(broker_url="redis://127.0.0.1:1/0", deployment=Deployment(tmp_path, url)))
    assert ctx.resources.embedder().version == EMBEDDING_VERSION
    models = tmp_path / "models"
    (models / "run1").mkdir(parents=True)
    model_id = register(catalog, models, "cbt", "run1", models / "run1" / "cbt.pt", {})
    set_active(catalog, {"cbt": model_id})
    assert ctx.resources.embedder().version == f"{EMBEDDING_VERSION}+cbt/{model_id}"  # the model itself loads lazily
    set_active(catalog, {"cbt": None})
    assert ctx.resources.embedder().version == EMBEDDING_VERSION
    ctx.catalog.dispose()
    catalog.dispose()


def test_sync_lock_is_shared_by_vidx_and_workers_and_idle(tmp_path: Path, pg_url: str) -> None:
    """One cluster-wide sync lock: the worker's sync and `vidx` (App.sync) take turns; its connection is not in a transaction."""
    from sqlalchemy import text

    from indexer.sync import SyncBusyError, exclusive_sync, sync_lock
    from vidx.app import App
    from vidx.settings import Settings

    catalog = Catalog(pg_url)
    migrations.upgrade(catalog.engine)
    other = Catalog(pg_url)
    vapp = App(Settings(data_dir=tmp_path / "d", database_url=pg_url))
    try:
        with sync_lock(catalog) as got:
            assert got
            with other.engine.connect() as conn:
                states = conn.execute(text(
                    "SELECT a.state FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = (7351120412::bigint & x'ffffffff'::bigint)"
                )).scalars().all()
            assert states == ["idle"]  # not "idle in transaction" for the whole sync
            with sync_lock(other, wait=0.3) as second:
                assert not second
            with pytest.raises(SyncBusyError, match="another index sync"):
                vapp.sync(wait=0.5)
            started = time.monotonic()
            with pytest.raises(SyncBusyError):
                with exclusive_sync(other, wait=1.0):
                    pass
            assert time.monotonic() - started >= 0.9  # it waited before giving up
        with sync_lock(other) as again:
            assert again  # released
        assert vapp.sync().upserted_media == 0
    finally:
        vapp.catalog.dispose()
        other.dispose()
        catalog.dispose()


def test_staging_save_leaves_no_temp_file_when_the_dump_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from indexer.tasks import Staging

    staging = Staging(tmp_path / "staging")

    def full(*_a, **_k):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pickle, "dump", full)
    with pytest.raises(OSError, match="No space"):
        staging.save(7, object())  # type: ignore[arg-type]
    assert list((tmp_path / "staging").iterdir()) == []


def test_work_staged_by_an_older_vidx_fails_in_one_line_and_retries_from_the_probe(tmp_path: Path, silent_video: Path) -> None:
    """A job in flight across an upgrade: its staging pickle names a module that moved (indexer.features)."""
    from indexer.analyse import IngestOptions
    from indexer.jobs import retry_job
    from indexer.pipeline import StageEnv, run_stage
    from indexer.tasks import Staging
    from store.features import FeatureStore

    catalog = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    migrations.upgrade(catalog.engine)
    env = StageEnv(catalog, FeatureStore(tmp_path / "features"), IngestOptions(cache_dir=tmp_path / "cache"))
    staging = Staging(tmp_path / "staging")
    [job_id] = create_jobs(catalog, [silent_video])
    me = f"{socket.gethostname()}:{os.getpid()}"
    probed = run_stage(env, job_id, "probe", me, lambda: None, keep=lambda work: staging.save(job_id, work))
    assert probed.start == "run" and staging.path(job_id).is_file()
    # What vidx before the reorganisation pickled: a class of a module that no longer exists.
    staging.path(job_id).write_bytes(b"cindexer.features\nClipFeatures\n(tR.")

    step = run_stage(env, job_id, "analyse", me, lambda: staging.load(job_id), keep=lambda work: staging.save(job_id, work))
    assert step.result is not None and step.result.status == "failed"
    reason = step.result.reason or ""
    assert "\n" not in reason and "cannot be read by this vidx version" in reason and f"vidx jobs retry {job_id}" in reason
    assert not staging.path(job_id).exists()  # dropped: the retry starts clean
    with catalog.session() as s:
        assert s.get(Job, job_id).state == JobState.FAILED

    retry_job(catalog, job_id)
    with catalog.session() as s:
        job = s.get(Job, job_id)
        assert job.state == JobState.QUEUED and job.done_stage is None  # from the probe again
    again = run_stage(env, job_id, "probe", me, lambda: None, keep=lambda work: staging.save(job_id, work))
    assert again.start == "run" and again.work is not None
    catalog.dispose()
