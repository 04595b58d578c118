"""Learning-rate schedules as multipliers of the peak lr: linear warm-up, then cosine (or linear) decay to a
floor ``min_lr_ratio`` (UniTok: 0.1x) reached at ``total_steps``.

The multiplier for optimiser step ``s`` (0-based: the lr used by the s-th update) is
  warm-up  (s < W):   (s + 1) / W
  cosine   (s >= W):  r + (1 - r) * 0.5 * (1 + cos(pi * t)),  t = (s - W) / max(1, T - W), clipped to [0, 1]
  linear   (s >= W):  r + (1 - r) * (1 - t)

A run with a wall-clock limit (``TrainConfig.max_minutes``) follows the fraction of its budget used: the
schedule reads the position ``x = max(s, f * T)`` on the step axis, ``f`` the fraction of the time budget
spent so far, so warm-up and decay are laid out over whichever of the step budget or the time budget runs
out first, and a run stopped by the clock ends at the floor ``r``. Without a time limit ``x = s``.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from polytok.train.train_config import OptimConfig


def lr_multiplier(
    step: float, total_steps: int, warmup_steps: int, min_lr_ratio: float, kind: str = "cosine"
) -> float:
    """Multiplier of the peak learning rate at position ``step`` (the 0-based optimiser step, or a
    fractional position further on when the time budget is ahead of the steps)."""
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
    """Picklable multiplier function (``LambdaLR`` state dicts keep callable objects' ``__dict__``).

    ``clock_position`` is where the time budget stands on the step axis (``f * total_steps``); the
    engine moves it forward in runs with a time limit, and it is saved with the scheduler's state.
    """

    clock_position: float = 0.0  # class default: state saved before this field existed still loads

    def __init__(self, total_steps: int, warmup_steps: int, min_lr_ratio: float, kind: str) -> None:
        lr_multiplier(0, total_steps, warmup_steps, min_lr_ratio, kind)  # validates ``kind``
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.min_lr_ratio, self.kind = min_lr_ratio, kind

    def __call__(self, step: int) -> float:
        position = max(float(step), self.clock_position) if self.clock_position else step
        return lr_multiplier(position, self.total_steps, self.warmup_steps, self.min_lr_ratio, self.kind)


def set_time_fraction(scheduler: LambdaLR, fraction: float) -> None:
    """Tell ``scheduler`` that ``fraction`` (clipped to [0, 1]) of the time budget is spent; it takes
    effect at the next ``scheduler.step()``."""
    for fn in scheduler.lr_lambdas:
        if isinstance(fn, WarmupDecay):
            fn.clock_position = min(1.0, max(0.0, fraction)) * fn.total_steps


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` stepped once per optimiser step, skipped steps included (lr is a function of step)."""
    fn = WarmupDecay(total_steps, config.warmup_steps, config.min_lr_ratio, config.schedule)
    return LambdaLR(optimizer, fn)
