"""The summary step: one indexed file's stored features become chapters, a file summary and highlights, no decoding."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from indexer.chapter_text import MemoEncoder, TextOptions, clean_tag, describe_chapter, file_summary_sentences
from indexer.sentences import Sentence, split_sentences
from indexer.chapters import ChapterOptions, ChapterSpan, Timeline, find_chapters
from indexer.embed import VECTOR_DIMS, ClipEmbeddings
from store import queries
from store.catalog import Catalog, Media, utcnow
from store.features import FeatureStore

if TYPE_CHECKING:
    from indexer.surprise import SurpriseModel

logger = logging.getLogger(__name__)

# Bumped when the way chapters or summaries are made changes for the same inputs and options.
SUMMARY_ALGORITHM = "summaries/v1"


@dataclass(frozen=True)
class SummaryOptions:
    """How chapters and summaries are made; built from Settings at the entry points."""

    chapters: ChapterOptions = field(default_factory=ChapterOptions)
    text: TextOptions = field(default_factory=TextOptions)
    summary_sentences: int = 3
    highlights: int = 3
    # A highlight is this long around its clip, unless the sentence said there gives its own times.
    highlight_seconds: float = 6.0
    # Concept tags below this probability do not count towards a file's main concepts.
    concept_min_prob: float = 0.1
    main_concepts: int = 8


@dataclass
class FileData:
    """What the summary step reads of one file: catalog rows and feature arrays, nothing decoded."""

    media_id: int
    indexed_at: datetime | None
    duration: float
    has_video: bool
    clip_times: np.ndarray  # (n, 2)
    clip_indices: list[int]
    concepts: list[list[list[Any]]]  # per clip, [[name, prob], ...]
    segments: list[tuple[float, float, str, list[list[Any]] | None]]
    cuts: list[float]
    speech: np.ndarray | None
    has_speech: np.ndarray | None
    visual: np.ndarray | None
    has_visual: np.ndarray | None
    features: np.ndarray | None


@dataclass
class Summary:
    """The summary step's output for one file, in the catalog's shape."""

    chapters: list[queries.ChapterRecord]
    summary: queries.SummaryRecord


@dataclass
class SummaryReport:
    files: int = 0
    chapters: int = 0
    seconds: float = 0.0
    errors: dict[int, str] = field(default_factory=dict)


def load_file(catalog: Catalog, store: FeatureStore, media_id: int) -> FileData:
    """One indexed file's rows and stored arrays; ``ValueError`` if its feature files are gone."""
    with catalog.session() as session:
        media = session.scalars(
            select(Media).where(Media.id == media_id).options(selectinload(Media.clips), selectinload(Media.segments))
        ).one_or_none()
        if media is None:
            raise ValueError(f"no media {media_id} in the catalog")
        key = media.content_hash or ""
        data = FileData(
            media_id=media.id, indexed_at=media.indexed_at, duration=float(media.duration or 0.0),
            has_video=bool(media.has_video),
            clip_times=np.asarray([[c.start, c.end] for c in media.clips], np.float64).reshape(-1, 2),
            clip_indices=[c.clip_index for c in media.clips],
            concepts=[list(c.concepts or []) for c in media.clips],
            segments=[(s.start, s.end, s.text, s.words) for s in media.segments],
            cuts=[], speech=None, has_speech=None, visual=None, has_visual=None, features=None,
        )
    if not key or not store.exists(key):
        raise ValueError(f"feature files of media {media_id} are missing; re-ingest it")
    data.cuts = [float(c) for c in store.meta(key).get("cuts", [])]
    emb = ClipEmbeddings.load(store, key)
    n = len(data.clip_indices)
    if emb is not None and len(emb.speech) == n:
        data.speech, data.has_speech = emb.speech.astype(np.float32), emb.has_speech.astype(bool)
        data.visual, data.has_visual = emb.visual.astype(np.float32), emb.has_visual.astype(bool)
    if store.has(key, "features"):
        features = store.load(key, "features")
        if len(features) == n:
            data.features = features.astype(np.float32)
    if not data.duration and n:
        data.duration = float(data.clip_times[-1, 1])
    return data


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _speech_seconds(segments: Sequence[tuple[float, float, str, Any]], lo: float, hi: float) -> float:
    """Seconds of [lo, hi) covered by transcript segments (their union, so overlaps count once)."""
    spans = sorted((max(s, lo), min(e, hi)) for s, e, text, _ in segments if text.strip() and min(e, hi) > max(s, lo))
    total, reach = 0.0, lo
    for s, e in spans:
        if e > reach:
            total += e - max(s, reach)
            reach = e
    return total


class Summarizer:
    """Chapters and summaries from stored features; the text encoder and VideoBERT are loaded on first use."""

    def __init__(self, options: SummaryOptions, encoder: Callable[[], Any],
                 surprise: SurpriseModel | None = None) -> None:
        self.options = options
        self._encoder_fn = encoder
        self._encoder: Any = None
        self.surprise = surprise

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            self._encoder = self._encoder_fn()
        return self._encoder

    @property
    def version(self) -> str:
        """Names everything that shapes the output: stored with each summary, so a change means recomputation."""
        use_surprise = self.surprise is not None and "surprise" in self.options.chapters.signals
        payload = json.dumps(
            {"algorithm": SUMMARY_ALGORITHM, "options": asdict(self.options),
             "surprise": self.surprise.version if use_surprise and self.surprise else None},
            sort_keys=True, default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:24]

    def summarize(self, data: FileData) -> Summary:
        opts = self.options
        surprise = None
        if self.surprise is not None and data.features is not None and "surprise" in opts.chapters.signals:
            surprise = self.surprise.surprise(data.features)
        timeline = Timeline(
            duration=data.duration, clip_times=data.clip_times, speech=data.speech, has_speech=data.has_speech,
            features=data.features, cuts=data.cuts,
            speech_spans=[(s, e) for s, e, text, _ in data.segments if text.strip()], surprise=surprise,
        )
        spans = find_chapters(timeline, opts.chapters)
        sentences = split_sentences(data.segments)
        vectors = self._sentence_vectors(data, sentences)
        mids = np.asarray([(s.start + s.end) / 2 for s in sentences])
        # Chapters of one file repeat phrases: each distinct candidate is encoded once per file.
        encoder = MemoEncoder(self.encoder)
        chapters = [self._chapter(data, span, sentences, vectors, mids, encoder) for span in spans]
        return Summary(chapters=chapters, summary=self._file_summary(data, chapters, sentences, vectors))

    def _sentence_vectors(self, data: FileData, sentences: list[Sentence]) -> np.ndarray:
        """Each sentence's vector: the mean of the stored speech vectors of the clips it overlaps.

        Those windows (the clip +-1.5 s of transcript) were embedded at ingest; reusing them saves
        encoding every sentence again (the step's main cost on a long talk). A sentence no stored
        vector covers is encoded.
        """
        out = np.zeros((len(sentences), VECTOR_DIMS["speech"]), np.float32)
        if not sentences:
            return out
        missing = []
        times = data.clip_times
        for i, sentence in enumerate(sentences):
            if data.speech is not None and data.has_speech is not None and len(times):
                rows = np.flatnonzero((times[:, 1] > sentence.start) & (times[:, 0] < sentence.end) & data.has_speech)
                if len(rows):
                    out[i] = _unit(data.speech[rows].mean(0))
                    continue
            missing.append(i)
        if missing:
            out[missing] = self.encoder.encode([sentences[i].text for i in missing])
        return out

    def _chapter(self, data: FileData, span: ChapterSpan, sentences: list[Sentence], vectors: np.ndarray,
                 mids: np.ndarray, encoder: Any) -> queries.ChapterRecord:
        inside = [i for i in range(len(sentences)) if span.start <= mids[i] < span.end]
        clips = range(span.first_clip, span.end_clip)
        text = describe_chapter([sentences[i] for i in inside], vectors[inside], [data.concepts[c] for c in clips],
                                encoder, self.options.text)
        vector = _unit(vectors[inside].mean(0)) if inside else None
        visual_rows = [c for c in clips if data.has_visual is not None and data.has_visual[c]]
        thumb = None
        if visual_rows and data.visual is not None:
            # The clip nearest the chapter's mean look stands for it (not its first frame: a fade or a title card).
            block = data.visual[visual_rows]
            centre = _unit(block.mean(0))
            thumb = data.clip_indices[visual_rows[int(np.argmax(block @ centre))]]
            if vector is None:
                vector = centre
        length = max(span.end - span.start, 1e-6)
        return queries.ChapterRecord(
            start=round(span.start, 3), end=round(span.end, 3), title=text.title, keywords=list(text.keywords),
            summary=text.summary, sentences=[[round(s.start, 3), round(s.end, 3), s.text] for s in text.sentences],
            source=text.source, thumb_clip=thumb,
            speech_share=round(min(_speech_seconds(data.segments, span.start, span.end) / length, 1.0), 4),
            score=round(float(span.score), 4), signals={k: round(float(v), 4) for k, v in span.signals.items()},
            vector=vector.astype(np.float16).tobytes() if vector is not None else None,
        )

    def _file_summary(self, data: FileData, chapters: Sequence[queries.ChapterRecord], sentences: list[Sentence],
                      vectors: np.ndarray) -> queries.SummaryRecord:
        opts = self.options
        # One sentence per chapter before any chapter gets a second: the summary covers the whole file.
        picked = (file_summary_sentences(sentences, vectors, opts.summary_sentences,
                                         spans=[(c.start, c.end) for c in chapters]) if sentences else [])
        if picked:
            summary = " ".join(s.text for s in picked)
        else:
            described = [c.summary for c in chapters if c.summary]
            summary = described[0] if described else ""
        speech = _speech_seconds(data.segments, 0.0, max(data.duration, 0.0))
        keywords: list[str] = []
        for chapter in chapters:
            for word in chapter.keywords:
                if word.lower() not in {k.lower() for k in keywords}:
                    keywords.append(word)
        return queries.SummaryRecord(
            summary=summary, sentences=[[round(s.start, 3), round(s.end, 3), s.text] for s in picked],
            highlights=self._highlights(data, sentences), concepts=self._concepts(data),
            keywords=keywords[:12], speech_seconds=round(speech, 3),
            speech_share=round(min(speech / data.duration, 1.0), 4) if data.duration > 0 else 0.0,
        )

    def _concepts(self, data: FileData) -> list[list[Any]]:
        """The file's main concepts: the share of its video clips each tag names with some confidence."""
        counts: dict[str, int] = {}
        for tags in data.concepts:
            for name in {clean_tag(n) for n, p in tags[:3] if float(p) >= self.options.concept_min_prob}:
                counts[name] = counts.get(name, 0) + 1
        total = max(sum(1 for tags in data.concepts if tags), 1)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.options.main_concepts]
        return [[name, round(n / total, 4)] for name, n in top]

    def _highlights(self, data: FileData, sentences: list[Sentence]) -> list[dict[str, Any]]:
        """The clips most central to the file and the ones most unlike the rest, as moments with their words."""
        n = len(data.clip_indices)
        if not n:
            return []
        rows = np.zeros((n, VECTOR_DIMS["speech"]), np.float32)
        valid = np.zeros(n, bool)
        # Speech says more than tags where there is speech; both live in MiniLM's space.
        for source, present in ((data.visual, data.has_visual), (data.speech, data.has_speech)):
            if source is not None and present is not None:
                rows[present] = source[present]
                valid |= present
        idx = np.flatnonzero(valid)
        if len(idx) < 2:
            return []
        block = rows[idx] / np.maximum(np.linalg.norm(rows[idx], axis=1, keepdims=True), 1e-9)
        centrality = block @ _unit(block.mean(0))
        out: list[dict[str, Any]] = []
        taken: list[float] = []
        gap = max(self.options.highlight_seconds * 2, data.duration / (4 * self.options.highlights + 1))
        for kind, order in (("central", np.argsort(-centrality)), ("unusual", np.argsort(centrality))):
            picked = 0
            for j in order:
                if picked == self.options.highlights:
                    break
                row = int(idx[j])
                middle = float(data.clip_times[row].mean())
                if any(abs(middle - t) < gap for t in taken):
                    continue  # one moment per stretch of the file
                taken.append(middle)
                picked += 1
                out.append(self._moment(data, row, kind, float(centrality[j]), sentences))
        return out

    def _moment(self, data: FileData, row: int, kind: str, score: float, sentences: list[Sentence]) -> dict[str, Any]:
        start, end = (float(t) for t in data.clip_times[row])
        said = next((s for s in sentences if s.start <= (start + end) / 2 <= s.end), None)
        if said is not None:
            start, end, text = said.start, said.end, said.text
        else:
            half = self.options.highlight_seconds / 2
            middle = (start + end) / 2
            start, end = max(0.0, middle - half), min(data.duration or middle + half, middle + half)
            tags = [clean_tag(name) for name, p in data.concepts[row][:3] if float(p) >= self.options.concept_min_prob]
            text = "On screen: " + ", ".join(dict.fromkeys(tags)) if tags else ""
        return {"start": round(start, 3), "end": round(end, 3), "kind": kind, "clip_index": data.clip_indices[row],
                "score": round(score, 4), "text": text}


def summarize_media(catalog: Catalog, store: FeatureStore, summarizer: Summarizer, media_id: int) -> int:
    """Compute and store one file's chapters and summary; returns the chapter count (0 if re-indexed meanwhile)."""
    data = load_file(catalog, store, media_id)
    result = summarizer.summarize(data)
    if not queries.write_summary(catalog, media_id, data.indexed_at, summarizer.version, result.chapters,
                                 result.summary, utcnow()):
        logger.info("media %s changed while it was summarised; the next sync redoes it", media_id)
        return 0
    return len(result.chapters)


def summarize_stale(
    catalog: Catalog,
    store: FeatureStore,
    summarizer: Summarizer,
    *,
    media_ids: Iterable[int] | None = None,
    force: bool = False,
    progress: Callable[[str, float], None] | None = None,
) -> SummaryReport:
    """Chapters and summaries for every indexed file whose stored ones are missing or out of date (all with ``force``)."""
    t0 = time.perf_counter()
    report = SummaryReport()
    if force:
        todo = sorted(media_ids) if media_ids is not None else sorted(queries.indexed_media_ids(catalog))
    else:
        todo = queries.stale_summary_ids(catalog, summarizer.version, media_ids)
    for i, media_id in enumerate(todo):
        if progress is not None:
            progress("chapters", i / max(len(todo), 1))
        try:
            report.chapters += summarize_media(catalog, store, summarizer, media_id)
            report.files += 1
        except ValueError as e:
            report.errors[media_id] = str(e)
            logger.warning("no chapters for media %s: %s", media_id, e)
    if progress is not None and todo:
        progress("chapters", 1.0)
    report.seconds = time.perf_counter() - t0
    return report
