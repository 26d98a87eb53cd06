"""The library as the models see it (visual tokens, token ids, sentence vectors) and the VideoBERT and CBT batches drawn from it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.training.data import TRAIN, Pair, Sequence_, TrainingData

Example = Pair | Sequence_


@dataclass
class Corpus:
    """Training data with what the batches need per example: visual tokens (once the vocabulary exists),
    the encoder's token ids of every text, and a cache of MiniLM sentence vectors."""

    data: TrainingData
    encoder: Any  # models.text_encoder.TextEncoder: tokenises and embeds sentences
    split_block_seconds: float
    text_ids: dict[str, list[int]]
    tokens: list[np.ndarray | None] = field(default_factory=list)  # per media; None without video
    _vectors: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, data: TrainingData, encoder: Any, split_block_seconds: float) -> Corpus:
        texts = sorted({p.text for p in data.pairs} | {p.text for p in data.texts})
        return cls(data, encoder, split_block_seconds, dict(zip(texts, encoder.tokenize(texts))) if texts else {})

    @property
    def text_count(self) -> int:
        return len(self.text_ids)

    def visual(self, ex: Example) -> list[int]:
        """The visual tokens of an example's clips."""
        tokens = self.tokens[ex.media]
        if tokens is None:
            raise ValueError(f"example {ex} has no video")
        return tokens[ex.first : ex.last + 1].tolist()

    def unit(self, ex: Example) -> tuple[int, int]:
        """The split unit (file, block) an example starts in: a negative's video must come from another one."""
        start = float(self.data.media[ex.media].clip_times[ex.first, 0])
        return ex.media, int(start // self.split_block_seconds)

    def text_vectors(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """MiniLM vectors of these texts (and of every text asked for before), each encoded once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            self._vectors.update(zip(missing, self.encoder.encode(missing)))
        return self._vectors

    def training_concepts(self) -> dict[int, list[str]]:
        """Per visual token, the top concept name of each training clip it was given to (in library order)."""
        names: dict[int, list[str]] = {}
        for m, tokens in zip(self.data.media, self.tokens):
            for row, tok in enumerate(tokens.tolist() if tokens is not None else []):
                if m.concepts[row] and m.clip_split[row] == TRAIN:
                    names.setdefault(tok, []).append(str(m.concepts[row][0][0]))
        return names

    def windows(self, examples: Sequence[Example], max_len: int, feature_dim: int, device: str) -> tuple[Any, Any]:
        """CBT input for examples: features [B, T, F] and the padding mask [B, T] (True = no clip)."""
        import torch

        t = min(max_len, max(ex.last - ex.first + 1 for ex in examples))
        feats = torch.zeros(len(examples), t, feature_dim)
        pad = torch.ones(len(examples), t, dtype=torch.bool)
        for i, ex in enumerate(examples):
            f = torch.from_numpy(np.asarray(self.data.features(ex), np.float32))[:max_len]
            feats[i, : len(f)] = f
            pad[i, : len(f)] = False
        return feats.to(device), pad.to(device)


def videobert_batch(corpus: Corpus, split: str, rng: np.random.Generator, gen: Any, n: int, config: Any,
                    device: str) -> dict[str, Any]:
    """The paper's mix, masked: text-video pairs (half of them with the video of another unit), video-only, text-only."""
    from models.videobert_inputs import build_inputs, mask_tokens, shuffle_negatives

    data = corpus.data
    pairs = [p for p in data.pairs if p.split == split]
    seqs = [s for s in data.sequences if s.split == split]
    texts = [p for p in data.texts if p.split == split] or pairs
    counts = {"pairs": n // 2 if pairs else 0, "seqs": n // 4 if seqs else 0}
    counts["texts"] = n - counts["pairs"] - counts["seqs"] if texts else 0
    if not texts:
        counts["pairs" if pairs else "seqs"] += n - counts["pairs"] - counts["seqs"]
    chosen = [pairs[i] for i in rng.integers(0, len(pairs), counts["pairs"])] if counts["pairs"] else []
    t_ids, v_ids, labels = shuffle_negatives(
        [corpus.text_ids[p.text] for p in chosen], [corpus.visual(p) for p in chosen], gen, 0.5,
        groups=[corpus.unit(p) for p in chosen]) if chosen else ([], [], [])
    rows_t: list[list[int] | None] = list(t_ids)
    rows_v: list[list[int] | None] = list(v_ids)
    align = list(labels)
    for i in rng.integers(0, len(seqs), counts["seqs"]) if counts["seqs"] else []:
        rows_t.append(None)
        rows_v.append(corpus.visual(seqs[i]))
        align.append(-1.0)
    for i in rng.integers(0, len(texts), counts["texts"]) if counts["texts"] else []:
        rows_t.append(corpus.text_ids[texts[i].text])
        rows_v.append(None)
        align.append(-1.0)
    batch = build_inputs(rows_t, rows_v, config, align_labels=align, device=device)
    masked, _ = mask_tokens(batch, config, gen)
    return masked


def cbt_batch(corpus: Corpus, split: str, rng: np.random.Generator, n: int, config: Any,
              device: str) -> tuple[Any, ...]:
    """(features, padding, text vectors, which rows have a text): up to n/2 pairs with distinct texts, the rest
    video-only sequences."""
    import torch

    pairs = [p for p in corpus.data.pairs if p.split == split]
    seqs = [s for s in corpus.data.sequences if s.split == split]
    chosen: list[Pair] = []
    seen: set[str] = set()
    if pairs:
        for i in rng.permutation(len(pairs)).tolist():
            if pairs[i].text not in seen:  # in-batch texts are each other's negatives: no repeats
                chosen.append(pairs[i])
                seen.add(pairs[i].text)
            if len(chosen) >= n // 2:
                break
    examples: list[Example] = list(chosen)
    if seqs:
        examples += [seqs[i] for i in rng.integers(0, len(seqs), n - len(chosen))]
    feats, pad = corpus.windows(examples, config.max_len, config.feature_dim, device)
    emb = corpus.text_vectors([p.text for p in chosen])
    text = torch.zeros(len(examples), config.text_dim)
    for i, p in enumerate(chosen):
        text[i] = torch.from_numpy(emb[p.text])
    valid = torch.zeros(len(examples), dtype=torch.bool)
    valid[: len(chosen)] = True
    return feats, pad, text.to(device), valid.to(device)
