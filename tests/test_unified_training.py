"""Training the unified model through ``polytok train``: torchrun DDP equals one process, SIGKILL + resume
is bit-identical, the held-out caption loss falls, and ``polytok generate`` / ``caption`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from polytok.cli import main
from polytok.config import ConfigError
from polytok.recipes.unified_run import load_unified_run_config, train_unified
from process_kill import kill_when_file_appears

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
WORKER = Path(__file__).with_name("train_worker_unified.py")
# 16 px shapes: a 4 x 4 grid of evotok-tiny codes; captions of 200 samples train the BPE
SMALL = [
    "data.image_size=16",
    "unified.text_captions=200",
    "unified.heldout_samples=0",
    "train.progress=false",
    "train.log_every=1",
    "train.precision=fp32",
    "train.device=cpu",
]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(args: list[str]) -> None:
    result = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(out_dir / "model" / "model.safetensors")


ONE_STEP = [
    str(CONFIGS / "unified-evotok-tiny.yaml"),
    *SMALL,
    "train.max_steps=1",
    "train.save_every=0",
    "train.batch_size=4",
    "unified.model.caption_dropout=0.5",  # drawn per (seed, epoch, index): the same in both layouts
    "train.optim.eps=0.1",  # the update is linear in the gradient: no sign of a near-zero one blown up
    "train.optim.lr=0.01",
    "train.optim.warmup_steps=0",
]


@pytest.fixture(scope="module")
def one_process_two_micro_batches(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    _run(
        [
            sys.executable,
            "-m",
            "polytok.cli",
            "train",
            *ONE_STEP,
            "train.grad_accum_steps=2",
            f"train.out_dir={out}",
        ]
    )
    return out


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_process_with_the_same_micro_batches(
    tmp_path, strategy, one_process_two_micro_batches
) -> None:
    """torchrun with 2 gloo ranks x batch 4 ends one step with the weights of 1 process x 2 micro-batches
    of 4. Equal by construction: rank r and micro-batch r see the same 4 samples (each encoded alone),
    build the same mixed batch and run the same forward; only the sum of the two gradients (all-reduce
    against accumulation) may round differently. Caption dropout depends on the sample, not on where it
    lands. Under FSDP the export gathers the shards."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    extra = ["train.fsdp_layers=[LlamaDecoderLayer]"] if strategy == "fsdp" else []
    cli = ["-m", "polytok.cli", "train", *ONE_STEP, f"train.strategy={strategy}", *extra]
    _run([*launcher, *cli, f"train.out_dir={tmp_path}"])
    one, two = _weights(one_process_two_micro_batches), _weights(tmp_path)
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4, msg=key)
    # both heads were trained in this step (a batch of one direction leaves one of them without gradient)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["image_loss"] > 0 and rows[-1]["text_loss"] > 0


def test_sigkill_then_resume_is_bit_identical(tmp_path) -> None:
    overrides = [
        str(CONFIGS / "unified-evotok-tiny.yaml"),
        *SMALL,
        "train.max_steps=6",
        "train.save_every=2",
        "train.batch_size=4",
        "unified.model.caption_dropout=0.5",  # random draws that the checkpoint must restore
        "unified.cache_codes=false",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run([sys.executable, str(WORKER), *overrides, f"train.out_dir={full}"])
    cmd = [sys.executable, str(WORKER), *overrides, f"train.out_dir={killed}", "--sleep-after-step", "4"]
    marker = killed / "checkpoints" / "step_00000004" / "manifest.json"
    kill_when_file_appears(cmd, marker, env=_env(), timeout_s=120)
    assert not (killed / "model").exists()
    _run([sys.executable, str(WORKER), *overrides, f"train.out_dir={killed}", "train.resume=true"])
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    tail = [json.loads(x)["loss"] for x in (full / "log.jsonl").read_text().splitlines()[-2:]]
    resumed = [json.loads(x)["loss"] for x in (killed / "log.jsonl").read_text().splitlines()[-2:]]
    assert tail == resumed


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A short run on 32 px shapes (8 x 8 codes of evotok-tiny) with the held-out caption loss measured."""
    out = tmp_path_factory.mktemp("unified")
    config = load_unified_run_config(
        CONFIGS / "unified-evotok-tiny.yaml",
        [
            "unified.text_captions=1000",
            "unified.heldout_samples=48",
            "train.max_steps=40",
            "train.save_every=0",
            "train.progress=false",
            "train.optim.lr=0.002",
            "train.optim.warmup_steps=5",
            f"train.out_dir={out}",
        ],
    )
    train_unified(config)
    return out


def test_heldout_caption_loss_falls(trained) -> None:
    record = json.loads((trained / "heldout.json").read_text())
    assert record["split"] == "val" and record["samples"] == 48 and record["step"] == 40
    # 40 steps learn the caption language: well under the untrained loss (about ln(vocab))
    assert record["loss_after"] < 0.7 * record["loss_before"], record


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_generate_writes_seeded_pngs_and_caption_reads_them(trained, tmp_path, capsys) -> None:
    model = str(trained / "model")
    prompts = ["two small red circles on the left", "a blue star"]
    args = ["generate", model, *prompts, "--num-samples", "3", "--batch-size", "2", "--cfg", "2.0"]
    assert main([*args, "--seed", "5", "--out-dir", str(tmp_path / "a")]) == 0
    first = _lines(capsys)
    assert [(r["prompt"], r["sample"]) for r in first] == [(p, s) for p in prompts for s in range(3)]
    for record in first:
        with Image.open(record["path"]) as image:
            assert image.size == (32, 32) and image.format == "PNG"
    assert main([*args, "--seed", "5", "--out-dir", str(tmp_path / "b")]) == 0
    again = _lines(capsys)
    assert main([*args, "--seed", "6", "--out-dir", str(tmp_path / "c")]) == 0
    other = _lines(capsys)
    same = [Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes() for a, b in zip(first, again)]
    assert all(same)  # the same seed gives the same images
    assert any(Path(a["path"]).read_bytes() != Path(c["path"]).read_bytes() for a, c in zip(first, other))

    images = [r["path"] for r in first[:3]]
    assert main(["caption", model, *images, "--max-tokens", "12", "--batch-size", "2"]) == 0
    captions = _lines(capsys)
    assert [c["image"] for c in captions] == images
    assert all(isinstance(c["caption"], str) and c["caption"] for c in captions)


def test_cli_refuses_what_is_not_a_unified_model(trained, tmp_path, capsys) -> None:
    assert main(["generate", str(tmp_path), "a red circle"]) == 2
    assert "is not a unified model checkpoint" in capsys.readouterr().err
    assert main(["caption", "no-such-model", "x.png"]) == 2
    assert capsys.readouterr().err.startswith("polytok: error: no unified model 'no-such-model'")
    assert main(["caption", str(trained / "model"), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_run_config_is_checked_before_anything_runs(tmp_path) -> None:
    path = CONFIGS / "unified-unitok-tiny.yaml"
    with pytest.raises(ConfigError, match=r"unified\.model\.depth_layrs"):
        load_unified_run_config(path, ["unified.model.depth_layrs=3"])
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        load_unified_run_config(path, ["train.batch_size=1"])
    for name in ("unitok", "evotok", "polytok"):
        config = load_unified_run_config(CONFIGS / f"unified-{name}-tiny.yaml")
        assert config.unified.tokenizer == f"{name}-tiny" and config.data.name == "shapes"


def test_real_size_backbone_config_counts_qwen2_5_0_5b_parameters_on_meta() -> None:
    """The Qwen2.5-0.5B-shaped backbone of the config file, built on the meta device (no memory), has
    the parameter count of that architecture, counted here from its shapes independently."""
    from polytok.unified.model import build_backbone

    config = load_unified_run_config(CONFIGS / "unified-qwen2.5-0.5b-shaped.yaml")
    spec = config.unified.model.backbone
    vocab = 151_936  # Qwen2.5's vocabulary: the published 494M total
    with torch.device("meta"):
        backbone = build_backbone(spec, vocab)
    count = sum(p.numel() for p in backbone.parameters())  # tied embeddings are counted once
    d, f, layers, kv = 896, 4864, 24, 2 * 64
    attention = d * d + d + 2 * (d * kv + kv) + d * d  # q (with bias), k and v (with bias), o
    per_layer = attention + 3 * d * f + 2 * d  # SwiGLU MLP, two RMSNorms
    assert count == vocab * d + layers * per_layer + d
    assert 494_000_000 < count < 494_100_000
    assert all(p.device.type == "meta" for p in backbone.parameters())


@pytest.mark.parametrize("name", ["unitok", "polytok"])
def test_tiny_configs_of_the_other_layouts_train_and_export(tmp_path, name) -> None:
    """Multi-codebook (unitok-tiny) and residual multi-codebook (polytok-tiny) codes through the same
    recipe: two steps, both losses finite, and the exported model reloads with its image tokenizer."""
    from polytok.unified.hub import load_unified

    config = load_unified_run_config(
        CONFIGS / f"unified-{name}-tiny.yaml",
        [
            *SMALL,
            "train.max_steps=2",
            "train.save_every=0",
            "train.batch_size=4",
            f"train.out_dir={tmp_path}",
        ],
    )
    train_unified(config)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r["image_loss"] > 0 and r["text_loss"] > 0 for r in rows) and len(rows) == 2
    model, tok = load_unified(str(tmp_path / "model"))
    assert tok.config.name == f"{name}-tiny" and model.layout.grid == (4, 4)
    assert torch.equal(model.state_dict()["depth_head.depth_pos"], _weights(tmp_path)["depth_head.depth_pos"])


def test_a_dataset_of_codes_and_captions_plugs_in(tmp_path) -> None:
    """The seam for token shards: items {"codes", "caption"} train the model without the image dataset
    (the text tokenizer is trained on their captions)."""
    from polytok.recipes.unified_run import load_image_tokenizer

    tok = load_image_tokenizer("evotok-tiny")
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, tok.config.quantizer.codebook_size, (6, 4, 4, *tok.code_shape), generator=g)
    items = [{"codes": c, "caption": f"item {i} of a list"} for i, c in enumerate(codes)]
    config = load_unified_run_config(
        CONFIGS / "unified-evotok-tiny.yaml",
        [
            *SMALL,
            "train.max_steps=2",
            "train.save_every=0",
            "train.batch_size=2",
            f"train.out_dir={tmp_path}",
        ],
    )
    model = train_unified(config, dataset=items)
    assert model.text_tokenizer.decode(model.text_tokenizer.encode("item 3 of a list")) == "item 3 of a list"
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["image_loss"] > 0 and r["text_loss"] > 0 for r in rows)


def test_every_batch_holds_both_directions_and_dropout_follows_the_sample() -> None:
    from polytok.unified.data import MixedTaskCollate
    from unified_helpers import random_codes, text_tokenizer, tiny_model

    model = tiny_model("evotok-tiny")
    codes = random_codes(model, 8)
    items = [{"codes": c, "caption": "a red circle", "key": (0, i)} for i, c in enumerate(codes)]
    collate = MixedTaskCollate(model.format, text_tokenizer(), caption_dropout=0.5, seed=3)
    whole = collate(items)
    assert whole["image_target"].tolist() == [True, False] * 4  # both heads trained by every batch

    # a t2i row's caption length: dropped -> only <bos> <t2i> <boi> before the image
    def prompt_lengths(batch):
        return (batch["image_start"] - (1 - batch["attention_mask"]).sum(1)).tolist()

    halves = [collate(items[:4]), collate(items[4:])]
    assert prompt_lengths(whole) == prompt_lengths(halves[0]) + prompt_lengths(halves[1])
    t2i = [n for n, row in zip(prompt_lengths(whole), whole["image_target"].tolist()) if row]
    assert 3 in t2i and any(n > 3 for n in t2i)  # seed 3 drops some captions and keeps others


def test_object_cover_is_each_grid_cell_s_mean_of_the_object_mask() -> None:
    """EncodedCaptions over `shapes` gives each grid cell's object coverage (against a naive loop over the
    cells of the dataset's own mask); the collate keeps it only when every item has one."""
    from polytok.data.registry import build_dataset
    from polytok.recipes.unified_run import load_image_tokenizer
    from polytok.unified.data import EncodedCaptions, MixedTaskCollate, cell_cover
    from unified_helpers import text_tokenizer, tiny_model

    tok = load_image_tokenizer("evotok-tiny")
    images = build_dataset("shapes", split="train", image_size=32, length=4)
    encoded = EncodedCaptions(images, tok)
    items = [encoded[i] for i in range(4)]
    for i, item in enumerate(items):
        mask = images[i]["object_mask"][0].double()
        cover = item["object_cover"]
        assert cover.shape == (8, 8) == tuple(item["codes"].shape[:2])
        for y in range(8):
            for x in range(8):
                want = float(mask[4 * y : 4 * y + 4, 4 * x : 4 * x + 4].mean())
                assert abs(float(cover[y, x]) - want) < 1e-6
        assert 0 < float(cover.max()) <= 1 and float(cover.min()) == 0  # objects somewhere, not everywhere
    model = tiny_model("evotok-tiny", grid=(8, 8))
    collate = MixedTaskCollate(model.format, text_tokenizer(), caption_dropout=0.0)
    batch = collate(items)
    stacked = torch.stack([it["object_cover"] for it in items]).reshape(4, 64)
    assert torch.equal(batch["object_cover"], stacked)
    items[2] = {k: v for k, v in items[2].items() if k != "object_cover"}
    assert collate(items)["object_cover"] is None
    with pytest.raises(ValueError, match="multiples of the grid"):
        cell_cover(torch.zeros(1, 30, 30), (8, 8))
