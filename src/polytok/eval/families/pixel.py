"""PSNR, SSIM and (with its weights) LPIPS of each decoded depth against the originals."""

from __future__ import annotations

from typing import Any

import torch

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch, at_depth, load_optional
from polytok.eval.metrics.perceptual import LPIPS, build_lpips_vgg
from polytok.eval.metrics.pixel import PSNR, SSIM
from polytok.eval.options import EvalOptions


class PixelFidelity:
    """Per-image pixel figures, streamed per decoded depth. ``lpips_model``: one network for all depths."""

    reads = "pixels"
    label = "pixel fidelity"  # named in progress lines

    def __init__(self, lpips_model: torch.nn.Module | None = None) -> None:
        self.lpips_model = lpips_model
        self.skipped: dict[str, str] = {}
        self._originals: torch.Tensor | None = None
        self._psnr: dict[int, PSNR] = {}
        self._ssim: dict[int, SSIM] = {}
        self._lpips: dict[int, LPIPS] = {}

    def prepare(self, batch: RealBatch) -> None:
        self._originals = batch.images.float().cpu()

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        assert depth.reconstruction is not None and self._originals is not None
        recon_cpu = depth.reconstruction.float().cpu()
        at_depth(self._psnr, depth.levels, PSNR).update(recon_cpu, self._originals)
        at_depth(self._ssim, depth.levels, SSIM).update(recon_cpu, self._originals)
        if self.lpips_model is not None:
            metric = at_depth(self._lpips, depth.levels, lambda: LPIPS(model=self.lpips_model))
            metric.update(depth.reconstruction, batch.images)

    def compute(self) -> list[DepthResult]:
        results = []
        for levels in sorted(self._psnr):
            figures = {"PSNR": self._psnr[levels].compute(), "SSIM": self._ssim[levels].compute()}
            if levels in self._lpips:
                figures["LPIPS"] = self._lpips[levels].compute()
            results.append(DepthResult(levels, "pixels", figures))
        return results


def build(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> PixelFidelity:
    model = load_optional(options.lpips, "LPIPS", lambda: build_lpips_vgg(options.vgg_weights_path), skipped)
    if model is not None and device is not None:
        model = model.to(device)
    return PixelFidelity(model)
