"""The query layer: candidates from BM25 and both vector names, fusion, moments, and readable results."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select

from search.fusion import Candidate, ClipKey, reciprocal_rank, weighted_sum
from search.moments import MomentSpan, merge_moments
from search.summaries import chapter_title_at
from store import queries
from store.catalog import Catalog, Clip, Media, MediaStatus, TranscriptSegment
from store.features import FeatureStore
from store.lexical import LexicalIndex
from store.vectors import Filter, VectorIndex

logger = logging.getLogger(__name__)

SOURCES = ("lexical", "speech", "visual")
_WORD = re.compile(r"[\w']+")
# A query past this many characters is cut (at a word boundary): BERT sees 256 tokens anyway.
MAX_QUERY_CHARS = 1000


@dataclass(frozen=True)
class SearchFilters:
    media: tuple[str, ...] = ()
    path_prefix: str | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    has_speech: bool | None = None


@dataclass(frozen=True)
class SearchOptions:
    limit: int = 10
    candidates: int = 100
    fusion: Literal["rrf", "weighted"] = "rrf"
    rrf_k: float = 60.0
    weights: tuple[tuple[str, float], ...] = (("lexical", 1.0), ("speech", 1.0), ("visual", 1.0))
    sources: tuple[str, ...] = SOURCES
    # Below these cosines a dense hit is noise (MiniLM gives unrelated text ~0.1-0.15 against
    # transcripts and ~0.15-0.25 against concept vectors on the dev library); noise must not earn
    # rank credit in the fusion just for topping an irrelevant list.
    min_scores: tuple[tuple[str, float], ...] = (("speech", 0.2), ("visual", 0.3))
    per_media: int = 1
    merge_gap: int = 1
    # VideoBERT's alignment head reorders the top moments when the engine has a reranker.
    rerank: bool = True
    max_moment_clips: int = 20


class Moment(BaseModel):
    """One search result: a span of one file, why it was found, and what was said there.

    Defined once: `vidx search --json` prints these, and the HTTP API returns them (with URLs added).
    """

    media_id: int
    media_path: str = Field(description="Absolute path of the ingested file.")
    start: float = Field(description="Seconds.")
    end: float = Field(description="Seconds.")
    score: float = Field(description="The fused score (higher is better); comparable within one result list only.")
    scores: dict[str, float] = Field(description="Per source (lexical, speech, visual, align): its best score in the moment.")
    text: str = Field(description="The transcript around the moment ('' without speech).")
    matched: list[str] = Field(description="Query words found in the text.")
    thumbnail: str | None = Field(description="Path of the best clip's thumbnail JPEG on the server.")
    link: str = Field(description="file:// URL of the media with a #t= fragment at the start.")
    clips: list[int] = Field(default_factory=list, description="Clip indices the moment spans.")
    best_clip: int | None = Field(default=None, description="The clip that scored best (its thumbnail is `thumbnail`).")
    concepts: list[str] = Field(default_factory=list, description="Top concept tags of the best clip.")
    chapter: str | None = Field(default=None, description="Title of the chapter the moment falls in (None before chapters exist).")


def clean_query(text: str) -> str:
    """The query as searched: whitespace collapsed, cut at MAX_QUERY_CHARS; ValueError if nothing is left."""
    cleaned = " ".join(str(text).split())
    if not _WORD.search(cleaned):
        raise ValueError("empty query: expected some words to search for")
    if len(cleaned) > MAX_QUERY_CHARS:
        cut = cleaned[:MAX_QUERY_CHARS]
        cleaned = cut.rsplit(" ", 1)[0] if " " in cut else cut
        logger.info("query cut to %d characters", len(cleaned))
    return cleaned


def focus_on_matches(
    words: Sequence[tuple[float, float, str]], terms: set[str], pad: float = 0.5
) -> tuple[float, float] | None:
    """The tightest run of transcript words holding the most distinct query terms, padded; None if none match.

    A run may span about 0.5 s per query term (at least 3 s), so a spoken phrase is one run
    while a stray "they" ten seconds earlier is not.
    """
    hits = [(w[0], w[1], norm) for w in words if (norm := w[2].lower().strip(".,!?;:\"'")) in terms]
    if not hits:
        return None
    span = max(3.0, 0.5 * len(terms))
    best: tuple[int, float, int, int] | None = None
    for i in range(len(hits)):
        j = i
        while j + 1 < len(hits) and hits[j + 1][1] - hits[i][0] <= span:
            j += 1
        distinct = len({h[2] for h in hits[i : j + 1]})
        key = (distinct, -(hits[j][1] - hits[i][0]), i, j)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        return None
    _, _, i, j = best
    return hits[i][0] - pad, hits[j][1] + pad


class SearchEngine:
    """Answers text queries over one catalog, its feature store and its indexes (read-only)."""

    def __init__(
        self,
        catalog: Catalog,
        store: FeatureStore,
        vectors: VectorIndex,
        lexical: LexicalIndex,
        encode: Callable[[Sequence[str]], np.ndarray],
        reranker: Any = None,
    ) -> None:
        self.catalog = catalog
        self.reranker = reranker  # search.rerank.Reranker, when a trained VideoBERT is active
        self.store = store
        self.vectors = vectors
        self.lexical = lexical
        self.encode = encode
        self.last_timings: dict[str, float] = {}
        self._threads: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vidx-search")
        return self._threads

    def _dense_search(self, name: str, vector: np.ndarray, limit: int, flt: Filter) -> tuple[list[Candidate], float]:
        t = time.perf_counter()
        found = self.vectors.search(name, vector, limit, flt)
        return (
            [Candidate((int(h.payload["media_id"]), int(h.payload["clip_index"])), h.score) for h in found],
            time.perf_counter() - t,
        )

    def _lexical_search(
        self, query: str, limit: int, allowed: frozenset[int] | None, has_speech: bool | None
    ) -> tuple[list[Candidate], float]:
        t = time.perf_counter()
        hits = self.lexical.search(query, limit, allowed, has_speech=has_speech)
        return [Candidate((h.media_id, h.clip_index), h.score) for h in hits], time.perf_counter() - t

    def resolve_filters(self, filters: SearchFilters) -> frozenset[int] | None:
        """Media ids allowed by the filters (None: no restriction); ValueError for a filter matching nothing."""
        return queries.filter_media_ids(
            self.catalog, filters.media, path_prefix=filters.path_prefix,
            min_duration=filters.min_duration, max_duration=filters.max_duration,
        )

    def candidates(
        self, query: str, options: SearchOptions, allowed: frozenset[int] | None, has_speech: bool | None
    ) -> dict[str, list[Candidate]]:
        timings = self.last_timings
        lists: dict[str, list[Candidate]] = {}
        dense = [s for s in options.sources if s in ("speech", "visual")]
        lexical: Future[tuple[list[Candidate], float]] | None = None
        if "lexical" in options.sources:
            # BM25 (numpy) runs beside the query embedding (onnxruntime): both release the GIL, and
            # neither needs the other, so the two cores each take one.
            if dense:
                lexical = self._pool().submit(self._lexical_search, query, options.candidates, allowed, has_speech)
            else:
                lists["lexical"], timings["lexical"] = self._lexical_search(query, options.candidates, allowed, has_speech)
        if dense:
            t = time.perf_counter()
            vector = self.encode([query])[0]
            timings["embed"] = time.perf_counter() - t
        flt = Filter(media_ids=allowed, has_speech=has_speech)
        # The other vector names are searched in the pool while this thread takes the first:
        # a FAISS reader searches without its lock, so they share the two cores.
        split = 1 if self.vectors.concurrent_search else len(dense)
        others = {
            name: self._pool().submit(self._dense_search, name, vector, options.candidates, flt) for name in dense[split:]
        }
        for name in dense[:split]:
            lists[name], timings[name] = self._dense_search(name, vector, options.candidates, flt)
        for name, future in others.items():
            lists[name], timings[name] = future.result()
        if lexical is not None:
            t = time.perf_counter()
            lists["lexical"], timings["lexical"] = lexical.result()
            timings["lexical_wait"] = time.perf_counter() - t
        lists = {name: lists[name] for name in SOURCES if name in lists}  # fusion sees a fixed source order
        floors = dict(options.min_scores)
        kept = {
            name: [c for c in cands if c.score >= floors.get(name, float("-inf"))] if name in floors else cands
            for name, cands in lists.items()
        }
        # When every source is below its floor, weak evidence beats an empty page.
        if any(kept.values()):
            lists = kept
        return lists

    def search(self, text: str, options: SearchOptions = SearchOptions(), filters: SearchFilters = SearchFilters()) -> list[Moment]:
        if options.limit < 1:
            raise ValueError(f"expected a limit of at least 1, got {options.limit}")
        unknown = set(options.sources) - set(SOURCES)
        if unknown or not options.sources:
            raise ValueError(f"expected sources among {', '.join(SOURCES)}, got {', '.join(options.sources) or 'none'}")
        self.last_timings = {}
        t0 = time.perf_counter()
        query = clean_query(text)
        allowed = self.resolve_filters(filters)
        lists = self.candidates(query, options, allowed, filters.has_speech)
        weights = dict(options.weights)
        t = time.perf_counter()
        if options.fusion == "rrf":
            fused = reciprocal_rank(lists, weights, options.rrf_k)
        elif options.fusion == "weighted":
            fused = weighted_sum(lists, weights, floors=dict(options.min_scores))
        else:
            raise ValueError(f"expected fusion 'rrf' or 'weighted', got {options.fusion!r}")
        spans = merge_moments(fused, max_gap=options.merge_gap, max_clips=options.max_moment_clips)
        chosen: list[MomentSpan] = []
        per_media: dict[int, int] = {}
        rerank = self.reranker is not None and options.rerank
        want = max(options.limit, self.reranker.depth) if rerank else options.limit
        for span in spans:
            if per_media.get(span.media_id, 0) >= options.per_media:
                continue
            per_media[span.media_id] = per_media.get(span.media_id, 0) + 1
            chosen.append(span)
            if len(chosen) >= want:
                break
        self.last_timings["fuse"] = time.perf_counter() - t
        align: dict[ClipKey, float] = {}
        if rerank and chosen:
            t = time.perf_counter()
            chosen, probs = self.reranker.rerank(query, chosen)
            align = {(chosen[i].media_id, chosen[i].best_clip): round(p, 4) for i, p in probs.items()}
            self.last_timings["rerank"] = time.perf_counter() - t
        chosen = chosen[: options.limit]
        t = time.perf_counter()
        source_scores = {name: {c.key: c.score for c in cands} for name, cands in lists.items()}
        if align:
            source_scores["align"] = align
        moments = self._moments(query, chosen, source_scores)
        # Keyed "describe" as bench/search.py and BENCHMARKS.md report it.
        self.last_timings["describe"] = time.perf_counter() - t
        self.last_timings["total"] = time.perf_counter() - t0
        return moments

    def _moments(
        self, query: str, spans: Sequence[MomentSpan], source_scores: dict[str, dict[ClipKey, float]]
    ) -> list[Moment]:
        """The spans as results: times narrowed to the matching words, snippet, thumbnail and per-source scores."""
        if not spans:
            return []
        terms = {w.lower() for w in _WORD.findall(query) if len(w) > 2}
        media, clips, by_media = self._moment_rows(spans)
        titles = queries.chapter_titles(self.catalog, media)
        moments = []
        for span in spans:
            first, last = clips.get((span.media_id, span.first_clip)), clips.get((span.media_id, span.last_clip))
            m = media.get(span.media_id)
            if first is None or last is None or m is None or m.status != MediaStatus.INDEXED:
                continue  # the index is a step behind the catalog; never show what the catalog lost
            start, end = float(first.start), float(last.end)
            segments = [s for s in by_media.get(span.media_id, []) if s.end > start and s.start < end]
            words = [
                (float(w[0]), float(w[1]), str(w[2]))
                for seg in segments
                for w in (seg.words or [])
                if float(w[1]) > start and float(w[0]) < end
            ]
            focus = focus_on_matches(words, terms)
            if focus is not None:
                # The clips carry a few seconds of context; the words that matched say where it is.
                start, end = max(start, focus[0]), min(end, focus[1])
                segments = [s for s in segments if s.end > start and s.start < end]
            snippet = " ".join(s.text for s in segments)
            matched = sorted({w for w in _WORD.findall(snippet.lower()) if w in terms})
            best = clips.get((span.media_id, span.best_clip))
            thumb = str(self.store.root / best.thumbnail) if best is not None and best.thumbnail else None
            per_source = {}
            for name, scores in source_scores.items():
                vals = [scores[(span.media_id, i)] for i in span.clip_scores if (span.media_id, i) in scores]
                if vals:
                    per_source[name] = round(max(vals), 4)
            moments.append(
                Moment(
                    media_id=span.media_id,
                    media_path=m.path,
                    start=round(start, 3),
                    end=round(end, 3),
                    score=round(span.score, 6),
                    scores=per_source,
                    text=snippet,
                    matched=matched,
                    thumbnail=thumb,
                    link=f"{Path(m.path).as_uri()}#t={start:.2f}",
                    clips=sorted(span.clip_scores),
                    best_clip=span.best_clip,
                    concepts=[str(c[0]) for c in (best.concepts or [])[:3]] if best is not None else [],
                    chapter=chapter_title_at(titles.get(span.media_id, []), start, end),
                )
            )
        return moments

    def _moment_rows(
        self, spans: Sequence[MomentSpan]
    ) -> tuple[dict[int, Media], dict[ClipKey, Any], dict[int, list[TranscriptSegment]]]:
        """The catalog rows behind ``spans``: their media, their edge and best clips, and the transcript they cover."""
        wanted = {(s.media_id, i) for s in spans for i in (s.first_clip, s.last_clip, s.best_clip)}
        with self.catalog.session() as session:
            media = {
                m.id: m
                for m in session.scalars(select(Media).where(Media.id.in_({s.media_id for s in spans}))).all()
            }
            clip_rows = session.execute(
                select(Clip.media_id, Clip.clip_index, Clip.start, Clip.end, Clip.thumbnail, Clip.concepts).where(
                    or_(*[and_(Clip.media_id == m, Clip.clip_index == i) for m, i in wanted])
                )
            ).all()
            clips = {(r.media_id, r.clip_index): r for r in clip_rows}
            # One round trip for every moment's transcript, not one per moment.
            ranges = []
            for span in spans:
                first, last = clips.get((span.media_id, span.first_clip)), clips.get((span.media_id, span.last_clip))
                if first is not None and last is not None:
                    ranges.append(
                        and_(
                            TranscriptSegment.media_id == span.media_id,
                            TranscriptSegment.end > first.start,
                            TranscriptSegment.start < last.end,
                        )
                    )
            by_media: dict[int, list[TranscriptSegment]] = {}
            if ranges:
                for seg in session.scalars(
                    select(TranscriptSegment).where(or_(*ranges)).order_by(TranscriptSegment.segment_index)
                ):
                    by_media.setdefault(seg.media_id, []).append(seg)
        return media, clips, by_media
