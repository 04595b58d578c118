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

When a unified model is shipped (a folder holding ``unified.json`` in ``polytok/weights/``), or one is
named (``unified=``, ``polytok demo --unified NAME_OR_DIR``), a further stage samples it on the prompt
suite (all 42 shape/colour pairs, held-out pairs among them) and captions held-out ``shapes`` images;
its section (figures with baselines, sample grid, captions) goes into the same report.

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

from polytok.recipes.sections import trained_steps
from polytok.recipes.tokenizer_evaluation import PHOTOS_EVAL, SHAPES_EVAL, evaluate_photos, evaluate_shapes
from polytok.recipes.tokenizer_run import RunConfig, load_run_config, train_tokenizer
from polytok.registry import CONFIG_DIR
from polytok.storage import atomic_write_text
from polytok.unified.hub import is_unified_model, list_shipped_unified

DEMO_PRESETS = ("unitok-tiny", "evotok-tiny", "polytok-tiny")
UNIFIED_SUMMARY = "unified_report.json"  # the unified stage's figures, beside report.json


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


def choose_unified(named: str | None) -> str | None:
    """The unified model the demo samples: ``named`` (a folder or a shipped name; refused with
    FileNotFoundError before anything runs when it is neither), else the first shipped one, else None
    (the demo then says so in one line on stderr and skips the stage)."""
    if named is not None:
        if not is_unified_model(named):
            raise FileNotFoundError(
                f"--unified {named!r}: not a folder holding unified.json nor a shipped unified model "
                f"{list_shipped_unified()}"
            )
        return named
    shipped = list_shipped_unified()
    if not shipped:
        print(
            "[demo] no unified model shipped (polytok/weights/*/unified.json, $POLYTOK_UNIFIED_WEIGHTS) "
            "and none named with --unified: skipping the unified stage",
            file=sys.stderr,
            flush=True,
        )
        return None
    return shipped[0]


def sample_unified(
    name_or_path: str,
    samples_per_prompt: int = 2,
    caption_images: int = 16,
    seed: int = 0,
    progress: bool | None = None,
) -> Any:
    """The unified model's :class:`~polytok.eval.unified.report.UnifiedReport` on the prompt suite
    (``samples_per_prompt`` each, held-out pairs included) and on ``caption_images`` held-out shapes
    images (captions and bits per image token); :func:`evaluate_unified`'s sampling defaults otherwise
    (guidance 3.0, temperature 1.0)."""
    from polytok.eval.unified.evaluate import evaluate_unified
    from polytok.unified.hub import load_unified

    model, tokenizer = load_unified(name_or_path)
    return evaluate_unified(
        model,
        tokenizer,
        name=f"{name_or_path} (unified)",
        samples_per_prompt=samples_per_prompt,
        caption_images_per_split=caption_images,
        bits_images_per_split=caption_images,
        caption_splits=("heldout",),
        seed=seed,
        progress=progress is not False,
    )


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
    unified: str | None = None,
    unified_samples_per_prompt: int = 2,
    unified_caption_images: int = 16,
    unified_only: bool = False,
) -> Path:
    """Train, evaluate and report; returns the path of ``report.html``. ``minutes``: the training budget,
    split equally over the presets. ``max_eval_images`` per dataset: 128 keeps the evaluation of the six
    tokenizers to about 4.5 minutes on two free cores (256: twice that, a third in semantic fidelity).

    ``unified``: the unified model to sample (a folder or a shipped name; default the first shipped one,
    none: the stage is skipped); ``unified_samples_per_prompt`` samples of each of the 42 prompts and
    ``unified_caption_images`` held-out images captioned bound its cost. ``unified_only``: only that
    stage and the report (no tokenizer trained or measured)."""
    from polytok.eval import write_report
    from polytok.eval.html.unified import render_unified_section, write_unified_report
    from polytok.eval.shapes.prompts import prompt_suite
    from polytok.hub import list_shipped, load_tokenizer

    if unified_samples_per_prompt < 1 or unified_caption_images < 0:
        raise ValueError(
            "unified_samples_per_prompt must be >= 1 and unified_caption_images >= 0, got "
            f"{unified_samples_per_prompt} and {unified_caption_images}"
        )
    if unified_only and unified is None and not list_shipped_unified():
        raise FileNotFoundError("unified_only: no unified model shipped and none named (--unified)")
    unified = choose_unified(unified)  # a bad name is refused here, before any training
    out_dir = Path(out_dir)
    presets = () if unified_only else DEMO_PRESETS
    share = minutes / len(DEMO_PRESETS)
    stages = Stages((0 if unified_only else len(presets) + 3) + (unified is not None) + 1)
    tokenizers = {}
    for preset in presets:
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

    reports: list = []
    if not unified_only:
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
    unified_report = None
    if unified is not None:
        suite = prompt_suite()
        heldout = sum(p.heldout for p in suite)
        what = (
            f"{unified}: {len(suite)} prompts ({heldout} held-out pairs) x {unified_samples_per_prompt} "
            f"samples read by the shapes judge, gFD; {unified_caption_images} held-out shapes images "
            "captioned and scored in bits per image token"
        )
        with stages.stage("sample unified", what):
            unified_report = sample_unified(
                unified, unified_samples_per_prompt, unified_caption_images, seed=seed, progress=True
            )
        print(unified_report.format_tables(), file=sys.stderr, flush=True)
    extra = [render_unified_section(unified_report)] if unified_report is not None else []
    with stages.stage("write report", f"{len(reports) + len(extra)} sections with sample grids and plots"):
        if reports:
            path = write_report(
                reports,
                out_dir / "report.html",
                title="polytok demo: tiny presets on built-in data",
                extra_sections=extra,
                progress=True,
            )
        else:  # unified_only: the unified section alone
            path = write_unified_report(unified_report, out_dir / "report.html", title="polytok demo")
        summary = json.dumps([r.to_dict() for r in reports], indent=1, default=str)
        atomic_write_text(out_dir / "report.json", summary)
        if unified_report is not None:
            unified_summary = json.dumps(unified_report.to_dict(), indent=1, default=str)
            atomic_write_text(out_dir / UNIFIED_SUMMARY, unified_summary)
    for r in reports:
        print(json.dumps({"tokenizer": r.name, **{k: round(v.value, 4) for k, v in r.metrics.items()}}))
    if unified_report is not None:
        figures = {k: round(v.value, 4) for k, v in unified_report.metrics.items()}
        print(json.dumps({"unified": unified_report.name, **figures}))
    print(json.dumps({"report": str(path)}))
    print(json.dumps({"stage_seconds": stages.seconds, "stage_cpu_seconds": stages.cpu_seconds}), flush=True)
    return path
