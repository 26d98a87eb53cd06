"""The skip, move and duplicate rules of ingestion, and the media-row claim that makes one job the writer of a file."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import select

from indexer.jobs import TERMINAL, fail_row, owner_alive
from store.catalog import Catalog, Job, Media, MediaStatus

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """A file that needs no new work: skipped (unchanged or moved) or a duplicate, and the media row it means."""

    status: Literal["skipped", "duplicate"]
    reason: str
    media_id: int | None = None
    duration: float | None = None
    clips: int = 0
    segments: int = 0


def _verdict(status: Literal["skipped", "duplicate"], media: Media | None, reason: str) -> Verdict:
    if media is None:
        return Verdict(status, reason)
    return Verdict(status, reason, media.id, media.duration, media.clip_count, media.segment_count)


def content_hash(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of the file's bytes: the feature store's key and the test for moved and copied files."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def unchanged(catalog: Catalog, path: Path, stat: os.stat_result) -> Verdict | None:
    """Skip without hashing: the same path, size and mtime as an indexed row."""
    with catalog.session() as session:
        media = session.scalar(select(Media).where(Media.path == str(path)))
        if (
            media is not None
            and media.status == MediaStatus.INDEXED
            and media.size_bytes == stat.st_size
            and media.mtime_ns == stat.st_mtime_ns
        ):
            return _verdict("skipped", media, "already indexed")
    return None


def claim(
    catalog: Catalog, job_id: int, path: Path, stat: os.stat_result, digest: str, heartbeat_timeout: float = 60.0
) -> int | Verdict:
    """Claim the media row of ``path`` for ``job_id`` (its id), or say why there is nothing to do.

    Unchanged content is skipped; a live job on the same path makes this one a duplicate, a dead
    one is taken over; the same content indexed at another path is a duplicate if that file still
    exists, else a move (the row is re-pointed).
    """
    with catalog.session() as session:
        # The row lock makes two jobs for one path take turns here: the second sees the first's claim.
        media = session.scalar(select(Media).where(Media.path == str(path)).with_for_update())
        if media is not None and media.status == MediaStatus.INDEXED and media.content_hash == digest:
            media.mtime_ns, media.size_bytes = stat.st_mtime_ns, stat.st_size
            return _verdict("skipped", media, "already indexed (unchanged content)")
        if media is not None and media.claimed_by not in (None, job_id):
            other = session.get(Job, media.claimed_by)
            if other is not None and other.state not in TERMINAL:
                if other.worker is None or owner_alive(other.worker, other.heartbeat_at, heartbeat_timeout):
                    # Alive, or between two queued stages: its messages are durable and acknowledged
                    # late, so it will finish. One copy only.
                    return _verdict("duplicate", None, f"same file is being indexed by job {other.id}")
                # Its owner is gone (an interrupted or killed `vidx ingest`, a worker dead past its
                # heartbeat): that job ends here and this one takes the file, or it would stay locked.
                logger.warning("job %s: taking over the claim of job %s, whose owner %s is gone", job_id, other.id, other.worker)
                fail_row(session, other, f"interrupted: its process {other.worker} is gone; the file went to job {job_id}")
        twin = session.scalar(
            select(Media).where(Media.content_hash == digest, Media.status == MediaStatus.INDEXED, Media.path != str(path))
        )
        if twin is not None:
            if Path(twin.path).exists():
                return _verdict("duplicate", twin, f"same content as {twin.path}")
            # The indexed file is gone and its content is here: a move, not new work.
            if media is not None:
                session.delete(media)
                session.flush()
            old = twin.path
            twin.path, twin.mtime_ns, twin.size_bytes = str(path), stat.st_mtime_ns, stat.st_size
            session.get(Job, job_id).media_id = twin.id  # type: ignore[union-attr]
            return _verdict("skipped", twin, f"moved from {old}")
        if media is None:
            media = Media(path=str(path))
            session.add(media)
        media.status = MediaStatus.PROCESSING
        media.error = None
        media.claimed_by = job_id
        media.size_bytes, media.mtime_ns = stat.st_size, stat.st_mtime_ns
        session.flush()
        session.get(Job, job_id).media_id = media.id  # type: ignore[union-attr]
        return media.id
