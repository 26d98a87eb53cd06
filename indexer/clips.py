"""Cuts a timeline into non-overlapping clips of about ``clip_seconds``, with shot cuts as clip boundaries."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Clip:
    """``[start, end)`` seconds of the file; ``shot`` numbers the shot (between kept cuts) it belongs to."""

    index: int
    start: float
    end: float
    shot: int

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def middle(self) -> float:
        return (self.start + self.end) / 2


def keep_cuts(duration: float, cuts: Sequence[float], min_shot: float) -> list[float]:
    """The cuts that become shot boundaries: inside (0, duration), and no shot shorter than ``min_shot``."""
    kept: list[float] = []
    previous = 0.0
    for cut in sorted(float(c) for c in cuts):
        if not math.isfinite(cut):
            raise ValueError(f"expected finite cut times in seconds, got {cut!r}")
        # A cut right after the start, the previous cut, or right before the end would leave a sliver of a shot
        # (a flash frame, a fade's tail) too short to describe: it stays inside its neighbour.
        if cut - previous < min_shot or duration - cut < min_shot:
            continue
        kept.append(cut)
        previous = cut
    return kept


def make_clips(
    duration: float,
    cuts: Sequence[float],
    clip_seconds: float = 1.5,
    min_shot: float | None = None,
) -> list[Clip]:
    """Clips covering ``[0, duration]`` exactly, never straddling a kept cut.

    Each shot (the span between kept cuts) is split into ``max(1, round(length / clip_seconds))`` equal clips, so
    every kept cut is a clip boundary and clips are about ``clip_seconds`` long: 0.75x to 1.25x of it in shots of
    at least 1.5x, otherwise the whole shot (never shorter than ``min_shot`` unless the media is).
    ``min_shot`` (default ``clip_seconds / 2``): cuts closer than this to the start, the end or the previous kept
    cut are ignored. Audio-only media passes no cuts.
    """
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"expected a positive duration in seconds, got {duration!r}")
    if not (math.isfinite(clip_seconds) and clip_seconds > 0):
        raise ValueError(f"expected clip_seconds > 0, got {clip_seconds!r}")
    if min_shot is None:
        min_shot = clip_seconds / 2
    if not (math.isfinite(min_shot) and min_shot >= 0):
        raise ValueError(f"expected min_shot >= 0, got {min_shot!r}")

    bounds = [0.0, *keep_cuts(duration, cuts, min_shot), float(duration)]
    clips: list[Clip] = []
    for shot, (a, b) in enumerate(zip(bounds, bounds[1:])):
        # floor(x + 0.5), not round(): Python's round() goes to even, which would make 2.5 clips into 2.
        n = max(1, math.floor((b - a) / clip_seconds + 0.5))
        step = (b - a) / n
        # Edges computed once and shared, so clip i's end is bit-identical to clip i+1's start.
        edges = [a + i * step for i in range(n)] + [b]
        for start, end in zip(edges, edges[1:]):
            clips.append(Clip(index=len(clips), start=start, end=end, shot=shot))
    logger.debug("%.3f s, %d cuts -> %d shots, %d clips", duration, len(cuts), len(bounds) - 1, len(clips))
    return clips
