"""Catalog queries shared by the CLI, the search layer and the queue: stale media, media references, ls and show rows, chapters."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, false, func, or_, select, update
from sqlalchemy.orm import selectinload

from store.catalog import Catalog, Chapter, Clip, FileSummary, Media, MediaStatus, TranscriptSegment


# -- what the search index lacks -------------------------------------------------------------------


def stale_clause(version: str) -> ColumnElement[bool]:
    """Indexed media whose index entry is missing, of another embedding ``version``, or older than its rows.

    ``synced_at`` is NULL after a full sync unmarked every file (a rebuild that died half way must
    leave them all for the next sync), so a NULL counts as stale whatever ``synced_version`` says.
    """
    return (Media.status == MediaStatus.INDEXED) & or_(
        Media.synced_version.is_(None),
        Media.synced_version != version,
        Media.synced_at.is_(None),
        Media.synced_at < Media.indexed_at,
    )


def count_stale(catalog: Catalog, version: str) -> int:
    """How many indexed files the search index of embedding ``version`` does not reflect yet."""
    with catalog.session() as session:
        return session.scalar(select(func.count()).select_from(Media).where(stale_clause(version))) or 0


def stale_media_ids(catalog: Catalog, version: str) -> list[int]:
    """The ids :func:`count_stale` counts, in id order: what an index sync must (re)write."""
    with catalog.session() as session:
        return list(session.scalars(select(Media.id).where(stale_clause(version)).order_by(Media.id)))


@dataclass(frozen=True)
class LibrarySize:
    indexed: int
    stale: int


def library_size(catalog: Catalog, version: str) -> LibrarySize:
    """Indexed files, and of those the ones not yet in the search index of ``version``."""
    with catalog.session() as session:
        indexed = session.scalar(select(func.count()).select_from(Media).where(Media.status == MediaStatus.INDEXED)) or 0
        stale = session.scalar(select(func.count()).select_from(Media).where(stale_clause(version))) or 0
    return LibrarySize(indexed=indexed, stale=stale)


def indexed_media_ids(catalog: Catalog) -> set[int]:
    with catalog.session() as session:
        return set(session.scalars(select(Media.id).where(Media.status == MediaStatus.INDEXED)))


def unmark_synced(catalog: Catalog) -> None:
    """Forget what the index holds for every file (a full rebuild starts from here)."""
    with catalog.session() as session:
        session.execute(update(Media).values(synced_at=None))


def mark_synced(catalog: Catalog, synced: dict[int, datetime | None], version: str, now: datetime) -> None:
    """Record that the index holds ``version`` of each file, unless it was re-indexed meanwhile."""
    if not synced:
        return
    with catalog.session() as session:
        for media in session.scalars(select(Media).where(Media.id.in_(synced))):
            if media.indexed_at == synced[media.id]:
                media.synced_version = version
                media.synced_at = now


# -- which file a user means -----------------------------------------------------------------------


def media_ref_clause(ref: str) -> ColumnElement[bool]:
    """Media named by ``ref``: an id, a path (absolute, or relative to the working directory) or a path suffix.

    A suffix matches whole path components: ``jfk.wav`` or ``media/jfk.wav`` match
    ``/data/media/jfk.wav``, ``fk.wav`` does not. Matching is literal (``%`` and ``_`` are not wildcards).
    """
    ref = str(ref).strip()
    if not ref:
        return false()
    if ref.isascii() and ref.isdigit() and int(ref) < 2**63:  # a larger number is no id a database holds
        return Media.id == int(ref)
    expanded = os.path.expanduser(ref)
    paths = {os.path.abspath(expanded), os.path.realpath(expanded)}
    clauses: list[ColumnElement[bool]] = [Media.path.in_(sorted(paths))]
    suffix = expanded
    while suffix.startswith("./"):
        suffix = suffix[2:]
    if not os.path.isabs(suffix) and not suffix.startswith("../") and suffix:
        clauses.append(Media.path.endswith("/" + suffix, autoescape=True))
    return or_(*clauses)


def resolve_media(catalog: Catalog, ref: str, *, indexed_only: bool = False) -> Media:
    """The one media row ``ref`` names (see :func:`media_ref_clause`); ``ValueError`` for none or several."""
    query = select(Media).where(media_ref_clause(ref))
    if indexed_only:
        query = query.where(Media.status == MediaStatus.INDEXED)
    with catalog.session() as session:
        found = session.scalars(query.limit(50)).all()
    if not found:
        what = "indexed media" if indexed_only else "media"
        raise ValueError(f"no {what} matches {ref!r} (see `vidx ls`)")
    if len(found) > 1:
        raise ValueError(f"{ref!r} matches {len(found)} files; give the id or the full path")
    return found[0]


def filter_media_ids(
    catalog: Catalog,
    refs: Sequence[str] = (),
    *,
    path_prefix: str | None = None,
    min_duration: float | None = None,
    max_duration: float | None = None,
) -> frozenset[int] | None:
    """Indexed media allowed by search filters (None: no restriction); ``ValueError`` if none is left."""
    if not (refs or path_prefix or min_duration is not None or max_duration is not None):
        return None
    query = select(Media.id).where(Media.status == MediaStatus.INDEXED)
    if refs:
        query = query.where(or_(*(media_ref_clause(r) for r in refs)))
    if path_prefix:
        prefix = os.path.abspath(os.path.expanduser(path_prefix)).rstrip("/") or "/"
        query = query.where(or_(Media.path == prefix, Media.path.startswith(prefix.rstrip("/") + "/", autoescape=True)))
    if min_duration is not None:
        query = query.where(Media.duration >= min_duration)
    if max_duration is not None:
        query = query.where(Media.duration <= max_duration)
    with catalog.session() as session:
        allowed = frozenset(session.scalars(query).all())
    if not allowed:
        raise ValueError("no indexed media matches the filters (see `vidx ls`)")
    return allowed


# -- the rows behind `vidx ls` and `vidx show` -----------------------------------------------------


@dataclass(frozen=True)
class MediaSummary:
    """One line of `vidx ls`."""

    id: int
    path: str
    status: str
    duration: float | None
    video: bool
    audio: bool
    clips: int
    segments: int
    language: str | None
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_media(catalog: Catalog, *, limit: int | None = None, offset: int = 0) -> list[MediaSummary]:
    """The files in the catalog by path, whatever their state (a page of them with ``limit``)."""
    query = select(Media).order_by(Media.path, Media.id).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    with catalog.session() as session:
        return [
            MediaSummary(
                id=m.id, path=m.path, status=m.status, duration=m.duration, video=m.has_video, audio=m.has_audio,
                clips=m.clip_count, segments=m.segment_count, language=m.language, error=m.error,
            )
            for m in session.scalars(query)
        ]


def count_media(catalog: Catalog) -> int:
    with catalog.session() as session:
        return session.scalar(select(func.count()).select_from(Media)) or 0


def get_media(catalog: Catalog, media_id: int) -> Media | None:
    """One media row by id (its columns only), or None."""
    with catalog.session() as session:
        return session.get(Media, media_id)


def media_rows(catalog: Catalog, media_ids: Iterable[int]) -> list[Media]:
    """Media rows (columns only) by id; unknown ids are left out."""
    with catalog.session() as session:
        return list(session.scalars(select(Media).where(Media.id.in_(list(media_ids)))))


def clip_thumbnail(catalog: Catalog, media_id: int, clip_index: int) -> str | None:
    """The thumbnail of one clip of an indexed file, relative to the feature store's root; None if it has none."""
    with catalog.session() as session:
        return session.scalar(
            select(Clip.thumbnail).join(Media, Media.id == Clip.media_id).where(
                Clip.media_id == media_id, Clip.clip_index == clip_index, Media.status == MediaStatus.INDEXED
            )
        )


def clip_thumbnails(catalog: Catalog, media_id: int) -> dict[int, str]:
    """Every clip thumbnail of one indexed file by clip index, relative to the feature store's root."""
    with catalog.session() as session:
        return dict(session.execute(
            select(Clip.clip_index, Clip.thumbnail).join(Media, Media.id == Clip.media_id).where(
                Clip.media_id == media_id, Clip.thumbnail.is_not(None), Media.status == MediaStatus.INDEXED
            )
        ).tuples().all())


@dataclass(frozen=True)
class MediaDetail:
    """What `vidx show` prints: the file, its streams, its transcript with times and its clips."""

    id: int
    path: str
    status: str
    error: str | None
    duration: float | None
    has_video: bool
    has_audio: bool
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    language: str | None
    content_hash: str | None
    segments: list[dict[str, Any]] = field(default_factory=list)
    clips: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def media_detail(catalog: Catalog, ref: str, feature_root: os.PathLike[str] | str) -> MediaDetail:
    """The file ``ref`` names with its transcript and clips; thumbnails as paths under ``feature_root``."""
    media_id = resolve_media(catalog, ref).id
    with catalog.session() as session:
        m = session.scalars(
            select(Media).where(Media.id == media_id).options(selectinload(Media.clips), selectinload(Media.segments))
        ).one()
        return MediaDetail(
            id=m.id, path=m.path, status=m.status, error=m.error, duration=m.duration, has_video=m.has_video,
            has_audio=m.has_audio, video_codec=m.video_codec, audio_codec=m.audio_codec, width=m.width,
            height=m.height, fps=m.fps, language=m.language, content_hash=m.content_hash,
            segments=[{"start": s.start, "end": s.end, "text": s.text} for s in m.segments],
            clips=[
                {"index": c.clip_index, "start": c.start, "end": c.end, "shot": c.shot, "concepts": c.concepts,
                 "thumbnail": os.path.join(feature_root, c.thumbnail) if c.thumbnail else None}
                for c in m.clips
            ],
        )


def delete_media(catalog: Catalog, media_id: int) -> str | None:
    """Remove one file from the catalog (its clips, segments and job links go with it).

    Returns the content hash whose feature files nobody else uses any more (the caller deletes
    them), else None. The user's file is never touched; the index drops its points at the next sync.
    ``ValueError`` if there is no such media.
    """
    with catalog.session() as session:
        media = session.get(Media, media_id)
        if media is None:
            raise ValueError(f"no media {media_id} (see `vidx ls`)")
        key = media.content_hash
        session.delete(media)
        session.flush()
        shared = key is not None and session.scalar(select(func.count()).select_from(Media).where(Media.content_hash == key))
    return key if key and not shared else None


# -- chapters and summaries ------------------------------------------------------------------------


@dataclass(frozen=True)
class ChapterRecord:
    """One computed chapter as the summary step writes it (``vector``: float16 bytes of its embedding)."""

    start: float
    end: float
    title: str
    keywords: list[str]
    summary: str
    sentences: list[list[Any]]
    source: str
    thumb_clip: int | None
    speech_share: float
    score: float
    signals: dict[str, float]
    vector: bytes | None = None


@dataclass(frozen=True)
class SummaryRecord:
    """One file's computed summary."""

    summary: str
    sentences: list[list[Any]]
    highlights: list[dict[str, Any]]
    concepts: list[list[Any]]
    keywords: list[str]
    speech_seconds: float
    speech_share: float


def summary_stale_clause(version: str) -> ColumnElement[bool]:
    """Indexed media whose summary is missing, made by another ``version``, or older than the file's rows."""
    made = (
        select(FileSummary.media_id)
        .where(FileSummary.version == version, FileSummary.computed_at >= Media.indexed_at)
        .correlate(Media)
    )
    return (Media.status == MediaStatus.INDEXED) & ~Media.id.in_(made.scalar_subquery())


def stale_summary_ids(catalog: Catalog, version: str, media_ids: Iterable[int] | None = None) -> list[int]:
    """Indexed files (of ``media_ids`` if given) whose chapters and summary ``version`` would change, in id order."""
    query = select(Media.id).where(summary_stale_clause(version)).order_by(Media.id)
    if media_ids is not None:
        query = query.where(Media.id.in_(list(media_ids)))
    with catalog.session() as session:
        return list(session.scalars(query))


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def write_summary(
    catalog: Catalog,
    media_id: int,
    indexed_at: datetime | None,
    version: str,
    chapters: Sequence[ChapterRecord],
    summary: SummaryRecord,
    now: datetime,
) -> bool:
    """Replace one file's chapters and summary in one transaction; False if it was re-indexed meanwhile.

    A title a person gave an old chapter moves to the new chapter that overlaps it most, if that
    overlap is at least half of the shorter of the two: recomputation never loses an edit that
    still has a place to go.
    """
    with catalog.session() as session:
        media = session.get(Media, media_id, with_for_update=True)
        if media is None or media.status != MediaStatus.INDEXED or media.indexed_at != indexed_at:
            return False
        old = session.scalars(select(Chapter).where(Chapter.media_id == media_id)).all()
        edits = [((c.start, c.end), c.user_title) for c in old if c.user_title]
        session.execute(delete(Chapter).where(Chapter.media_id == media_id))
        session.flush()
        rows = [
            Chapter(
                media_id=media_id, chapter_index=i, start=c.start, end=c.end, title=c.title, keywords=c.keywords,
                summary=c.summary, sentences=c.sentences, source=c.source, thumb_clip=c.thumb_clip,
                speech_share=c.speech_share, score=c.score, signals=c.signals, vector=c.vector,
            )
            for i, c in enumerate(chapters)
        ]
        for span, title in edits:
            best = max(rows, key=lambda r: _overlap(span, (r.start, r.end)), default=None)
            if best is None:
                continue
            shorter = min(span[1] - span[0], best.end - best.start)
            if shorter > 0 and _overlap(span, (best.start, best.end)) >= 0.5 * shorter:
                best.user_title = title
        session.add_all(rows)
        existing = session.get(FileSummary, media_id)
        row = existing or FileSummary(media_id=media_id)
        row.version = version
        row.summary, row.sentences, row.highlights = summary.summary, summary.sentences, summary.highlights
        row.concepts, row.keywords = summary.concepts, summary.keywords
        row.speech_seconds, row.speech_share = summary.speech_seconds, summary.speech_share
        row.computed_at = now
        if existing is None:
            session.add(row)
    return True


def chapters_of(catalog: Catalog, media_id: int) -> list[Chapter]:
    """One file's chapters in time order (detached rows)."""
    with catalog.session() as session:
        return list(session.scalars(select(Chapter).where(Chapter.media_id == media_id).order_by(Chapter.chapter_index)))


def summary_of(catalog: Catalog, media_id: int) -> FileSummary | None:
    with catalog.session() as session:
        return session.get(FileSummary, media_id)


def set_chapter_title(catalog: Catalog, media_id: int, chapter_index: int, title: str | None) -> Chapter:
    """A person's title for one chapter (kept through recomputation); None or blank goes back to the computed one."""
    clean = " ".join((title or "").split())
    if len(clean) > 200:
        raise ValueError(f"expected a chapter title of at most 200 characters, got {len(clean)}")
    with catalog.session() as session:
        chapter = session.scalar(
            select(Chapter).where(Chapter.media_id == media_id, Chapter.chapter_index == chapter_index)
        )
        if chapter is None:
            count = session.scalar(select(func.count()).select_from(Chapter).where(Chapter.media_id == media_id)) or 0
            raise ValueError(f"expected a chapter number from 1 to {count}, got {chapter_index + 1}" if count
                             else f"media {media_id} has no chapters yet (run `vidx chapters --recompute`)")
        chapter.user_title = clean or None
        return chapter


def chapter_titles(catalog: Catalog, media_ids: Iterable[int]) -> dict[int, list[tuple[float, float, str]]]:
    """Per file, its chapters' (start, end, title) in time order: what search results name."""
    out: dict[int, list[tuple[float, float, str]]] = {}
    ids = list(set(media_ids))
    if not ids:
        return out
    with catalog.session() as session:
        rows = session.execute(
            select(Chapter.media_id, Chapter.start, Chapter.end, Chapter.title, Chapter.user_title)
            .where(Chapter.media_id.in_(ids)).order_by(Chapter.media_id, Chapter.chapter_index)
        )
        for media_id, start, end, title, user_title in rows:
            out.setdefault(media_id, []).append((start, end, user_title or title))
    return out


@dataclass
class LibraryFile:
    """One indexed file as the library overview sees it."""

    id: int
    path: str
    duration: float
    language: str | None
    speech_seconds: float
    chapters: list[Chapter]


def library_files(catalog: Catalog) -> list[LibraryFile]:
    """Every indexed file with its chapters (and their vectors) and its speech time, by path."""
    with catalog.session() as session:
        media = session.scalars(
            select(Media).where(Media.status == MediaStatus.INDEXED).options(selectinload(Media.chapters))
            .order_by(Media.path)
        ).all()
        speech = dict(session.execute(select(FileSummary.media_id, FileSummary.speech_seconds)).all())
        return [
            LibraryFile(id=m.id, path=m.path, duration=float(m.duration or 0.0), language=m.language,
                        speech_seconds=float(speech.get(m.id, 0.0)), chapters=list(m.chapters))
            for m in media
        ]


def transcript_of(catalog: Catalog, media_id: int) -> list[dict[str, Any]]:
    """One file's transcript segments with their word times, in order (what captions are made from)."""
    with catalog.session() as session:
        return [
            {"start": s.start, "end": s.end, "text": s.text, "words": s.words}
            for s in session.scalars(
                select(TranscriptSegment).where(TranscriptSegment.media_id == media_id)
                .order_by(TranscriptSegment.segment_index)
            )
        ]
