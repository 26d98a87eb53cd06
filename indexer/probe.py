"""Reads a media file's container and stream facts with PyAV (no ffprobe binary needed)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

logger = logging.getLogger(__name__)

# A demux-to-end pass (for containers that state no duration) reads packets only, never decodes;
# it is still bounded so that a huge or hostile file cannot stall ingestion.
_SCAN_MAX_BYTES = 256 * 1024 * 1024
_SCAN_MAX_SECONDS = 10.0
# Reading the first frame (for rotation metadata and the real decoded size) gives up after this many packets.
_FIRST_FRAME_MAX_PACKETS = 256
# Probing limits passed to libavformat: enough for real files, small enough that garbage fails fast.
_OPEN_OPTIONS = {"probesize": str(10 * 1024 * 1024), "analyzeduration": str(10 * 1_000_000)}


@dataclass(frozen=True)
class ProbeResult:
    """What ingestion needs to know about a file before decoding it.

    ``width``/``height`` are the stored (coded) frame size of the main video stream; ``rotation`` (degrees, from
    the display matrix) and ``sample_aspect_ratio`` say how it is shown. ``display_size`` combines them, which is
    what ffmpeg produces after its automatic rotation.
    """

    path: Path
    size_bytes: int
    duration: float
    format_name: str
    has_video: bool
    has_audio: bool
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    sample_rate: int | None
    channels: int | None
    streams: list[dict[str, Any]] = field(default_factory=list)
    rotation: int = 0
    sample_aspect_ratio: float = 1.0
    video_stream_index: int | None = None
    audio_stream_index: int | None = None

    @property
    def display_size(self) -> tuple[int, int] | None:
        """(width, height) as displayed: anamorphic pixels stretched, quarter-turn rotations swapped."""
        if self.width is None or self.height is None:
            return None
        w = max(1, round(self.width * self.sample_aspect_ratio))
        h = self.height
        return (h, w) if self.rotation % 180 == 90 else (w, h)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the path as a string)."""
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _fraction_to_float(value: Fraction | None) -> float | None:
    if value is None or value.denominator == 0 or value <= 0:
        return None
    return float(value)


def _is_cover_art(stream: av.stream.Stream) -> bool:
    # Music files carry album art as a one-frame "video" stream flagged attached_pic: it is not video content.
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _stream_seconds(stream: av.stream.Stream) -> float | None:
    if stream.duration is None or stream.time_base is None or stream.duration <= 0:
        return None
    return float(stream.duration * stream.time_base)


def _describe_stream(stream: av.stream.Stream) -> dict[str, Any]:
    cc = stream.codec_context
    info: dict[str, Any] = {
        "index": stream.index,
        "type": stream.type,
        "codec": cc.name if cc is not None else None,
        "duration": _stream_seconds(stream),
        "start_time": float(stream.start_time * stream.time_base)
        if stream.start_time is not None and stream.time_base is not None
        else None,
        "language": stream.language,
    }
    if stream.type == "video":
        info.update(
            width=cc.width or None,
            height=cc.height or None,
            fps=_fraction_to_float(stream.average_rate) or _fraction_to_float(stream.guessed_rate),
            pix_fmt=cc.format.name if cc.format is not None else None,
            attached_pic=_is_cover_art(stream),
        )
    elif stream.type == "audio":
        info.update(
            sample_rate=cc.sample_rate or None,
            channels=cc.channels or None,
        )
    return info


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame | None:
    """Decodes the first frame of ``stream`` (bounded); None when none comes out."""
    # Single-threaded: frame threading would hold the first frame back until several packets are queued.
    stream.codec_context.thread_type = "NONE"
    try:
        for n, packet in enumerate(container.demux(stream)):
            if n >= _FIRST_FRAME_MAX_PACKETS:
                return None
            for frame in packet.decode():
                return frame  # type: ignore[return-value]
    except (av.FFmpegError, OSError) as e:
        logger.debug("first frame of %s not decodable: %s", container.name, e)
    return None


def _scan_duration(container: av.container.InputContainer, path: Path) -> float | None:
    """Duration from the packets, for containers that do not state one (raw streams, broken headers)."""
    deadline = time.monotonic() + _SCAN_MAX_SECONDS
    start: float | None = None
    end: float | None = None
    # Raw elementary streams have packets without timestamps: add up their durations (or count them) instead.
    summed: dict[int, float] = {}
    try:
        for packet in container.demux():
            if time.monotonic() > deadline:
                logger.debug("duration scan of %s ran out of time", path)
                return None
            stream = packet.stream
            if stream.type not in ("video", "audio"):
                continue
            tb = packet.time_base
            if packet.duration and tb is not None:
                step = float(packet.duration * tb)
            else:
                guess = getattr(stream, "average_rate", None) or getattr(stream, "guessed_rate", None)
                rate = _fraction_to_float(guess)
                step = 1.0 / rate if stream.type == "video" and rate else 0.0
            summed[stream.index] = summed.get(stream.index, 0.0) + step
            if packet.pts is None or tb is None:
                continue
            t0 = float(packet.pts * tb)
            start = t0 if start is None else min(start, t0)
            end = t0 + step if end is None else max(end, t0 + step)
    except (av.FFmpegError, OSError) as e:
        logger.debug("duration scan of %s stopped: %s", path, e)
    candidates = [end - start] if start is not None and end is not None else []
    candidates += summed.values()
    best = max(candidates, default=0.0)
    return best if best > 0 else None


def probe(path: Path) -> ProbeResult:
    """Probe ``path``; ``ValueError`` (one line, naming the file) when it is not usable media."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if path.is_dir():
        raise ValueError(f"expected a media file, got a directory: {path}")
    if not path.is_file():
        # FIFOs and devices would block or never end.
        raise ValueError(f"expected a regular media file: {path}")
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"empty file (0 bytes), expected audio or video: {path}")

    try:
        container = av.open(str(path), mode="r", options=_OPEN_OPTIONS, metadata_errors="replace")
    except (av.FFmpegError, OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"not a readable media file, expected audio or video: {path} ({_reason(e)})") from e

    with container:
        try:
            return _inspect(container, path, size)
        except (av.FFmpegError, OSError, UnicodeDecodeError, EOFError) as e:
            raise ValueError(f"corrupt media file: {path} ({_reason(e)})") from e


def _reason(error: BaseException) -> str:
    # PyAV's errors carry errno and the file name in str(); strerror alone is the readable part.
    text = getattr(error, "strerror", None) or str(error)
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _inspect(container: av.container.InputContainer, path: Path, size: int) -> ProbeResult:
    streams = [_describe_stream(s) for s in container.streams]
    videos = [s for s in container.streams.video if not _is_cover_art(s)]
    audios = list(container.streams.audio)
    if not videos and not audios:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        raise ValueError(f"no audio or video stream in {path} (streams: {kinds})")

    # The first stream of each kind is the one the rest of the pipeline uses (ffmpeg maps [0:v:0] alike).
    video = videos[0] if videos else None
    audio = audios[0] if audios else None

    duration: float | None = None
    if container.duration is not None and container.duration > 0:
        duration = container.duration / av.time_base
    else:
        lengths = [d for d in (_stream_seconds(s) for s in (*videos, *audios)) if d]
        duration = max(lengths) if lengths else None

    width = height = None
    rotation = 0
    sar = 1.0
    fps = None
    if video is not None:
        cc = video.codec_context
        width, height = cc.width or None, cc.height or None
        fps = _fraction_to_float(video.average_rate) or _fraction_to_float(video.guessed_rate)
        sar = _fraction_to_float(video.sample_aspect_ratio) or 1.0
        # PyAV exposes the display matrix only on decoded frames, so read one (cheap, bounded).
        frame = _first_frame(container, video)
        if frame is not None:
            width, height = frame.width, frame.height
            rotation = int(round(frame.rotation or 0)) % 360

    if duration is None or duration <= 0 or not math.isfinite(duration):
        if size <= _SCAN_MAX_BYTES:
            # A fresh demuxer: the first-frame read above moved this one, and raw streams cannot seek back.
            with av.open(str(path), mode="r", options=_OPEN_OPTIONS, metadata_errors="replace") as again:
                duration = _scan_duration(again, path)
        if duration is None or duration <= 0:
            raise ValueError(f"unknown or zero duration, expected a positive length: {path}")

    result = ProbeResult(
        path=path,
        size_bytes=size,
        duration=float(duration),
        format_name=container.format.name,
        has_video=video is not None,
        has_audio=audio is not None,
        video_codec=video.codec_context.name if video is not None else None,
        audio_codec=audio.codec_context.name if audio is not None else None,
        width=width,
        height=height,
        fps=fps,
        sample_rate=(audio.codec_context.sample_rate or None) if audio is not None else None,
        channels=(audio.codec_context.channels or None) if audio is not None else None,
        streams=streams,
        rotation=rotation,
        sample_aspect_ratio=sar,
        video_stream_index=video.index if video is not None else None,
        audio_stream_index=audio.index if audio is not None else None,
    )
    logger.debug("probed %s: %s", path, result)
    return result
