"""Visual vocabulary: hierarchical k-means (faiss) over clip features, giving each clip a discrete visual token."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "vidx.visual_vocab/1"


@dataclass(frozen=True)
class VocabConfig:
    """How the vocabulary is built. depth=None chooses it from the number of clips (see choose_depth)."""

    branching: int = 12  # VideoBERT: 12 children per node
    max_depth: int = 4  # VideoBERT: 4 levels, 12**4 = 20,736 tokens
    min_clips_per_leaf: int = 6  # depth is capped so a full tree has at least this many clips per leaf
    depth: int | None = None  # force a depth (1..max_depth) instead of choosing it from n
    niter: int = 20  # k-means iterations per node
    # Restarts per node, best kept: one k-means run from a random start can merge two clusters and split another.
    nredo: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.branching < 2:
            raise ValueError(f"branching must be >= 2, got {self.branching}")
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {self.max_depth}")
        if self.min_clips_per_leaf < 1:
            raise ValueError(f"min_clips_per_leaf must be >= 1, got {self.min_clips_per_leaf}")
        if self.depth is not None and not 1 <= self.depth <= self.max_depth:
            raise ValueError(f"depth must be None or in 1..{self.max_depth}, got {self.depth}")
        if self.niter < 1 or self.nredo < 1:
            raise ValueError(f"niter and nredo must be >= 1, got {self.niter}, {self.nredo}")


def choose_depth(n_clips: int, branching: int = 12, max_depth: int = 4, min_per_leaf: int = 6) -> int:
    """The deepest tree (>= 1, <= max_depth) whose branching**depth leaves get at least min_per_leaf clips each."""
    if n_clips < 0 or branching < 2 or max_depth < 1 or min_per_leaf < 1:
        raise ValueError(f"expected n_clips >= 0, branching >= 2, max_depth >= 1, min_per_leaf >= 1; got "
                         f"{n_clips}, {branching}, {max_depth}, {min_per_leaf}")
    depth = 1
    while depth < max_depth and branching ** (depth + 1) * min_per_leaf <= n_clips:
        depth += 1
    return depth


def normalize_features(features: np.ndarray) -> np.ndarray:
    """float32 copy with unit-length rows (zero rows stay zero); the vocabulary clusters directions, not magnitudes."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected features of shape [N, D] with N, D > 0, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("expected finite features, got NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next seed drawn with probability proportional to its squared distance."""
    centers = [int(rng.integers(len(x)))]
    d2 = ((x - x[centers[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        nxt = int(rng.choice(len(x), p=d2 / total)) if total > 0 else int(rng.integers(len(x)))
        centers.append(nxt)
        d2 = np.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return np.ascontiguousarray(x[centers], dtype=np.float32)


def kmeans(x: np.ndarray, k: int, niter: int, nredo: int, seed: int) -> np.ndarray:
    """k centroids of x (float32 [k, D]): the best of nredo k-means++-seeded faiss runs; x has >= k distinct rows."""
    import faiss  # imported on use: faiss loads OpenMP and BLAS, which a search-only process may never need

    rng = np.random.default_rng(seed)
    # Seeding is O(n k D): a sample is plenty, and faiss subsamples to 256 points per centroid anyway.
    sample = x[rng.choice(len(x), 256 * k, replace=False)] if len(x) > 256 * k else x
    best: np.ndarray | None = None
    best_obj = float("inf")
    for r in range(nredo):
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed + r, verbose=False, spherical=False,
                          min_points_per_centroid=1, max_points_per_centroid=256)
        km.train(x, init_centroids=_kmeans_pp(sample, k, rng))
        obj = float(km.obj[-1]) if len(km.obj) else 0.0
        if obj < best_obj:
            best, best_obj = np.ascontiguousarray(km.centroids, dtype=np.float32), obj
    if best is None:
        raise RuntimeError(f"k-means produced no centroids (k={k}, n={len(x)})")
    return best


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (L2) per row of x; ties go to the lowest index, so it is deterministic."""
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every c of a row.
    d = (centroids * centroids).sum(axis=1)[None, :] - 2.0 * (x @ centroids.T)
    return np.argmin(d, axis=1).astype(np.int64)


class VisualVocab:
    """A tree of k-means centroids; a clip's token is its root-to-leaf path read as a base-`branching` number.

    Token ids lie in [0, branching**depth). A node that stops early (too few points to split) is a leaf
    whose token is its path padded with zeros, so ids are stable paths whatever the data: two vocabularies
    with the same depth and branching name the same tree slots. Most slots may be unused in a small library.
    """

    def __init__(self, branching: int, depth: int, dim: int, node_level: np.ndarray, node_prefix: np.ndarray,
                 node_start: np.ndarray, node_count: np.ndarray, centroids: np.ndarray,
                 counts: np.ndarray, config: VocabConfig | None = None) -> None:
        self.branching = int(branching)
        self.depth = int(depth)
        self.dim = int(dim)
        self.node_level = np.asarray(node_level, np.int64)
        self.node_prefix = np.asarray(node_prefix, np.int64)
        self.node_start = np.asarray(node_start, np.int64)
        self.node_count = np.asarray(node_count, np.int64)
        self._centroids = np.ascontiguousarray(centroids, np.float32)
        self.counts = np.asarray(counts, np.int64)  # training clips per token: the most-frequent-token baseline
        self.config = config or VocabConfig(branching=self.branching, max_depth=max(self.depth, 1))
        self._index = {(int(lv), int(p)): i for i, (lv, p) in enumerate(zip(self.node_level, self.node_prefix))}
        if self.counts.shape != (self.size,):
            raise ValueError(f"expected counts of shape ({self.size},), got {self.counts.shape}")

    # -- building -------------------------------------------------------------------------------------------

    @classmethod
    def fit(cls, features: np.ndarray, config: VocabConfig | None = None) -> VisualVocab:
        """Hierarchical k-means over L2-normalised features [N, D]; deterministic for config.seed."""
        config = config or VocabConfig()
        x = normalize_features(features)
        n, dim = x.shape
        depth = config.depth or choose_depth(n, config.branching, config.max_depth, config.min_clips_per_leaf)
        t0 = time.perf_counter()
        levels: list[int] = []
        prefixes: list[int] = []
        starts: list[int] = []
        kcounts: list[int] = []
        blocks: list[np.ndarray] = []
        offset = 0
        # Breadth-first, children in index order: the node table (and so the saved file) is deterministic.
        queue: list[tuple[int, int, np.ndarray]] = [(0, 0, np.arange(n))]
        head = 0
        while head < len(queue):
            level, prefix, rows = queue[head]
            head += 1
            if level >= depth or len(rows) < 2:
                continue
            sub = x[rows]
            # Byte-wise distinct rows: k-means cannot make more distinct centroids than there are points.
            distinct = len(np.unique(sub.view(np.dtype((np.void, sub.dtype.itemsize * dim))).ravel()))
            k = min(config.branching, distinct)
            if k < 2:
                continue  # all points the same: nothing to split, this node is a leaf
            # A node-specific seed keeps each split reproducible regardless of the order nodes are visited in.
            seed = (config.seed * 1_000_003 + level * 7919 + prefix) % (2**31 - 1)
            cents = kmeans(sub, k, config.niter, config.nredo, seed)
            levels.append(level)
            prefixes.append(prefix)
            starts.append(offset)
            kcounts.append(k)
            blocks.append(cents)
            offset += k
            child = nearest(sub, cents)
            for c in range(k):
                queue.append((level + 1, prefix * config.branching + c, rows[child == c]))
        centroids = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
        vocab = cls(config.branching, depth, dim, np.array(levels, np.int64), np.array(prefixes, np.int64),
                    np.array(starts, np.int64), np.array(kcounts, np.int64), centroids,
                    np.zeros(config.branching ** depth, np.int64), config)
        vocab.counts = np.bincount(vocab.assign(x, normalized=True), minlength=vocab.size).astype(np.int64)
        logger.info("visual vocabulary: %d clips, depth %d (%d token slots, %d used), %d nodes, %.2f s",
                    n, depth, vocab.size, int((vocab.counts > 0).sum()), len(levels), time.perf_counter() - t0)
        return vocab

    # -- using ----------------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of token ids (branching**depth); every token is < size."""
        return self.branching ** self.depth

    @property
    def n_used(self) -> int:
        """Tokens that at least one training clip received."""
        return int((self.counts > 0).sum())

    @property
    def most_frequent_token(self) -> int:
        return int(np.argmax(self.counts))

    def assign(self, features: np.ndarray, normalized: bool = False) -> np.ndarray:
        """int64 [N] token ids in [0, size): each row walks down the tree to its nearest child at every level."""
        x = features if normalized else normalize_features(features)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected features of shape [N, {self.dim}], got {x.shape}")
        n = x.shape[0]
        prefix = np.zeros(n, np.int64)
        active = np.ones(n, bool)  # rows whose current node still has children
        for level in range(self.depth):
            step = np.zeros(n, np.int64)
            rows_active = np.nonzero(active)[0]
            # Group rows by node with one sort instead of one full scan per node (thousands at depth 3-4).
            order = rows_active[np.argsort(prefix[rows_active], kind="stable")]
            nodes, starts = np.unique(prefix[order], return_index=True)
            for p, rows in zip(nodes, np.split(order, starts[1:])):
                node = self._index.get((level, int(p)))
                if node is None:
                    active[rows] = False  # a leaf above full depth: its token is the path padded with zeros
                    continue
                s, k = self.node_start[node], self.node_count[node]
                step[rows] = nearest(x[rows], self._centroids[s:s + k])
            prefix = prefix * self.branching + np.where(active, step, 0)
        return prefix

    def path(self, token: int) -> tuple[int, ...]:
        """The child index at each level, root first (the token written in base `branching`)."""
        if not 0 <= token < self.size:
            raise ValueError(f"expected a token in [0, {self.size}), got {token}")
        digits = []
        for _ in range(self.depth):
            digits.append(token % self.branching)
            token //= self.branching
        return tuple(reversed(digits))

    def centroids(self, level: int | None = None) -> np.ndarray:
        """float32 [branching**level, D] centroids of the tree slots at a level (1..depth; default depth).

        Slot i is the centroid of the node whose path is i; a slot under a leaf that stopped early repeats
        its leaf's centroid (that is where its clips went); a slot no node reaches is zero.
        """
        level = self.depth if level is None else level
        if not 1 <= level <= self.depth:
            raise ValueError(f"expected level in 1..{self.depth}, got {level}")
        out = np.zeros((self.branching ** level, self.dim), np.float32)
        filled = np.zeros(self.branching ** level, bool)
        for lv in range(level):
            sel = np.nonzero(self.node_level == lv)[0]
            for node in sel:
                s, k = self.node_start[node], self.node_count[node]
                base = self.node_prefix[node] * self.branching
                span = self.branching ** (level - lv - 1)  # slots at `level` under one child
                for c in range(k):
                    first = (base + c) * span
                    if lv == level - 1 or not filled[first]:
                        out[first:first + span] = self._centroids[s + c]
                        filled[first:first + span] = True
        return out

    # -- persistence ----------------------------------------------------------------------------------------

    def save(self, file: IO[bytes]) -> None:
        """Write the .npz (plain arrays, no pickle) to an open binary file; the caller opens the destination."""
        cfg = asdict(self.config)
        np.savez(file, format=np.array(FORMAT), branching=np.int64(self.branching), depth=np.int64(self.depth),
                 dim=np.int64(self.dim), node_level=self.node_level, node_prefix=self.node_prefix,
                 node_start=self.node_start, node_count=self.node_count, centroids=self._centroids,
                 counts=self.counts,
                 config_keys=np.array(list(cfg.keys())),
                 config_values=np.array([-1 if v is None else int(v) for v in cfg.values()], np.int64))

    @classmethod
    def load(cls, path: str | Path) -> VisualVocab:
        with np.load(Path(path), allow_pickle=False) as z:
            if "format" not in z or str(z["format"]) != FORMAT:
                raise ValueError(f"{path} is not a visual vocabulary file (expected format {FORMAT})")
            cfg = {str(k): int(v) for k, v in zip(z["config_keys"], z["config_values"])}
            if cfg.get("depth", -1) == -1:
                cfg["depth"] = None
            return cls(int(z["branching"]), int(z["depth"]), int(z["dim"]), z["node_level"], z["node_prefix"],
                       z["node_start"], z["node_count"], z["centroids"], z["counts"], VocabConfig(**cfg))

    def __repr__(self) -> str:
        return (f"VisualVocab(branching={self.branching}, depth={self.depth}, size={self.size}, "
                f"used={self.n_used}, dim={self.dim})")

