"""Real training of the tiny presets: the loss falls on built-in data, and DDP equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from polytok.recipes.tokenizer_run import load_run_config, train_tokenizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_tiny_preset_loss_falls_on_builtin_photos(tmp_path) -> None:
    cfg = load_run_config(
        CONFIGS / "evotok-tiny.yaml",
        [
            "data.name=photos",
            "train.max_steps=40",
            "train.batch_size=8",
            f"train.out_dir={tmp_path}",
            "train.progress=false",
            "train.log_every=1",
            "train.save_every=0",
            "train.optim.warmup_steps=5",
        ],
    )
    train_tokenizer(cfg)
    rows = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    l2 = [r["rec/l2"] for r in rows]
    distill = [r["distill/total"] for r in rows]
    first, last = sum(l2[:5]) / 5, sum(l2[-5:]) / 5
    assert last < 0.8 * first, (first, last)  # pixels: clearly better after 40 steps
    assert sum(distill[-5:]) < sum(distill[:5])  # semantics: the distillation loss falls too


def _run(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_process_ddp_equals_one_process_with_the_same_global_batch(tmp_path) -> None:
    """torchrun with 2 gloo ranks x batch 4 ends with the weights of 1 process x 2 micro-batches of 4: DDP
    gradients, EMA codebooks, k-means init and dead-code restarts are all synchronised.

    Equal by construction on any CPU: every forward in both runs is the same computation on the same 4
    images (rank r and micro-batch r see images 4r..4r+3), so the latents and codes are bit-identical
    however the machine's GEMMs round; codebook statistics are gathered in the same row order and applied
    once per optimiser step in both. Only sums over the two halves (DDP's gradient all-reduce against
    accumulation) may round differently, and one step moves the weights by far less than the tolerance.
    A reference of 1 process x batch 8 is not equal by construction: its batch-8 GEMMs round differently
    from batch 4, and a near-tie between two codes on a deep residual level can then flip."""
    common = [
        str(CONFIGS / "evotok-tiny.yaml"),
        "data.name=shapes",
        "train.max_steps=1",
        "train.progress=false",
        "train.save_every=0",
        "train.log_every=1",
        "train.precision=fp32",
        "loss.perceptual=none",
        # the linear path fits on the first forward: one micro-batch here, both ranks' batches there
        "model.overrides.linear_path=false",
        # A large Adam eps makes the update linear in the gradient (lr * g / eps): a near-zero gradient
        # whose sign is set by rounding is not blown up to a full lr step.
        "train.optim.eps=0.1",
        "train.optim.lr=0.01",
        "train.optim.warmup_steps=0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    _run(
        [
            sys.executable,
            "-m",
            "polytok.cli",
            "train",
            *common,
            "train.batch_size=4",
            "train.grad_accum_steps=2",
            f"train.out_dir={tmp_path / 'one'}",
        ],
        env,
    )
    _run(
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
            *common,
            "train.batch_size=4",
            f"train.out_dir={tmp_path / 'two'}",
        ],
        env,
    )
    one = load_file(tmp_path / "one" / "tokenizer" / "model.safetensors")
    two = load_file(tmp_path / "two" / "tokenizer" / "model.safetensors")
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key].float(), two[key].float(), atol=2e-5, rtol=1e-4), (
            key,
            (one[key].float() - two[key].float()).abs().max(),
        )
    codebooks = [k for k in one if "codebooks" in k and k.endswith("embed")]
    assert codebooks, "the EMA codebooks are part of the comparison"
    # Codebook state comes from the codes (identical) and float64 sums of identical rows (exact in any
    # order): not merely close, bit-identical.
    for key in (k for k in one if "quantizer.codebooks" in k):
        assert torch.equal(one[key], two[key]), key
