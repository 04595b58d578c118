"""``shapes``: procedurally drawn, captioned images with known attributes (no download).

Every image shows 1-3 copies of one shape, all of the same colour and size, grouped at one position,
over a grey background. Attributes and their class names (``dataset.class_names(task)``):

* ``shape``: circle, square, triangle, star, hexagon, cross
* ``colour``: red, green, blue, yellow, purple, orange, cyan (saturated, well separated)
* ``size``: small (radius 7.5% of the side), large (13%)
* ``position``: on the left, on the right, at the top, at the bottom, in the centre (where the group's
  centre lies)
* ``count``: one object, two objects, three objects (copies never touch, so they can be counted)
* ``background``: plain, striped, noisy, photographic (a grey crop of one of the training photographs of
  ``photos``)
* ``object``: the (colour, shape) pair, "red circle" ... "cyan cross" (42 classes, shape-major: label
  ``shape * 7 + colour``); on ``heldout`` only six of them occur, but a classifier must choose among all
  42, so it is right only when it names a combination it never saw in training (chance 1/42)

Backgrounds are grey on purpose: the saturated shape colour then names the shape's pixels unambiguously.
Captions read e.g. "two small red triangles at the top on a striped background". Images are not flipped
or cropped afterwards, since that would falsify the position in the caption.

Held-out combinations: the (shape, colour) pairs in :data:`HELDOUT_PAIRS` (one per shape, each with a
different colour) never appear in the ``train`` or ``val`` splits; the ``heldout`` split draws only
those pairs. Every shape and every colour is still seen in training, only not together, so zero-shot
classification of ``heldout`` by text prompt measures compositional generalisation.

Determinism: sample ``i`` depends only on ``(seed, split, i)``; drawing is anti-aliased by 4x
supersampling and takes well under a millisecond at 64 px.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from polytok.data.photos import PHOTO_SOURCES, load_photo
from polytok.data.transforms import sample_crop_box

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
SHAPE_PLURALS = ("circles", "squares", "triangles", "stars", "hexagons", "crosses")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 210, 20),
    "purple": (150, 40, 200),
    "orange": (250, 130, 10),
    "cyan": (20, 200, 220),
}
SIZES = ("small", "large")
SIZE_RADII = (0.075, 0.13)  # fraction of the image side: radius of the circle each shape fits in
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the centre")
POSITION_ANCHORS = ((0.27, 0.5), (0.73, 0.5), (0.5, 0.27), (0.5, 0.73), (0.5, 0.5))  # (x, y) / side
COUNTS = ("one object", "two objects", "three objects")
COUNT_WORDS = ("a", "two", "three")
BACKGROUNDS = ("plain", "striped", "noisy", "photographic")
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("circle", "red"),
    ("square", "green"),
    ("triangle", "blue"),
    ("star", "yellow"),
    ("hexagon", "purple"),
    ("cross", "orange"),
)

TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
    "count": COUNTS,
    "background": BACKGROUNDS,
    "object": tuple(f"{colour} {shape}" for shape in SHAPES for colour in COLOURS),
}
PROMPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a {}.", "a picture of a {}.", "a drawing of a {}."),
    "colour": ("a {} shape.", "something {}.", "a picture of {} objects."),
    "size": ("a {} shape.", "{} objects.", "a picture of {} shapes."),
    "position": ("shapes {}.", "a picture with shapes {}."),
    "count": ("a picture of {}.", "{}."),
    "background": ("shapes on a {} background.", "a {} background."),
    "object": ("a {}.", "a picture of a {}.", "a drawing of a {}."),
}
SHAPE_SPLITS = ("train", "val", "heldout")

_SUPERSAMPLE = 4
_GAP = 0.05  # minimum empty space between two copies, fraction of the side
_GROUP_JITTER = 0.03
_SIDE_JITTER = 0.02


def shape_outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of ``shape`` centred at (cx, cy) inside a circle of radius r (None = circle)."""

    def ring(n: int, radii: Sequence[float], start_deg: float = -90.0) -> list[tuple[float, float]]:
        points = []
        for k in range(n):
            angle = math.radians(start_deg + 360.0 * k / n)
            radius = radii[k % len(radii)]
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points

    if shape == "circle":
        return None
    if shape == "square":
        return ring(4, [r], start_deg=-135.0)
    if shape == "triangle":
        return ring(3, [r])
    if shape == "star":
        return ring(10, [r, 0.45 * r])
    if shape == "hexagon":
        return ring(6, [r])
    if shape == "cross":
        w = 0.3 * r
        # Twelve corners of a plus sign, clockwise from the top arm's left edge.
        xs = (-w, w, w, r, r, w, w, -w, -w, -r, -r, -w)
        ys = (-r, -r, -w, -w, w, w, r, r, w, w, -w, -w)
        return [(cx + x, cy + y) for x, y in zip(xs, ys)]
    raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")


def draw_mask(shape: str, centres: Iterable[tuple[float, float]], radius: float, size: int) -> np.ndarray:
    """Anti-aliased coverage (size, size) float32 in [0, 1] of ``shape`` at each centre (in pixels)."""
    big = size * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    s = _SUPERSAMPLE
    for cx, cy in centres:
        # Pixel centres sit at +0.5; supersampled coordinates keep that convention.
        x, y, r = cx * s, cy * s, radius * s
        outline = shape_outline(shape, x, y, r)
        if outline is None:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
        else:
            draw.polygon(outline, fill=255)
    return np.asarray(canvas.reduce(s), dtype=np.float32) / 255.0


def group_offsets(count: int, position: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Offsets (count, 2) of the copies from the group centre; copies are ``spacing`` apart or more."""
    if count == 1:
        return np.zeros((1, 2))
    if POSITIONS[position] in ("on the left", "on the right"):
        axis = np.array([0.0, 1.0])
    elif POSITIONS[position] in ("at the top", "at the bottom"):
        axis = np.array([1.0, 0.0])
    elif count == 3:
        # A triangle of side `spacing`, pointing up or down.
        sign = 1.0 if rng.random() < 0.5 else -1.0
        angles = np.radians([-90.0, 30.0, 150.0])
        return sign * spacing / math.sqrt(3.0) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    else:
        directions = (np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0]) / math.sqrt(2.0))
        axis = directions[rng.integers(3)]
    along = (np.arange(count) - (count - 1) / 2.0) * spacing
    across = rng.uniform(-_SIDE_JITTER, _SIDE_JITTER, size=count)
    normal = np.array([-axis[1], axis[0]])
    return along[:, None] * axis[None, :] + across[:, None] * normal[None, :]


@functools.cache
def _grey_photo(source: str) -> Image.Image:
    return load_photo(source).convert("L")


# Photographic backgrounds come from the training photos only: a tokenizer trains on photos + shapes and is
# measured on the validation photos, which must appear in no training image.
BACKGROUND_PHOTOS = tuple(source for source, _, split in PHOTO_SOURCES if split == "train")


def background_photo(rng: np.random.Generator) -> str:
    """The photo source a photographic background is cut from (one of :data:`BACKGROUND_PHOTOS`)."""
    return BACKGROUND_PHOTOS[int(rng.integers(len(BACKGROUND_PHOTOS)))]


def draw_background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Grey background (size, size) float32 in [0, 1]."""
    if kind == "plain":
        return np.full((size, size), rng.uniform(0.15, 0.85), dtype=np.float32)
    if kind == "striped":
        low = rng.uniform(0.15, 0.5)
        high = low + rng.uniform(0.2, 0.35)
        period = rng.uniform(0.1, 0.25) * size
        angle = rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-10, 10)
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        t = x * math.cos(math.radians(angle)) + y * math.sin(math.radians(angle))
        wave = np.sin(2 * math.pi * t / period + rng.uniform(0, 2 * math.pi))
        stripes = np.clip(0.5 + 2.0 * wave, 0.0, 1.0)  # square wave with soft (anti-aliased) edges
        return (low + (high - low) * stripes).astype(np.float32)
    if kind == "noisy":
        mean = rng.uniform(0.3, 0.7)
        return np.clip(rng.normal(mean, 0.1, size=(size, size)), 0.0, 1.0).astype(np.float32)
    if kind == "photographic":
        photo = _grey_photo(background_photo(rng))
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        top, left, h, w = sample_crop_box(photo.height, photo.width, (0.05, 0.5), (1.0, 1.0), generator)
        crop = photo.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h), reducing_gap=2.0)
        grey = np.asarray(crop, dtype=np.float32) / 255.0
        return (0.2 + 0.6 * grey).astype(np.float32)  # compressed contrast keeps the shapes in front
    raise ValueError(f"unknown background {kind!r}: expected one of {BACKGROUNDS}")


def caption_for(attributes: dict[str, int]) -> str:
    """ "two small red triangles at the top on a striped background" from attribute indices."""
    count = attributes["count"]
    shape = SHAPES[attributes["shape"]] if count == 0 else SHAPE_PLURALS[attributes["shape"]]
    colour = TASK_CLASSES["colour"][attributes["colour"]]
    return (
        f"{COUNT_WORDS[count]} {SIZES[attributes['size']]} {colour} {shape} "
        f"{POSITIONS[attributes['position']]} on a {BACKGROUNDS[attributes['background']]} background"
    )


# what a hard negative caption swaps, one attribute each, in this order, and how many values each has
_SWAPPABLE: dict[str, int] = {"shape": len(SHAPES), "colour": len(COLOURS)}
NEGATIVE_ATTRIBUTES = tuple(_SWAPPABLE)


def negative_captions(
    attributes: dict[str, int],
    pairs: Iterable[tuple[int, int]] | None = None,
    swap: Sequence[str] = NEGATIVE_ATTRIBUTES,
) -> list[str]:
    """The caption of ``attributes`` with one attribute replaced by another value, for each of
    :data:`NEGATIVE_ATTRIBUTES` in turn (the other shapes in shape order, then the other colours): each
    differs from the true caption in one word. Hard negatives for a contrastive loss
    (``loss.caption_negatives``, ``loss.caption_choice``): nothing but that word can tell them apart.
    ``pairs``: the (shape, colour) index pairs a negative may name (a split's own pairs), so that the
    captions of held-out pairs never appear in training text; None allows every pair. ``swap``: which of
    the attributes to swap (``("shape",)``: shape swaps only)."""
    allowed = None if pairs is None else set(pairs)
    captions = []
    for name in (n for n in NEGATIVE_ATTRIBUTES if n in swap):
        for other in range(_SWAPPABLE[name]):
            if other == attributes[name]:
                continue
            swapped = {**attributes, name: other}
            if allowed is None or (swapped["shape"], swapped["colour"]) in allowed:
                captions.append(caption_for(swapped))
    return captions


def task_label(attributes: dict[str, int], task: str) -> int:
    """Class index of ``task`` for a sample's attribute indices (``object`` = shape * 7 + colour)."""
    if task == "object":
        return attributes["shape"] * len(COLOURS) + attributes["colour"]
    return attributes[task]


def _pair_indices(pairs: Iterable[tuple[str, str]]) -> set[tuple[int, int]]:
    indices = set()
    for shape, colour in pairs:
        if shape not in SHAPES:
            raise ValueError(f"held-out pair names unknown shape {shape!r}: expected one of {SHAPES}")
        if colour not in COLOURS:
            raise ValueError(
                f"held-out pair names unknown colour {colour!r}: expected one of {list(COLOURS)}"
            )
        indices.add((SHAPES.index(shape), tuple(COLOURS).index(colour)))
    return indices


def draw_scene_attributes(shape: int, colour: int, rng: np.random.Generator) -> dict[str, int]:
    """The attributes of one image of the pair (shape, colour): size, position, count and background
    drawn from ``rng`` in that order (the order fixes every dataset image and prompt suite)."""
    return {
        "shape": shape,
        "colour": colour,
        "size": int(rng.integers(len(SIZES))),
        "position": int(rng.integers(len(POSITIONS))),
        "count": int(rng.integers(len(COUNTS))),
        "background": int(rng.integers(len(BACKGROUNDS))),
    }


class ShapesDataset(Dataset):
    """Captioned synthetic shapes with attribute labels and held-out (shape, colour) pairs.

    Each item: ``{"image": (3, S, S) float in [0, 1], "object_mask": (1, S, S) float in [0, 1], "caption":
    str, "negative_captions": [str], "label": int, "attributes": {task: int}}`` where ``label`` is the
    class of ``label_task``, ``object_mask`` each pixel's coverage by the objects (what
    ``loss.object_weight`` up-weights) and ``negative_captions`` the caption with each other shape and
    each other colour, where that names one of the split's pairs (:func:`negative_captions`); their
    number varies, so batch items with :func:`polytok.data.collate` (torch's default collation cannot).

    Args:
        split: ``"train"``, ``"val"`` (same pairs as train, other samples) or ``"heldout"``
            (only the held-out pairs).
        image_size: output side S in pixels (>= 16).
        length: images per epoch (defaults: 10,000 train, 1,000 otherwise).
        seed: base seed; the same seed gives the same pixels.
        label_task: which attribute fills ``label`` (one of :data:`TASK_CLASSES`).
        heldout_pairs: (shape, colour) names kept out of train/val.
        negative_attributes: what the hard negative captions swap (``("shape",)``: the shape word only).
    """

    tasks: ClassVar[tuple[str, ...]] = tuple(TASK_CLASSES)
    prompt_templates: ClassVar[dict[str, tuple[str, ...]]] = PROMPT_TEMPLATES

    def __init__(
        self,
        split: str = "train",
        image_size: int = 64,
        length: int | None = None,
        seed: int = 0,
        label_task: str = "shape",
        heldout_pairs: Iterable[tuple[str, str]] = HELDOUT_PAIRS,
        negative_attributes: Sequence[str] = NEGATIVE_ATTRIBUTES,
    ) -> None:
        if split not in SHAPE_SPLITS:
            raise ValueError(f"unknown split {split!r} for 'shapes': expected one of {SHAPE_SPLITS}")
        if not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16 for 'shapes', got {image_size!r}")
        if label_task not in TASK_CLASSES:
            raise ValueError(f"unknown label_task {label_task!r}: expected one of {tuple(TASK_CLASSES)}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not negative_attributes or not set(negative_attributes) <= set(NEGATIVE_ATTRIBUTES):
            raise ValueError(
                f"negative_attributes must be a non-empty subset of {NEGATIVE_ATTRIBUTES}, "
                f"got {negative_attributes!r}"
            )
        self.negative_attributes = tuple(negative_attributes)
        self.split = split
        self.image_size = image_size
        self.length = int(length if length is not None else (10_000 if split == "train" else 1_000))
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.seed = int(seed)
        self.label_task = label_task
        self.heldout_pairs = sorted(_pair_indices(heldout_pairs))
        all_pairs = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLOURS))]
        held = set(self.heldout_pairs)
        self.pairs = self.heldout_pairs if split == "heldout" else [p for p in all_pairs if p not in held]
        if not self.pairs:
            raise ValueError(f"split {split!r} has no (shape, colour) pairs: check heldout_pairs")

    def __len__(self) -> int:
        return self.length

    def class_names(self, task: str = "shape") -> list[str]:
        """Class names of ``task`` in label order."""
        if task not in TASK_CLASSES:
            raise ValueError(f"unknown task {task!r} for 'shapes': expected one of {tuple(TASK_CLASSES)}")
        return list(TASK_CLASSES[task])

    def class_prompts(self, task: str = "shape") -> list[list[str]]:
        """For each class of ``task``, its prompts (every template filled with the class name)."""
        return [[t.format(name) for t in PROMPT_TEMPLATES[task]] for name in self.class_names(task)]

    def sample_attributes(self, index: int) -> tuple[dict[str, int], np.random.Generator]:
        """The attributes of sample ``index`` and the generator, ready for drawing."""
        rng = np.random.default_rng([self.seed, SHAPE_SPLITS.index(self.split), index])
        shape, colour = self.pairs[int(rng.integers(len(self.pairs)))]
        return draw_scene_attributes(shape, colour, rng), rng

    def render(self, attributes: dict[str, int], rng: np.random.Generator) -> torch.Tensor:
        """Draw an image (3, S, S) float in [0, 1] with the given attributes."""
        return self.render_with_mask(attributes, rng)[0]

    def render_with_mask(
        self, attributes: dict[str, int], rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image (3, S, S) and its object mask (1, S, S): each pixel's anti-aliased object coverage."""
        size = self.image_size
        radius = SIZE_RADII[attributes["size"]] * rng.uniform(0.94, 1.06)
        spacing = 2 * radius + _GAP
        anchor = np.array(POSITION_ANCHORS[attributes["position"]])
        centre = anchor + rng.uniform(-_GROUP_JITTER, _GROUP_JITTER, size=2)
        offsets = group_offsets(attributes["count"] + 1, attributes["position"], spacing, rng)
        centres = (centre[None, :] + offsets) * size
        mask = draw_mask(SHAPES[attributes["shape"]], [tuple(c) for c in centres], radius * size, size)
        background = draw_background(BACKGROUNDS[attributes["background"]], size, rng)
        base = np.array(list(COLOURS.values())[attributes["colour"]], dtype=np.float32)
        colour = np.clip(base + rng.uniform(-12, 12, size=3), 0, 255) / 255.0
        alpha = mask[..., None]
        image = background[..., None] * (1.0 - alpha) + colour[None, None, :].astype(np.float32) * alpha
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return image_t, torch.from_numpy(np.asarray(mask, dtype=np.float32)[None].copy())

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} shape images")
        attributes, rng = self.sample_attributes(index)
        image, object_mask = self.render_with_mask(attributes, rng)
        return {
            "image": image,
            "object_mask": object_mask,
            "caption": caption_for(attributes),
            "negative_captions": negative_captions(attributes, self.pairs, self.negative_attributes),
            "label": task_label(attributes, self.label_task),
            "attributes": attributes,
        }
