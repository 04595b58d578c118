"""The wall-clock limit ``train.max_minutes``: the stop, the schedule's end, the checkpoint and resume,
the agreement of two real gloo ranks, and both recipes through their dotted overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from polytok.config import load_yaml_with_overrides
from polytok.recipes.tokenizer_run import load_run_config
from polytok.train import OptimConfig, TrainConfig, Trainer
from polytok.train.checkpoint import STATE_FILE, find_latest_checkpoint, load_pickled
from polytok.train.schedule import build_scheduler, lr_multiplier, set_time_fraction
from test_train_distributed import run_worker
from train_worker_toy import ToyConfig, ToyObjective, build_dataset, build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PEAK, FLOOR = 1e-2, 0.1


def toy_trainer(out_dir: Path, sleep_s: float = 0.0, **kw) -> Trainer:
    """The toy MLP; each step made at least ``sleep_s`` long so a time budget is reached in few steps."""
    config = dict(
        max_steps=10_000,
        batch_size=8,
        precision="fp32",
        device="cpu",
        progress=False,
        out_dir=str(out_dir),
        log_every=1000,
        save_every=0,
        optim=OptimConfig(lr=PEAK, warmup_steps=2, min_lr_ratio=FLOOR),
    )
    config.update(kw)
    toy = ToyConfig()
    callbacks = [lambda trainer, record: time.sleep(sleep_s)] if sleep_s else []
    return Trainer(
        build_model(toy), ToyObjective(toy, 0), build_dataset(toy), TrainConfig(**config), callbacks=callbacks
    )


def state_of_latest(out_dir: Path) -> tuple[Path, dict]:
    latest = find_latest_checkpoint(out_dir / "checkpoints")
    assert latest is not None
    return latest, load_pickled(latest / STATE_FILE)


def test_a_time_limited_run_stops_early_at_the_schedule_end_and_saves_that_step(tmp_path, capsys):
    trainer = toy_trainer(tmp_path, sleep_s=0.05, max_minutes=0.005, progress=True)  # 0.3 s
    trainer.fit()
    assert 1 <= trainer.step < 10_000
    # the lr the next step would use: the floor, though the step budget is far from spent
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(PEAK * FLOOR, rel=1e-9)
    assert trainer.train_seconds >= 0.3
    latest, state = state_of_latest(tmp_path)
    assert latest.name == f"step_{trainer.step:08d}"
    assert state["train_seconds"] == pytest.approx(trainer.train_seconds)
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == trainer.step  # the last step is logged like a max_steps end
    assert lines[-1]["train_seconds"] == pytest.approx(trainer.train_seconds)
    assert "0.005 min budget" in capsys.readouterr().err  # the bar shows the time budget


def test_schedule_follows_the_larger_fraction_of_steps_and_time():
    total, warm = 100, 10
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1.0)
    sched = build_scheduler(opt, OptimConfig(lr=1.0, warmup_steps=warm, min_lr_ratio=FLOOR), total)
    set_time_fraction(sched, 0.55)  # 55% of the time used after 1 step: past warm-up, half-way in decay
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_multiplier(55, total, warm, FLOOR), rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(FLOOR + (1 - FLOOR) * 0.5, rel=1e-12)
    set_time_fraction(sched, 0.01)  # steps ahead of the time: the step decides
    for _ in range(60):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_multiplier(61, total, warm, FLOOR), rel=1e-12)
    set_time_fraction(sched, 1.5)  # past the budget: clipped to the end
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(FLOOR, rel=1e-12)


def test_resume_keeps_the_time_already_spent(tmp_path):
    first = toy_trainer(tmp_path, sleep_s=0.1, max_steps=3, max_minutes=10.0)
    first.fit()
    _, state = state_of_latest(tmp_path)
    spent = state["train_seconds"]
    assert first.step == 3 and spent >= 0.2  # the sleeps after steps 1 and 2 precede the last reading
    # a budget of exactly the time spent: the resumed run has nothing left and trains no step
    resumed = toy_trainer(tmp_path, max_steps=10_000, max_minutes=spent / 60, resume=True)
    resumed.fit()
    assert resumed.resumed_from is not None
    assert resumed.step == 3 and resumed.train_seconds == pytest.approx(spent)
    # with more budget it continues, and the time keeps counting from what was spent
    more = toy_trainer(tmp_path, sleep_s=0.05, max_steps=6, max_minutes=10.0, resume=True)
    more.fit()
    assert more.step == 6 and more.train_seconds >= spent + 2 * 0.05


def test_max_minutes_is_checked_and_parsed_as_a_dotted_override():
    config = load_run_config(CONFIGS / "unitok-tiny.yaml", ["train.max_minutes=2"])
    assert config.train.max_minutes == 2.0 and isinstance(config.train.max_minutes, float)
    assert load_run_config(CONFIGS / "unitok-tiny.yaml", []).train.max_minutes is None
    with pytest.raises(ValueError, match="max_minutes must be > 0"):
        load_run_config(CONFIGS / "unitok-tiny.yaml", ["train.max_minutes=0"])
    with pytest.raises(ValueError, match="max_minutes"):
        load_run_config(CONFIGS / "unitok-tiny.yaml", ["train.max_minutes=soon"])
    raw = load_yaml_with_overrides(CONFIGS / "unified-evotok-tiny.yaml", ["train.max_minutes=0.5"])
    assert raw["train"]["max_minutes"] == 0.5


def test_two_ranks_stop_at_the_same_step_on_rank_0s_clock(tmp_path):
    """Rank 1 starts its loop 1.5 s after rank 0: by its own clock it would train 1.5 s longer and wait
    forever for rank 0 in the gradient all-reduce. Rank 0's clock decides for both."""
    overrides = [
        "train.max_steps=10000",
        "train.max_minutes=0.03",  # 1.8 s
        "train.batch_size=4",
        "train.precision=fp32",
        "train.save_every=0",
        "toy.sleep_after_step=0",
        "toy.sleep_s=0.1",
        "toy.delay_rank=1",
        "toy.delay_s=1.5",
        "toy.save_rank_weights=true",
    ]
    result = run_worker(2, tmp_path, overrides, timeout=180)
    steps = [json.loads((tmp_path / f"final_rank{r}.json").read_text())["step"] for r in (0, 1)]
    assert steps[0] == steps[1] == result["step"]
    assert 1 <= result["step"] < 10_000
    latest, state = state_of_latest(tmp_path)
    assert latest.name == f"step_{result['step']:08d}" and state["train_seconds"] >= 1.8
    ranks = [load_file(str(tmp_path / f"weights_rank{r}.safetensors")) for r in (0, 1)]
    assert all(ranks[0][k].equal(ranks[1][k]) for k in ranks[0])


def _cli(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "polytok.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


SMALL_RUN = ["train.progress=false", "train.log_every=1", "train.precision=fp32", "train.device=cpu"]


def test_tokenizer_recipe_stops_on_the_clock_and_exports(tmp_path):
    _cli(
        [
            "train",
            str(CONFIGS / "unitok-tiny.yaml"),
            *SMALL_RUN,
            "train.batch_size=4",
            "train.max_steps=1000",
            "train.max_minutes=0.0001",  # 6 ms: the first step ends the run
            f"train.out_dir={tmp_path}",
        ]
    )
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert (tmp_path / "checkpoints" / "step_00000001").is_dir()
    assert (tmp_path / "tokenizer" / "model.safetensors").is_file()


def test_unified_recipe_stops_on_the_clock_and_exports(tmp_path):
    _cli(
        [
            "train",
            str(CONFIGS / "unified-evotok-tiny.yaml"),
            *SMALL_RUN,
            "data.image_size=16",
            "unified.text_captions=200",
            "unified.heldout_samples=0",
            "train.batch_size=4",
            "train.max_steps=1000",
            "train.max_minutes=0.0001",
            f"train.out_dir={tmp_path}",
        ]
    )
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    assert (tmp_path / "model" / "model.safetensors").is_file()
