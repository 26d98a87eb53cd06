"""The front door's wiring: Settings become the plain Deployment that indexer.wiring opens, plus search, training and describe."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import migrations
from indexer.analyse import IngestOptions
from indexer.embed import EmbedOptions, Embedder
from indexer.transcribe import TranscribeOptions
from indexer.wiring import Deployment, Resources
from store.catalog import Catalog
from store.features import FeatureStore
from store.lexical import LexicalIndex
from vidx.settings import Settings

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from indexer.summaries import Summarizer, SummaryOptions, SummaryReport
    from indexer.sync import SyncReport
    from indexer.training.loop import TrainOptions
    from indexer.training.registry import ModelRecord
    from search.describe import Description
    from search.rerank import Reranker
    from indexer.tasks import QueueConfig
    from models.onnx_text_encoder import QueryEncoder
    from search.engine import SearchEngine, SearchOptions
    from store.vectors import VectorIndex


def summary_options(s: Settings) -> SummaryOptions:
    """Chapter settings over the measured defaults: a setting left unset keeps its default."""
    from indexer.chapters import ChapterOptions
    from indexer.summaries import SummaryOptions

    changes: dict[str, object] = {}
    if s.chapter_min_seconds is not None:
        changes["min_seconds"] = s.chapter_min_seconds
    if s.chapter_max_seconds is not None:
        changes["max_seconds"] = s.chapter_max_seconds
    if s.chapter_signals is not None:
        changes["signals"] = tuple(dict.fromkeys(x.strip() for x in s.chapter_signals.split(",")))
    base = ChapterOptions()
    # One length given alone moves the other default out of its way (Settings checks a pair given together).
    if s.chapter_min_seconds is not None and s.chapter_max_seconds is None:
        changes["max_seconds"] = max(base.max_seconds, s.chapter_min_seconds)
    if s.chapter_max_seconds is not None and s.chapter_min_seconds is None:
        changes["min_seconds"] = min(base.min_seconds, s.chapter_max_seconds)
    return SummaryOptions(chapters=replace(base, **changes))  # type: ignore[arg-type]


def deployment(s: Settings) -> Deployment:
    """The one translation of Settings into the plain deployment every entry point (CLI, server, workers) opens."""
    cache = s.resolved_cache_dir()
    return Deployment(
        data_dir=s.resolved_data_dir(),
        database_url=s.resolved_database_url(),
        ingest=IngestOptions(
            feature_fps=s.feature_fps,
            clip_seconds=s.clip_seconds,
            frame_size=s.frame_size,
            scene_threshold=s.scene_threshold,
            skip_nonref=s.decode_skip_nonref,
            top_concepts=s.top_concepts,
            threads=s.threads,
            transcribe=TranscribeOptions(
                model=s.asr_model, language=s.asr_language, beam_size=s.asr_beam_size, cpu_threads=s.threads,
            ),
            cache_dir=cache,
        ),
        embed=EmbedOptions(
            context_seconds=s.context_seconds, concept_top_k=s.concept_top_k, cache_dir=cache, threads=s.threads,
        ),
        vector_backend=s.vector_backend,
        qdrant_url=s.qdrant_url,
        qdrant_api_key=s.qdrant_api_key,
        model_device=s.train_device,
        summary=summary_options(s),
    )


@dataclass
class App:
    """The front door's view of one deployment: Settings turned into the wiring, plus search, training and describe."""

    settings: Settings

    @cached_property
    def resources(self) -> Resources:
        return Resources(deployment(self.settings), prepare_catalog=lambda catalog: migrations.upgrade(catalog.engine))

    @property
    def data_dir(self) -> Path:
        return self.resources.layout.root

    @property
    def catalog(self) -> Catalog:
        return self.resources.catalog

    @property
    def store(self) -> FeatureStore:
        return self.resources.store

    @property
    def lexical(self) -> LexicalIndex:
        return self.resources.lexical

    def vectors(self, *, read_only: bool = False) -> VectorIndex:
        return self.resources.vectors(read_only=read_only)

    @property
    def embedder(self) -> Embedder:
        return self.resources.embedder()

    def ingest_options(self) -> IngestOptions:
        return self.resources.deployment.ingest

    def queue_config(self) -> QueueConfig:
        """The distributed mode's plain configuration (broker, the deployment, queue settings)."""
        from indexer.tasks import QueueConfig

        s = self.settings
        if not s.broker_url:
            raise ValueError("no broker configured: set VIDX_BROKER_URL (redis://... or amqp://...)")
        return QueueConfig(
            broker_url=s.broker_url,
            deployment=self.resources.deployment,
            prefix=s.queue_prefix,
            visibility_timeout=s.queue_visibility_timeout,
            heartbeat_timeout=s.queue_heartbeat_timeout,
            max_retries=s.queue_max_retries,
            max_attempts=s.queue_max_attempts,
            max_memory_per_child_mb=s.worker_max_memory_mb,
            max_tasks_per_child=s.worker_max_tasks_per_child,
        )

    def sync(self, *, full: bool = False, progress=None, wait: float = 300.0, summarize: bool = False) -> SyncReport:  # type: ignore[no-untyped-def]
        """Run the single-writer index sync for this data directory (``summarize``: chapters and summaries too).

        On PostgreSQL it takes the cluster-wide sync lock the workers' syncs take, waiting up to
        ``wait`` seconds for a running one (then ``SyncBusyError``, an ``IndexLockedError``).
        A search's own sync leaves the summaries to ingest: they need the torch text encoder.
        """
        from indexer.sync import exclusive_sync, sync_index

        summarizer = self.summarizer() if summarize else None
        with exclusive_sync(self.catalog, wait=wait), self.vectors() as vectors:
            return sync_index(self.catalog, self.store, vectors, self.lexical, self.embedder, full=full,
                              progress=progress, summarizer=summarizer)

    def summarizer(self) -> Summarizer:
        return self.resources.summarizer()

    def summarize(self, media_ids=None, *, force: bool = False, progress=None) -> SummaryReport:  # type: ignore[no-untyped-def]
        """Chapters and summaries for files whose stored ones are missing or out of date (``force``: all of them)."""
        from indexer.summaries import summarize_stale

        return summarize_stale(self.catalog, self.store, self.summarizer(), media_ids=media_ids, force=force,
                               progress=progress)

    def search_options(self, **overrides) -> SearchOptions:  # type: ignore[no-untyped-def]
        from search.engine import SearchOptions

        s = self.settings
        base = {"fusion": s.search_fusion, "candidates": s.search_candidates, "per_media": s.search_per_media}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return SearchOptions(**base)

    @cached_property
    def query_encoder(self) -> QueryEncoder:
        """MiniLM for queries, exported once to ONNX in the cache: a search without the rerank needs no torch.

        `vidx ingest` opens it after its sync (torch is loaded there anyway), so the one-time export
        never falls on a user's first search.
        """
        from models.onnx_text_encoder import load_query_encoder

        # One short query is memory-bound: one thread answers it 3-5x faster than two fighting.
        return load_query_encoder(self.settings.resolved_cache_dir(), threads=1)

    def prepare_search(self) -> None:
        """Make the query encoder ready (the one-time ONNX export) in a process that has torch loaded anyway."""
        _ = self.query_encoder

    def engine(self, vectors: VectorIndex) -> SearchEngine:
        from search.engine import SearchEngine

        return SearchEngine(self.catalog, self.store, vectors, self.lexical, self.query_encoder.encode, reranker=self.reranker())

    # -- trained models (vidx train / models / describe) -------------------------------------------

    @property
    def models_root(self) -> Path:
        return self.resources.layout.models

    def active_models(self) -> dict[str, ModelRecord]:
        return self.resources.active_models()

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
        from indexer.training.registry import missing_files, unreadable
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
        from indexer.training.data import DataOptions
        from indexer.training.loop import TrainOptions

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
        """Make ``active[kind]`` the active model of each kind given (None: none): see indexer.training.switch."""
        from indexer.training.switch import switch_models

        done = switch_models(self.catalog, self.store, self.models_root, self.vectors, self.lexical, active,
                             lambda visual: self.embedder.with_visual(visual), device=self.settings.train_device,
                             progress=progress)
        self.resources.use_embedder(done.embedder, done.active.get("cbt"))
        # A VideoBERT switched on or off changes the chapters' surprise signal: recompute from stored features.
        done.report.summaries = self.summarize(progress=progress)
        return done.report

    def describe(self, media: str, at: float, **options) -> Description:  # type: ignore[no-untyped-def]
        """`vidx describe` from Python: words for the clip at ``at`` seconds and the predicted next visual tokens."""
        from search.describe import DescribeOptions, describe

        from models.text_encoder import load_text_encoder

        record = self.active_models().get("videobert")
        if record is None:
            from indexer.training.registry import list_versions

            trained = [r for r in list_versions(self.catalog, self.models_root) if r.kind == "videobert"]
            if not trained:
                raise ValueError("no trained VideoBERT: run `vidx train` first")
            record = trained[-1]  # describe works with the newest one even when rerank keeps it off
        problem = self._load_videobert(record)
        if problem is not None:
            raise problem  # ModelUnavailableError, a ValueError with one line for the user
        return describe(self.catalog, self.store, record.path, record.vocab_path, load_text_encoder(threads=1).tokenizer,
                        media, at, DescribeOptions(**{k: v for k, v in options.items() if v is not None}))
