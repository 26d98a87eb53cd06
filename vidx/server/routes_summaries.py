"""Chapters, a file's summary, its exports (WebVTT chapters and captions, SRT, the chapter list, JSON) and the library overview."""

from __future__ import annotations

import re
from pathlib import Path as FilePath
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response

from search.summaries import ChapterOut
from store import queries
from vidx.server.deps import DB_INT_MAX, MediaId, State, require_auth
from vidx.server.schemas import (
    ChapterItem,
    ChapterTitle,
    Error,
    LibraryOverview,
    MediaSummaryOut,
    OverviewMoment,
    OverviewTopic,
)

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_auth)], tags=["summaries"])
NOT_FOUND = {404: {"model": Error}}
ChapterNumber = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="1-based, as in the chapter list.")]
# The server never computes chapters in a request (that needs the text encoder): it says how to get them.
NO_CHAPTERS = "no chapters yet: they are computed after ingest; run `vidx chapters --recompute`"

ExportFormat = Literal["webvtt-chapters", "webvtt", "srt", "text", "json"]
# Media type and file name suffix of each export.
EXPORTS: dict[str, tuple[str, str]] = {
    "webvtt-chapters": ("text/vtt; charset=utf-8", ".chapters.vtt"),
    "webvtt": ("text/vtt; charset=utf-8", ".vtt"),
    "srt": ("application/x-subrip; charset=utf-8", ".srt"),
    "text": ("text/plain; charset=utf-8", ".txt"),
    "json": ("application/json", ".json"),
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _media(state: State, media_id: int):  # type: ignore[no-untyped-def]
    media = queries.get_media(state.vapp.catalog, media_id)
    if media is None:
        raise HTTPException(404, f"no media {media_id}")
    return media


def chapter_item(media_id: int, chapter: ChapterOut) -> ChapterItem:
    """A chapter with the clip-thumbnail URL in place of the server path of its picture."""
    url = (f"/api/v1/media/{media_id}/clips/{chapter.thumb_clip}/thumbnail"
           if chapter.thumbnail and chapter.thumb_clip is not None else None)
    return ChapterItem(**chapter.model_dump(exclude={"thumbnail"}), thumbnail_url=url)


def _chapters(state: State, media_id: int) -> list[ChapterItem]:
    from search.summaries import chapters

    return [chapter_item(media_id, c) for c in chapters(state.vapp.catalog, media_id, state.vapp.store.root)]


@router.get("/media/{media_id}/chapters", response_model=list[ChapterItem], responses=NOT_FOUND)
def list_chapters(state: State, media_id: MediaId) -> list[ChapterItem]:
    """A file's chapters in time order: an empty list until they are computed (after ingest, or `vidx chapters --recompute`)."""
    _media(state, media_id)
    return _chapters(state, media_id)


@router.patch("/media/{media_id}/chapters/{number}", response_model=ChapterItem,
              responses={**NOT_FOUND, 400: {"model": Error}, 422: {"model": Error}})  # 400: a body that is not JSON text
def rename_chapter(state: State, media_id: MediaId, number: ChapterNumber, body: ChapterTitle) -> ChapterItem:
    """Give chapter ``number`` your own title (kept when chapters are recomputed); null or "" restores the computed one."""
    _media(state, media_id)
    # Line breaks and tabs fold into spaces (as the store does); any other control character is refused.
    if body.title is not None and _CONTROL.search(" ".join(body.title.split())):
        raise HTTPException(422, "title: expected text without control characters")
    found = queries.chapter_titles(state.vapp.catalog, [media_id]).get(media_id, [])
    if not found:
        raise HTTPException(404, NO_CHAPTERS)
    if number > len(found):
        raise HTTPException(404, f"no chapter {number} in media {media_id}: it has {len(found)}")
    try:
        queries.set_chapter_title(state.vapp.catalog, media_id, number - 1, body.title)
    except ValueError as e:  # a title too long, or the chapters recomputed meanwhile
        raise HTTPException(422, str(e).splitlines()[0]) from e
    now = _chapters(state, media_id)
    if number > len(now):  # recomputed into fewer chapters between the two calls
        raise HTTPException(404, f"no chapter {number} in media {media_id}: it has {len(now)}")
    return now[number - 1]


@router.get("/media/{media_id}/summary", response_model=MediaSummaryOut, responses=NOT_FOUND)
def media_summary(state: State, media_id: MediaId) -> MediaSummaryOut:
    """A file's summary: a few transcript sentences, its chapters, highlights, main concepts and share of speech."""
    from search.summaries import file_summary

    media = _media(state, media_id)
    found = file_summary(state.vapp.catalog, media_id, state.vapp.store.root)
    if found is None:
        raise HTTPException(404, NO_CHAPTERS)
    return MediaSummaryOut(
        **found.model_dump(exclude={"chapters"}), name=FilePath(media.path).name,
        chapters=[chapter_item(media_id, c) for c in found.chapters],
    )


def _download_name(path: str, suffix: str) -> str:
    """Content-Disposition for ``<file stem><suffix>``: an ASCII fallback and the UTF-8 name (RFC 6266)."""
    name = FilePath(path).stem + suffix
    fallback = re.sub(r"[^A-Za-z0-9._ -]", "_", name) or f"export{suffix}"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.get("/media/{media_id}/export", response_class=Response,
            responses={**NOT_FOUND, 200: {"description": "The file in that format", "content": {
                "text/vtt": {}, "application/x-subrip": {}, "text/plain": {}, "application/json": {}}}})
def export(
    state: State, media_id: MediaId,
    fmt: Annotated[ExportFormat, Query(alias="format", description="webvtt-chapters (a <track kind=\"chapters\">), webvtt or srt "
                                                      "(captions), text (the \"00:00 Title\" list, then the transcript by chapter) or json.")],
) -> Response:
    """One file as a chapters track, captions, the chapter list people paste under a video, or everything as JSON."""
    from search.summaries import render_export

    media = _media(state, media_id)
    # The other formats stand without chapters (captions, the transcript as text, JSON with no summary).
    if fmt == "webvtt-chapters" and not queries.chapter_titles(state.vapp.catalog, [media_id]).get(media_id):
        raise HTTPException(404, NO_CHAPTERS)
    text = render_export(state.vapp.catalog, media_id, fmt, state.vapp.store.root)
    media_type, suffix = EXPORTS[fmt]
    return Response(text.encode("utf-8"), media_type=media_type,
                    headers={"Content-Disposition": _download_name(media.path, suffix)})


@router.get("/library/overview", response_model=LibraryOverview)
def library_overview(state: State) -> LibraryOverview:
    """Totals (files, hours, hours of speech, languages) and the library's topics with the files and moments in each."""
    from search.overview import library_overview as overview

    found = overview(state.vapp.catalog)
    topics = [
        OverviewTopic(**t.model_dump(exclude={"moments"}), moments=[
            OverviewMoment(**m.model_dump(), media_name=FilePath(m.media_path).name,
                           page_url=f"/#/watch/{m.media_id}?t={m.start:.2f}&e={m.end:.2f}")
            for m in t.moments
        ])
        for t in found.topics
    ]
    return LibraryOverview(**found.model_dump(exclude={"topics"}), topics=topics)
