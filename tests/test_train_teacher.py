"""EvoTok-recipe training with its real frozen teacher (EfficientNet-Lite0): EMA, checkpoint contents and
SIGKILL + resume through the ``polytok train`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from polytok.models.tokenizer import Tokenizer
from polytok.recipes.tokenizer_run import load_run_config, train_tokenizer
from polytok.train.checkpoint import list_checkpoints, load_safetensors
from process_kill import kill_when_file_appears

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "evotok-tiny.yaml"
SMALL = [
    "data.name=shapes",
    "train.batch_size=2",
    "train.device=cpu",
    "train.progress=false",
    "train.log_every=1",
    "train.optim.warmup_steps=2",
]


def _stored_keys() -> set[str]:
    """What save_pretrained stores for evotok-tiny: the tokenizer's own tensors, no teacher."""
    return set(Tokenizer.from_preset("evotok-tiny", load_backbone_weights=False).checkpoint_state_dict())


def _assert_trainable_state_only(weights: dict[str, torch.Tensor]) -> None:
    assert not [k for k in weights if k.startswith("teacher.")]
    assert set(weights) == _stored_keys()


def test_evotok_tiny_trains_with_weight_ema_and_checkpoints_hold_no_teacher(tmp_path):
    out = tmp_path / "run"
    run = ["train.max_steps=3", "train.save_every=1", "train.ema_decay=0.5", f"train.out_dir={out}"]
    config = load_run_config(CONFIG, [*SMALL, *run])
    tokenizer = train_tokenizer(config)
    assert tokenizer.teacher is not None  # the real teacher was used
    final = out / "checkpoints" / "step_00000003"
    model, ema = load_safetensors(final / "model.safetensors"), load_safetensors(final / "ema.safetensors")
    _assert_trainable_state_only(model)
    _assert_trainable_state_only(ema)
    # the EMA lags the trained weights, and the exported tokenizer carries the EMA weights
    assert any(not torch.equal(ema[k], model[k]) for k in model if model[k].is_floating_point())
    exported = load_safetensors(out / "tokenizer" / "model.safetensors")
    assert set(exported) == set(ema)
    for key, value in exported.items():
        assert torch.equal(value, ema[key].to(value.dtype)), key


# ---------------------------------------------------------------------------------------------------------
# kill -9 and resume


def _command(out_dir: Path, extra: list[str]) -> list[str]:
    train = [sys.executable, "-m", "polytok.cli", "train", str(CONFIG)]
    return [*train, *SMALL, f"train.out_dir={out_dir}", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(out_dir: Path, extra: list[str]) -> None:
    proc = subprocess.run(_command(out_dir, extra), env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"polytok train failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


STEPS = 6
RUN = [f"train.max_steps={STEPS}", "train.save_every=2", "train.keep_last=1", "train.ema_decay=0.9"]


def test_evotok_tiny_killed_and_resumed_ends_bit_identical(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _run(full, RUN)

    first = killed / "checkpoints" / "step_00000002" / "manifest.json"
    kill_when_file_appears(_command(killed, RUN), first, env=_env(), timeout_s=240)
    saved = [step for step, _ in list_checkpoints(killed / "checkpoints")]
    assert saved and max(saved) < STEPS and not (killed / "tokenizer").exists()  # killed mid-run

    _run(killed, [*RUN, "train.resume=true"])
    logged = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    # continued from the checkpoint, not restarted
    assert logged[-(STEPS - max(saved)) :] == list(range(max(saved) + 1, STEPS + 1))
    last = f"step_{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors"):
        mine = load_safetensors(killed / "checkpoints" / last / name)
        reference = load_safetensors(full / "checkpoints" / last / name)
        _assert_trainable_state_only(mine)
        assert mine.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(mine[key], value), f"{name}: {key} differs"
    exported = load_safetensors(killed / "tokenizer" / "model.safetensors")
    for key, value in load_safetensors(full / "tokenizer" / "model.safetensors").items():
        assert torch.equal(exported[key], value), key


def test_evotok_tiny_under_fsdp_with_ema_exports_the_gathered_weights(tmp_path):
    """Two processes, FSDP: the teacher is part of the sharded model but not of the checkpoints, the EMA
    averages sharded parameters and plain buffers, and the export gathers the shards."""
    out = tmp_path / "fsdp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run = ["train.max_steps=2", "train.save_every=1", "train.ema_decay=0.9", "train.strategy=fsdp"]
    cmd = [*launcher, "-m", "polytok.cli", "train", str(CONFIG), *SMALL, *run, f"train.out_dir={out}"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    final = out / "checkpoints" / "step_00000002"
    ema = load_safetensors(final / "ema.safetensors")
    _assert_trainable_state_only(load_safetensors(final / "model.safetensors"))
    _assert_trainable_state_only(ema)
    exported = load_safetensors(out / "tokenizer" / "model.safetensors")
    assert set(exported) == set(ema)
    for key, value in exported.items():
        assert torch.equal(value, ema[key].to(value.dtype)), key
