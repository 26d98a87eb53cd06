"""Model checkpoints: {format, config, state_dict, extra} and resumable training states, torch.save'd to a file object and loaded weights_only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

Source = str | Path | IO[bytes]


class _Config(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


C = TypeVar("C")
M = TypeVar("M", bound=nn.Module)


def plain(value: Any, where: str = "extra") -> Any:
    """A copy of value that weights_only loading accepts: numbers, str, bool, None, tensors, lists and dicts.

    numpy scalars and arrays become Python numbers and lists; anything else is a ValueError now, at save
    time, rather than an unreadable checkpoint later.
    """
    # numpy scalars first: np.float64 and np.str_ subclass float and str, and weights_only loading rejects them
    if isinstance(value, np.generic):
        return plain(value.item(), where)
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), where)
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bool, int, float, str)):  # other subclasses (IntEnum, ...): the plain base value
        for base in (bool, int, float, str):
            if isinstance(value, base):
                return base(value)
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where}: expected numbers, strings, tensors, lists or dicts, got {type(value).__name__}")


def save(file: IO[bytes], fmt: str, config: _Config, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Write {format, config dict, state_dict on the CPU, extra as plain types} to an open binary file.

    The caller owns the file: it opens the destination (atomically, for files others read) and closes it.
    """
    payload = {"format": fmt, "config": config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "extra": plain(extra or {})}
    torch.save(payload, file)


def load(source: Source, fmt: str, what: str, config_from: Callable[[dict[str, Any]], C],
         build: Callable[[C], M], device: str | torch.device = "cpu") -> tuple[M, C, dict[str, Any]]:
    """(model in eval mode on device, config, extra) from a file written by :func:`save`, loaded weights_only.

    ``what`` names the model in the ValueError for a file of another format ("... is not a CBT checkpoint").
    """
    payload = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        name = source if isinstance(source, (str, Path)) else getattr(source, "name", "the file")
        raise ValueError(f"{name} is not a {what} checkpoint (expected format {fmt})")
    config = config_from(payload["config"])
    model = build(config)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), config, payload["extra"]


def save_training_state(file: IO[bytes], model: nn.Module, optimizer: Any, scheduler: Any, step: int,
                        seconds: float) -> None:
    """A resumable training state (weights, optimiser, schedule, next step, seconds spent) to an open binary file."""
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "seconds": seconds}, file)


def load_training_state(source: Source, model: nn.Module, optimizer: Any, scheduler: Any) -> tuple[int, float]:
    """Restore a state written by :func:`save_training_state` in place; returns (next step, seconds spent so far)."""
    saved = torch.load(source, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return int(saved["step"]), float(saved.get("seconds", 0.0))
