"""The contract between the engine and a training objective (which losses, which weights).

An objective computes losses; the engine owns everything else (devices, wrapping, autocast, backward,
accumulation, clipping, optimisers, schedules, EMA, checkpoints, logging). Per micro-batch the engine calls

1. ``generator_loss(model, batch, ctx)`` under autocast, then backward. The discriminator, if any, is
   passed as ``ctx.discriminator`` frozen (``requires_grad=False``, not DDP-wrapped) so the generator's
   backward neither fills nor synchronises its gradients. Quantizer EMA updates happen inside the model's
   forward, as usual. For an adaptive GAN weight, differentiate w.r.t. ``ctx.last_layer`` (the parameter
   named by ``TrainConfig.last_layer``, or returned by the model's ``last_layer()`` method) with
   ``torch.autograd.grad(..., retain_graph=True)``. Under FSDP that parameter is a shard, not part of the
   autograd graph: use DDP (or a fixed GAN weight) there.
   Stash what the discriminator step needs (e.g. detached reconstructions) in ``ctx.cache``.
2. ``discriminator_loss(discriminator, batch, ctx)`` (only for objectives with a discriminator), with the
   trainable, DDP/FSDP-wrapped discriminator; return ``None`` to skip the discriminator update this step.
   The decision must depend on ``ctx.step`` only (identical on every rank), or DDP would wait forever.

Both return ``(loss, logs)``: a scalar tensor and a dict of floats / 0-d tensors for the log line. Logs
are averaged over ranks, so every rank must return the same keys.

``model`` is the DDP/FSDP-wrapped (and possibly compiled) module: call it (its ``forward``) for everything
that needs gradients, since DDP synchronises only what runs through ``forward``; reach other attributes of
the network through ``model.module`` under DDP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

LossAndLogs = tuple[Tensor, Mapping[str, Any]]


@dataclass
class StepContext:
    """What an objective may need besides the model and the batch."""

    step: int  # 0-based index of the optimiser step being computed
    max_steps: int
    micro_step: int  # index of the micro-batch within the step (gradient accumulation)
    accum_steps: int
    world_size: int
    discriminator: nn.Module | None = None
    last_layer: nn.Parameter | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # shared by the generator and discriminator passes


@runtime_checkable
class Objective(Protocol):
    def generator_loss(self, model: nn.Module, batch: Any, ctx: StepContext) -> LossAndLogs:
        """Loss for the model's parameters (scalar tensor) and per-term logs."""
        ...


@runtime_checkable
class AdversarialObjective(Objective, Protocol):
    def discriminator(self) -> nn.Module:
        """The discriminator module; the engine places, wraps, optimises and checkpoints it."""
        ...

    def discriminator_loss(
        self, discriminator: nn.Module, batch: Any, ctx: StepContext
    ) -> LossAndLogs | None:
        """Discriminator loss for this micro-batch, or None to skip the discriminator this step."""
        ...


def has_discriminator(objective: Any) -> bool:
    return callable(getattr(objective, "discriminator", None)) and callable(
        getattr(objective, "discriminator_loss", None)
    )
