"""The ingestion stages of one file (probe, analyse, embed, write) and the embedded schedule that runs them in-process."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from indexer.clips import make_clips
from indexer.decode import VideoDecoder
from indexer.features import FrameEncoder, pool_clips
from indexer.jobs import (
    STAGES,
    TERMINAL,
    StageStart,
    abandon,
    begin_stage,
    create_jobs,
    end_stage,
    fail_row,
    finish_job,
    heartbeat,
    owner_alive,
    release,
    worker_id,
)
from indexer.probe import ProbeResult, probe
from indexer.thumbnails import ThumbnailCollector
from indexer.transcribe import Segment, TranscribeOptions, Transcript, iter_segments
from indexer.write import Analysis, ClaimLostError, write_analysis

if TYPE_CHECKING:
    from indexer.sync import Embedder
from store.catalog import Catalog, Job, Media, MediaStatus
from store.features import FeatureStore

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


@dataclass(frozen=True)
class IngestOptions:
    """How files are analysed; built from Settings at the entry points."""

    feature_fps: float = 1.0
    clip_seconds: float = 1.5
    frame_size: int = 224
    scene_threshold: float = 10.0
    skip_nonref: bool = True
    top_concepts: int = 5
    batch_size: int = 16
    threads: int = 0
    thumbnail_width: int = 192
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)
    cache_dir: Path = Path("vidx-data/cache")


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


def content_hash(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class _JobReporter:
    """Mirrors stage and progress into the job row, at most every ``interval`` seconds."""

    def __init__(self, catalog: Catalog, job_id: int, callback: ProgressFn | None, interval: float = 1.0) -> None:
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
                job.progress = fraction


def analyse(
    path: Path,
    info: ProbeResult,
    digest: str,
    options: IngestOptions,
    progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
) -> Analysis:
    """Decode, featurise, cut into clips and transcribe one probed file (no catalog access)."""
    timings = timings if timings is not None else {}
    report = progress or (lambda stage, fraction: None)
    video_share = 0.7 if info.has_video and info.has_audio else 1.0
    state = {"video": 0.0, "audio": 0.0}

    def combined(stage: str) -> None:
        total = video_share * state["video"] + (1 - video_share) * state["audio"] if info.has_video else state["audio"]
        report(stage, total)

    stop = threading.Event()
    asr_future: Future[Transcript] | None = None
    executor: ThreadPoolExecutor | None = None
    if info.has_audio:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidx-asr")

        def run_asr() -> Transcript:
            t0 = time.perf_counter()
            segments: list[Segment] = []
            stream, asr_info = iter_segments(path, options.transcribe, options.cache_dir)
            for seg in stream:
                if stop.is_set():
                    break
                segments.append(seg)
                state["audio"] = min(seg.end / max(info.duration, 1e-6), 1.0)
                combined("transcribe")
            timings["transcribe"] = time.perf_counter() - t0
            return Transcript(
                language=asr_info.language,
                language_probability=asr_info.language_probability,
                duration=info.duration,
                segments=segments,
            )

        asr_future = executor.submit(run_asr)

    try:
        clip_features = None
        thumbnails: list[bytes | None] = []
        cuts: list[float] = []
        if info.has_video:
            t0 = time.perf_counter()
            encoder = FrameEncoder(batch_size=options.batch_size, threads=options.threads)
            collector = ThumbnailCollector(max_width=options.thumbnail_width)
            times: list[float] = []
            feats: list[np.ndarray] = []
            probs: list[np.ndarray] = []
            batch: list[np.ndarray] = []
            encode_s = 0.0

            def flush() -> None:
                nonlocal encode_s
                if batch:
                    t = time.perf_counter()
                    f, p = encoder.encode(np.stack(batch))
                    encode_s += time.perf_counter() - t
                    feats.append(f.astype(np.float16))
                    probs.append(p.astype(np.float16))
                    batch.clear()

            with VideoDecoder(
                path,
                fps=options.feature_fps,
                short_side=options.frame_size,
                scene_threshold=options.scene_threshold,
                threads=options.threads,
                info=info,
                skip_nonref=options.skip_nonref,
            ) as decoder:
                expected = max(decoder.frames_total_estimate, 1)
                for frame in decoder:
                    times.append(frame.time)
                    batch.append(frame.rgb)
                    collector.add(frame)
                    if len(batch) >= options.batch_size:
                        flush()
                        state["video"] = min(len(times) / expected, 1.0)
                        combined("features")
                flush()
                cuts = list(decoder.cuts)
            timings["video"] = time.perf_counter() - t0
            timings["encode"] = encode_s
            clips = make_clips(info.duration, cuts, options.clip_seconds)
            clip_features = pool_clips(
                np.asarray(times, dtype=np.float64),
                np.concatenate(feats).astype(np.float32),
                np.concatenate(probs).astype(np.float32),
                [(c.start, c.end) for c in clips],
                top_k=options.top_concepts,
            )
            thumbnails = list(collector.for_clips(clips))
            state["video"] = 1.0
            combined("features")
        else:
            clips = make_clips(info.duration, [], options.clip_seconds)

        transcript = None
        if asr_future is not None:
            report("transcribe", state["audio"])
            transcript = asr_future.result()
    except BaseException:
        stop.set()
        raise
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
    return Analysis(
        probe=info,
        content_hash=digest,
        clips=clips,
        clip_features=clip_features,
        thumbnails=thumbnails,
        transcript=transcript,
        cuts=cuts,
    )


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
    """One stage's end: ``next`` says whether the job goes on (with ``work``) or ``result`` ended it."""

    start: StageStart
    work: Work | None = None
    result: IngestResult | None = None

    @property
    def goes_on(self) -> bool:
        return self.start in ("run", "done") and self.result is None


def _embed(embedder: Embedder, analysis: Analysis) -> dict[str, np.ndarray]:
    from indexer.sync import embedding_arrays

    words = [
        (w.start, w.end, w.word)
        for seg in (analysis.transcript.segments if analysis.transcript is not None else [])
        for w in seg.words
    ]
    probs = analysis.clip_features.probs if analysis.clip_features is not None else None
    emb = embedder.embed([(c.start, c.end) for c in analysis.clips], words, probs)
    return embedding_arrays(emb)


def one_line(error: BaseException) -> str:
    """A user-facing one-line reason: the message of a ValueError, else the type and message."""
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(error, ValueError) else f"{type(error).__name__}: {message}"


def _terminal(job_id: int, path: str, status: Status, media: Media | None, reason: str) -> IngestResult:
    result = IngestResult(path=path, status=status, job_id=job_id, reason=reason)
    if media is not None:
        result.media_id, result.duration = media.id, media.duration
        result.clips, result.segments = media.clip_count, media.segment_count
    return result


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
    with catalog.session() as session:
        media = session.scalar(select(Media).where(Media.path == str(path)))
        if (
            media is not None
            and media.status == MediaStatus.INDEXED
            and media.size_bytes == stat.st_size
            and media.mtime_ns == stat.st_mtime_ns
        ):
            return _terminal(job_id, str(path), "skipped", media, "already indexed")

    report("hash", 0.0, force=True)  # type: ignore[call-arg]
    t0 = time.perf_counter()
    digest = content_hash(path)
    timings["hash"] = time.perf_counter() - t0

    for attempt in range(2):
        try:
            claimed = _claim(catalog, job_id, path, stat, digest, heartbeat_timeout)
            break
        except IntegrityError:
            # Another job inserted the media row for this path between our read and our insert.
            if attempt:
                raise
    if isinstance(claimed, IngestResult):
        return claimed
    media_id = claimed

    report("probe", 0.0, force=True)  # type: ignore[call-arg]
    t0 = time.perf_counter()
    info = probe(path)
    timings["probe"] = time.perf_counter() - t0
    return Work(probed=Probed(media_id=media_id, path=str(path), content_hash=digest, info=info), timings=timings)


def _claim(
    catalog: Catalog, job_id: int, path: Path, stat: os.stat_result, digest: str, heartbeat_timeout: float = 60.0
) -> int | IngestResult:
    with catalog.session() as session:
        # The row lock makes two jobs for one path take turns here: the second sees the first's claim.
        media = session.scalar(select(Media).where(Media.path == str(path)).with_for_update())
        if media is not None and media.status == MediaStatus.INDEXED and media.content_hash == digest:
            media.mtime_ns, media.size_bytes = stat.st_mtime_ns, stat.st_size
            return _terminal(job_id, str(path), "skipped", media, "already indexed (unchanged content)")
        if media is not None and media.claimed_by not in (None, job_id):
            other = session.get(Job, media.claimed_by)
            if other is not None and other.state not in TERMINAL:
                if other.worker is None or owner_alive(other.worker, other.heartbeat_at, heartbeat_timeout):
                    # Alive, or between two queued stages: its messages are durable and acknowledged
                    # late, so it will finish. One copy only.
                    return _terminal(job_id, str(path), "duplicate", None, f"same file is being indexed by job {other.id}")
                # Its owner is gone (an interrupted or killed `vidx ingest`, a worker dead past its
                # heartbeat): that job ends here and this one takes the file, or it would stay locked.
                logger.warning("job %s: taking over the claim of job %s, whose owner %s is gone", job_id, other.id, other.worker)
                fail_row(session, other, f"interrupted: its process {other.worker} is gone; the file went to job {job_id}")
        twin = session.scalar(
            select(Media).where(Media.content_hash == digest, Media.status == MediaStatus.INDEXED, Media.path != str(path))
        )
        if twin is not None:
            if Path(twin.path).exists():
                return _terminal(job_id, str(path), "duplicate", twin, f"same content as {twin.path}")
            # The indexed file is gone and its content is here: a move, not new work.
            if media is not None:
                session.delete(media)
                session.flush()
            old = twin.path
            twin.path, twin.mtime_ns, twin.size_bytes = str(path), stat.st_mtime_ns, stat.st_size
            session.get(Job, job_id).media_id = twin.id  # type: ignore[union-attr]
            return _terminal(job_id, str(path), "skipped", twin, f"moved from {old}")
        if media is None:
            media = Media(path=str(path))
            session.add(media)
        media.status = MediaStatus.PROCESSING
        media.error = None
        media.claimed_by = job_id
        media.size_bytes, media.mtime_ns = stat.st_size, stat.st_mtime_ns
        session.flush()
        session.get(Job, job_id).media_id = media.id  # type: ignore[union-attr]
        return media.id


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
    work.analysis.extra_arrays.update(_embed(env.embedder, work.analysis))
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
    reporter = _JobReporter(catalog, job_id, progress)
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
    on the job, and the next ingest of the file takes the claim over (``_claim``).
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
