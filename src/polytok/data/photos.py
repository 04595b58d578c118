"""``photos``: random crops of the real photographs that scikit-image ships (no download).

Sources (``skimage.data``), each with a caption name; grey photographs are used as 3-channel images:

========================  ==============================  =======
source                    caption                         split
========================  ==============================  =======
astronaut                 "a photo of an astronaut"       train
chelsea (also ``cat``)    "a photo of a cat"              train
rocket                    "a photo of a rocket"           train
hubble_deep_field         "a photo of galaxies"           train
retina                    "a photo of a retina"           train
stereo_motorcycle (L, R)  "a photo of a motorcycle"       train
logo (RGBA on white)      "a photo of a logo"             train
camera                    "a photo of a cameraman"        train
brick                     "a photo of a brick wall"       train
grass                     "a photo of grass"              train
moon                      "a photo of the moon"           train
coffee                    "a photo of a cup of coffee"    val
immunohistochemistry      "a photo of stained tissue"     val
gravel                    "a photo of gravel"             val
coins                     "a photo of coins"              val
========================  ==============================  =======

The split is by source photograph, so validation crops never share pixels with training crops; the two
stereo views show the same scene and therefore sit in the same split. ``colorwheel`` (synthetic) and
``horse`` (a silhouette) are left out.

Sample ``i`` of a split depends only on ``(seed, epoch, i)`` for ``train`` and on ``(seed, i)`` for
``val``: training crops use a random resized crop over ``scale`` of the photo's area (aspect ratio in
3/4..4/3) and a horizontal flip; validation crops are squares of fixed side at seeded positions, no
flip, cycling through the validation photos. ``label`` is the index of the source in
:data:`PHOTO_SOURCES` (shared by both splits) and ``caption`` is "a photo of <name>".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import Dataset

from polytok.data.images import pil_to_tensor, to_rgb
from polytok.data.transforms import RandomResizedCropFlip, seeded_generator

# (source id, caption name, split). The order defines the labels; never reorder, only append.
PHOTO_SOURCES: tuple[tuple[str, str, str], ...] = (
    ("astronaut", "an astronaut", "train"),
    ("chelsea", "a cat", "train"),
    ("rocket", "a rocket", "train"),
    ("hubble_deep_field", "galaxies", "train"),
    ("retina", "a retina", "train"),
    ("stereo_motorcycle_left", "a motorcycle", "train"),
    ("stereo_motorcycle_right", "a motorcycle", "train"),
    ("logo", "a logo", "train"),
    ("camera", "a cameraman", "train"),
    ("brick", "a brick wall", "train"),
    ("grass", "grass", "train"),
    ("moon", "the moon", "train"),
    ("coffee", "a cup of coffee", "val"),
    ("immunohistochemistry", "stained tissue", "val"),
    ("gravel", "gravel", "val"),
    ("coins", "coins", "val"),
)
PHOTO_SPLITS = ("train", "val")
PROMPT_TEMPLATES = ("a photo of {}.", "a close-up photo of {}.", "a cropped photo of {}.", "{}")


@functools.cache
def load_photo(source: str) -> Image.Image:
    """Load one source photograph as an RGB PIL image (cached per process)."""
    import skimage.data

    if source.startswith("stereo_motorcycle_"):
        left, right, _disparity = skimage.data.stereo_motorcycle()
        array = left if source.endswith("left") else right
    else:
        array = getattr(skimage.data, source)()
    image = Image.fromarray(np.ascontiguousarray(array))
    return to_rgb(image)


def photo_names() -> list[str]:
    """Caption names of all sources, indexed by label."""
    return [name for _, name, _ in PHOTO_SOURCES]


class PhotoCrops(Dataset):
    """Crops of skimage's real photographs, split by source photo.

    Each item: ``{"image": (3, S, S) float in [0, 1], "caption": str, "label": int}``.

    Args:
        split: ``"train"`` or ``"val"``.
        image_size: output side S in pixels.
        length: crops per epoch (defaults: 10,000 train, 1,000 val).
        scale: area fraction range of the random crops (train) ; val crops use its geometric mean.
        hflip: random horizontal flips (train only).
        seed: base seed; the same seed gives the same pixels.
    """

    tasks: ClassVar[tuple[str, ...]] = ("photo",)
    prompt_templates: ClassVar[dict[str, tuple[str, ...]]] = {"photo": PROMPT_TEMPLATES}

    def __init__(
        self,
        split: str = "train",
        image_size: int = 64,
        length: int | None = None,
        scale: Sequence[float] = (0.02, 0.3),
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        if split not in PHOTO_SPLITS:
            raise ValueError(f"unknown split {split!r} for 'photos': expected one of {PHOTO_SPLITS}")
        self.split = split
        self.image_size = image_size
        self.length = int(length if length is not None else (10_000 if split == "train" else 1_000))
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.crop = RandomResizedCropFlip(image_size, scale=scale, hflip=hflip)
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.epoch = 0
        self.labels = [i for i, (_, _, s) in enumerate(PHOTO_SOURCES) if s == split]

    def set_epoch(self, epoch: int) -> None:
        """Training crops differ per epoch (still deterministic); validation crops never change."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def class_names(self, task: str = "photo") -> list[str]:
        """Names of all sources in label order (both splits), for zero-shot prompts."""
        if task != "photo":
            raise ValueError(f"unknown task {task!r} for 'photos': expected one of {self.tasks}")
        return photo_names()

    def _val_crop(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        area_fraction = math.sqrt(self.crop.scale[0] * self.crop.scale[1])
        side = min(round(math.sqrt(area_fraction * image.width * image.height)), image.width, image.height)
        top = int(rng.integers(0, image.height - side + 1))
        left = int(rng.integers(0, image.width - side + 1))
        size = [self.image_size, self.image_size]
        crop = TF.resized_crop(image, top, left, side, side, size, TF.InterpolationMode.BICUBIC)
        return pil_to_tensor(crop)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} photo crops")
        if self.split == "train":
            generator = seeded_generator(self.seed, 0, self.epoch, index)
            label = self.labels[int(torch.randint(len(self.labels), (), generator=generator))]
            image = self.crop(load_photo(PHOTO_SOURCES[label][0]), generator=generator)
        else:
            rng = np.random.default_rng([self.seed, 1, index])
            label = self.labels[index % len(self.labels)]
            image = self._val_crop(load_photo(PHOTO_SOURCES[label][0]), rng)
        return {"image": image, "caption": f"a photo of {PHOTO_SOURCES[label][1]}", "label": label}
