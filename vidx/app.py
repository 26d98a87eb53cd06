"""Wiring: turns Settings into the plain objects the layers below take (catalog, stores, indexes, options)."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
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

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from indexer.sync import EmbedOptions, Embedder, SyncReport
    from indexer.train import TrainOptions
    from indexer.trained import ModelRecord
    from search.describe import Description
    from search.rerank import Reranker
    from indexer.tasks import QueueConfig
    from search.engine import SearchEngine, SearchOptions
    from store.vectors import VectorIndex


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM that arrive inside are delivered (as KeyboardInterrupt / exit) when it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda n, _f: received.append(n)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


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
        from indexer.sync import Embedder

        s = self.settings
        # An active trained CBT replaces the concept-tag visual vectors (and so the embedding version).
        active = self.active_models()
        visual = None
        if "cbt" in active:
            from indexer.trained import CbtVisual, missing_files

            # Kept even when its checkpoint is gone: the index holds its vectors and version, and files
            # whose vectors are cached stay searchable; files that need the model are skipped (reported)
            # by the sync until the model is deactivated or replaced.
            missing = missing_files(active["cbt"])
            if missing is not None:
                logger.warning("%s", missing)
            visual = CbtVisual(active["cbt"], device=s.train_device)
        return Embedder(self.embed_options(), visual_model=visual)

    def embed_options(self) -> EmbedOptions:
        from indexer.sync import EmbedOptions

        s = self.settings
        return EmbedOptions(
            context_seconds=s.context_seconds, concept_top_k=s.concept_top_k,
            cache_dir=s.resolved_cache_dir(), threads=s.threads,
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
        from indexer.tasks import QueueConfig

        s = self.settings
        if not s.broker_url:
            raise ValueError("no broker configured: set VIDX_BROKER_URL (redis://... or amqp://...)")
        return QueueConfig(
            broker_url=s.broker_url,
            database_url=s.resolved_database_url(),
            data_dir=self.data_dir,
            ingest=self.ingest_options(),
            embed=self.embed_options(),
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
            train_device=s.train_device,
        )

    def sync(self, *, full: bool = False, progress=None, wait: float = 300.0) -> SyncReport:  # type: ignore[no-untyped-def]
        """Run the single-writer index sync for this data directory.

        On PostgreSQL it takes the cluster-wide sync lock the workers' syncs take, waiting up to
        ``wait`` seconds for a running one (then ``SyncBusyError``, an ``IndexLockedError``).
        """
        from indexer.sync import exclusive_sync, sync_index

        with exclusive_sync(self.catalog, wait=wait), self.vectors() as vectors:
            return sync_index(self.catalog, self.store, vectors, self.lexical, self.embedder, full=full, progress=progress)

    def search_options(self, **overrides) -> SearchOptions:  # type: ignore[no-untyped-def]
        from search.engine import SearchOptions

        s = self.settings
        base = {"fusion": s.search_fusion, "candidates": s.search_candidates, "per_media": s.search_per_media}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return SearchOptions(**base)

    def engine(self, vectors: VectorIndex) -> SearchEngine:
        from search.engine import SearchEngine

        from models.onnx_text_encoder import load_query_encoder

        # One short query is memory-bound: one thread answers it 3-5x faster than two fighting.
        # ONNX (exported once into the cache): a search without the rerank imports neither torch nor transformers.
        encoder = load_query_encoder(self.settings.resolved_cache_dir(), threads=1)
        return SearchEngine(self.catalog, self.store, vectors, self.lexical, encoder.encode, reranker=self.reranker())

    # -- trained models (vidx train / models / describe) -------------------------------------------

    @property
    def models_root(self) -> Path:
        return self.data_dir / "models"

    def active_models(self) -> dict[str, ModelRecord]:
        from indexer.trained import active_versions

        return active_versions(self.catalog, self.models_root)

    def reranker(self) -> Reranker | None:
        """VideoBERT's rerank when a trained VideoBERT is active and VIDX_RERANK is on."""
        if not self.settings.rerank:
            return None
        record = self.active_models().get("videobert")
        if record is None:
            return None
        from search.rerank import Reranker, RerankOptions

        from models.text_encoder import load_text_encoder

        problem = self._load_videobert(record)
        if problem is not None:  # search answers without the rerank rather than failing every query
            logger.warning("search without the VideoBERT rerank: %s", problem)
            return None
        s = self.settings
        return Reranker(self.catalog, self.store, record.path, record.vocab_path, load_text_encoder(threads=1).tokenize,
                        RerankOptions(depth=s.rerank_depth, weight=s.rerank_weight))

    @staticmethod
    def _load_videobert(record: ModelRecord) -> Exception | None:
        """Load (and cache, per process) a VideoBERT checkpoint and its vocabulary; the one-line error if that fails."""
        from indexer.trained import missing_files, unreadable
        from search.rerank import load_videobert

        missing = missing_files(record)
        if missing is not None:
            return missing
        try:
            load_videobert(str(record.path), str(record.vocab_path), "cpu")
        except Exception as e:  # noqa: BLE001 - torch and numpy raise many kinds for a bad file
            return unreadable(record, e)
        return None

    def train_options(self, **overrides) -> TrainOptions:  # type: ignore[no-untyped-def]
        from indexer.train import TrainOptions
        from indexer.training_data import DataOptions

        s = self.settings
        base = {
            "data": DataOptions(heldout_fraction=s.train_heldout_fraction, seed=s.train_seed),
            "videobert_steps": s.train_videobert_steps, "cbt_steps": s.train_cbt_steps,
            "batch_size": s.train_batch_size, "videobert_layers": s.train_videobert_layers,
            "vocab_min_per_leaf": s.train_vocab_min_per_leaf,
            "seed": s.train_seed, "device": s.train_device, "threads": s.threads, "activate": s.train_activate,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
        return TrainOptions(**base)

    def switch_models(self, active: dict[str, int | None], *, progress=None) -> SyncReport:  # type: ignore[no-untyped-def]
        """Make ``active[kind]`` the active model of each kind given (None: none), index first, catalog second.

        The new index generation is built completely before anything switches: CBT vectors are
        computed into the feature store first (interruptible, nothing live changes), then one sync under
        the index's writer lock replaces every point and flushes once (FAISS readers move from the old
        generation to the new one atomically), then one catalog transaction flips the active rows. A
        crash between the two leaves media whose synced_version does not match the active version:
        the next sync repairs them.
        """
        from indexer.sync import Embedder, exclusive_sync, sync_index
        from indexer.trained import CbtVisual, assign_visual_tokens, indexed_keys, list_versions, set_active

        records = {r.id: r for r in list_versions(self.catalog, self.models_root)}
        current = {k: r.id for k, r in self.active_models().items()}
        target = {**current, **active}
        for kind, model_id in target.items():
            if model_id is not None and (model_id not in records or records[model_id].kind != kind):
                raise ValueError(f"model version {model_id} is not a {kind} model (see `vidx models`)")
        visual = None
        if target.get("cbt") is not None:
            visual = CbtVisual(records[target["cbt"]], device=self.settings.train_device)
            if progress is not None:
                progress("cbt vectors", 0.0)
            visual.precompute(self.store, indexed_keys(self.catalog))
        old = self.embedder
        embedder = Embedder(old.options, visual_model=visual)  # options are frozen: shared, not copied
        embedder._encoder = old._encoder  # the text encoder is the same; do not load it twice
        # Ctrl-C waits for the swap (seconds: every vector is precomputed): the index writer flushes
        # whatever it holds when closed, and half a swap must never become a generation.
        # The workers' syncs take the same cluster-wide lock (PostgreSQL), so none writes in between.
        with exclusive_sync(self.catalog), _interrupts_deferred(), self.vectors() as vectors:
            report = sync_index(self.catalog, self.store, vectors, self.lexical, embedder, progress=progress)
            set_active(self.catalog, active)
        if target.get("videobert") is not None:
            assign_visual_tokens(self.catalog, self.store, records[target["videobert"]].vocab_path)
        self.__dict__["embedder"] = embedder
        return report

    def describe(self, media: str, at: float, **options) -> Description:  # type: ignore[no-untyped-def]
        """`vidx describe` from Python: words for the clip at ``at`` seconds and the predicted next visual tokens."""
        from search.describe import DescribeOptions, describe

        from models.text_encoder import load_text_encoder

        record = self.active_models().get("videobert")
        if record is None:
            from indexer.trained import list_versions

            trained = [r for r in list_versions(self.catalog, self.models_root) if r.kind == "videobert"]
            if not trained:
                raise ValueError("no trained VideoBERT: run `vidx train` first")
            record = trained[-1]  # describe works with the newest one even when rerank keeps it off
        problem = self._load_videobert(record)
        if problem is not None:
            raise problem  # ModelUnavailableError, a ValueError with one line for the user
        return describe(self.catalog, self.store, record.path, record.vocab_path, load_text_encoder(threads=1).tokenizer,
                        media, at, DescribeOptions(**{k: v for k, v in options.items() if v is not None}))
