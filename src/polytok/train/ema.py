"""Exponential moving average of model weights.

Shadows every floating-point parameter and persistent buffer in fp32 (integer buffers, e.g. counters,
are copied), except those under ``exclude`` prefixes (frozen third-party modules such as a teacher).
Works with plain, DDP and FSDP models: shadows mirror the local tensors (for FSDP those are the rank's
shards as DTensors), and ``state_dict()`` gathers full tensors, so checkpoints hold complete weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float, exclude: Sequence[str] = ()) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.exclude = tuple(exclude)
        self.names = [n for n, _ in self._tracked(model)]
        self.shadow = {
            n: t.detach().clone().float() if t.is_floating_point() else t.detach().clone()
            for n, t in self._tracked(model)
        }

    def _tracked(self, model: nn.Module) -> Iterator[tuple[str, Tensor]]:
        for name, t in _tracked(model):
            if not name.startswith(self.exclude):
                yield name, t

    def _shadow_of(self, name: str) -> Tensor:
        if name not in self.shadow:
            raise ValueError(
                f"the model gained the tensor {name!r} after its EMA was built; build lazily created "
                "modules (e.g. Tokenizer.load_teacher()) before the Trainer"
            )
        return self.shadow[name]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """shadow <- decay * shadow + (1 - decay) * weights (``decay=0`` copies the weights)."""
        d = self.decay if decay is None else decay
        # one fused lerp per kind: under FSDP parameters are DTensors, buffers plain tensors, and a
        # foreach op takes no mixture
        floats: dict[bool, tuple[list[Tensor], list[Tensor]]] = {}
        for name, t in self._tracked(model):
            s = self._shadow_of(name)
            if s.is_floating_point():
                shadows, weights = floats.setdefault(hasattr(s, "device_mesh"), ([], []))
                shadows.append(s)
                weights.append(t.detach().float())
            else:
                s.copy_(t)
        for shadows, weights in floats.values():
            torch._foreach_lerp_(shadows, weights, 1.0 - d)

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
        for name, t in self._tracked(model):
            t.copy_(self._shadow_of(name))


def _tracked(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Parameters and persistent buffers: what ``state_dict()`` holds (constants such as a pixel mean
    registered with ``persistent=False`` are neither averaged nor stored)."""
    yield from model.named_parameters()
    for module_name, module in model.named_modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                yield (f"{module_name}.{name}" if module_name else name), buffer
