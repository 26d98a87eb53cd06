"""The SQL catalog: typed ORM tables, engine set-up and automatic Alembic migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

logger = logging.getLogger(__name__)

# Stable constraint names make Alembic revisions reproducible across SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class MediaStatus:
    PENDING = "pending"
    PROCESSING = "processing"
    INDEXED = "indexed"
    FAILED = "failed"


class JobState:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class Media(Base):
    __tablename__ = "media"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), unique=True)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    duration: Mapped[float | None] = mapped_column(Float)
    format_name: Mapped[str | None] = mapped_column(String(128))
    has_video: Mapped[bool] = mapped_column(Boolean, default=False)
    has_audio: Mapped[bool] = mapped_column(Boolean, default=False)
    video_codec: Mapped[str | None] = mapped_column(String(64))
    audio_codec: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    fps: Mapped[float | None] = mapped_column(Float)
    streams: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    language: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=MediaStatus.PENDING, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    clip_count: Mapped[int] = mapped_column(Integer, default=0)
    segment_count: Mapped[int] = mapped_column(Integer, default=0)
    feature_version: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # What the search index holds for this file: the embedding version and when it was synced.
    synced_version: Mapped[str | None] = mapped_column(String(64))
    synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The job that is (re)indexing this file: two jobs for one path must not both write it.
    # No foreign key: jobs already point at media, and a cycle would complicate deletes.
    claimed_by: Mapped[int | None] = mapped_column(Integer)

    clips: Mapped[list[Clip]] = relationship(
        back_populates="media", cascade="all, delete-orphan", order_by="Clip.clip_index"
    )
    segments: Mapped[list[TranscriptSegment]] = relationship(
        back_populates="media", cascade="all, delete-orphan", order_by="TranscriptSegment.segment_index"
    )
    chapters: Mapped[list[Chapter]] = relationship(
        back_populates="media", cascade="all, delete-orphan", order_by="Chapter.chapter_index"
    )


class Clip(Base):
    __tablename__ = "clips"
    __table_args__ = (UniqueConstraint("media_id", "clip_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_id: Mapped[int] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), index=True)
    clip_index: Mapped[int] = mapped_column(Integer)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    shot: Mapped[int] = mapped_column(Integer, default=0)
    frame_count: Mapped[int] = mapped_column(Integer, default=0)
    visual_token: Mapped[int | None] = mapped_column(Integer)
    # [[name, probability], ...], highest first.
    concepts: Mapped[list[list[Any]] | None] = mapped_column(JSON)
    thumbnail: Mapped[str | None] = mapped_column(String(512))

    media: Mapped[Media] = relationship(back_populates="clips")


class TranscriptSegment(Base):
    __tablename__ = "transcript_segments"
    __table_args__ = (UniqueConstraint("media_id", "segment_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_id: Mapped[int] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), index=True)
    segment_index: Mapped[int] = mapped_column(Integer)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    # [[start, end, word, probability], ...]
    words: Mapped[list[list[Any]] | None] = mapped_column(JSON)
    avg_logprob: Mapped[float | None] = mapped_column(Float)
    no_speech_prob: Mapped[float | None] = mapped_column(Float)

    media: Mapped[Media] = relationship(back_populates="segments")


class Chapter(Base):
    __tablename__ = "chapters"
    __table_args__ = (UniqueConstraint("media_id", "chapter_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    media_id: Mapped[int] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), index=True)
    chapter_index: Mapped[int] = mapped_column(Integer)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    # The computed title, and the one a person gave it: the edit wins and outlives recomputation.
    title: Mapped[str] = mapped_column(Text)
    user_title: Mapped[str | None] = mapped_column(Text)
    keywords: Mapped[list[str] | None] = mapped_column(JSON)
    summary: Mapped[str] = mapped_column(Text, default="")
    # The summary's transcript sentences with their times: [[start, end, text], ...].
    sentences: Mapped[list[list[Any]] | None] = mapped_column(JSON)
    # What the text was made from: speech, screen (concept tags) or none.
    source: Mapped[str] = mapped_column(String(16), default="none")
    # The clip whose thumbnail stands for the chapter.
    thumb_clip: Mapped[int | None] = mapped_column(Integer)
    speech_share: Mapped[float] = mapped_column(Float, default=0.0)
    # How strongly the boundary at `start` was found, overall and per signal.
    score: Mapped[float] = mapped_column(Float, default=0.0)
    signals: Mapped[dict[str, float] | None] = mapped_column(JSON)
    # The chapter's embedding (float16 bytes, MiniLM space): the library overview clusters these.
    vector: Mapped[bytes | None] = mapped_column(LargeBinary)

    media: Mapped[Media] = relationship(back_populates="chapters")

    @property
    def display_title(self) -> str:
        return self.user_title or self.title


class FileSummary(Base):
    """One file's summary; ``version`` names the chapter settings and models that made it."""

    __tablename__ = "summaries"

    media_id: Mapped[int] = mapped_column(ForeignKey("media.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text, default="")
    sentences: Mapped[list[list[Any]] | None] = mapped_column(JSON)
    # [{"start", "end", "kind": "central" | "unusual", "text"}, ...]
    highlights: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # [[concept, share of the file's video clips], ...]
    concepts: Mapped[list[list[Any]] | None] = mapped_column(JSON)
    keywords: Mapped[list[str] | None] = mapped_column(JSON)
    speech_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    speech_share: Mapped[float] = mapped_column(Float, default=0.0)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), default="ingest")
    media_id: Mapped[int | None] = mapped_column(ForeignKey("media.id", ondelete="SET NULL"), index=True)
    path: Mapped[str | None] = mapped_column(String(4096))
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # Queue bookkeeping: the batch a job was enqueued with, how it ended (indexed, skipped,
    # duplicate, failed) and why, the last stage whose output is kept (a redelivered job resumes
    # after it), and which worker process runs it now with its last sign of life.
    batch: Mapped[str | None] = mapped_column(String(36), index=True)
    outcome: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    done_stage: Mapped[str | None] = mapped_column(String(16))
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(4096))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def _normalise_url(url: str) -> str:
    # Users write postgresql://; we ship psycopg 3, not psycopg2.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    url = _normalise_url(url)
    if url.startswith("sqlite"):
        db_path = url.split("///", 1)[-1]
        if db_path and db_path != ":memory:":
            Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Catalog:
    """Engine + session factory for one catalog database (migrations.upgrade() brings its schema)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions() as session:
            with session.begin():
                yield session

    def dispose(self) -> None:
        self.engine.dispose()
