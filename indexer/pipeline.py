"""Runs the ingestion stages for one file: claim, probe, analyse (video and speech overlapped), write."""

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

from indexer.clips import make_clips
from indexer.decode import VideoDecoder
from indexer.features import FrameEncoder, pool_clips
from indexer.probe import ProbeResult, probe
from indexer.thumbnails import ThumbnailCollector
from indexer.transcribe import Segment, TranscribeOptions, Transcript, iter_segments
from indexer.write import Analysis, write_analysis

if TYPE_CHECKING:
    from indexer.sync import Embedder
from store.catalog import Catalog, Job, JobState, Media, MediaStatus, utcnow
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


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(error, ValueError) else f"{type(error).__name__}: {message}"


def ingest_file(
    path: Path,
    catalog: Catalog,
    store: FeatureStore,
    options: IngestOptions,
    progress: ProgressFn | None = None,
    embedder: Embedder | None = None,
) -> IngestResult:
    """Index one file; never raises for bad input: the result says failed and why.

    With an ``embedder`` the clips' speech and visual vectors are computed now and stored with
    the features, so the index sync only has to copy them.
    """
    shown = str(path)
    path = Path(os.path.abspath(path))
    with catalog.session() as session:
        job = Job(kind="ingest", path=str(path), state=JobState.RUNNING, stage="probe", started_at=utcnow(), attempts=1)
        session.add(job)
        session.flush()
        job_id = job.id
    reporter = _JobReporter(catalog, job_id, progress)
    result = IngestResult(path=str(path), status="failed", job_id=job_id)
    timings = result.timings
    media_id: int | None = None
    try:
        if not path.exists():
            raise ValueError(f"no such file: {shown}")
        if path.is_dir():
            raise ValueError(f"expected a media file, got a directory: {shown}")
        stat = path.stat()
        with catalog.session() as session:
            media = session.scalar(select(Media).where(Media.path == str(path)))
            if (
                media is not None
                and media.status == MediaStatus.INDEXED
                and media.size_bytes == stat.st_size
                and media.mtime_ns == stat.st_mtime_ns
            ):
                result.status, result.media_id, result.reason = "skipped", media.id, "already indexed"
                result.duration, result.clips, result.segments = media.duration, media.clip_count, media.segment_count
                return result

        reporter("hash", 0.0, force=True)
        t0 = time.perf_counter()
        digest = content_hash(path)
        timings["hash"] = time.perf_counter() - t0

        with catalog.session() as session:
            media = session.scalar(select(Media).where(Media.path == str(path)))
            if media is not None and media.status == MediaStatus.INDEXED and media.content_hash == digest:
                media.mtime_ns, media.size_bytes = stat.st_mtime_ns, stat.st_size
                result.status, result.media_id, result.reason = "skipped", media.id, "already indexed (unchanged content)"
                result.duration, result.clips, result.segments = media.duration, media.clip_count, media.segment_count
                return result
            twin = session.scalar(
                select(Media).where(
                    Media.content_hash == digest, Media.status == MediaStatus.INDEXED, Media.path != str(path)
                )
            )
            if twin is not None:
                if Path(twin.path).exists():
                    result.status, result.media_id = "duplicate", twin.id
                    result.reason = f"same content as {twin.path}"
                    return result
                # The indexed file is gone and its content is here: a move, not new work.
                if media is not None:
                    session.delete(media)
                    session.flush()
                old = twin.path
                twin.path, twin.mtime_ns, twin.size_bytes = str(path), stat.st_mtime_ns, stat.st_size
                result.status, result.media_id, result.reason = "skipped", twin.id, f"moved from {old}"
                return result
            if media is None:
                media = Media(path=str(path))
                session.add(media)
            media.status = MediaStatus.PROCESSING
            media.error = None
            media.size_bytes, media.mtime_ns = stat.st_size, stat.st_mtime_ns
            session.flush()
            media_id = media.id
            session.get(Job, job_id).media_id = media_id  # type: ignore[union-attr]
        result.media_id = media_id

        reporter("probe", 0.0, force=True)
        t0 = time.perf_counter()
        info = probe(path)
        timings["probe"] = time.perf_counter() - t0
        result.duration = info.duration

        t0 = time.perf_counter()
        analysis = analyse(path, info, digest, options, reporter, timings)
        timings["analyse"] = time.perf_counter() - t0

        if embedder is not None:
            reporter("embed", 1.0, force=True)
            t0 = time.perf_counter()
            analysis.extra_arrays.update(_embed(embedder, analysis))
            timings["embed"] = time.perf_counter() - t0

        reporter("write", 1.0, force=True)
        t0 = time.perf_counter()
        written = write_analysis(catalog, store, media_id, analysis)
        timings["write"] = time.perf_counter() - t0
        result.status, result.clips, result.segments = "indexed", written.clip_count, written.segment_count
        return result
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the batch
        result.status = "failed"
        result.reason = _one_line(e)
        if not isinstance(e, ValueError):
            logger.debug("ingest of %s failed", path, exc_info=True)
        if media_id is not None:
            with catalog.session() as session:
                media = session.get(Media, media_id)
                if media is not None:
                    media.status = MediaStatus.FAILED
                    media.error = result.reason
        return result
    finally:
        with catalog.session() as session:
            job = session.get(Job, job_id)
            if job is not None:
                job.state = {
                    "indexed": JobState.DONE,
                    "failed": JobState.FAILED,
                    "skipped": JobState.SKIPPED,
                    "duplicate": JobState.SKIPPED,
                }[result.status]
                job.error = result.reason if result.status == "failed" else None
                job.stage = "done" if result.status != "failed" else job.stage
                job.progress = 1.0 if result.status != "failed" else job.progress
                job.finished_at = utcnow()
