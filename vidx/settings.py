"""All settings in one place, read from the environment (``VIDX_`` prefix) at the entry points."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration; everything below the entry points takes plain arguments."""

    model_config = SettingsConfigDict(env_prefix="VIDX_", extra="ignore")

    data_dir: Path = Field(default=Path("./vidx-data"))
    database_url: str | None = None

    feature_fps: float = Field(default=1.0, gt=0, le=30)
    clip_seconds: float = Field(default=1.5, gt=0.1, le=60)
    frame_size: int = Field(default=224, ge=32, le=1024)
    scene_threshold: float = Field(default=10.0, gt=0, le=100)
    # Dropping non-reference frames halves H.264 decode CPU; sampled frames may land a frame or two late.
    decode_skip_nonref: bool = True
    top_concepts: int = Field(default=5, ge=1, le=50)

    asr_model: Literal["tiny.en", "base"] = "tiny.en"
    asr_beam_size: int = Field(default=1, ge=1, le=10)
    asr_language: str | None = None
    threads: int = Field(default=0, ge=0)
    cache_dir: Path | None = None

    # Embeddings and the search index.
    context_seconds: float = Field(default=1.5, ge=0, le=30)
    concept_top_k: int = Field(default=10, ge=1, le=1000)
    vector_backend: Literal["faiss", "qdrant"] = "faiss"
    qdrant_url: str | None = None
    qdrant_api_key: str | None = None
    search_fusion: Literal["rrf", "weighted"] = "rrf"
    search_candidates: int = Field(default=100, ge=10, le=10000)
    search_per_media: int = Field(default=1, ge=1, le=1000)

    # Training (`vidx train`) and the trained models in search. Defaults train the dev library
    # (~430 video clips) in about 6 minutes on 2 busy CPU cores (BENCHMARKS.md: 361 s); "auto" uses a
    # GPU when torch sees one.
    train_videobert_steps: int = Field(default=180, ge=0, le=1_000_000)
    train_cbt_steps: int = Field(default=300, ge=0, le=1_000_000)
    train_batch_size: int = Field(default=32, ge=4, le=4096)
    train_videobert_layers: int = Field(default=6, ge=1, le=6)
    # Fewest clips per leaf the vocabulary's depth allows (VideoBERT: 12**depth tokens).
    train_vocab_min_per_leaf: int = Field(default=6, ge=1, le=10_000)
    train_heldout_fraction: float = Field(default=0.2, ge=0, lt=1)
    train_seed: int = 0
    train_device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: switch a trained model on only when it beats the baseline it replaces on held-out data.
    train_activate: Literal["auto", "always", "never"] = "auto"
    rerank: bool = True
    rerank_depth: int = Field(default=20, ge=1, le=1000)
    rerank_weight: float = Field(default=1.0, ge=0, le=100)

    # Chapters and summaries (indexer/summaries.py): unset means the measured defaults of ChapterOptions
    # (BENCHMARKS.md); chapter_signals is a comma list of topic, visual, audio, surprise.
    chapter_min_seconds: Optional[float] = Field(default=None, gt=0, le=3600)
    chapter_max_seconds: Optional[float] = Field(default=None, gt=0, le=24 * 3600)
    chapter_signals: Optional[str] = Field(default=None, pattern=r"^\s*(topic|visual|audio|surprise)(\s*,\s*(topic|visual|audio|surprise))*\s*$")

    # The distributed mode: a Celery broker (redis://... or amqp://...) turns on `ingest --queue` and `worker`.
    broker_url: str | None = None
    # Queue names are PREFIX.ingest and PREFIX.sync, so deployments (and tests) can share one broker.
    queue_prefix: str = Field(default="vidx", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Redis redelivers an unacknowledged task after this long: it must exceed the longest stage
    # (analysing a multi-hour file), or a second worker starts the same stage while the first still runs.
    queue_visibility_timeout: int = Field(default=6 * 3600, ge=5)
    # A job whose worker has not written a heartbeat for this long may be taken over by another worker.
    queue_heartbeat_timeout: float = Field(default=60.0, ge=1.0)
    queue_max_retries: int = Field(default=5, ge=0, le=100)
    # A file that kills its worker this many times (decoder crash, out of memory) fails for good.
    queue_max_attempts: int = Field(default=3, ge=1, le=100)
    # Worker children are replaced after this much resident memory or this many tasks (decoder and ASR growth).
    worker_max_memory_mb: int = Field(default=3072, ge=256)
    worker_max_tasks_per_child: int = Field(default=200, ge=1)

    # `vidx serve`: a bearer token for the API (required to listen on a non-loopback address), and the
    # folders that POST /api/v1/ingest may read from (separated by ":"; none: ingest over HTTP is refused).
    api_token: str | None = Field(default=None, min_length=16)
    library_roots: str = ""
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8000, ge=1, le=65535)

    @model_validator(mode="after")
    def _chapter_lengths(self) -> Settings:
        lo, hi = self.chapter_min_seconds, self.chapter_max_seconds
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"expected chapter_min_seconds <= chapter_max_seconds, got {lo} > {hi}")
        return self

    def resolved_library_roots(self) -> list[Path]:
        """The library roots, each with symlinks and `..` resolved (what ingest paths are checked against)."""
        return [Path(os.path.realpath(os.path.expanduser(p))) for p in self.library_roots.split(os.pathsep) if p.strip()]

    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir() / 'catalog.sqlite'}"

    def resolved_cache_dir(self) -> Path:
        """Derived model files (joined Whisper base, label embeddings), shared by every data directory."""
        if self.cache_dir is not None:
            return self.cache_dir.expanduser().resolve()
        xdg = os.environ.get("XDG_CACHE_HOME")
        return (Path(xdg) if xdg else Path.home() / ".cache").expanduser().resolve() / "vidx"

