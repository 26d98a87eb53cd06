"""The vector index's interface and types: ``VectorIndex``, ``Point``, ``Hit``, ``Filter``, point ids, checks.

Vectors are L2-normalised float32 and similarity is the inner product (cosine). Every backend
normalises what it is given (Qdrant's cosine distance does, so FAISS does the same), and rejects
wrong dimensions, unknown names and non-finite or zero vectors with ``ValueError``; the ``check_*``
helpers here do that for all of them.

The index is a derived view of the catalog (``vidx reindex`` rebuilds it), so point ids are
deterministic (:func:`point_id`) and every write is an idempotent upsert.
"""

from __future__ import annotations

import json
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Fixed forever: changing it changes every point id.
_ID_NAMESPACE = uuid.UUID("5d0c3c57-6a4e-4c1e-9f55-7669647820a1")

REQUIRED_PAYLOAD = ("media_id", "clip_index", "start", "end", "has_speech")


def point_id(content_hash: str, clip_index: int, model_version: str) -> str:
    """The point id of one clip: a UUIDv5 of (media content hash, clip index, embedding model version)."""
    if not isinstance(content_hash, str) or not content_hash:
        raise ValueError(f"expected a non-empty content hash string, got {content_hash!r}")
    if isinstance(clip_index, bool) or not isinstance(clip_index, (int, np.integer)) or clip_index < 0:
        raise ValueError(f"expected a clip index >= 0, got {clip_index!r}")
    if not isinstance(model_version, str):
        raise ValueError(f"expected a model version string, got {model_version!r}")
    # JSON keeps the three parts unambiguous whatever characters they hold.
    return str(uuid.uuid5(_ID_NAMESPACE, json.dumps([content_hash, int(clip_index), model_version])))


@dataclass(frozen=True)
class Point:
    """One clip: ``vectors`` maps a vector name to a (dim,) vector; a name may be absent."""

    id: str
    vectors: Mapping[str, np.ndarray]
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class Filter:
    """Restrict a search: only these media (an empty set matches nothing) and/or speech or no speech."""

    media_ids: frozenset[int] | None = None
    has_speech: bool | None = None

    def __post_init__(self) -> None:
        if self.media_ids is not None and not isinstance(self.media_ids, frozenset):
            object.__setattr__(self, "media_ids", frozenset(self.media_ids))


class IndexLockedError(RuntimeError):
    """The FAISS index directory is already open for writing (by this or another process)."""


# ---------------------------------------------------------------------------------------------
# The interface


class VectorIndex(ABC):
    """Named vectors per point; ``dims`` maps each vector name to its dimension."""

    dims: dict[str, int]

    @abstractmethod
    def upsert(self, points: Sequence[Point]) -> None:
        """Insert or replace points (same id replaces vectors and payload)."""

    @abstractmethod
    def delete_media(self, media_ids: Iterable[int]) -> int:
        """Remove every point of these media; return how many were removed."""

    @abstractmethod
    def search(self, name: str, query: np.ndarray, limit: int, filter: Filter | None = None) -> list[Hit]:
        """The ``limit`` best points for ``query`` on vector ``name``, best first."""

    def search_batch(
        self, name: str, queries: np.ndarray, limit: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        """:meth:`search` for each row of ``queries`` (Q, dim)."""
        q = check_queries(self.dims, name, queries)
        return [self.search(name, row, limit, filter) for row in q]

    @abstractmethod
    def count(self) -> int:
        """Number of points (with or without vectors)."""

    @abstractmethod
    def media_ids(self) -> set[int]:
        """The media that have at least one point."""

    @abstractmethod
    def clear(self) -> None:
        """Remove every point."""

    @abstractmethod
    def flush(self) -> None:
        """Persist pending changes."""

    @abstractmethod
    def close(self) -> None:
        """Persist pending changes and release the storage."""

    def discard(self) -> None:
        """Release the storage, dropping changes not yet flushed (a backend that writes through
        has none to drop)."""
        self.close()

    def refresh(self) -> bool:
        """Readers of a long-lived process: pick up what the writer published since; whether anything changed.

        A backend whose reads always see the latest writes (Qdrant) has nothing to pick up.
        """
        return False

    @property
    def concurrent_search(self) -> bool:
        """Whether searches from several threads run in parallel (else callers should not bother)."""
        return False

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # A block that failed half way (a cleared index half refilled, say) must not be published:
        # what was flushed before stays, and the catalog marks only flushed media as synced.
        if exc_type is None:
            self.close()
        else:
            self.discard()


# ---------------------------------------------------------------------------------------------
# Validation shared by the backends


def check_dims(dims: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(dims, Mapping) or not dims:
        raise ValueError(f"expected a non-empty mapping of vector name -> dimension, got {dims!r}")
    out: dict[str, int] = {}
    for name, dim in dims.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"expected vector names to be identifiers, got {name!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"expected a positive integer dimension for {name!r}, got {dim!r}")
        out[name] = int(dim)
    return out


def check_name(dims: Mapping[str, int], name: str) -> int:
    try:
        return dims[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown vector name {name!r}; expected one of {sorted(dims)}") from None


def _normalise_rows(x: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError(f"expected finite values in {what}, got NaN or infinity")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"expected non-zero vectors in {what}, got a zero vector")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def check_vector(dims: Mapping[str, int], name: str, v: Any, what: str) -> np.ndarray:
    """A (dim,) float32 vector, normalised."""
    return _normalise_rows(_check_shape(dims, name, v, what)[None, :], what)[0]


def _check_shape(dims: Mapping[str, int], name: str, v: Any, what: str) -> np.ndarray:
    dim = check_name(dims, name)
    arr = np.asarray(v, dtype=np.float32)
    if arr.shape != (dim,):
        raise ValueError(f"expected a ({dim},) vector for {name!r} in {what}, got shape {arr.shape}")
    return arr


def check_queries(dims: Mapping[str, int], name: str, queries: Any) -> np.ndarray:
    dim = check_name(dims, name)
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"expected queries of shape (Q, {dim}) for {name!r}, got {q.shape}")
    return _normalise_rows(q, "the queries") if len(q) else q


def check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit!r}")
    return int(limit)


def check_filter(filter: Filter | None) -> Filter | None:
    if filter is not None and not isinstance(filter, Filter):
        raise ValueError(f"expected a Filter or None, got {type(filter).__name__}")
    return filter


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_points(
    dims: Mapping[str, int], points: Sequence[Point]
) -> dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]]:
    """Canonical id -> (normalised vectors, plain-Python payload); the last of duplicate ids wins.

    Vectors are checked and normalised per name in one pass over the batch.
    """
    checked: dict[str, tuple[dict[str, np.ndarray], dict[str, Any]]] = {}
    for p in points:
        pid, vecs, payload = _check_point(dims, p)
        checked[pid] = (vecs, payload)
    for name in dims:
        owners = [pid for pid, (vecs, _) in checked.items() if name in vecs]
        if not owners:
            continue
        mat = np.stack([checked[pid][0][name] for pid in owners])
        finite = np.isfinite(mat).all(axis=1)
        if not finite.all():
            bad = owners[int(np.argmin(finite))]
            raise ValueError(f"expected finite values in {name!r} of point {bad}, got NaN or infinity")
        norms = np.linalg.norm(mat, axis=1)
        if not norms.all():
            bad = owners[int(np.argmin(norms != 0))]
            raise ValueError(f"expected a non-zero {name!r} vector in point {bad}, got a zero vector")
        mat /= norms[:, None]
        for j, pid in enumerate(owners):
            checked[pid][0][name] = mat[j]
    return checked


def _check_point(dims: Mapping[str, int], p: Point) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """Canonical id, shape-checked float32 vectors and a plain-Python payload for one point."""
    if not isinstance(p, Point):
        raise ValueError(f"expected a Point, got {type(p).__name__}")
    try:
        pid = str(uuid.UUID(str(p.id)))
    except ValueError:
        raise ValueError(f"expected a UUID string as point id, got {p.id!r}") from None
    what = f"point {pid}"
    vecs = {name: _check_shape(dims, name, v, what) for name, v in p.vectors.items()}
    pl = p.payload
    missing = [k for k in REQUIRED_PAYLOAD if k not in pl]
    if missing:
        raise ValueError(f"expected payload keys {list(REQUIRED_PAYLOAD)} in {what}, missing {missing}")
    for key in ("media_id", "clip_index"):
        if not _is_int(pl[key]):
            raise ValueError(f"expected an int {key} in {what}, got {pl[key]!r}")
    for key in ("start", "end"):
        if isinstance(pl[key], bool) or not isinstance(pl[key], (int, float, np.integer, np.floating)):
            raise ValueError(f"expected a number {key} in {what}, got {pl[key]!r}")
        if not math.isfinite(pl[key]):
            raise ValueError(f"expected a finite {key} in {what}, got {pl[key]!r}")
    if not isinstance(pl["has_speech"], (bool, np.bool_)):
        raise ValueError(f"expected a bool has_speech in {what}, got {pl['has_speech']!r}")
    if not 0 <= int(pl["media_id"]) < 2**31 or not 0 <= int(pl["clip_index"]) < 2**31:
        raise ValueError(f"expected media_id and clip_index >= 0 to fit in 32 bits in {what}")
    payload: dict[str, Any] = {
        "media_id": int(pl["media_id"]),
        "clip_index": int(pl["clip_index"]),
        "start": float(pl["start"]),
        "end": float(pl["end"]),
        "has_speech": bool(pl["has_speech"]),
    }
    extra = {k: v for k, v in pl.items() if k not in payload}
    if extra:
        try:
            extra = json.loads(json.dumps(extra))
        except (TypeError, ValueError) as e:
            raise ValueError(f"expected a JSON-serialisable payload in {what}: {e}") from None
        payload.update(extra)
    return pid, vecs, payload
