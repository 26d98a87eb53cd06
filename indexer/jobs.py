"""Job rows as the queue's source of truth: creation, stage ownership with heartbeats, outcomes, batch summaries."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from sqlalchemy import func, select

from store.catalog import Catalog, Job, JobState, Media, MediaStatus, utcnow

logger = logging.getLogger(__name__)

# The order of an ingest job's stages; a job's ``done_stage`` is the last one whose output is kept.
STAGES: tuple[str, ...] = ("probe", "analyse", "embed", "write")
TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.SKIPPED})

StageStart = Literal["run", "done", "finished", "busy"]


def worker_id() -> str:
    """This process as a job owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns.
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed child whose parent has not reaped it yet is a zombie: dead for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def owner_alive(owner: str | None, heartbeat_at: datetime | None, timeout: float) -> bool:
    """Whether the process ``owner`` still works on its job.

    A fresh heartbeat is required everywhere; on this host a dead pid also counts as gone at once,
    so a worker killed here is replaced without waiting for its heartbeat to age.
    """
    if not owner:
        return False
    beat = _aware(heartbeat_at)
    if beat is None or utcnow() - beat > timedelta(seconds=timeout):
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        return _pid_alive(int(pid))
    return True


def create_jobs(catalog: Catalog, paths: Iterable[Path], *, batch: str | None = None, state: str = JobState.QUEUED) -> list[int]:
    """One ingest job per path (absolute), in one transaction; returns their ids in order."""
    with catalog.session() as session:
        jobs = [Job(kind="ingest", path=os.path.abspath(p), state=state, batch=batch) for p in paths]
        session.add_all(jobs)
        session.flush()
        return [job.id for job in jobs]


def begin_stage(
    catalog: Catalog,
    job_id: int,
    stage: str,
    owner: str,
    *,
    heartbeat_timeout: float = 60.0,
    max_attempts: int = 3,
    retrying: bool = False,
) -> StageStart:
    """Take ``stage`` of a job for ``owner``, or say why not.

    ``finished``: the job has ended (a redelivered message; nothing to do). ``done``: this stage's
    output is already kept (a redelivery after the stage committed; go on to the next).
    ``busy``: another live process runs it now (try again later). ``run``: it is ours now.
    Taking over from a dead owner counts an attempt; after ``max_attempts`` the job fails, so a
    file that kills its worker (decoder crash, out of memory) cannot loop forever. A retry after
    a transient error (``retrying``) is not a worker loss and counts nothing: the queue's own
    retry limit (``VIDX_QUEUE_MAX_RETRIES``) bounds those.
    """
    if stage not in STAGES:
        raise ValueError(f"expected one of {STAGES}, got stage {stage!r}")
    with catalog.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            raise ValueError(f"no job {job_id} in the catalog")
        if job.state in TERMINAL:
            return "finished"
        if job.done_stage in STAGES and STAGES.index(job.done_stage) >= STAGES.index(stage):
            return "done"
        takeover = bool(job.worker) and job.worker != owner
        if takeover and owner_alive(job.worker, job.heartbeat_at, heartbeat_timeout):
            return "busy"
        if job.state == JobState.QUEUED or takeover:
            if takeover and job.attempts >= max_attempts:
                _fail(session, job, f"worker lost {job.attempts} times during {job.stage or stage} (crash or out of memory)")
                return "finished"
            job.attempts += 1
        now = utcnow()
        job.state = JobState.RUNNING
        job.worker = owner
        job.heartbeat_at = now
        job.stage = stage
        job.started_at = job.started_at or now
        return "run"


def end_stage(catalog: Catalog, job_id: int, stage: str, owner: str, *, hold: bool = False) -> bool:
    """Record that ``stage``'s output is kept; False if another process took the job meanwhile.

    ``hold`` keeps ``owner`` on the job (the embedded schedule runs the next stage at once), so
    a process that dies between two stages still leaves its pid on the job for others to judge.
    """
    with catalog.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.worker != owner or job.state in TERMINAL:
            return False
        job.done_stage = stage
        job.worker = owner if hold else None
        job.heartbeat_at = utcnow()
        return True


def release(catalog: Catalog, job_id: int, owner: str) -> None:
    """Give a running stage back (a transient error: the queue retries it, maybe elsewhere)."""
    with catalog.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and job.worker == owner and job.state not in TERMINAL:
            job.worker = None


def _fail(session, job: Job, reason: str) -> None:  # type: ignore[no-untyped-def]
    job.state = JobState.FAILED
    job.outcome = "failed"
    job.error = reason
    job.worker = None
    job.finished_at = utcnow()
    if job.media_id is not None:
        media = session.get(Media, job.media_id)
        if media is not None and media.claimed_by in (None, job.id) and media.status != MediaStatus.INDEXED:
            media.status = MediaStatus.FAILED
            media.error = reason
            media.claimed_by = None


def fail_row(session, job: Job, reason: str) -> None:  # type: ignore[no-untyped-def]
    """Fail ``job`` inside the caller's transaction (its media claim is released)."""
    _fail(session, job, reason)


def abandon(catalog: Catalog, job_id: int, reason: str) -> None:
    """Fail a job that has not ended yet (an interrupted embedded ingest); an ended job is left as it is."""
    with catalog.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None and job.state not in TERMINAL:
            _fail(session, job, reason)


def finish_job(catalog: Catalog, job_id: int, status: str, reason: str | None = None) -> None:
    """End a job: ``status`` is indexed, skipped, duplicate or failed (with ``reason``)."""
    with catalog.session() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        if status == "failed":
            _fail(session, job, reason or "failed")
            return
        job.state = JobState.DONE if status == "indexed" else JobState.SKIPPED
        job.outcome = status
        job.detail = reason
        job.error = None
        job.worker = None
        job.stage = "done"
        job.progress = 1.0
        if status == "indexed":
            job.done_stage = STAGES[-1]
        job.finished_at = utcnow()


@contextmanager
def heartbeat(catalog: Catalog, job_id: int, owner: str, interval: float) -> Iterator[None]:
    """Refresh the job's heartbeat every ``interval`` seconds while the body runs (in a thread)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                with catalog.session() as session:
                    job = session.get(Job, job_id)
                    if job is not None and job.worker == owner:
                        job.heartbeat_at = utcnow()
            except Exception:  # noqa: BLE001 - a missed beat only makes the job look stale sooner
                logger.warning("heartbeat of job %s failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"vidx-heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


class JobReporter:
    """Mirrors a job's stage and progress into its row, at most every ``interval`` seconds (thread-safe).

    ``callback`` (if any) hears every report, unthrottled; ``force`` writes the row now (a stage change).
    """

    def __init__(self, catalog: Catalog, job_id: int, callback: Callable[[str, float], None] | None = None,
                 interval: float = 1.0) -> None:
        self.catalog = catalog
        self.job_id = job_id
        self.callback = callback
        self.interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, stage: str, fraction: float, *, force: bool = False) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.callback is not None:
            self.callback(stage, fraction)
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last < self.interval:
                return
            self._last = now
        with self.catalog.session() as session:
            job = session.get(Job, self.job_id)
            if job is not None:
                job.stage = stage
                job.progress = round(fraction, 4)


def check_retry(job: Job | None, job_id: int, heartbeat_timeout: float = 60.0) -> Job:
    """``job``, if it may be put back on the queue; ``ValueError`` (a one-line reason) if not."""
    if job is None:
        raise ValueError(f"no job {job_id}")
    if job.kind != "ingest":
        raise ValueError(f"job {job_id} is a {job.kind} job; only ingest jobs go through the queue")
    if job.state in (JobState.DONE, JobState.SKIPPED):
        raise ValueError(f"job {job_id} is {job.state}; only failed or stuck jobs can be retried")
    if job.state == JobState.RUNNING and job.worker and owner_alive(job.worker, job.heartbeat_at, heartbeat_timeout):
        # A second chain of stages would race the live one for the file.
        raise ValueError(f"job {job_id} is running on {job.worker} (heartbeat is fresh); it is not stuck")
    return job


def fail_queued(catalog: Catalog, *, reason: str, batch: str | None = None, ids: Sequence[int] | None = None) -> int:
    """Fail the jobs of ``batch`` (or ``ids``) that are still queued; returns how many."""
    query = select(Job).where(Job.state == JobState.QUEUED)
    query = query.where(Job.batch == batch) if batch is not None else query.where(Job.id.in_(list(ids or [])))
    with catalog.session() as session:
        jobs = list(session.scalars(query))
        for job in jobs:
            fail_row(session, job, reason)
    return len(jobs)


@contextmanager
def fail_unstarted(catalog: Catalog, job_ids: Sequence[int], reason: str = "interrupted before it started") -> Iterator[None]:
    """Jobs of an embedded batch still queued when it stops (Ctrl-C, an error) end failed, not queued forever."""
    try:
        yield
    except BaseException:
        try:
            fail_queued(catalog, ids=job_ids, reason=reason)
        except Exception:  # noqa: BLE001 - the original error matters more
            logger.warning("could not mark the batch's unstarted jobs failed", exc_info=True)
        raise


def retry_problems(catalog: Catalog, job_ids: Sequence[int], heartbeat_timeout: float = 60.0) -> list[str]:
    """Why each of ``job_ids`` may not be retried (one line each); empty when all may."""
    problems = []
    with catalog.session() as session:
        for job_id in job_ids:
            try:
                check_retry(session.get(Job, job_id), job_id, heartbeat_timeout)
            except ValueError as e:
                problems.append(str(e))
    return problems


def retry_job(catalog: Catalog, job_id: int, *, heartbeat_timeout: float = 60.0) -> None:
    """Put a failed (or stuck) job back to queued, keeping its attempts; the caller enqueues it.

    A running job whose owner is alive is refused (``ValueError``): it is not stuck.
    """
    with catalog.session() as session:
        job = check_retry(session.get(Job, job_id, with_for_update=True), job_id, heartbeat_timeout)
        job.state = JobState.QUEUED
        job.done_stage = None
        job.worker = None
        job.error = None
        job.outcome = None
        job.stage = None
        job.progress = 0.0
        job.finished_at = None


@dataclass
class JobView:
    id: int
    kind: str
    path: str | None
    state: str
    stage: str | None
    progress: float
    attempts: int
    outcome: str | None
    reason: str | None
    media_id: int | None
    batch: str | None
    worker: str | None
    heartbeat_at: datetime | None
    created_at: datetime | None
    finished_at: datetime | None

    def silent_for(self) -> float | None:
        """Seconds since a running job's last heartbeat (None when it is not running)."""
        beat = _aware(self.heartbeat_at)
        if self.state != JobState.RUNNING or beat is None:
            return None
        return (utcnow() - beat).total_seconds()


def list_jobs(
    catalog: Catalog, *, batch: str | None = None, ids: Sequence[int] | None = None, states: Sequence[str] | None = None, limit: int | None = None
) -> list[JobView]:
    """Jobs newest first, filtered by batch, ids or states."""
    query = select(Job).order_by(Job.id.desc())
    if batch is not None:
        query = query.where(Job.batch == batch)
    if ids is not None:
        query = query.where(Job.id.in_(list(ids)))
    if states is not None:
        query = query.where(Job.state.in_(list(states)))
    if limit is not None:
        query = query.limit(limit)
    with catalog.session() as session:
        return [
            JobView(
                id=j.id, kind=j.kind, path=j.path, state=j.state, stage=j.stage, progress=j.progress or 0.0, attempts=j.attempts,
                outcome=j.outcome, reason=j.error or j.detail, media_id=j.media_id, batch=j.batch, worker=j.worker,
                heartbeat_at=j.heartbeat_at,
                created_at=j.created_at, finished_at=j.finished_at,
            )
            for j in session.scalars(query)
        ]


def count_by_state(catalog: Catalog) -> dict[tuple[str, str], int]:
    """Job rows by (kind, state)."""
    with catalog.session() as session:
        rows = session.execute(select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)).all()
    return {(kind, state): n for kind, state, n in rows}


def latest_batch(catalog: Catalog) -> str | None:
    with catalog.session() as session:
        return session.scalar(select(Job.batch).where(Job.batch.is_not(None)).order_by(Job.id.desc()).limit(1))


@dataclass
class BatchSummary:
    """How a batch ended so far: counts per outcome, and the failed and duplicate files with reasons."""

    total: int = 0
    pending: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    progress: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.pending == 0


def summarise(catalog: Catalog, *, batch: str | None = None, ids: Sequence[int] | None = None) -> BatchSummary:
    """The summary of a batch (or of the given job ids) from the job rows alone."""
    summary = BatchSummary()
    query = select(Job.id, Job.path, Job.state, Job.outcome, Job.error, Job.detail, Job.progress)
    if batch is not None:
        query = query.where(Job.batch == batch)
    if ids is not None:
        query = query.where(Job.id.in_(list(ids)))
    with catalog.session() as session:
        rows = session.execute(query.order_by(Job.id)).all()
    done_fraction = 0.0
    for row in rows:
        summary.total += 1
        if row.state not in TERMINAL:
            summary.pending += 1
            done_fraction += float(row.progress or 0.0)
            continue
        done_fraction += 1.0
        outcome = row.outcome or {"done": "indexed", "failed": "failed"}.get(row.state, "skipped")
        summary.counts[outcome] = summary.counts.get(outcome, 0) + 1
        if outcome == "failed":
            summary.failed.append((row.path or "", row.error or "failed"))
        elif outcome == "duplicate":
            summary.duplicates.append((row.path or "", row.detail or ""))
    summary.progress = done_fraction / summary.total if summary.total else 1.0
    return summary

