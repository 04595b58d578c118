"""Throughput of the tiny presets on this machine: encode, decode, and one training step.

    python benchmarks/presets.py [--batch-size 32] [--threads 2]

Images are 64 px; times are the best of several calls after a warm-up. The training step is the
objective of the preset's shipped config (reconstruction + perceptual + quantizer + semantic losses)
with backward and an AdamW update, fp32.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from polytok import Tokenizer
from polytok.data import build_dataset, collate
from polytok.recipes.tokenizer_objective import build_objective
from polytok.recipes.tokenizer_run import load_run_config
from polytok.train.objective import StepContext

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "polytok" / "configs"
PRESETS = ("unitok-tiny", "evotok-tiny", "polytok-tiny")


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(preset: str, batch_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    config = load_run_config(CONFIGS / f"{preset}.yaml")
    tok = Tokenizer.from_preset(preset)
    batch = collate([build_dataset("shapes", image_size=64)[i] for i in range(batch_size)])
    images = batch["image"]
    tok.eval()
    codes = tok.encode(images)
    encode = best_time(lambda: tok.encode(images))
    decode = best_time(lambda: tok.decode(codes))
    tok.train()
    objective = build_objective(tok, config.loss, config.train.max_steps)
    optimizer = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=1e-4)
    ctx = StepContext(step=0, max_steps=1, micro_step=0, accum_steps=1, world_size=1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective.generator_loss(tok, batch, ctx)
        loss.backward()
        optimizer.step()

    train = best_time(step, repeats=3)
    return {
        "encode img/s": batch_size / encode,
        "decode img/s": batch_size / decode,
        "train img/s": batch_size / train,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"| preset (64 px, batch {args.batch_size}, {args.threads} threads) | encode img/s | decode img/s | "
        "train img/s |"
    )
    print("|---|---|---|---|")
    for preset in PRESETS:
        r = measure(preset, args.batch_size)
        print(f"| {preset} | {r['encode img/s']:.0f} | {r['decode img/s']:.0f} | {r['train img/s']:.0f} |")


if __name__ == "__main__":
    main()
