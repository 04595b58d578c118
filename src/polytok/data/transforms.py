"""Image transforms: PIL RGB image -> float tensor (3, H, W) in [0, 1].

Training uses the Inception-style random resized crop (UniTok trains with ``scale=(0.9, 1.0)``) plus a
horizontal flip; evaluation resizes the short side and takes the centre crop (the rFID protocol).
Random draws take an optional ``torch.Generator`` so built-in datasets can be exactly reproducible per
index; without one they use torch's global RNG, which DataLoader seeds differently in every worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from polytok.data.images import pil_to_tensor

_INTERPOLATION = InterpolationMode.BICUBIC


def seeded_generator(*keys: int) -> torch.Generator:
    """A torch.Generator seeded from non-negative ints (e.g. seed, epoch, index), stable across runs."""
    if any(int(k) < 0 for k in keys):
        raise ValueError(f"seeds must be non-negative ints, got {keys}")
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def _check_size(size: int) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"image size must be a positive int, got {size!r}")
    return size


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if len(value) != 2 or not (low < value[0] <= value[1] <= high):
        raise ValueError(f"{name} must be (min, max) with {low} < min <= max <= {high}, got {tuple(value)}")
    return float(value[0]), float(value[1])


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Draw a crop (top, left, crop_height, crop_width) covering ``scale`` of the area.

    The aspect ratio is drawn log-uniformly in ``ratio``. After 10 failed draws (crop larger than the
    image) it falls back to the largest centred crop whose aspect ratio lies in ``ratio``.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
            left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
            return top, left, crop_h, crop_w
    image_ratio = width / height
    if image_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif image_ratio > ratio[1]:
        crop_h, crop_w = height, round(height * ratio[1])
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class RandomResizedCropFlip:
    """Training transform: random resized crop to ``size`` x ``size``, then a random horizontal flip.

    Call as ``transform(image, generator=None)``; returns (3, size, size) float in [0, 1].
    """

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.9, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ) -> None:
        self.size = _check_size(size)
        self.scale = _check_range("scale", scale, 0.0, 1.0)
        self.ratio = _check_range("ratio", ratio, 0.0, math.inf)
        self.hflip = hflip

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        box = sample_crop_box(image.height, image.width, self.scale, self.ratio, generator)
        top, left, crop_h, crop_w = box
        image = TF.resized_crop(image, top, left, crop_h, crop_w, [self.size, self.size], _INTERPOLATION)
        if self.hflip and float(torch.rand((), generator=generator)) < 0.5:
            image = TF.hflip(image)
        return pil_to_tensor(image)

    def __repr__(self) -> str:
        return (
            f"RandomResizedCropFlip(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip={self.hflip})"
        )


class ResizeCenterCrop:
    """Evaluation transform: resize the short side to ``size``, then the centre ``size`` x ``size`` crop."""

    def __init__(self, size: int) -> None:
        self.size = _check_size(size)

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        del generator  # deterministic
        image = TF.resize(image, self.size, _INTERPOLATION)
        return pil_to_tensor(TF.center_crop(image, [self.size, self.size]))

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size})"


def train_transform(
    size: int, scale: Sequence[float] = (0.9, 1.0), hflip: bool = True
) -> RandomResizedCropFlip:
    """The training transform used for folders and shards (UniTok's recipe by default)."""
    return RandomResizedCropFlip(size, scale=scale, hflip=hflip)


def eval_transform(size: int) -> ResizeCenterCrop:
    """The evaluation transform: short side to ``size``, centre crop."""
    return ResizeCenterCrop(size)


def transform_for_split(split: str, size: int, scale: Sequence[float] = (0.9, 1.0), hflip: bool = True):
    """``train`` -> random resized crop + flip; any other split -> resize + centre crop."""
    return train_transform(size, scale, hflip) if split == "train" else eval_transform(size)
