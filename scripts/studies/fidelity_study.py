"""What keeps the shapes: attribute fidelity of a tiny tokenizer's reconstructions under each change of
its recipe, at equal training compute.

    python scripts/studies/fidelity_study.py --out runs/fidelity --base-steps 150      # all variants
    python scripts/studies/fidelity_study.py --out runs/fidelity --variants base objects-x8
    python scripts/studies/fidelity_study.py --out runs/fidelity --eval-only --variants objects-x8

Every variant is a shipped tiny config with the named dotted overrides, trained by ``polytok train`` on
built-in photos + captioned shapes. Equal compute: one probe times a training step of every variant,
interleaved round by round on the same process (so load changes hit all variants alike), and each
variant gets ``base_steps * t(base) / t(variant)`` steps; ``length-2x`` is the base with twice the
budget (the training-length row). Two runs train side by side, one thread each. Each tokenizer is then
measured on held-out ``shapes`` (the shapes judge's accuracy per attribute on the reconstructions) and on
held-out photo crops (PSNR, and the JPEG / bicubic references at equal bits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from polytok.recipes.sections import build_training_dataset
from polytok.recipes.tokenizer_run import build_tokenizer, load_run_config
from polytok.registry import CONFIG_DIR

# The rows of docs/study.md section 6 train the networks alone, as the tiny presets did before their
# linear patch path (section 6.2); ``linear-path`` is the preset as shipped now.
NETWORKS_ONLY = ["model.overrides.linear_path=false", "model.overrides.quantizer.kmeans_init=false"]

# name -> (claim, preset, dotted overrides of its shipped config, budget multiple)
VARIANTS: dict[str, tuple[str, str, list[str], float]] = {
    "base": (
        "the networks alone: ViT decoder, linear 4 x 4 patch head",
        "unitok-tiny",
        [*NETWORKS_ONLY],
        1.0,
    ),
    "objects-x8": (
        "object pixels weigh 8x background in L1/L2",
        "unitok-tiny",
        [*NETWORKS_ONLY, "loss.object_weight=8"],
        1.0,
    ),
    "objects-x32": (
        "object pixels weigh 32x background",
        "unitok-tiny",
        [*NETWORKS_ONLY, "loss.object_weight=32"],
        1.0,
    ),
    "conv-upsampler": (
        "conv upsampler (one MBConv stage of 32 channels, x4) instead of the linear patch head",
        "unitok-tiny",
        [
            *NETWORKS_ONLY,
            "model.overrides.pixel_decoder.up_widths=[32]",
            "model.overrides.pixel_decoder.up_depths=[1]",
            "model.overrides.pixel_decoder.upsample_first=false",
        ],
        1.0,
    ),
    "no-perceptual": (
        "without the EfficientNet-Lite0 perceptual term",
        "unitok-tiny",
        [*NETWORKS_ONLY, "loss.perceptual=none"],
        1.0,
    ),
    "patchgan": (
        "with a PatchGAN adversarial term from 3/8 of the run",
        "unitok-tiny",
        [*NETWORKS_ONLY, "loss.gan=patchgan", "loss.disc_channels=32", "loss.disc_layers=2"],
        1.0,
    ),
    "codebook-4096": (
        "8 codebooks of 4096 instead of 512 (96 instead of 72 bits per token)",
        "unitok-tiny",
        [*NETWORKS_ONLY, "model.overrides.quantizer.codebook_size=4096"],
        1.0,
    ),
    "length-2x": ("the base recipe with twice the training budget", "unitok-tiny", [*NETWORKS_ONLY], 2.0),
    "objects-x8-length-2x": (
        "object pixels at 8x with twice the training budget",
        "unitok-tiny",
        [*NETWORKS_ONLY, "loss.object_weight=8"],
        2.0,
    ),
    "objects-x8-conv-length-2x": (
        "object pixels at 8x and the conv upsampler, twice the training budget",
        "unitok-tiny",
        [
            *NETWORKS_ONLY,
            "loss.object_weight=8",
            "model.overrides.pixel_decoder.up_widths=[32]",
            "model.overrides.pixel_decoder.up_depths=[1]",
            "model.overrides.pixel_decoder.upsample_first=false",
        ],
        2.0,
    ),
    "objects-x8-length-4x": (
        "object pixels at 8x with four times the budget (the shipped 600 steps)",
        "unitok-tiny",
        [*NETWORKS_ONLY, "loss.object_weight=8"],
        4.0,
    ),
    "linear-path": (
        "as shipped now: the linear patch path and k-means-initialised codebooks",
        "unitok-tiny",
        [],
        1.0,
    ),
}


def _config(name: str, out: Path, steps: int | None = None):
    _, preset, overrides, _ = VARIANTS[name]
    extra = [f"train.max_steps={steps}"] if steps is not None else []
    return load_run_config(CONFIG_DIR / f"{preset}.yaml", [*overrides, f"train.out_dir={out / name}", *extra])


def probe_step_seconds(names: list[str], out: Path, rounds: int) -> dict[str, float]:
    """Seconds of one optimiser step per variant: the variants are timed in turn each round, and each is
    the base's median time times its median ratio to the base over the rounds."""
    from polytok.data import collate
    from polytok.recipes.tokenizer_objective import build_objective
    from polytok.train.objective import StepContext

    steppers = {}
    for name in names:
        config = _config(name, out)
        torch.manual_seed(0)
        tok = build_tokenizer(config.model)
        objective = build_objective(tok, config.loss, config.train.max_steps)
        dataset = build_training_dataset(config.data)
        batch = collate([dataset[i] for i in range(config.train.batch_size)])
        params = [p for p in tok.parameters() if p.requires_grad]
        disc = objective.discriminator() if hasattr(objective, "discriminator") else None
        if disc is not None:
            params += list(disc.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-6)
        # a step past the GAN start, so an adversarial variant pays for its discriminator
        ctx = StepContext(
            step=config.train.max_steps - 1,
            max_steps=config.train.max_steps,
            micro_step=0,
            accum_steps=1,
            world_size=1,
            discriminator=disc,
            last_layer=tok.last_decoder_layer() if disc is not None else None,
        )

        def step(tok=tok, objective=objective, batch=batch, optimizer=optimizer, ctx=ctx, disc=disc) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss, _ = objective.generator_loss(tok, batch, ctx)
            loss.backward()
            if disc is not None:
                d_loss = objective.discriminator_loss(disc, batch, ctx)
                if d_loss is not None:
                    d_loss[0].backward()
            optimizer.step()

        step()  # first-call allocations, k-means initialisation
        steppers[name] = step
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(rounds):
        for name in names:
            start = time.perf_counter()
            steppers[name]()
            times[name].append(time.perf_counter() - start)
    # each variant's cost relative to the base within the same round (load drifts cancel), median over rounds
    base = times["base"]
    ratios = {n: statistics.median(t / b for t, b in zip(times[n], base)) for n in names}
    return {n: statistics.median(base) * ratios[n] for n in names}


def train_all(plan: dict[str, int], out: Path, parallel: int) -> None:
    """Train every planned variant with ``polytok train``, ``parallel`` at a time, one thread each."""
    from unified_study import run_side_by_side  # scripts/ is on the path when run as a script

    jobs = []
    for name, steps in plan.items():
        _, preset, overrides, _ = VARIANTS[name]
        cmd = [
            sys.executable,
            "-m",
            "polytok.cli",
            "train",
            str(CONFIG_DIR / f"{preset}.yaml"),
            *overrides,
            f"train.max_steps={steps}",
            f"train.out_dir={out / name}",
            "train.save_every=0",
            "train.progress=false",
            "train.overwrite=true",
        ]
        jobs.append((name, cmd, None))
    run_side_by_side(jobs, out, parallel)


def evaluate(names: list[str], out: Path, max_images: int) -> list[dict[str, Any]]:
    from polytok.models import Tokenizer
    from polytok.recipes.tokenizer_evaluation import evaluate_many

    toks = [Tokenizer.from_pretrained(out / n / "tokenizer").eval() for n in names]
    shapes = evaluate_many(
        toks,
        names,
        data="shapes",
        split="heldout",
        max_images=max_images,
        semantic_fidelity=False,
        linear_probe=False,
    )
    photos = evaluate_many(
        toks,
        names,
        data="photos",
        split="val",
        max_images=max_images,
        semantic_fidelity=False,
        linear_probe=False,
    )
    rows = []
    for name, s, p in zip(names, shapes, photos):
        row: dict[str, Any] = {"variant": name}
        for key, metric in s.metrics.items():
            if key.startswith("attr["):
                row[key] = metric.value
        for key in ("PSNR", "PSNR[JPEG, equal bits]", "PSNR[bicubic, equal bits]"):
            if key in p.metrics:
                row[f"photos {key}"] = p.metrics[key].value
        row["shapes PSNR"] = s.metrics["PSNR"].value
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/fidelity")
    parser.add_argument("--variants", nargs="*", default=None)
    parser.add_argument("--base-steps", type=int, default=150, help="steps of the base variant")
    parser.add_argument("--probe-rounds", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--max-eval-images", type=int, default=256)
    parser.add_argument("--eval-only", action="store_true", help="measure the runs already in --out")
    args = parser.parse_args()
    names = args.variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}: {list(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan_path = out / "plan.json"
    if not args.eval_only:
        torch.set_num_threads(1)
        # a longer-budget variant costs per step what its 1x twin does
        twin = {
            n: next((m for m in VARIANTS if VARIANTS[m][2] == VARIANTS[n][2] and VARIANTS[m][3] == 1.0), n)
            for n in names
        }
        probed = sorted(set(twin.values()) | {"base"})
        seconds = probe_step_seconds(probed, out, args.probe_rounds)
        plan = {}
        for n in names:
            cost = seconds[twin[n]]
            plan[n] = max(10, round(args.base_steps * VARIANTS[n][3] * seconds["base"] / cost))
        plan_path.write_text(json.dumps({"seconds_per_step": seconds, "steps": plan}, indent=1))
        print(json.dumps({"seconds_per_step": seconds, "steps": plan}), flush=True)
        train_all(plan, out, args.parallel)
    plan = json.loads(plan_path.read_text())
    rows = evaluate(names, out, args.max_eval_images)
    # rows measured earlier (same protocol) stay in the table unless re-measured now
    results = out / "fidelity.json"
    if results.exists():
        measured = {r["variant"]: r for r in json.loads(results.read_text())["rows"]}
        measured.update({r["variant"]: r for r in rows})
        rows = [measured[n] for n in VARIANTS if n in measured]
    results.write_text(json.dumps({"plan": plan, "rows": rows}, indent=1))
    keys = [k for k in rows[0] if k != "variant"]
    lines = ["| variant | steps | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for row in rows:
        steps = plan["steps"].get(row["variant"], "-")
        lines.append(f"| {row['variant']} | {steps} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    (out / "fidelity.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
