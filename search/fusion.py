"""Fusion of ranked candidate lists from several sources into one score per clip."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ClipKey = tuple[int, int]  # (media id, clip index)


@dataclass(frozen=True)
class Candidate:
    key: ClipKey
    score: float


def reciprocal_rank(
    lists: Mapping[str, Sequence[Candidate]], weights: Mapping[str, float], k: float = 60.0
) -> dict[ClipKey, float]:
    """Reciprocal-rank fusion (Cormack et al. 2009): sum over sources of w / (k + rank)."""
    fused: dict[ClipKey, float] = {}
    for source, candidates in lists.items():
        w = weights.get(source, 1.0)
        for rank, cand in enumerate(candidates, start=1):
            fused[cand.key] = fused.get(cand.key, 0.0) + w / (k + rank)
    return fused


def weighted_sum(
    lists: Mapping[str, Sequence[Candidate]], weights: Mapping[str, float], floors: Mapping[str, float] | None = None
) -> dict[ClipKey, float]:
    """A calibrated weighted sum: each source's scores mapped to [0, 1] before weighting.

    BM25 scores have no fixed scale, so they are divided by the best score of the query; cosine
    similarities are mapped from [floor, 1] to [0, 1], where the floor is the similarity an
    unrelated text typically reaches (MiniLM puts unrelated sentences around 0.0-0.1).
    """
    floors = floors or {}
    fused: dict[ClipKey, float] = {}
    for source, candidates in lists.items():
        if not candidates:
            continue
        w = weights.get(source, 1.0)
        if source == "lexical":
            top = max(c.score for c in candidates) or 1.0
            norm = [c.score / top for c in candidates]
        else:
            floor = floors.get(source, 0.1)
            norm = [max(0.0, (c.score - floor) / (1.0 - floor)) for c in candidates]
        for cand, value in zip(candidates, norm):
            fused[cand.key] = fused.get(cand.key, 0.0) + w * value
    return fused
