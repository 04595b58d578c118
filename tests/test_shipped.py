"""The checkpoints shipped inside the package: present, of the current preset layout, and as good as the
README says on the held-out built-in data (the same protocol as ``polytok demo`` and docs/study.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image

from polytok.cli import main
from polytok.hub import SHIPPED_DIR, list_shipped, load_tokenizer
from polytok.models.tokenizer import Tokenizer
from polytok.recipes.tokenizer_evaluation import evaluate_many

SHIPPED = ("evotok-tiny", "polytok-tiny", "unitok-tiny")
MIN_PSNR_DB = 24.0  # held-out photo crops, 256 of them, 64 px


def test_the_three_tiny_presets_are_shipped_small_and_safe():
    assert tuple(list_shipped()) == SHIPPED
    for name in SHIPPED:
        files = sorted(p.name for p in (SHIPPED_DIR / name).iterdir())
        assert files == ["config.json", "manifest.json", "model.safetensors"], name  # no pickles
        assert (SHIPPED_DIR / name / "model.safetensors").stat().st_size < 10 * 2**20


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_matches_its_preset(name):
    shipped = load_tokenizer(name)
    assert shipped.config.to_dict() == Tokenizer.from_preset(name).config.to_dict()


@pytest.fixture(scope="module")
def photo_reports():
    tokenizers = [load_tokenizer(name) for name in SHIPPED]
    reports = evaluate_many(
        tokenizers,
        list(SHIPPED),
        data="photos",
        split="val",
        max_images=256,
        semantic_fidelity=False,
        depth_curves=False,  # the tests read the full-depth figures only
    )
    return dict(zip(SHIPPED, reports))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reconstructs_held_out_photos(photo_reports, name):
    report = photo_reports[name]
    psnr = report.metrics["PSNR"]
    assert psnr.protocol["num_images"] == 256 and psnr.protocol["split"] == "val"
    assert psnr.value >= MIN_PSNR_DB


def test_reconstruct_without_a_model_uses_the_shipped_unitok_tiny(tmp_path, capsys):
    photo = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(photo)  # a held-out source photo
    main(["reconstruct", str(photo), "--out-dir", str(tmp_path / "out")])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.asarray(Image.open(record["reconstruction"])).shape == (64, 64, 3)
    assert record["psnr_db"] > 20.0


@pytest.fixture(scope="module")
def heldout_shapes_reports():
    """One evaluation of the 256 held-out-pair images per shipped tokenizer: attributes and zero-shot."""
    tokenizers = [load_tokenizer(name) for name in SHIPPED]
    reports = evaluate_many(
        tokenizers,
        list(SHIPPED),
        data="shapes",
        split="heldout",
        max_images=256,
        zero_shot_task="object",  # tokenizers without a text tower report no zero-shot figure
        semantic_fidelity=False,
        linear_probe=False,
        depth_curves=False,
    )
    return dict(zip(SHIPPED, reports))


@pytest.mark.parametrize("name", ["unitok-tiny", "polytok-tiny"])
def test_shipped_checkpoint_names_held_out_pairs_zero_shot(heldout_shapes_reports, name):
    result = heldout_shapes_reports[name].metrics["zero-shot top-1"]
    assert result.protocol["num_classes"] == 42
    # Above the strongest single-attribute baseline, not only chance (1/42): among the 42 pairs a model
    # that knows only the colour names the pair 1 time in 6 (one that knows only the shape 1 in 7).
    baselines = result.protocol["baselines"]
    assert set(baselines) == {"chance", "shape only", "colour only"}
    assert result.value > max(baselines.values())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tokens_keep_what_held_out_shapes_are_made_of(heldout_shapes_reports, name):
    metrics = heldout_shapes_reports[name].metrics
    shape = metrics["attr[shape]"]
    assert shape.protocol["num_images"] == 256
    # the judge reads every attribute of these originals right, so the figures are the tokens' loss
    assert shape.protocol["judge_accuracy_on_originals"] == 1.0
    assert shape.value >= 0.9, f"shape kept on {shape.value:.3f} of held-out images"
    for attribute in ("colour", "count", "size", "position"):
        assert metrics[f"attr[{attribute}]"].value >= 0.95, attribute


MIN_GAIN_OVER_START_DB = 0.5  # measured on these 256 crops: evotok +2.73, polytok +2.28, unitok +1.35 dB


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reconstructs_better_than_its_untrained_start(photo_reports, name):
    """Training did something for the pixels: the untrained start (the run's seed, its first-batch linear
    path and k-means codebooks, no optimiser step) reconstructs the same photos worse by a margin."""
    from polytok.recipes.tokenizer_run import load_run_config
    from script_helpers import load_script

    start = load_script("code_semantics").untrained_start(load_run_config(f"configs/{name}.yaml", []))
    (report,) = evaluate_many(
        [start],
        [f"{name} start"],
        data="photos",
        split="val",
        max_images=256,
        semantic_fidelity=False,
        depth_curves=False,
    )
    trained = photo_reports[name].metrics["PSNR"].value
    assert trained - report.metrics["PSNR"].value >= MIN_GAIN_OVER_START_DB, (
        trained,
        report.metrics["PSNR"].value,
    )


# unitok-tiny's pooled code vectors name the shape (6 classes, chance 1/6): the probe of
# docs/study.md section 7 (logistic regression on Tokenizer.code_embedding), here on 1024 train images
# and 256 val / 256 held-out-pair images. Measured here: shipped 0.930 / 0.652, its untrained start
# 0.203 / 0.141 (val / held-out).
MIN_CODE_PROBE = {"val": 0.8, "heldout": 0.5}
MIN_CODE_PROBE_GAIN_OVER_START = 0.3


def test_shipped_unitok_tiny_codes_name_the_shape_where_its_start_did_not():
    """Training put the shape into the codes themselves (not only into a head): a linear probe on the
    position-averaged code vectors names it on val and on held-out (shape, colour) pairs, where colour
    cannot stand in for it, far above the untrained start's codes."""
    from polytok.recipes.tokenizer_run import load_run_config
    from script_helpers import load_script

    study = load_script("code_semantics")
    images = study.ProbeImages.build(train=1024, val=256, heldout=256, photos=1)
    start = study.untrained_start(load_run_config("configs/unitok-tiny.yaml", []))
    shipped = study.measure(load_tokenizer("unitok-tiny"), images, "shipped", 0)
    before = study.measure(start, images, "start", 0)
    for split in ("val", "heldout"):
        trained, untrained = shipped[f"probe_{split}"][1], before[f"probe_{split}"][1]
        assert trained >= MIN_CODE_PROBE[split], (split, trained)
        assert trained - untrained >= MIN_CODE_PROBE_GAIN_OVER_START, (split, trained, untrained)
