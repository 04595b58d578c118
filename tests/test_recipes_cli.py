"""End to end through the CLI: train a tiny preset, export, reconstruct, encode a dataset, decode it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polytok.cli import main
from polytok.models.tokenizer import Tokenizer
from polytok.recipes.tokenizer_run import load_run_config
from polytok.tokensets.npz import check_tokens_fit, load_tokens
from polytok.train import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _train(tmp: Path, preset: str, *extra: str) -> Path:
    out = tmp / preset
    main(
        [
            "train",
            str(CONFIGS / f"{preset}.yaml"),
            "train.max_steps=2",
            "train.batch_size=4",
            f"train.out_dir={out}",
            "train.progress=false",
            "train.log_every=1",
            "train.save_every=0",
            "data.name=shapes",
            *extra,
        ]
    )
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("run"), "evotok-tiny") / "tokenizer"


def test_train_logs_every_term_and_exports(trained: Path) -> None:
    lines = [json.loads(x) for x in (trained.parent / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for key in ("rec/l2", "rec/perceptual", "quant/loss", "distill/cosine", "distill/fold"):
        assert all(np.isfinite(r[key]) for r in lines), key
    assert (trained / "config.json").is_file() and (trained / "model.safetensors").is_file()
    tok = Tokenizer.from_pretrained(trained)
    assert tok.config.name == "evotok-tiny"


def test_contrastive_preset_with_gan_trains(tmp_path) -> None:
    out = _train(
        tmp_path,
        "unitok-tiny",
        "loss.gan=patchgan",
        "loss.gan_start=0",
        "loss.disc_channels=8",
        "loss.disc_layers=2",
    )
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["clip/contrastive"]) and np.isfinite(r["disc/total"]) for r in rows)
    assert "gan/adaptive_weight" in rows[-1]


def test_reconstruct_writes_images_and_psnr(trained: Path, tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(photo)
    main(["reconstruct", str(trained), str(photo), "--out-dir", str(tmp_path / "out")])
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    image = np.asarray(Image.open(record["reconstruction"]))
    assert image.shape == (64, 64, 3) and np.isfinite(record["psnr_db"])


def test_encode_then_decode_matches_the_library(trained: Path, tmp_path) -> None:
    tokens = tmp_path / "tokens.npz"
    main(
        [
            "encode",
            str(trained),
            "shapes",
            "--split",
            "heldout",
            "--batch-size",
            "4",
            "--out",
            str(tokens),
            "--shard-size",
            "1000000",
            "--max-images",
            "24",
        ]
    )
    data = load_tokens(tokens)
    tok = Tokenizer.from_pretrained(trained).eval()
    check_tokens_fit(data["meta"], tok)
    side = 64 // tok.stride
    assert data["codes"].shape == (24, side, side, *tok.code_shape) and len(data["captions"]) == 24
    main(["decode", str(trained), str(tokens), "--out-dir", str(tmp_path / "dec"), "--limit", "3"])
    decoded = sorted((tmp_path / "dec").glob("*.png"))
    assert len(decoded) == 3
    expected = (tok.decode(data["codes"][:3]).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.asarray(Image.open(decoded[0])), expected[0])


def test_token_file_from_another_layout_is_refused(trained: Path) -> None:
    other = Tokenizer.from_preset("polytok-tiny")
    tok = Tokenizer.from_pretrained(trained)
    with pytest.raises(ValueError, match="code shape"):
        check_tokens_fit({"code_shape": list(other.code_shape), "codebook_size": other.codebook_size}, tok)


def test_config_typo_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"loss\.l3"):
        load_run_config(CONFIGS / "unitok-tiny.yaml", ["loss.l3=1.0"])
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        load_run_config(CONFIGS / "unitok-tiny.yaml", ["train.max_steps=many"])


TOKENIZER_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.stem.startswith("unified-"))


@pytest.mark.parametrize("path", TOKENIZER_CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_parses(path: Path) -> None:  # unified-*: tests/test_unified_training.py
    cfg = load_run_config(path)
    assert cfg.model.preset == path.stem


def test_missing_model_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["reconstruct", "unitok-l", str(tmp_path / "x.png")]) == 2
    assert "--untrained" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="untrained"):
        main(["--debug", "reconstruct", "unitok-l", str(tmp_path / "x.png")])


def test_eval_command_writes_report_with_semantic_fidelity(trained: Path, tmp_path, capsys) -> None:
    report = tmp_path / "report.html"
    main(
        [
            "eval",
            str(trained),
            "--data",
            "shapes",
            "--split",
            "heldout",
            "--max-images",
            "8",
            "--batch-size",
            "4",
            "--zero-shot-task",
            "shape",
            "--report",
            str(report),
            "--fidelity-size",
            "64",
        ]
    )
    summary = json.loads((tmp_path / "report.json").read_text())[0]
    metrics = summary["metrics"]
    assert 0.0 <= metrics["semantic top-1 agreement"]["value"] <= 1.0
    assert metrics["semantic KL"]["value"] >= 0.0
    assert "rFD (EfficientNet-Lite0)" in metrics and "PSNR" in metrics
    assert metrics["PSNR"]["protocol"]["num_images"] == 8
    # evotok-tiny has no text tower: zero-shot is reported as skipped, not silently missing.
    assert "zero-shot" in " ".join(summary["skipped"]) or any(
        "zero" in v for v in summary["skipped"].values()
    )
    assert metrics["semantic top-1 agreement"]["protocol"]["image_size"] == 64  # --fidelity-size honoured
    html = report.read_text()
    assert "rFD (EfficientNet-Lite0)" in html and "<img" in html
    main(
        [
            "eval",
            str(trained),
            "--data",
            "shapes",
            "--split",
            "heldout",
            "--max-images",
            "4",
            "--batch-size",
            "4",
            "--report",
            str(report),
            "--no-semantic-fidelity",
        ]
    )
    plain = json.loads((tmp_path / "report.json").read_text())[0]["metrics"]
    assert "PSNR" in plain and not any(k.startswith(("semantic", "rFD")) for k in plain)


def test_concatenated_builtin_data_forwards_set_epoch() -> None:
    from polytok.recipes.sections import DataSection, build_training_dataset

    data = build_training_dataset(DataSection(name="photos+shapes", image_size=32))
    photos = data.datasets[0]
    first = photos[0]["image"].clone()
    data.set_epoch(1)
    assert not torch.equal(photos[0]["image"], first)  # new random crops in the new epoch
    data.set_epoch(0)
    assert torch.equal(photos[0]["image"], first)  # and deterministic per epoch


def _run_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_training_into_an_out_dir_holding_a_run_is_refused(tmp_path, capsys) -> None:
    out = _train(tmp_path, "evotok-tiny", "train.max_steps=3")
    before = _run_files(out)
    assert "checkpoints/step_00000003/model.safetensors" in before
    # a different run into the same out_dir: refused, and nothing of the old run changes
    code = main(
        [
            "train",
            str(CONFIGS / "evotok-tiny.yaml"),
            f"train.out_dir={out}",
            "train.max_steps=2",
            "train.seed=1",
            "data.name=shapes",
            "train.batch_size=4",
            "train.progress=false",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("polytok: error: ")
    assert "train.resume" in err[0] and "train.overwrite" in err[0]
    assert _run_files(out) == before

    # an explicit overwrite replaces the old run entirely: no step 3 left behind for a later resume
    _train(tmp_path, "evotok-tiny", "train.seed=1", "train.overwrite=true")
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step_00000002"]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "tokenizer" / "model.safetensors").read_bytes() != before["tokenizer/model.safetensors"]


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, caplog) -> None:
    with caplog.at_level("WARNING"):
        out = _train(tmp_path, "evotok-tiny", "train.resume=true")
    assert any("starting afresh" in r.getMessage() for r in caplog.records)
    assert [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    with pytest.raises(ConfigError, match="overwrite"):
        load_run_config(CONFIGS / "evotok-tiny.yaml", ["train.resume=true", "train.overwrite=true"])
