"""The FAISS backend of the vector index: in-process FAISS in one directory, one writer and any number of readers.

The rows (one per point: its id and payload columns) and their labels live here; which FAISS
index a vector name gets and how it is searched is :mod:`store.vectors.faiss_policy`, the files
on disk :mod:`store.vectors.faiss_files`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from store.vectors.base import (
    REQUIRED_PAYLOAD,
    Filter,
    Hit,
    Point,
    VectorIndex,
    check_dims,
    check_filter,
    check_limit,
    check_name,
    check_points,
    check_queries,
)
from store.vectors.faiss_files import Generation, IndexFiles, NamedSnapshot
from store.vectors.faiss_policy import IndexPolicy, Named, Selection

logger = logging.getLogger(__name__)

# Row column on disk -> the attribute holding it (``_alive`` is not saved: flushed rows are live).
_COLUMNS = {
    "ids": "_ids",  # uuid hex, no dashes
    "media_id": "_media",
    "clip_index": "_clip",
    "start": "_start",
    "end": "_end",
    "has_speech": "_speech",
}
_ROW_ATTRS = (*_COLUMNS.values(), "_alive")


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("the faiss vector index needs the faiss-cpu package (pip install faiss-cpu)") from e
    return faiss


class FaissIndex(VectorIndex):
    """Embedded FAISS index saved in ``path`` (a directory): one writer, any number of readers.

    Per vector name, exact search below ``hnsw_threshold`` vectors and HNSW (``hnsw_m``,
    ``ef_search``, ``ef_construction``, ``storage``) above it: :attr:`policy`, an
    :class:`~store.vectors.faiss_policy.IndexPolicy`, whose module docstring has the
    measurements behind the defaults. Filters become ID selectors, so a filtered search still
    returns ``limit`` hits when that many match.

    Files (:mod:`store.vectors.faiss_files`): a flush writes a new generation and switches
    ``CURRENT``, so a crash leaves the previous state. A writer holds ``path/.lock``; a second
    writer gets :class:`IndexLockedError`, readers (``read_only=True``) take no lock and
    :meth:`refresh` to see the writer's latest flush.

    Writes: new points are appended (an HNSW add, no rebuild). The switch from exact to HNSW
    happens lazily, at the next search, ``flush`` or ``stats`` after a name crosses the threshold,
    so a bulk reindex builds the graph once. A replaced or deleted vector leaves a stale label,
    masked at search time; re-upserting an identical vector keeps its label.

    FAISS indexes load lazily, on the first search or write of their vector name. ``threads``
    calls ``faiss.omp_set_num_threads`` (process-wide; it sets the build's parallelism). Every
    public method takes an internal lock, so threads may share an instance (searches serialise,
    except a reader's: see :attr:`concurrent_search`).
    """

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
        self._faiss = import_faiss()
        self.dims = check_dims(dims)
        self.policy = IndexPolicy(self._faiss, hnsw_threshold, hnsw_m, ef_search, ef_construction, storage)
        self.path = Path(path)
        self.read_only = read_only
        if threads is not None:
            if threads < 1:
                raise ValueError(f"expected threads >= 1, got {threads}")
            self._faiss.omp_set_num_threads(int(threads))
        self._lock = threading.RLock()
        self._files = IndexFiles(self.path, self._faiss)
        self._closed = False
        if read_only:
            if not self._files.exists():
                raise FileNotFoundError(f"no FAISS vector index at {self.path} (no CURRENT file)")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._files.lock()
        try:
            self._reset()
            if self._files.exists():
                self._load()
            if not read_only:
                self._files.sweep(self._gen)
        except BaseException:
            self._files.unlock()
            raise

    # -- state --------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._n = 0  # rows used (alive or dead)
        self._cap = 0
        self._ids = np.zeros(0, "S32")
        self._media = np.zeros(0, np.int32)
        self._clip = np.zeros(0, np.int32)
        self._start = np.zeros(0, np.float64)
        self._end = np.zeros(0, np.float64)
        self._speech = np.zeros(0, bool)
        self._alive = np.zeros(0, bool)
        self._n_alive = 0
        self._extras: dict[int, dict[str, Any]] = {}
        self._row_of: dict[bytes, int] | None = {}  # built lazily after a load
        self._named = {name: Named(name) for name in self.dims}
        self._gen: str | None = None  # generation directory name the state came from
        self._rows_dirty = False
        self._disk_kind: dict[str, str] = {}
        self._touch()

    def _touch(self) -> None:
        """Drop caches derived from rows and labels (after any write)."""
        self._media_sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._mask_cache: dict[tuple[str, bool], np.ndarray] = {}
        for nm in self._named.values():
            nm.live_cache = None

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 1024)

        def g(a: np.ndarray, fill: Any = 0) -> np.ndarray:
            out = np.full(cap, fill, a.dtype) if fill != 0 else np.zeros(cap, a.dtype)
            out[: self._n] = a[: self._n]
            return out

        for attr in _ROW_ATTRS:
            setattr(self, attr, g(getattr(self, attr)))
        for nm in self._named.values():
            nm.row_label = g(nm.row_label, -1)
        self._cap = cap

    def _row_map(self) -> dict[bytes, int]:
        if self._row_of is None:
            alive = np.flatnonzero(self._alive[: self._n])
            self._row_of = dict(zip(self._ids[alive].tolist(), alive.tolist()))
        return self._row_of

    def _check_writable(self) -> None:
        self._check_open()
        if self.read_only:
            raise PermissionError(f"the FAISS index at {self.path} is open read-only")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the vector index is closed")

    # -- loading --------------------------------------------------------------------------------

    def _load(self) -> None:
        self._adopt(self._files.load(self.dims, reader=self.read_only))

    def _adopt(self, gen: Generation) -> None:
        """Take a generation read from disk as the whole state (its FAISS indexes load on use)."""
        self._reset()
        n = gen.rows
        self._grow(n)
        self._n = n
        for col, attr in _COLUMNS.items():
            getattr(self, attr)[:n] = gen.columns[col]
        self._alive[:n] = True  # flushed generations hold live rows only
        self._n_alive = n
        self._extras = gen.extras
        self._row_of = None
        for name, nm in self._named.items():
            nm.load(gen.labels[name])
        self._disk_kind = dict(gen.kinds)
        self._gen = gen.name
        self._touch()

    def _ensure_loaded(self, name: str) -> Any:
        nm = self._named[name]
        if nm.index is not None:
            return nm.index
        if self._gen is None:
            nm.index = self.policy.new_flat(self.dims[name])
            return nm.index
        f = self._files.faiss_file(self._gen, name)
        if not f.is_file() and self.read_only:
            # The writer flushed twice since this reader loaded: start over from CURRENT.
            logger.info("vector index generation %s is gone; reloading %s", self._gen, self.path)
            self._load()
            return self._ensure_loaded(name)
        index = self._faiss.read_index(str(f))
        if index.ntotal != nm.n_labels:
            raise RuntimeError(f"corrupt FAISS index {f}: {index.ntotal} vectors, {nm.n_labels} labels")
        nm.index = index
        return index

    def _ensure_ready(self, name: str) -> Any:
        """Load and settle ``name``: drop stale labels, switch between exact and HNSW by size."""
        index = self._ensure_loaded(name)
        if self.read_only:
            return index  # a reader searches what the writer saved; stale labels are masked
        nm = self._named[name]
        if self.policy.settle(nm):
            self._touch()
        return nm.index

    def refresh(self) -> bool:
        """Readers: pick up the writer's latest flush; return whether anything changed."""
        with self._lock:
            self._check_open()
            gen = self._files.current()
            if gen is None or gen == self._gen:
                return False
            if not self.read_only:
                raise RuntimeError("refresh() is for read-only indexes; the writer's state is the newest")
            self._load()
            return True

    # -- writes ---------------------------------------------------------------------------------

    def upsert(self, points: Sequence[Point]) -> None:
        with self._lock:
            self._check_writable()
            checked = check_points(self.dims, points)
            if not checked:
                return
            new_rows, new_vecs, replaced = self._upsert_rows(checked)
            self._rows_dirty = True
            for name in self.dims:
                if replaced[name]:
                    self._replace(name, replaced[name], new_rows[name], new_vecs[name])
            self._touch()
            for name in self.dims:
                if new_rows[name]:
                    self._add(name, new_rows[name], new_vecs[name])
            self._touch()

    def _upsert_rows(
        self, checked: Mapping[str, tuple[dict[str, np.ndarray], dict[str, Any]]]
    ) -> tuple[dict[str, list[int]], dict[str, list[np.ndarray]], dict[str, list[tuple[int, np.ndarray]]]]:
        """Write the rows of checked points; per vector name, return the rows whose vector is new
        (with the vectors) and the rows that had one (with their new vector)."""
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
            for name, nm in self._named.items():
                if name not in vecs:
                    nm.unlabel_row(row)
                elif nm.row_label[row] >= 0:
                    replaced[name].append((row, vecs[name]))
                else:
                    new_rows[name].append(row)
                    new_vecs[name].append(vecs[name])
        return new_rows, new_vecs, replaced

    def _replace(
        self, name: str, replaced: list[tuple[int, np.ndarray]], new_rows: list[int], new_vecs: list[np.ndarray]
    ) -> None:
        """Vectors for rows that have one: keep those stored identically (an idempotent replay
        leaves HNSW untouched), queue the others for adding and let their old labels go stale."""
        nm = self._named[name]
        view = self.policy.codes_view(self._ensure_loaded(name))
        rows = np.fromiter((r for r, _ in replaced), np.int64, len(replaced))
        mat = np.stack([v for _, v in replaced])
        if view is not None:
            same = (view[nm.row_label[rows]] == mat.astype(view.dtype)).all(axis=1)
        else:
            same = np.zeros(len(rows), bool)
        for (row, vec), keep in zip(replaced, same.tolist()):
            if not keep:
                nm.unlabel_row(row)
                new_rows.append(row)
                new_vecs.append(vec)

    def _add(self, name: str, rows: list[int], vecs: list[np.ndarray]) -> None:
        """Append vectors for these rows to ``name``'s FAISS index (new labels)."""
        self._ensure_loaded(name).add(np.stack(vecs))
        nm = self._named[name]
        nm.append(np.asarray(rows, np.int64))
        nm.dirty = True

    def delete_media(self, media_ids: Iterable[int]) -> int:
        with self._lock:
            self._check_writable()
            ids = np.fromiter((int(m) for m in media_ids), np.int64)
            if not len(ids) or not self._n_alive:
                return 0
            rows = np.flatnonzero(self._alive[: self._n] & np.isin(self._media[: self._n], ids))
            if not len(rows):
                return 0
            for nm in self._named.values():
                nm.unlabel(rows)
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
                nm.index = self.policy.new_flat(self.dims[name])
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

    def _select(self, name: str, filter: Filter | None) -> Selection | None:
        """What ``name``'s search may return (live labels passing the filter), or None for everything."""
        nm = self._named[name]
        if filter is None or (filter.media_ids is None and filter.has_speech is None):
            if nm.stale == 0:
                return None
            return Selection(mask=nm.live_mask())
        if filter.media_ids is not None:
            rows = self._media_rows(filter.media_ids)
            if filter.has_speech is not None:
                rows = rows[self._speech[rows] == bool(filter.has_speech)]
            labels = nm.row_label[rows]  # dead rows and rows without the name hold -1
            return Selection(labels=np.sort(labels[labels >= 0]))
        key = (name, bool(filter.has_speech))
        mask = self._mask_cache.get(key)
        if mask is None:
            labels = nm.labels[: nm.n_labels]
            mask = nm.live_mask() & (self._speech[np.maximum(labels, 0)] == key[1])
            self._mask_cache[key] = mask
        return Selection(mask=mask)

    def search(self, name: str, query: np.ndarray, limit: int, filter: Filter | None = None) -> list[Hit]:
        q = np.asarray(query, dtype=np.float32)
        dim = check_name(self.dims, name)
        if q.shape != (dim,):
            raise ValueError(f"expected a ({dim},) query for {name!r}, got shape {q.shape}")
        return self.search_batch(name, q[None, :], limit, filter)[0]

    def search_batch(
        self, name: str, queries: np.ndarray, limit: int, filter: Filter | None = None
    ) -> list[list[Hit]]:
        q = check_queries(self.dims, name, queries)
        limit = check_limit(limit)
        filter = check_filter(filter)
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
                    D, Idx = self.policy.search(index, q, k, sel)
            if self.read_only:
                # Nothing in this process writes a reader's index, and FAISS releases the GIL while
                # it searches: two searches (the engine's speech and visual) run on two cores.
                D, Idx = self.policy.search(index, q, k, sel)
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

    # -- persistence ----------------------------------------------------------------------------

    def _compact_rows(self) -> None:
        """Remap everything so dead rows disappear (before a flush)."""
        n = self._n
        alive = self._alive[:n]
        keep = np.flatnonzero(alive)
        if len(keep) == n:
            return
        new_of_old = np.full(n, -1, np.int64)
        new_of_old[keep] = np.arange(len(keep))
        for nm in self._named.values():
            nm.keep_rows(keep, new_of_old)
        for attr in _ROW_ATTRS:
            setattr(self, attr, getattr(self, attr)[keep].copy())
        self._extras = {int(new_of_old[r]): v for r, v in self._extras.items() if alive[r]}
        self._n = self._cap = len(keep)
        if self._cap == 0:
            self._grow(1)
        self._row_of = None
        self._touch()

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
        columns = {col: getattr(self, attr)[: self._n] for col, attr in _COLUMNS.items()}
        names = {name: self._snapshot(name) for name in self.dims}
        self._gen = self._files.write(self._gen, self.dims, columns, self._extras, names)
        self._disk_kind = {name: snap.kind for name, snap in names.items()}
        self._rows_dirty = False
        for nm in self._named.values():
            nm.dirty = False
        self._files.sweep(self._gen)

    def _snapshot(self, name: str) -> NamedSnapshot:
        nm = self._named[name]
        labels = nm.labels[: nm.n_labels].copy()
        if not nm.dirty and self._gen is not None:  # the previous generation's file is still right
            return NamedSnapshot(None, self._disk_kind.get(name, "flat"), labels, nm.live)
        if nm.index is None:
            nm.index = self.policy.new_flat(self.dims[name])
        return NamedSnapshot(nm.index, self.policy.kind(nm.index), labels, nm.live)

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
                self._files.unlock()

    def __del__(self) -> None:  # a forgotten close() must not keep the lock forever
        with contextlib.suppress(Exception):
            self._files.unlock()

    # -- introspection --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per vector name: kind, live and stale vectors, and the FAISS index's size in bytes."""
        with self._lock:
            self._check_open()
            out: dict[str, Any] = {"points": int(self._n_alive), "rows": int(self._n)}
            for name in self.dims:
                index = self._ensure_ready(name)
                nm = self._named[name]
                if self.policy.is_hnsw(index):
                    vec_bytes = index.storage.sa_code_size() * index.ntotal
                    graph_bytes = int(index.hnsw.neighbors.size()) * 4 + int(index.hnsw.offsets.size()) * 8
                else:
                    vec_bytes, graph_bytes = index.ntotal * index.d * 4, 0
                out[name] = {
                    "kind": self.policy.kind(index),
                    "vectors": nm.live,
                    "stale": nm.stale,
                    "vector_bytes": int(vec_bytes),
                    "graph_bytes": graph_bytes,
                }
            return out
