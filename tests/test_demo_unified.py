"""The demo's unified-model stage and shipped unified models: a tiny unified model saved here is sampled
and captioned by ``polytok demo --unified DIR``, and one placed in a weights directory is found by name
(``polytok presets``, ``polytok caption NAME``)."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from PIL import Image

from polytok.cli import main
from polytok.demo import UNIFIED_SUMMARY, choose_unified
from polytok.eval.shapes.prompts import prompt_suite
from polytok.recipes.unified_run import load_unified_run_config
from polytok.storage import MANIFEST, read_manifest, verify_files, write_manifest
from polytok.unified.hub import WEIGHTS_ENV, list_shipped_unified, load_unified
from polytok.unified.model import IMAGE_TOKENIZER_DIR
from unified_helpers import tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny unified model on the (untrained) evotok-tiny preset, 4 x 4 grid (16 px), saved with its
    image tokenizer as ``polytok train`` exports it, and a manifest as the shipping script writes."""
    out = tmp_path_factory.mktemp("unified") / "tiny-unified"
    model = tiny_model("evotok-tiny", grid=(4, 4)).float()
    model.save_pretrained(out)
    from unified_helpers import tokenizer

    tokenizer("evotok-tiny").save_pretrained(out / IMAGE_TOKENIZER_DIR)
    write_manifest(out)
    return out


def test_demo_unified_stage_samples_and_captions_into_the_report(model_dir, tmp_path, capfd):
    out = tmp_path / "demo"
    argv = ["demo", "--unified-only", "--unified", str(model_dir), "--out-dir", str(out)]
    assert main([*argv, "--unified-samples", "1", "--unified-captions", "3"]) == 0
    captured = capfd.readouterr()
    err = captured.err
    assert f"[demo 1/2] sample unified: {model_dir}: 42 prompts (6 held-out pairs) x 1 samples" in err
    assert "[demo 2/2] write report: 1 sections" in err
    assert "text -> image" in err and "caption heldout" in err  # the stage's progress bars
    assert "t2i[heldout] attr[pair]" in err  # its tables, printed
    html = (out / "report.html").read_text()
    assert 'class="unified"' in html and "unified model on shapes" in html
    suite = prompt_suite()
    assert all(p.caption in html for p in suite)  # the sample grid: every prompt, held-out ones tagged
    assert html.count("held-out pair</span>") == sum(p.heldout for p in suite) == 6
    assert "<h3>Captions</h3>" in html and "heldout #2" in html and "val #0" not in html
    summary = json.loads((out / UNIFIED_SUMMARY).read_text())
    assert [len(s["readings"]) for s in summary["samples"]] == [1] * 42
    assert [c["split"] for c in summary["captions"]] == ["heldout"] * 3
    lines = [json.loads(x) for x in captured.out.splitlines() if x.startswith("{")]
    figures = next(x for x in lines if "unified" in x)
    assert figures["unified"] == f"{model_dir} (unified)"
    assert 0 <= figures["t2i[heldout] attr[pair]"] <= 1 and "caption[heldout] attr[pair]" in figures
    assert "caption[val] attr[pair]" not in figures
    timing = next(x for x in lines if "stage_seconds" in x)["stage_seconds"]
    assert list(timing) == ["sample unified", "write report"]


def test_demo_refuses_a_bad_unified_name_or_budget_before_training(tmp_path, capfd):
    assert main(["demo", "--unified", str(tmp_path / "missing"), "--out-dir", str(tmp_path / "d")]) == 2
    err = capfd.readouterr().err
    assert err.startswith("polytok: error: --unified") and "[demo" not in err
    assert main(["demo", "--unified-samples", "0", "--out-dir", str(tmp_path / "d")]) == 2
    err = capfd.readouterr().err
    assert err.startswith("polytok: error: unified_samples_per_prompt must be >= 1") and "[demo" not in err
    assert not (tmp_path / "d").exists()


def test_demo_without_a_unified_model_says_so_in_one_line(capfd):
    chosen = choose_unified(None)
    err = capfd.readouterr().err
    if list_shipped_unified():
        assert chosen == list_shipped_unified()[0] and err == ""
    else:
        assert chosen is None
        assert err.count("\n") == 1 and "skipping the unified stage" in err


def test_unified_model_in_a_weights_directory_is_found_by_name(model_dir, tmp_path, monkeypatch, capfd):
    weights = tmp_path / "weights"
    shutil.copytree(model_dir, weights / "tiny-unified")
    assert "tiny-unified" not in list_shipped_unified()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_ENV):
        load_unified("tiny-unified")
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert "tiny-unified" in list_shipped_unified()
    model, _ = load_unified("tiny-unified")
    saved, _ = load_unified(str(model_dir))
    for (name, a), (_, b) in zip(model.state_dict().items(), saved.state_dict().items()):
        assert torch.equal(a, b), name
    capfd.readouterr()
    assert main(["presets"]) == 0
    listing = json.loads(capfd.readouterr().out)
    assert "tiny-unified" in listing["shipped_unified"] and "tiny-unified" not in listing["shipped"]
    image = tmp_path / "shape.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(image)
    assert main(["caption", "tiny-unified", str(image)]) == 0
    (line,) = capfd.readouterr().out.splitlines()
    assert json.loads(line)["image"] == str(image)


def test_package_data_ships_every_file_of_a_unified_model_folder(model_dir, tmp_path):
    """setuptools' package-data globs (relative to the package) match every file of an exported unified
    model placed in weights/<name>/, its image tokenizer's files and the manifest included."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = tmp_path / "polytok"
    shutil.copytree(model_dir, package / "weights" / "tiny-unified")
    files = {str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()}
    assert f"weights/tiny-unified/{IMAGE_TOKENIZER_DIR}/model.safetensors" in files
    assert f"weights/tiny-unified/{MANIFEST}" in files
    matched = {m for pattern in patterns["polytok"] for m in glob.glob(pattern, root_dir=package)}
    assert files <= matched, sorted(files - matched)


def test_shipping_script_trains_and_places_a_unified_model_found_by_name(tmp_path, monkeypatch, capfd):
    """scripts/shipped/train_shipped_unified.sh with the shipped config at a 2-step budget, into a weights
    directory outside the package: the folder is complete, checksummed, and generates by name."""
    venv = Path(sys.executable).parent
    env = {
        **os.environ,
        "POLYTOK": str(venv / "polytok"),
        "PYTHON": sys.executable,
        "NAME": "shipped-unified",
        "WEIGHTS_DIR": str(tmp_path / "weights"),
        "RUN_DIR": str(tmp_path / "run"),
    }
    budget = ["train.max_steps=2", "train.max_minutes=null", "unified.text_captions=64"]
    budget += ["unified.heldout_samples=4", "train.save_every=0", "train.log_every=1"]
    script = ROOT / "scripts" / "shipped" / "train_shipped_unified.sh"
    done = subprocess.run(["bash", str(script), *budget], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + (tmp_path / "run.log").read_text()
    folder = tmp_path / "weights" / "shipped-unified"
    assert done.stdout.strip() == str(folder)
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["shipped-unified"]  # nothing aside
    manifest = read_manifest(folder)
    assert manifest["config"] == "configs/unified-shipped.yaml"
    assert {"unified.json", "model.safetensors", "text_tokenizer.json"} <= set(manifest["files"])
    verify_files(folder, manifest)
    assert (folder / IMAGE_TOKENIZER_DIR / "model.safetensors").is_file()
    run_yaml = (tmp_path / "run" / "run.yaml").read_text()
    assert "max_steps: 2" in run_yaml and "tokenizer: evotok-tiny" in run_yaml
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "weights"))
    capfd.readouterr()
    argv = ["generate", "shipped-unified", "a red circle", "--out-dir", str(tmp_path / "gen")]
    assert main(argv) == 0
    (line,) = capfd.readouterr().out.splitlines()
    assert Path(json.loads(line)["path"]).is_file()


def test_shipped_unified_config_is_the_evotok_recipe_at_64_px_on_an_hour_with_a_step_cap():
    shipped = load_unified_run_config(ROOT / "configs" / "unified-shipped.yaml")
    recipe = load_unified_run_config(ROOT / "configs" / "unified-evotok-tiny.yaml")
    assert shipped.train.max_minutes == 60 and shipped.train.max_steps == 8000
    # 64 px (a 16 x 16 grid), the size the tokenizer was trained at; the rest is the recipe
    assert shipped.data.image_size == 64 and dataclasses.replace(shipped.data, image_size=32) == recipe.data
    model = shipped.unified.model
    assert model.backbone["max_position_embeddings"] >= 16 * 16 + model.max_caption_tokens + 6
    # but for a 4-layer 128-wide backbone and the grid cell of each predicted position in its input
    assert model.image_positions == "learned_2d" and recipe.unified.model.image_positions == "none"
    larger = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4}
    assert {k: model.backbone[k] for k in larger} == larger
    backbone = {**model.backbone, "max_position_embeddings": 256}
    backbone.update({k: recipe.unified.model.backbone[k] for k in larger})
    # and text -> image on the first pixel level with the image loss weighted towards the objects
    assert model.generation_levels == 1 and recipe.unified.model.generation_levels is None
    assert model.object_loss_weight == 24 and recipe.unified.model.object_loss_weight == 1
    model = dataclasses.replace(
        model, backbone=backbone, image_positions="none", generation_levels=None, object_loss_weight=1
    )
    assert dataclasses.replace(shipped.unified, model=model) == recipe.unified
    assert shipped.train.optim == recipe.train.optim and shipped.train.batch_size == recipe.train.batch_size
