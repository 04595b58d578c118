"""Training the unified model from token shards written by ``polytok encode``: the stream feeds exactly the
encoded samples, a set of another tokenizer is refused, and SIGKILL + resume on the stream is bit-identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import IterableDataset

from polytok.cli import main
from polytok.recipes.unified_run import load_unified_run_config, train_unified
from polytok.tokensets.shards import load_token_shards
from process_kill import kill_when_file_appears

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "unified-evotok-tiny.yaml"
WORKER = Path(__file__).with_name("train_worker_unified.py")
SAMPLES = 48  # shards of 8
SMALL = [
    "data.image_size=16",  # 4 x 4 codes of evotok-tiny
    "unified.text_captions=200",
    "train.progress=false",
    "train.log_every=1",
    "train.precision=fp32",
    "train.device=cpu",
    "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokens")
    args = ["encode", "evotok-tiny", "shapes", "--split", "train", "--image-size", "16"]
    assert main([*args, "--max-images", str(SAMPLES), "--shard-size", "8", "--out", str(out)]) == 0
    assert len(list(out.glob("tokens-*.tar"))) == SAMPLES // 8
    return out


def _log(out_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (out_dir / "log.jsonl").read_text().splitlines()]


def _weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(out_dir / "model" / "model.safetensors")


class InMemoryStream(IterableDataset):
    """The given items in their order, each epoch (keys tagged with the epoch as a token stream does)."""

    def __init__(self, items: list[dict]) -> None:
        super().__init__()
        self.items, self.epoch = items, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for item in self.items:
            yield {**item, "key": (self.epoch, item["index"])}


def test_training_from_token_shards_feeds_exactly_the_encoded_samples(tokens, tmp_path) -> None:
    """Two steps from the token set (shards in order) equal two steps from the same codes, captions and
    sample indices given in memory through the dataset seam: same losses, bit-identical weights. Caption
    dropout 0.5 follows the sample index, so a wrong key or a wrong sample changes the result."""
    overrides = [
        *SMALL,
        "train.max_steps=2",
        "train.save_every=0",
        "train.batch_size=4",
        "unified.model.caption_dropout=0.5",
        "unified.heldout_samples=8",
        f"unified.heldout_data={tokens}",  # the held-out loss may read a token set too
        "data.options.shuffle=false",
    ]
    from_shards, in_memory = tmp_path / "shards", tmp_path / "memory"
    train_unified(
        load_unified_run_config(CONFIG, [*overrides, f"data.name={tokens}", f"train.out_dir={from_shards}"])
    )

    rows = load_token_shards(tokens)
    assert rows["keys"] == [f"{i:09d}" for i in range(SAMPLES)]  # the dataset order of shapes
    items = [
        {"codes": c, "caption": t, "index": int(k)}
        for c, t, k in zip(rows["codes"], rows["captions"], rows["keys"])
    ]
    config = load_unified_run_config(CONFIG, [*overrides, f"train.out_dir={in_memory}"])
    train_unified(config, dataset=InMemoryStream(items))

    a, b = _log(from_shards), _log(in_memory)
    assert len(a) == 2 and all(r["image_loss"] > 0 and r["text_loss"] > 0 for r in a)  # both directions
    assert [(r["loss"], r["image_loss"], r["text_loss"]) for r in a] == [
        (r["loss"], r["image_loss"], r["text_loss"]) for r in b
    ]
    wa, wb = _weights(from_shards), _weights(in_memory)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    heldout = json.loads((from_shards / "heldout.json").read_text())
    assert heldout["samples"] == 8 and heldout["loss_after"] > 0


def test_a_token_set_of_another_tokenizer_is_refused(tokens, tmp_path, capsys) -> None:
    other = ROOT / "configs" / "unified-unitok-tiny.yaml"
    args = ["train", str(other), *SMALL, f"data.name={tokens}", f"train.out_dir={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("polytok: error: token set")
    assert "'evotok-tiny'" in err and "'unitok-tiny'" in err
    assert not (tmp_path / "checkpoints").exists()


def test_a_grid_other_than_the_tokens_and_a_missing_heldout_source_are_refused(tokens, tmp_path) -> None:
    base = [*SMALL, f"data.name={tokens}", f"train.out_dir={tmp_path}"]
    with pytest.raises(ValueError, match=r"4 x 4 grid of codes, data.image_size gives 8 x 8"):
        train_unified(
            load_unified_run_config(CONFIG, [*base, "data.image_size=32", "unified.heldout_samples=0"])
        )
    with pytest.raises(ValueError, match=r"unified.heldout_data"):
        train_unified(load_unified_run_config(CONFIG, [*base, "unified.heldout_samples=4"]))


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(args: list[str]) -> None:
    result = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_sigkill_then_resume_on_token_shards_is_bit_identical(tokens, tmp_path) -> None:
    """Shuffled shards and samples, 6 batches of 8 per epoch: killed after the checkpoint of step 4, the
    resumed run re-reads epoch 0, drops 4 batches, crosses into epoch 1 and ends where the full run does."""
    overrides = [
        str(CONFIG),
        *SMALL,
        f"data.name={tokens}",
        "data.options.shuffle_buffer=8",
        "unified.heldout_samples=0",
        "unified.model.caption_dropout=0.5",
        "train.max_steps=8",
        "train.save_every=2",
        "train.batch_size=8",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run([sys.executable, str(WORKER), *overrides, f"train.out_dir={full}"])
    cmd = [sys.executable, str(WORKER), *overrides, f"train.out_dir={killed}", "--sleep-after-step", "4"]
    marker = killed / "checkpoints" / "step_00000004" / "manifest.json"
    kill_when_file_appears(cmd, marker, env=_env(), timeout_s=120)
    _run([sys.executable, str(WORKER), *overrides, f"train.out_dir={killed}", "train.resume=true"])
    full_log, resumed_log = _log(full), _log(killed)
    assert [r["epoch"] for r in full_log] == [0] * 6 + [1] * 2
    assert [r["loss"] for r in resumed_log[-4:]] == [r["loss"] for r in full_log[-4:]]
    a, b = _weights(full), _weights(killed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_torchrun_two_ranks_stream_the_token_set_in_step(tokens, tmp_path) -> None:
    """2 gloo ranks on 6 shards: each rank streams its 3 shards (3 batches of 8 per epoch), both ranks
    cross the epoch end together and the run exports; the held-out loss encodes shapes on the fly while
    ``data.options`` (the stream's shuffle buffer) apply to the token set only."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    overrides = [
        *SMALL,
        f"data.name={tokens}",
        "data.options.shuffle_buffer=8",
        "unified.heldout_data=shapes",
        "unified.heldout_samples=8",
        "train.max_steps=4",
        "train.save_every=0",
        "train.batch_size=8",
    ]
    _run([*launcher, "-m", "polytok.cli", "train", str(CONFIG), *overrides, f"train.out_dir={tmp_path}"])
    log = _log(tmp_path)
    assert [r["epoch"] for r in log] == [0, 0, 0, 1]
    assert all(r["image_loss"] > 0 and r["text_loss"] > 0 for r in log)
    heldout = json.loads((tmp_path / "heldout.json").read_text())
    assert heldout["samples"] == 8 and heldout["split"] == "val"
    assert (tmp_path / "model" / "image_tokenizer").is_dir()
