"""Playback for the server: byte-range file responses, what Chromium plays natively, and moment clips for the rest."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import mimetypes
import os
import re
import stat
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from starlette.datastructures import Headers
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_MAX_SECONDS",
    "MediaStreams",
    "browser_playable",
    "clip_media_type",
    "file_response",
    "mime_type",
    "moment_clip",
]

# A moment clip is for watching a moment, not for downloading the film.
CLIP_MAX_SECONDS = 600.0
# Bumped whenever the ffmpeg recipe changes, so clips cached by an older recipe are made again.
_CLIP_RECIPE = "h264-aac-720p-v1"
# Waiting for another request that is making the same clip: its ffmpeg is bounded by its own timeout.
_LOCK_POLL_SECONDS = 0.05


class MediaStreams(Protocol):
    """What the catalog stores for a file (``store.catalog.Media``; ``indexer.probe.ProbeResult`` has it too)."""

    path: Any  # str in the catalog, Path in a ProbeResult
    format_name: str | None
    video_codec: str | None
    audio_codec: str | None
    has_video: bool


# -- what a browser plays ---------------------------------------------------------------------------

# The catalog holds PyAV's *decoder* names, which differ from the codec names by build (mp3float, libopus ...).
_CODEC_ALIASES = {
    "mp3float": "mp3", "mp3fixed": "mp3", "aac_fixed": "aac", "libopus": "opus", "libvorbis": "vorbis",
    "libvpx": "vp8", "libvpx-vp9": "vp9", "libdav1d": "av1", "libaom-av1": "av1", "libopenh264": "h264",
}
# Containers as libavformat names them (ProbeResult.format_name is a comma list such as "matroska,webm"),
# with the codecs Chromium decodes in each without hardware help. Deliberately left out: HEVC and AC-3
# (hardware or platform dependent), H.264 in Matroska (Chromium plays it, but it is no supported type),
# Theora (being removed from Chromium), FLAC in Ogg, MPEG-TS (MSE only). When unsure, a clip is made.
_PLAYABLE: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "mp4": (frozenset({"h264", "vp9", "av1"}), frozenset({"aac", "mp3", "opus", "flac"})),
    "webm": (frozenset({"vp8", "vp9", "av1"}), frozenset({"opus", "vorbis"})),
    "ogg": (frozenset(), frozenset({"opus", "vorbis"})),
    "mp3": (frozenset(), frozenset({"mp3"})),
    "aac": (frozenset(), frozenset({"aac"})),
    "flac": (frozenset(), frozenset({"flac"})),
    "wav": (frozenset(), frozenset({"pcm_u8", "pcm_s16le", "pcm_s24le", "pcm_s32le", "pcm_f32le"})),
}
# H.264 beyond 8-bit 4:2:0 (High 4:4:4, High 10) plays in Debian's Chromium (software decoding) but not
# on hardware decoders nor in every browser: a clip is the safe answer. VP9 and AV1 take 10-bit too.
_PIX_FMTS = {
    "h264": frozenset({"yuv420p", "yuvj420p"}),
    "vp8": frozenset({"yuv420p", "yuvj420p", "yuva420p"}),
    "vp9": frozenset({"yuv420p", "yuvj420p", "yuva420p", "yuv420p10le"}),
    "av1": frozenset({"yuv420p", "yuvj420p", "yuv420p10le"}),
}
_MIME = {
    "mp4": ("video/mp4", "audio/mp4"), "webm": ("video/webm", "audio/webm"), "ogg": ("video/ogg", "audio/ogg"),
    "mp3": ("audio/mpeg", "audio/mpeg"), "aac": ("audio/aac", "audio/aac"), "flac": ("audio/flac", "audio/flac"),
    "wav": ("audio/wav", "audio/wav"), "avi": ("video/x-msvideo", "video/x-msvideo"),
    "mpeg": ("video/mpeg", "audio/mpeg"), "mpegts": ("video/mp2t", "video/mp2t"),
    "asf": ("video/x-ms-asf", "audio/x-ms-wma"), "aiff": ("audio/aiff", "audio/aiff"),
}


def _family(format_name: str | None) -> str | None:
    """The container family of a libavformat format list: "mov,mp4,m4a,3gp,3g2,mj2" -> "mp4"."""
    names = set((format_name or "").lower().split(","))
    if "mp4" in names or "mov" in names:
        return "mp4"
    if "webm" in names or "matroska" in names:
        return "webm"
    for family in ("ogg", "mp3", "aac", "flac", "wav", "avi", "mpeg", "mpegts", "asf", "aiff"):
        if family in names:
            return family
    return None


def _codec(name: str | None) -> str | None:
    return _CODEC_ALIASES.get(name.lower(), name.lower()) if name else None


def _video_pix_fmt(streams: Iterable[dict[str, Any]] | None) -> str | None:
    # The stream the probe calls the video: the first one that is not cover art.
    for s in streams or ():
        if s.get("type") == "video" and not s.get("attached_pic"):
            return s.get("pix_fmt")
    return None


def browser_playable(media: MediaStreams) -> bool:
    """Whether Chromium plays the file itself (``<video src>``, seeking by byte ranges); False when unsure.

    Reads ``format_name``, ``video_codec``, ``audio_codec``, ``has_video`` and, when the object has it,
    ``streams`` (the probe's stream list) for the video's pixel format.
    """
    family = _family(media.format_name)
    if family not in _PLAYABLE:
        return False
    videos, audios = _PLAYABLE[family]
    video, audio = _codec(media.video_codec), _codec(media.audio_codec)
    if media.has_video:
        if video not in videos:
            return False
        pix_fmt = _video_pix_fmt(getattr(media, "streams", None))
        # An unknown pixel format (a catalog row without streams) is let through: the codec said yes.
        if pix_fmt is not None and pix_fmt not in _PIX_FMTS.get(video or "", frozenset()):
            return False
    elif audio is None:
        return False
    return audio is None or audio in audios


def mime_type(media: MediaStreams) -> str:
    """The Content-Type to serve the original file with: from the container, else the file name."""
    family = _family(media.format_name)
    if family in _MIME:
        video, audio = _MIME[family]
        return video if media.has_video else audio
    guessed, _ = mimetypes.guess_type(str(media.path))
    return guessed or "application/octet-stream"


def clip_media_type(has_video: bool) -> str:
    """The Content-Type of a moment clip made by :func:`moment_clip`."""
    return "video/mp4" if has_video else "audio/mp4"


# -- byte ranges ------------------------------------------------------------------------------------


_RANGE_SPEC = re.compile(r"\s*([0-9]*)\s*-\s*([0-9]*)\s*")


class _Unsatisfiable(Exception):
    pass


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range (first, last inclusive) to send; None for the whole file.

    RFC 9110 lets a server ignore a Range it does not serve: a missing or malformed header, another
    unit and a request for several ranges (no browser sends one for media) get the whole file, 200.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec)
    if match is None or not any(match.groups()):
        return None
    first_s, last_s = match.groups()
    if not first_s:  # a suffix: the last N bytes
        n = int(last_s)
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return max(size - n, 0), size - 1
    first = int(first_s)
    last = int(last_s) if last_s else size - 1  # an open range runs to the end
    if last_s and last < first:
        return None
    if first >= size:
        raise _Unsatisfiable
    return first, min(last, size - 1)


class _RangeFileResponse(FileResponse):
    """Starlette's FileResponse (chunked streaming, HEAD, If-Range) serving the range *we* parsed.

    Starlette reads the Range header from the request itself and answers a malformed one with a
    400 in plain text; here the header is replaced by the canonical form of the range chosen by
    :func:`_parse_range` (or removed), and If-None-Match gets its 304.
    """

    def __init__(self, path: Path, byte_range: tuple[int, int] | None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._range = byte_range

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_headers = Headers(scope=scope)
        if scope["type"] == "http" and _etag_matches(request_headers.get("if-none-match"), self.headers["etag"]):
            keep = {k: self.headers[k] for k in ("etag", "last-modified", "cache-control") if k in self.headers}
            return await Response(status_code=304, headers=keep)(scope, receive, send)
        raw = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"range"]
        if self._range is not None:
            raw.append((b"range", f"bytes={self._range[0]}-{self._range[1]}".encode("latin-1")))
        await super().__call__({**scope, "headers": raw}, receive, send)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags


def file_response(
    path: Path, range_header: str | None, media_type: str, *, cache_control: str = "private, max-age=3600"
) -> Response:
    """The file at ``path`` as a response: 200 whole, 206 one byte range, 416 a range past the end.

    ``range_header`` is the request's ``Range`` (it decides the range; the one in the request scope
    is overridden). The body streams in 64 KiB chunks. Headers: ``Accept-Ranges: bytes``,
    ``Content-Length``, ``Content-Range`` (206 and 416), ``ETag``/``Last-Modified`` (from size and
    mtime; a matching ``If-None-Match`` gets 304, ``If-Range`` is honoured) and ``Cache-Control``.
    A multi-range, malformed or non-bytes Range gets the whole file (200). A 416 has the JSON body
    ``{"error": ...}`` and ``Content-Range: bytes */SIZE``. ``FileNotFoundError`` when ``path`` is
    not a regular file.
    """
    path = Path(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise FileNotFoundError(f"not a regular file: {path}")
    headers = {"Cache-Control": cache_control}
    try:
        byte_range = _parse_range(range_header, st.st_size)
    except _Unsatisfiable:
        return JSONResponse(
            {"error": f"range not satisfiable: the file has {st.st_size} bytes"},
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{st.st_size}", "Accept-Ranges": "bytes"},
        )
    return _RangeFileResponse(path, byte_range, media_type=media_type, stat_result=st, headers=headers)


# -- moment clips -----------------------------------------------------------------------------------


def _clip_window(start: float, end: float, duration: float | None) -> tuple[float, float]:
    """[start, end] checked, rounded to 0.1 s (the cache key) and capped to CLIP_MAX_SECONDS and the duration."""
    try:
        start, end = float(start), float(end)
    except (TypeError, ValueError):
        raise ValueError(f"expected numbers of seconds for start and end, got {start!r} and {end!r}") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
        raise ValueError(f"expected 0 <= start < end (seconds), got start={start} end={end}")
    if duration is not None and duration > 0:
        if start >= duration:
            raise ValueError(f"start {start:.1f} s is past the end of the media ({duration:.1f} s)")
        end = min(end, duration)
    start = round(start, 1)
    end = min(max(round(end, 1), start + 0.1), start + CLIP_MAX_SECONDS)
    return start, round(end, 1)


def _clip_key(source: Path, st: os.stat_result, start: float, end: float, has_video: bool) -> str:
    identity = f"{source}\0{st.st_size}\0{st.st_mtime_ns}\0{start:.1f}\0{end:.1f}\0{has_video}\0{_CLIP_RECIPE}"
    return hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _ffmpeg_command(ffmpeg: str, source: Path, start: float, end: float, out: Path, has_video: bool) -> list[str]:
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-v", "error", "-y",
           "-ss", f"{start:.3f}", "-i", str(source), "-t", f"{end - start:.3f}",
           "-map_metadata", "-1", "-map_chapters", "-1", "-sn", "-dn"]
    if has_video:
        # Fit in 1280x720 (720x1280 upright) without upscaling, even sides, 8-bit 4:2:0, interlaced frames
        # deinterlaced (DVD and broadcast MPEG-2): what every browser's H.264 decoder takes.
        landscape = "gte(iw\\,ih)"
        fit = (f"scale=w='min(iw\\,if({landscape}\\,1280\\,720))':h='min(ih\\,if({landscape}\\,720\\,1280))'"
               ":force_original_aspect_ratio=decrease:force_divisible_by=2")
        cmd += ["-map", "0:v:0", "-map", "0:a:0?", "-vf", f"yadif=deint=interlaced,{fit},format=yuv420p",
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-profile:v", "high"]
    else:
        cmd += ["-map", "0:a:0", "-vn"]
    cmd += ["-c:a", "aac", "-b:a", "128k", "-ac", "2", "-max_muxing_queue_size", "1024",
            "-movflags", "+faststart", "-f", "mp4", str(out)]
    return cmd


def _one_line(stderr: bytes | str | None) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else "no message")[:300]


def _run_ffmpeg(cmd: list[str], tmp: Path, source: Path, has_video: bool, timeout: float) -> None:
    """Run ffmpeg into ``tmp`` and check what came out; one-line errors, ``tmp`` removed on any failure."""
    logger.debug("moment clip: %s", subprocess.list2cmdline(cmd))
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg could not make a clip of {source.name}: {_one_line(proc.stderr)}")
        from indexer.probe import probe  # PyAV: imported by the first clip, not by the server's start

        try:
            made = probe(tmp)
        except ValueError:
            made = None
        if made is None or made.duration <= 0 or (has_video and not made.has_video):
            # ffmpeg exits 0 with an empty file when the window holds no frames (past the real end).
            raise ValueError(f"nothing to play in that time range of {source.name} (past its end?)")
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg took longer than {timeout:g} s to make a clip of {source.name}") from None
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"could not run ffmpeg ({cmd[0]}): {e.strerror or e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _KeyLock:
    """An exclusive ``flock`` on ``path``: one maker per clip, across threads and server processes alike."""

    def __init__(self, path: Path, timeout: float) -> None:
        self.path, self.timeout, self.fd = path, timeout, -1

    def __enter__(self) -> _KeyLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise RuntimeError("timed out waiting for another request making the same clip") from None
                time.sleep(_LOCK_POLL_SECONDS)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing the descriptor releases the lock


def moment_clip(
    source: Path,
    start: float,
    end: float,
    cache_dir: Path,
    *,
    has_video: bool,
    ffmpeg: str,
    duration: float | None = None,
    timeout: float = 300.0,
) -> Path:
    """The cached H.264/AAC MP4 of ``source`` between ``start`` and ``end`` seconds; made with ffmpeg if absent.

    Blocking (run it in a worker thread). Video: at most 1280x720, even sides, yuv420p, ``+faststart``;
    audio-only media (``has_video=False``): AAC in MP4 (:func:`clip_media_type` gives the type).
    The window is rounded to 0.1 s, capped to CLIP_MAX_SECONDS and, when ``duration`` is given, to the
    media's length. The cache key is (resolved path, size, mtime, window, kind): an edited file gets
    new clips. Concurrent calls for one clip make it once (a lock file ``<key>.lock`` beside it);
    the clip appears by rename, never half-written. ``ValueError`` (one line) for a bad window,
    ``FileNotFoundError`` when ``source`` is gone, ``RuntimeError`` (one line) when ffmpeg fails or
    runs past ``timeout`` seconds; nothing partial is left behind.
    """
    start, end = _clip_window(start, end, duration)
    source = Path(source).resolve()
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise FileNotFoundError(f"the source file is gone: {source}") from None
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = _clip_key(source, st, start, end, has_video)
    final = cache_dir / f"{key}.mp4"
    if final.is_file():
        return final
    with _KeyLock(cache_dir / f"{key}.lock", timeout + 30.0):
        if final.is_file():  # made by the request that held the lock before us
            return final
        tmp = cache_dir / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
        t0 = time.perf_counter()
        _run_ffmpeg(_ffmpeg_command(ffmpeg, source, start, end, tmp, has_video), tmp, source, has_video, timeout)
        os.replace(tmp, final)
    logger.info("moment clip of %s [%.1f, %.1f] made in %.2f s", source.name, start, end, time.perf_counter() - t0)
    return final
