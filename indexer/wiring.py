"""One wiring from a deployment's plain settings to the objects a process opens: the data directory's layout, catalog, stores, vector index, embedder."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from indexer.analyse import IngestOptions
from indexer.embed import VECTOR_DIMS, EmbedOptions, Embedder
from store.catalog import Catalog
from store.features import FeatureStore
from store.lexical import LexicalIndex

if TYPE_CHECKING:
    from indexer.summaries import Summarizer, SummaryOptions
    from indexer.surprise import SurpriseModel
    from indexer.training.registry import ModelRecord
    from store.vectors import VectorIndex

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where each part of a deployment lives under its data directory (shared by every host of a deployment)."""

    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def lexical(self) -> Path:
        return self.root / "index" / "lexical"

    @property
    def faiss(self) -> Path:
        return self.root / "index" / "faiss"

    @property
    def qdrant(self) -> Path:
        return self.root / "index" / "qdrant"

    @property
    def models(self) -> Path:
        return self.root / "models"


@dataclass(frozen=True)
class Deployment:
    """A deployment as plain, picklable data: built from Settings by `vidx`, carried to the workers."""

    data_dir: Path
    database_url: str
    ingest: IngestOptions = field(default_factory=IngestOptions)
    embed: EmbedOptions = field(default_factory=EmbedOptions)
    vector_backend: Literal["faiss", "qdrant"] = "faiss"
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    # Where a trained model (CBT's visual vectors, VideoBERT's rerank) runs: auto, cpu or cuda.
    model_device: str = "cpu"
    # How chapters and summaries are made (indexer.summaries.SummaryOptions); None: its defaults.
    summary: SummaryOptions | None = None

    @property
    def layout(self) -> Layout:
        return Layout(self.data_dir)


class Resources:
    """One process's opened parts of a deployment, each made on first use (so after a fork, never before)."""

    def __init__(self, deployment: Deployment, *, prepare_catalog: Callable[[Catalog], None] | None = None) -> None:
        self.deployment = deployment
        self.layout = deployment.layout
        # `vidx` migrates the schema here; a worker child finds it migrated by its parent.
        self._prepare_catalog = prepare_catalog
        self._embedder: Embedder | None = None
        self._embedder_model: int | None = None
        self._surprise: tuple[int, SurpriseModel] | None = None
        self._lock = threading.Lock()

    @cached_property
    def catalog(self) -> Catalog:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        catalog = Catalog(self.deployment.database_url)
        if self._prepare_catalog is not None:
            self._prepare_catalog(catalog)
        return catalog

    @cached_property
    def store(self) -> FeatureStore:
        return FeatureStore(self.layout.features)

    @cached_property
    def lexical(self) -> LexicalIndex:
        return LexicalIndex(self.layout.lexical)

    def vectors(self, *, read_only: bool = False) -> VectorIndex:
        """The search index: FAISS or Qdrant local in the data directory, or a Qdrant server by URL."""
        from store.vectors import open_index

        d = self.deployment
        if d.vector_backend == "qdrant":
            if d.qdrant_url:
                return open_index("qdrant", VECTOR_DIMS, url=d.qdrant_url, api_key=d.qdrant_api_key)
            return open_index("qdrant", VECTOR_DIMS, path=self.layout.qdrant)
        return open_index("faiss", VECTOR_DIMS, path=self.layout.faiss, read_only=read_only)

    def active_models(self) -> dict[str, ModelRecord]:
        from indexer.training.registry import active_versions

        return active_versions(self.catalog, self.layout.models)

    def embedder(self) -> Embedder:
        """The index's embedder: with the active trained CBT, if any, looked up at every call.

        So `vidx models activate` on any host is followed by every process that syncs; otherwise a
        worker would write the untrained version back over the new one. The text encoder is kept
        across a switch.
        """
        record = self.active_models().get("cbt")
        model_id = record.id if record is not None else None
        with self._lock:
            if self._embedder is None or model_id != self._embedder_model:
                visual = self._cbt_visual(record) if record is not None else None
                base = self._embedder or Embedder(self.deployment.embed)
                self._embedder, self._embedder_model = base.with_visual(visual), model_id
            return self._embedder

    def surprise_record(self) -> ModelRecord | None:
        """The VideoBERT whose next-clip surprise marks chapter boundaries: the active one only.

        On the chapter manifest surprise found every picture change alone but added nothing beside
        the visual signal (BENCHMARKS.md), and it costs ~8 s per 10 minutes of video on two cores:
        it runs when a person (or the activation rule) has switched a VideoBERT on, not for every
        trained one.
        """
        return self.active_models().get("videobert")

    def summarizer(self) -> Summarizer:
        """Chapters and summaries with this deployment's options and VideoBERT's surprise (see surprise_record).

        Looked up at every call like the embedder, so activating or deactivating a VideoBERT anywhere
        changes the summaries' version and the next sync recomputes them.
        """
        from indexer.summaries import Summarizer, SummaryOptions

        record = self.surprise_record()
        surprise = None
        if record is not None:
            from indexer.surprise import SurpriseModel
            from indexer.training.registry import missing_files

            if missing_files(record) is not None:
                logger.warning("chapters without VideoBERT's surprise: %s", missing_files(record))
            else:
                with self._lock:
                    if self._surprise is None or self._surprise[0] != record.id:
                        device = self.deployment.model_device if self.deployment.model_device != "auto" else "cpu"
                        self._surprise = (record.id, SurpriseModel(record.path, record.vocab_path, device=device))
                    surprise = self._surprise[1]
        return Summarizer(self.deployment.summary or SummaryOptions(), self._summary_encoder, surprise)

    def _summary_encoder(self):  # type: ignore[no-untyped-def]
        # MiniLM in ONNX (the query encoder's export): 1.5-2x the torch encoder's speed on short
        # keyphrases, and `vidx chapters` then never imports torch unless a VideoBERT is in play.
        # One thread: on shared cores two fought each other (up to 10x slower under load).
        from models.onnx_text_encoder import load_query_encoder

        return load_query_encoder(self.deployment.embed.cache_dir, threads=self.deployment.embed.threads or 1)

    def use_embedder(self, embedder: Embedder, model_id: int | None) -> None:
        """Adopt an embedder built for a model switch (its CBT vectors are already computed)."""
        with self._lock:
            self._embedder, self._embedder_model = embedder, model_id

    def _cbt_visual(self, record: ModelRecord):  # type: ignore[no-untyped-def]
        from indexer.training.registry import CbtVisual, missing_files

        # Kept even when its checkpoint is gone: the index holds its vectors and version, and files
        # whose vectors are cached stay searchable; files that need the model are skipped (reported)
        # by the sync until the model is deactivated or replaced.
        missing = missing_files(record)
        if missing is not None:
            logger.warning("%s", missing)
        return CbtVisual(record, device=self.deployment.model_device)
