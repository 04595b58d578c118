"""Learning-rate schedules as multipliers of the peak lr: linear warm-up, then cosine (or linear) decay to a
floor ``min_lr_ratio`` (UniTok: 0.1x) reached at ``total_steps``.

The multiplier for optimiser step ``s`` (0-based: the lr used by the s-th update) is
  warm-up  (s < W):   (s + 1) / W
  cosine   (s >= W):  r + (1 - r) * 0.5 * (1 + cos(pi * t)),  t = (s - W) / max(1, T - W), clipped to [0, 1]
  linear   (s >= W):  r + (1 - r) * (1 - t)
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from polytok.train.train_config import OptimConfig


def lr_multiplier(
    step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float, kind: str = "cosine"
) -> float:
    """Multiplier of the peak learning rate for 0-based optimiser step ``step``."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if kind == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "linear":
        return min_lr_ratio + (1.0 - min_lr_ratio) * (1.0 - t)
    raise ValueError(f"unknown schedule {kind!r}; expected 'cosine', 'linear' or 'constant'")


class WarmupDecay:
    """Picklable multiplier function (``LambdaLR`` state dicts keep callable objects' ``__dict__``)."""

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float, kind: str) -> None:
        lr_multiplier(0, total_steps, warmup_steps, min_lr_ratio, kind)  # validates ``kind``
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.min_lr_ratio, self.kind = min_lr_ratio, kind

    def __call__(self, step: int) -> float:
        return lr_multiplier(step, self.total_steps, self.warmup_steps, self.min_lr_ratio, self.kind)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimiser step, skipped steps included (lr is a function of step)."""
    fn = WarmupDecay(total_steps, config.warmup_steps, config.min_lr_ratio, config.schedule)
    return LambdaLR(optimizer, fn)
