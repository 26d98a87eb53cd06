"""VideoBERT: BERT over `[CLS] text [>] visual [SEP]`, initialised from MiniLM, with MLM and alignment heads."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import nn

from models import checkpoint
from models.videobert_inputs import IGNORE, build_inputs, strip_specials

logger = logging.getLogger(__name__)

FORMAT = "vidx.videobert/1"
MAX_POSITIONS = 512  # MiniLM's position table


@dataclass(frozen=True)
class VideoBertConfig:
    """Sizes, special ids and objective settings. Combined vocabulary layout:

    [0, text_vocab_size)                          WordPiece ids, exactly as the MiniLM tokenizer gives them
    [text_vocab_size, +visual_vocab_size)         visual token v at text_vocab_size + v
    text_vocab_size + visual_vocab_size           `[>]`, the text/video separator
    text_vocab_size + visual_vocab_size + 1       visual [MASK]
    """

    visual_vocab_size: int = 12**4
    text_vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_text_len: int = 48  # WordPiece tokens kept per example, specials not counted
    max_visual_len: int = 16  # visual tokens kept per example
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    mask_prob: float = 0.15
    text_weight: float = 1.0
    visual_weight: float = 1.0
    align_weight: float = 1.0
    # MiniLM / BERT-uncased special ids (the tokenizer's pad/unk/cls/sep/mask token ids).
    pad_id: int = 0
    unk_id: int = 100
    cls_id: int = 101
    sep_id: int = 102
    mask_id: int = 103
    first_word_id: int = 999  # ids below are [PAD], [unusedN], [UNK], [CLS], [SEP], [MASK]: never sampled or predicted

    def __post_init__(self) -> None:
        if self.visual_vocab_size < 1 or self.text_vocab_size < 1:
            raise ValueError(f"expected positive vocabulary sizes, got text {self.text_vocab_size}, "
                             f"visual {self.visual_vocab_size}")
        if self.hidden % self.heads:
            raise ValueError(f"expected hidden divisible by heads, got hidden {self.hidden}, heads {self.heads}")
        if self.layers < 1 or self.intermediate < 1:
            raise ValueError(f"expected layers >= 1 and intermediate >= 1, got {self.layers}, {self.intermediate}")
        if self.max_text_len < 0 or self.max_visual_len < 1 or self.max_len > MAX_POSITIONS:
            raise ValueError(f"expected max_text_len >= 0, max_visual_len >= 1, max_text_len + max_visual_len + 3 "
                             f"<= {MAX_POSITIONS}; got {self.max_text_len}, {self.max_visual_len}")
        if not 0.0 < self.mask_prob < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"expected 0 < mask_prob < 1 and 0 <= dropout < 1, got {self.mask_prob}, {self.dropout}")
        if not 0 <= self.first_word_id < self.text_vocab_size:
            raise ValueError(f"expected first_word_id in [0, {self.text_vocab_size}), got {self.first_word_id}")

    @property
    def visual_offset(self) -> int:
        return self.text_vocab_size

    @property
    def sep_visual_id(self) -> int:
        """`[>]`: ends the text and starts the video segment."""
        return self.text_vocab_size + self.visual_vocab_size

    @property
    def visual_mask_id(self) -> int:
        return self.text_vocab_size + self.visual_vocab_size + 1

    @property
    def vocab_size(self) -> int:
        """Rows of the combined embedding table."""
        return self.text_vocab_size + self.visual_vocab_size + 2

    @property
    def max_len(self) -> int:
        """Longest input: [CLS] text [>] visual [SEP]."""
        return self.max_text_len + self.max_visual_len + 3

    def visual_id(self, v: int) -> int:
        """Combined-vocabulary id of visual token v."""
        if not 0 <= v < self.visual_vocab_size:
            raise ValueError(f"expected a visual token in [0, {self.visual_vocab_size}), got {v}")
        return self.text_vocab_size + v

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoBertConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def visual_id(v: int, config: VideoBertConfig) -> int:
    """Combined-vocabulary id of visual token v (text_vocab_size + v)."""
    return config.visual_id(v)


# ---------------------------------------------------------------------------------------------------------
# The network (BERT, post-LayerNorm, exactly MiniLM's arithmetic so its weights drop in)


class Embeddings(nn.Module):
    def __init__(self, c: VideoBertConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden, padding_idx=c.pad_id)
        self.position = nn.Embedding(MAX_POSITIONS, c.hidden)
        self.token_type = nn.Embedding(2, c.hidden)  # 0: [CLS] and text, 1: video segment
        self.ln = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word(input_ids) + self.position(pos)[None] + self.token_type(token_type_ids)
        return self.drop(self.ln(x))


class Layer(nn.Module):
    def __init__(self, c: VideoBertConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.q = nn.Linear(c.hidden, c.hidden)
        self.k = nn.Linear(c.hidden, c.hidden)
        self.v = nn.Linear(c.hidden, c.hidden)
        self.attn_out = nn.Linear(c.hidden, c.hidden)
        self.attn_ln = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.ffn_in = nn.Linear(c.hidden, c.intermediate)
        self.ffn_out = nn.Linear(c.intermediate, c.hidden)
        self.ffn_ln = nn.LayerNorm(c.hidden, eps=c.layer_norm_eps)
        self.p = c.dropout
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        q, k, v = (t(x).view(b, n, self.heads, h // self.heads).transpose(1, 2) for t in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=self.p if self.training else 0.0)
        x = self.attn_ln(x + self.drop(self.attn_out(a.transpose(1, 2).reshape(b, n, h))))
        return self.ffn_ln(x + self.drop(self.ffn_out(F.gelu(self.ffn_in(x)))))


class VideoBERT(nn.Module):
    """BERT over the combined text + visual vocabulary; MLM head tied to the embeddings; alignment head on [CLS]."""

    def __init__(self, config: VideoBertConfig) -> None:
        super().__init__()
        self.config = config
        self.emb = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.layers))
        # MLM head as in BERT: dense + gelu + LayerNorm, then the (tied) embedding matrix and a bias.
        self.mlm_dense = nn.Linear(config.hidden, config.hidden)
        self.mlm_ln = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        # Alignment head: BERT's pooler (dense + tanh on [CLS]) and one logit, the NSP analogue.
        self.align_dense = nn.Linear(config.hidden, config.hidden)
        self.align_out = nn.Linear(config.hidden, 1)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @property
    def device(self) -> torch.device:
        return self.mlm_bias.device

    @classmethod
    def from_text_encoder(cls, model_dir: str | Path, config: VideoBertConfig,
                          device: str | torch.device = "cpu") -> VideoBERT:
        """A VideoBERT whose text embeddings, positions, types and first `config.layers` layers are MiniLM's.

        Visual rows of the embedding table start from the distribution of the text rows (per-dimension mean
        and std), so after LayerNorm they look like words the encoder has seen; `[>]` starts as `[SEP]`
        and the visual [MASK] as the text [MASK]. The MLM transform and the alignment head start fresh
        (MiniLM ships no MLM head), except the alignment dense layer, which starts as MiniLM's pooler.
        """
        from safetensors.torch import load_file  # a transformers dependency; only needed here

        model_dir = Path(model_dir)
        weights = model_dir / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"expected a BERT model directory with model.safetensors, got {model_dir}")
        sd = load_file(str(weights))
        n_src = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
        src_hidden = sd["embeddings.word_embeddings.weight"].shape[1]
        src_vocab = sd["embeddings.word_embeddings.weight"].shape[0]
        src_inter = sd["encoder.layer.0.intermediate.dense.weight"].shape[0]
        if (config.hidden, config.intermediate, config.text_vocab_size) != (src_hidden, src_inter, src_vocab) \
                or config.layers > n_src:
            raise ValueError(f"expected a config matching {model_dir} (hidden {src_hidden}, intermediate "
                             f"{src_inter}, text vocab {src_vocab}, layers <= {n_src}); got hidden {config.hidden}, "
                             f"intermediate {config.intermediate}, text vocab {config.text_vocab_size}, "
                             f"layers {config.layers}")
        model = cls(config)
        t = config.text_vocab_size
        with torch.no_grad():
            text = sd["embeddings.word_embeddings.weight"]
            word = model.emb.word.weight
            word[:t] = text
            gen = torch.Generator().manual_seed(0)
            noise = torch.randn(config.visual_vocab_size, config.hidden, generator=gen)
            word[t:t + config.visual_vocab_size] = text.mean(0) + noise * text.std(0)
            word[config.sep_visual_id] = text[config.sep_id]
            word[config.visual_mask_id] = text[config.mask_id]
            model.emb.position.weight.copy_(sd["embeddings.position_embeddings.weight"])
            model.emb.token_type.weight.copy_(sd["embeddings.token_type_embeddings.weight"])
            model.emb.ln.weight.copy_(sd["embeddings.LayerNorm.weight"])
            model.emb.ln.bias.copy_(sd["embeddings.LayerNorm.bias"])
            names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                     "attn_out": "attention.output.dense", "attn_ln": "attention.output.LayerNorm",
                     "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_ln": "output.LayerNorm"}
            for i, layer in enumerate(model.layers):
                for ours, theirs in names.items():
                    mod = getattr(layer, ours)
                    mod.weight.copy_(sd[f"encoder.layer.{i}.{theirs}.weight"])
                    mod.bias.copy_(sd[f"encoder.layer.{i}.{theirs}.bias"])
            if "pooler.dense.weight" in sd:
                model.align_dense.weight.copy_(sd["pooler.dense.weight"])
                model.align_dense.bias.copy_(sd["pooler.dense.bias"])
        logger.info("VideoBERT from %s: %d of %d layers, %d visual tokens, %.1f M parameters", model_dir,
                    config.layers, n_src, config.visual_vocab_size, sum(p.numel() for p in model.parameters()) / 1e6)
        return model.to(device)

    def set_visual_embeddings(self, vectors: torch.Tensor) -> None:
        """Overwrite the visual rows of the embedding table ([visual_vocab_size, hidden]), e.g. from tag words."""
        c = self.config
        if tuple(vectors.shape) != (c.visual_vocab_size, c.hidden):
            raise ValueError(f"expected [{c.visual_vocab_size}, {c.hidden}], got {tuple(vectors.shape)}")
        with torch.no_grad():
            self.emb.word.weight[c.visual_offset:c.visual_offset + c.visual_vocab_size] = vectors.to(self.device)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states [B, L, hidden]."""
        if input_ids.ndim != 2 or input_ids.shape[1] > MAX_POSITIONS:
            raise ValueError(f"expected input_ids [B, L] with L <= {MAX_POSITIONS}, got {tuple(input_ids.shape)}")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, L]: which keys each query may attend to
        x = self.emb(input_ids, token_type_ids)
        for layer in self.layers:
            x = layer(x, keep)
        return x

    def _transform(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm_ln(F.gelu(self.mlm_dense(hidden)))

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over WordPiece ids only [..., text_vocab_size]: what a masked text position can be."""
        t = self.config.text_vocab_size
        return F.linear(self._transform(hidden), self.emb.word.weight[:t], self.mlm_bias[:t])

    def visual_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits over visual tokens only [..., visual_vocab_size]: index v is visual token v."""
        c = self.config
        s = slice(c.visual_offset, c.visual_offset + c.visual_vocab_size)
        return F.linear(self._transform(hidden), self.emb.word.weight[s], self.mlm_bias[s])

    def align_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B] logit that the text and the video of each row belong together (from [CLS])."""
        return self.align_out(torch.tanh(self.align_dense(hidden[:, 0]))).squeeze(-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Losses and metrics of a batch from build_inputs (+ mask_tokens' labels under "labels").

        text_mlm / visual_mlm: cross-entropy at masked text / visual positions, over that modality's ids only;
        rows whose pair is a negative (align_labels == 0) are left out of both, since their text does not
        describe their video. align: BCE on rows with align_labels 1 (aligned) or 0 (video from elsewhere);
        -1 rows (text-only, video-only) have no alignment target. A term with no targets in the batch is 0.
        """
        hidden = self(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        c = self.config
        zero = hidden.new_zeros(())
        out: dict[str, torch.Tensor] = {}
        align_labels = batch.get("align_labels")
        if align_labels is None:
            align_labels = torch.full(hidden.shape[:1], -1.0, device=hidden.device)
        labels = batch.get("labels")
        if labels is not None:
            labels = labels.masked_fill((align_labels == 0)[:, None], IGNORE)
            text_pos = (labels >= 0) & (labels < c.text_vocab_size)
            vis_pos = labels >= c.text_vocab_size
            for name, pos, logits_fn, target in (
                    ("text", text_pos, self.text_logits, labels),
                    ("visual", vis_pos, self.visual_logits, labels - c.visual_offset)):
                n = int(pos.sum())
                if n:
                    logits = logits_fn(hidden[pos])  # only the masked rows: the full vocab is 51k wide
                    y = target[pos]
                    out[f"{name}_mlm"] = F.cross_entropy(logits, y)
                    out[f"{name}_acc"] = (logits.argmax(-1) == y).float().mean().detach()
                else:
                    out[f"{name}_mlm"] = zero
                    out[f"{name}_acc"] = zero.detach()
                out[f"n_{name}"] = torch.tensor(n, device=hidden.device)
        else:
            for name in ("text", "visual"):
                out[f"{name}_mlm"], out[f"{name}_acc"], out[f"n_{name}"] = zero, zero.detach(), zero.long()
        has_align = align_labels >= 0
        n_align = int(has_align.sum())
        if n_align:
            logit = self.align_logits(hidden)[has_align]
            y = align_labels[has_align].float()
            out["align"] = F.binary_cross_entropy_with_logits(logit, y)
            out["align_acc"] = ((logit > 0).float() == y).float().mean().detach()
        else:
            out["align"], out["align_acc"] = zero, zero.detach()
        out["n_align"] = torch.tensor(n_align, device=hidden.device)
        out["total"] = c.text_weight * out["text_mlm"] + c.visual_weight * out["visual_mlm"] \
            + c.align_weight * out["align"]
        return out


# ---------------------------------------------------------------------------------------------------------
# Inference


@torch.no_grad()
def fill_text(model: VideoBERT, visual_tokens: Sequence[int], template: str | Sequence[int] | None = None,
              tokenizer: Any = None, n_masks: int = 1, top_k: int = 5) -> list[list[tuple[str | int, float]]]:
    """Video-to-text by template filling: the top_k (word, probability) for each [MASK] of the template.

    template: a string with [MASK] in it (needs a HuggingFace tokenizer, e.g. TextEncoder.tokenizer), e.g.
    "now let me show you how to [MASK] the [MASK]", or WordPiece ids containing config.mask_id, or None for
    n_masks bare [MASK]s. Words are strings when a tokenizer is given, else WordPiece ids. Special and
    [unused] ids are never proposed.
    """
    c = model.config
    if template is None:
        ids = [c.mask_id] * n_masks
    elif isinstance(template, str):
        if tokenizer is None:
            raise ValueError("expected a tokenizer to encode a string template")
        ids = tokenizer(template, add_special_tokens=False)["input_ids"]
    else:
        ids = [int(i) for i in template]
    ids = strip_specials(ids, c)
    if c.mask_id not in ids:
        raise ValueError("expected at least one [MASK] in the template")
    if len(ids) > c.max_text_len:
        raise ValueError(f"expected a template of at most {c.max_text_len} tokens, got {len(ids)}")
    visual = list(visual_tokens)[-c.max_visual_len:]
    model.eval()
    batch = build_inputs([ids], [visual] if visual else None, c, device=model.device)
    hidden = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])[0]
    positions = [1 + i for i, t in enumerate(ids) if t == c.mask_id]
    logits = model.text_logits(hidden[positions])
    logits[:, :c.first_word_id] = float("-inf")
    probs = logits.softmax(-1)
    p, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    out: list[list[tuple[str | int, float]]] = []
    for prow, irow in zip(p.tolist(), idx.tolist()):
        words: list[str | int] = list(tokenizer.convert_ids_to_tokens(irow)) if tokenizer is not None else irow
        out.append(list(zip(words, prow)))
    return out


@torch.no_grad()
def predict_next_visual(model: VideoBERT, visual_tokens: Sequence[int], n: int = 1,
                        text_ids: Sequence[int] | None = None) -> list[int]:
    """The n most likely next visual tokens after visual_tokens, one at a time, left to right.

    Each step appends one visual [MASK] after the tokens so far (the last max_visual_len - 1 of them) and
    commits its argmax, so later predictions condition on earlier ones; a single trailing mask is also the
    case training sees most (several adjacent masks are rare at mask_prob 0.15). Optional text_ids (the
    clip's speech) condition it too.
    """
    c = model.config
    if n < 1:
        raise ValueError(f"expected n >= 1, got {n}")
    if not list(visual_tokens) and not text_ids:
        raise ValueError("expected visual_tokens or text_ids to predict from")
    text = strip_specials(text_ids, c)[:c.max_text_len] if text_ids else []
    tokens = [int(v) for v in visual_tokens]
    model.eval()
    for _ in range(n):
        context = tokens[len(tokens) - (c.max_visual_len - 1):] if c.max_visual_len > 1 else []
        batch = build_inputs([text] if text else None, [context + [0]], c, device=model.device)
        pos = 2 + len(text) + len(context)  # [CLS] text [>] context -> the appended slot
        ids = batch["input_ids"].clone()
        ids[0, pos] = c.visual_mask_id
        hidden = model(ids, batch["token_type_ids"], batch["attention_mask"])[0]
        tokens.append(int(model.visual_logits(hidden[pos]).argmax()))
    return tokens[len(tokens) - n:]


@torch.no_grad()
def align_scores(model: VideoBERT, text_ids: Sequence[Sequence[int]], visual_tokens: Sequence[Sequence[int]],
                 batch_size: int = 64) -> torch.Tensor:
    """float [N] probabilities (sigmoid of the alignment head) that each text goes with its video."""
    if len(text_ids) != len(visual_tokens):
        raise ValueError(f"expected as many texts as videos, got {len(text_ids)} and {len(visual_tokens)}")
    model.eval()
    out = []
    for s in range(0, len(text_ids), batch_size):
        batch = build_inputs(text_ids[s:s + batch_size], visual_tokens[s:s + batch_size], model.config,
                             device=model.device)
        hidden = model(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        out.append(torch.sigmoid(model.align_logits(hidden)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def align_score(model: VideoBERT, text_ids: Sequence[int], visual_tokens: Sequence[int]) -> float:
    """Probability that the text and the visual tokens belong together; reranks search results."""
    if not list(text_ids) or not list(visual_tokens):
        raise ValueError("expected non-empty text_ids and visual_tokens")
    return float(align_scores(model, [text_ids], [visual_tokens])[0])


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(file: IO[bytes], model: VideoBERT, config: VideoBertConfig | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """{format, config dict, state_dict, extra} to an open binary file (the caller opens the destination);
    extra must hold plain types (numbers, str, lists, dicts, tensors) so weights_only loading can read it."""
    checkpoint.save(file, FORMAT, config or model.config, model, extra)


def load_checkpoint(source: checkpoint.Source, device: str | torch.device = "cpu"
                    ) -> tuple[VideoBERT, VideoBertConfig, dict[str, Any]]:
    """(model in eval mode on device, config, extra) from save_checkpoint's file, loaded weights_only."""
    return checkpoint.load(source, FORMAT, "VideoBERT", VideoBertConfig.from_dict, VideoBERT, device)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["VideoBertConfig", "VideoBERT", "fill_text", "predict_next_visual", "align_score", "align_scores",
           "save_checkpoint", "load_checkpoint", "visual_id", "parameter_count"]
