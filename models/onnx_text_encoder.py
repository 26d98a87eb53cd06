"""Query encoder: MiniLM exported once to ONNX and run by onnxruntime; a search imports no torch or transformers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from models.text_encoder import (
    DIST_NAME,
    MAX_POSITIONS,
    TextEncoderConfig,
    encode_in_batches,
    model_dir,
    packaged_model_path,
)

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# Bump when the exported graph changes (inputs, outputs, exporter settings): old cache files are then ignored.
ONNX_FORMAT = 1
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "last_hidden_state"
# The exported file must give the torch encoder's vectors; checked on these before it replaces anything.
_PROBES = ("a dog runs in the park", "they call me a yankee down here, so what can I say?", "x",
           "Whisper transcripts have punctuation, numbers like 4% and names like Piketty. " * 40)
_MIN_PROBE_COSINE = 0.9999
_EXPORT_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")


@runtime_checkable
class QueryEncoder(Protocol):
    """What search needs of a text encoder: sentences -> float32 (N, dim) unit vectors ("" -> zeros)."""

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class OnnxTextEncoder:
    """The torch TextEncoder's vectors (same WordPiece ids, truncation, pooling) from an exported ONNX file.

    threads=1 for a query-serving process, as for the torch encoder: one short query is memory-bound.
    """

    def __init__(self, onnx_file: Path, config: TextEncoderConfig | None = None) -> None:
        self.config = config or TextEncoderConfig()
        if self.config.device != "cpu":
            raise ValueError(f"the ONNX text encoder runs on the CPU, got device={self.config.device!r}")
        self.path = model_dir(self.config)
        self.onnx_file = Path(onnx_file)
        t0 = time.perf_counter()
        self.tokenizer = _load_tokenizer(self.path, self.config.max_length)
        self._pad_id = int(self.tokenizer.token_to_id("[PAD]") or 0)
        self.session = _load_session(self.onnx_file, self.config.threads)
        self._dim = int(json.loads((self.path / "config.json").read_text("utf-8"))["hidden_size"])
        logger.info("loaded ONNX text encoder %s in %.2f s (%s threads)", self.onnx_file,
                    time.perf_counter() - t0, self.config.threads or "default")

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids per text, [CLS] ... [SEP], truncated to max_length; no padding."""
        # One text at a time: a query is one text, and batch encoding would start the tokenizers thread pool.
        return [self.tokenizer.encode(t).ids for t in texts]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (N, dim), unit length; "" (or text with no tokens at all) gives a zero vector callers can mask."""
        return encode_in_batches(texts, self.tokenize, self._forward, self.dim, self.config.batch_size, self._pad_id)

    def _forward(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run([OUTPUT], {INPUTS[0]: input_ids, INPUTS[1]: mask})[0]

    def __repr__(self) -> str:
        return f"OnnxTextEncoder({str(self.onnx_file)!r}, dim={self.dim})"


def _load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise RuntimeError("the ONNX text encoder needs tokenizers; pip install tokenizers") from e
    file = path / "tokenizer.json"
    if not file.is_file():
        raise RuntimeError(f"no tokenizer at {path}: tokenizer.json is missing (reinstall {DIST_NAME}?)")
    tokenizer = Tokenizer.from_file(str(file))
    # The file ships sentence-transformers' 128-token truncation and fixed padding: the torch path uses neither.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _load_session(onnx_file: Path, threads: int) -> onnxruntime.InferenceSession:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeError("the ONNX text encoder needs onnxruntime; pip install onnxruntime") from e
    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one sequential graph: no second pool
    options.log_severity_level = 3  # errors only: its warnings would reach every CLI call's stderr
    try:
        return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's errors (InvalidProtobuf, NoSuchFile, Fail, ...) share no narrower base
        raise RuntimeError(f"onnxruntime cannot load {onnx_file}: {e}") from e


def onnx_path(cache_dir: Path, path: Path) -> Path:
    """Where the ONNX export of the model in ``path`` lives: named for its package version and weights."""
    packaged = path.resolve() == packaged_model_path().resolve()
    version = metadata.version(DIST_NAME) if packaged else "local"
    key = hashlib.sha256(f"{ONNX_FORMAT}:{_weights_digest(path, packaged)}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"all-MiniLM-L6-v2-{version}-{key}.onnx"


def _weights_digest(path: Path, packaged: bool) -> str:
    """sha256 of the weights: the package's RECORD has it already, so a search never reads 90 MB to know it."""
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise RuntimeError(f"no weights in {path}: model.safetensors is missing (reinstall {DIST_NAME}?)")
    if packaged:
        for file in metadata.files(DIST_NAME) or []:
            if file.hash is not None and Path(str(file.locate())).resolve() == weights.resolve():
                return f"{file.hash.mode}={file.hash.value}"
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256={digest.hexdigest()}"


def export_onnx(config: TextEncoderConfig, out: Path) -> Path:
    """Export the torch encoder's BertModel to ``out`` (fp32), checked against torch; RuntimeError if that fails.

    Written to a temp file beside ``out`` and moved into place, so a reader never sees half a file and
    two processes exporting at once leave one whole file (whichever moved in last).
    """
    out = Path(out)
    t0 = time.perf_counter()
    # Not store.files.atomic_write: models/ imports nothing of ours outside it, and the exporter
    # writes to a path (it needs the file to check it with onnxruntime before the rename).
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise RuntimeError(f"cannot write the ONNX text encoder to {out.parent}: {e}") from e
    tmp = Path(tmp_name)
    try:
        from models.text_encoder import TextEncoder

        torch_encoder = TextEncoder(replace(config, device="cpu", threads=0))
        _export_graph(torch_encoder.model, tmp)
        _check_export(tmp, config, torch_encoder.encode(_PROBES))
        tmp.chmod(0o644)  # mkstemp makes it private; the cache is shared like the rest of the cache dir
        os.replace(tmp, out)
    except Exception as e:  # the exporter fails in many ways (torch.export, onnxscript, disk): all mean "no ONNX file"
        raise RuntimeError(f"exporting the text encoder to ONNX failed: {type(e).__name__}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("exported the text encoder to %s in %.1f s", out, time.perf_counter() - t0)
    return out


def _export_graph(model: object, file: Path) -> None:
    """BertModel -> ONNX: (input_ids, attention_mask) int64 (batch, seq) -> last_hidden_state, token types all 0."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=torch.zeros_like(input_ids)).last_hidden_state

    module = HiddenStates(model).eval()  # type: ignore[arg-type]
    # A padded example, so the graph is traced through a real attention mask; both axes stay dynamic.
    ids = torch.tensor([[101, 1037, 3899, 3216, 102, 0], [101, 7592, 2088, 2000, 2017, 102]])
    mask = (ids != 0).long()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=MAX_POSITIONS)
    shapes = {INPUTS[0]: {0: batch, 1: seq}, INPUTS[1]: {0: batch, 1: seq}}
    # The exporter prints its progress, logs each rewrite and warns about axis names and torchvision:
    # none of it belongs on a search's terminal (a failure still raises).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers(*_EXPORT_LOGGERS):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (ids, mask), dynamo=True, input_names=list(INPUTS),
                                    output_names=[OUTPUT], dynamic_shapes=shapes, external_data=False,
                                    verbose=False)
        if program is None:
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(file, external_data=False)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Errors only from these loggers for the duration, then their own levels back."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_export(file: Path, config: TextEncoderConfig, want: np.ndarray) -> None:
    got = OnnxTextEncoder(file, replace(config, device="cpu")).encode(_PROBES)
    cosine = float(np.min(np.sum(got * want, axis=1)))
    if cosine < _MIN_PROBE_COSINE:
        raise RuntimeError(f"the ONNX export disagrees with torch (cosine {cosine:.6f} < {_MIN_PROBE_COSINE})")


def load_onnx_encoder(cache_dir: Path, config: TextEncoderConfig | None = None) -> OnnxTextEncoder:
    """The ONNX encoder from the cache, exported there first if missing or unreadable; RuntimeError if impossible."""
    config = config or TextEncoderConfig()
    file = onnx_path(cache_dir, model_dir(config))
    if file.is_file():
        try:
            return OnnxTextEncoder(file, config)
        except RuntimeError as e:
            logger.warning("exporting the text encoder again: %s", e)
    else:
        logger.info("exporting the text encoder to ONNX (once per model): %s", file)
    return OnnxTextEncoder(export_onnx(config, file), config)


@lru_cache(maxsize=None)
def load_query_encoder(cache_dir: Path, threads: int = 1, path: str | None = None) -> QueryEncoder:
    """The query encoder, once per process: ONNX from ``cache_dir``, or the torch encoder if ONNX cannot be had."""
    config = TextEncoderConfig(path=Path(path) if path is not None else None, threads=threads)
    try:
        return load_onnx_encoder(Path(cache_dir), config)
    except RuntimeError as e:
        logger.warning("queries use the torch text encoder (slower to start): %s", e)
        from models.text_encoder import load_text_encoder

        return load_text_encoder(path, threads=threads)
