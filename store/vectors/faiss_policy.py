"""The FAISS index's exact/HNSW policy: which FAISS index a vector name gets at its size, how it is built and searched.

:class:`IndexPolicy` is the policy; :class:`Named` (one vector name's index and labels) and
:class:`Selection` (the labels a search may return) are what it works on.

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

A flat search of fewer than 20 queries runs on one OpenMP thread (:meth:`IndexPolicy.few_threads`).

Filters become a FAISS ``IDSelectorBitmap`` in ``SearchParameters``, so a filtered search
still returns ``limit`` hits when that many match. Under HNSW, a selective filter is searched
exactly over the matching vectors instead, and ``efSearch`` grows as the filter narrows.

A replaced or deleted vector leaves a stale label, masked at search time. A flat index drops
stale labels before its next search; HNSW is rebuilt from its own storage once over 20% of its
labels are stale (minutes at 1M on two cores), and goes back to exact below half the threshold.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

HNSW_STORAGES = ("fp16", "flat", "sq8")


class Named:
    """The FAISS index of one vector name, its label -> row map and the rows' row -> label column.

    A label is a position in the FAISS index; it is *live* while ``row_label[labels[l]] == l``.
    Labels of replaced or deleted vectors go stale: a flat index drops them before its next
    search, HNSW (which cannot remove) excludes them with an ID selector until they pass
    ``IndexPolicy.STALE_REBUILD`` of the index, and is then rebuilt from its own (fp16 or float32) storage.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.index: Any = None  # faiss index, None until loaded
        self.labels = np.zeros(0, np.int64)  # label -> row (-1: stale)
        self.n_labels = 0
        self.row_label = np.zeros(0, np.int64)  # row -> label (-1: none); grown by the owner of the rows
        self.stale = 0
        self.dirty = False  # the faiss index changed since the last flush
        self.live_cache: np.ndarray | None = None  # the live-label mask, until the next write

    @property
    def live(self) -> int:
        return self.n_labels - self.stale

    def live_mask(self) -> np.ndarray:
        if self.live_cache is None:
            labels = self.labels[: self.n_labels]
            self.live_cache = (labels >= 0) & (self.row_label[np.maximum(labels, 0)] == np.arange(self.n_labels))
        return self.live_cache

    def load(self, labels: np.ndarray) -> None:
        """Take a saved label -> row map (the rows' column is already grown to fit)."""
        self.labels, self.n_labels = labels.astype(np.int64, copy=True), len(labels)
        live = np.flatnonzero(labels >= 0)
        self.row_label[labels[live]] = live
        self.stale = self.n_labels - len(live)

    def append(self, rows: np.ndarray) -> None:
        """New labels for these rows, whose vectors were just added to the index in this order."""
        n = len(rows)
        if self.n_labels + n > len(self.labels):
            grown = np.full(max(self.n_labels + n, 2 * len(self.labels), 1024), -1, np.int64)
            grown[: self.n_labels] = self.labels[: self.n_labels]
            self.labels = grown
        new = np.arange(self.n_labels, self.n_labels + n, dtype=np.int64)
        self.labels[new] = rows
        self.n_labels += n
        self.row_label[rows] = new
        self.live_cache = None

    def unlabel_row(self, row: int) -> None:
        """:meth:`unlabel` for one row (the upsert loop's; scalar access is the fast one there)."""
        if self.row_label[row] >= 0:
            self.row_label[row] = -1
            self.stale += 1
            self.live_cache = None

    def unlabel(self, rows: np.ndarray) -> None:
        """These rows' vectors go (their labels go stale; the FAISS index itself is unchanged)."""
        had = rows[self.row_label[rows] >= 0]
        if len(had):
            self.row_label[had] = -1
            self.stale += len(had)
            self.live_cache = None

    def relabel(self, index: Any, rows: np.ndarray) -> None:
        """``index`` now holds exactly ``rows``' vectors, in order: label i is row ``rows[i]``."""
        self.index = index
        self.labels = np.full(max(len(rows), 1024), -1, np.int64)
        self.n_labels, self.stale = 0, 0
        self.append(rows)
        self.dirty = True

    def keep_rows(self, keep: np.ndarray, new_of_old: np.ndarray) -> None:
        """Only rows ``keep`` remain, renumbered by ``new_of_old``: remap both directions."""
        live = self.live_mask()
        labels = self.labels[: self.n_labels]
        self.labels[: self.n_labels] = np.where(live, new_of_old[np.maximum(labels, 0)], -1)
        rl = np.full(max(len(keep), 1), -1, np.int64)
        rl[: len(keep)] = self.row_label[keep]
        self.row_label = rl
        self.live_cache = None


class Selection:
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


class IndexPolicy:
    """Exact below ``hnsw_threshold`` vectors, HNSW (``hnsw_m``, ``storage``) above; see the module docstring.

    ``faiss`` is the imported faiss module. ``ef_search`` may be changed on a live index.
    """

    STALE_REBUILD = 0.2  # rebuild an HNSW index when this fraction of its labels is stale
    GATHER_RATIO = 100  # exact search of a selection this many times smaller than the index: gather

    def __init__(
        self,
        faiss: Any,
        hnsw_threshold: int = 20_000,
        hnsw_m: int = 32,
        ef_search: int | None = None,
        ef_construction: int = 40,
        storage: str = "fp16",
    ) -> None:
        bad_ef = ef_search is not None and ef_search < 1
        if hnsw_threshold < 1 or hnsw_m < 4 or bad_ef or ef_construction < 1:
            raise ValueError(
                "expected hnsw_threshold >= 1, hnsw_m >= 4, ef_search >= 1 (or None) and ef_construction >= 1, got "
                f"{hnsw_threshold}, {hnsw_m}, {ef_search}, {ef_construction}"
            )
        if storage not in HNSW_STORAGES:
            raise ValueError(f"expected storage in {HNSW_STORAGES}, got {storage!r}")
        self.faiss = faiss
        self.hnsw_threshold = int(hnsw_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_search = None if ef_search is None else int(ef_search)
        self.ef_construction = int(ef_construction)
        self.storage = storage

    # -- kinds and building ---------------------------------------------------------------------

    def is_hnsw(self, index: Any) -> bool:
        return isinstance(index, self.faiss.IndexHNSW)

    def kind(self, index: Any) -> str:
        return "hnsw" if self.is_hnsw(index) else "flat"

    def new_flat(self, dim: int) -> Any:
        return self.faiss.IndexFlatIP(dim)

    def new_hnsw(self, dim: int) -> Any:
        faiss = self.faiss
        if self.storage == "flat":
            index = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            qt = faiss.ScalarQuantizer.QT_fp16 if self.storage == "fp16" else faiss.ScalarQuantizer.QT_8bit
            index = faiss.IndexHNSWSQ(dim, qt, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_for(1)
        return index

    def codes_view(self, index: Any) -> np.ndarray | None:
        """Zero-copy (ntotal, d) view of the stored vectors: float32 (flat) or float16 (HNSW fp16); None for sq8."""
        faiss = self.faiss
        n, d = index.ntotal, index.d
        if self.is_hnsw(index):
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

    def vectors(self, index: Any, labels: np.ndarray) -> np.ndarray:
        """Stored vectors (float32) for these labels."""
        if len(labels) == 0:
            return np.zeros((0, index.d), np.float32)
        view = self.codes_view(index)
        if view is not None:
            return view[labels].astype(np.float32, copy=False)
        out = np.empty((len(labels), index.d), np.float32)
        step = 65536
        for i in range(0, len(labels), step):
            out[i : i + step] = index.reconstruct_batch(labels[i : i + step])
        return out

    def settle(self, nm: Named) -> bool:
        """Drop ``nm``'s stale labels and switch between exact and HNSW by its size, as due;
        return whether its index changed."""
        hnsw = self.is_hnsw(nm.index)
        if not hnsw and nm.live >= self.hnsw_threshold:
            self._rebuild(nm, hnsw=True)
        elif not hnsw and nm.stale:
            self._compact_flat(nm)
        elif hnsw and nm.live < self.hnsw_threshold // 2:
            self._rebuild(nm, hnsw=False)
        elif hnsw and nm.stale > self.STALE_REBUILD * nm.n_labels:
            self._rebuild(nm, hnsw=True)
        else:
            return False
        return True

    def _rebuild(self, nm: Named, *, hnsw: bool) -> None:
        """A new index from the live vectors (drops stale labels; may switch kind)."""
        live = np.flatnonzero(nm.live_mask())
        vecs = self.vectors(nm.index, live)
        rows = nm.labels[live]
        dim = nm.index.d
        index = self.new_hnsw(dim) if hnsw else self.new_flat(dim)
        if not index.is_trained:
            index.train(vecs)
        if len(vecs):
            index.add(vecs)
        del vecs
        nm.relabel(index, rows)
        logger.info("rebuilt %s vectors of %r as %s", len(rows), nm.name, "HNSW" if hnsw else "flat")

    def _compact_flat(self, nm: Named) -> None:
        live = nm.live_mask()
        dead = np.flatnonzero(~live).astype(np.int64)
        nm.index.remove_ids(self.faiss.IDSelectorBatch(dead))  # keeps the order of the rest
        nm.relabel(nm.index, nm.labels[: nm.n_labels][live])

    # -- searching ------------------------------------------------------------------------------

    def ef_for(self, n: int) -> int:
        """The HNSW search beam for an index of ``n`` vectors: ``ef_search``, or by default
        256 * (n / 100k) ** 0.4 clamped to [128, 1024] (see the module docstring)."""
        if self.ef_search is not None:
            return self.ef_search
        return int(min(1024, max(128, round(256 * (max(n, 1) / 100_000) ** 0.4))))

    def search(self, index: Any, q: np.ndarray, k: int, sel: Selection | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k labels of ``index`` for the queries ``q``, within ``sel`` (None: every label)."""
        if self.is_hnsw(index):
            return self._search_hnsw(index, q, k, sel)
        if sel is None:
            with self.few_threads(len(q)):
                return index.search(q, k)
        return self.exact_subset(index, q, k, sel)

    @contextlib.contextmanager
    def few_threads(self, n_queries: int) -> Iterator[None]:
        """One OpenMP thread for a flat search of a few queries (FAISS splits them by query anyway).

        Measured here (2 cores, busy machine, 20k x 384, one query): 4 ms p50 with one thread,
        19-22 ms with two, the second thread only adding OpenMP wake-up and contention.
        """
        faiss = self.faiss
        before = faiss.omp_get_max_threads()
        if n_queries >= 20 or before == 1:  # 20: FAISS's BLAS threshold, where batching pays
            yield
            return
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    def exact_subset(self, index: Any, q: np.ndarray, k: int, sel: Selection) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of ``q`` over the selected labels.

        Usually a scan of the stored vectors (flat, or HNSW's storage) with an ID selector, which
        skips the distance of every unselected vector; a selection under 1/``GATHER_RATIO`` of the
        index gathers its vectors and searches just those instead. Measured (one query, 384-d,
        2,000 selected): the scan takes 0.9 ms at 100k and 6.8 ms at 1M, the gather ~2 ms at
        either; numpy's threaded OpenBLAS took 4-8 ms for the same gather on this busy machine.
        """
        faiss = self.faiss
        view = self.codes_view(index) if sel.count * self.GATHER_RATIO <= index.ntotal else None
        if view is not None:
            labels = sel.labels()
            vecs = np.ascontiguousarray(view[labels], dtype=np.float32)
            with self.few_threads(len(q)):
                D, Idx = faiss.knn(q, vecs, k, metric=faiss.METRIC_INNER_PRODUCT)
            return D, np.where(Idx >= 0, labels[np.maximum(Idx, 0)], -1)
        flat = faiss.downcast_index(index.storage) if self.is_hnsw(index) else index
        with self.few_threads(len(q)):
            return flat.search(q, k, params=faiss.SearchParameters(sel=sel.selector(faiss, index.ntotal)))

    def _search_hnsw(self, index: Any, q: np.ndarray, k: int, sel: Selection | None) -> tuple[np.ndarray, np.ndarray]:
        faiss = self.faiss
        if sel is None:
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_for(index.ntotal), k))
        else:
            # The HNSW beam also holds points the filter rejects: widen it by the filter's
            # selectivity, and search the matching vectors exactly when that costs about as much
            # (HNSW computes roughly ef * M distances; exact search, one per selected vector).
            ef = math.ceil(max(self.ef_for(index.ntotal), k) * index.ntotal / sel.count)
            if sel.count <= max(self.hnsw_threshold, ef * self.hnsw_m):
                return self.exact_subset(index, q, k, sel)
            params = faiss.SearchParametersHNSW(sel=sel.selector(faiss, index.ntotal), efSearch=ef)
        D, Idx = index.search(q, k, params=params)
        short = np.flatnonzero((Idx < 0).any(axis=1))
        if len(short):  # the beam ran dry before finding k: answer those queries exactly
            everything = Selection(mask=np.ones(index.ntotal, bool)) if sel is None else sel
            D[short], Idx[short] = self.exact_subset(index, q[short], k, everything)
        return D, Idx
