"""Pixel reconstruction losses: L1, L2 and their weighted sum with an optional perceptual term.

Presets: UniTok trains with 0.2 * L1 + 1.0 * L2 + 1.0 * LPIPS; EvoTok with 1.0 * L2 + 1.0 * LPIPS.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.losses.output import LossOutput, detached


def _check_pair(prediction: Tensor, target: Tensor) -> None:
    if not isinstance(prediction, Tensor) or not isinstance(target, Tensor):
        raise TypeError("prediction and target must be tensors")
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)}"
        )
    if not prediction.is_floating_point() or not target.is_floating_point():
        raise TypeError(f"expected float tensors, got {prediction.dtype} and {target.dtype}")


def l1_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over every element. Shapes: any, equal; returns a scalar."""
    _check_pair(prediction, target)
    return F.l1_loss(prediction.float(), target.float())


def l2_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every element. Shapes: any, equal; returns a scalar."""
    _check_pair(prediction, target)
    return F.mse_loss(prediction.float(), target.float())


PerceptualFn = Callable[[Tensor, Tensor], "Tensor | LossOutput"]


class ReconstructionLoss(nn.Module):
    """``l1_weight * L1 + l2_weight * L2 + perceptual_weight * perceptual`` on images.

    Args:
        l1_weight: weight of the mean absolute error (UniTok 0.2, EvoTok 0).
        l2_weight: weight of the mean squared error (1.0 in both).
        perceptual: optional module ``(prediction, target) -> scalar`` (or ``LossOutput``), e.g.
            :class:`polytok.losses.LPIPSLoss`; its own terms are logged under ``perceptual/``.
        perceptual_weight: weight of the perceptual term (1.0 in both recipes).

    Call: ``loss(prediction, target)`` with images (B, 3, H, W) in [0, 1] -> :class:`LossOutput` whose
    terms are ``l1``, ``l2``, ``perceptual`` (raw values, when their weight is non-zero) and ``total``.
    """

    def __init__(
        self,
        l1_weight: float = 0.0,
        l2_weight: float = 1.0,
        perceptual: nn.Module | PerceptualFn | None = None,
        perceptual_weight: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("l1_weight", l1_weight),
            ("l2_weight", l2_weight),
            ("perceptual_weight", perceptual_weight),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.l1_weight = float(l1_weight)
        self.l2_weight = float(l2_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.perceptual = perceptual

    @classmethod
    def unitok(cls, perceptual: nn.Module | PerceptualFn | None = None) -> ReconstructionLoss:
        """UniTok weights: 0.2 L1 + 1.0 L2 + 1.0 perceptual."""
        return cls(l1_weight=0.2, l2_weight=1.0, perceptual=perceptual, perceptual_weight=1.0)

    @classmethod
    def evotok(cls, perceptual: nn.Module | PerceptualFn | None = None) -> ReconstructionLoss:
        """EvoTok weights: 1.0 L2 + 1.0 perceptual."""
        return cls(l1_weight=0.0, l2_weight=1.0, perceptual=perceptual, perceptual_weight=1.0)

    def forward(self, prediction: Tensor, target: Tensor) -> LossOutput:
        _check_pair(prediction, target)
        total = prediction.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        if self.l1_weight:
            value = l1_loss(prediction, target)
            total = total + self.l1_weight * value
            terms["l1"] = detached(value)
        if self.l2_weight:
            value = l2_loss(prediction, target)
            total = total + self.l2_weight * value
            terms["l2"] = detached(value)
        if self.perceptual is not None and self.perceptual_weight:
            result = self.perceptual(prediction, target)
            if isinstance(result, LossOutput):
                value = result.loss
                terms.update(result.prefixed("perceptual/"))
            else:
                value = result
            if value.dim() != 0:
                raise ValueError(f"the perceptual loss must return a scalar, got shape {tuple(value.shape)}")
            total = total + self.perceptual_weight * value.float()
            terms["perceptual"] = detached(value)
        terms["total"] = detached(total)
        return LossOutput(total, terms)

    def extra_repr(self) -> str:
        return (
            f"l1_weight={self.l1_weight}, l2_weight={self.l2_weight}, "
            f"perceptual_weight={self.perceptual_weight}"
        )
