"""Decoding image files safely and counting the ones that cannot be read.

Real datasets at web scale always hold some broken files: truncated downloads, HTML error pages saved
as ``.jpg``, zero-byte files. :func:`decode_image` turns every such case into one exception type,
:class:`UnreadableImageError`, so that datasets can skip the sample, and :class:`SkipCounter` keeps a
count that stays correct when the decoding happens in DataLoader worker processes.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Slots of the shared counter: slot 0 is the main process, slot k + 1 is DataLoader worker k.
_COUNTER_SLOTS = 1024


class UnreadableImageError(ValueError):
    """An image file that is empty, truncated, or not an image at all."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white, not on black."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: full scale is 65535 whatever the content (a dark image is still 16-bit);
        # 32-bit "I" images are taken as 16-bit data unless their values go beyond it.
        array = np.asarray(image, dtype=np.float64)
        scale = max(65535.0, float(array.max()))
        return Image.fromarray(np.round(np.clip(array, 0, None) / scale * 255.0).astype(np.uint8)).convert(
            "RGB"
        )
    return image.convert("RGB")


def decode_image(data: bytes | str | os.PathLike, *, name: str | None = None) -> Image.Image:
    """Decode image bytes or an image file into a fully loaded RGB PIL image.

    Forces a full decode (``Image.load``) so that truncated files fail here, not later inside a
    transform. Raises :class:`UnreadableImageError` naming the file for every kind of broken input.
    """
    label = name if name is not None else (str(data) if not isinstance(data, bytes) else "<bytes>")
    try:
        if isinstance(data, bytes):
            if len(data) == 0:
                raise UnreadableImageError(f"unreadable image {label}: empty data")
            source: io.BytesIO | str | os.PathLike = io.BytesIO(data)
        else:
            if Path(data).stat().st_size == 0:
                raise UnreadableImageError(f"unreadable image {label}: empty file")
            source = data
        with warnings.catch_warnings():
            # Pillow warns (not raises) on oversized images; escalate so the sample is skipped.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                image.load()
                return to_rgb(image)
    except UnreadableImageError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        EOFError,
    ) as error:
        raise UnreadableImageError(f"unreadable image {label}: {type(error).__name__}: {error}") from error


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


class SkipCounter:
    """Counts skipped samples across the main process and all DataLoader workers.

    The counts live in a small shared-memory tensor, one slot per process (main, worker 0, worker 1,
    ...), so increments made inside workers are visible to the main process and never race.
    Each DDP rank has its own counter (ranks are separate programs).
    """

    def __init__(self) -> None:
        self._slots = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()

    def add(self, what: str, reason: str) -> None:
        """Record one skipped sample and log it with the reason."""
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)
        self._slots[slot] += 1
        log.warning("skipping %s (%s); %d skipped so far", what, reason, self.total)

    @property
    def total(self) -> int:
        """Number of samples skipped so far, summed over all processes."""
        return int(self._slots.sum())

    def reset(self) -> None:
        self._slots.zero_()
