"""The catalog migrates itself and keeps its constraints on SQLite and PostgreSQL; the feature store is atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

import migrations
from store.catalog import Catalog, Clip, Media, MediaStatus, TranscriptSegment
from store.features import FeatureStore


def open_catalog(url: str) -> Catalog:
    catalog = Catalog(url)
    migrations.upgrade(catalog.engine)
    return catalog


def _head() -> str:
    """The newest revision in migrations/versions (so adding one does not break this test)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).resolve().parent))
    return ScriptDirectory.from_config(cfg).get_current_head() or ""


def test_migrates_on_first_use_and_is_idempotent(database_url: str) -> None:
    catalog = open_catalog(database_url)
    tables = set(inspect(catalog.engine).get_table_names())
    assert {"media", "clips", "transcript_segments", "jobs", "model_versions", "alembic_version"} <= tables
    with catalog.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == _head()
    catalog.dispose()
    # A second open (another process, a restart) finds the schema current and changes nothing.
    again = open_catalog(database_url)
    with again.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    again.dispose()


def test_constraint_names_follow_the_convention(database_url: str) -> None:
    catalog = open_catalog(database_url)
    insp = inspect(catalog.engine)
    fks = {fk["name"] for fk in insp.get_foreign_keys("clips")}
    uniques = {u["name"] for u in insp.get_unique_constraints("clips")}
    assert "fk_clips_media_id_media" in fks
    assert "uq_clips_media_id" in uniques
    catalog.dispose()


def test_clip_rows_cascade_and_unique(database_url: str) -> None:
    catalog = open_catalog(database_url)
    with catalog.session() as s:
        m = Media(path="/x/a.mp4", status=MediaStatus.INDEXED)
        m.clips.append(Clip(clip_index=0, start=0.0, end=1.5, concepts=[["tabby", 0.9]]))
        m.segments.append(TranscriptSegment(segment_index=0, start=0.0, end=1.0, text="hi", words=[[0.0, 0.5, "hi", 0.9]]))
        s.add(m)
    with pytest.raises(IntegrityError):
        with catalog.session() as s:
            media = s.scalar(select(Media))
            s.add(Clip(media_id=media.id, clip_index=0, start=1.5, end=3.0))
    with catalog.session() as s:
        media = s.scalar(select(Media))
        assert media.clips[0].concepts == [["tabby", 0.9]]
        assert media.segments[0].words == [[0.0, 0.5, "hi", 0.9]]
        s.delete(media)
    with catalog.session() as s:
        assert s.scalar(select(Clip)) is None
        assert s.scalar(select(TranscriptSegment)) is None
    catalog.dispose()


def test_feature_store_write_replace_and_sweep(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "features")
    key = "ab" * 32
    feats = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float16)
    path = store.write(key, {"features": feats}, [b"\xff\xd8jpeg", None, b"\xff\xd8x"], {"clips": 3})
    assert path == tmp_path / "features" / "ab" / key
    assert np.array_equal(store.load(key, "features"), feats)
    assert store.meta(key) == {"clips": 3}
    assert store.thumbnail_path(key, 0).read_bytes() == b"\xff\xd8jpeg"
    assert not store.thumbnail_path(key, 1).exists()
    # Replacing swaps the whole directory: nothing of the old write survives.
    store.write(key, {"other": np.zeros(2)}, [], {"clips": 0})
    with pytest.raises(ValueError, match="no array 'features'"):
        store.load(key, "features")
    assert not store.thumbnail_path(key, 0).exists()
    # A writer that dies mid-write leaves a staging directory, never a half-visible one.
    with pytest.raises(ValueError):
        store.write(key, {"bad name": np.zeros(1)})
    assert store.meta(key) == {"clips": 0}
    assert list((tmp_path / "features" / ".tmp").iterdir()) == []
    (tmp_path / "features" / ".tmp" / "dead-writer").mkdir()
    assert store.sweep(min_age_s=3600) == 0
    assert store.sweep(min_age_s=0) == 1


def test_feature_store_rejects_path_like_keys(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    with pytest.raises(ValueError, match="hex content hash"):
        store.path("../../etc")


def test_schema_matches_the_models_after_migration(database_url: str) -> None:
    """Every ORM change has its Alembic revision: autogenerate finds nothing left to do."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from store.catalog import Base

    catalog = open_catalog(database_url)
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    catalog.dispose()


def test_upgrade_from_first_revision_keeps_rows(database_url: str) -> None:
    catalog = Catalog(database_url)
    migrations.upgrade(catalog.engine, "0001")
    with catalog.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO media (path, has_video, has_audio, status, clip_count, segment_count, created_at, updated_at)"
            " VALUES ('/old.mp4', false, true, 'indexed', 0, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        ))
    migrations.upgrade(catalog.engine)
    with catalog.session() as s:
        media = s.scalar(select(Media))
        assert media.path == "/old.mp4" and media.synced_version is None
    catalog.dispose()
