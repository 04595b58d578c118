"""scripts/studies/code_semantics.py: the table of code probes for a tokenizer, its semantics-free twin and
the untrained start, at a few steps on small images."""

from __future__ import annotations

from pathlib import Path

from script_helpers import load_script


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
