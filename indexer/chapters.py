"""Chapter boundaries of one file from its stored per-clip signals: topic, visual change, speech on/off, surprise."""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

SIGNALS = ("topic", "visual", "audio", "surprise")


@dataclass(frozen=True)
class ChapterOptions:
    """How boundaries are scored and picked.

    Lengths: a chapter is at least ``min_seconds`` and at most ``max_seconds`` long. 12 s is the
    shortest stretch worth a seek-bar marker and a title (a sentence or two of speech, a shot or
    two), and it is below 20 s - 2 x 3 s, so two true boundaries 20 s apart (the shortest part of
    the evaluation) both survive even when each is found 3 s off. 300 s: a chapter longer than
    five minutes is no longer a place to jump to, so a long file without found boundaries is still
    cut (at its strongest boundaries, else evenly) into stretches a person can skim. Neither was
    tuned: the manifest's parts are 20-36 s, so it cannot tell 10 s from 15 s or 5 min from 10.

    threshold, topic_scale, topic_window, pause_seconds and the audio weight were grid-searched on
    bench/chapters.json as a whole (bench/chapters.py --tune; BENCHMARKS.md): many settings tie
    there, and these are the ones whose grid neighbours score best too. The surprise weight and
    scale were searched the same way with the rest fixed: every setting tried (weight 0.3-1.0,
    1-5 nats) scored the same there, the picture changes it finds being the visual signal's too.
    """

    min_seconds: float = 12.0
    max_seconds: float = 300.0
    single_below: float = 60.0  # a file shorter than this is one chapter
    signals: tuple[str, ...] = SIGNALS
    # Seconds each side of a boundary that topic and visual compare: a topic needs a few sentences
    # to show; a scene a few shots (a montage cuts every 1-3 s, its mix stays).
    topic_window: float = 16.0
    visual_window: float = 6.0
    # Fewest clips with speech each side for a topic score (fewer: the window mean is one phrase), and
    # the least share of each side's clips with speech: a topic "change" across a long silence (two
    # talks either side of a film) is not placed in the silence; the audio signal marks its edges.
    topic_min_clips: int = 3
    topic_min_share: float = 0.5
    # Where each raw score reaches 0.63 (1 - 1/e): a TextTiling depth of cosine similarity for topic
    # and visual, a silence of this many seconds for audio, nats of loss above the file's median
    # for surprise.
    topic_scale: float = 1.2
    visual_scale: float = 0.3
    pause_seconds: float = 3.0
    surprise_scale: float = 2.0
    # A silence's boundary lies this long after the speech before it stops (mid-silence if shorter).
    pause_lead: float = 1.0
    # A visual change that is not on a shot cut counts this much (a cut marks where the change is).
    off_cut: float = 0.8
    # Each signal's weight in the noisy-or of the combined score.
    weights: tuple[tuple[str, float], ...] = (("topic", 1.0), ("visual", 1.0), ("audio", 0.8), ("surprise", 0.6))
    # A boundary needs at least this combined score (in [0, 1]), unless a too long chapter must be cut.
    threshold: float = 0.5

    def __post_init__(self) -> None:
        unknown = [s for s in self.signals if s not in SIGNALS]
        if unknown:
            raise ValueError(f"expected signals among {SIGNALS}, got {unknown}")
        if not (0 < self.min_seconds <= self.max_seconds):
            raise ValueError(f"expected 0 < min_seconds <= max_seconds, got {self.min_seconds}, {self.max_seconds}")
        if self.single_below < 0:
            raise ValueError(f"expected single_below >= 0, got {self.single_below}")
        for name in ("topic_window", "visual_window", "topic_scale", "visual_scale",
                     "pause_seconds", "pause_lead", "surprise_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"expected {name} > 0, got {getattr(self, name)}")
        if not 0.0 <= self.topic_min_share <= 1.0 or self.topic_min_clips < 1:
            raise ValueError(f"expected topic_min_share in [0, 1] and topic_min_clips >= 1, got "
                             f"{self.topic_min_share}, {self.topic_min_clips}")
        if not 0.0 <= self.off_cut <= 1.0 or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"expected off_cut and threshold in [0, 1], got {self.off_cut}, {self.threshold}")
        bad = [(k, w) for k, w in self.weights if k not in SIGNALS or not 0.0 <= w <= 1.0]
        if bad:
            raise ValueError(f"expected weights as (signal, weight in [0, 1]) pairs, got {bad}")

    def weight(self, signal: str) -> float:
        return dict(self.weights).get(signal, 0.0)

    def version(self) -> str:
        """A short stable hash of every field: stored with chapters, so a changed setting means recomputation."""
        payload = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class Timeline:
    """One file's per-clip signals as stored at ingest (nothing decoded)."""

    duration: float
    clip_times: np.ndarray  # (n, 2) start, end seconds
    speech: np.ndarray | None = None  # (n, 384) unit MiniLM vectors of each clip's transcript window
    has_speech: np.ndarray | None = None  # (n,) bool
    features: np.ndarray | None = None  # (n, D) pooled backbone features (video only)
    cuts: list[float] = field(default_factory=list)  # shot cut times
    speech_spans: list[tuple[float, float]] = field(default_factory=list)  # transcript segments
    surprise: np.ndarray | None = None  # (n,) VideoBERT's loss on each clip's token given the previous ones


@dataclass
class ChapterSpan:
    start: float
    end: float
    first_clip: int
    end_clip: int  # exclusive
    score: float  # combined boundary strength at start; 0.0 for the first chapter
    signals: dict[str, float] = field(default_factory=dict)  # per-signal score at the start boundary


def _check(timeline: Timeline) -> int:
    times = np.asarray(timeline.clip_times, dtype=np.float64)
    if times.ndim != 2 or (times.size and times.shape[1] != 2):
        raise ValueError(f"expected clip_times of shape (n, 2), got {times.shape}")
    n = len(times)
    if not math.isfinite(timeline.duration) or timeline.duration < 0:
        raise ValueError(f"expected a finite duration >= 0, got {timeline.duration!r}")
    for name in ("speech", "has_speech", "features", "surprise"):
        value = getattr(timeline, name)
        if value is not None and len(value) != n:
            raise ValueError(f"expected {name} with one row per clip ({n}), got {len(value)}")
    return n


def _window_sums(values: np.ndarray, t: np.ndarray, edges: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Sums of ``values`` rows whose time ``t`` (sorted) lies in [lo, hi) for each (lo, hi) of consecutive
    ``edges``; one prefix sum for all of them, so O(n)."""
    prefix = np.concatenate([np.zeros((1, *values.shape[1:]), values.dtype), np.cumsum(values, axis=0)])
    at = [np.searchsorted(t, e, side="left") for e in edges]
    return [prefix[b] - prefix[a] for a, b in zip(at, at[1:])]


def _soft(x: np.ndarray, scale: float) -> np.ndarray:
    """A raw score in [0, 1): 0.63 at ``scale``, rising strictly, so a plateau of strong scores keeps its peak."""
    return 1.0 - np.exp(-np.maximum(x, 0.0) / scale)


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def _depth(sim: np.ndarray, valid: np.ndarray, reach: int) -> np.ndarray:
    """TextTiling's depth: how far the similarity at each gap lies below the highest similarity on each side.

    The peaks are searched within ``reach`` gaps each side (beyond a window the compared stretches no
    longer overlap, and a dip far away belongs to another boundary); invalid gaps are no peaks.
    """
    n = len(sim)
    if n == 0:
        return np.zeros(0)
    pad = np.concatenate([np.full(reach, -np.inf), np.where(valid, sim, -np.inf), np.full(reach, -np.inf)])
    run = np.lib.stride_tricks.sliding_window_view(pad, reach + 1).max(axis=1)  # run[j]: max of pad[j..j+reach]
    left, right = run[:n], run[reach:reach + n]
    return np.where(valid, (left - sim) + (right - sim), 0.0)


def _side_means(vectors: np.ndarray, mask: np.ndarray, mids: np.ndarray, t: np.ndarray, window: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sums of masked rows in [t - window, t) and [t, t + window) for each boundary time t, the masked
    rows' counts there and all rows' counts there."""
    edges = (t - window, t, t + window)
    left, right = _window_sums(np.where(mask[:, None], vectors, 0), mids, edges)
    nl, nr = _window_sums(mask.astype(np.float64), mids, edges)
    cl, cr = _window_sums(np.ones(len(mids)), mids, edges)
    return left, right, nl, nr, cl, cr


def _topic(tl: Timeline, o: ChapterOptions, mids: np.ndarray, t: np.ndarray, step: float) -> np.ndarray:
    n = len(t)
    if tl.speech is None or tl.has_speech is None or not np.any(tl.has_speech):
        return np.zeros(n)
    speech = np.asarray(tl.speech, dtype=np.float32)
    left, right, nl, nr, cl, cr = _side_means(speech, np.asarray(tl.has_speech, bool), mids, t, o.topic_window)
    valid = ((nl >= o.topic_min_clips) & (nr >= o.topic_min_clips)
             & (nl >= o.topic_min_share * cl) & (nr >= o.topic_min_share * cr))
    valid[0] = False
    sim = np.where(valid, _cosine_rows(left, right), 0.0)
    reach = max(1, int(round(o.topic_window / step)))
    return _soft(_depth(sim, valid, reach), o.topic_scale)


def _visual(tl: Timeline, o: ChapterOptions, mids: np.ndarray, t: np.ndarray, step: float) -> np.ndarray:
    n = len(t)
    if tl.features is None or n < 2:
        return np.zeros(n)
    f = np.asarray(tl.features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    # Means over a window on each side: a montage's cuts change every shot but not the mix of shots.
    left, right, nl, nr, _, _ = _side_means(f, np.ones(n, bool), mids, t, o.visual_window)
    valid = (nl >= 1) & (nr >= 1)
    valid[0] = False
    sim = np.where(valid, _cosine_rows(left, right), 1.0)
    reach = max(1, int(round(o.visual_window / step)))
    score = _soft(_depth(sim, valid, reach), o.visual_scale)
    if tl.cuts:
        cuts = np.sort(np.asarray(tl.cuts, dtype=np.float64))
        j = np.searchsorted(cuts, t)
        nearest = np.minimum(np.abs(cuts[np.clip(j, 0, len(cuts) - 1)] - t),
                             np.abs(cuts[np.clip(j - 1, 0, len(cuts) - 1)] - t))
        on_cut = nearest < 0.05
    else:
        on_cut = np.zeros(n, bool)
    return score * np.where(on_cut, 1.0, o.off_cut)


def _merge(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for s, e in sorted((float(a), float(b)) for a, b in spans if b > a):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def _audio(tl: Timeline, o: ChapterOptions, t: np.ndarray) -> np.ndarray:
    """Speech stopping: each silence after speech (before more speech, or to the end) scores by its length.

    The boundary goes just after the speech stops, not where it starts again: the silence belongs
    to what follows (a title card, a film, music before the next talk), so a long silence is one
    boundary, not two, and a breath between sentences only a hint for the other signals.
    """
    n = len(t)
    spans = _merge(tl.speech_spans)
    score = np.zeros(n)
    if not spans or n < 2:
        return score
    gaps = [(a, b) for (_, a), (b, _) in zip(spans, spans[1:])]
    if tl.duration > spans[-1][1]:
        gaps.append((spans[-1][1], float(tl.duration)))
    g = np.asarray(gaps, dtype=np.float64)
    at = g[:, 0] + np.minimum((g[:, 1] - g[:, 0]) / 2, o.pause_lead)
    j = np.clip(np.searchsorted(t, at), 1, n - 1)
    nearest = np.where(np.abs(t[j - 1] - at) <= np.abs(t[j] - at), j - 1, j)  # the clip boundary closest to it
    np.maximum.at(score, nearest, _soft(g[:, 1] - g[:, 0], o.pause_seconds))
    score[0] = 0.0
    return score


def _surprise(tl: Timeline, o: ChapterOptions) -> np.ndarray | None:
    """How much more VideoBERT's loss on a clip's token is than the file's median, in nats.

    Not a z-score: on a still frame the losses are all ~0 with no spread, and dividing by that
    spread would make a 0.1-nat wobble a certain boundary.
    """
    if tl.surprise is None:
        return None
    s = np.asarray(tl.surprise, dtype=np.float64)
    ok = np.isfinite(s)
    if ok.sum() < 3:
        return np.zeros(len(s))
    excess = np.where(ok, s - float(np.median(s[ok])), 0.0)
    score = _soft(excess, o.surprise_scale)
    score[0] = 0.0
    return score


def boundary_scores(timeline: Timeline, options: ChapterOptions) -> dict[str, np.ndarray]:
    """Per enabled signal, a score in [0, 1] for each clip index i (the boundary before clip i; index 0 is 0)."""
    n = _check(timeline)
    times = np.asarray(timeline.clip_times, dtype=np.float64).reshape(-1, 2)
    t = times[:, 0] if n else np.zeros(0)
    mids = times.mean(1) if n else np.zeros(0)
    step = float(np.median(np.diff(times, axis=1))) if n else 1.0
    out: dict[str, np.ndarray] = {}
    for signal in options.signals:
        if signal == "topic":
            out[signal] = _topic(timeline, options, mids, t, step)
        elif signal == "visual":
            out[signal] = _visual(timeline, options, mids, t, step)
        elif signal == "audio":
            out[signal] = _audio(timeline, options, t)
        elif signal == "surprise":
            score = _surprise(timeline, options)
            if score is not None:
                out[signal] = score
    return out


def combine(scores: dict[str, np.ndarray], options: ChapterOptions, n: int) -> np.ndarray:
    """The noisy-or of the weighted signals: any one sure signal makes a boundary, agreeing weak ones add up."""
    keep = np.ones(n)
    for signal, score in scores.items():
        keep *= 1.0 - options.weight(signal) * np.clip(score, 0.0, 1.0)
    out = 1.0 - keep
    if n:
        out[0] = 0.0
    return out


def _pick(starts: np.ndarray, combined: np.ndarray, duration: float, o: ChapterOptions) -> list[int]:
    """Boundary clip indices: strongest first with no two closer than min_seconds, then long chapters cut."""
    n = len(starts)
    chosen: list[int] = []
    taken: list[float] = []  # their times, sorted

    for i in np.argsort(-combined, kind="stable"):
        if combined[i] < o.threshold or combined[i] <= 0.0:
            break
        t = float(starts[i])
        if t < o.min_seconds or duration - t < o.min_seconds:
            continue
        k = bisect.bisect_left(taken, t)
        if (k and t - taken[k - 1] < o.min_seconds) or (k < len(taken) and taken[k] - t < o.min_seconds):
            continue
        taken.insert(k, t)
        chosen.append(int(i))
    # A chapter longer than max_seconds is cut at its strongest boundary that keeps both halves long
    # enough, whatever its score; repeated until every chapter fits (or none can be cut further).
    while True:
        bounds = [0.0, *sorted(float(starts[i]) for i in chosen), duration]
        long = [(a, b) for a, b in zip(bounds, bounds[1:]) if b - a > o.max_seconds]
        if not long:
            break
        added = False
        for a, b in long:
            inside = [i for i in range(1, n) if a + o.min_seconds <= starts[i] <= b - o.min_seconds]
            if not inside:
                continue
            # Ties (no signal at all) go to the middle, so an undivided stretch is cut evenly.
            best = max(inside, key=lambda i: (round(float(combined[i]), 6), -abs(starts[i] - (a + b) / 2)))
            chosen.append(best)
            added = True
        if not added:
            break
    return sorted(chosen)


def find_chapters(timeline: Timeline, options: ChapterOptions) -> list[ChapterSpan]:
    """Contiguous chapters from 0 to the duration, each within [min_seconds, max_seconds] where the file allows."""
    n = _check(timeline)
    duration = float(timeline.duration)
    if n and duration <= 0:
        duration = float(np.asarray(timeline.clip_times)[-1, 1])
    if n == 0 or duration < options.single_below or duration < 2 * options.min_seconds:
        return [ChapterSpan(0.0, duration, 0, n, 0.0, {})]
    scores = boundary_scores(timeline, options)
    combined = combine(scores, options, n)
    starts = np.asarray(timeline.clip_times, dtype=np.float64)[:, 0]
    picked = _pick(starts, combined, duration, options)
    edges = [0, *picked, n]
    spans: list[ChapterSpan] = []
    for k, (a, b) in enumerate(zip(edges, edges[1:])):
        start = 0.0 if k == 0 else float(starts[a])
        end = duration if b == n else float(starts[b])
        signals = {} if k == 0 else {s: round(float(v[a]), 4) for s, v in scores.items()}
        spans.append(ChapterSpan(start, end, a, b, 0.0 if k == 0 else float(combined[a]), signals))
    logger.debug("%d chapters over %.1f s (%d clips)", len(spans), duration, n)
    return spans
