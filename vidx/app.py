"""Wiring: turns Settings into the plain objects the layers below take (catalog, stores, indexes, options)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import migrations
from indexer.pipeline import IngestOptions
from indexer.transcribe import TranscribeOptions
from store.catalog import Catalog
from store.features import FeatureStore
from store.lexical import LexicalIndex
from vidx.settings import Settings

if TYPE_CHECKING:
    from indexer.sync import Embedder, SyncReport
    from indexer.tasks import QueueConfig
    from search.engine import SearchEngine, SearchOptions
    from store.vectors import VectorIndex


@dataclass
class App:
    """One data directory's catalog, feature store and search indexes, opened lazily."""

    settings: Settings

    @property
    def data_dir(self) -> Path:
        return self.settings.resolved_data_dir()

    @cached_property
    def catalog(self) -> Catalog:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(self.settings.resolved_database_url())
        migrations.upgrade(catalog.engine)
        return catalog

    @cached_property
    def store(self) -> FeatureStore:
        return FeatureStore(self.data_dir / "features")

    @cached_property
    def lexical(self) -> LexicalIndex:
        return LexicalIndex(self.data_dir / "index" / "lexical")

    def vectors(self, *, read_only: bool = False) -> VectorIndex:
        from indexer.sync import VECTOR_DIMS
        from store.vectors import open_index

        s = self.settings
        if s.vector_backend == "qdrant":
            if s.qdrant_url:
                return open_index("qdrant", VECTOR_DIMS, url=s.qdrant_url, api_key=s.qdrant_api_key)
            return open_index("qdrant", VECTOR_DIMS, path=self.data_dir / "index" / "qdrant")
        return open_index("faiss", VECTOR_DIMS, path=self.data_dir / "index" / "faiss", read_only=read_only)

    @cached_property
    def embedder(self) -> Embedder:
        from indexer.sync import EmbedOptions, Embedder

        s = self.settings
        return Embedder(
            EmbedOptions(
                context_seconds=s.context_seconds,
                concept_top_k=s.concept_top_k,
                cache_dir=s.resolved_cache_dir(),
                threads=s.threads,
            )
        )

    def ingest_options(self) -> IngestOptions:
        s = self.settings
        return IngestOptions(
            feature_fps=s.feature_fps,
            clip_seconds=s.clip_seconds,
            frame_size=s.frame_size,
            scene_threshold=s.scene_threshold,
            skip_nonref=s.decode_skip_nonref,
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

    def queue_config(self) -> QueueConfig:
        """The distributed mode's plain configuration (broker, catalog, data dir, options)."""
        from indexer.sync import EmbedOptions
        from indexer.tasks import QueueConfig

        s = self.settings
        if not s.broker_url:
            raise ValueError("no broker configured: set VIDX_BROKER_URL (redis://... or amqp://...)")
        return QueueConfig(
            broker_url=s.broker_url,
            database_url=s.resolved_database_url(),
            data_dir=self.data_dir,
            ingest=self.ingest_options(),
            embed=EmbedOptions(
                context_seconds=s.context_seconds, concept_top_k=s.concept_top_k,
                cache_dir=s.resolved_cache_dir(), threads=s.threads,
            ),
            vector_backend=s.vector_backend,
            qdrant_url=s.qdrant_url,
            qdrant_api_key=s.qdrant_api_key,
            prefix=s.queue_prefix,
            visibility_timeout=s.queue_visibility_timeout,
            heartbeat_timeout=s.queue_heartbeat_timeout,
            max_retries=s.queue_max_retries,
            max_attempts=s.queue_max_attempts,
            max_memory_per_child_mb=s.worker_max_memory_mb,
            max_tasks_per_child=s.worker_max_tasks_per_child,
        )

    def sync(self, *, full: bool = False, progress=None) -> SyncReport:  # type: ignore[no-untyped-def]
        """Run the single-writer index sync for this data directory."""
        from indexer.sync import sync_index

        with self.vectors() as vectors:
            return sync_index(self.catalog, self.store, vectors, self.lexical, self.embedder, full=full, progress=progress)

    def search_options(self, **overrides) -> SearchOptions:  # type: ignore[no-untyped-def]
        from search.engine import SearchOptions

        s = self.settings
        base = {"fusion": s.search_fusion, "candidates": s.search_candidates, "per_media": s.search_per_media}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return SearchOptions(**base)

    def engine(self, vectors: VectorIndex) -> SearchEngine:
        from search.engine import SearchEngine

        from models.text_encoder import load_text_encoder

        # One short query is memory-bound: one thread answers it 3-5x faster than two fighting.
        encoder = load_text_encoder(threads=1)
        return SearchEngine(self.catalog, self.store, vectors, self.lexical, encoder.encode)
