"""The main job: train the tiny presets on the built-in data, evaluate them, write the HTML report.

    polytok demo [--minutes 4] [--out-dir runs/demo]

Each of unitok-tiny, evotok-tiny and polytok-tiny trains with its shipped config
(``polytok/configs/<preset>.yaml``) on built-in photo crops and captioned shapes, for a number of steps
chosen so that the three fit the time budget on this machine (a short timing probe measures the step
time first). They are then measured on held-out photo crops (PSNR, SSIM, codebook health, semantic
fidelity, rFD on EfficientNet-Lite0, a linear probe by source photo) and on held-out shape/colour
combinations (zero-shot classification of the colour-shape pair through the text tower, chance 1/42,
linear probes). The checkpoints shipped in the package, the same presets trained for longer, are
measured beside them with the same protocol, and one report compares all of them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from polytok.recipes.evaluation import evaluate_many
from polytok.recipes.objective import build_objective
from polytok.recipes.run import (
    RunConfig,
    build_tokenizer,
    build_training_dataset,
    load_run_config,
    train_tokenizer,
)
from polytok.train.objective import StepContext

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEMO_PRESETS = ("unitok-tiny", "evotok-tiny", "polytok-tiny")


def seconds_per_step(config: RunConfig, probes: int = 2) -> float:
    """Time of one training step (forward + backward + update) of ``config`` on this machine."""
    from polytok.data import collate

    torch.manual_seed(config.train.seed)
    tok = build_tokenizer(config.model)
    objective = build_objective(tok, config.loss, config.train.max_steps)
    dataset = build_training_dataset(config.data)
    batch = collate([dataset[i] for i in range(config.train.batch_size)])
    params = [p for p in tok.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    ctx = StepContext(step=0, max_steps=config.train.max_steps, micro_step=0, accum_steps=1, world_size=1)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss, _ = objective.generator_loss(tok, batch, ctx)
        loss.backward()
        optimizer.step()

    step()  # warm-up: first-call allocations, k-means initialisation
    step()
    start = time.perf_counter()
    for _ in range(probes):
        step()
    return (time.perf_counter() - start) / probes


def fit_to_budget(config: RunConfig, seconds: float, min_steps: int) -> float:
    """Set ``config.train.max_steps`` (and cap the warm-up) so training takes about ``seconds`` here.

    Returns the measured seconds per step.
    """
    per_step = seconds_per_step(config)
    # 15% for what the probe does not see: data loading, logging, the final checkpoint.
    steps = max(min_steps, int(seconds / (per_step * 1.15)))
    config.train.max_steps = steps
    config.train.optim.warmup_steps = min(config.train.optim.warmup_steps, steps // 10)
    return per_step


def evaluate_on_builtin(tokenizers: dict[str, Any], max_images: int) -> tuple[list, list]:
    """Reports on held-out photo crops (with semantic fidelity) and on held-out shape combinations
    (zero-shot classification of the (colour, shape) pair among all 42, chance 1/42), one per tokenizer
    each, named ``<name> | <data>``."""
    photos = evaluate_many(
        list(tokenizers.values()),
        [f"{n} | photos val" for n in tokenizers],
        data="photos",
        split="val",
        max_images=max_images,
        zero_shot_task=None,
    )
    shapes = evaluate_many(
        list(tokenizers.values()),
        [f"{n} | shapes held-out" for n in tokenizers],
        data="shapes",
        split="heldout",
        max_images=max_images,
        zero_shot_task="object",
        semantic_fidelity=False,
    )
    return photos, shapes


def demo_config(preset: str, out_dir: Path, seed: int) -> RunConfig:
    return load_run_config(
        CONFIG_DIR / f"{preset}.yaml",
        [
            f"train.out_dir={out_dir / preset}",
            f"train.seed={seed}",
            "train.save_every=0",
            "train.log_every=10",
            "train.overwrite=true",  # each demo run retrains from scratch
        ],
    )


def run_demo(
    out_dir: str | Path = "runs/demo",
    minutes: float = 4.0,
    seed: int = 0,
    max_eval_images: int = 256,
    min_steps: int = 20,
) -> Path:
    """Train, evaluate and report; returns the path of ``report.html``."""
    out_dir = Path(out_dir)
    budget = minutes * 60 / len(DEMO_PRESETS)
    tokenizers = {}
    for preset in DEMO_PRESETS:
        config = demo_config(preset, out_dir, seed)
        per_step = fit_to_budget(config, budget, min_steps=min_steps)
        steps = config.train.max_steps
        print(
            json.dumps(
                {
                    "preset": preset,
                    "seconds_per_step": round(per_step, 3),
                    "steps": steps,
                    "batch_size": config.train.batch_size,
                }
            ),
            flush=True,
        )
        start = time.perf_counter()
        tokenizers[preset] = train_tokenizer(config).eval()
        print(
            json.dumps({"preset": preset, "trained_seconds": round(time.perf_counter() - start, 1)}),
            flush=True,
        )

    from polytok.hub import list_shipped, load_tokenizer

    for name in list_shipped():
        tokenizers[f"{name} (shipped)"] = load_tokenizer(name)
    photos, shapes = evaluate_on_builtin(tokenizers, max_eval_images)
    reports = photos + shapes
    from polytok.eval import write_report

    path = write_report(reports, out_dir / "report.html", title="polytok demo: tiny presets on built-in data")
    (out_dir / "report.json").write_text(json.dumps([r.to_dict() for r in reports], indent=1, default=str))
    for r in reports:
        print(json.dumps({"tokenizer": r.name, **{k: round(v.value, 4) for k, v in r.metrics.items()}}))
    print(json.dumps({"report": str(path)}))
    return path
