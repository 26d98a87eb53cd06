"""The Qdrant backend of the vector index: local mode (a folder) or a Qdrant server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from store.vectors.base import (
    Filter,
    Hit,
    Point,
    VectorIndex,
    check_dims,
    check_filter,
    check_limit,
    check_points,
    check_queries,
    check_vector,
)


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
        self.dims = check_dims(dims)
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
            for pid, (vecs, payload) in check_points(self.dims, points).items()
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
        q = check_vector(self.dims, name, query, "the query")
        limit = check_limit(limit)
        filter = check_filter(filter)
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
        q = check_queries(self.dims, name, queries)
        limit = check_limit(limit)
        filter = check_filter(filter)
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
