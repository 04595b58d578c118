"""Per-image pixel fidelity, averaged over images as they stream in.

PSNR and SSIM use data range 1.0 on images in [0, 1], computed in float64; SSIM is the usual
Gaussian-window variant (11x11, sigma 1.5, K1 0.01, K2 0.03, population covariance), per channel,
then averaged, which matches scikit-image's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from polytok.eval.metrics.checks import check_pair
from polytok.eval.result import MetricResult


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR (dB, data range 1.0) of each image: (B, 3, H, W) x 2 -> (B,). Identical images give inf."""
    check_pair(preds, target)
    # Computed directly in float64 (torchmetrics' PSNR rounds its log(10) constant to float32).
    mse = (preds.double() - target.double()).square().flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)


def _gaussian_window(sigma: float, radius: int, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    window = torch.exp(-(x * x) / (2 * sigma * sigma))
    return window / window.sum()


def _filter_valid(x: torch.Tensor, window: list[float], dim: int) -> torch.Tensor:
    """Correlate ``x`` with a 1-D window along ``dim``, keeping only fully covered positions.

    Shift-and-add in float64: exact, and far faster on CPUs than a float64 grouped convolution.
    """
    length = x.shape[dim] - len(window) + 1
    out = x.narrow(dim, 0, length) * window[0]
    for offset, weight in enumerate(window[1:], start=1):
        out.add_(x.narrow(dim, offset, length), alpha=weight)
    return out


def ssim_per_image(
    preds: torch.Tensor, target: torch.Tensor, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
) -> torch.Tensor:
    """SSIM (Gaussian window 11, sigma 1.5, data range 1.0) of each image: (B, 3, H, W) x 2 -> (B,).

    Local statistics use a separable Gaussian over the valid region only (no padding), i.e. the pixels
    whose whole window lies inside the image; the SSIM map is averaged over them and over channels.
    """
    check_pair(preds, target)
    radius = int(3.5 * sigma + 0.5)  # the Gaussian truncated at 3.5 sigma: 11 taps for sigma 1.5
    if min(preds.shape[-2:]) < 2 * radius + 1:
        raise ValueError(
            f"SSIM needs images of at least {2 * radius + 1}x{2 * radius + 1} pixels, "
            f"got {tuple(preds.shape[-2:])}"
        )
    x, y = preds.double(), target.double()
    channels = x.shape[1]
    window = _gaussian_window(sigma, radius, torch.float64).tolist()
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    filtered = _filter_valid(_filter_valid(stacked, window, dim=-2), window, dim=-1)
    mu_x, mu_y, xx, yy, xy = filtered.split(channels, dim=1)
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    c1, c2 = (k1 * 1.0) ** 2, (k2 * 1.0) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


class MeanOverImages:
    """Streaming mean of a per-image metric: ``update(preds, target)``, ``compute() -> MetricResult``."""

    def __init__(
        self,
        name: str,
        per_image: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        protocol: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self._per_image = per_image
        self._protocol = dict(protocol or {})
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self._sum_sq = 0.0
        self._count = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = self._per_image(preds, target).detach().to("cpu", torch.float64)
        self._sum += float(values.sum())
        self._sum_sq += float((values * values).sum())
        self._count += values.numel()
        return values

    def compute(self) -> MetricResult:
        if self._count == 0:
            raise RuntimeError(f"{self.name}: no images were added")
        mean = self._sum / self._count
        # inf (identical images under PSNR) has no meaningful spread.
        var = max(self._sum_sq / self._count - mean * mean, 0.0) if math.isfinite(mean) else float("nan")
        protocol = {"num_images": self._count, "spread": "std over images", **self._protocol}
        return MetricResult(mean, protocol, std=var**0.5)


class PSNR(MeanOverImages):
    """Mean PSNR over images (data range 1.0, MSE over all pixels and channels of each image)."""

    def __init__(self, protocol: dict[str, Any] | None = None) -> None:
        super().__init__(
            "psnr",
            psnr_per_image,
            {"data_range": 1.0, "reduction": "per-image PSNR, mean over images", **(protocol or {})},
        )


class SSIM(MeanOverImages):
    """Mean SSIM over images (Gaussian window 11, sigma 1.5, data range 1.0, per channel then mean)."""

    def __init__(self, protocol: dict[str, Any] | None = None) -> None:
        super().__init__(
            "ssim",
            ssim_per_image,
            {
                "data_range": 1.0,
                "window": "gaussian 11x11, sigma 1.5",
                "reduction": "per-image SSIM (mean over channels and valid pixels), mean over images",
                **(protocol or {}),
            },
        )
