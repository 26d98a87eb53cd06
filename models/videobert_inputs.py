"""VideoBERT's batches: `[CLS] text [>] visual [SEP]` inputs, alignment negatives and per-modality masking (the data side of models/videobert.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from models.videobert import VideoBertConfig

IGNORE = -100  # label of a position that is not predicted (torch's cross_entropy ignore_index)



def strip_specials(ids: Sequence[int], config: VideoBertConfig) -> list[int]:
    """WordPiece ids without a leading [CLS] / trailing [SEP] (as TextEncoder.tokenize returns them)."""
    ids = [int(i) for i in ids]
    if ids and ids[0] == config.cls_id:
        ids = ids[1:]
    if ids and ids[-1] == config.sep_id:
        ids = ids[:-1]
    for i in ids:
        if not 0 <= i < config.text_vocab_size:
            raise ValueError(f"expected WordPiece ids in [0, {config.text_vocab_size}), got {i}")
    return ids


def build_inputs(text_ids: Sequence[Sequence[int] | None] | None,
                 visual_tokens: Sequence[Sequence[int] | None] | None,
                 config: VideoBertConfig, align_labels: Sequence[float] | None = None,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Pad a batch of `[CLS] text [>] visual [SEP]` rows into tensors.

    text_ids: WordPiece ids per row (a leading [CLS] and trailing [SEP] are dropped if present), or None /
    an empty list for a video-only row. visual_tokens: visual token ids in [0, visual_vocab_size) per row
    (NOT offset), or None / empty for a text-only row: `[CLS] text [SEP]`. A video-only row is
    `[CLS] [>] visual [SEP]`. Text is cut to max_text_len, video to max_visual_len (keeping the start).
    align_labels per row: 1 aligned, 0 misaligned (video from elsewhere), -1 no target (default: 1 for
    rows with both modalities, -1 otherwise).

    Returns input_ids, token_type_ids, attention_mask (long [B, L]), text_mask, visual_mask (bool [B, L]:
    the positions mask_tokens may mask) and align_labels (float [B]).
    """
    if text_ids is None and visual_tokens is None:
        raise ValueError("expected text_ids or visual_tokens (or both), got neither")
    n = len(text_ids) if text_ids is not None else len(visual_tokens)  # type: ignore[arg-type]
    texts = list(text_ids) if text_ids is not None else [None] * n
    visuals = list(visual_tokens) if visual_tokens is not None else [None] * n
    if len(texts) != len(visuals) or n == 0:
        raise ValueError(f"expected the same, non-zero number of text and visual rows, got {len(texts)} and "
                         f"{len(visuals)}")
    rows: list[tuple[list[int], list[int], int, int]] = []  # ids, types, text count, visual count
    default_align: list[float] = []
    for r, (t, v) in enumerate(zip(texts, visuals)):
        t = strip_specials(t, config)[:config.max_text_len] if t is not None else []
        v = [int(x) for x in v][:config.max_visual_len] if v is not None else []
        if not t and not v:
            raise ValueError(f"row {r}: expected text or visual tokens, got neither")
        for x in v:
            if not 0 <= x < config.visual_vocab_size:
                raise ValueError(f"row {r}: expected visual tokens in [0, {config.visual_vocab_size}), got {x}")
        ids = [config.cls_id, *t]
        types = [0] * len(ids)
        if v:
            ids += [config.sep_visual_id, *(config.visual_offset + x for x in v), config.sep_id]
            types += [1] * (len(v) + 2)
        else:
            ids.append(config.sep_id)
            types.append(0)
        rows.append((ids, types, len(t), len(v)))
        default_align.append(1.0 if t and v else -1.0)
    length = max(len(ids) for ids, *_ in rows)
    input_ids = torch.full((n, length), config.pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((n, length), dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    text_mask = torch.zeros((n, length), dtype=torch.bool)
    visual_mask = torch.zeros((n, length), dtype=torch.bool)
    for r, (ids, types, nt, nv) in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids)
        token_type_ids[r, :len(ids)] = torch.tensor(types)
        attention_mask[r, :len(ids)] = 1
        text_mask[r, 1:1 + nt] = True
        if nv:
            visual_mask[r, 2 + nt:2 + nt + nv] = True
    if align_labels is None:
        align = torch.tensor(default_align)
    else:
        if len(align_labels) != n:
            raise ValueError(f"expected {n} align_labels, got {len(align_labels)}")
        align = torch.tensor([float(a) for a in align_labels])
        if bool(((align != 1) & (align != 0) & (align != -1)).any()):
            raise ValueError("expected align_labels of 1 (aligned), 0 (misaligned) or -1 (none)")
        both = torch.tensor([nt > 0 and nv > 0 for _, _, nt, nv in rows])
        if bool(((align >= 0) & ~both).any()):
            raise ValueError("expected align_labels -1 for rows without both text and video")
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
             "text_mask": text_mask, "visual_mask": visual_mask, "align_labels": align}
    return {k: v.to(device) for k, v in batch.items()}


def shuffle_negatives(text_ids: Sequence[Sequence[int]], visual_tokens: Sequence[Sequence[int]],
                      generator: torch.Generator, neg_fraction: float = 0.5,
                      groups: Sequence[Any] | None = None) -> tuple[list[list[int]], list[list[int]], list[float]]:
    """Turn aligned pairs into a mix of aligned (label 1) and misaligned (label 0) pairs.

    A negative row keeps its text and takes the video of another row, one from a different group (e.g. a
    different media file) when groups are given, so a neighbouring clip of the same video is never a
    "wrong" video. Rows with no eligible donor stay aligned.
    """
    n = len(text_ids)
    if len(visual_tokens) != n or (groups is not None and len(groups) != n):
        raise ValueError(f"expected as many visual rows (and groups) as text rows ({n})")
    if not 0.0 <= neg_fraction <= 1.0:
        raise ValueError(f"expected 0 <= neg_fraction <= 1, got {neg_fraction}")
    texts = [list(t) for t in text_ids]
    visuals = [list(v) for v in visual_tokens]
    labels = [1.0] * n
    pick = torch.rand(n, generator=generator) < neg_fraction
    order = torch.randperm(n, generator=generator).tolist()
    for i in range(n):
        if not pick[i]:
            continue
        for j in order:
            if j != i and (groups[j] != groups[i] if groups is not None else visual_tokens[j] != visual_tokens[i]):
                visuals[i] = list(visual_tokens[j])
                labels[i] = 0.0
                break
        order = order[1:] + order[:1]  # rotate, so donors differ from row to row
    return texts, visuals, labels


def mask_tokens(batch: dict[str, torch.Tensor], config: VideoBertConfig,
                generator: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """BERT masking, separately per modality: (masked copy of the batch, labels [B, L]).

    Each text position (batch["text_mask"]) and each visual position (batch["visual_mask"]) is chosen with
    mask_prob, and at least one per modality per row that has the modality; of those chosen 80% become
    [MASK] (text) / visual [MASK], 10% a random token of the same modality, 10% stay. Specials and padding
    are never chosen. labels hold the original combined id at chosen positions and -100 elsewhere; the
    generator is a CPU torch.Generator, so masking is reproducible on any device.
    """
    ids = batch["input_ids"]
    device = ids.device
    ids_cpu = ids.cpu()
    shape = ids_cpu.shape
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    new_ids = ids_cpu.clone()
    for key, mask_id, lo, hi in (("text_mask", config.mask_id, config.first_word_id, config.text_vocab_size),
                                 ("visual_mask", config.visual_mask_id, config.visual_offset,
                                  config.visual_offset + config.visual_vocab_size)):
        eligible = batch[key].cpu()
        score = torch.rand(shape, generator=generator)
        chosen = eligible & (score < config.mask_prob)
        # At least one per row: the eligible position with the lowest score, so short rows still train.
        forced = torch.where(eligible, score, torch.full_like(score, 2.0)).argmin(dim=1)
        has = eligible.any(dim=1)
        chosen[has, forced[has]] = True
        action = torch.rand(shape, generator=generator)
        randoms = torch.randint(lo, hi, shape, generator=generator)
        labels[chosen] = ids_cpu[chosen]
        to_mask = chosen & (action < 0.8)
        to_random = chosen & (action >= 0.8) & (action < 0.9)
        new_ids[to_mask] = mask_id
        new_ids[to_random] = randoms[to_random]
    masked = dict(batch)
    masked["input_ids"] = new_ids.to(device)
    masked["labels"] = labels.to(device)
    return masked, labels.to(device)
