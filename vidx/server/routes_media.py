"""The library over HTTP: list, detail, the original file (byte ranges), moment clips, thumbnails, delete."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse

from store import queries
from vidx.server.deps import DB_INT_MAX, ClipIndex, MediaId, State, require_auth
from vidx.server.schemas import ClipOut, Error, MediaDetail, MediaItem, MediaPage, Segment

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/media", dependencies=[Depends(require_auth)], tags=["media"])
NOT_FOUND = {404: {"model": Error}}
# What /file and /clip send: media bytes, not the JSON FastAPI documents by default.
_MEDIA_BYTES = {"content": {"video/*": {}, "audio/*": {}, "application/octet-stream": {}}}


def _thumb_url(media_id: int, clips: int, video: bool) -> str | None:
    # The middle clip: a first frame is often black or a title card.
    return f"/api/v1/media/{media_id}/clips/{clips // 2}/thumbnail" if video and clips else None


def _item(m: queries.MediaSummary) -> MediaItem:
    return MediaItem(
        id=m.id, path=m.path, name=Path(m.path).name, status=m.status, duration=m.duration, video=m.video,
        audio=m.audio, clip_count=m.clips, segment_count=m.segments, language=m.language, error=m.error,
        thumbnail_url=_thumb_url(m.id, m.clips, m.video),
    )


@router.get("", response_model=MediaPage)
def list_media(
    state: State, limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
) -> MediaPage:
    catalog = state.vapp.catalog
    items = [_item(m) for m in queries.list_media(catalog, limit=limit, offset=offset)]
    return MediaPage(items=items, total=queries.count_media(catalog), limit=limit, offset=offset)


def _media(state: State, media_id: int):  # type: ignore[no-untyped-def]
    media = queries.get_media(state.vapp.catalog, media_id)
    if media is None:
        raise HTTPException(404, f"no media {media_id}")
    return media


@router.get("/{media_id}", response_model=MediaDetail, responses=NOT_FOUND)
def media_detail(state: State, media_id: MediaId) -> MediaDetail:
    from vidx.server import playback

    media = _media(state, media_id)
    d = queries.media_detail(state.vapp.catalog, str(media_id), "")
    return MediaDetail(
        id=d.id, path=d.path, name=Path(d.path).name, status=d.status, duration=d.duration, video=d.has_video,
        audio=d.has_audio, clip_count=len(d.clips), segment_count=len(d.segments), language=d.language, error=d.error,
        thumbnail_url=_thumb_url(d.id, len(d.clips), d.has_video),
        video_codec=d.video_codec, audio_codec=d.audio_codec, width=d.width, height=d.height, fps=d.fps,
        content_hash=d.content_hash, playable=playback.browser_playable(media), file_url=f"/api/v1/media/{d.id}/file",
        mime=playback.mime_type(media),
        segments=[Segment(**s) for s in d.segments],
        clips=[
            ClipOut(index=c["index"], start=c["start"], end=c["end"], shot=c["shot"], concepts=c["concepts"],
                    thumbnail_url=f"/api/v1/media/{d.id}/clips/{c['index']}/thumbnail" if c["thumbnail"] else None)
            for c in d.clips
        ],
    )


def _existing_file(media) -> Path:  # type: ignore[no-untyped-def]
    path = Path(media.path)
    if not path.is_file():
        raise HTTPException(404, f"the file of media {media.id} is gone from where it was indexed")
    return path


@router.get("/{media_id}/file", response_class=Response,
            responses={**NOT_FOUND, 200: {"description": "The whole file", **_MEDIA_BYTES},
                       206: {"description": "A byte range", **_MEDIA_BYTES}, 416: {"model": Error}})
def media_file(state: State, media_id: MediaId, request: Request) -> Response:
    """The original file, with byte ranges so a browser can seek."""
    from vidx.server import playback

    media = _media(state, media_id)
    try:
        return playback.file_response(_existing_file(media), request.headers.get("range"), playback.mime_type(media))
    except FileNotFoundError as e:  # gone between the check and the open
        raise HTTPException(404, f"the file of media {media_id} is gone from where it was indexed") from e


@router.get("/{media_id}/clip", response_class=Response,
            responses={**NOT_FOUND, 200: {"description": "The clip (H.264/AAC MP4)", **_MEDIA_BYTES},
                       206: {"description": "A byte range of it", **_MEDIA_BYTES}, 400: {"model": Error},
                       416: {"model": Error}, 422: {"model": Error}})
def media_clip(
    state: State, media_id: MediaId, request: Request,
    start: Annotated[float, Query(ge=0)], end: Annotated[float, Query(gt=0)],
) -> Response:
    """A short H.264/AAC MP4 of [start, end], made on demand (for files a browser cannot play) and cached."""
    from indexer.media import ffmpeg_exe
    from vidx.server import playback

    media = _media(state, media_id)
    source = _existing_file(media)
    try:
        clip = playback.moment_clip(source, start, end, state.vapp.data_dir / "cache" / "clips",
                                    has_video=bool(media.has_video), ffmpeg=ffmpeg_exe(), duration=media.duration)
    except FileNotFoundError as e:
        raise HTTPException(404, f"the file of media {media_id} is gone from where it was indexed") from e
    except ValueError as e:
        raise HTTPException(400, str(e).splitlines()[0]) from e
    except RuntimeError as e:
        logger.warning("moment clip of media %s failed: %s", media_id, e)
        raise HTTPException(422, f"this file cannot be converted for the browser: {str(e).splitlines()[0]}") from e
    return playback.file_response(clip, request.headers.get("range"), playback.clip_media_type(bool(media.has_video)))


@router.get("/{media_id}/clips/{index}/thumbnail", response_class=FileResponse, responses=NOT_FOUND)
def clip_thumbnail(state: State, media_id: MediaId, index: ClipIndex) -> FileResponse:
    rel = queries.clip_thumbnail(state.vapp.catalog, media_id, index)
    path = state.vapp.store.root / rel if rel else None
    if path is None or not path.is_file():
        raise HTTPException(404, f"no thumbnail for clip {index} of media {media_id}")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.delete("/{media_id}", status_code=204, responses=NOT_FOUND)
def delete_media(state: State, media_id: MediaId) -> Response:
    """Remove a file from the catalog and the index (the next sync drops its points); never the file itself."""
    try:
        key = queries.delete_media(state.vapp.catalog, media_id)
    except ValueError as e:
        raise HTTPException(404, str(e)) from e
    if key is not None:
        state.vapp.store.delete(key)
    state.runner.request_sync()
    return Response(status_code=204)
