"""The ``shapes`` judge: it reads real images it never saw (and the held-out colour-shape pairs) almost
perfectly, also slightly blurred; its geometry heads are colour-blind by construction; training is
deterministic."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from skimage.filters import gaussian

from polytok.data.shapes import COLOURS, ShapesDataset
from polytok.eval.shapes.judge import (
    GEOMETRY_ATTRIBUTES,
    JUDGED_ATTRIBUTES,
    JudgeRecipe,
    ShapesJudge,
    load_shapes_judge,
    render_batch,
    silhouette,
    train_shapes_judge,
)

MIN_ACCURACY = 0.98
NUM_IMAGES = 400


@pytest.fixture(scope="module")
def judge() -> ShapesJudge:
    return load_shapes_judge()


def _accuracy(judge: ShapesJudge, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> dict[str, float]:
    readings = judge.read(images)
    return {name: float((readings[name] == labels[name]).float().mean()) for name in JUDGED_ATTRIBUTES}


def _skimage_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """An independent Gaussian blur (scikit-image) of (B, 3, H, W) images."""
    hwc = images.permute(0, 2, 3, 1).numpy()
    blurred = np.stack([gaussian(im, sigma=sigma, channel_axis=-1, preserve_range=True) for im in hwc])
    return torch.from_numpy(blurred).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("split", ["heldout", "val"])
@pytest.mark.parametrize("blur", [0.0, 0.5])
def test_judge_reads_real_images_it_never_saw(judge, split, blur) -> None:
    # Seed 1: other pixels than the seed-0 train images the judge learnt from; `heldout` only shows
    # (shape, colour) pairs absent from every training image.
    images, labels = render_batch(
        ShapesDataset(split, 64, length=NUM_IMAGES, seed=1), list(range(NUM_IMAGES))
    )
    if blur:
        images = _skimage_blur(images, blur)
    accuracy = _accuracy(judge, images, labels)
    assert min(accuracy.values()) >= MIN_ACCURACY, accuracy


def test_judge_reads_other_image_sizes(judge) -> None:
    images, labels = render_batch(ShapesDataset("val", 128, length=200, seed=2), list(range(200)))
    accuracy = _accuracy(judge, images, labels)
    assert min(accuracy.values()) >= MIN_ACCURACY, accuracy


def test_geometry_heads_are_colour_blind(judge) -> None:
    """The same drawing in all seven colours: identical silhouettes, identical geometry logits, and the
    colour head names each colour."""
    data = ShapesDataset("heldout", 64, length=8, seed=3)
    for index in range(8):
        attributes, rng = data.sample_attributes(index)
        drawings = []
        for colour in range(len(COLOURS)):
            recoloured = {**attributes, "colour": colour}
            drawings.append(data.render(recoloured, copy.deepcopy(rng)))
        images = torch.stack(drawings)
        sil = silhouette(images)
        assert torch.allclose(sil, sil[:1].expand_as(sil), atol=1e-5)
        judge.eval()
        with torch.no_grad():
            logits = judge(images)
        for name in GEOMETRY_ATTRIBUTES:
            assert torch.allclose(logits[name], logits[name][:1].expand_as(logits[name]), atol=1e-4), name
        assert logits["colour"].argmax(1).tolist() == list(range(len(COLOURS)))


def test_judge_rejects_wrong_inputs(judge) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        judge.read(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="float"):
        judge.read(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_missing_weights_name_the_file_and_the_script(tmp_path) -> None:
    missing = tmp_path / "judge.safetensors"
    with pytest.raises(FileNotFoundError, match=r"judge\.safetensors.*train_shapes_judge\.py"):
        load_shapes_judge(missing)


def test_training_is_deterministic_and_learns(tmp_path) -> None:
    recipe = JudgeRecipe(steps=40, batch_size=16, train_images=256, width=4)
    losses: list[list[float]] = [[], []]
    judges = []
    for run in range(2):
        judges.append(
            train_shapes_judge(
                recipe,
                log=lambda line, run=run: losses[run].append(float(line.split("loss ")[1].split(",")[0])),
            )
        )
    a, b = (j.state_dict() for j in judges)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses[0] == losses[1] and losses[0][-1] < losses[0][0]
