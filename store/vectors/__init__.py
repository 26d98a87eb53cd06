"""The vector index: named dense vectors per clip, one interface over two backends, and a front door.

* :class:`VectorIndex` (``base``) - the interface, with its types :class:`Point`, :class:`Hit`,
  :class:`Filter`, the deterministic :func:`point_id` and :data:`REQUIRED_PAYLOAD`.
* :class:`FaissIndex` (``faiss_index``) - embedded default: in-process FAISS, exact below
  ``hnsw_threshold`` points per vector name and HNSW above it (``faiss_policy``), saved in one
  directory with one writer and any number of readers (``faiss_files``).
* :class:`QdrantIndex` (``qdrant_index``) - Qdrant, local mode (a folder) or a server by URL.
* :func:`open_index` - picks the backend by name.

Importing this package is cheap: faiss and qdrant_client are imported when an index is opened.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from store.vectors.base import (
    REQUIRED_PAYLOAD,
    Filter,
    Hit,
    IndexLockedError,
    Point,
    VectorIndex,
    point_id,
)
from store.vectors.faiss_index import FaissIndex
from store.vectors.qdrant_index import QdrantIndex

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
