"""Pixel figures of two plain codecs given the tokenizer's bits: what those bits could carry.

A tokenizer is not a codec, but its PSNR/SSIM mean little without a reference at the same budget:
* JPEG (Pillow, 4:2:0): per image, the highest quality whose file fits the tokenizer's pixel bits;
* bicubic: the largest square down-sampling whose raw 8-bit RGB pixels fit the bits, then bicubic up again.

The budget is the pixel prefix's code bits per image (positions x codes read by the pixel decoder x
log2 of the codebook size). Both are reported at the deepest decoded depth with the bits they used.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch
from polytok.eval.metrics.pixel import PSNR, SSIM
from polytok.eval.options import EvalOptions

REFERENCES = ("JPEG", "bicubic")


def pixel_bits_per_image(tokenizer: Any, height: int, width: int) -> float:
    """Bits of the codes the pixel decoder reads for one (height, width) image."""
    positions = (height // tokenizer.stride) * (width // tokenizer.stride)
    code_shape = tuple(tokenizer.code_shape)
    residual = getattr(tokenizer, "num_levels", 1) > 1
    codes = math.prod(code_shape)
    if residual:  # the level axis comes first in (L,) and (L, C)
        codes = codes // code_shape[0] * min(tokenizer.pixel_depth, code_shape[0])
    return positions * codes * math.log2(tokenizer.codebook_size)


def _to_pil(image: Tensor) -> Image.Image:
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def jpeg_at_bits(image: Tensor, bits: float) -> tuple[Tensor, int]:
    """(3, H, W) in [0, 1] -> (JPEG-decoded image, file bits) at the highest quality (1-95) within
    ``bits``; quality 1 if even that is larger (its bits then exceed the budget and are reported)."""
    pil = _to_pil(image)

    def encode(quality: int) -> bytes:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    low, high, best = 1, 95, encode(1)
    while low <= high:  # file size grows with quality: binary search for the last that fits
        mid = (low + high) // 2
        data = encode(mid)
        if len(data) * 8 <= bits:
            best, low = data, mid + 1
        else:
            high = mid - 1
    return _to_tensor(Image.open(io.BytesIO(best))), len(best) * 8


def bicubic_at_bits(image: Tensor, bits: float) -> tuple[Tensor, int]:
    """(3, H, W) -> (bicubic down to the largest s x s whose 8-bit RGB fits ``bits``, then up), bits."""
    _, h, w = image.shape
    side = max(1, min(h, w, math.isqrt(int(bits // 24))))
    pil = _to_pil(image)
    small = pil.resize((side, side), Image.BICUBIC, reducing_gap=None)
    return _to_tensor(small.resize((w, h), Image.BICUBIC)), side * side * 24


class CodecReferences:
    """PSNR and SSIM of JPEG and bicubic references at the tokenizer's pixel bits.

    The budget of a batch is known once its deepest decoded prefix was measured: the references of a
    batch are made at the next batch's ``prepare`` or at ``compute``."""

    reads = "pixels"
    label = "codec references"  # named in progress lines

    def __init__(self, codebook_size: int) -> None:
        self.bits_per_code = math.log2(codebook_size)
        self.skipped: dict[str, str] = {}
        self._psnr = {name: PSNR() for name in REFERENCES}
        self._ssim = {name: SSIM() for name in REFERENCES}
        self._bits = {name: 0.0 for name in REFERENCES}
        self._budget = 0.0
        self._images = 0
        self._deepest = 0
        self._pending: Tensor | None = None
        self._pending_codes = 0

    def _flush(self) -> None:
        if self._pending is None:
            return
        originals, self._pending = self._pending, None
        self._budget = self._pending_codes * self.bits_per_code
        for name, codec in (("JPEG", jpeg_at_bits), ("bicubic", bicubic_at_bits)):
            pairs = [codec(image, self._budget) for image in originals]
            decoded = torch.stack([p[0] for p in pairs])
            self._bits[name] += sum(p[1] for p in pairs)
            self._psnr[name].update(decoded, originals)
            self._ssim[name].update(decoded, originals)
        self._images += originals.shape[0]

    def prepare(self, batch: RealBatch) -> None:
        self._flush()
        self._pending = batch.images.float().cpu().clamp(0, 1)
        self._pending_codes = 0

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        if depth.levels >= self._deepest:
            self._deepest = depth.levels
            self._pending_codes = depth.codes[0].numel()  # codes of one image the decoder read

    def compute(self) -> list[DepthResult]:
        self._flush()
        if not self._images:
            return []
        figures = {}
        for name in REFERENCES:
            extra = {
                "reference": f"{name} at the tokenizer's pixel bits",
                "budget_bits_per_image": round(self._budget, 1),
                "mean_bits_per_image": round(self._bits[name] / self._images, 1),
            }
            for metric, value in (("PSNR", self._psnr[name].compute()), ("SSIM", self._ssim[name].compute())):
                figures[f"{metric}[{name}, equal bits]"] = type(value)(
                    value.value, {**value.protocol, **extra}, value.std
                )
        return [DepthResult(self._deepest, "pixels", figures)]


def build(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> CodecReferences | None:
    return CodecReferences(caps.codebook_size) if options.codec_references else None
