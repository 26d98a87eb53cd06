"""Wiring: turns Settings into the plain objects the layers below take (catalog, feature store, options)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import migrations
from indexer.pipeline import IngestOptions
from indexer.transcribe import TranscribeOptions
from store.catalog import Catalog
from store.features import FeatureStore
from vidx.settings import Settings


@dataclass
class App:
    """One data directory's catalog and feature store, opened lazily."""

    settings: Settings

    @cached_property
    def catalog(self) -> Catalog:
        self.settings.resolved_data_dir().mkdir(parents=True, exist_ok=True)
        catalog = Catalog(self.settings.resolved_database_url())
        migrations.upgrade(catalog.engine)
        return catalog

    @cached_property
    def store(self) -> FeatureStore:
        return FeatureStore(self.settings.resolved_data_dir() / "features")

    def ingest_options(self) -> IngestOptions:
        s = self.settings
        return IngestOptions(
            feature_fps=s.feature_fps,
            clip_seconds=s.clip_seconds,
            frame_size=s.frame_size,
            scene_threshold=s.scene_threshold,
            top_concepts=s.top_concepts,
            threads=s.threads,
            transcribe=TranscribeOptions(
                model=s.asr_model,
                language=s.asr_language,
                beam_size=s.asr_beam_size,
                cpu_threads=s.threads,
            ),
            cache_dir=s.resolved_cache_dir(),
        )
