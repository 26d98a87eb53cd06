"""The library overview on a synthetic catalog: topics follow the chapters' embeddings and are named by their keywords."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import migrations
from search.overview import library_overview
from store.catalog import Catalog, Chapter, FileSummary, Media, MediaStatus, utcnow

TOPICS = {"cooking": ["bread", "dough", "oven"], "space": ["planet", "telescope", "galaxy"], "sport": ["goal", "match", "team"]}


def _catalog(tmp_path: Path) -> Catalog:
    rng = np.random.default_rng(1)
    centres = {name: rng.standard_normal(384).astype(np.float32) for name in TOPICS}
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    migrations.upgrade(catalog.engine)
    now = utcnow()
    with catalog.session() as session:
        for f in range(12):
            media = Media(path=f"/lib/f{f:02d}.mp4", status=MediaStatus.INDEXED, duration=120.0,
                          language="en" if f % 4 else "fr", content_hash=f"{f:064x}", indexed_at=now)
            session.add(media)
            session.flush()
            for c, name in enumerate(TOPICS):
                v = centres[name] + 0.3 * rng.standard_normal(384).astype(np.float32)
                session.add(Chapter(media_id=media.id, chapter_index=c, start=40.0 * c, end=40.0 * (c + 1),
                                    title=f"{name} {f}", keywords=[TOPICS[name][(f + k) % 3] for k in range(2)],
                                    summary="", source="speech", speech_share=0.5, score=0.0,
                                    vector=(v / np.linalg.norm(v)).astype(np.float16).tobytes()))
            session.add(FileSummary(media_id=media.id, version="t", summary="", speech_seconds=60.0, speech_share=0.5,
                                    computed_at=now))
        session.add(Media(path="/lib/new.mp4", status=MediaStatus.INDEXED, duration=60.0, content_hash="f" * 64,
                          indexed_at=now))
    return catalog


def test_topics_group_chapters_by_embedding_and_name_them(tmp_path: Path) -> None:
    overview = library_overview(_catalog(tmp_path))
    assert overview.files == 13 and overview.unsummarized == 1
    assert overview.languages == {"en": 9, "fr": 3}
    assert abs(overview.hours - (12 * 120 + 60) / 3600) < 1e-3 and abs(overview.speech_hours - 12 * 60 / 3600) < 1e-3
    assert sum(t.chapters for t in overview.topics) == 36
    # Each true topic's chapters land in topics named by that topic's words only.
    for topic in overview.topics:
        kinds = {name for name, words in TOPICS.items() for w in topic.keywords if w in words}
        assert len(kinds) == 1, topic
        assert topic.name and all(part.strip() in topic.keywords for part in topic.name.split(","))
        assert topic.moments and all(m.title.split()[0] in kinds for m in topic.moments)
        assert sum(m.chapters for m in topic.media) == topic.chapters


def test_an_empty_library_has_no_topics(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    migrations.upgrade(catalog.engine)
    overview = library_overview(catalog)
    assert overview.files == 0 and overview.topics == [] and overview.hours == 0
