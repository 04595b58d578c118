"""Image files in and out of the public tensor format: float (B, 3, H, W) in [0, 1]."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from polytok.data import decode_image, eval_transform


def load_images(paths: Sequence[str | os.PathLike], size: int) -> Tensor:
    """Read image files, resize the short side to ``size`` and centre-crop -> (B, 3, size, size).

    Raises polytok.data.UnreadableImageError naming the file for a broken image.
    """
    transform = eval_transform(size)
    return torch.stack([transform(decode_image(p)) for p in paths])


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> (B, H, W, 3) uint8 (rounded, clamped)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(images.shape)}")
    return (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_images(images: Tensor, paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Write (B, 3, H, W) images in [0, 1] as PNG files (lossless), one path per image, each atomically
    (:func:`polytok.storage.atomic_write`): a full disk or an error leaves no partial file."""
    from polytok.storage import atomic_write

    if len(paths) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(paths)} paths")
    out = []
    for array, path in zip(to_uint8(images), paths):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(array)
        kind = Image.registered_extensions().get(path.suffix.lower(), "PNG")  # by the name, as PIL would
        out.append(atomic_write(path, lambda f, image=image, kind=kind: image.save(f, format=kind)))
    return out
