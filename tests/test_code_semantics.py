"""scripts/studies/code_semantics.py: the table of code probes for a tokenizer, its semantics-free twin and
the untrained start, at a few steps on small images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from script_helpers import load_script


@pytest.mark.slow  # three short trainings and their probes: minutes on two busy cores
def test_code_semantics_measures_tokenizer_twin_and_start(tmp_path: Path) -> None:
    study = load_script("code_semantics")
    images = study.ProbeImages.build(image_size=32, train=96, val=32, heldout=32, photos=8)
    result = study.code_semantics(
        "configs/evotok-tiny.yaml",
        steps=2,
        seed=0,
        out=tmp_path,
        overrides=["loss.perceptual=none", "train.batch_size=8", "data.image_size=32", "train.log_every=1"],
        images=images,
    )
    rows = {row["name"]: row for row in result["rows"]}
    assert list(rows) == ["tokenizer", "twin", "start"]
    assert [rows[n]["steps"] for n in rows] == [2, 2, 0]
    for row in rows.values():
        # a residual tokenizer is probed at every prefix depth
        assert sorted(row["probe_val"]) == list(range(1, 9)) == sorted(row["probe_heldout"])
        assert all(0.0 <= v <= 1.0 for v in [*row["probe_val"].values(), *row["probe_heldout"].values()])
        assert row["psnr_photos"] > 10.0
        assert 0.0 <= row["semantic_probe_val"] <= 1.0 and 0.0 <= row["semantic_probe_heldout"] <= 1.0
    assert set(result["references"]) == {"mean colour (3)", "mean 4x4 patch (48)", "teacher features"}
    assert all(0.0 <= v <= 1.0 for pair in result["references"].values() for v in pair)
    assert (tmp_path / "code_semantics.json").exists()
    table = (tmp_path / "code_semantics.md").read_text()
    assert table.count("| tokenizer | 2 |") == 8 and "| chance |" in table
    # the twin trained without the semantic loss: its semantic branch had no gradient
    assert (tmp_path / "twin" / "tokenizer").is_dir() and (tmp_path / "tokenizer" / "tokenizer").is_dir()


def test_measure_probes_every_prefix_of_a_trained_tokenizer() -> None:
    """The per-depth probes, PSNR and gates of one tokenizer, on few images (fast; the whole study is the
    slow test above)."""
    from polytok.hub import load_tokenizer

    study = load_script("code_semantics")
    images = study.ProbeImages.build(image_size=64, train=48, val=16, heldout=16, photos=4)
    tok = load_tokenizer("evotok-tiny").train()
    row = study.measure(tok, images, "shipped", steps=0)
    assert sorted(row["probe_val"]) == list(range(1, tok.num_levels + 1)) == sorted(row["probe_heldout"])
    for value in [*row["probe_val"].values(), *row["probe_heldout"].values()]:
        assert 0.0 <= value <= 1.0 and value * 16 == round(value * 16)  # a share of 16 test images
    assert row["psnr_photos"] > 20.0 and len(row["gates"]) == 2 and row["pixel_depth"] == 4
    assert tok.training  # measured in eval mode, its own mode given back


def test_head_on_frozen_codes_trains_the_semantic_branch_alone() -> None:
    """The twin's head training changes only the semantic branch: the codes of every image stay the same,
    and the zero-shot figure is measured from the new head."""
    study = load_script("code_semantics")
    config, _ = study.run_configs(
        "configs/unitok-tiny.yaml",
        ["loss.caption_negatives=true", "train.batch_size=4", "data.image_size=32"],
        steps=2,
        seed=0,
        out=Path("unused"),
    )
    twin = study.untrained_start(config)
    images = study.ProbeImages.build(image_size=32, train=24, val=12, heldout=12, photos=2)
    trained = study.head_on_frozen_codes(twin, config, steps=2)
    assert trained is not twin
    head_names = {id(p) for p in study.semantic_parameters(trained)}
    changed = {
        name
        for (name, before), after in zip(twin.named_parameters(), trained.parameters())
        if not torch.equal(before, after)
    }
    assert changed and all(id(dict(trained.named_parameters())[n]) in head_names for n in changed)
    assert torch.equal(twin.encode(images.val[0]), trained.encode(images.val[0]))
    row = study.measure(trained, images, "twin+head", steps=2)
    share = row["zero_shot_heldout"]
    assert 0.0 <= share <= 1.0 and share * 12 == round(share * 12)  # a share of the 12 held-out images
