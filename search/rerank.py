"""VideoBERT rerank: the alignment head rescores the top moments that have video, in the slots they already hold."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from search.moments import MomentSpan
from store.catalog import Catalog, Media
from store.features import FeatureStore

logger = logging.getLogger(__name__)

_load_lock = threading.Lock()


@dataclass(frozen=True)
class RerankOptions:
    depth: int = 20  # moments rescored; the page is cut to the limit afterwards
    weight: float = 1.0  # the alignment rank's weight against the fused rank (reciprocal-rank sum)
    rrf_k: float = 60.0
    context_clips: int = 4  # clips around the moment's best clip given to VideoBERT (~6 s, like its training pairs)

    def __post_init__(self) -> None:
        if self.depth < 1 or self.weight < 0 or self.rrf_k <= 0 or self.context_clips < 1:
            raise ValueError(f"expected depth >= 1, weight >= 0, rrf_k > 0, context_clips >= 1; got {self}")


@lru_cache(maxsize=4)
def load_videobert(checkpoint: str, vocab: str, device: str = "cpu") -> tuple[Any, Any]:
    """(VideoBERT in eval mode, its VisualVocab), loaded once per process per checkpoint."""
    from models.videobert import load_checkpoint
    from models.visual_vocab import VisualVocab

    with _load_lock:
        model, _, _ = load_checkpoint(checkpoint, device=device)
        return model, VisualVocab.load(vocab)


def clip_tokens(store: FeatureStore, vocab: Any, key: str, first: int, last: int) -> list[int] | None:
    """Visual tokens of clips [first, last] of one file under ``vocab``; None for a file without video features."""
    if not key or not store.exists(key) or not store.has(key, "features"):
        return None
    feats = store.load(key, "features", mmap=True)
    first, last = max(0, first), min(len(feats) - 1, last)
    if last < first:
        return None
    return vocab.assign(np.asarray(feats[first : last + 1], np.float32)).tolist()


class Reranker:
    """Rescores moments with VideoBERT's text-video alignment probability."""

    def __init__(self, catalog: Catalog, store: FeatureStore, checkpoint: Path, vocab: Path,
                 tokenize: Callable[[Sequence[str]], list[list[int]]], options: RerankOptions = RerankOptions(),
                 device: str = "cpu") -> None:
        self.catalog, self.store = catalog, store
        self.checkpoint, self.vocab_path = Path(checkpoint), Path(vocab)
        self.tokenize = tokenize
        self.options = options
        self.device = device

    @property
    def depth(self) -> int:
        return self.options.depth

    def scores(self, query: str, spans: Sequence[MomentSpan]) -> dict[int, float]:
        """Alignment probability per span position, for the spans whose file has video."""
        from models.videobert import align_scores

        model, vocab = load_videobert(str(self.checkpoint), str(self.vocab_path), self.device)
        with self.catalog.session() as session:
            keys = dict(session.execute(select(Media.id, Media.content_hash).where(
                Media.id.in_({s.media_id for s in spans}))).all())
        half = self.options.context_clips // 2
        rows: list[int] = []
        visuals: list[list[int]] = []
        for i, span in enumerate(spans):
            first = max(span.first_clip, span.best_clip - half)
            last = min(max(span.last_clip, first), first + self.options.context_clips - 1)
            tokens = clip_tokens(self.store, vocab, keys.get(span.media_id) or "", first, max(last, span.best_clip))
            if tokens:
                rows.append(i)
                visuals.append(tokens)
        if not rows:
            return {}
        text = self.tokenize([query])[0]
        probs = align_scores(model, [text] * len(rows), visuals).tolist()
        return dict(zip(rows, probs))

    def rerank(self, query: str, spans: Sequence[MomentSpan]) -> tuple[list[MomentSpan], dict[int, float]]:
        """Spans reordered, and the alignment probability per (reordered) position.

        Only spans with video move, and only among the positions spans with video already hold: a
        spoken hit in an audio file keeps its place, since VideoBERT has nothing to say about it.
        Among them the new order is a reciprocal-rank sum of the fused rank and the alignment rank;
        each span takes the score of the slot it lands in, so scores stay in page order.
        """
        spans = list(spans)
        probs = self.scores(query, spans)
        if len(probs) < 2:
            return spans, {i: p for i, p in probs.items()}
        slots = sorted(probs)
        by_align = sorted(slots, key=lambda i: (-probs[i], i))
        align_rank = {i: r for r, i in enumerate(by_align)}
        k, w = self.options.rrf_k, self.options.weight
        order = sorted(slots, key=lambda i: (-(1.0 / (k + slots.index(i)) + w / (k + align_rank[i])), i))
        out = list(spans)
        new_probs: dict[int, float] = {}
        for slot, src in zip(slots, order):
            out[slot] = replace(spans[src], score=spans[slot].score)
            new_probs[slot] = probs[src]
        return out, new_probs
