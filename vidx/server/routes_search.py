"""GET /api/v1/search: the CLI's search with every filter and option, plus URLs to show and play each moment."""

from __future__ import annotations

import time
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query

from search.engine import Moment
from vidx.server.deps import State, require_auth
from vidx.server.schemas import Error, Hit, SearchResponse

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_auth)], tags=["search"])

MAX_OFFSET = 1000


def hit(moment: Moment, query: str, playable: dict[int, bool]) -> Hit:
    """A moment with the URLs the page uses: the original file when a browser plays it, else a clip."""
    mid = moment.media_id
    if playable.get(mid, False):
        play_url, offset = f"/api/v1/media/{mid}/file", moment.start
    else:
        play_url, offset = f"/api/v1/media/{mid}/clip?start={moment.start:.2f}&end={moment.end:.2f}", 0.0
    best = moment.best_clip
    return Hit(
        **moment.model_dump(),
        media_name=moment.media_path.rsplit("/", 1)[-1],
        play_url=play_url,
        play_offset=offset,
        thumbnail_url=f"/api/v1/media/{mid}/clips/{best}/thumbnail" if moment.thumbnail and best is not None else None,
        page_url=f"/#/watch/{mid}?t={moment.start:.2f}&e={moment.end:.2f}&q={quote(query)}",
    )


@router.get("/search", response_model=SearchResponse, responses={400: {"model": Error}})
def search(
    state: State,
    q: Annotated[str, Query(min_length=1, max_length=2000, description="What you are looking for, in words.")],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    media: Annotated[list[str], Query(description="Only this media (id, path or file name); repeatable.")] = [],  # noqa: B006 - FastAPI copies defaults
    path_prefix: Annotated[str | None, Query(max_length=4096)] = None,
    min_duration: Annotated[float | None, Query(ge=0)] = None,
    max_duration: Annotated[float | None, Query(ge=0)] = None,
    speech: Annotated[bool | None, Query(description="Only clips with (true) or without (false) speech.")] = None,
    fusion: Literal["rrf", "weighted"] | None = None,
    sources: Annotated[str | None, Query(description="Comma list of lexical, speech, visual.", max_length=100)] = None,
    per_media: Annotated[int | None, Query(ge=1, le=100)] = None,
) -> SearchResponse:
    from search.engine import SearchFilters, clean_query

    vapp = state.vapp
    t0 = time.perf_counter()
    try:
        clean_query(q)  # an empty query is a 400 even before anything is indexed
        # One more than the page, so has_more needs no second search.
        options = vapp.search_options(
            limit=offset + limit + 1, fusion=fusion, per_media=per_media,
            sources=tuple(x.strip() for x in sources.split(",") if x.strip()) if sources else None,
        )
        filters = SearchFilters(media=tuple(media), path_prefix=path_prefix, min_duration=min_duration,
                                max_duration=max_duration, has_speech=speech)
        engine = state.engine()
        moments = engine.search(q, options, filters) if engine is not None else []
    except ValueError as e:
        state.metrics.searches.labels(outcome="bad_request").inc()
        raise HTTPException(400, str(e).splitlines()[0] if str(e) else "bad query") from e
    took = time.perf_counter() - t0
    state.metrics.searches.labels(outcome="ok").inc()
    state.metrics.latency.observe(took)
    page = moments[offset:offset + limit]
    playable = state.playable({m.media_id for m in page})
    return SearchResponse(
        query=q, limit=limit, offset=offset, has_more=len(moments) > offset + limit, took_ms=round(took * 1000, 2),
        results=[hit(m, q, playable) for m in page],
    )
