"""Real photographs (bundled with scikit-image) cut into small crops, shared by the eval tests."""

from __future__ import annotations

import numpy as np
import torch
from skimage import data

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "hubble_deep_field")


def photo_crops(count: int, size: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, 3, size, size) float64 crops in [0, 1] and the index of the photo each came from."""
    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)()[..., :3].astype(np.float64) / 255.0 for name in PHOTOS]
    crops, labels = [], []
    for i in range(count):
        label = i % len(photos)
        photo = photos[label]
        y = rng.integers(0, photo.shape[0] - size)
        x = rng.integers(0, photo.shape[1] - size)
        crops.append(photo[y : y + size, x : x + size].transpose(2, 0, 1))
        labels.append(label)
    return torch.from_numpy(np.stack(crops)), torch.tensor(labels)


def perturb(images: torch.Tensor, noise: float, seed: int = 1) -> torch.Tensor:
    """Blur lightly (3x3 box), add Gaussian noise, clip to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    kernel = torch.full((3, 1, 3, 3), 1 / 9, dtype=images.dtype)
    blurred = torch.nn.functional.conv2d(
        torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3
    )
    noisy = blurred + noise * torch.randn(images.shape, generator=gen, dtype=images.dtype)
    return noisy.clamp(0, 1)
