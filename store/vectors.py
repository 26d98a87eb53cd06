"""The vector index: named dense vectors per clip, one interface over two backends.

* :class:`FaissIndex` - embedded default: in-process FAISS, exact (``IndexFlatIP``) below
  ``hnsw_threshold`` points per vector name, HNSW (fp16 storage) above it; saved in one directory.
* :class:`QdrantIndex` - Qdrant, local mode (``QdrantClient(path=...)``) or a server by URL.

Vectors are L2-normalised float32 and similarity is the inner product (cosine). Both backends
normalise what they are given (Qdrant's cosine distance does, so FAISS does the same), and reject
wrong dimensions, unknown names and non-finite or zero vectors with ``ValueError``.

The index is a derived view of the catalog (``vidx reindex`` rebuilds it), so point ids are
deterministic (:func:`point_id`) and every write is an idempotent upsert.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "REQUIRED_PAYLOAD",
    "FaissIndex",
    "Filter",
    "Hit",
    "IndexLockedError",
    "Point",
    "QdrantIndex",
    "VectorIndex",
    "open_index",
    "point_id",
]

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
        q = _check_queries(self.dims, name, queries)
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


def open_index(
    backend: str,
    dims: Mapping[str, int],
    *,
    path: Path | str | None = None,
    url: str | None = None,
    **kw: Any,
) -> VectorIndex:
    """Open a backend by name: ``"faiss"`` (needs ``path``) or ``"qdrant"`` (``path`` or ``url``)."""
    if backend == "faiss":
        if path is None:
            raise ValueError("the faiss backend needs a path (a directory)")
        if url is not None:
            raise ValueError("the faiss backend is embedded: expected no url")
        return FaissIndex(Path(path), dims, **kw)
    if backend == "qdrant":
        return QdrantIndex(dims, path=None if path is None else Path(path), url=url, **kw)
    raise ValueError(f"unknown vector index backend {backend!r}; expected 'faiss' or 'qdrant'")


# ---------------------------------------------------------------------------------------------
# Validation shared by both backends


def _check_dims(dims: Mapping[str, int]) -> dict[str, int]:
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


def _check_name(dims: Mapping[str, int], name: str) -> int:
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


def _check_vector(dims: Mapping[str, int], name: str, v: Any, what: str) -> np.ndarray:
    """A (dim,) float32 vector, normalised."""
    return _normalise_rows(_check_shape(dims, name, v, what)[None, :], what)[0]


def _check_shape(dims: Mapping[str, int], name: str, v: Any, what: str) -> np.ndarray:
    dim = _check_name(dims, name)
    arr = np.asarray(v, dtype=np.float32)
    if arr.shape != (dim,):
        raise ValueError(f"expected a ({dim},) vector for {name!r} in {what}, got shape {arr.shape}")
    return arr


def _check_queries(dims: Mapping[str, int], name: str, queries: Any) -> np.ndarray:
    dim = _check_name(dims, name)
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise ValueError(f"expected queries of shape (Q, {dim}) for {name!r}, got {q.shape}")
    return _normalise_rows(q, "the queries") if len(q) else q


def _check_limit(limit: Any) -> int:
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"expected limit >= 1, got {limit!r}")
    return int(limit)


def _check_filter(filter: Filter | None) -> Filter | None:
    if filter is not None and not isinstance(filter, Filter):
        raise ValueError(f"expected a Filter or None, got {type(filter).__name__}")
    return filter


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_points(
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


# ---------------------------------------------------------------------------------------------
# FAISS


def _import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the faiss vector index needs the faiss-cpu package (pip install faiss-cpu)") from e
    return faiss


_FORMAT = 1
_HNSW_STORAGES = ("fp16", "flat", "sq8")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


class _Named:
    """The FAISS index of one vector name and its label -> row map.

    A label is a position in the FAISS index; it is *live* while ``row_label[labels[l]] == l``.
    Labels of replaced or deleted vectors go stale: a flat index drops them before its next search,
    HNSW (which cannot remove) excludes them with an ID selector until they pass ``_STALE_REBUILD``
    of the index, and is then rebuilt from its own (fp16 or float32) storage.
    """

    def __init__(self) -> None:
        self.index: Any = None  # faiss index, None until loaded
        self.labels = np.zeros(0, np.int64)  # label -> row (-1: stale)
        self.n_labels = 0
        self.stale = 0
        self.dirty = False  # the faiss index changed since the last flush
        self._live: np.ndarray | None = None  # cached live-label mask

    @property
    def live(self) -> int:
        return self.n_labels - self.stale

    def append_labels(self, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        if self.n_labels + n > len(self.labels):
            grown = np.full(max(self.n_labels + n, 2 * len(self.labels), 1024), -1, np.int64)
            grown[: self.n_labels] = self.labels[: self.n_labels]
            self.labels = grown
        new = np.arange(self.n_labels, self.n_labels + n, dtype=np.int64)
        self.labels[new] = rows
        self.n_labels += n
        self._live = None
        return new


class _Selection:
    """The labels a search may return: a boolean mask over all labels, or a sorted label array."""

    def __init__(self, mask: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        self._mask, self._labels = mask, labels
        self.count = int(mask.sum()) if mask is not None else len(labels)  # type: ignore[arg-type]
        self._keep: Any = None

    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.flatnonzero(self._mask)
        return self._labels

    def selector(self, faiss: Any, ntotal: int) -> Any:
        """A FAISS IDSelectorBitmap (the bitmap is kept alive with this object)."""
        if self._mask is None:
            self._mask = np.zeros(ntotal, bool)
            self._mask[self._labels] = True
        if self._keep is None:
            bits = np.packbits(self._mask, bitorder="little")
            # keep the bitmap and the selector alive as long as this object: FAISS holds raw pointers
            self._keep = (bits, faiss.IDSelectorBitmap(ntotal, faiss.swig_ptr(bits)))
        return self._keep[1]


class FaissIndex(VectorIndex):
    """Embedded FAISS index saved in ``path`` (a directory): one writer, any number of readers.

    Exact inner-product search (``IndexFlatIP``, float32) while a vector name has fewer than
    ``hnsw_threshold`` vectors; HNSW with fp16 vector storage (``IndexHNSWSQ``, inner product)
    from there on. Measurements on this 2-core machine (384-d, one query per call, limit 10, one
    OpenMP thread, other work running):

    * threshold: exact search p50 was 1.6 ms at 10k vectors, 4 ms at 20k, 6 ms at 25k, 10.5 ms at
      50k and 18 ms at 100k; HNSW takes over at 20,000, where exact passes ~4 ms.
    * storage: fp16 gave the same recall@10 as float32 (``storage="flat"``) and as ``"sq8"`` at
      5k-100k, at half float32's memory and equal or lower latency; sq8 halves it again but its
      rebuilds re-quantise, so fp16 is the default.
    * ef_search: measured on embedding-like vectors (bench data "clustered"), M=32,
      ef_construction=40, recall@10 against exact (mean of perturbed-copy and random queries)
      and p50 of one query. 100k: ef 128 -> 0.923, 1.2 ms; 192 -> 0.952, 1.7 ms; 256 -> 0.966,
      2.3 ms; 384 -> 0.981, 3.2 ms. 1M: ef 256 -> 0.871, 3.1 ms; 384 -> 0.915, 4.2 ms;
      512 -> 0.944, 5.4 ms; 768 -> 0.971, 7.7 ms; 1024 -> 0.986, 10.1 ms (exact: 138 ms).
      The beam a given recall needs grows with the index, so by default (``ef_search=None``)
      ef = 256 * (n / 100k) ** 0.4, clamped to [128, 1024]: 256 at 100k, 643 at 1M, both at
      about 0.96. Pass ``ef_search`` to fix it. (On uniform random 384-d vectors no HNSW setting
      gets near that - every neighbour is nearly equidistant; see ``bench/search_index.py``.)
    * ef_construction=40 (FAISS's default): the build dominates at 1M on two cores.

    A flat search of fewer than 20 queries runs on one OpenMP thread (:meth:`_few_threads`).

    Filters become a FAISS ``IDSelectorBitmap`` in ``SearchParameters``, so a filtered search
    still returns ``limit`` hits when that many match. Under HNSW, a selective filter is searched
    exactly over the matching vectors instead, and ``efSearch`` grows as the filter narrows.

    Files: ``path/CURRENT`` names the live generation directory ``path/gen-NNNNNN/`` holding
    ``meta.json``, the row columns (``*.npy``), ``extras.json`` (payload keys beyond the required
    five) and per vector name ``<name>.faiss`` + ``<name>.labels.npy``. A flush writes a new
    generation (unchanged FAISS files hard-linked) and switches ``CURRENT`` with ``os.replace``,
    so a crash leaves the previous state; the previous generation is kept for readers.
    A writer holds ``path/.lock`` (``fcntl.flock``); a second writer gets
    :class:`IndexLockedError`, readers (``read_only=True``) take no lock.

    Writes: new points are appended (an HNSW add, no rebuild). The switch from exact to HNSW
    happens lazily, at the next search, ``flush`` or ``stats`` after a name crosses the threshold,
    so a bulk reindex builds the graph once. A replaced or deleted vector leaves a stale label,
    masked at search time; re-upserting an identical vector keeps its label. A flat index drops
    stale labels before its next search; HNSW is rebuilt from its own storage once over 20% of
    its labels are stale (minutes at 1M on two cores), and goes back to exact below half the
    threshold.

    FAISS indexes load lazily, on the first search or write of their vector name. ``threads``
    calls ``faiss.omp_set_num_threads`` (process-wide; it sets the build's parallelism). Every
    public method takes an internal lock, so threads may share an instance (searches serialise).
    """

    _STALE_REBUILD = 0.2  # rebuild an HNSW index when this fraction of its labels is stale
    _GATHER_RATIO = 100  # exact search of a selection this many times smaller than the index: gather

    def __init__(
        self,
        path: Path | str,
        dims: Mapping[str, int],
        hnsw_threshold: int = 20_000,
        hnsw_m: int = 32,
        ef_search: int | None = None,
        ef_construction: int = 40,
        *,
        storage: str = "fp16",
        threads: int | None = None,
        read_only: bool = False,
    ) -> None:
        self._faiss = _import_faiss()
        self.dims = _check_dims(dims)
        bad_ef = ef_search is not None and ef_search < 1
        if hnsw_threshold < 1 or hnsw_m < 4 or bad_ef or ef_construction < 1:
            raise ValueError(
                "expected hnsw_threshold >= 1, hnsw_m >= 4, ef_search >= 1 (or None) and ef_construction >= 1, got "
                f"{hnsw_threshold}, {hnsw_m}, {ef_search}, {ef_construction}"
            )
        if storage not in _HNSW_STORAGES:
            raise ValueError(f"expected storage in {_HNSW_STORAGES}, got {storage!r}")
        self.path = Path(path)
        self.hnsw_threshold = int(hnsw_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_search = None if ef_search is None else int(ef_search)
        self.ef_construction = int(ef_construction)
        self.storage = storage
        self.read_only = read_only
        if threads is not None:
            if threads < 1:
                raise ValueError(f"expected threads >= 1, got {threads}")
            self._faiss.omp_set_num_threads(int(threads))
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._closed = False
        if read_only:
            if not (self.path / "CURRENT").is_file():
                raise FileNotFoundError(f"no FAISS vector index at {self.path} (no CURRENT file)")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
        try:
            self._reset()
            if (self.path / "CURRENT").is_file():
                self._load_meta()
            if not read_only:
                self._sweep()
        except BaseException:
            self._release_lock()
            raise

    # -- state --------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._n = 0  # rows used (alive or dead)
        self._cap = 0
        self._ids = np.zeros(0, "S32")  # uuid hex, no dashes
        self._media = np.zeros(0, np.int32)
        self._clip = np.zeros(0, np.int32)
        self._start = np.zeros(0, np.float64)
        self._end = np.zeros(0, np.float64)
        self._speech = np.zeros(0, bool)
        self._alive = np.zeros(0, bool)
        self._n_alive = 0
        self._extras: dict[int, dict[str, Any]] = {}
        self._row_of: dict[bytes, int] | None = {}  # built lazily after a load
        self._row_label = {name: np.zeros(0, np.int64) for name in self.dims}
        self._named = {name: _Named() for name in self.dims}
        self._gen: str | None = None  # generation directory name the state came from
        self._rows_dirty = False
        self._disk_kind: dict[str, str] = {}
        self._touch()

    def _touch(self) -> None:
        """Drop caches derived from rows and labels (after any write)."""
        self._media_sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._mask_cache: dict[tuple[str, bool], np.ndarray] = {}
        for nm in self._named.values():
            nm._live = None

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 1024)

        def g(a: np.ndarray, fill: Any = 0) -> np.ndarray:
            out = np.full(cap, fill, a.dtype) if fill != 0 else np.zeros(cap, a.dtype)
            out[: self._n] = a[: self._n]
            return out

        self._ids = g(self._ids)
        self._media, self._clip = g(self._media), g(self._clip)
        self._start, self._end = g(self._start), g(self._end)
        self._speech, self._alive = g(self._speech), g(self._alive)
        for name in self.dims:
            self._row_label[name] = g(self._row_label[name], -1)
        self._cap = cap

    def _row_map(self) -> dict[bytes, int]:
        if self._row_of is None:
            alive = np.flatnonzero(self._alive[: self._n])
            self._row_of = dict(zip(self._ids[alive].tolist(), alive.tolist()))
        return self._row_of

    def _live_mask(self, name: str) -> np.ndarray:
        nm = self._named[name]
        if nm._live is None:
            labels = nm.labels[: nm.n_labels]
            rl = self._row_label[name]
            nm._live = (labels >= 0) & (rl[np.maximum(labels, 0)] == np.arange(nm.n_labels))
        return nm._live

    def _stale_label(self, name: str, row: int) -> None:
        lab = self._row_label[name][row]
        if lab >= 0:
            nm = self._named[name]
            self._row_label[name][row] = -1
            nm.stale += 1
            nm._live = None

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise PermissionError(f"the FAISS index at {self.path} is open read-only")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vector index is closed")

    # -- locking and files ----------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        lock_path = self.path / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise IndexLockedError(
                f"the FAISS vector index at {self.path} is already open for writing (holder pid {holder}); "
                "it has a single writer - open it with read_only=True to search"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _current(self) -> str | None:
        try:
            return (self.path / "CURRENT").read_text().strip() or None
        except FileNotFoundError:
            return None

    def _sweep(self) -> None:
        """Remove unfinished and superseded generations (writer only): keep CURRENT and the one before."""
        gens = [p.name for p in self.path.glob("gen-*") if p.is_dir()]
        done = sorted((g for g in gens if g[4:].isdigit()), key=lambda g: int(g[4:]))
        keep = {self._gen}
        if self._gen in done:
            i = done.index(self._gen)
            if i > 0:
                keep.add(done[i - 1])
        for g in gens:
            if g not in keep:
                shutil.rmtree(self.path / g, ignore_errors=True)

    def _load_meta(self) -> None:
        for attempt in range(3):
            try:
                return self._load_generation()
            except FileNotFoundError:
                if not self.read_only or attempt == 2:
                    raise
                # A writer's flush swept the generation while this reader read it: take the new one.

    def _load_generation(self) -> None:
        gen = self._current()
        if gen is None:
            raise FileNotFoundError(f"no FAISS vector index at {self.path}")
        d = self.path / gen
        meta = json.loads((d / "meta.json").read_text())
        if meta.get("format") != _FORMAT:
            raise ValueError(f"unsupported FAISS index format {meta.get('format')!r} at {d}; rebuild the index")
        stored = {k: int(v) for k, v in meta["dims"].items()}
        if stored != self.dims:
            raise ValueError(
                f"the FAISS index at {self.path} has vector dims {stored}, expected {self.dims}; "
                "clear and rebuild it (vidx reindex)"
            )
        self._reset()
        n = int(meta["rows"])
        self._grow(n)
        self._n = n
        self._ids[:n] = np.load(d / "ids.npy")
        self._media[:n] = np.load(d / "media_id.npy")
        self._clip[:n] = np.load(d / "clip_index.npy")
        self._start[:n] = np.load(d / "start.npy")
        self._end[:n] = np.load(d / "end.npy")
        self._speech[:n] = np.load(d / "has_speech.npy")
        self._alive[:n] = True  # flushed generations hold live rows only
        self._n_alive = n
        self._extras = {int(k): v for k, v in json.loads((d / "extras.json").read_text()).items()}
        self._row_of = None
        for name in self.dims:
            nm = self._named[name]
            labels = np.load(d / f"{name}.labels.npy")
            nm.labels, nm.n_labels = labels.astype(np.int64, copy=True), len(labels)
            live = np.flatnonzero(labels >= 0)
            self._row_label[name][labels[live]] = live
            nm.stale = nm.n_labels - len(live)
            self._disk_kind[name] = meta["names"][name]["kind"]
        self._gen = gen
        self._touch()

    def _ensure_loaded(self, name: str) -> Any:
        nm = self._named[name]
        if nm.index is not None:
            return nm.index
        faiss = self._faiss
        if self._gen is None:
            nm.index = faiss.IndexFlatIP(self.dims[name])
            return nm.index
        f = self.path / self._gen / f"{name}.faiss"
        if not f.is_file() and self.read_only:
            # The writer flushed twice since this reader loaded: start over from CURRENT.
            logger.info("vector index generation %s is gone; reloading %s", self._gen, self.path)
            self._load_meta()
            return self._ensure_loaded(name)
        index = faiss.read_index(str(f))
        if index.ntotal != nm.n_labels:
            raise RuntimeError(f"corrupt FAISS index {f}: {index.ntotal} vectors, {nm.n_labels} labels")
        nm.index = index
        return index

    def refresh(self) -> bool:
        """Readers: pick up the writer's latest flush; return whether anything changed."""
        with self._lock:
            self._check_open()
            gen = self._current()
            if gen is None or gen == self._gen:
                return False
            if not self.read_only:
                raise RuntimeError("refresh() is for read-only indexes; the writer's state is the newest")
            self._load_meta()
            return True

    # -- building -------------------------------------------------------------------------------

    def _is_hnsw(self, index: Any) -> bool:
        return isinstance(index, self._faiss.IndexHNSW)

    def _new_hnsw(self, dim: int) -> Any:
        faiss = self._faiss
        if self.storage == "flat":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            qt = faiss.ScalarQuantizer.QT_fp16 if self.storage == "fp16" else faiss.ScalarQuantizer.QT_8bit
            index = faiss.IndexHNSWSQ(dim, qt, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_for(1)
        return index

    def _codes_view(self, index: Any) -> np.ndarray | None:
        """Zero-copy (ntotal, d) view of the stored vectors: float32 (flat) or float16 (HNSW fp16); None for sq8."""
        faiss = self._faiss
        n, d = index.ntotal, index.d
        if self._is_hnsw(index):
            storage = faiss.downcast_index(index.storage)
            if isinstance(storage, faiss.IndexFlat):
                ptr, dtype = storage.get_xb(), np.float32
            elif isinstance(storage, faiss.IndexScalarQuantizer) and storage.sq.qtype == faiss.ScalarQuantizer.QT_fp16:
                ptr, dtype = storage.codes.data(), np.float16
            else:
                return None
        else:
            ptr, dtype = index.get_xb(), np.float32
        if n == 0:
            return np.zeros((0, d), dtype)
        if dtype is np.float32:
            return faiss.rev_swig_ptr(ptr, n * d).reshape(n, d)
        return faiss.rev_swig_ptr(ptr, n * d * 2).view(np.float16).reshape(n, d)

    def _vectors(self, index: Any, labels: np.ndarray) -> np.ndarray:
        """Stored vectors (float32) for these labels."""
        if len(labels) == 0:
            return np.zeros((0, index.d), np.float32)
        view = self._codes_view(index)
        if view is not None:
            return view[labels].astype(np.float32, copy=False)
        out = np.empty((len(labels), index.d), np.float32)
        step = 65536
        for i in range(0, len(labels), step):
            out[i : i + step] = index.reconstruct_batch(labels[i : i + step])
        return out

    def _rebuild(self, name: str, hnsw: bool) -> None:
        """New index for ``name`` from its live vectors (drops stale labels; may switch kind)."""
        nm = self._named[name]
        old = nm.index
        live = np.flatnonzero(self._live_mask(name))
        vecs = self._vectors(old, live)
        rows = nm.labels[live]
        if hnsw:
            index = self._new_hnsw(self.dims[name])
            if not index.is_trained:
                index.train(vecs)
        else:
            index = self._faiss.IndexFlatIP(self.dims[name])
        if len(vecs):
            index.add(vecs)
        del vecs
        nm.index = index
        nm.labels = np.full(max(len(rows), 1024), -1, np.int64)
        nm.n_labels = 0
        nm.stale = 0
        nm.append_labels(rows)
        self._row_label[name][rows] = np.arange(len(rows), dtype=np.int64)
        nm.dirty = True
        self._touch()
        logger.info("rebuilt %s vectors of %r as %s", len(rows), name, "HNSW" if hnsw else "flat")

    def _compact_flat(self, name: str) -> None:
        nm = self._named[name]
        live = self._live_mask(name)
        dead = np.flatnonzero(~live).astype(np.int64)
        nm.index.remove_ids(self._faiss.IDSelectorBatch(dead))  # keeps the order of the rest
        rows = nm.labels[: nm.n_labels][live]
        nm.labels = np.full(max(len(rows), 1024), -1, np.int64)
        nm.n_labels, nm.stale = 0, 0
        nm.append_labels(rows)
        self._row_label[name][rows] = np.arange(len(rows), dtype=np.int64)
        nm.dirty = True
        self._touch()

    def _ensure_ready(self, name: str) -> Any:
        """Load and settle ``name``: drop stale labels, switch between exact and HNSW by size."""
        index = self._ensure_loaded(name)
        if self.read_only:
            return index  # a reader searches what the writer saved; stale labels are masked
        nm = self._named[name]
        if not self._is_hnsw(index):
            if nm.live >= self.hnsw_threshold:
                self._rebuild(name, hnsw=True)
            elif nm.stale:
                self._compact_flat(name)
        elif nm.live < self.hnsw_threshold // 2:
            self._rebuild(name, hnsw=False)
        elif nm.stale > self._STALE_REBUILD * nm.n_labels:
            self._rebuild(name, hnsw=True)
        return nm.index

    # -- writes ---------------------------------------------------------------------------------

    def upsert(self, points: Sequence[Point]) -> None:
        with self._lock:
            self._check_writable()
            checked = _check_points(self.dims, points)
            if not checked:
                return
            row_of = self._row_map()
            new_rows: dict[str, list[int]] = {name: [] for name in self.dims}
            new_vecs: dict[str, list[np.ndarray]] = {name: [] for name in self.dims}
            replaced: dict[str, list[tuple[int, np.ndarray]]] = {name: [] for name in self.dims}
            for pid, (vecs, payload) in checked.items():
                key = pid.replace("-", "").encode()
                row = row_of.get(key)
                if row is None:
                    self._grow(self._n + 1)
                    row = self._n
                    self._n += 1
                    self._ids[row] = key
                    self._alive[row] = True
                    self._n_alive += 1
                    row_of[key] = row
                self._media[row] = payload["media_id"]
                self._clip[row] = payload["clip_index"]
                self._start[row] = payload["start"]
                self._end[row] = payload["end"]
                self._speech[row] = payload["has_speech"]
                extra = {k: v for k, v in payload.items() if k not in REQUIRED_PAYLOAD}
                if extra:
                    self._extras[row] = extra
                else:
                    self._extras.pop(row, None)
                for name in self.dims:
                    if name not in vecs:
                        self._stale_label(name, row)
                    elif self._row_label[name][row] >= 0:
                        replaced[name].append((row, vecs[name]))
                    else:
                        new_rows[name].append(row)
                        new_vecs[name].append(vecs[name])
            self._rows_dirty = True
            for name in self.dims:
                if replaced[name]:
                    self._replace(name, replaced[name], new_rows[name], new_vecs[name])
            self._touch()
            for name in self.dims:
                if not new_rows[name]:
                    continue
                index = self._ensure_loaded(name)
                nm = self._named[name]
                mat = np.stack(new_vecs[name])
                index.add(mat)
                rows = np.asarray(new_rows[name], np.int64)
                self._row_label[name][rows] = nm.append_labels(rows)
                nm.dirty = True
            self._touch()

    def _replace(
        self, name: str, replaced: list[tuple[int, np.ndarray]], new_rows: list[int], new_vecs: list[np.ndarray]
    ) -> None:
        """Vectors for rows that have one: keep those stored identically (an idempotent replay
        leaves HNSW untouched), queue the others for adding and let their old labels go stale."""
        index = self._ensure_loaded(name)
        view = self._codes_view(index)
        rows = np.fromiter((r for r, _ in replaced), np.int64, len(replaced))
        mat = np.stack([v for _, v in replaced])
        if view is not None:
            same = (view[self._row_label[name][rows]] == mat.astype(view.dtype)).all(axis=1)
        else:
            same = np.zeros(len(rows), bool)
        for (row, vec), keep in zip(replaced, same.tolist()):
            if not keep:
                self._stale_label(name, row)
                new_rows.append(row)
                new_vecs.append(vec)

    def delete_media(self, media_ids: Iterable[int]) -> int:
        with self._lock:
            self._check_writable()
            ids = np.fromiter((int(m) for m in media_ids), np.int64)
            if not len(ids) or not self._n_alive:
                return 0
            rows = np.flatnonzero(self._alive[: self._n] & np.isin(self._media[: self._n], ids))
            if not len(rows):
                return 0
            for name in self.dims:
                rl = self._row_label[name]
                had = rows[rl[rows] >= 0]
                if len(had):  # their labels go stale; the FAISS file itself is unchanged
                    rl[had] = -1
                    nm = self._named[name]
                    nm.stale += len(had)
                    nm._live = None
            self._alive[rows] = False
            self._n_alive -= len(rows)
            for r in rows.tolist():
                self._extras.pop(r, None)
            if self._row_of is not None:
                for key in self._ids[rows].tolist():
                    self._row_of.pop(key, None)
            self._rows_dirty = True
            self._touch()
            return int(len(rows))

    def clear(self) -> None:
        with self._lock:
            self._check_writable()
            gen = self._gen
            self._reset()
            self._gen = gen  # so the next flush supersedes it
            for name, nm in self._named.items():
                nm.index = self._faiss.IndexFlatIP(self.dims[name])
                nm.dirty = True
            self._rows_dirty = True

    # -- reads ----------------------------------------------------------------------------------

    def count(self) -> int:
        with self._lock:
            self._check_open()
            return int(self._n_alive)

    def media_ids(self) -> set[int]:
        with self._lock:
            self._check_open()
            return set(np.unique(self._media[: self._n][self._alive[: self._n]]).tolist())

    def _payload(self, row: int) -> dict[str, Any]:
        p: dict[str, Any] = {
            "media_id": int(self._media[row]),
            "clip_index": int(self._clip[row]),
            "start": float(self._start[row]),
            "end": float(self._end[row]),
            "has_speech": bool(self._speech[row]),
        }
        extra = self._extras.get(row)
        if extra:
            p.update(extra)
        return p

    def _hit(self, row: int, score: float) -> Hit:
        return Hit(id=str(uuid.UUID(hex=self._ids[row].decode())), score=float(score), payload=self._payload(row))

    def _media_rows(self, media_ids: frozenset[int]) -> np.ndarray:
        """Rows (any state) of these media, via a sorted media column cached until the next write."""
        if self._media_sorted is None:
            order = np.argsort(self._media[: self._n], kind="stable")
            self._media_sorted = (order, self._media[: self._n][order])
        order, sorted_media = self._media_sorted
        wanted = np.fromiter(media_ids, np.int64)
        lo = np.searchsorted(sorted_media, wanted, "left")
        hi = np.searchsorted(sorted_media, wanted, "right")
        if not (hi > lo).any():
            return np.zeros(0, np.int64)
        return np.concatenate([order[a:b] for a, b in zip(lo.tolist(), hi.tolist()) if b > a])

    def _select(self, name: str, filter: Filter | None) -> _Selection | None:
        """What ``name``'s search may return (live labels passing the filter), or None for everything."""
        nm = self._named[name]
        if filter is None or (filter.media_ids is None and filter.has_speech is None):
            if nm.stale == 0:
                return None
            return _Selection(mask=self._live_mask(name))
        if filter.media_ids is not None:
            rows = self._media_rows(filter.media_ids)
            if filter.has_speech is not None:
                rows = rows[self._speech[rows] == bool(filter.has_speech)]
            labels = self._row_label[name][rows]  # dead rows and rows without the name hold -1
            return _Selection(labels=np.sort(labels[labels >= 0]))
        key = (name, bool(filter.has_speech))
        mask = self._mask_cache.get(key)
        if mask is None:
            labels = nm.labels[: nm.n_labels]
            mask = self._live_mask(name) & (self._speech[np.maximum(labels, 0)] == key[1])
            self._mask_cache[key] = mask
        return _Selection(mask=mask)

    def search(self, name: str, query: np.ndarray, limit: int, filter: Filter | None = None) -> list[Hit]:
        q = np.asarray(query, dtype=np.float32)
        dim = _check_name(self.dims, name)
        if q.shape != (dim,):
            raise ValueError(f"expected a ({dim},) query for {name!r}, got shape {q.shape}")
        return self.search_batch(name, q[None, :], limit, filter)[0]

    def search_batch(
        self, name: str, queries: np.ndarray, limit: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        q = _check_queries(self.dims, name, queries)
        limit = _check_limit(limit)
        filter = _check_filter(filter)
        empty: list[list[Hit]] = [[] for _ in range(len(q))]
        if not len(q) or (filter is not None and filter.media_ids is not None and not filter.media_ids):
            with self._lock:
                self._check_open()
            return empty
        while True:
            with self._lock:
                self._check_open()
                index = self._ensure_ready(name)
                nm = self._named[name]
                if nm.live == 0:
                    return empty
                sel = self._select(name, filter)
                n_sel = nm.live if sel is None else sel.count
                if n_sel == 0:
                    return empty
                k = min(limit, n_sel)
                gen = self._gen
                if not self.read_only:
                    D, Idx = self._search_index(index, q, k, sel)
            if self.read_only:
                # Nothing in this process writes a reader's index, and FAISS releases the GIL while
                # it searches: two searches (the engine's speech and visual) run on two cores.
                D, Idx = self._search_index(index, q, k, sel)
            with self._lock:
                if self._gen != gen:
                    continue  # the reader reloaded a new generation meanwhile: its rows moved
                labels = nm.labels
                return [
                    [self._hit(int(labels[i]), s) for s, i in zip(drow.tolist(), irow.tolist()) if i >= 0]
                    for drow, irow in zip(D, Idx)
                ]

    @property
    def concurrent_search(self) -> bool:
        return self.read_only  # see search_batch: readers search outside the lock

    def _search_index(self, index: Any, q: np.ndarray, k: int, sel: _Selection | None) -> tuple[np.ndarray, np.ndarray]:
        if self._is_hnsw(index):
            return self._search_hnsw(index, q, k, sel)
        if sel is None:
            with self._few_threads(len(q)):
                return index.search(q, k)
        return self._exact_subset(index, q, k, sel)

    @contextlib.contextmanager
    def _few_threads(self, n_queries: int) -> Iterator[None]:
        """One OpenMP thread for a flat search of a few queries (FAISS splits them by query anyway).

        Measured here (2 cores, busy machine, 20k x 384, one query): 4 ms p50 with one thread,
        19-22 ms with two, the second thread only adding OpenMP wake-up and contention.
        """
        faiss = self._faiss
        before = faiss.omp_get_max_threads()
        if n_queries >= 20 or before == 1:  # 20: FAISS's BLAS threshold, where batching pays
            yield
            return
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    def _exact_subset(self, index: Any, q: np.ndarray, k: int, sel: _Selection) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of ``q`` over the selected labels.

        Usually a scan of the stored vectors (flat, or HNSW's storage) with an ID selector, which
        skips the distance of every unselected vector; a selection under 1/``_GATHER_RATIO`` of the
        index gathers its vectors and searches just those instead. Measured (one query, 384-d,
        2,000 selected): the scan takes 0.9 ms at 100k and 6.8 ms at 1M, the gather ~2 ms at
        either; numpy's threaded OpenBLAS took 4-8 ms for the same gather on this busy machine.
        """
        faiss = self._faiss
        view = self._codes_view(index) if sel.count * self._GATHER_RATIO <= index.ntotal else None
        if view is not None:
            labels = sel.labels()
            vecs = np.ascontiguousarray(view[labels], dtype=np.float32)
            with self._few_threads(len(q)):
                D, Idx = faiss.knn(q, vecs, k, metric=faiss.METRIC_INNER_PRODUCT)
            return D, np.where(Idx >= 0, labels[np.maximum(Idx, 0)], -1)
        flat = faiss.downcast_index(index.storage) if self._is_hnsw(index) else index
        with self._few_threads(len(q)):
            return flat.search(q, k, params=faiss.SearchParameters(sel=sel.selector(faiss, index.ntotal)))

    def ef_for(self, n: int) -> int:
        """The HNSW search beam for an index of ``n`` vectors: ``ef_search``, or by default
        256 * (n / 100k) ** 0.4 clamped to [128, 1024] (see the class docstring)."""
        if self.ef_search is not None:
            return self.ef_search
        return int(min(1024, max(128, round(256 * (max(n, 1) / 100_000) ** 0.4))))

    def _search_hnsw(self, index: Any, q: np.ndarray, k: int, sel: _Selection | None) -> tuple[np.ndarray, np.ndarray]:
        faiss = self._faiss
        if sel is None:
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_for(index.ntotal), k))
        else:
            # The HNSW beam also holds points the filter rejects: widen it by the filter's
            # selectivity, and search the matching vectors exactly when that costs about as much
            # (HNSW computes roughly ef * M distances; exact search, one per selected vector).
            ef = math.ceil(max(self.ef_for(index.ntotal), k) * index.ntotal / sel.count)
            if sel.count <= max(self.hnsw_threshold, ef * self.hnsw_m):
                return self._exact_subset(index, q, k, sel)
            params = faiss.SearchParametersHNSW(sel=sel.selector(faiss, index.ntotal), efSearch=ef)
        D, Idx = index.search(q, k, params=params)
        short = np.flatnonzero((Idx < 0).any(axis=1))
        if len(short):  # the beam ran dry before finding k: answer those queries exactly
            everything = _Selection(mask=np.ones(index.ntotal, bool)) if sel is None else sel
            D[short], Idx[short] = self._exact_subset(index, q[short], k, everything)
        return D, Idx

    # -- persistence ----------------------------------------------------------------------------

    def _compact_rows(self) -> np.ndarray:
        """Live rows in order, and remap everything so dead rows disappear (before a flush)."""
        n = self._n
        alive = self._alive[:n]
        keep = np.flatnonzero(alive)
        if len(keep) == n:
            return keep
        new_of_old = np.full(n, -1, np.int64)
        new_of_old[keep] = np.arange(len(keep))
        for name in self.dims:
            nm = self._named[name]
            live = self._live_mask(name)
            labels = nm.labels[: nm.n_labels]
            nm.labels[: nm.n_labels] = np.where(live, new_of_old[np.maximum(labels, 0)], -1)
            rl = np.full(max(len(keep), 1), -1, np.int64)
            rl[: len(keep)] = self._row_label[name][keep]
            self._row_label[name] = rl
        for attr in ("_ids", "_media", "_clip", "_start", "_end", "_speech", "_alive"):
            setattr(self, attr, getattr(self, attr)[keep].copy())
        self._extras = {int(new_of_old[r]): v for r, v in self._extras.items() if alive[r]}
        self._n = self._cap = len(keep)
        if self._cap == 0:
            self._grow(1)
        self._row_of = None
        self._touch()
        return np.arange(len(keep))

    def flush(self) -> None:
        with self._lock:
            self._check_writable()
            self._flush()

    def _dirty(self) -> bool:
        return self._rows_dirty or any(nm.dirty for nm in self._named.values()) or self._gen is None

    def _flush(self) -> None:
        if not self._dirty():
            return
        for name in self.dims:
            if self._named[name].index is not None:
                self._ensure_ready(name)
        self._compact_rows()
        prev = self._gen
        number = int(prev.split("-")[1]) + 1 if prev else 1
        final = self.path / f"gen-{number:06d}"
        tmp = self.path / f"gen-{number:06d}.tmp-{uuid.uuid4().hex[:8]}"
        if final.exists():
            shutil.rmtree(final)
        tmp.mkdir()
        try:
            n = self._n
            for fname, arr in (
                ("ids", self._ids[:n]),
                ("media_id", self._media[:n]),
                ("clip_index", self._clip[:n]),
                ("start", self._start[:n]),
                ("end", self._end[:n]),
                ("has_speech", self._speech[:n]),
            ):
                _save_npy(tmp / f"{fname}.npy", np.ascontiguousarray(arr))
            _write_bytes(tmp / "extras.json", json.dumps({str(k): v for k, v in self._extras.items()}).encode())
            names_meta = {}
            for name in self.dims:
                nm = self._named[name]
                target = tmp / f"{name}.faiss"
                if not nm.dirty and prev is not None:  # unchanged (stale labels live in labels.npy)
                    src = self.path / prev / f"{name}.faiss"
                    try:
                        os.link(src, target)
                    except OSError:
                        shutil.copyfile(src, target)
                    kind = self._disk_kind.get(name, "flat")
                else:
                    if nm.index is None:
                        nm.index = self._faiss.IndexFlatIP(self.dims[name])
                    self._faiss.write_index(nm.index, str(target))
                    with open(target, "rb") as f:
                        os.fsync(f.fileno())
                    kind = "hnsw" if self._is_hnsw(nm.index) else "flat"
                _save_npy(tmp / f"{name}.labels.npy", nm.labels[: nm.n_labels].copy())
                names_meta[name] = {"kind": kind, "vectors": nm.live, "labels": nm.n_labels}
            meta = {"format": _FORMAT, "dims": self.dims, "rows": n, "names": names_meta}
            _write_bytes(tmp / "meta.json", json.dumps(meta, indent=1).encode())
            _fsync_dir(tmp)
            os.replace(tmp, final)
            cur_tmp = self.path / "CURRENT.tmp"
            _write_bytes(cur_tmp, final.name.encode())
            os.replace(cur_tmp, self.path / "CURRENT")
            _fsync_dir(self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._gen = final.name
        self._disk_kind = {name: m["kind"] for name, m in names_meta.items()}
        self._rows_dirty = False
        for nm in self._named.values():
            nm.dirty = False
        self._sweep()

    def close(self) -> None:
        self._close(flush=True)

    def discard(self) -> None:
        self._close(flush=False)

    def _close(self, *, flush: bool) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                if flush and not self.read_only and self._dirty():
                    self._flush()
            finally:
                self._closed = True
                for nm in self._named.values():
                    nm.index = None
                self._release_lock()

    def __del__(self) -> None:  # a forgotten close() must not keep the lock forever
        with contextlib.suppress(Exception):
            self._release_lock()

    # -- introspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per vector name: kind, live and stale vectors, and the FAISS index's size in bytes."""
        with self._lock:
            self._check_open()
            out: dict[str, Any] = {"points": int(self._n_alive), "rows": int(self._n)}
            for name in self.dims:
                index = self._ensure_ready(name)
                nm = self._named[name]
                if self._is_hnsw(index):
                    vec_bytes = index.storage.sa_code_size() * index.ntotal
                    graph_bytes = int(index.hnsw.neighbors.size()) * 4 + int(index.hnsw.offsets.size()) * 8
                    kind = "hnsw"
                else:
                    vec_bytes, graph_bytes, kind = index.ntotal * index.d * 4, 0, "flat"
                out[name] = {
                    "kind": kind,
                    "vectors": nm.live,
                    "stale": nm.stale,
                    "vector_bytes": int(vec_bytes),
                    "graph_bytes": graph_bytes,
                }
            return out


# ---------------------------------------------------------------------------------------------
# Qdrant


def _import_qdrant() -> tuple[Any, Any]:
    try:
        from qdrant_client import QdrantClient, models
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the qdrant vector index needs the qdrant-client package (pip install qdrant-client)") from e
    return QdrantClient, models


class QdrantIndex(VectorIndex):
    """Qdrant: local mode (``path``, an exclusive lock on the folder) or a server (``url``).

    One collection with a named vector per name (cosine). A point may lack a vector name; it then
    never matches searches on that name. On a server, ``media_id`` and ``has_speech`` get payload
    indexes (local mode ignores payload indexes and scans). Upserts go in batches of
    ``batch_size`` with ``wait=True``; local mode persists each write, so ``flush`` has nothing
    to do.
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        *,
        path: Path | str | None = None,
        url: str | None = None,
        collection: str = "vidx_clips",
        api_key: str | None = None,
        batch_size: int = 256,
        timeout: int | None = None,
    ) -> None:
        QdrantClient, models = _import_qdrant()
        self._m = models
        self.dims = _check_dims(dims)
        if (path is None) == (url is None):
            raise ValueError("expected exactly one of path (local mode) or url (a Qdrant server)")
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        self.collection = collection
        self.batch_size = int(batch_size)
        self.local = path is not None
        if path is not None:
            Path(path).mkdir(parents=True, exist_ok=True)
            self._client = QdrantClient(path=str(path))
        else:
            self._client = QdrantClient(url=url, api_key=api_key, timeout=timeout)
        self._closed = False
        try:
            self._ensure_collection()
        except BaseException:
            self._client.close()
            raise

    def _vectors_config(self) -> dict[str, Any]:
        m = self._m
        return {name: m.VectorParams(size=dim, distance=m.Distance.COSINE) for name, dim in self.dims.items()}

    def _ensure_collection(self) -> None:
        m = self._m
        c = self._client
        if c.collection_exists(self.collection):
            vectors = c.get_collection(self.collection).config.params.vectors
            if not isinstance(vectors, dict):
                raise ValueError(f"qdrant collection {self.collection!r} has an unnamed vector; expected {self.dims}")
            stored = {name: int(p.size) for name, p in vectors.items()}
            bad = {name: p.distance for name, p in vectors.items() if p.distance != m.Distance.COSINE}
            if stored != self.dims or bad:
                raise ValueError(
                    f"qdrant collection {self.collection!r} has vectors {stored} (distances {bad or 'cosine'}), "
                    f"expected {self.dims} with cosine distance; clear and rebuild it (vidx reindex)"
                )
            return
        c.create_collection(self.collection, vectors_config=self._vectors_config())
        if not self.local:
            c.create_payload_index(self.collection, "media_id", m.PayloadSchemaType.INTEGER, wait=True)
            c.create_payload_index(self.collection, "has_speech", m.PayloadSchemaType.BOOL, wait=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vector index is closed")

    def _filter(self, filter: Filter | None) -> Any:
        if filter is None:
            return None
        m = self._m
        must = []
        if filter.media_ids is not None:
            must.append(m.FieldCondition(key="media_id", match=m.MatchAny(any=sorted(int(x) for x in filter.media_ids))))
        if filter.has_speech is not None:
            must.append(m.FieldCondition(key="has_speech", match=m.MatchValue(value=bool(filter.has_speech))))
        return m.Filter(must=must) if must else None

    def upsert(self, points: Sequence[Point]) -> None:
        self._check_open()
        m = self._m
        structs = [
            m.PointStruct(id=pid, vector={k: v.tolist() for k, v in vecs.items()}, payload=payload)
            for pid, (vecs, payload) in _check_points(self.dims, points).items()
        ]
        for i in range(0, len(structs), self.batch_size):
            self._client.upsert(self.collection, points=structs[i : i + self.batch_size], wait=True)

    def delete_media(self, media_ids: Iterable[int]) -> int:
        self._check_open()
        ids = frozenset(int(x) for x in media_ids)
        if not ids:
            return 0
        flt = self._filter(Filter(media_ids=ids))
        n = self._client.count(self.collection, count_filter=flt, exact=True).count
        if n:
            self._client.delete(self.collection, points_selector=self._m.FilterSelector(filter=flt), wait=True)
        return int(n)

    def _hits(self, points: Sequence[Any]) -> list[Hit]:
        return [Hit(id=str(p.id), score=float(p.score), payload=dict(p.payload or {})) for p in points]

    def search(self, name: str, query: np.ndarray, limit: int, filter: Filter | None = None) -> list[Hit]:
        self._check_open()
        q = _check_vector(self.dims, name, query, "the query")
        limit = _check_limit(limit)
        filter = _check_filter(filter)
        if filter is not None and filter.media_ids is not None and not filter.media_ids:
            return []
        res = self._client.query_points(
            self.collection,
            query=q.tolist(),
            using=name,
            limit=limit,
            query_filter=self._filter(filter),
            with_payload=True,
        )
        return self._hits(res.points)

    def search_batch(
        self, name: str, queries: np.ndarray, limit: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        self._check_open()
        q = _check_queries(self.dims, name, queries)
        limit = _check_limit(limit)
        filter = _check_filter(filter)
        if not len(q) or (filter is not None and filter.media_ids is not None and not filter.media_ids):
            return [[] for _ in range(len(q))]
        m = self._m
        flt = self._filter(filter)
        reqs = [m.QueryRequest(query=row.tolist(), using=name, limit=limit, filter=flt, with_payload=True) for row in q]
        return [self._hits(r.points) for r in self._client.query_batch_points(self.collection, requests=reqs)]

    def count(self) -> int:
        self._check_open()
        return int(self._client.count(self.collection, exact=True).count)

    def media_ids(self) -> set[int]:
        self._check_open()
        n = self.count()
        if n == 0:
            return set()
        res = self._client.facet(self.collection, key="media_id", limit=n, exact=True)
        return {int(h.value) for h in res.hits}

    def clear(self) -> None:
        self._check_open()
        self._client.delete_collection(self.collection)
        self._ensure_collection()

    def flush(self) -> None:
        self._check_open()  # local mode and servers persist every acknowledged write

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()
