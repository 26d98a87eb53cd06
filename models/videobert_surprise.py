"""VideoBERT's next-clip surprise: the loss on each visual token given the tokens of the clips before it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.videobert import VideoBERT
from models.videobert_inputs import build_inputs


@torch.no_grad()
def next_token_losses(model: VideoBERT, tokens: Sequence[int], batch_size: int = 64) -> np.ndarray:
    """float32 [N]: -log p(tokens[i] | the up to max_visual_len - 1 tokens before it); NaN for the first.

    Each row is the preceding tokens with a visual [MASK] appended, as in predict_next_visual (a
    trailing mask: the model sees only the past), so a clip unlike what came before scores high.
    A context is run once however often it occurs: a still frame or a long shot repeats one token,
    and its windows are all the same.
    """
    c = model.config
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    toks = [int(t) for t in tokens]
    out = np.full(len(toks), np.nan, np.float32)
    if len(toks) < 2:
        return out
    keep = max(c.max_visual_len - 1, 1)
    contexts = [tuple(toks[max(0, i - keep):i]) for i in range(1, len(toks))]
    unique = list(dict.fromkeys(contexts))
    logp: dict[tuple[int, ...], np.ndarray] = {}
    model.eval()
    for s in range(0, len(unique), batch_size):
        rows = unique[s:s + batch_size]
        batch = build_inputs(None, [[*ctx, 0] for ctx in rows], c, device=model.device)
        ids = batch["input_ids"].clone()
        pos = torch.tensor([2 + len(ctx) for ctx in rows], device=model.device)  # [CLS] [>] context -> the slot
        r = torch.arange(len(rows), device=model.device)
        ids[r, pos] = c.visual_mask_id
        hidden = model(ids, batch["token_type_ids"], batch["attention_mask"])
        scores = torch.log_softmax(model.visual_logits(hidden[r, pos]).float(), dim=-1).cpu().numpy()
        logp.update(zip(rows, scores))
    for i, ctx in enumerate(contexts, start=1):
        out[i] = -logp[ctx][toks[i]]
    return out
