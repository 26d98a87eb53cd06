"""Analyse stage: decode and encode the frames while Whisper transcribes the audio in a thread; clips, features, thumbnails."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.transcribe import TranscribeOptions

if TYPE_CHECKING:
    from indexer.clip_features import ClipFeatures
    from indexer.clips import Clip
    from indexer.probe import ProbeResult
    from indexer.transcribe import Segment, Transcript
    from indexer.write import Analysis

ProgressFn = Callable[[str, float], None]


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


def analyse(
    path: Path,
    info: ProbeResult,
    digest: str,
    options: IngestOptions,
    progress: ProgressFn | None = None,
    timings: dict[str, float] | None = None,
) -> Analysis:
    """Decode, featurise, cut into clips and transcribe one probed file (no catalog access)."""
    # Imported here: PyAV, Pillow and the decoder are for the processes that analyse files.
    from indexer.clips import make_clips
    from indexer.write import Analysis

    timings = timings if timings is not None else {}
    report = progress or (lambda stage, fraction: None)
    video_share = 0.7 if info.has_video and info.has_audio else 1.0
    state = {"video": 0.0, "audio": 0.0}

    def combined(stage: str) -> None:
        total = video_share * state["video"] + (1 - video_share) * state["audio"] if info.has_video else state["audio"]
        report(stage, total)

    def on_audio(fraction: float) -> None:
        state["audio"] = fraction
        combined("transcribe")

    def on_video(fraction: float) -> None:
        state["video"] = fraction
        combined("features")

    stop = threading.Event()
    asr_future: Future[Transcript] | None = None
    executor: ThreadPoolExecutor | None = None
    if info.has_audio:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidx-asr")
        asr_future = executor.submit(_transcribe, path, info, options, stop, on_audio, timings)

    try:
        if info.has_video:
            video = _analyse_video(path, info, options, on_video, timings)
        else:
            video = _Video(clips=make_clips(info.duration, [], options.clip_seconds))
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
        clips=video.clips,
        clip_features=video.clip_features,
        thumbnails=video.thumbnails,
        transcript=transcript,
        cuts=video.cuts,
    )


def _transcribe(
    path: Path,
    info: ProbeResult,
    options: IngestOptions,
    stop: threading.Event,
    on_audio: Callable[[float], None],
    timings: dict[str, float],
) -> Transcript:
    """Whisper over the whole file (run in a thread beside the video half); stops early once ``stop`` is set."""
    from indexer.transcribe import Transcript, iter_segments

    t0 = time.perf_counter()
    segments: list[Segment] = []
    stream, asr_info = iter_segments(path, options.transcribe, options.cache_dir)
    for seg in stream:
        if stop.is_set():
            break
        segments.append(seg)
        on_audio(min(seg.end / max(info.duration, 1e-6), 1.0))
    timings["transcribe"] = time.perf_counter() - t0
    return Transcript(
        language=asr_info.language,
        language_probability=asr_info.language_probability,
        duration=info.duration,
        segments=segments,
    )


@dataclass
class _Video:
    """What the video half produced: the clips and, for files with video, their features, thumbnails and cuts."""

    clips: list[Clip]
    clip_features: ClipFeatures | None = None
    thumbnails: list[bytes | None] = field(default_factory=list)
    cuts: list[float] = field(default_factory=list)


def _analyse_video(
    path: Path,
    info: ProbeResult,
    options: IngestOptions,
    on_video: Callable[[float], None],
    timings: dict[str, float],
) -> _Video:
    """Decode and encode the frames in batches, cut at the scene changes, pool per clip, keep a thumbnail per clip."""
    from indexer.clip_features import pool_clips
    from indexer.clips import make_clips
    from indexer.decode import VideoDecoder
    from indexer.thumbnails import ThumbnailCollector

    t0 = time.perf_counter()  # the video time includes loading the backbone, as it always has
    from indexer.backbone import FrameEncoder  # torch: loaded only for files with video

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
                on_video(min(len(times) / expected, 1.0))
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
    on_video(1.0)
    return _Video(clips=clips, clip_features=clip_features, thumbnails=thumbnails, cuts=cuts)
