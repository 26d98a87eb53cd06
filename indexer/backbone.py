"""Frame encoder: per-frame EfficientNet-Lite features and ImageNet probabilities (torch; imported only where frames are encoded)."""

from __future__ import annotations

import logging
import time
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from models.efficientnet import FEATURE_DIM, INPUT_SIZE, NUM_CLASSES, EfficientNetLite, efficientnet_lite, preprocess

logger = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def load_backbone(name: str = "lite0", threads: int = 0) -> EfficientNetLite:
    """The pretrained backbone, built once per process (and per name/threads) on first use.

    ``threads`` > 0 sets torch's intra-op thread count, which is process-wide; 0 keeps
    torch's default (all cores).
    """
    if threads > 0:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    # Inference only, so fold BatchNorm into the convs: same outputs, ~1.6x the frames/s on 2 cores.
    model = efficientnet_lite(name, pretrained=True).fuse_bn()
    logger.info("loaded EfficientNet-%s in %.2f s (%d torch threads)", name, time.perf_counter() - t0,
                torch.get_num_threads())
    return model


def center_square(frames: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 (B,3,H,W) -> uint8 (B,3,size,size): crop the short side's centre square, then resize."""
    h, w = frames.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    frames = frames[..., top:top + s, left:left + s]
    if s == size:  # the decoder already scales the short side to 224: nothing to resample
        return frames
    # Antialiased bilinear straight on uint8: torch has a fast channels-last path for it,
    # and it never holds a float copy of a full-resolution batch.
    frames = frames.contiguous(memory_format=torch.channels_last)
    return F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class FrameEncoder:
    """Frames -> (1280-d pooled features, ImageNet softmax probabilities), batched, CPU."""

    def __init__(self, name: str = "lite0", batch_size: int = 16, threads: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.batch_size = batch_size
        self.threads = threads

    @property
    def model(self) -> EfficientNetLite:
        # Resolved on first encode, not in __init__, so building an encoder stays cheap.
        return load_backbone(self.name, self.threads)

    def encode(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB (B,H,W,3), any H,W -> float32 features (B,1280), float32 probabilities (B,1000)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames shaped (B,H,W,3), got {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        n = len(frames)
        features = np.empty((n, FEATURE_DIM), np.float32)
        probs = np.empty((n, NUM_CLASSES), np.float32)
        if n == 0:
            return features, probs
        model = self.model
        size = model.config.resolution
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                part = frames[i:i + self.batch_size]
                if not part.flags.writeable:  # decoded buffers are often read-only; torch warns on those
                    part = part.copy()
                chunk = torch.from_numpy(part).permute(0, 3, 1, 2)
                x = preprocess(center_square(chunk, size).permute(0, 2, 3, 1))
                # oneDNN's convs run fastest on NHWC memory, which is what frames already are.
                x = x.contiguous(memory_format=torch.channels_last)
                f = model.forward_features(x)
                features[i:i + len(f)] = f.numpy()
                probs[i:i + len(f)] = model.classify(f).softmax(dim=-1).numpy()
        return features, probs
