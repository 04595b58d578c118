"""The main job: train the tiny presets on the built-in data, evaluate them, write the HTML report.

    polytok demo [--minutes 4] [--out-dir runs/demo]

Each of unitok-tiny, evotok-tiny and polytok-tiny trains with its shipped config
(``polytok/configs/<preset>.yaml``) on built-in photo crops and captioned shapes for an equal share of the
time budget (``train.max_minutes``; the config's ``max_steps`` caps it on a fast machine). They are then
measured on held-out photo crops (PSNR, SSIM, codebook health, semantic fidelity, rFD on
EfficientNet-Lite0, a linear probe by source photo) and on held-out shape/colour combinations (zero-shot
classification of the colour-shape pair through the text tower, chance 1/42, linear probes). The
checkpoints shipped in the package, the same presets trained for longer, are measured beside them with
the same protocol, and one report compares all of them.

Every stage announces itself on stderr with what it does and shows a progress bar there (training,
evaluation per tokenizer and dataset with the metric family running, report writing); stdout gets JSON
lines, the last of them the seconds each stage took.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from polytok.recipes.evaluation import evaluate_many
from polytok.recipes.run import RunConfig, load_run_config, train_tokenizer

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEMO_PRESETS = ("unitok-tiny", "evotok-tiny", "polytok-tiny")


class Stages:
    """Announces each stage on stderr (``[demo 2/7] ...``) and records how long it took: wall-clock
    seconds, and the process's CPU seconds (on a shared machine the wall clock alone says little)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.done += 1
        print(f"[demo {self.done}/{self.total}] {name}: {what}", file=sys.stderr, flush=True)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 1)
            self.cpu_seconds[name] = round(time.process_time() - cpu, 1)


def trained_steps(out_dir: Path) -> int:
    """Optimiser steps of the run in ``out_dir`` (its last log line: the final step is always logged)."""
    lines = (out_dir / "log.jsonl").read_text().splitlines()
    return int(json.loads(lines[-1])["step"]) if lines else 0


PHOTOS_EVAL = "held-out photo crops: PSNR, SSIM, codebook use, codec references, semantic fidelity, rFD"
SHAPES_EVAL = "held-out shape/colour pairs: zero-shot (1/42), linear probes, attribute judge, references"


def evaluate_photos(tokenizers: dict[str, Any], max_images: int, progress: bool | None = None) -> list:
    """Reports on held-out photo crops (with semantic fidelity), named ``<name> | photos val``."""
    return evaluate_many(
        list(tokenizers.values()),
        [f"{n} | photos val" for n in tokenizers],
        data="photos",
        split="val",
        max_images=max_images,
        zero_shot_task=None,
        progress=progress,
    )


def evaluate_shapes(tokenizers: dict[str, Any], max_images: int, progress: bool | None = None) -> list:
    """Reports on held-out shape combinations (zero-shot classification of the (colour, shape) pair among
    all 42, chance 1/42), named ``<name> | shapes held-out``."""
    return evaluate_many(
        list(tokenizers.values()),
        [f"{n} | shapes held-out" for n in tokenizers],
        data="shapes",
        split="heldout",
        max_images=max_images,
        zero_shot_task="object",
        semantic_fidelity=False,
        progress=progress,
    )


def evaluate_on_builtin(
    tokenizers: dict[str, Any], max_images: int, progress: bool | None = None
) -> tuple[list, list]:
    """:func:`evaluate_photos` and :func:`evaluate_shapes`, one report per tokenizer each."""
    photos = evaluate_photos(tokenizers, max_images, progress)
    return photos, evaluate_shapes(tokenizers, max_images, progress)


def demo_config(preset: str, out_dir: Path, seed: int, minutes: float) -> RunConfig:
    """The preset's shipped config, trained for at most ``minutes`` (or its own max_steps)."""
    return load_run_config(
        CONFIG_DIR / f"{preset}.yaml",
        [
            f"train.out_dir={out_dir / preset}",
            f"train.seed={seed}",
            f"train.max_minutes={minutes}",
            "train.save_every=0",
            "train.log_every=10",
            "train.overwrite=true",  # each demo run retrains from scratch
        ],
    )


def run_demo(
    out_dir: str | Path = "runs/demo",
    minutes: float = 4.0,
    seed: int = 0,
    max_eval_images: int = 128,
) -> Path:
    """Train, evaluate and report; returns the path of ``report.html``. ``minutes``: the training budget,
    split equally over the presets. ``max_eval_images`` per dataset: 128 keeps the evaluation of the six
    tokenizers to about 4.5 minutes on two free cores (256: twice that, a third in semantic fidelity)."""
    from polytok.eval import write_report
    from polytok.hub import list_shipped, load_tokenizer

    out_dir = Path(out_dir)
    share = minutes / len(DEMO_PRESETS)
    stages = Stages(len(DEMO_PRESETS) + 4)
    tokenizers = {}
    for preset in DEMO_PRESETS:
        config = demo_config(preset, out_dir, seed, share)
        what = (
            f"training on built-in {config.data.name} for {share:.2g} min or {config.train.max_steps} steps, "
            f"whichever comes first (batch {config.train.batch_size})"
        )
        with stages.stage(f"train {preset}", what):
            tokenizers[preset] = train_tokenizer(config).eval()
        record = {
            "preset": preset,
            "steps": trained_steps(Path(config.train.out_dir)),
            "batch_size": config.train.batch_size,
            "trained_seconds": stages.seconds[f"train {preset}"],
        }
        print(json.dumps(record), flush=True)

    shipped = list_shipped()
    with stages.stage("load shipped", f"the checkpoints shipped in the package: {', '.join(shipped)}"):
        for name in shipped:
            tokenizers[f"{name} (shipped)"] = load_tokenizer(name)
    count = f"{len(tokenizers)} tokenizers x {max_eval_images} images"
    with stages.stage("evaluate photos", f"{count}, {PHOTOS_EVAL}"):
        photos = evaluate_photos(tokenizers, max_eval_images, progress=True)
    with stages.stage("evaluate shapes", f"{count}, {SHAPES_EVAL}"):
        shapes = evaluate_shapes(tokenizers, max_eval_images, progress=True)
    reports = photos + shapes
    with stages.stage("write report", f"{len(reports)} sections with sample grids and plots"):
        path = write_report(
            reports,
            out_dir / "report.html",
            title="polytok demo: tiny presets on built-in data",
            progress=True,
        )
        summary = json.dumps([r.to_dict() for r in reports], indent=1, default=str)
        (out_dir / "report.json").write_text(summary)
    for r in reports:
        print(json.dumps({"tokenizer": r.name, **{k: round(v.value, 4) for k, v in r.metrics.items()}}))
    print(json.dumps({"report": str(path)}))
    print(json.dumps({"stage_seconds": stages.seconds, "stage_cpu_seconds": stages.cpu_seconds}), flush=True)
    return path
