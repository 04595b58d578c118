"""Defaults that must hold on any machine: a zero loss weight under DDP, and the precision a run used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from polytok import Tokenizer
from polytok.recipes.tokenizer_run import load_run_config, train_tokenizer
from polytok.train.precision import native_bf16

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_two_rank_ddp_trains_with_a_zero_semantic_weight(tmp_path) -> None:
    """``loss.semantic=0`` (and ``loss.caption_choice=0``) leaves the CLIP head and logit scale without
    gradients; with DDP's default settings the second step failed. Two gloo ranks now train 3 steps, and
    the unused branch is untouched."""
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "polytok.cli",
            "train",
            str(CONFIGS / "unitok-tiny.yaml"),
            "data.name=shapes",
            "loss.semantic=0",
            "loss.caption_choice=0",  # the config's second semantic term
            "loss.perceptual=none",
            "train.max_steps=3",
            "train.batch_size=4",
            "train.precision=fp32",
            "train.optim.warmup_steps=0",
            "train.progress=false",
            "train.save_every=0",
            "train.log_every=1",
            f"train.out_dir={out}",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert not any(r["step_skipped"] for r in rows) and "clip/loss" not in rows[-1]

    torch.manual_seed(0)  # train.seed: the run's initial weights
    initial = Tokenizer.from_preset("unitok-tiny").checkpoint_state_dict()
    trained = load_file(out / "tokenizer" / "model.safetensors")
    assert trained.keys() == initial.keys()
    unused = [k for k in trained if k.startswith(("clip_head.", "text_tower.", "log_logit_scale"))]
    assert len(unused) >= 3 and all(torch.equal(trained[k], initial[k]) for k in unused)
    assert any(not torch.equal(trained[k], initial[k]) for k in trained if k.startswith("encoder."))


def test_the_run_records_the_precision_it_resolved(tmp_path) -> None:
    cfg = load_run_config(
        CONFIGS / "unitok-tiny.yaml",
        [
            "data.name=shapes",
            "loss.perceptual=none",
            "train.precision=auto",
            "train.max_steps=1",
            "train.batch_size=2",
            "train.progress=false",
            "train.save_every=0",
            f"train.out_dir={tmp_path}",
        ],
    )
    train_tokenizer(cfg)
    recorded = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert recorded["train"]["precision"] == ("bf16" if native_bf16("cpu") else "fp32")
    assert recorded["model"] == {"preset": "unitok-tiny", "config": None, "overrides": {}}
    assert load_run_config(tmp_path / "run.yaml").train.max_steps == 1  # the record is a valid run config
