"""End-to-end ingestion of tiny generated media into a catalog and feature store, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

import migrations
from indexer import write as write_stage
from indexer.analyse import IngestOptions
from indexer.pipeline import expand_paths, ingest_file
from store.catalog import Catalog, Clip, Job, JobState, Media, MediaStatus, TranscriptSegment
from store.features import FeatureStore


@pytest.fixture()
def env(database_url: str, data_dir: Path) -> tuple[Catalog, FeatureStore, IngestOptions]:
    catalog = Catalog(database_url)
    migrations.upgrade(catalog.engine)
    store = FeatureStore(data_dir / "features")
    yield catalog, store, IngestOptions(cache_dir=data_dir / "cache")
    catalog.dispose()


def _media(catalog: Catalog, path: Path) -> Media:
    with catalog.session() as s:
        m = s.scalar(select(Media).where(Media.path == str(path.resolve())))
        assert m is not None
        _ = m.clips, m.segments  # load while the session is open
        return m


def test_video_with_speech_is_indexed(env, cut_video: Path, tmp_path: Path) -> None:
    catalog, store, options = env
    progress: list[tuple[str, float]] = []
    result = ingest_file(cut_video, catalog, store, options, lambda stage, f: progress.append((stage, f)))
    assert result.status == "indexed", result.reason
    m = _media(catalog, cut_video)
    assert m.status == MediaStatus.INDEXED and m.has_video and m.has_audio
    assert m.duration == pytest.approx(6.0, abs=0.1)
    # Clips tile the timeline and snap to the hard cuts at 2 s and 4 s.
    starts = [c.start for c in m.clips]
    assert starts[0] == 0.0 and m.clips[-1].end == pytest.approx(m.duration, abs=0.05)
    for a, b in zip(m.clips, m.clips[1:]):
        assert a.end == pytest.approx(b.start)
    assert any(abs(s - 2.0) < 0.1 for s in starts) and any(abs(s - 4.0) < 0.1 for s in starts)
    assert len({c.shot for c in m.clips}) == 3
    assert all(c.concepts and len(c.concepts) == options.top_concepts for c in m.clips)
    assert all((store.root / c.thumbnail).read_bytes()[:2] == b"\xff\xd8" for c in m.clips)
    feats = store.load(m.content_hash, "features")
    assert feats.shape == (len(m.clips), 1280) and feats.dtype == np.float16
    # The red and blue shots look different to the backbone.
    blue_index = next(i for i, c in enumerate(m.clips) if c.shot == 1)
    red, blue = feats[0].astype(np.float32), feats[blue_index].astype(np.float32)
    assert np.linalg.norm(red - blue) > 1.0
    text = " ".join(s.text.lower() for s in m.segments)
    assert "fox" in text and "dog" in text, text
    assert all(0 <= s.start < s.end <= m.duration + 0.5 for s in m.segments)
    # Progress ran forwards to the end, and the job row says done.
    assert progress and progress[-1][1] == 1.0
    with catalog.session() as s:
        job = s.get(Job, result.job_id)
        assert job.state == JobState.DONE and job.progress == 1.0 and job.media_id == m.id


def test_unchanged_file_is_skipped_and_changed_file_reindexed(env, cut_video: Path, silent_video: Path, tmp_path: Path) -> None:
    catalog, store, options = env
    target = tmp_path / "library" / "clip.mp4"
    target.parent.mkdir()
    shutil.copy(cut_video, target)
    first = ingest_file(target, catalog, store, options)
    assert first.status == "indexed"
    old_hash = _media(catalog, target).content_hash
    again = ingest_file(target, catalog, store, options)
    assert again.status == "skipped" and again.media_id == first.media_id
    # Same path, new content: re-indexed in place, old feature files gone.
    shutil.copy(silent_video, target)
    changed = ingest_file(target, catalog, store, options)
    assert changed.status == "indexed" and changed.media_id == first.media_id
    m = _media(catalog, target)
    assert m.content_hash != old_hash and not m.has_audio and m.segments == []
    assert not store.exists(old_hash) and store.exists(m.content_hash)
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Clip).where(Clip.media_id == m.id)) == len(m.clips)


def test_copy_is_a_duplicate_and_move_is_repointed(env, silent_video: Path, tmp_path: Path) -> None:
    catalog, store, options = env
    a = tmp_path / "a.mp4"
    shutil.copy(silent_video, a)
    assert ingest_file(a, catalog, store, options).status == "indexed"
    b = tmp_path / "b.mp4"
    shutil.copy(a, b)
    dup = ingest_file(b, catalog, store, options)
    assert dup.status == "duplicate" and str(a.resolve()) in dup.reason
    c = tmp_path / "c.mp4"
    a.rename(c)
    moved = ingest_file(c, catalog, store, options)
    assert moved.status == "skipped" and "moved from" in moved.reason
    with catalog.session() as s:
        assert [m.path for m in s.scalars(select(Media))] == [str(c.resolve())]


def test_audio_only_and_video_only(env, speech_wav: Path, silent_video: Path) -> None:
    catalog, store, options = env
    assert ingest_file(speech_wav, catalog, store, options).status == "indexed"
    m = _media(catalog, speech_wav)
    assert m.has_audio and not m.has_video and m.segments and m.clips
    assert all(c.concepts is None and c.thumbnail is None for c in m.clips)
    assert "fox" in " ".join(s.text.lower() for s in m.segments)
    assert ingest_file(silent_video, catalog, store, options).status == "indexed"
    v = _media(catalog, silent_video)
    assert v.has_video and not v.has_audio and v.segments == [] and len(v.clips) == 2


def test_bad_inputs_fail_alone(env, bad_files: dict[str, Path], silent_video: Path) -> None:
    catalog, store, options = env
    batch = [bad_files["empty"], bad_files["text"], silent_video, bad_files["garbage"], bad_files["truncated"], bad_files["missing"]]
    results = [ingest_file(p, catalog, store, options) for p in batch]
    by_path = {Path(r.path).name: r for r in results}
    assert by_path[silent_video.name].status == "indexed"
    for name in ("empty.mp4", "notes.mp4", "garbage.mkv", "truncated.mp4", "does-not-exist.mp4"):
        r = by_path[name]
        assert r.status == "failed", name
        assert r.reason and "\n" not in r.reason and "Traceback" not in r.reason
    assert "no such file" in by_path["does-not-exist.mp4"].reason
    assert "empty" in by_path["empty.mp4"].reason.lower()
    with catalog.session() as s:
        failed = {Path(m.path).name: m for m in s.scalars(select(Media).where(Media.status == MediaStatus.FAILED))}
        assert set(failed) == {"empty.mp4", "notes.mp4", "garbage.mkv", "truncated.mp4"}
        assert all(m.error for m in failed.values())
        assert s.scalar(select(func.count()).select_from(Clip).where(Clip.media_id.in_([m.id for m in failed.values()]))) == 0
        jobs = s.scalars(select(Job)).all()
        assert sorted(j.state for j in jobs) == sorted([JobState.FAILED] * 5 + [JobState.DONE])
        assert all(j.error for j in jobs if j.state == JobState.FAILED)


def test_interrupted_ingest_does_not_lock_its_file(env, silent_video: Path, cut_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C fails the job ("interrupted"); a job whose process is gone loses its claim to the next ingest."""
    import os
    import socket
    import subprocess

    from indexer import pipeline
    from indexer.jobs import create_jobs
    from indexer.pipeline import StageEnv, run_stage

    catalog, store, options = env
    video = tmp_path / "v.mp4"
    shutil.copy(silent_video, video)

    def interrupt(*_a, **_k):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "analyse_stage", interrupt)
    with pytest.raises(KeyboardInterrupt):
        ingest_file(video, catalog, store, options)
    with catalog.session() as s:
        job = s.scalar(select(Job).order_by(Job.id.desc()))
        media = s.scalar(select(Media).where(Media.path == str(video.resolve())))
        assert job.state == JobState.FAILED and job.error == "interrupted" and job.worker is None
        assert media.claimed_by is None and media.status == MediaStatus.FAILED
    monkeypatch.undo()
    assert ingest_file(video, catalog, store, options).status == "indexed"

    # A SIGKILLed `vidx ingest`: its job stays running, its pid (gone) as the owner, the file claimed.
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = f"{socket.gethostname()}:{dead.pid}"
    stage_env = StageEnv(catalog, store, options)
    [killed] = create_jobs(catalog, [cut_video])
    assert run_stage(stage_env, killed, "probe", ghost, lambda: None, hold=True).work is not None
    # A live owner keeps the file: the second job is a duplicate.
    [alive] = create_jobs(catalog, [cut_video])
    with catalog.session() as s:
        s.get(Job, killed).worker = f"{socket.gethostname()}:{os.getpid()}"
    dup = run_stage(stage_env, alive, "probe", ghost + "0", lambda: None)
    assert dup.result is not None and dup.result.status == "duplicate" and f"job {killed}" in dup.result.reason
    with catalog.session() as s:
        s.get(Job, killed).worker = ghost
    # Its owner gone, the next ingest takes the file over and indexes it.
    result = ingest_file(cut_video, catalog, store, options)
    assert result.status == "indexed", result.reason
    with catalog.session() as s:
        old = s.get(Job, killed)
        assert old.state == JobState.FAILED and "interrupted" in old.error
        media = s.get(Media, result.media_id)
        assert media.status == MediaStatus.INDEXED and media.claimed_by is None and media.clip_count > 0


def test_crash_during_write_leaves_nothing_half_visible(env, cut_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, store, options = env

    class Boom(Exception):
        pass

    real = write_stage.utcnow

    def exploding() -> None:
        raise Boom("disk on fire")

    # Dies inside the catalog transaction, after the feature files and the clip and segment rows were added.
    monkeypatch.setattr(write_stage, "utcnow", exploding)
    crashed = ingest_file(cut_video, catalog, store, options)
    assert crashed.status == "failed" and "disk on fire" in crashed.reason
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Clip)) == 0
        assert s.scalar(select(func.count()).select_from(TranscriptSegment)) == 0
        assert s.scalar(select(Media)).status == MediaStatus.FAILED
    monkeypatch.setattr(write_stage, "utcnow", real)
    rerun = ingest_file(cut_video, catalog, store, options)
    assert rerun.status == "indexed" and rerun.media_id == crashed.media_id
    m = _media(catalog, cut_video)
    assert len(m.clips) == m.clip_count > 0 and len(m.segments) == m.segment_count > 0


def test_expand_paths_recurses_and_filters(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.mp4", "a.WAV", "notes.txt", "sub/c.mkv", ".hidden.mp4"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"
    got = [p.relative_to(tmp_path).as_posix() for p in expand_paths([tmp_path, explicit])]
    assert got == ["a.WAV", "b.mp4", "sub/c.mkv", "notes.txt"]
