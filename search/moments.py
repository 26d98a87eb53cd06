"""Adjacent scored clips of one file become moments: a start clip, an end clip and a score."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from search.fusion import ClipKey


@dataclass
class MomentSpan:
    media_id: int
    first_clip: int
    last_clip: int
    score: float
    best_clip: int
    clip_scores: dict[int, float] = field(default_factory=dict)


def merge_moments(
    scores: Mapping[ClipKey, float],
    *,
    max_gap: int = 1,
    max_clips: int = 20,
    min_ratio: float = 0.5,
) -> list[MomentSpan]:
    """Group clips of the same file whose indices are at most ``max_gap`` apart into moments.

    A neighbour joins a moment only if its score is at least ``min_ratio`` of the moment's best,
    so one strong clip is not smeared over a long run of weak ones; a moment's score is its best
    clip's. Moments come back best first.
    """
    by_media: dict[int, list[tuple[int, float]]] = {}
    for (media_id, clip), score in scores.items():
        by_media.setdefault(media_id, []).append((clip, score))
    moments: list[MomentSpan] = []
    for media_id, clips in by_media.items():
        remaining = dict(clips)
        # Seed from the strongest clip, grow both ways over qualifying neighbours, repeat.
        for seed, seed_score in sorted(clips, key=lambda c: (-c[1], c[0])):
            if seed not in remaining:
                continue
            del remaining[seed]
            span = MomentSpan(media_id, seed, seed, seed_score, seed, {seed: seed_score})
            threshold = seed_score * min_ratio
            grew = True
            while grew and span.last_clip - span.first_clip + 1 < max_clips:
                grew = False
                for step in range(1, max_gap + 1):
                    left, right = span.first_clip - step, span.last_clip + step
                    if left in remaining and remaining[left] >= threshold:
                        span.clip_scores[left] = remaining.pop(left)
                        span.first_clip = left
                        grew = True
                        break
                    if right in remaining and remaining[right] >= threshold:
                        span.clip_scores[right] = remaining.pop(right)
                        span.last_clip = right
                        grew = True
                        break
            moments.append(span)
    moments.sort(key=lambda m: (-m.score, m.media_id, m.first_clip))
    return moments
