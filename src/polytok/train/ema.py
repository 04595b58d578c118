"""Exponential moving average of model weights.

Shadows every floating-point parameter and buffer in fp32 (integer buffers, e.g. counters, are copied).
Works with plain, DDP and FSDP models: shadows mirror the local tensors (for FSDP those are the rank's
shards as DTensors), and ``state_dict()`` gathers full tensors, so checkpoints hold complete weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, _ in _tracked(model)]
        self.shadow = {
            n: t.detach().clone().float() if t.is_floating_point() else t.detach().clone()
            for n, t in _tracked(model)
        }

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """shadow <- decay * shadow + (1 - decay) * weights (``decay=0`` copies the weights)."""
        d = self.decay if decay is None else decay
        floats_s, floats_m = [], []
        for name, t in _tracked(model):
            s = self.shadow[name]
            if s.is_floating_point():
                floats_s.append(s)
                floats_m.append(t.detach().float())
            else:
                s.copy_(t)
        if floats_s:
            torch._foreach_lerp_(floats_s, floats_m, 1.0 - d)

    def state_dict(self) -> dict[str, Tensor]:
        """Full (gathered) fp32 tensors on the CPU; collective under FSDP: call on every rank."""
        return {n: _full(t).detach().cpu().contiguous() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = [n for n in self.shadow if n not in state]
        unexpected = [n for n in state if n not in self.shadow]
        if missing or unexpected:
            raise KeyError(f"EMA state mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, s in self.shadow.items():
            value = state[name].to(dtype=s.dtype)
            if hasattr(s, "device_mesh"):  # FSDP shard: take this rank's piece of the full tensor
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(s.device), s.device_mesh, s.placements)
                s.to_local().copy_(value.to_local())
            else:
                s.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (same wrapping as at construction)."""
        for name, t in _tracked(model):
            t.copy_(self.shadow[name])


def _tracked(model: nn.Module):
    yield from model.named_parameters()
    yield from model.named_buffers()
