"""Response models of the API: the search engine's Moment plus URLs, media, jobs, chapters and summaries, errors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from search.engine import Moment
from search.overview import Overview, Topic, TopicMoment
from search.summaries import FileSummaryOut, TimedText


class Error(BaseModel):
    error: str = Field(description="One line saying what went wrong.")


class Hit(Moment):
    """A Moment of `vidx search --json` with what a browser needs to show and play it."""

    media_name: str
    play_url: str = Field(description="Where the moment plays: the original file, or a transcoded clip of it.")
    play_offset: float = Field(description="Seconds to seek to inside play_url.")
    thumbnail_url: str | None
    page_url: str = Field(description="The web page at this moment (shareable).")


class SearchResponse(BaseModel):
    query: str
    limit: int
    offset: int
    has_more: bool
    took_ms: float
    results: list[Hit]


class MediaItem(BaseModel):
    id: int
    path: str
    name: str
    status: str
    duration: float | None
    video: bool
    audio: bool
    clip_count: int
    segment_count: int
    language: str | None
    error: str | None
    thumbnail_url: str | None


class MediaPage(BaseModel):
    items: list[MediaItem]
    total: int
    limit: int
    offset: int


class Segment(BaseModel):
    start: float
    end: float
    text: str


class ClipOut(BaseModel):
    index: int
    start: float
    end: float
    shot: int
    concepts: list[list[Any]] | None
    thumbnail_url: str | None


class MediaDetail(MediaItem):
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    content_hash: str | None
    playable: bool = Field(description="Whether a browser plays the original file (else use /clip).")
    file_url: str
    mime: str
    segments: list[Segment]
    clips: list[ClipOut]


class IngestRequest(BaseModel):
    paths: list[str] = Field(min_length=1, max_length=10_000, description="Files or folders under VIDX_LIBRARY_ROOTS.")


class QueuedJob(BaseModel):
    id: int
    path: str


class IngestResponse(BaseModel):
    batch: str
    jobs: list[QueuedJob]


class Job(BaseModel):
    id: int
    kind: str
    path: str | None
    state: str
    stage: str | None
    progress: float
    attempts: int
    outcome: str | None
    reason: str | None
    media_id: int | None
    batch: str | None
    created_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[Job]


class SessionState(BaseModel):
    auth_required: bool
    authenticated: bool


class SessionRequest(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


# -- chapters, summaries, the library overview (issue 11) ------------------------------------------


class ChapterItem(BaseModel):
    """One chapter as `vidx chapters --json` prints it, with a URL for its picture (never a server path)."""

    index: int = Field(description="1-based, as people count chapters: PATCH .../chapters/{index} renames it.")
    start: float
    end: float
    title: str = Field(description="What to show: the title a person gave it, else the computed one.")
    keywords: list[str]
    summary: str = Field(description="Transcript sentences of the chapter, verbatim (empty without speech).")
    sentences: list[TimedText] = Field(description="The summary's sentences with their times.")
    source: str = Field(description="What the text was made from: speech, screen (concept tags) or none.")
    edited: bool = Field(description="Whether a person gave the title (kept through recomputation).")
    computed_title: str
    thumb_clip: int | None
    thumbnail_url: str | None
    speech_share: float
    score: float = Field(description="How strongly the boundary at start was found (0 for the first chapter).")
    signals: dict[str, float]


class ChapterTitle(BaseModel):
    title: str | None = Field(max_length=200, description="Your title; null or empty restores the computed one.")


class MediaSummaryOut(FileSummaryOut):
    """One file's summary: a few sentences, its chapters, highlights, main concepts and share of speech."""

    name: str
    chapters: list[ChapterItem]  # type: ignore[assignment]


class OverviewMoment(TopicMoment):
    media_name: str
    page_url: str = Field(description="The web page at this moment.")


class OverviewTopic(Topic):
    moments: list[OverviewMoment]  # type: ignore[assignment]


class LibraryOverview(Overview):
    """What the whole library holds: totals, and topics (clustered chapters) with their files and moments."""

    topics: list[OverviewTopic]  # type: ignore[assignment]
