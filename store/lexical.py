"""The lexical view of the index: BM25 (bm25s, Snowball-stemmed) over each clip's transcript window and tags."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from store.files import (
    fsync_dir,
    generation_number,
    read_current,
    staged_dir,
    sweep_generations,
    switch_current,
)

logger = logging.getLogger(__name__)

# The layout before generations: the files directly in the index directory. Read as generation 0
# until the second build after it (it stays the previous generation for one build).
FLAT = "."
FILES = ("ids.json", "media_ids.npy", "clip_indices.npy", "has_speech.npy", "bm25")
# How often a reader starts over from CURRENT when the writer swept a generation it was reading.
LOAD_TRIES = 5


def _bm25s():  # type: ignore[no-untyped-def]
    try:
        import bm25s
        import Stemmer
    except ImportError as e:
        raise RuntimeError("lexical search needs the bm25s and PyStemmer packages") from e
    return bm25s, Stemmer


@dataclass(frozen=True)
class LexicalHit:
    id: str
    score: float
    media_id: int
    clip_index: int


@dataclass(frozen=True)
class _Loaded:
    """One generation in memory; swapped as a whole, so a search never mixes two."""

    generation: str
    ids: np.ndarray
    media: np.ndarray
    clips: np.ndarray
    speech: np.ndarray
    retriever: Any | None  # bm25s.BM25; None for an index of no documents


def _fsync_tree(root: Path) -> None:
    # bm25s writes its own files; flush them all before CURRENT may name their directory.
    for folder, _, files in os.walk(root):
        for name in files:
            with open(Path(folder) / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


@contextlib.contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    # Builds wait for each other (the index sync is the single writer; this only orders strays).
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class LexicalIndex:
    """A BM25 index of ``(point id, media id, clip index, text)`` documents, rebuilt whole from the catalog.

    BM25's corpus statistics (document frequencies, average length) change with every document,
    so the index is rebuilt rather than patched; it is a derived view, cheap next to ingestion.

    On disk (``path``): ``CURRENT`` names the live generation ``gen-NNNNNN/`` (``ids.json``, the
    ``*.npy`` columns, ``bm25/``). A build stages the next generation, renames it into place and
    switches ``CURRENT`` with ``os.replace`` under ``path/.lock`` (``flock``), then sweeps all but
    the live generation and the one before, which a reader that read ``CURRENT`` just before the
    switch may still be loading. A process loads one generation into memory and keeps it (a sweep
    under it is harmless) until :meth:`refresh` sees a newer ``CURRENT``; searches on several
    threads each use the whole generation they started with.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._state: _Loaded | None = None
        self._loading = threading.Lock()  # one load at a time; searches never wait for a refresh
        self._local = threading.local()  # a PyStemmer stemmer "must not be called concurrently"

    def _stem(self):  # type: ignore[no-untyped-def]
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            _, Stemmer = _bm25s()
            stemmer = self._local.stemmer = Stemmer.Stemmer("english")
        return stemmer

    def _tokenize(self, texts: Sequence[str]):  # type: ignore[no-untyped-def]
        bm25s, _ = _bm25s()
        return bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stem(), show_progress=False)

    # -- writing --------------------------------------------------------------------------------

    def build(
        self,
        ids: Sequence[str],
        media_ids: Sequence[int],
        clip_indices: Sequence[int],
        texts: Sequence[str],
        has_speech: Sequence[bool] | None = None,
    ) -> None:
        """Replace the whole index with these documents and publish them as the next generation."""
        if not (len(ids) == len(media_ids) == len(clip_indices) == len(texts)):
            raise ValueError(
                f"expected ids, media_ids, clip_indices and texts of one length, got "
                f"{len(ids)}, {len(media_ids)}, {len(clip_indices)}, {len(texts)}"
            )
        bm25s, _ = _bm25s()
        retriever = None
        if len(texts):
            retriever = bm25s.BM25()
            retriever.index(self._tokenize(texts), show_progress=False)
        media = np.asarray(media_ids, dtype=np.int64)
        clips = np.asarray(clip_indices, dtype=np.int64)
        speech = np.ones(len(ids), dtype=bool) if has_speech is None else np.asarray(has_speech, dtype=bool)
        self.path.mkdir(parents=True, exist_ok=True)
        with _writer_lock(self.path):
            live = self._next_generation()
            with staged_dir(self.path / live, fsync=True) as staging:
                if retriever is not None:
                    retriever.save(str(staging / "bm25"))
                np.save(staging / "media_ids.npy", media)
                np.save(staging / "clip_indices.npy", clips)
                np.save(staging / "has_speech.npy", speech)
                (staging / "ids.json").write_text(json.dumps(list(ids)))
                _fsync_tree(staging)
            switch_current(self.path, live)
            self._sweep(live)
        loaded = _Loaded(live, np.asarray(list(ids), dtype=object), media, clips, speech, retriever)
        with self._loading:  # after any load in flight, so an older generation cannot land over it
            self._state = loaded

    def _next_generation(self) -> str:
        # Above every generation on disk too: one renamed into place by a build that died before
        # its switch is never reused.
        numbers = [generation_number(p.name) for p in self.path.glob("gen-*")]
        current = generation_number(read_current(self.path) or "")
        top = max([n for n in numbers if n is not None] + [current or 0])
        return f"gen-{top + 1:06d}"

    def _sweep(self, live: str) -> None:
        sweep_generations(self.path, live)
        if (generation_number(live) or 0) < 2:
            return  # the flat layout, if any, is the generation before gen-000001: kept
        for name in FILES:
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)

    # -- reading --------------------------------------------------------------------------------

    def _current(self) -> str | None:
        gen = read_current(self.path)
        if gen is None and (self.path / "ids.json").is_file():
            return FLAT
        return gen

    def _read(self, gen: str) -> _Loaded:
        bm25s, _ = _bm25s()
        d = self.path / gen
        ids = np.asarray(json.loads((d / "ids.json").read_text()), dtype=object)
        retriever = None
        if len(ids):  # a build of no documents saves no bm25/; otherwise a missing one was swept
            retriever = bm25s.BM25.load(str(d / "bm25"), show_progress=False)
        return _Loaded(
            generation=gen,
            ids=ids,
            media=np.load(d / "media_ids.npy"),
            clips=np.load(d / "clip_indices.npy"),
            speech=np.load(d / "has_speech.npy"),
            retriever=retriever,
        )

    def _load_current(self) -> _Loaded | None:
        """The generation CURRENT names, read whole; None when there is no index yet."""
        for attempt in range(LOAD_TRIES):
            gen = self._current()
            if gen is None:
                return None
            try:
                return self._read(gen)
            except FileNotFoundError:
                if attempt == LOAD_TRIES - 1:
                    raise
                logger.info("lexical generation %s of %s was swept while loading; reading CURRENT again", gen, self.path)
        return None  # not reached: the last attempt returns or raises

    def _loaded(self) -> _Loaded | None:
        state = self._state
        if state is None:
            with self._loading:
                if self._state is None:
                    self._state = self._load_current()
                state = self._state
        return state

    def refresh(self) -> bool:
        """Load the generation CURRENT names if it is not the one in memory; return whether it changed.

        Costs one small file read when nothing changed. While another thread is already loading,
        it returns False at once and the searches go on with the generation in memory.
        """
        gen = self._current()
        state = self._state
        if gen is None or (state is not None and state.generation == gen):
            return False
        if not self._loading.acquire(blocking=False):
            return False
        try:
            before = self._state
            loaded = self._load_current()
            if loaded is None or (before is not None and loaded.generation == before.generation):
                return False
            self._state = loaded
            logger.info("lexical index %s: loaded %s (%d documents)", self.path, loaded.generation, len(loaded.ids))
            return True
        finally:
            self._loading.release()

    def count(self) -> int:
        state = self._loaded()
        return 0 if state is None else len(state.ids)

    def search(
        self, query: str, limit: int, media_ids: frozenset[int] | None = None, *, has_speech: bool | None = None
    ) -> list[LexicalHit]:
        """Documents with a positive BM25 score for ``query``, best first, within the optional filters."""
        if limit < 1:
            raise ValueError(f"expected limit >= 1, got {limit}")
        state = self._loaded()  # this one generation for the whole search, whatever a refresh swaps in
        if state is None or state.retriever is None:
            return []
        bm25s, _ = _bm25s()
        words = bm25s.tokenize([query], stopwords="en", stemmer=self._stem(), return_ids=False, show_progress=False)
        token_ids = state.retriever.get_tokens_ids(words[0]) if words and words[0] else []
        if not token_ids:
            return []  # only stopwords, punctuation or words no document has: nothing to match
        keep = None
        if media_ids is not None:
            keep = np.isin(state.media, np.fromiter(media_ids, dtype=np.int64))
        if has_speech is not None:
            match = state.speech == has_speech
            keep = match if keep is None else keep & match
        if keep is not None and not keep.any():
            return []
        docs, scores = _top_k(state.retriever, np.asarray(token_ids, dtype=np.int64), min(limit, len(state.ids)), keep)
        hits = []
        for doc, score in zip(docs, scores):
            if score <= 0:
                break
            hits.append(
                LexicalHit(
                    id=str(state.ids[doc]),
                    score=float(score),
                    media_id=int(state.media[doc]),
                    clip_index=int(state.clips[doc]),
                )
            )
        return hits


def _top_k(retriever: Any, token_ids: np.ndarray, k: int, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The k best documents with a positive BM25 score, best first (ties in document order).

    bm25s scores every document (its eager index: one ``np.add.at`` per query term); the
    selection is ours, because bm25s's ``retrieve`` wraps it in per-call tokenizer and
    top-k setup that cost more than the scoring at a million clips (measured side by side:
    bm25s scoring + argpartition 7 ms p50; a sparse sum of the postings, 12-13 ms).
    """
    scores = np.asarray(retriever.get_scores_from_ids(token_ids.tolist()), dtype=np.float32)
    if keep is not None:
        scores = np.where(keep, scores, 0.0).astype(np.float32)
    if k < len(scores):
        top = np.argpartition(-scores, k - 1)[:k]
    else:
        top = np.arange(len(scores))
    top = top[scores[top] > 0]
    order = np.lexsort((top, -scores[top]))
    return top[order], scores[top][order]
