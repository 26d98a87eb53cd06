"""Embedding stage: per-clip speech vectors (transcript windows) and visual vectors (ConSE), in one text space."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from store.files import atomic_write

if TYPE_CHECKING:
    from models.text_encoder import TextEncoder
    from store.features import FeatureStore

logger = logging.getLogger(__name__)

# Seconds of transcript taken on each side of a clip. A 1.5 s clip holds only 3-4 spoken words
# (~2.5 words/s): too few for a sentence encoder to place a paraphrase, and a phrase that
# straddles a clip boundary is split between two clips. One clip's length each side gives a
# 4.5 s window, ~10 words, about a clause; it also absorbs Whisper's word-timestamp jitter.
# Wider windows make neighbouring clips share one diluted vector, so the best clip drifts up to
# `context` seconds away from the words (the eval counts a hit within 1 s). Measured on
# Whisper tiny.en transcripts of talk.wav, phone_call.wav and jfk.wav, 1.5 s clips, R@1 with
# that 1 s tolerance: 68 exact 4-word phrases / 11 paraphrases / dev.json's 4 spoken queries
#   context 0: 0.91 / 0.73 / 1.0   1.0: 0.87 / 0.91 / 1.0   1.25-1.5: 0.88 / 1.0 / 1.0
#   context 1.75: 0.84 / 1.0 / 1.0   2.0: 0.75 / 0.91 / 1.0   3.0: 0.46 / 0.91 / 1.0   4.0: 0.35 / 0.64 / 0.75
DEFAULT_CONTEXT = 1.5

# ConSE's T: the number of top ImageNet classes mixed into a clip's visual vector. Measured on
# frames of ../shared/media against dev.json's visual queries and a few more: T = 1 halves the
# margin between the right and the wrong frames, 3-5 is mixed, 10-50 is a plateau (the same
# queries found first, MRR within 0.03); 10 is also the paper's choice.
DEFAULT_TOP_K = 10

# The prompt wrapped around each ImageNet class name (a sequence of prompts is averaged, as in
# CLIP). One template measured as well as a 5- or 9-prompt ensemble at a fifth of the cost, and
# better than the bare name. Class names are kept verbatim: their parentheses disambiguate
# ("impala (antelope)", "kite (bird of prey)"), and stripping them sank "an antelope" from
# rank 1 to rank ~280 of 1000 labels.
DEFAULT_TEMPLATE = "a photo of a {}."

# Bumped whenever the label text or vectors change for the same inputs, so old caches are ignored.
_LABEL_CACHE_VERSION = 1

# Part of every point id: a new embedding model gives new ids, so old and new never mix.
EMBEDDING_VERSION = "minilm-l6+conse/v1"
VECTOR_DIMS = {"speech": 384, "visual": 384}

Word = tuple[float, float, str]


@dataclass(frozen=True)
class EmbedOptions:
    """How clips are embedded; built from Settings at the entry points."""

    context_seconds: float = DEFAULT_CONTEXT
    concept_top_k: int = 10
    lexical_concepts: int = 3
    lexical_min_prob: float = 0.05
    cache_dir: Path = Path("vidx-data/cache")
    threads: int = 0


@dataclass
class ClipEmbeddings:
    speech: np.ndarray  # float16 (n, dim), unit length; zeros where has_speech is False
    has_speech: np.ndarray  # bool (n,)
    visual: np.ndarray  # float16 (n, dim), unit length; zeros where has_visual is False
    has_visual: np.ndarray  # bool (n,)
    speech_text: list[str]  # the transcript window each speech vector was made from, "" if none

    _ARRAYS = ("speech", "has_speech", "visual", "has_visual", "speech_text")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The feature-store arrays of one file's embeddings, stamped with their version."""
        return {
            "speech": self.speech.astype(np.float16),
            "has_speech": self.has_speech.astype(bool),
            "visual": self.visual.astype(np.float16),
            "has_visual": self.has_visual.astype(bool),
            "speech_text": np.asarray(self.speech_text, dtype=np.str_).reshape(-1),
            "embedding_version": np.asarray([EMBEDDING_VERSION]),
        }

    @classmethod
    def load(cls, store: FeatureStore, key: str) -> ClipEmbeddings | None:
        """The stored embeddings of one file if present and made by the current version, else None."""
        if not all(store.has(key, name) for name in (*cls._ARRAYS, "embedding_version")):
            return None
        if str(store.load(key, "embedding_version").reshape(-1)[0]) != EMBEDDING_VERSION:
            return None
        return cls(
            speech=store.load(key, "speech"),
            has_speech=store.load(key, "has_speech"),
            visual=store.load(key, "visual"),
            has_visual=store.load(key, "has_visual"),
            speech_text=[str(t) for t in store.load(key, "speech_text")],
        )

    def save(self, store: FeatureStore, key: str) -> None:
        store.put(key, self.to_arrays())


# -- speech ---------------------------------------------------------------------------------------


def segments_to_words(segments: Sequence[tuple[float, float, str]]) -> list[Word]:
    """Words of segments that carry no word timestamps, spread evenly over each segment's span."""
    words: list[Word] = []
    for start, end, text in segments:
        tokens = text.split()
        if not tokens:
            continue
        start, end = float(start), float(end)
        step = max(end - start, 0.0) / len(tokens)
        words += [(start + i * step, start + (i + 1) * step, w) for i, w in enumerate(tokens)]
    return words


def speech_windows(
    clips: Sequence[tuple[float, float]],
    words: Sequence[Word],
    context: float = DEFAULT_CONTEXT,
) -> list[str]:
    """Per clip, the words overlapping [start - context, end + context], in time order, joined by spaces."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if not words:
        return [""] * len(clips)
    # Whisper's words come with a leading space (" hello"); the join below supplies its own.
    items = [(float(s), float(e), w.strip()) for s, e, w in words if w and not w.isspace()]
    items.sort(key=lambda x: (x[0], x[1]))  # stable, so equal times keep the transcript's order
    if not items:
        return [""] * len(clips)
    starts = np.array([s for s, _, _ in items])
    ends = np.array([e for _, e, _ in items])
    # Ends are not sorted, but their running maximum is: every word before the first index
    # whose running max reaches `lo` ends before `lo`, so the scan can start there.
    reach = np.maximum.accumulate(ends)
    out = []
    for start, end in clips:
        lo, hi = start - context, end + context
        first = int(np.searchsorted(reach, lo, side="left"))
        last = int(np.searchsorted(starts, hi, side="left"))  # words that start before hi
        picked = [
            items[j][2] for j in range(first, last)
            # Overlap of positive length; a zero-length word (Whisper emits a few) counts where it sits.
            if ends[j] > lo or (ends[j] == starts[j] == lo)
        ]
        out.append(" ".join(picked))
    return out


# -- visual ---------------------------------------------------------------------------------------


def _as_templates(template: str | Sequence[str]) -> tuple[str, ...]:
    templates = (template,) if isinstance(template, str) else tuple(template)
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"each template needs a '{{}}' for the class name, got {templates!r}")
    return templates


def label_embeddings(
    encoder: TextEncoder,
    names: Sequence[str],
    template: str | Sequence[str] = DEFAULT_TEMPLATE,
) -> np.ndarray:
    """float32 (len(names), dim), unit length: each class name in the template(s), averaged over templates."""
    templates = _as_templates(template)
    if not names:
        raise ValueError("no class names")
    t0 = time.perf_counter()
    total = np.zeros((len(names), encoder.dim), np.float32)
    for t in templates:
        total += encoder.encode([t.format(n) for n in names])
    # Prompt ensembling as in CLIP: the mean of unit vectors, renormalised.
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    labels = np.divide(total, norms, out=np.zeros_like(total), where=norms > 0)
    logger.info("embedded %d class names x %d templates in %.2f s", len(names), len(templates),
                time.perf_counter() - t0)
    return labels


def _label_cache_key(encoder: TextEncoder, names: Sequence[str], templates: tuple[str, ...]) -> str:
    payload = json.dumps(
        {"v": _LABEL_CACHE_VERSION, "model": str(encoder.path), "dim": encoder.dim,
         "templates": templates, "names": list(names)},
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def cached_label_embeddings(
    encoder: TextEncoder,
    names: Sequence[str],
    cache_dir: Path,
    template: str | Sequence[str] = DEFAULT_TEMPLATE,
) -> np.ndarray:
    """label_embeddings, kept in cache_dir as labels-<hash>.npy (hash of model path, templates, names)."""
    templates = _as_templates(template)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"labels-{_label_cache_key(encoder, names, templates)}.npy"
    expected = (len(names), encoder.dim)
    if path.is_file():
        try:
            labels = np.load(path, allow_pickle=False)
            if labels.shape == expected and labels.dtype == np.float32:
                return labels
            logger.warning("ignoring label cache %s: shape %s, expected %s", path, labels.shape, expected)
        except (OSError, ValueError) as e:  # truncated or foreign file: recompute and overwrite it
            logger.warning("ignoring unreadable label cache %s: %s", path, e)
    labels = label_embeddings(encoder, names, templates)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Concurrent workers each write their own temp file, the last rename wins, and no reader
    # ever sees a half-written array.
    with atomic_write(path) as f:
        np.save(f, labels, allow_pickle=False)
    return labels


def concept_vectors(probs: np.ndarray, labels: np.ndarray, top_k: int = DEFAULT_TOP_K) -> np.ndarray:
    """ConSE (Norouzi et al. 2014): per row, the probability-weighted sum of its top-k label vectors, unit length.

    float32 (n, dim); a row whose top-k probabilities are all zero (or not finite) stays a zero vector.
    """
    probs = np.nan_to_num(np.asarray(probs, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    labels = np.asarray(labels, dtype=np.float32)
    if probs.ndim != 2 or labels.ndim != 2 or probs.shape[1] != labels.shape[0]:
        raise ValueError(f"probs {probs.shape} and labels {labels.shape} do not match: need (n, C) and (C, dim)")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    n, classes = probs.shape
    k = min(top_k, classes)
    if n == 0:
        return np.zeros((0, labels.shape[1]), np.float32)
    if k < classes:
        # Keep each row's top-k probabilities, zero the rest: one (n, C) @ (C, dim) product then
        # weights and sums the label vectors, in the memory of probs itself rather than (n, k, dim).
        top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        weights = np.zeros_like(probs)
        np.put_along_axis(weights, top, np.take_along_axis(probs, top, axis=1), axis=1)
    else:
        weights = probs
    # The paper divides by the top-k mass; renormalising to unit length makes that moot.
    vectors = weights @ labels
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 1e-12)


# -- the stage ------------------------------------------------------------------------------------


def embed_clips(
    clips: Sequence[tuple[float, float]],
    words: Sequence[Word],
    probs: np.ndarray | None,
    encoder: TextEncoder,
    labels: np.ndarray | None,
    context: float = DEFAULT_CONTEXT,
    top_k: int = DEFAULT_TOP_K,
) -> ClipEmbeddings:
    """Speech and visual vectors for each clip. probs None (audio-only media): no visual vectors."""
    n = len(clips)
    dim = encoder.dim
    t0 = time.perf_counter()

    texts = speech_windows(clips, words, context)
    # Neighbouring clips often share a window (a pause, a long word): embed each distinct text once.
    distinct = sorted({t for t in texts if t})
    vectors = encoder.encode(distinct) if distinct else np.zeros((0, dim), np.float32)
    row = {t: i for i, t in enumerate(distinct)}
    speech = np.zeros((n, dim), np.float32)
    for i, t in enumerate(texts):
        if t:
            speech[i] = vectors[row[t]]
    # From the vector, not the text: text the tokenizer drops entirely also gives zeros.
    has_speech = np.linalg.norm(speech, axis=1) > 0

    if probs is None:
        visual = np.zeros((n, dim), np.float32)
    else:
        if labels is None:
            raise ValueError("concept probabilities were given without label embeddings")
        probs = np.asarray(probs)
        if len(probs) != n:
            raise ValueError(f"{n} clips but {len(probs)} rows of concept probabilities")
        visual = concept_vectors(probs, labels, top_k)
    has_visual = np.linalg.norm(visual, axis=1) > 0

    logger.debug("embedded %d clips: %d with speech (%d distinct windows), %d with visual concepts in %.2f s",
                 n, int(has_speech.sum()), len(distinct), int(has_visual.sum()), time.perf_counter() - t0)
    return ClipEmbeddings(speech.astype(np.float16), has_speech, visual.astype(np.float16), has_visual, texts)


class Embedder:
    """The stage's models: the text encoder and the ImageNet label embeddings, loaded once on first use."""

    def __init__(self, options: EmbedOptions, visual_model: Any = None, *, encoder: TextEncoder | None = None) -> None:
        self.options = options
        # A trained visual model (indexer.training CbtVisual) replaces the concept-tag visual vectors.
        self.visual_model = visual_model
        self._encoder = encoder
        self._labels: np.ndarray | None = None

    def with_visual(self, visual_model: Any) -> Embedder:
        """The same options and the same (already loaded) text encoder, with another visual model."""
        return Embedder(self.options, visual_model, encoder=self._encoder)

    @property
    def version(self) -> str:
        """The index's embedding version: part of every point id and of media.synced_version."""
        if self.visual_model is None:
            return EMBEDDING_VERSION
        return f"{EMBEDDING_VERSION}+{self.visual_model.version}"

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            from models.text_encoder import load_text_encoder

            self._encoder = load_text_encoder(threads=self.options.threads)
        return self._encoder

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            from indexer.clip_features import imagenet_names

            self._labels = cached_label_embeddings(self.encoder, imagenet_names(), self.options.cache_dir)
        return self._labels

    def embed(self, clips: Sequence[tuple[float, float]], words: Sequence[Word], probs: np.ndarray | None) -> ClipEmbeddings:
        return embed_clips(
            clips,
            words,
            probs.astype(np.float32) if probs is not None else None,
            self.encoder,
            self.labels if probs is not None else None,
            context=self.options.context_seconds,
            top_k=self.options.concept_top_k,
        )
