"""The stages of one ingest job (probe, analyse, embed, write), the runner both schedules share, and the embedded schedule."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy.exc import IntegrityError

from indexer.analyse import IngestOptions, analyse
from indexer.claims import Verdict, claim, content_hash, unchanged
from indexer.embed import ClipEmbeddings
from indexer.jobs import (
    STAGES,
    TERMINAL,
    JobReporter,
    StageStart,
    abandon,
    begin_stage,
    create_jobs,
    end_stage,
    finish_job,
    heartbeat,
    release,
    worker_id,
)
from indexer.probe import ProbeResult, probe
from indexer.write import Analysis, ClaimLostError, write_analysis
from store.catalog import Catalog, Job, Media
from store.features import FeatureStore

if TYPE_CHECKING:
    from indexer.embed import Embedder

logger = logging.getLogger(__name__)

MEDIA_EXTENSIONS = frozenset(
    {
        ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".mts",
        ".m2ts", ".3gp", ".ogv", ".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg", ".oga", ".opus", ".wma",
        ".aif", ".aiff",
    }
)

ProgressFn = Callable[[str, float], None]
Status = Literal["indexed", "skipped", "duplicate", "failed"]


@dataclass
class IngestResult:
    path: str
    status: Status
    media_id: int | None = None
    job_id: int | None = None
    reason: str | None = None
    duration: float | None = None
    clips: int = 0
    segments: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def expand_paths(paths: Iterable[Path]) -> Iterator[Path]:
    """Files as given; folders recursively, keeping media extensions only, in a stable order."""
    for path in paths:
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if Path(name).suffix.lower() in MEDIA_EXTENSIONS and not name.startswith("."):
                        yield Path(root) / name
        else:
            yield path


@dataclass
class Probed:
    """The probe stage's output: the claimed media row, the file's content hash and its streams."""

    media_id: int
    path: str
    content_hash: str
    info: ProbeResult


@dataclass
class Work:
    """What one job's stages have produced so far; the queue keeps it in the staging area between tasks."""

    probed: Probed
    analysis: Analysis | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class StageEnv:
    """What the stages need besides the job: plain objects, built once per process by the caller."""

    catalog: Catalog
    store: FeatureStore
    options: IngestOptions
    embedder: Embedder | None = None


@dataclass
class StepResult:
    """One stage's end: ``start`` as :func:`begin_stage` said; ``work`` goes on to the next stage, ``result`` ended the job."""

    start: StageStart
    work: Work | None = None
    result: IngestResult | None = None


def _embed(embedder: Embedder, analysis: Analysis) -> ClipEmbeddings:
    words = [
        (w.start, w.end, w.word)
        for seg in (analysis.transcript.segments if analysis.transcript is not None else [])
        for w in seg.words
    ]
    probs = analysis.clip_features.probs if analysis.clip_features is not None else None
    return embedder.embed([(c.start, c.end) for c in analysis.clips], words, probs)


def one_line(error: BaseException) -> str:
    """A user-facing one-line reason: the message of a ValueError, else the type and message."""
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(error, ValueError) else f"{type(error).__name__}: {message}"


def _terminal(job_id: int, path: str, verdict: Verdict) -> IngestResult:
    return IngestResult(
        path=path, status=verdict.status, job_id=job_id, reason=verdict.reason, media_id=verdict.media_id,
        duration=verdict.duration, clips=verdict.clips, segments=verdict.segments,
    )


def probe_stage(
    env: StageEnv, job_id: int, report: ProgressFn, timings: dict[str, float], *, heartbeat_timeout: float = 60.0
) -> Work | IngestResult:
    """Hash the job's file, skip what is already indexed or being indexed, claim the media row, probe.

    Returns the work for the next stage, or an ``IngestResult`` that ends the job (skipped,
    moved, duplicate). Raises ``ValueError`` for a file that cannot be indexed.
    """
    catalog = env.catalog
    with catalog.session() as session:
        job = session.get(Job, job_id)
        if job is None or not job.path:
            raise ValueError(f"no job {job_id} with a path in the catalog")
        path = Path(job.path)
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"expected a media file, got a directory: {path}")
    stat = path.stat()
    skip = unchanged(catalog, path, stat)
    if skip is not None:
        return _terminal(job_id, str(path), skip)

    report("hash", 0.0, force=True)  # type: ignore[call-arg]
    t0 = time.perf_counter()
    digest = content_hash(path)
    timings["hash"] = time.perf_counter() - t0

    for attempt in range(2):
        try:
            claimed = claim(catalog, job_id, path, stat, digest, heartbeat_timeout)
            break
        except IntegrityError:
            # Another job inserted the media row for this path between our read and our insert.
            if attempt:
                raise
    if isinstance(claimed, Verdict):
        return _terminal(job_id, str(path), claimed)
    media_id = claimed

    report("probe", 0.0, force=True)  # type: ignore[call-arg]
    t0 = time.perf_counter()
    info = probe(path)
    timings["probe"] = time.perf_counter() - t0
    return Work(probed=Probed(media_id=media_id, path=str(path), content_hash=digest, info=info), timings=timings)


def analyse_stage(env: StageEnv, work: Work, report: ProgressFn) -> Work:
    """Decode and featurise the video while transcribing the audio (one process, two threads)."""
    p = work.probed
    t0 = time.perf_counter()
    work.analysis = analyse(Path(p.path), p.info, p.content_hash, env.options, report, work.timings)
    work.timings["analyse"] = time.perf_counter() - t0
    return work


def embed_stage(env: StageEnv, work: Work, report: ProgressFn) -> Work:
    """Speech and visual vectors per clip, kept with the features so the index sync only copies them."""
    if env.embedder is None or work.analysis is None:
        return work
    report("embed", 1.0, force=True)  # type: ignore[call-arg]
    t0 = time.perf_counter()
    work.analysis.embeddings = _embed(env.embedder, work.analysis)
    work.timings["embed"] = time.perf_counter() - t0
    return work


def write_stage(env: StageEnv, job_id: int, work: Work, report: ProgressFn) -> IngestResult:
    """Feature files, then one catalog transaction; only the job that holds the media claim may write."""
    if work.analysis is None:
        raise ValueError(f"job {job_id} reached the write stage without an analysis")
    report("write", 1.0, force=True)  # type: ignore[call-arg]
    t0 = time.perf_counter()
    written = write_analysis(env.catalog, env.store, work.probed.media_id, work.analysis, job_id=job_id)
    work.timings["write"] = time.perf_counter() - t0
    return IngestResult(
        path=work.probed.path, status="indexed", media_id=written.media_id, job_id=job_id,
        duration=work.probed.info.duration, clips=written.clip_count, segments=written.segment_count,
        timings=work.timings,
    )


def run_stage(
    env: StageEnv,
    job_id: int,
    stage: str,
    owner: str,
    load: Callable[[], Work | None],
    *,
    keep: Callable[[Work], None] | None = None,
    progress: ProgressFn | None = None,
    heartbeat_timeout: float = 60.0,
    max_attempts: int = 3,
    retrying: bool = False,
    transient: tuple[type[BaseException], ...] = (),
    hold: bool = False,
) -> StepResult:
    """Run one stage of one job with its bookkeeping: the one code path both schedules share.

    ``load`` gives the previous stages' work (called only if the stage runs); ``keep`` stores
    this stage's work before the checkpoint is recorded, so a redelivered job resumes after it.
    Errors of the ``transient`` types are re-raised for the caller to retry; any other error
    fails the job with a one-line reason (a corrupt file fails once). ``hold`` keeps ``owner``
    on the job after the stage (the embedded schedule goes on with the next stage at once).
    """
    catalog = env.catalog
    start = begin_stage(
        catalog, job_id, stage, owner, heartbeat_timeout=heartbeat_timeout, max_attempts=max_attempts, retrying=retrying
    )
    if start != "run":
        return StepResult(start=start)
    reporter = JobReporter(catalog, job_id, progress)
    path = ""
    try:
        with heartbeat(catalog, job_id, owner, interval=max(heartbeat_timeout / 4, 0.5)):
            work = load() if stage != "probe" else None
            if stage != "probe" and work is None:
                raise RuntimeError(f"the staged work of job {job_id} is missing (is the data directory shared by all workers?)")
            if work is not None:
                path = work.probed.path
            if stage == "probe":
                out: Work | IngestResult = probe_stage(env, job_id, reporter, {}, heartbeat_timeout=heartbeat_timeout)
            elif stage == "analyse":
                out = analyse_stage(env, work, reporter)  # type: ignore[arg-type]
            elif stage == "embed":
                out = embed_stage(env, work, reporter)  # type: ignore[arg-type]
            else:
                out = write_stage(env, job_id, work, reporter)  # type: ignore[arg-type]
            if isinstance(out, Work) and keep is not None:
                keep(out)
    except ClaimLostError as e:
        result = IngestResult(path=path, status="duplicate", job_id=job_id, reason=str(e))
        finish_job(catalog, job_id, "duplicate", result.reason)
        return StepResult(start="run", result=result)
    except transient:
        release(catalog, job_id, owner)
        raise
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
        result = IngestResult(path=path, status="failed", job_id=job_id, reason=one_line(e))
        if not isinstance(e, ValueError):
            logger.debug("stage %s of job %s failed", stage, job_id, exc_info=True)
        finish_job(catalog, job_id, "failed", result.reason)
        with catalog.session() as session:
            job = session.get(Job, job_id)
            result.path, result.media_id = (job.path or path, job.media_id) if job is not None else (path, None)
        return StepResult(start="run", result=result)
    if isinstance(out, IngestResult):
        finish_job(catalog, job_id, out.status, out.reason)
        return StepResult(start="run", result=out)
    if stage == STAGES[-1]:  # pragma: no cover - the write stage always returns a result
        raise RuntimeError("the write stage returned no result")
    if not end_stage(catalog, job_id, stage, owner, hold=hold):
        # Someone took the job over while we worked (our heartbeat looked dead): theirs wins.
        return StepResult(start="busy")
    return StepResult(start="run", work=out)


def run_job(
    env: StageEnv, job_id: int, *, progress: ProgressFn | None = None, owner: str | None = None
) -> IngestResult:
    """All stages of one job in this process, the work kept in memory: the embedded schedule.

    Interrupted (Ctrl-C, SystemExit), the job is failed ("interrupted") before the exception goes
    on, so its media claim does not outlive this process. A SIGKILL leaves this process's pid
    on the job, and the next ingest of the file takes the claim over (``claims.claim``).
    """
    owner = owner or worker_id()
    work: Work | None = None
    try:
        for stage in STAGES:
            step = run_stage(env, job_id, stage, owner, lambda: work, progress=progress, hold=True)
            if step.result is not None:
                return step.result
            if step.start != "run" or step.work is None:
                # Another process owns or finished this job (it was queued as well): report what it says.
                return job_result(env.catalog, job_id)
            work = step.work
    except BaseException:
        try:
            abandon(env.catalog, job_id, "interrupted")
        except Exception:  # noqa: BLE001 - the original error matters more; a dead pid is taken over later
            logger.warning("job %s: could not record the interruption", job_id, exc_info=True)
        raise
    raise RuntimeError(f"job {job_id} ran every stage without a result")  # pragma: no cover


def job_result(catalog: Catalog, job_id: int) -> IngestResult:
    """An ``IngestResult`` read back from a job row and its media."""
    with catalog.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise ValueError(f"no job {job_id}")
        status: Status = (job.outcome or {"done": "indexed"}.get(job.state, "failed")) if job.state in TERMINAL else "failed"  # type: ignore[assignment]
        result = IngestResult(path=job.path or "", status=status, media_id=job.media_id, job_id=job.id,
                              reason=job.error or job.detail)
        if job.state not in TERMINAL:
            result.reason = f"still {job.state} ({job.stage or 'queued'})"
        media = session.get(Media, job.media_id) if job.media_id is not None else None
        if media is not None:
            result.duration, result.clips, result.segments = media.duration, media.clip_count, media.segment_count
        return result


def ingest_file(
    path: Path,
    catalog: Catalog,
    store: FeatureStore,
    options: IngestOptions,
    progress: ProgressFn | None = None,
    embedder: Embedder | None = None,
    *,
    batch: str | None = None,
) -> IngestResult:
    """Index one file in this process; never raises for bad input: the result says failed and why.

    With an ``embedder`` the clips' speech and visual vectors are computed now and stored with
    the features, so the index sync only has to copy them.
    """
    job_id = create_jobs(catalog, [path], batch=batch)[0]
    return run_job(StageEnv(catalog, store, options, embedder), job_id, progress=progress)
