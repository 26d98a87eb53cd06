"""The read side of chapters and summaries: the catalog's rows as the objects the CLI, the API and the exports show."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from store import queries
from store.catalog import Catalog, Chapter, FileSummary


class TimedText(BaseModel):
    """A transcript sentence with its times: every summary sentence is one, verbatim."""

    start: float
    end: float
    text: str


class ChapterOut(BaseModel):
    """One chapter as `vidx chapters --json` prints it and the API returns it."""

    index: int  # 1-based, as people count chapters
    start: float
    end: float
    title: str
    keywords: list[str]
    summary: str
    sentences: list[TimedText]
    source: str
    edited: bool
    computed_title: str
    thumb_clip: int | None
    thumbnail: str | None
    speech_share: float
    score: float
    signals: dict[str, float]


class Highlight(BaseModel):
    start: float
    end: float
    kind: str  # central | unusual
    text: str
    clip_index: int
    score: float


class FileSummaryOut(BaseModel):
    """One file's summary: a few sentences, its chapters, highlights, main concepts and share of speech."""

    media_id: int
    path: str
    duration: float
    summary: str
    sentences: list[TimedText]
    chapters: list[ChapterOut]
    highlights: list[Highlight]
    concepts: list[tuple[str, float]]
    keywords: list[str]
    speech_seconds: float
    speech_share: float


def _timed(rows: list[list[Any]] | None) -> list[TimedText]:
    return [TimedText(start=float(r[0]), end=float(r[1]), text=str(r[2])) for r in rows or []]


def chapter_out(row: Chapter, thumbnails: dict[int, str], feature_root: os.PathLike[str] | str | None) -> ChapterOut:
    """One chapter row as shown; ``thumbnails``: the file's clip thumbnails (:func:`store.queries.clip_thumbnails`)."""
    relative = thumbnails.get(row.thumb_clip) if row.thumb_clip is not None else None
    thumb = os.path.join(feature_root, relative) if relative and feature_root is not None else None
    return ChapterOut(
        index=row.chapter_index + 1, start=row.start, end=row.end, title=row.display_title,
        keywords=list(row.keywords or []), summary=row.summary, sentences=_timed(row.sentences), source=row.source,
        edited=row.user_title is not None, computed_title=row.title, thumb_clip=row.thumb_clip, thumbnail=thumb,
        speech_share=row.speech_share, score=row.score, signals=dict(row.signals or {}),
    )


def chapters(catalog: Catalog, media_id: int, feature_root: os.PathLike[str] | str | None = None) -> list[ChapterOut]:
    """One file's chapters in time order (empty if none were computed yet)."""
    rows = queries.chapters_of(catalog, media_id)
    thumbnails = queries.clip_thumbnails(catalog, media_id) if rows and feature_root is not None else {}
    return [chapter_out(row, thumbnails, feature_root) for row in rows]


def file_summary(catalog: Catalog, media_id: int,
                 feature_root: os.PathLike[str] | str | None = None) -> FileSummaryOut | None:
    """One file's stored summary with its chapters; None if it has none yet."""
    media = queries.get_media(catalog, media_id)
    row: FileSummary | None = queries.summary_of(catalog, media_id)
    if media is None or row is None:
        return None
    return FileSummaryOut(
        media_id=media.id, path=media.path, duration=float(media.duration or 0.0), summary=row.summary,
        sentences=_timed(row.sentences), chapters=chapters(catalog, media_id, feature_root),
        highlights=[Highlight(**h) for h in row.highlights or []],
        concepts=[(str(c[0]), float(c[1])) for c in row.concepts or []], keywords=list(row.keywords or []),
        speech_seconds=row.speech_seconds, speech_share=row.speech_share,
    )


def chapter_title_at(titles: list[tuple[float, float, str]], start: float, end: float) -> str | None:
    """The title of the chapter a moment falls in (by its middle), from :func:`store.queries.chapter_titles` rows."""
    middle = (start + end) / 2
    for lo, hi, title in titles:
        if lo <= middle < hi:
            return title
    return titles[-1][2] if titles and middle >= titles[-1][1] else None


def render_export(catalog: Catalog, media_id: int, fmt: str, feature_root: os.PathLike[str] | str | None = None) -> str:
    """One file as ``fmt``: webvtt-chapters, webvtt, srt, text (search.exports) or json (summary, chapters and transcript)."""
    from search import exports

    segments = queries.transcript_of(catalog, media_id)
    if fmt == "json":
        import json

        summary = file_summary(catalog, media_id, feature_root)
        media = queries.get_media(catalog, media_id)
        document = {
            "media_id": media_id, "path": media.path if media else None,
            "summary": summary.model_dump() if summary else None, "segments": segments,
        }
        return json.dumps(document, indent=2) + "\n"
    if fmt not in exports.FORMATS:
        raise ValueError(f"expected a format of {', '.join([*exports.FORMATS, 'json'])}, got {fmt!r}")
    found = [c.model_dump() for c in chapters(catalog, media_id, feature_root)]
    return exports.FORMATS[fmt](segments, found)
