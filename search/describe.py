"""Video-to-text and next-clip prediction for one moment, from VideoBERT's MLM head (the paper's template filling)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from search.rerank import load_videobert
from store import queries
from store.catalog import Catalog, Clip
from store.features import FeatureStore

logger = logging.getLogger(__name__)

# The shape of the weak (concept-tag) sentences VideoBERT was trained on, so its [MASK]s ask for what is seen.
DEFAULT_TEMPLATE = "a video of a [MASK] and a [MASK]"


@dataclass(frozen=True)
class DescribeOptions:
    template: str = DEFAULT_TEMPLATE
    top_k: int = 5
    context_clips: int = 4  # clips around the one at `at` that VideoBERT sees for template filling
    history_clips: int = 8  # clips up to and including it, the context for next-clip prediction
    next_clips: int = 3

    def __post_init__(self) -> None:
        if "[MASK]" not in self.template:
            raise ValueError(f"the template needs at least one [MASK], got {self.template!r}")
        if min(self.top_k, self.context_clips, self.history_clips, self.next_clips) < 1:
            raise ValueError(f"expected positive counts, got {self}")


@dataclass
class Description:
    media_id: int
    media_path: str
    at: float
    clip_index: int
    start: float
    end: float
    template: str
    words: list[list[tuple[str, float]]]  # per [MASK] of the template, (word, probability) best first
    tokens: list[int]  # the visual tokens VideoBERT saw for template filling
    next_tokens: list[int]  # predicted visual tokens of the next clips
    actual_next: list[int]  # the tokens the next clips really have (for comparison)
    token_concepts: dict[int, list[str]] = field(default_factory=dict)  # what training clips of each token showed
    concepts: list[str] = field(default_factory=list)  # the clip's own top concept tags

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["token_concepts"] = {str(k): v for k, v in self.token_concepts.items()}
        return d


def describe(catalog: Catalog, store: FeatureStore, checkpoint: Path, vocab: Path, tokenizer: Any, media: str,
             at: float, options: DescribeOptions = DescribeOptions(), device: str = "cpu") -> Description:
    """The most likely words for the clip at ``at`` seconds and the predicted next visual tokens.

    ``tokenizer`` is the MiniLM HuggingFace tokenizer (TextEncoder.tokenizer). ValueError for unknown
    media, a time outside it, or a file without video.
    """
    from models.videobert import fill_text, predict_next_visual

    if not np.isfinite(at) or at < 0:
        raise ValueError(f"expected a time >= 0 in seconds, got {at}")
    found = queries.resolve_media(catalog, media, indexed_only=True)
    media_id, path, key = found.id, found.path, found.content_hash or ""
    with catalog.session() as session:
        clips = session.execute(select(Clip.clip_index, Clip.start, Clip.end, Clip.concepts)
                                .where(Clip.media_id == media_id).order_by(Clip.clip_index)).all()
    if not clips:
        raise ValueError(f"media {media_id} has no clips")
    if not key or not store.exists(key) or not store.has(key, "features"):
        raise ValueError(f"{path} has no video: nothing to describe (VideoBERT sees only video clips)")
    if at > float(clips[-1].end) + 1e-6:
        raise ValueError(f"{path} is {float(clips[-1].end):.2f} s long; --at {at} is past its end")
    row = next((i for i, c in enumerate(clips) if float(c.end) > at), len(clips) - 1)
    model, vv = load_videobert(str(checkpoint), str(vocab), device)
    feats = np.asarray(store.load(key, "features"), np.float32)
    tokens = vv.assign(feats).tolist()
    half = options.context_clips // 2
    first = max(0, min(row - half, len(tokens) - options.context_clips))
    context = tokens[first : first + options.context_clips]
    words = fill_text(model, context, options.template, tokenizer=tokenizer, top_k=options.top_k)
    history = tokens[max(0, row + 1 - options.history_clips) : row + 1]
    n_next = min(options.next_clips, model.config.max_visual_len - 1)
    predicted = predict_next_visual(model, history, n_next)
    names_file = Path(vocab).with_name("token_concepts.json")
    token_concepts: dict[int, list[str]] = {}
    if names_file.is_file():
        table = json.loads(names_file.read_text())
        token_concepts = {t: table.get(str(t), []) for t in set(context + predicted)}
    clip = clips[row]
    return Description(
        media_id=media_id, media_path=path, at=float(at), clip_index=int(clip.clip_index), start=float(clip.start),
        end=float(clip.end), template=options.template,
        words=[[(str(w), round(float(p), 4)) for w, p in mask] for mask in words],
        tokens=context, next_tokens=predicted, actual_next=tokens[row + 1 : row + 1 + n_next],
        token_concepts=token_concepts, concepts=[str(c[0]) for c in (clip.concepts or [])[:3]],
    )
