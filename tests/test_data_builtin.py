"""Built-in datasets: determinism, held-out splits, and captions checked against the drawn pixels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.measure import regionprops

from polytok.data import PhotoCrops, ShapesDataset, build_dataset
from polytok.data.photos import PHOTO_SOURCES
from polytok.data.shapes import COLOURS, HELDOUT_PAIRS, POSITION_ANCHORS, SHAPE_PLURALS, SHAPES, TASK_CLASSES

# Area of each shape drawn inside a circle of radius 1 (geometry, computed by hand).
SHAPE_AREA = {
    "circle": math.pi,
    "square": 2.0,
    "triangle": 3 * math.sqrt(3) / 4,
    "star": 5 * 0.45 * math.sin(math.radians(36)),
    "hexagon": 3 * math.sqrt(3) / 2,
    "cross": 2 * (2 * 0.6) - 0.6**2,
}


# ---------------------------------------------------------------- photos


def test_photos_same_seed_same_pixels_and_epoch_changes_train_only():
    a, b = PhotoCrops("train", image_size=32, seed=3), PhotoCrops("train", image_size=32, seed=3)
    for i in (0, 7, 99):
        assert torch.equal(a[i]["image"], b[i]["image"])
    assert not torch.equal(a[0]["image"], PhotoCrops("train", image_size=32, seed=4)[0]["image"])
    before = a[5]["image"]
    a.set_epoch(1)
    assert not torch.equal(before, a[5]["image"])
    val = PhotoCrops("val", image_size=32, seed=3)
    first = val[2]["image"]
    val.set_epoch(5)
    assert torch.equal(first, val[2]["image"])


def test_photos_options_pass_through_the_registry():
    ds = build_dataset("photos", split="train", image_size=16, length=3, scale=(0.01, 0.02), hflip=False)
    assert ds.crop.scale == (0.01, 0.02) and ds.crop.hflip is False and len(ds) == 3


def test_photos_split_by_source_photo():
    train = PhotoCrops("train", image_size=16, length=300)
    val = PhotoCrops("val", image_size=16, length=40)
    train_labels = {train[i]["label"] for i in range(len(train))}
    val_labels = {val[i]["label"] for i in range(len(val))}
    assert train_labels.isdisjoint(val_labels)
    assert train_labels == {i for i, s in enumerate(PHOTO_SOURCES) if s[2] == "train"}
    assert val_labels == {i for i, s in enumerate(PHOTO_SOURCES) if s[2] == "val"}
    # The two stereo views show one scene: they must share a split.
    splits = {s[2] for s in PHOTO_SOURCES if s[0].startswith("stereo_motorcycle")}
    assert len(splits) == 1


def test_photos_items_are_images_with_matching_captions():
    ds = build_dataset("photos", split="val", image_size=48, length=8)
    names = ds.class_names()
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
        assert item["image"].min() >= 0.0 and item["image"].max() <= 1.0
        assert item["caption"] == f"a photo of {names[item['label']]}"
        assert item["image"].std() > 0.01  # a real crop, not a blank
    with pytest.raises(IndexError):
        ds[8]


def test_photos_val_crop_is_a_window_of_its_source_photo():
    """With the crop side equal to the output size, a val crop must appear verbatim in its photo."""
    from polytok.data.photos import load_photo

    for i in range(4):
        label = PhotoCrops("val", image_size=8, length=4)[i]["label"]
        photo = np.asarray(load_photo(PHOTO_SOURCES[label][0]))
        area_fraction = 32 * 32 / (photo.shape[0] * photo.shape[1])
        item = PhotoCrops("val", image_size=32, length=4, scale=(area_fraction, area_fraction))[i]
        assert item["label"] == label
        crop = np.round(item["image"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        tops, lefts = np.nonzero((photo == crop[0, 0]).all(axis=2))
        found = any(np.array_equal(photo[t : t + 32, x : x + 32], crop) for t, x in zip(tops, lefts))
        assert found, f"val crop {i} is not a window of {PHOTO_SOURCES[label][0]}"


# ---------------------------------------------------------------- shapes


def test_shapes_deterministic_per_index_and_order_free():
    a = ShapesDataset("train", image_size=48, seed=1)
    later = a[17]["image"]
    for i in range(5):
        a[i]
    fresh = ShapesDataset("train", image_size=48, seed=1)
    assert torch.equal(later, fresh[17]["image"])
    assert torch.equal(a[17]["image"], later)
    assert not torch.equal(later, ShapesDataset("train", image_size=48, seed=2)[17]["image"])


def _pairs(ds, n):
    return {(ds.sample_attributes(i)[0]["shape"], ds.sample_attributes(i)[0]["colour"]) for i in range(n)}


def test_shapes_heldout_combinations_never_in_train():
    colours = list(COLOURS)
    heldout = {(SHAPES.index(s), colours.index(c)) for s, c in HELDOUT_PAIRS}
    train = _pairs(ShapesDataset("train"), 3000)
    val = _pairs(ShapesDataset("val"), 1000)
    test = _pairs(ShapesDataset("heldout"), 300)
    assert train.isdisjoint(heldout) and val.isdisjoint(heldout)
    assert test == heldout
    assert len(train) == len(SHAPES) * len(COLOURS) - len(heldout)  # every other pair is seen
    # Every shape and every colour of the held-out pairs is seen in training, just not together.
    assert {s for s, _ in train} == set(range(len(SHAPES)))
    assert {c for _, c in train} == set(range(len(COLOURS)))


def test_shapes_custom_heldout_pairs_and_bad_names():
    ds = ShapesDataset("heldout", heldout_pairs=[("star", "cyan")])
    assert _pairs(ds, 50) == {(SHAPES.index("star"), list(COLOURS).index("cyan"))}
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        ShapesDataset("train", heldout_pairs=[("star", "pink")])
    with pytest.raises(ValueError, match="unknown split"):
        ShapesDataset("test")
    with pytest.raises(ValueError, match="label_task"):
        ShapesDataset("train", label_task="texture")


def test_shapes_caption_words_match_attributes():
    ds = ShapesDataset("train", image_size=32)
    for i in range(200):
        item = ds[i]
        attributes, caption = item["attributes"], item["caption"]
        count_word = ("a", "two", "three")[attributes["count"]]
        assert caption.startswith(count_word + " ")
        for task in ("size", "colour", "position"):
            assert TASK_CLASSES[task][attributes[task]] in caption
        assert caption.endswith(f"on a {TASK_CLASSES['background'][attributes['background']]} background")
        shape = SHAPES[attributes["shape"]]
        assert (
            shape + ("es" if shape == "cross" else "s") if attributes["count"] else shape
        ) in caption.split()
        assert item["label"] == attributes["shape"]


def _shape_mask(image: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the drawn shapes: backgrounds are grey, shapes saturated (chroma = max - min)."""
    rgb = image.permute(1, 2, 0).numpy()
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    return chroma > 0.25, rgb


@pytest.mark.parametrize("image_size", [64, 128])
def test_shapes_pixels_match_caption(image_size):
    """Colour, count, position, size and shape family measured from pixels with scipy/scikit-image."""
    ds = ShapesDataset("train", image_size=image_size, seed=11)
    palette = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0
    for i in range(120):
        item = ds[i]
        attributes = item["attributes"]
        mask, rgb = _shape_mask(item["image"])
        # colour: mean of the fully covered pixels, nearest named colour
        core = ndimage.binary_erosion(mask)
        mean = rgb[core if core.any() else mask].mean(axis=0)
        assert np.argmin(((palette - mean) ** 2).sum(axis=1)) == attributes["colour"], item["caption"]
        # count: 8-connected components of the shape pixels
        labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert count == attributes["count"] + 1, item["caption"]
        # position: the centroid of all shape pixels is nearest the named anchor
        cy, cx = ndimage.center_of_mass(mask)
        anchors = np.array(POSITION_ANCHORS) * image_size
        nearest = np.argmin(((anchors - [cx + 0.5, cy + 0.5]) ** 2).sum(axis=1))
        assert nearest == attributes["position"], item["caption"]
        # size: radius implied by the mean component area and the shape's area factor
        shape = SHAPES[attributes["shape"]]
        area = mask.sum() / count
        radius = math.sqrt(area / SHAPE_AREA[shape]) / image_size
        assert (radius > 0.1) == (attributes["size"] == 1), (item["caption"], radius)
        if image_size == 128:
            props = regionprops(labels)[0]
            family = (
                ("star" if props.extent < 0.5 else "cross")
                if props.solidity < 0.8
                else "square"
                if props.extent > 0.9
                else "triangle"
                if props.extent < 0.62
                else "round"
            )
            expected = {"circle": "round", "hexagon": "round"}.get(shape, shape)
            assert family == expected, (item["caption"], props.solidity, props.extent)


def test_shapes_backgrounds_differ_as_named():
    ds = ShapesDataset("train", image_size=64)
    for i in range(80):
        item = ds[i]
        mask, rgb = _shape_mask(item["image"])
        far = ~ndimage.binary_dilation(mask, iterations=2)
        grey = rgb[..., 0][far]
        assert np.allclose(rgb[..., 0], rgb[..., 1]) or mask.any()  # grey background
        kind = TASK_CLASSES["background"][item["attributes"]["background"]]
        if kind == "plain":
            assert grey.std() < 1e-4
        else:
            assert grey.std() > 0.02, kind


def test_shapes_zero_shot_interface():
    ds = build_dataset("shapes", split="heldout", image_size=32, label_task="colour")
    assert ds.class_names("colour") == list(COLOURS)
    for task in ds.tasks:
        prompts = ds.class_prompts(task)
        assert len(prompts) == len(ds.class_names(task))
        for name, per_class in zip(ds.class_names(task), prompts):
            assert per_class and all(name in p for p in per_class)
        assert all("{}" in t for t in ds.prompt_templates[task])
    item = ds[0]
    assert item["label"] == item["attributes"]["colour"]
    with pytest.raises(ValueError, match="unknown task"):
        ds.class_names("texture")


def test_shapes_object_task_names_the_pair_of_every_item():
    ds = build_dataset("shapes", split="heldout", image_size=32, label_task="object")
    names = ds.class_names("object")
    assert len(names) == len(SHAPES) * len(COLOURS) == 42
    seen = set()
    for i in range(60):
        item = ds[i]
        colour, shape = names[item["label"]].split(" ")
        assert (SHAPES.index(shape), list(COLOURS).index(colour)) == (
            item["attributes"]["shape"],
            item["attributes"]["colour"],
        )
        assert (
            f"{colour} {SHAPE_PLURALS[SHAPES.index(shape)] if item['attributes']['count'] else shape}"
            in (item["caption"])
        )
        seen.add((shape, colour))
    assert seen == set(HELDOUT_PAIRS)  # held-out images only ever show the six held-out pairs


def test_shapes_object_mask_covers_exactly_the_saturated_pixels():
    data = ShapesDataset(split="train", image_size=64, seed=2)
    for i in range(12):
        item = data[i]
        mask, image = item["object_mask"], item["image"]
        assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        # backgrounds are grey, objects saturated: saturation is an independent reading of the mask
        saturation = image.max(0).values - image.min(0).values
        assert bool((saturation[mask[0] > 0.99] > 0.25).all())
        assert bool((saturation[mask[0] == 0] < 1e-4).all())
        # the same index draws the same image whichever way it is rendered
        attributes, rng = data.sample_attributes(i)
        assert torch.equal(data.render(attributes, rng), image)


def test_collate_marks_photo_pixels_as_background_in_mixed_batches():
    from polytok.data.loader import collate

    shapes, photos = ShapesDataset(split="train", image_size=32), PhotoCrops(split="train", image_size=32)
    batch = collate([shapes[0], photos[0], shapes[1]])
    assert batch["object_mask"].shape == (3, 1, 32, 32)
    assert torch.equal(batch["object_mask"][0], shapes[0]["object_mask"])
    assert float(batch["object_mask"][1].abs().sum()) == 0.0
    assert "object_mask" not in collate([photos[0], photos[1]])


def test_validation_photos_appear_in_no_training_data():
    """Tokenizers train on photos + shapes and are measured on the validation photos: shapes' photographic
    backgrounds are cut from the training photos only (every one of them in use), and the photos' train
    split holds training sources only."""
    from polytok.data.shapes import BACKGROUND_PHOTOS, background_photo

    val = {source for source, _, split in PHOTO_SOURCES if split == "val"}
    train = {source for source, _, split in PHOTO_SOURCES if split == "train"}
    assert val and not val & set(BACKGROUND_PHOTOS)
    rng = np.random.default_rng(0)
    drawn = {background_photo(rng) for _ in range(2000)}
    assert drawn == train
    photos = PhotoCrops("train", image_size=32, length=64)
    assert {PHOTO_SOURCES[photos[i]["label"]][0] for i in range(64)} <= train


def test_shapes_negative_captions_swap_one_word_and_never_name_a_held_out_pair():
    """Each negative differs from the caption in the shape word or the colour word only; every shape and
    colour swap is there unless it would name a (shape, colour) pair outside the split (a held-out pair's
    caption never appears in training text)."""
    from polytok.data.loader import collate
    from polytok.data.shapes import COLOURS, HELDOUT_PAIRS, TASK_CLASSES, caption_for

    data = ShapesDataset(split="train", image_size=32)
    held = {(list(SHAPES).index(s), list(COLOURS).index(c)) for s, c in HELDOUT_PAIRS}
    colour_words = set(TASK_CLASSES["colour"])
    dropped = 0
    for i in range(40):
        item = data[i]
        attributes = item["attributes"]
        words = item["caption"].split()
        negatives = item["negative_captions"]
        assert item["caption"] not in negatives and len(set(negatives)) == len(negatives)
        names = SHAPES if attributes["count"] == 0 else SHAPE_PLURALS
        for negative in negatives:
            other = negative.split()
            assert len(other) == len(words)
            changed = [k for k in range(len(words)) if words[k] != other[k]]
            assert len(changed) == 1
            a, b = words[changed[0]], other[changed[0]]
            assert (a in names and b in names) or (a in colour_words and b in colour_words)
        swaps = [{**attributes, "shape": s} for s in range(len(SHAPES)) if s != attributes["shape"]]
        swaps += [{**attributes, "colour": c} for c in range(len(COLOURS)) if c != attributes["colour"]]
        expected = [caption_for(a) for a in swaps if (a["shape"], a["colour"]) not in held]
        assert negatives == expected
        dropped += len(swaps) - len(expected)
    assert dropped > 0  # the rule was exercised: some swaps would have named a held-out pair
    photos = PhotoCrops(split="train", image_size=32)
    batch = collate([data[0], photos[0]])
    assert batch["negative_captions"] == [data[0]["negative_captions"], []]
    assert "negative_captions" not in collate([photos[0], photos[1]])
    shape_only = ShapesDataset(split="train", image_size=32, negative_attributes=("shape",))
    for i in range(10):
        item, full = shape_only[i], data[i]
        assert item["negative_captions"] == [
            c for c in full["negative_captions"] if c.split()[2] == full["caption"].split()[2]
        ]  # the swaps that keep the colour word
    with pytest.raises(ValueError, match="negative_attributes"):
        ShapesDataset(split="train", negative_attributes=("size",))


def test_options_named_after_a_part_reach_that_part_only():
    """``data.options`` of ``photos+shapes``: a key named after a part holds that part's options (photo
    crops take no ``negative_attributes``), the other keys go to every part."""
    from polytok.recipes.sections import DataSection, build_training_dataset

    section = DataSection(
        name="photos+shapes", image_size=32, options={"shapes": {"negative_attributes": ["shape"]}}
    )
    photos, shapes = build_training_dataset(section).datasets
    assert isinstance(photos, PhotoCrops) and shapes.negative_attributes == ("shape",)
    shared = build_training_dataset(DataSection(name="photos+shapes", image_size=32, options={"length": 7}))
    assert [len(part) for part in shared.datasets] == [7, 7]
    with pytest.raises(ValueError, match=r"data\.options\.shapes"):
        build_training_dataset(DataSection(name="photos+shapes", options={"shapes": 3}))
