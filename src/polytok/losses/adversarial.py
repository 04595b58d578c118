"""GAN objectives, the adaptive generator weight, and the schedule that switches the GAN term on.

Argument order is always (real logits, fake logits) for discriminator losses; higher logits mean
"real". A discriminator that scores real high and fake low must get a low discriminator loss.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.losses.output import LossOutput, detached

# --- discriminator losses: (logits_real, logits_fake) -> scalar ---------------------------------------


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (E[relu(1 - D(real))] + E[relu(1 + D(fake))])."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def non_saturating_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Binary cross-entropy, real labelled 1 and fake 0: 0.5 * (E[-log s(D(real))] + E[-log(1 - s(D(fake)))]).

    Also called the "vanilla" GAN discriminator loss; softplus keeps it stable for large logits.
    """
    return 0.5 * (F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean())


# --- generator losses: logits_fake -> scalar -------------------------------------------------------------


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """-E[D(fake)]."""
    return -logits_fake.float().mean()


def non_saturating_g_loss(logits_fake: Tensor) -> Tensor:
    """E[-log s(D(fake))]: cross-entropy of fakes against the "real" label (strong gradients early on)."""
    return F.softplus(-logits_fake.float()).mean()


D_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "hinge": hinge_d_loss,
    "non_saturating": non_saturating_d_loss,
    "vanilla": non_saturating_d_loss,
}
G_LOSSES: dict[str, Callable[[Tensor], Tensor]] = {
    "hinge": hinge_g_loss,
    "non_saturating": non_saturating_g_loss,
    "vanilla": non_saturating_g_loss,
}


def adaptive_gan_weight(
    reconstruction_loss: Tensor,
    generator_loss: Tensor,
    last_layer_weight: Tensor,
    min_weight: float = 0.0,
    max_weight: float = 1e4,
    eps: float = 1e-4,
) -> Tensor:
    """||d rec / d W|| / (||d gan / d W|| + eps), clamped to [min_weight, max_weight], detached.

    ``W`` is the weight of the decoder's last layer. Balances the GAN gradient against the reconstruction
    gradient where they meet (VQGAN; UniTok clamps to [0.015, 1e4]). Both losses keep their graphs.
    """
    if not last_layer_weight.requires_grad:
        raise ValueError(
            "last_layer_weight must require grad (pass the decoder's last layer weight parameter)"
        )
    rec_grad = torch.autograd.grad(reconstruction_loss, last_layer_weight, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(generator_loss, last_layer_weight, retain_graph=True)[0]
    ratio = rec_grad.float().norm() / (gan_grad.float().norm() + eps)
    return ratio.clamp(min_weight, max_weight).detach()


class AdversarialLoss(nn.Module):
    """Generator and discriminator GAN terms with the published weighting and schedule.

    Args:
        loss_type: "hinge" (UniTok, EvoTok) or "non_saturating" ("vanilla" is an alias).
        weight: base weight of the generator term (UniTok 0.4, EvoTok 0.5).
        adaptive: scale the generator term by :func:`adaptive_gan_weight` (UniTok yes, EvoTok no).
        adaptive_min, adaptive_max: clamp of the adaptive factor (UniTok 0.015, 1e4).
        start_step: steps before it give 0 for both terms (UniTok: 37.5% of training, EvoTok: 20k).
        warmup_steps: linear ramp ``(step - start_step + 1) / warmup_steps`` of the factor, up to 1.
        discriminator_weight: weight of the discriminator's own loss.

    Typical step::

        g = adv.generator_loss(disc(fake), step, reconstruction_loss=rec.loss, last_layer_weight=W)
        (rec.loss + g.loss).backward()
        d = adv.discriminator_loss(disc(real), disc(fake.detach()), step)
        d.loss.backward()
    """

    def __init__(
        self,
        loss_type: str = "hinge",
        weight: float = 0.4,
        adaptive: bool = True,
        adaptive_min: float = 0.015,
        adaptive_max: float = 1e4,
        start_step: int = 0,
        warmup_steps: int = 0,
        discriminator_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if loss_type not in D_LOSSES:
            raise ValueError(f"unknown GAN loss_type {loss_type!r}; choose from {sorted(D_LOSSES)}")
        if weight < 0 or discriminator_weight < 0:
            raise ValueError("weight and discriminator_weight must be >= 0")
        if not 0 <= adaptive_min <= adaptive_max:
            raise ValueError(f"need 0 <= adaptive_min <= adaptive_max, got {adaptive_min}, {adaptive_max}")
        if start_step < 0 or warmup_steps < 0:
            raise ValueError("start_step and warmup_steps must be >= 0")
        self.loss_type = loss_type
        self.weight = float(weight)
        self.adaptive = adaptive
        self.adaptive_min = float(adaptive_min)
        self.adaptive_max = float(adaptive_max)
        self.start_step = int(start_step)
        self.warmup_steps = int(warmup_steps)
        self.discriminator_weight = float(discriminator_weight)

    @classmethod
    def unitok(cls, total_steps: int) -> AdversarialLoss:
        """Hinge, adaptive weight 0.4 clamped to [0.015, 1e4], starting at 37.5% of ``total_steps``."""
        return cls(
            "hinge",
            0.4,
            adaptive=True,
            adaptive_min=0.015,
            adaptive_max=1e4,
            start_step=int(0.375 * total_steps),
        )

    @classmethod
    def evotok(cls, start_step: int = 20_000) -> AdversarialLoss:
        """Hinge with a fixed weight of 0.5 after ``start_step`` (20k in the paper)."""
        return cls("hinge", 0.5, adaptive=False, start_step=start_step)

    def schedule(self, step: int) -> float:
        """Factor in [0, 1] for ``step``: 0 before ``start_step``, then the linear warm-up, then 1."""
        if step < self.start_step:
            return 0.0
        if self.warmup_steps == 0:
            return 1.0
        return min(1.0, (step - self.start_step + 1) / self.warmup_steps)

    def active(self, step: int) -> bool:
        """Whether the GAN terms are on at ``step`` (callers may skip the discriminator entirely if not)."""
        return self.schedule(step) > 0

    def generator_loss(
        self,
        logits_fake: Tensor | None,
        step: int,
        reconstruction_loss: Tensor | None = None,
        last_layer_weight: Tensor | None = None,
    ) -> LossOutput:
        """Generator term ``schedule * weight * adaptive * g_loss(logits_fake)``.

        ``logits_fake`` may be None while the term is inactive. With ``adaptive=True`` the reconstruction
        loss and the decoder's last-layer weight are required (unless inactive); in eval mode (no graph)
        the adaptive factor is 1.
        """
        factor = self.schedule(step)
        if factor == 0 or logits_fake is None:
            if factor and logits_fake is None:
                raise ValueError(f"logits_fake is required at step {step} (the GAN term is active)")
            zero = torch.zeros((), device=_device_of(logits_fake, reconstruction_loss))
            return LossOutput(zero, {"g_loss": zero, "schedule": torch.tensor(float(factor))})
        g_loss = G_LOSSES[self.loss_type](logits_fake)
        adaptive = torch.ones((), device=g_loss.device)
        if self.adaptive and torch.is_grad_enabled() and g_loss.requires_grad:
            if reconstruction_loss is None or last_layer_weight is None:
                raise ValueError("adaptive=True needs reconstruction_loss and last_layer_weight")
            adaptive = adaptive_gan_weight(
                reconstruction_loss, g_loss, last_layer_weight, self.adaptive_min, self.adaptive_max
            )
        total = factor * self.weight * adaptive * g_loss
        terms = {
            "g_loss": detached(g_loss),
            "adaptive_weight": detached(adaptive),
            "schedule": torch.tensor(float(factor)),
            "total": detached(total),
        }
        return LossOutput(total, terms)

    def discriminator_loss(
        self, logits_real: Tensor | None, logits_fake: Tensor | None, step: int
    ) -> LossOutput:
        """Term ``schedule * discriminator_weight * d_loss(real, fake)``; also logs the mean logits."""
        factor = self.schedule(step)
        if factor == 0 or logits_real is None or logits_fake is None:
            if factor and (logits_real is None or logits_fake is None):
                raise ValueError(
                    f"logits_real and logits_fake are required at step {step} (the GAN term is active)"
                )
            zero = torch.zeros((), device=_device_of(logits_real, logits_fake))
            return LossOutput(zero, {"d_loss": zero, "schedule": torch.tensor(float(factor))})
        d_loss = D_LOSSES[self.loss_type](logits_real, logits_fake)
        total = factor * self.discriminator_weight * d_loss
        terms = {
            "d_loss": detached(d_loss),
            "logits_real": detached(logits_real.mean()),
            "logits_fake": detached(logits_fake.mean()),
            "schedule": torch.tensor(float(factor)),
            "total": detached(total),
        }
        return LossOutput(total, terms)

    def extra_repr(self) -> str:
        return (
            f"loss_type={self.loss_type!r}, weight={self.weight}, adaptive={self.adaptive}, "
            f"clamp=[{self.adaptive_min}, {self.adaptive_max}], start_step={self.start_step}, "
            f"warmup_steps={self.warmup_steps}"
        )


def _device_of(*tensors: Tensor | None) -> torch.device:
    for tensor in tensors:
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")
