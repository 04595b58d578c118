"""Validation and conversion of public inputs (images, codes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _pil_to_array(img: Any) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


def _uint8_hwc_to_tensor(arr: np.ndarray) -> Tensor:
    if arr.dtype != np.uint8:
        raise ValueError(
            f"numpy images must be uint8 (H, W, 3) or (B, H, W, 3), got dtype {arr.dtype}; "
            "convert float images to a torch tensor (B, 3, H, W) in [0, 1]"
        )
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"numpy images must have shape (H, W, 3) or (B, H, W, 3), got {arr.shape}")
    return torch.from_numpy(np.array(arr, copy=True)).permute(0, 3, 1, 2).float() / 255.0


def images_to_tensor(images: Any, stride: int) -> Tensor:
    """Public images -> float (B, 3, H, W) in [0, 1], checked.

    Accepts a float tensor (B, 3, H, W) or (3, H, W) in [0, 1], a PIL image, a uint8 numpy array
    (H, W, 3) / (B, H, W, 3), or a list of PIL images / uint8 arrays of one size. H and W must be
    multiples of ``stride``.
    """
    if _is_pil(images):
        x = _uint8_hwc_to_tensor(_pil_to_array(images))
    elif isinstance(images, np.ndarray):
        x = _uint8_hwc_to_tensor(images)
    elif (
        isinstance(images, Sequence)
        and not isinstance(images, (str, bytes))
        and len(images) > 0
        and all(_is_pil(i) or isinstance(i, np.ndarray) for i in images)
    ):
        arrays = [_pil_to_array(i) if _is_pil(i) else i for i in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"all images of a list must have one size, got {sorted(shapes)}")
        x = torch.cat([_uint8_hwc_to_tensor(a) for a in arrays])
    elif isinstance(images, Tensor):
        x = images
        if not x.is_floating_point():
            raise ValueError(
                f"image tensors must be float in [0, 1], got {x.dtype}; for uint8 use x.float() / 255"
            )
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        if x.numel() == 0:
            raise ValueError("images are empty")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images contain NaN or Inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"images must be in [0, 1], got values in [{lo:.3f}, {hi:.3f}] "
                "(convert [-1, 1] images with (x + 1) / 2)"
            )
    else:
        raise TypeError(
            f"unsupported image input {type(images).__name__}; expected a float tensor "
            "(B, 3, H, W) in [0, 1], a PIL image, a uint8 numpy array (H, W, 3) or a list of these"
        )
    h, w = x.shape[-2:]
    if h % stride or w % stride or h == 0 or w == 0:
        raise ValueError(f"image size {h}x{w} is not a positive multiple of the tokenizer stride {stride}")
    # One memory layout for every input kind: convolutions pick different kernels for channels-last
    # tensors (what a PIL image or an HWC array becomes), whose last-bit differences can flip near-tied
    # code choices on deep residual levels. The same image must give the same codes however it is passed.
    return x.contiguous()


def images_of_size(
    images: Any, stride: int, size: int, what: str, why: str = "its position table is fixed"
) -> Tensor:
    """:func:`images_to_tensor`, then refused unless ``size`` x ``size`` (a model with a fixed position
    table, or ``why`` it takes one size: ``what`` names it)."""
    x = images_to_tensor(images, stride)
    if tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"{what} takes {size}x{size} images ({why}), got {x.shape[-2]}x{x.shape[-1]}")
    return x
