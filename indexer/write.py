"""Write stage: one file's analysis becomes feature files plus catalog rows, visible all at once."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select

from indexer.clips import Clip
from indexer.embed import ClipEmbeddings
from indexer.clip_features import ClipFeatures
from indexer.probe import ProbeResult
from indexer.transcribe import Segment, Transcript
from store.catalog import Catalog, Clip as ClipRow, Media, MediaStatus, TranscriptSegment, utcnow
from store.features import FeatureStore

logger = logging.getLogger(__name__)

# Bumped when what the feature store holds per file changes shape or meaning.
FEATURE_VERSION = "efficientnet-lite0/v1"


@dataclass
class Analysis:
    """Everything the analysis stages produced for one file."""

    probe: ProbeResult
    content_hash: str
    clips: list[Clip]
    clip_features: ClipFeatures | None
    thumbnails: list[bytes | None]
    transcript: Transcript | None
    cuts: list[float]
    # The embed stage's vectors, written to the feature store in the same atomic swap.
    embeddings: ClipEmbeddings | None = None


class ClaimLostError(RuntimeError):
    """Another job claimed the media row since this one did; its write wins, ours is dropped."""


@dataclass(frozen=True)
class WriteResult:
    media_id: int
    clip_count: int
    segment_count: int


def write_analysis(
    catalog: Catalog, store: FeatureStore, media_id: int, analysis: Analysis, *, job_id: int | None = None
) -> WriteResult:
    """Store ``analysis`` for media ``media_id``; a crash at any point leaves the old state or the new one.

    Feature files go first (an atomic directory swap keyed by content hash); then one
    transaction replaces the clip and segment rows and flips the media row to ``indexed``.
    Readers only trust rows of indexed media, so nothing half-written is ever visible.
    With ``job_id``, the write happens only if that job still holds the media row's claim
    (``ClaimLostError`` otherwise), so two jobs racing on one file leave one copy.
    """
    arrays, meta = _feature_files(analysis)
    store.write(analysis.content_hash, arrays, analysis.thumbnails, meta)
    segments = analysis.transcript.segments if analysis.transcript is not None else []

    with catalog.session() as session:
        media = session.get(Media, media_id, with_for_update=True)
        if media is None:
            raise ValueError(f"expected media id {media_id} in the catalog")
        if job_id is not None and media.claimed_by != job_id:
            raise ClaimLostError(f"job {media.claimed_by} took over this file; its copy is kept")
        old_hash = media.content_hash
        session.execute(delete(ClipRow).where(ClipRow.media_id == media_id))
        session.execute(delete(TranscriptSegment).where(TranscriptSegment.media_id == media_id))
        session.flush()
        session.add_all(_clip_rows(store, media_id, analysis))
        session.add_all(_segment_rows(media_id, segments))
        _mark_indexed(media, analysis, len(segments))
        still_used = 0
        if old_hash and old_hash != analysis.content_hash:
            still_used = session.scalar(
                select(func.count()).select_from(Media).where(Media.content_hash == old_hash, Media.id != media_id)
            ) or 0
    # The old content's files go only after the commit, and only if no other row shares them.
    if old_hash and old_hash != analysis.content_hash and not still_used:
        store.delete(old_hash)
    return WriteResult(media_id=media_id, clip_count=len(analysis.clips), segment_count=len(segments))


def _feature_files(analysis: Analysis) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the meta the feature store keeps for one file."""
    arrays: dict[str, np.ndarray] = {
        "clip_times": np.asarray([[c.start, c.end] for c in analysis.clips], dtype=np.float32).reshape(-1, 2),
    }
    if analysis.clip_features is not None:
        arrays["features"] = analysis.clip_features.features
        arrays["probs"] = analysis.clip_features.probs
    if analysis.embeddings is not None:
        arrays.update(analysis.embeddings.to_arrays())
    meta = {
        "feature_version": FEATURE_VERSION,
        "clips": len(analysis.clips),
        "has_video": analysis.probe.has_video,
        "cuts": [round(c, 3) for c in analysis.cuts],
    }
    return arrays, meta


def _clip_rows(store: FeatureStore, media_id: int, analysis: Analysis) -> list[ClipRow]:
    concepts: Sequence[list[tuple[str, float]]] | None = (
        analysis.clip_features.concepts if analysis.clip_features is not None else None
    )
    frame_counts = analysis.clip_features.frame_counts if analysis.clip_features is not None else None
    rows = []
    for clip in analysis.clips:
        thumb = None
        if clip.index < len(analysis.thumbnails) and analysis.thumbnails[clip.index]:
            thumb = str(store.thumbnail_path(analysis.content_hash, clip.index).relative_to(store.root))
        rows.append(
            ClipRow(
                media_id=media_id,
                clip_index=clip.index,
                start=float(clip.start),
                end=float(clip.end),
                shot=clip.shot,
                frame_count=int(frame_counts[clip.index]) if frame_counts is not None else 0,
                concepts=[[name, round(float(p), 4)] for name, p in concepts[clip.index]] if concepts else None,
                thumbnail=thumb,
            )
        )
    return rows


def _segment_rows(media_id: int, segments: Sequence[Segment]) -> list[TranscriptSegment]:
    return [
        TranscriptSegment(
            media_id=media_id,
            segment_index=i,
            start=float(seg.start),
            end=float(seg.end),
            text=seg.text.strip(),
            words=[[round(w.start, 3), round(w.end, 3), w.word, round(w.probability, 4)] for w in seg.words],
            avg_logprob=float(seg.avg_logprob),
            no_speech_prob=float(seg.no_speech_prob),
        )
        for i, seg in enumerate(segments)
    ]


def _mark_indexed(media: Media, analysis: Analysis, segment_count: int) -> None:
    """Copy the probe and the counts onto the media row and flip it to ``indexed``, releasing its claim."""
    p = analysis.probe
    media.content_hash = analysis.content_hash
    media.size_bytes = p.size_bytes
    media.duration = p.duration
    media.format_name = p.format_name
    media.has_video = p.has_video
    media.has_audio = p.has_audio
    media.video_codec = p.video_codec
    media.audio_codec = p.audio_codec
    media.width = p.width
    media.height = p.height
    media.fps = p.fps
    media.streams = p.streams
    media.language = analysis.transcript.language if analysis.transcript is not None and segment_count else None
    media.clip_count = len(analysis.clips)
    media.segment_count = segment_count
    media.feature_version = FEATURE_VERSION
    media.status = MediaStatus.INDEXED
    media.error = None
    media.claimed_by = None
    media.indexed_at = utcnow()
