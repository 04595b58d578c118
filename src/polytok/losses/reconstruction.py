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


def _check_weight(weight: Tensor, target: Tensor) -> None:
    same_layout = weight.dim() == target.dim() and weight.shape[0] == target.shape[0]
    if not same_layout or weight.shape[2:] != target.shape[2:]:
        raise ValueError(
            f"pixel weights must be (B, 1, H, W) or (B, C, H, W) for images {tuple(target.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[1] not in (1, target.shape[1]):
        raise ValueError(f"pixel weights need 1 or {target.shape[1]} channels, got {weight.shape[1]}")


def l1_loss(prediction: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error over every element, each scaled by ``weight`` when given.

    Shapes: prediction and target (B, C, H, W) (any shape without ``weight``), weight (B, 1 or C, H, W);
    returns a scalar: ``mean(weight * |prediction - target|)`` (the mean over all B*C*H*W elements).
    """
    _check_pair(prediction, target)
    if weight is None:
        return F.l1_loss(prediction.float(), target.float())
    _check_weight(weight, target)
    error = (prediction.float() - target.float()).abs()
    return (error * weight.float()).mean()


def l2_loss(prediction: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over every element, each scaled by ``weight`` when given (see :func:`l1_loss`)."""
    _check_pair(prediction, target)
    if weight is None:
        return F.mse_loss(prediction.float(), target.float())
    _check_weight(weight, target)
    error = (prediction.float() - target.float()).square()
    return (error * weight.float()).mean()


def object_pixel_weight(object_mask: Tensor, object_weight: float) -> Tensor:
    """Per-pixel loss weights from an object mask: 1 on background, ``object_weight`` on objects, blended
    by coverage at their anti-aliased edges. Shapes: (B, 1, H, W) in [0, 1] -> the same."""
    if object_weight < 0:
        raise ValueError(f"object_weight must be >= 0, got {object_weight}")
    return 1.0 + (float(object_weight) - 1.0) * object_mask.float().clamp(0.0, 1.0)


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

    def forward(self, prediction: Tensor, target: Tensor, pixel_weight: Tensor | None = None) -> LossOutput:
        """``pixel_weight`` (B, 1, H, W), optional, scales L1 and L2 per pixel (e.g. object pixels more than
        background); the perceptual term compares whole images and is not weighted."""
        _check_pair(prediction, target)
        total = prediction.new_zeros((), dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        if self.l1_weight:
            value = l1_loss(prediction, target, pixel_weight)
            total = total + self.l1_weight * value
            terms["l1"] = detached(value)
        if self.l2_weight:
            value = l2_loss(prediction, target, pixel_weight)
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
