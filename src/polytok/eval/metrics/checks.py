"""Input validation shared by the metrics: images are float (B, 3, H, W) in [0, 1]."""

from __future__ import annotations

import torch

# Reconstructions computed in low precision can overshoot [0, 1] by a rounding error.
_RANGE_SLACK = 1e-4


def check_images(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate a float image batch (B, 3, H, W) in [0, 1] and return it unchanged."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.numel() and (images.min() < -_RANGE_SLACK or images.max() > 1 + _RANGE_SLACK):
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{images.min().item():.4f}, {images.max().item():.4f}]"
        )
    return images


def check_pair(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate reconstructions ``preds`` against originals ``target`` (same shape, [0, 1])."""
    check_images(preds, "preds")
    check_images(target, "target")
    if preds.shape != target.shape:
        raise ValueError(f"preds and target shapes differ: {tuple(preds.shape)} vs {tuple(target.shape)}")
    return preds, target
