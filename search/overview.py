"""The library overview: totals, and topics found by clustering every chapter's embedding (average linkage), each named by its keyphrases."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel

from store import queries
from store.catalog import Catalog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OverviewOptions:
    max_topics: int = 12
    # Two groups of chapters are one topic while their average cosine is at least this. MiniLM puts
    # passages on one subject at about 0.4-0.7 and unrelated ones at 0.0-0.2; concept-tag chapters
    # ("On screen: hare") sit nearer each other, so the line is drawn above both noise levels.
    same_topic: float = 0.35
    # Past this many chapters, k-means first groups them into this many (weighted) parts, and the
    # average-linkage merging runs on those: it costs the cube of what it merges.
    max_parts: int = 256
    moments_per_topic: int = 5
    name_words: int = 3
    iterations: int = 30
    seed: int = 0


class TopicMoment(BaseModel):
    media_id: int
    media_path: str
    start: float
    end: float
    title: str


class TopicMedia(BaseModel):
    media_id: int
    media_path: str
    chapters: int


class Topic(BaseModel):
    name: str
    keywords: list[str]
    chapters: int
    media: list[TopicMedia]
    moments: list[TopicMoment]


class Overview(BaseModel):
    """What the whole library holds: totals, and its topics with the files and moments in each."""

    files: int
    hours: float
    speech_hours: float
    languages: dict[str, int]
    unsummarized: int
    topics: list[Topic]


def _merge(x: np.ndarray, weights: np.ndarray, same_topic: float, max_topics: int) -> np.ndarray:
    """Average-linkage agglomeration of unit rows: merge while the closest pair is a topic, or while too many remain."""
    m = len(x)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    size = weights.astype(np.float64).copy()
    alive = np.ones(m, bool)
    group = np.arange(m)
    while alive.sum() > 1:
        flat = int(np.argmax(sim))
        i, j = divmod(flat, m)
        if sim[i, j] < same_topic and alive.sum() <= max_topics:
            break
        # Lance-Williams for average linkage: the merged group's similarity is the size-weighted mean.
        merged = (size[i] * sim[i] + size[j] * sim[j]) / (size[i] + size[j])
        sim[i], sim[:, i] = merged, merged
        sim[i, i] = -np.inf
        sim[j], sim[:, j] = -np.inf, -np.inf
        size[i] += size[j]
        alive[j] = False
        group[group == j] = i
    return group


def _topics_of(x: np.ndarray, options: OverviewOptions) -> np.ndarray:
    """Each chapter's topic label."""
    if len(x) == 1:
        return np.zeros(1, int)
    if len(x) <= options.max_parts:
        return _merge(x, np.ones(len(x)), options.same_topic, options.max_topics)
    from models.visual_vocab import kmeans, nearest

    # The vocabulary's k-means (faiss, k-means++ seeding) on unit rows: L2 and cosine order them alike.
    parts = nearest(x, kmeans(x, options.max_parts, options.iterations, 1, options.seed))
    used = np.unique(parts)
    centres = np.stack([x[parts == p].mean(0) for p in used])
    centres /= np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-9)
    counts = np.asarray([(parts == p).sum() for p in used], float)
    merged = _merge(centres, counts, options.same_topic, options.max_topics)
    lookup = dict(zip(used.tolist(), merged.tolist()))
    return np.asarray([lookup[p] for p in parts.tolist()])


def library_overview(catalog: Catalog, options: OverviewOptions = OverviewOptions()) -> Overview:
    """Totals over indexed files and the topics of their chapters (files without chapters yet are counted apart)."""
    files = queries.library_files(catalog)
    languages = Counter(f.language for f in files if f.language)
    rows: list[tuple[int, int]] = []  # (file position, chapter position)
    vectors: list[np.ndarray] = []
    for fi, f in enumerate(files):
        for ci, chapter in enumerate(f.chapters):
            if chapter.vector:
                v = np.frombuffer(chapter.vector, dtype=np.float16).astype(np.float32)
                norm = float(np.linalg.norm(v))
                if norm > 0:
                    rows.append((fi, ci))
                    vectors.append(v / norm)
    topics: list[Topic] = []
    if vectors:
        x = np.stack(vectors)
        labels = _topics_of(x, options)
        for j in np.unique(labels):
            topics.append(_topic(files, rows, x, np.flatnonzero(labels == j), options))
        topics.sort(key=lambda t: (-t.chapters, t.name))
    return Overview(
        files=len(files), hours=round(sum(f.duration for f in files) / 3600, 4),
        speech_hours=round(sum(f.speech_seconds for f in files) / 3600, 4),
        languages=dict(languages.most_common()), unsummarized=sum(1 for f in files if not f.chapters),
        topics=topics,
    )


def _topic(files: list[queries.LibraryFile], rows: list[tuple[int, int]], x: np.ndarray, members: np.ndarray,
           options: OverviewOptions) -> Topic:
    centre = x[members].mean(0)
    centre /= max(float(np.linalg.norm(centre)), 1e-9)
    closeness = x[members] @ centre
    order = members[np.argsort(-closeness)]
    # A keyword names the topic by how many of its chapters carry it, weighted by how typical each chapter is.
    weight: Counter[str] = Counter()
    shown: dict[str, str] = {}
    for row, sim in zip(members, closeness):
        fi, ci = rows[row]
        for word in files[fi].chapters[ci].keywords or []:
            key = word.lower()
            weight[key] += float(max(sim, 0.0))
            shown.setdefault(key, word)
    keywords = [shown[w] for w, _ in weight.most_common(8)]
    name_words = [w for w in keywords if not any(w.lower() in o.lower() and w != o for o in keywords)][: options.name_words]
    per_media: Counter[int] = Counter(rows[r][0] for r in members)
    moments = []
    for row in order[: options.moments_per_topic]:
        fi, ci = rows[row]
        chapter = files[fi].chapters[ci]
        moments.append(TopicMoment(media_id=files[fi].id, media_path=files[fi].path, start=chapter.start,
                                   end=chapter.end, title=chapter.display_title))
    return Topic(
        name=", ".join(name_words) if name_words else "Untitled",
        keywords=keywords, chapters=len(members),
        media=[TopicMedia(media_id=files[fi].id, media_path=files[fi].path, chapters=n) for fi, n in per_media.most_common()],
        moments=moments,
    )
