"""VideoBERT's next-clip surprise per clip of a file, from its stored clip features (a chapter signal)."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class SurpriseModel:
    """A trained VideoBERT and its visual vocabulary, loaded on first use (torch is imported only then)."""

    def __init__(self, checkpoint: Path, vocab: Path, device: str = "cpu") -> None:
        self.checkpoint = Path(checkpoint)
        self.vocab_path = Path(vocab)
        self.device = device
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        """Names the model: a file's chapters made with another checkpoint are recomputed."""
        digest = hashlib.sha256(str(self.checkpoint.resolve()).encode()).hexdigest()[:12]
        return f"videobert-surprise/{digest}"

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is None:
                for path in (self.checkpoint, self.vocab_path):
                    if not path.is_file():
                        raise ValueError(f"expected a VideoBERT checkpoint and its vocabulary, {path} is missing")
                from models.videobert import load_checkpoint
                from models.visual_vocab import VisualVocab

                model, _, _ = load_checkpoint(self.checkpoint, device=self.device)
                vocab = VisualVocab.load(self.vocab_path)
                if vocab.size > model.config.visual_vocab_size:
                    raise ValueError(f"vocabulary {self.vocab_path} has {vocab.size} tokens, the model "
                                     f"{self.checkpoint} knows {model.config.visual_vocab_size}")
                self._loaded = (model, vocab)
                logger.info("surprise from %s (%s)", self.checkpoint, vocab)
            return self._loaded

    def tokens(self, features: np.ndarray) -> np.ndarray:
        """int64 [n]: each clip's visual token, its nearest centroid down the vocabulary's tree."""
        _, vocab = self._load()
        return vocab.assign(np.asarray(features, np.float32))

    def surprise(self, features: np.ndarray) -> np.ndarray:
        """float32 [n]: the model's loss on each clip's token given the previous clips' tokens (NaN for clip 0)."""
        x = np.asarray(features)
        if x.ndim != 2:
            raise ValueError(f"expected clip features of shape (n, D), got {x.shape}")
        if len(x) == 0:
            return np.zeros(0, np.float32)
        from models.videobert_surprise import next_token_losses

        model, _ = self._load()
        return next_token_losses(model, self.tokens(x).tolist())
