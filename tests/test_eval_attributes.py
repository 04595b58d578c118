"""Attribute fidelity: the judge's readings of reconstructions against the generator's attributes, per
decoded depth, with the judge's accuracy on the originals beside every figure."""

from __future__ import annotations

import pytest
import torch

from polytok.data import build_dataloader, build_dataset
from polytok.data.shapes import ShapesDataset
from polytok.eval import EvalOptions, evaluate_tokenizer
from polytok.eval.families.attributes import AttributeFidelity, cell_means, figure_name
from polytok.eval.families.base import DepthBatch, RealBatch
from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES, load_shapes_judge, render_batch
from polytok.hub import load_tokenizer

N = 48


@pytest.fixture(scope="module")
def judge():
    return load_shapes_judge()


@pytest.fixture(scope="module")
def shapes_batch():
    images, labels = render_batch(ShapesDataset("heldout", 64, length=N, seed=5), list(range(N)))
    return images, labels


def _measure(judge, images, labels, reconstructions, stride=None):
    family = AttributeFidelity(judge, stride=stride)
    batch = RealBatch(images, None, torch.zeros(0), 0, {"attributes": labels, "caption": ["x"] * N})
    family.prepare(batch)
    family.measure(batch, DepthBatch(1, torch.zeros(0), reconstructions))
    (result,) = family.compute()
    return {name: result.figures[figure_name(name)] for name in (*JUDGED_ATTRIBUTES, "all")}


def test_originals_as_reconstructions_score_the_judges_accuracy(judge, shapes_batch) -> None:
    images, labels = shapes_batch
    figures = _measure(judge, images, labels, images)
    for name, figure in figures.items():
        assert figure.value == figure.protocol["judge_accuracy_on_originals"], name
        assert figure.protocol["num_images"] == N


def test_swapped_images_score_the_attributes_they_share(judge, shapes_batch) -> None:
    """Each image "reconstructed" as its neighbour: every attribute scores exactly the fraction of pairs
    that share it (the judge reads all these originals right, checked first)."""
    images, labels = shapes_batch
    readings = judge.read(images)
    assert all(torch.equal(readings[n], labels[n]) for n in JUDGED_ATTRIBUTES)
    figures = _measure(judge, images, labels, images.roll(1, dims=0))
    every = torch.ones(N, dtype=torch.bool)
    for name in JUDGED_ATTRIBUTES:
        same = labels[name] == labels[name].roll(1)
        every &= same
        assert figures[name].value == pytest.approx(float(same.float().mean())), name
    assert figures["all"].value == pytest.approx(float(every.float().mean()))
    assert figures["shape"].protocol["chance"] == pytest.approx(1 / 6, abs=1e-6)


def test_blank_reconstructions_lose_the_shapes(judge, shapes_batch) -> None:
    images, labels = shapes_batch
    grey = images.mean(dim=1, keepdim=True).expand_as(images).contiguous()  # colour and silhouette gone
    figures = _measure(judge, images, labels, grey)
    assert figures["all"].value < 0.2 and figures["colour"].value < 0.5


def test_evaluation_reports_attribute_fidelity_per_decoded_depth() -> None:
    tok = load_tokenizer("evotok-tiny")  # pixels from the first 4 of 8 levels
    loader = build_dataloader(build_dataset("shapes", split="heldout", image_size=64), batch_size=16)
    report = evaluate_tokenizer(tok, loader, EvalOptions(max_images=32, lpips=False, fid=False), name="evo")
    shape = report.metrics[figure_name("shape")]
    assert shape.protocol["decoded_levels"] == 4 and shape.protocol["judge_accuracy_on_originals"] >= 0.98
    assert shape.protocol["cell_mean_stride"] == tok.stride == 4
    assert 0.0 <= shape.protocol["judge_accuracy_on_cell_means"] <= 1.0
    assert 0.0 <= shape.value <= 1.0
    assert sorted(report.depth_curves[figure_name("all")]) == [1, 2, 3, 4]


def test_no_attribute_figures_on_photos_unless_required() -> None:
    tok = load_tokenizer("unitok-tiny")
    loader = build_dataloader(build_dataset("photos", split="val", image_size=64), batch_size=8)
    report = evaluate_tokenizer(tok, loader, EvalOptions(max_images=8, lpips=False, fid=False))
    assert not any(name.startswith("attr[") for name in report.metrics)
    with pytest.raises(ValueError, match="shapes attributes"):
        evaluate_tokenizer(
            tok, loader, EvalOptions(max_images=8, lpips=False, fid=False, attribute_fidelity=True)
        )


def test_cell_means_match_a_naive_loop() -> None:
    images = torch.rand(2, 3, 8, 12, dtype=torch.float64)
    out = cell_means(images, 4)
    for b in range(2):
        for c in range(3):
            for i in range(0, 8, 4):
                for j in range(0, 12, 4):
                    cell = images[b, c, i : i + 4, j : j + 4]
                    assert torch.allclose(out[b, c, i : i + 4, j : j + 4], cell.mean().expand(4, 4))
    with pytest.raises(ValueError, match="multiple of the stride"):
        cell_means(images, 5)


def test_cell_mean_reference_is_the_judge_on_flat_token_cells(judge, shapes_batch) -> None:
    """The reference beside every figure is what a tokenizer returning one flat colour per token scores:
    reconstructions that are exactly those cell means score it, and at stride 4 it loses shapes that the
    judge reads on every original (the 64 px shapes are 10-17 px wide)."""
    images, labels = shapes_batch
    flat = cell_means(images, 4)
    figures = _measure(judge, images, labels, flat, stride=4)
    for name, figure in figures.items():
        assert figure.value == pytest.approx(figure.protocol["judge_accuracy_on_cell_means"], abs=5e-5), name
        assert figure.protocol["cell_mean_stride"] == 4
    assert figures["shape"].protocol["judge_accuracy_on_originals"] == 1.0
    assert figures["shape"].value < 0.8
    without = _measure(judge, images, labels, flat)
    assert "judge_accuracy_on_cell_means" not in without["shape"].protocol
