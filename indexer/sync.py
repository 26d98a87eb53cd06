"""Index sync: the single writer that moves indexed clips from the catalog and feature store into the search index."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import selectinload

from indexer.embed import EMBEDDING_VERSION, ClipEmbeddings, EmbedOptions, Embedder, segments_to_words
from store import queries
from store.catalog import Catalog, Media, MediaStatus, utcnow
from store.features import FeatureStore
from store.lexical import LexicalIndex
from store.vectors import IndexLockedError, Point, VectorIndex, point_id

if TYPE_CHECKING:
    from indexer.summaries import Summarizer, SummaryReport

logger = logging.getLogger(__name__)

# Any constant will do; it keeps two syncs (workers or `vidx`, on any hosts) from writing the index at once.
SYNC_LOCK_KEY = 7_351_120_412


class SyncBusyError(IndexLockedError):
    """Another index sync (a worker's or another `vidx`'s) holds the cluster-wide sync lock."""


@contextlib.contextmanager
def sync_lock(catalog: Catalog, *, wait: float = 0.0, poll: float = 0.5) -> Iterator[bool]:
    """The index writer's cluster-wide lock: a PostgreSQL advisory lock held by one connection.

    Yields whether it was taken within ``wait`` seconds. The connection runs in autocommit, so it
    does not sit "idle in transaction" for the whole sync. On SQLite (one host) it is a no-op that
    yields True: the FAISS index's own ``flock`` serialises writers there.
    """
    if catalog.engine.dialect.name != "postgresql":
        yield True
        return
    deadline = time.monotonic() + max(wait, 0.0)
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while True:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": SYNC_LOCK_KEY}).scalar())
            if got or time.monotonic() >= deadline:
                break
            time.sleep(min(poll, max(deadline - time.monotonic(), 0.0)))
        try:
            yield got
        finally:
            if got:
                try:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": SYNC_LOCK_KEY})
                except Exception:  # noqa: BLE001 - a broken connection: drop it, the server frees its locks
                    logger.warning("could not release the index sync lock; dropping its connection", exc_info=True)
                    conn.invalidate()


@contextlib.contextmanager
def exclusive_sync(catalog: Catalog, *, wait: float = 300.0) -> Iterator[None]:
    """``sync_lock`` for a person waiting: wait up to ``wait`` seconds, then ``SyncBusyError``."""
    with sync_lock(catalog, wait=wait) as got:
        if not got:
            raise SyncBusyError(
                f"another index sync (a `vidx worker` or another `vidx`) has held the sync lock for over {wait:.0f} s; "
                "try again when it has finished"
            )
        yield


@dataclass
class SyncReport:
    upserted_media: int = 0
    upserted_points: int = 0
    deleted_media: int = 0
    lexical_documents: int = 0
    seconds: float = 0.0
    errors: dict[int, str] = field(default_factory=dict)
    summaries: SummaryReport | None = None


def _words(segments: Sequence[Any]) -> list[tuple[float, float, str]]:
    words: list[tuple[float, float, str]] = []
    for seg in segments:
        if seg.words:
            words.extend((float(w[0]), float(w[1]), str(w[2])) for w in seg.words)
        else:
            words.extend(segments_to_words([(seg.start, seg.end, seg.text)]))
    return words


def _clean_tag(name: str) -> str:
    # "impala (antelope)" -> "impala antelope": the disambiguation words are useful query terms too.
    return name.replace("(", " ").replace(")", " ").replace("/", " ")


def lexical_text(speech_text: str, concepts: Sequence[Sequence[Any]] | None, top: int, min_prob: float) -> str:
    tags = [_clean_tag(str(c[0])) for c in (concepts or [])[:top] if float(c[1]) >= min_prob]
    return " ".join([speech_text, *tags]).strip()


def sync_index(
    catalog: Catalog,
    store: FeatureStore,
    vectors: VectorIndex,
    lexical: LexicalIndex,
    embedder: Embedder,
    *,
    full: bool = False,
    progress: Callable[[str, float], None] | None = None,
    summarizer: Summarizer | None = None,
) -> SyncReport:
    """Bring the search index in line with the catalog; ``full`` re-embeds and rewrites every file.

    With a ``summarizer``, files whose chapters and summary are missing or out of date get them
    too, from the features just synced (after the index is flushed: search never waits for them).

    Only one process may run this per index (the FAISS files and Qdrant's local mode have one
    owner): it runs under ``sync_lock`` (the `vidx.sync` task, `vidx ingest`, `search`, `reindex`), while
    the ingest stages only write catalog rows and feature files.
    """
    t0 = time.perf_counter()
    report = SyncReport()
    options = embedder.options
    if full:
        # Unmark first: a backend that writes through (Qdrant) is empty from here on, and a
        # rebuild that dies half way must leave every file for the next sync to redo.
        queries.unmark_synced(catalog)
        vectors.clear()
    gone = vectors.media_ids() - queries.indexed_media_ids(catalog)
    if gone:
        report.deleted_media = len(gone)
        vectors.delete_media(gone)
    stale = queries.stale_media_ids(catalog, embedder.version)
    synced: dict[int, Any] = {}
    for i, media_id in enumerate(stale):
        if progress is not None:
            progress("embed", i / max(len(stale), 1))
        try:
            points, indexed_at = _sync_media(catalog, store, vectors, embedder, media_id, force=full)
            report.upserted_points += points
            report.upserted_media += 1
            synced[media_id] = indexed_at
        except ValueError as e:
            # A file whose feature files vanished: report it, keep the rest of the index moving.
            report.errors[media_id] = str(e)
            logger.warning("index sync skipped media %s: %s", media_id, e)
    if stale or gone or full or lexical.count() == 0:
        if progress is not None:
            progress("lexical", 1.0)
        report.lexical_documents = _rebuild_lexical(catalog, store, lexical, options)
    else:
        report.lexical_documents = lexical.count()
    vectors.flush()
    # Marked only now that the points are on disk: a sync that dies before its flush leaves these
    # files unsynced in the catalog, and the next sync redoes them (upserts are idempotent).
    queries.mark_synced(catalog, synced, embedder.version, utcnow())
    if summarizer is not None:
        from indexer.summaries import summarize_stale

        report.summaries = summarize_stale(catalog, store, summarizer, progress=progress)
    report.seconds = time.perf_counter() - t0
    return report


def _sync_media(
    catalog: Catalog, store: FeatureStore, vectors: VectorIndex, embedder: Embedder, media_id: int, *, force: bool
) -> tuple[int, Any]:
    """Upsert one file's points (not yet flushed); returns their count and the ``indexed_at`` they reflect."""
    with catalog.session() as session:
        media = session.scalars(
            select(Media).where(Media.id == media_id).options(selectinload(Media.clips), selectinload(Media.segments))
        ).one()
        key = media.content_hash or ""
        clips = [(c.clip_index, c.start, c.end) for c in media.clips]
        tokens = {c.clip_index: c.visual_token for c in media.clips if c.visual_token is not None}
        words = _words(media.segments)
        indexed_at = media.indexed_at
    if not key or not store.exists(key):
        raise ValueError(f"feature files of media {media_id} are missing; re-ingest it")
    emb = None if force else ClipEmbeddings.load(store, key)
    if emb is None or len(emb.speech) != len(clips):
        probs = store.load(key, "probs") if store.has(key, "probs") else None
        emb = embedder.embed([(s, e) for _, s, e in clips], words, probs)
        emb.save(store, key)
    visual, has_visual = emb.visual, emb.has_visual
    if embedder.visual_model is not None:
        trained = embedder.visual_model.vectors(store, key)
        if trained is not None and len(trained) == len(clips):
            visual, has_visual = trained, np.ones(len(trained), bool)
    version = embedder.version
    points = []
    for row, (index, start, end) in enumerate(clips):
        vecs: dict[str, np.ndarray] = {}
        if emb.has_speech[row]:
            vecs["speech"] = emb.speech[row].astype(np.float32)
        if has_visual[row]:
            vecs["visual"] = visual[row].astype(np.float32)
        payload = {
            "media_id": media_id,
            "clip_index": index,
            "start": float(start),
            "end": float(end),
            "has_speech": bool(emb.has_speech[row]),
        }
        if index in tokens:
            payload["visual_token"] = int(tokens[index])
        points.append(Point(id=point_id(key, index, version), vectors=vecs, payload=payload))
    vectors.delete_media([media_id])
    vectors.upsert(points)
    return len(points), indexed_at


def _rebuild_lexical(catalog: Catalog, store: FeatureStore, lexical: LexicalIndex, options: EmbedOptions) -> int:
    ids: list[str] = []
    media_ids: list[int] = []
    clip_indices: list[int] = []
    texts: list[str] = []
    speech: list[bool] = []
    with catalog.session() as session:
        media_rows = session.scalars(
            select(Media).where(Media.status == MediaStatus.INDEXED).options(selectinload(Media.clips))
        ).all()
        for media in media_rows:
            key = media.content_hash or ""
            emb = ClipEmbeddings.load(store, key) if key and store.exists(key) else None
            if emb is None or len(emb.speech_text) != len(media.clips):
                continue
            for row, clip in enumerate(media.clips):
                text = lexical_text(emb.speech_text[row], clip.concepts, options.lexical_concepts, options.lexical_min_prob)
                if not text:
                    continue
                ids.append(point_id(key, clip.clip_index, EMBEDDING_VERSION))
                media_ids.append(media.id)
                clip_indices.append(clip.clip_index)
                texts.append(text)
                speech.append(bool(emb.has_speech[row]))
    lexical.build(ids, media_ids, clip_indices, texts, speech)
    return len(ids)
