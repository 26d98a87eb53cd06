"""CBT: a transformer over continuous clip features, trained with masked-feature NCE and cross-modal NCE to text."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import checkpoint

logger = logging.getLogger(__name__)

FORMAT = "vidx.cbt/1"


@dataclass(frozen=True)
class CBTConfig:
    feature_dim: int = 1280  # EfficientNet-Lite pooled clip features
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    intermediate: int = 1024
    text_dim: int = 384  # MiniLM sentence vectors
    max_len: int = 16  # clips per window
    mask_prob: float = 0.15
    temperature: float = 0.07  # InfoNCE softmax temperature (cosine similarities / temperature)
    dropout: float = 0.1
    masked_weight: float = 1.0
    cross_weight: float = 1.0
    # Per-clip cross-modal term: makes each clip's own vector (what search indexes) text-like, not only the window's.
    clip_weight: float = 0.5

    def __post_init__(self) -> None:
        if min(self.feature_dim, self.hidden, self.layers, self.heads, self.intermediate, self.text_dim,
               self.max_len) < 1:
            raise ValueError("expected positive sizes in CBTConfig")
        if self.hidden % self.heads:
            raise ValueError(f"expected hidden divisible by heads, got {self.hidden}, {self.heads}")
        if not 0.0 < self.mask_prob < 1.0 or not 0.0 <= self.dropout < 1.0 or self.temperature <= 0:
            raise ValueError(f"expected 0 < mask_prob < 1, 0 <= dropout < 1, temperature > 0; got {self.mask_prob}, "
                             f"{self.dropout}, {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CBTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _check(features: torch.Tensor, padding_mask: torch.Tensor | None, c: CBTConfig) -> torch.Tensor:
    """The padding mask (bool [B, T], True = padding), validated; all False when None."""
    if features.ndim != 3 or features.shape[2] != c.feature_dim or not 1 <= features.shape[1] <= c.max_len:
        raise ValueError(f"expected features [B, T <= {c.max_len}, {c.feature_dim}], got {tuple(features.shape)}")
    if padding_mask is None:
        return torch.zeros(features.shape[:2], dtype=torch.bool, device=features.device)
    if padding_mask.shape != features.shape[:2]:
        raise ValueError(f"expected padding_mask {tuple(features.shape[:2])}, got {tuple(padding_mask.shape)}")
    padding_mask = padding_mask.bool()
    if bool(padding_mask.all(dim=1).any()):
        raise ValueError("expected at least one real (non-padding) clip per window")
    return padding_mask


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of matching row i of a to row i of b among all rows of b (a, b unit vectors); (loss, R@1)."""
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean().detach()


class CBT(nn.Module):
    """Features [B, T, F] -> contextual clip states [B, T, hidden] (pre-LN transformer encoder).

    Inputs are raw clip features (the feature store's 1280-d EfficientNet means, any scale): a LayerNorm on
    the input makes the scale irrelevant. Heads: `predict` (masked clip -> its feature's code), `target`
    (a feature -> its code, the NCE "noise or real" side), `to_text` (a clip state -> MiniLM space).
    """

    def __init__(self, config: CBTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.in_ln = nn.LayerNorm(c.feature_dim)
        self.in_proj = nn.Linear(c.feature_dim, c.hidden)
        self.position = nn.Parameter(torch.zeros(c.max_len, c.hidden))
        self.mask_embedding = nn.Parameter(torch.zeros(c.hidden))
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(c.hidden, c.heads, c.intermediate, c.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # enable_nested_tensor off: the fast path would change numerics between train and eval.
        self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.out_ln = nn.LayerNorm(c.hidden)
        self.predict = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.hidden))
        self.target = nn.Sequential(nn.LayerNorm(c.feature_dim), nn.Linear(c.feature_dim, c.hidden))
        self.to_text = nn.Sequential(nn.Linear(c.hidden, c.hidden), nn.GELU(), nn.Linear(c.hidden, c.text_dim))
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.mask_embedding, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.position.device

    def forward(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None,
                masked: torch.Tensor | None = None) -> torch.Tensor:
        """Clip states [B, T, hidden]. padding_mask: bool [B, T], True where a window has no clip.
        masked: bool [B, T], clips whose input is replaced by the learned mask embedding."""
        padding_mask = _check(features, padding_mask, self.config)
        x = self.in_proj(self.in_ln(features.float()))
        if masked is not None:
            x = torch.where(masked[..., None], self.mask_embedding.to(x.dtype), x)
        x = self.drop(x + self.position[:x.shape[1]])
        return self.out_ln(self.encoder(x, src_key_padding_mask=padding_mask))

    def _text_space(self, states: torch.Tensor) -> torch.Tensor:
        return self.to_text(states)

    def embed_clips(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, text_dim] unit vectors, one per clip, in MiniLM's sentence space (padding rows are zero)."""
        padding_mask = _check(features, padding_mask, self.config)
        v = F.normalize(self._text_space(self(features, padding_mask)), dim=-1)
        return v.masked_fill(padding_mask[..., None], 0.0)

    def embed_window(self, features: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, text_dim] unit vector per window: the mean of its clips' text-space vectors, renormalised."""
        padding_mask = _check(features, padding_mask, self.config)
        return self._pool(self._text_space(self(features, padding_mask)), padding_mask)

    @staticmethod
    def _pool(v: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        keep = (~padding_mask).float()[..., None]
        return F.normalize((v * keep).sum(1) / keep.sum(1).clamp(min=1.0), dim=-1)

    # -- objectives -----------------------------------------------------------------------------------------

    def choose_masked(self, padding_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """bool [B, T]: each real clip with mask_prob, at least one per window, never padding (CPU generator)."""
        pad = padding_mask.cpu()
        score = torch.rand(pad.shape, generator=generator)
        chosen = ~pad & (score < self.config.mask_prob)
        forced = torch.where(pad, torch.full_like(score, 2.0), score).argmin(dim=1)
        chosen[torch.arange(pad.shape[0]), forced] = True
        # A window of one clip would then have nothing left to see: it still trains the target side.
        return chosen.to(padding_mask.device)

    def masked_nce(self, features: torch.Tensor, padding_mask: torch.Tensor | None,
                   generator: torch.Generator, masked: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """CBT's visual loss: each masked clip's state must pick its own feature's code among the codes of all
        real clips in the batch (InfoNCE, cosine / temperature). (loss, accuracy of that pick)."""
        padding_mask = _check(features, padding_mask, self.config)
        masked = self.choose_masked(padding_mask, generator) if masked is None else masked
        states = self(features, padding_mask, masked)
        return self._masked_nce(features, padding_mask, masked, states)

    def _masked_nce(self, features: torch.Tensor, padding_mask: torch.Tensor, masked: torch.Tensor,
                    states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = ~padding_mask
        codes = F.normalize(self.target(features.float()[real]), dim=-1)  # [N_real, hidden]: positive + negatives
        pred = F.normalize(self.predict(states[masked]), dim=-1)  # [N_masked, hidden]
        # Where each masked clip sits among the real clips (row-major order is shared by both selections).
        index = torch.cumsum(real.flatten().long(), 0).view_as(real) - 1
        target = index[masked]
        logits = pred @ codes.T / self.config.temperature
        return F.cross_entropy(logits, target), (logits.argmax(1) == target).float().mean().detach()

    def cross_modal_nce(self, features: torch.Tensor, padding_mask: torch.Tensor | None, text_emb: torch.Tensor,
                        text_valid: torch.Tensor | None = None, states: torch.Tensor | None = None
                        ) -> dict[str, torch.Tensor]:
        """InfoNCE both ways between each window and the (frozen) MiniLM vector of its aligned sentence.

        text_emb: [B, text_dim]; text_valid: bool [B], windows that have a sentence (default all). The
        in-batch texts are the negatives, so a batch should not hold the same sentence twice. Also a
        per-clip term (every real clip against all texts) so each clip's own vector is text-like.
        Returns cross (window loss, both directions averaged), clip (per-clip loss), r1 (window -> text R@1).
        """
        padding_mask = _check(features, padding_mask, self.config)
        c = self.config
        if text_emb.ndim != 2 or text_emb.shape != (features.shape[0], c.text_dim):
            raise ValueError(f"expected text_emb [{features.shape[0]}, {c.text_dim}], got {tuple(text_emb.shape)}")
        valid = torch.ones(features.shape[0], dtype=torch.bool, device=features.device) if text_valid is None \
            else text_valid.bool()
        states = self(features, padding_mask) if states is None else states
        v = self._text_space(states)
        zero = states.new_zeros(())
        if int(valid.sum()) < 2:  # one candidate is no contrast at all
            return {"cross": zero, "clip": zero, "r1": zero.detach(), "r1_text_to_video": zero.detach()}
        t = F.normalize(text_emb.float()[valid], dim=-1)
        w = self._pool(v[valid], padding_mask[valid])
        l_vt, r1 = info_nce(w, t, c.temperature)
        l_tv, r1_tv = info_nce(t, w, c.temperature)
        pad = padding_mask[valid]
        clips = F.normalize(v[valid][~pad], dim=-1)  # [N_real, text_dim]
        owner = torch.arange(t.shape[0], device=t.device)[:, None].expand_as(pad)[~pad]
        l_clip = F.cross_entropy(clips @ t.T / c.temperature, owner)
        return {"cross": (l_vt + l_tv) / 2, "clip": l_clip, "r1": r1, "r1_text_to_video": r1_tv}

    def loss(self, features: torch.Tensor, padding_mask: torch.Tensor | None, text_emb: torch.Tensor | None,
             generator: torch.Generator, text_valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """All objectives on one batch: masked_nce (and masked_acc) on a masked pass, the cross-modal terms on an
        unmasked pass (so the window vector trained is the one search uses); total; r1 for metrics."""
        padding_mask = _check(features, padding_mask, self.config)
        c = self.config
        out: dict[str, torch.Tensor] = {}
        out["masked_nce"], out["masked_acc"] = self.masked_nce(features, padding_mask, generator)
        if text_emb is not None:
            out.update(self.cross_modal_nce(features, padding_mask, text_emb, text_valid))
        else:
            zero = out["masked_nce"].new_zeros(())
            out.update({"cross": zero, "clip": zero, "r1": zero.detach(), "r1_text_to_video": zero.detach()})
        out["total"] = c.masked_weight * out["masked_nce"] + c.cross_weight * out["cross"] \
            + c.clip_weight * out["clip"]
        return out


# ---------------------------------------------------------------------------------------------------------
# Whole videos


def windows(n_clips: int, max_len: int) -> list[tuple[int, int]]:
    """Half-overlapping [start, end) windows covering 0..n_clips (a short video is one window)."""
    if n_clips < 1 or max_len < 1:
        raise ValueError(f"expected n_clips >= 1 and max_len >= 1, got {n_clips}, {max_len}")
    if n_clips <= max_len:
        return [(0, n_clips)]
    stride = max(1, max_len // 2)
    starts = list(range(0, n_clips - max_len + 1, stride))
    if starts[-1] + max_len < n_clips:
        starts.append(n_clips - max_len)
    return [(s, s + max_len) for s in starts]


@torch.no_grad()
def embed_video(model: CBT, features: np.ndarray | torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """float32 [N, text_dim] unit vectors for all N clips of one video, in order.

    The video is cut into half-overlapping windows of max_len clips; a clip seen by two windows gets the
    normalised mean of its two vectors, so no clip sits only at a window's edge.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != model.config.feature_dim or x.shape[0] == 0:
        raise ValueError(f"expected features [N > 0, {model.config.feature_dim}], got {tuple(x.shape)}")
    model.eval()
    n, length = x.shape[0], model.config.max_len
    spans = windows(n, length)
    acc = torch.zeros(n, model.config.text_dim)
    for b in range(0, len(spans), batch_size):
        part = spans[b:b + batch_size]
        t = max(e - s for s, e in part)
        feats = torch.zeros(len(part), t, x.shape[1])
        pad = torch.ones(len(part), t, dtype=torch.bool)
        for i, (s, e) in enumerate(part):
            feats[i, :e - s] = x[s:e]
            pad[i, :e - s] = False
        v = model.embed_clips(feats.to(model.device), pad.to(model.device)).float().cpu()
        for i, (s, e) in enumerate(part):
            acc[s:e] += v[i, :e - s]
    return F.normalize(acc, dim=-1).numpy()


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(file: IO[bytes], model: CBT, config: CBTConfig | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """{format, config dict, state_dict, extra} (extra: plain types only) to an open binary file (the caller
    opens the destination)."""
    checkpoint.save(file, FORMAT, config or model.config, model, extra)


def load_checkpoint(source: checkpoint.Source, device: str | torch.device = "cpu") -> tuple[CBT, CBTConfig, dict[str, Any]]:
    """(model in eval mode on device, config, extra), loaded weights_only."""
    return checkpoint.load(source, FORMAT, "CBT", CBTConfig.from_dict, CBT, device)
