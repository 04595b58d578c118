"""Real multi-process runs of the engine: torchrun DDP / FSDP on CPU (gloo) and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polytok.train.checkpoint import load_pickled, load_safetensors
from process_kill import kill_when_file_appears

WORKER = Path(__file__).with_name("train_worker_toy.py")
COMMON = ["train.progress=false", "train.device=cpu", "train.log_every=1"]


def _command(nproc: int, overrides: list[str]) -> list[str]:
    if nproc == 1:
        return [sys.executable, str(WORKER), *COMMON, *overrides]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, str(WORKER), *COMMON, *overrides]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run_worker(nproc: int, out_dir: Path, overrides: list[str], timeout: float = 120) -> dict:
    cmd = _command(nproc, [f"train.out_dir={out_dir}", *overrides])
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return json.loads((out_dir / "result.json").read_text())


def final_weights(out_dir: Path, step: int, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_safetensors(out_dir / "checkpoints" / f"step_{step:08d}" / name)


def assert_close_dicts(a: dict, b: dict, exact: bool = False) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), f"{key} differs by {(a[key] - b[key]).abs().max()}"
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{key} differs")


STEPS = 10  # 64 samples, 8 per step: crosses an epoch boundary
NAN_STEP = 3  # this step's loss is NaN (in the 2-process runs on rank 1 only): it must be skipped everywhere
BASE = [
    f"train.max_steps={STEPS}",
    "train.precision=fp32",
    "train.optim.warmup_steps=3",
    "train.optim.lr=1e-2",
    "train.ema_decay=0.8",
    "train.save_every=0",
    f"toy.nan_steps=[{NAN_STEP}]",
]


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory):
    """One process, batch 8 per step: the reference for the 2-process runs (global batch 2 x 4)."""
    out = tmp_path_factory.mktemp("single")
    result = run_worker(1, out, [*BASE, "train.batch_size=8"])
    assert result["skipped"] == 1
    init = _initial_weights()
    weights = final_weights(out, STEPS)
    assert any(not torch.allclose(weights[k], init[k]) for k in weights)  # it trained
    return out, result


def _initial_weights() -> dict[str, torch.Tensor]:
    sys.path.insert(0, str(WORKER.parent))
    from train_worker_toy import ToyConfig, build_model

    return {k: v.detach().clone() for k, v in build_model(ToyConfig()).state_dict().items()}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_run_equals_one_process(tmp_path, strategy, single_process_reference):
    """Same final weights as one process with the same global batch, also across a step that one rank
    alone poisons with NaN: every rank skips it (no hang, no divergence), and it is counted and logged."""
    ref_dir, _ = single_process_reference
    extra = ["train.fsdp_layers=[ToyBlock]"] if strategy == "fsdp" else []
    overrides = [*BASE, "train.batch_size=4", f"train.strategy={strategy}", "toy.nan_rank=1", *extra]
    result = run_worker(2, tmp_path, overrides)
    assert result["world_size"] == 2 and result["step"] == STEPS and result["skipped"] == 1
    assert_close_dicts(final_weights(tmp_path, STEPS), final_weights(ref_dir, STEPS))
    ema, ref_ema = (
        final_weights(tmp_path, STEPS, "ema.safetensors"),
        final_weights(ref_dir, STEPS, "ema.safetensors"),
    )
    assert_close_dicts(ema, ref_ema)
    assert all(torch.isfinite(t).all() for t in final_weights(tmp_path, STEPS).values())
    # the same losses were logged (averaged over ranks == mean over the global batch)
    logs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    ref_logs = [json.loads(line) for line in (ref_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, STEPS + 1))
    assert [r["step_skipped"] for r in logs] == [s == NAN_STEP + 1 for s in range(1, STEPS + 1)]
    assert [r["skipped"] for r in logs] == [int(s > NAN_STEP) for s in range(1, STEPS + 1)]
    for mine, theirs in zip(logs, ref_logs):
        assert mine["lr"] == pytest.approx(theirs["lr"], rel=1e-12)
        if not mine["step_skipped"]:
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["images_per_s"] > 0


# ---------------------------------------------------------------------------------------------------------
# kill -9 and resume


def _kill_resume_overrides(nproc: int) -> list[str]:
    per_rank = 4 // nproc
    return [
        "train.max_steps=12",
        "train.save_every=4",
        "train.keep_last=2",
        "train.grad_accum_steps=2",
        f"train.batch_size={per_rank}",
        "train.precision=bf16",
        "train.ema_decay=0.9",
        "train.optim.warmup_steps=2",
        "toy.dataset_size=40",
        "toy.dropout=0.1",
        "toy.noise=0.05",
        "toy.gan=true",
        "train.disc_optim.lr=1e-3",
    ]


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_then_resume_is_bit_identical(tmp_path, nproc):
    overrides = _kill_resume_overrides(nproc)
    full_dir, killed_dir = tmp_path / "full", tmp_path / "killed"
    run_worker(nproc, full_dir, overrides)

    # the same run, slowed down after step 8 so that it is surely mid-way when killed
    cmd = _command(
        nproc, [f"train.out_dir={killed_dir}", *overrides, "toy.sleep_after_step=8", "toy.sleep_s=60"]
    )
    marker = killed_dir / "checkpoints" / "step_00000008" / "manifest.json"
    kill_when_file_appears(cmd, marker, env=_env(), timeout_s=90)
    assert not (killed_dir / "checkpoints" / "step_00000012").exists()
    assert not (killed_dir / "result.json").exists()

    resumed = run_worker(nproc, killed_dir, [*overrides, "train.resume=true"])
    assert resumed["resumed_from"].endswith("step_00000008") and resumed["step"] == 12
    for name in ("model.safetensors", "ema.safetensors", "discriminator.safetensors"):
        assert_close_dicts(final_weights(killed_dir, 12, name), final_weights(full_dir, 12, name), exact=True)
    a = load_pickled(killed_dir / "checkpoints" / "step_00000012" / "trainer_state.pt")
    b = load_pickled(full_dir / "checkpoints" / "step_00000012" / "trainer_state.pt")
    assert (
        (a["epoch"], a["samples_in_epoch"]) == (b["epoch"], b["samples_in_epoch"]) == (2, 4 // nproc * 2 * 2)
    )
    for key in ("optimizer", "disc_optimizer"):
        for name, state in b[key]["state"].items():
            for field, value in state.items():
                assert torch.equal(a[key]["state"][name][field], value), (key, name, field)
