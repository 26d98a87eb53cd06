"""Samples RGB frames at a fixed rate and detects shot cuts, both from one ffmpeg process."""

from __future__ import annotations

import logging
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import numpy as np

from indexer.media import ffmpeg_exe
from indexer.probe import ProbeResult, probe

logger = logging.getLogger(__name__)

_CUTS_FILE = "cuts.txt"
_SCD_KEY = "lavfi.scd.time"
# Width of the copy that scene detection sees: scdet's score is a mean pixel difference, which barely moves with
# resolution (bikes.mp4: 10.63 at 160 px vs 10.66 at 640 px for its weakest cut), while scaling every frame of a
# 720p file to 160 px costs far less than letting scdet walk the full frames.
_SCD_WIDTH = 160


@dataclass(frozen=True)
class Frame:
    """One sampled frame: ``time`` in seconds from the start of the file, ``rgb`` (H, W, 3) uint8."""

    index: int
    time: float
    rgb: np.ndarray


def output_size(display_width: int, display_height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side`` and the aspect kept, both even."""
    if display_width <= 0 or display_height <= 0:
        raise ValueError(f"expected a positive frame size, got {display_width}x{display_height}")
    if short_side < 2:
        raise ValueError(f"expected short_side >= 2, got {short_side}")

    def even(x: float) -> int:
        # Even sizes keep every pixel format and encoder happy if frames are ever re-encoded.
        return max(2, int(math.floor(x / 2 + 0.5)) * 2)

    if display_width >= display_height:
        return even(display_width * short_side / display_height), even(short_side)
    return even(short_side), even(display_height * short_side / display_width)


# ffmpeg ends a failed run with summary lines that say nothing about the file; the reason is the line before.
_GENERIC_TRAILERS = (
    "error marking filters as finished",
    "cannot determine format of input stream",
    "conversion failed",
    "nothing was written into output file",
    "error while filtering",
    "error while processing the decoded data",
    "error closing",
    "error sending frames to consumers",
    "task finished with error code",
    "terminating thread with return code",
)
_LOG_PREFIX = re.compile(r"^(\[[^\]]* @ 0x[0-9a-f]+\]\s*)+", re.IGNORECASE)


def _last_line(text: str) -> str:
    """The most telling line of ffmpeg's error output: the last one that is not a generic summary."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    useful = [line for line in lines if not line.lower().startswith(_GENERIC_TRAILERS)]
    return (useful or lines or ["no error output"])[-1]


def parse_cuts(text: str) -> list[float]:
    """Cut times (seconds) from a ``metadata=mode=print`` dump of scdet's ``lavfi.scd.time`` key."""
    cuts: set[float] = set()
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == _SCD_KEY:
            try:
                t = float(value)
            except ValueError:
                logger.warning("ignoring unparsable scene-cut line %r", line)
                continue
            if math.isfinite(t):
                cuts.add(t)
    return sorted(cuts)


class VideoDecoder:
    """Iterates ``Frame`` objects sampled at ``fps`` from the main video stream of ``path``.

    One ffmpeg process decodes the file once; its filter graph splits the decoded stream into
    (1) ``fps`` sampling, scaled so the short side is ``short_side`` (display aspect kept), piped out as raw RGB, and
    (2) a cheap downscaled copy that runs ``scdet`` at the full frame rate and writes cut times to a temp file.
    ``cuts`` is filled once iteration has run to the end.

    Frame times: the graph uses ``fps=F:start_time=0:round=up``, so output frame ``k`` is the source frame on screen
    at exactly ``k / F`` seconds (the last one whose timestamp is <= k/F; the first frame is repeated if the video
    starts late). ffmpeg shifts the input so the container starts at 0, so times share the timeline of ``probe``'s
    duration and of the audio. rawvideo carries no timestamps; the default constant-frame-rate output mode keeps
    frame ``k`` at slot ``k`` (it would duplicate, never skip, a slot), hence ``time = k / F``.
    """

    def __init__(
        self,
        path: Path,
        fps: float = 1.0,
        short_side: int = 224,
        scene_threshold: float = 10.0,
        threads: int = 0,
        *,
        info: ProbeResult | None = None,
        detect_cuts: bool = True,
        skip_nonref: bool = False,
    ) -> None:
        """``info``: a probe of ``path`` if the caller has one (saves probing again).

        ``skip_nonref``: let the decoder drop non-reference frames (``-skip_frame noref``). On H.264 with B-frames
        this cuts decode CPU by about 40%; sampled frames and cuts may then land up to a couple of source frames
        late. Off by default.
        """
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"expected fps > 0, got {fps!r}")
        if not 0 <= scene_threshold <= 100:
            raise ValueError(f"expected scene_threshold in [0, 100], got {scene_threshold!r}")
        if threads < 0:
            raise ValueError(f"expected threads >= 0 (0 = ffmpeg's choice), got {threads!r}")
        self.path = Path(path)
        self.info = info if info is not None else probe(self.path)
        if not self.info.has_video or self.info.video_stream_index is None:
            raise ValueError(f"no video stream in {self.path}, expected a video file")
        display = self.info.display_size
        if display is None:
            raise ValueError(f"unknown frame size in {self.path}, expected a video stream with width and height")
        self.fps = float(fps)
        self.short_side = short_side
        self.width, self.height = output_size(display[0], display[1], short_side)
        self.scene_threshold = float(scene_threshold)
        self.threads = threads
        self.detect_cuts = detect_cuts
        self.skip_nonref = skip_nonref
        self.cuts: list[float] = []
        self.frames_decoded = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._iter: Iterator[Frame] | None = None

    @property
    def frames_total_estimate(self) -> int:
        """Expected frame count (duration x fps), for progress bars; off by one at most on normal files."""
        return max(1, math.ceil(self.info.duration * self.fps - 1e-9))

    def _fps_expr(self) -> str:
        # A rational keeps ffmpeg's slot arithmetic exact for rates like 1/3 that have no short decimal form.
        return str(Fraction(self.fps).limit_denominator(1_000_000))

    def filter_graph(self) -> str:
        """The ``-filter_complex`` graph; the cut file is written relative to ffmpeg's working directory."""
        src = f"[0:{self.info.video_stream_index}]"
        # Forcing the exact W:H (computed from the probed display size) guarantees the frame size that the pipe
        # reader expects, whatever the input's rotation or pixel aspect; format=rgb24 lets swscale convert in the
        # same pass as the resize.
        sample = (
            f"fps=fps={self._fps_expr()}:start_time=0:round=up,"
            f"scale={self.width}:{self.height}:flags=bicubic,setsar=1,format=rgb24"
        )
        if not self.detect_cuts:
            return f"{src}{sample}[out]"
        detect = (
            f"scale={_SCD_WIDTH}:-2:flags=fast_bilinear,"
            f"scdet=threshold={self.scene_threshold:g},"
            f"metadata=mode=print:key={_SCD_KEY}:file={_CUTS_FILE},"
            "nullsink"
        )
        return f"{src}split=2[s][d];[s]{sample}[out];[d]{detect}"

    def command(self) -> list[str]:
        """The full ffmpeg command line."""
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error"]
        if self.threads > 0:
            cmd += ["-threads", str(self.threads)]
        if self.skip_nonref:
            cmd += ["-skip_frame", "noref"]
        # Input-side -an/-sn/-dn: the other streams are dropped at the demuxer and never decoded.
        # "file:" stops ffmpeg reading a protocol out of a name with a colon in it.
        cmd += ["-an", "-sn", "-dn", "-i", "file:" + str(self.path.resolve())]
        cmd += ["-filter_complex", self.filter_graph(), "-map", "[out]"]
        cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
        return cmd

    def __iter__(self) -> Iterator[Frame]:
        self.close()  # a second iteration starts over, with a fresh process
        self._iter = self._frames()
        return self._iter

    def _frames(self) -> Iterator[Frame]:
        self.cuts = []
        self.frames_decoded = 0
        workdir = Path(tempfile.mkdtemp(prefix="vidx-decode-"))
        # stderr goes to a file, not a pipe: a chatty ffmpeg can then never block on a full pipe while we read
        # stdout, and no reader thread is needed.
        stderr: IO[bytes] = tempfile.TemporaryFile(dir=workdir)
        frame_bytes = self.width * self.height * 3
        cmd = self.command()
        logger.debug("decoding %s: %s", self.path, subprocess.list2cmdline(cmd))
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=workdir,
                bufsize=frame_bytes,
            )
            self._proc = proc
            if proc.stdout is None:  # cannot happen with stdout=PIPE; keeps the type checker honest
                raise RuntimeError("ffmpeg started without a stdout pipe")
            index = 0
            while True:
                rgb = np.empty((self.height, self.width, 3), dtype=np.uint8)
                got = _read_full(proc.stdout, memoryview(rgb).cast("B"))
                if got == 0:
                    break
                if got < frame_bytes:
                    # Only a killed ffmpeg writes a partial frame; the exit status below reports it.
                    logger.warning("%s: dropped a partial frame (%d of %d bytes)", self.path, got, frame_bytes)
                    break
                self.frames_decoded = index + 1
                yield Frame(index=index, time=index / self.fps, rgb=rgb)
                index += 1
            rc = proc.wait()
            stderr.seek(0)
            err = stderr.read().decode("utf-8", "replace")
            if rc != 0 or index == 0:
                what = "no decodable video frames" if index == 0 else f"ffmpeg failed after {index} frames"
                raise ValueError(f"{what} in {self.path}: {_last_line(err)}")
            if err.strip():
                # Damaged but partly decodable files end here: keep what decoded, say what ffmpeg saw.
                logger.info("ffmpeg decoded %s with complaints: %s", self.path, _last_line(err))
            if self.detect_cuts:
                cut_file = workdir / _CUTS_FILE
                self.cuts = parse_cuts(cut_file.read_text("utf-8", "replace")) if cut_file.exists() else []
            logger.debug("%s: %d frames, %d cuts", self.path, index, len(self.cuts))
        finally:
            self._kill()
            stderr.close()
            shutil.rmtree(workdir, ignore_errors=True)

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()

    def close(self) -> None:
        """Stop decoding now (kills ffmpeg, removes temp files); safe to call at any time and more than once."""
        it, self._iter = self._iter, None
        if it is not None:
            it.close()  # type: ignore[attr-defined]  # runs the generator's finally
        self._kill()

    def __enter__(self) -> VideoDecoder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _read_full(stream: IO[bytes], buf: memoryview) -> int:
    """Fill ``buf`` from ``stream``; returns the bytes read (less than len(buf) only at end of stream)."""
    filled = 0
    while filled < len(buf):
        n = stream.readinto(buf[filled:])  # type: ignore[attr-defined]
        if not n:
            break
        filled += n
    return filled
