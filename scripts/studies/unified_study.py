"""Which tokens serve one model best? One unified model (captioning + text-to-image on ``shapes``) trained
for the same wall-clock time on the codes of each tokenizer, then measured by ``evaluate_unified``.

    python scripts/studies/unified_study.py --out runs/unified-study --seeds 0 1 --minutes 10  # full study
    python scripts/studies/unified_study.py --out runs/unified-study-quick --quick  # smoke run, 1 seed
    python scripts/studies/unified_study.py --out runs/unified-study --eval-only  # re-measure the runs
    python scripts/studies/unified_study.py ... --eval-only --keep-evaluations  # only the unmeasured runs
    python scripts/studies/unified_study.py --out runs/size-probe --probe-sizes 32 64  # the image-size probe

Rows: the shipped ``unitok-tiny``, ``evotok-tiny`` and ``polytok-tiny`` tokenizers, and ``pixel-only``:
unitok-tiny's shipped config (same architecture, data and ``max_steps``) with ``loss.semantic=0``, trained
by this script into ``<out>/pixel-only-tokenizer`` (reused when one of that length is there).

Held fixed for every row: the unified config ``unified-unitok-tiny.yaml`` with only ``unified.tokenizer``
changed (the same Llama backbone, learned input and depth embeddings, running-sum depth head, batch, lr
schedule, caption dropout and text vocabulary), the image size (``--image-size``), the wall-clock budget
``train.max_minutes`` (``max_steps`` lifted out of the way; the steps each run reached are listed) and the
seeds. What necessarily differs is the code layout each tokenizer defines: unitok-tiny and pixel-only, 8
codebooks x 512 per position, all 8 sub-codes generated; evotok-tiny, 8 residual levels, generation
predicts the 4 pixel levels, captioning reads all 8; polytok-tiny, 4 residual levels x 4 codebooks,
generation predicts the 2 pixel levels x 4. The depth head therefore predicts a different number of
sub-codes per position, and the first epoch's encoding (each image encoded once, then cached) costs each
tokenizer its own encoder's time inside the budget.

Image size: 64 px (a 16 x 16 grid), the size the tokenizers were trained at, not the 32 px of the
unified configs. ``--probe-sizes 32 64`` times training steps at both sizes side by side (interleaved in
one process) and reads the judge on the real images and on the tokenizers' pixel-prefix reconstructions at
each size: the judge reads real 32 px images perfectly, but the tiny tokenizers' 32 px reconstructions
carry almost no shape (all attributes right on 6-11 % of images, against 41-42 % at 64 px), so a 32 px
study would compare tokens that cannot carry the pair at all; 64 px costs about 5 x per step (the
measurement is in section 5 of docs/study.md). The table lists the judge's ceiling (its accuracy on the
reconstructions of the prompts' real images, at the chosen size) beside every row, so a reader sees what
the tokens can carry at all.

Runs train two at a time side by side (``polytok train`` subprocesses, one thread each), then each is
evaluated (also two at a time, one thread each) with the fixed sampling settings of ``SAMPLING`` (recorded
in ``unified_study.json``). Output: ``<out>/unified_study.md`` (one table: per tokenizer and seed, and the
mean over seeds) and ``<out>/unified_study.json`` (plan, settings, every figure of every run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from polytok.eval.shapes.captions import CAPTION_ATTRIBUTES as CAPTIONED
from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES as JUDGED
from polytok.registry import CONFIG_DIR

UNIFIED_CONFIG = CONFIG_DIR / "unified-unitok-tiny.yaml"
PIXEL_ONLY = "pixel-only"
PIXEL_ONLY_BASE = "unitok-tiny"  # its shipped config, with the semantic term off
PIXEL_ONLY_OVERRIDES = ["loss.semantic=0", "loss.caption_choice=0"]

# row name -> (tokenizer: shipped name, or None for the pixel-only one trained here; its code layout)
TOKENIZERS: dict[str, tuple[str | None, str]] = {
    "unitok-tiny": ("unitok-tiny", "MCQ 8 x 512, all 8 sub-codes generated"),
    "evotok-tiny": ("evotok-tiny", "RVQ 8 levels, 4 pixel levels generated, 8 read"),
    "polytok-tiny": ("polytok-tiny", "RVQ 4 levels x MCQ 4, 2 pixel levels x 4 generated"),
    PIXEL_ONLY: (None, "MCQ 8 x 512 (unitok-tiny, semantic=0)"),
}

# evaluate_unified's sampling and sizes, fixed for every row (quick mode: a subset, recorded likewise)
SAMPLING: dict[str, Any] = dict(guidance_scale=3.0, temperature=1.0, top_k=0, top_p=1.0, seed=0)
FULL_EVAL: dict[str, Any] = dict(
    prompts_per_pair=1, samples_per_prompt=4, caption_images_per_split=64, bits_images_per_split=64
)
QUICK_EVAL: dict[str, Any] = dict(
    prompts_per_pair=1, samples_per_prompt=2, caption_images_per_split=8, bits_images_per_split=8,
    max_seen_prompts=2, max_heldout_prompts=2,
)  # fmt: skip
QUICK_MINUTES = 0.3
QUICK_PIXEL_ONLY_STEPS = 2
QUICK_IMAGE_SIZE = 32  # the smoke run's default: 64 px samples cost 4 x the positions
CEILING = "judge on reconstructions"  # evaluate_unified's name for the tokens' ceiling


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "polytok.cli", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


# -- training ------------------------------------------------------------------------------------------


def pixel_only_command(out_dir: Path, steps: int | None) -> list[str]:
    """``polytok train`` of the pixel-only tokenizer into ``out_dir`` (``steps``: None = the shipped
    config's ``max_steps``, the same as the shipped checkpoint)."""
    extra = [f"train.max_steps={steps}"] if steps is not None else []
    return _cli(
        "train",
        str(CONFIG_DIR / f"{PIXEL_ONLY_BASE}.yaml"),
        *PIXEL_ONLY_OVERRIDES,
        *extra,
        f"train.out_dir={out_dir}",
        "train.save_every=0",
        "train.progress=false",
        "train.overwrite=true",
    )


def max_positions(image_size: int) -> int:
    """Backbone positions for every grid position (stride 4 or more) plus the longest caption."""
    return (image_size // 4) ** 2 + 64


def tokenizer_path(row: str, out: Path) -> str:
    shipped, _ = TOKENIZERS[row]
    return shipped if shipped is not None else str(out / "pixel-only-tokenizer" / "tokenizer")


def run_name(row: str, seed: int) -> str:
    return f"{row}-seed{seed}"


def unified_command(
    row: str, seed: int, out: Path, minutes: float, image_size: int, overrides: Sequence[str] = ()
) -> list[str]:
    """``polytok train`` of the unified model on ``row``'s codes: the shared config, only the tokenizer,
    the seed and the output folder set per run; the clock (``max_minutes``) ends it. ``overrides``
    (``key=value``, the same for every row, e.g. ``unified.model.object_loss_weight=24``) come last."""
    return _cli(
        "train",
        str(UNIFIED_CONFIG),
        f"unified.tokenizer={tokenizer_path(row, out)}",
        f"data.image_size={image_size}",
        # every position of the grid plus the longest caption fits whatever the size
        f"unified.model.backbone.max_position_embeddings={max_positions(image_size)}",
        f"train.seed={seed}",
        f"train.max_minutes={minutes}",
        "train.max_steps=1000000",  # the clock decides
        f"train.out_dir={out / 'runs' / run_name(row, seed)}",
        "train.save_every=0",
        "train.progress=false",
        "train.overwrite=true",
        *overrides,
    )


Job = tuple[str, list[str], str | None]  # name, command, the job it must wait for (or None)


def run_side_by_side(jobs: Sequence[Job], logs: Path, parallel: int) -> None:
    """Run jobs ``parallel`` at a time, one thread each, in order except that a job waits for the one it
    names to finish (the next ready job takes its turn); logs to ``logs/<name>.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, done = list(jobs), [], set()
    while pending or running:
        while len(running) < parallel:
            ready = [job for job in pending if job[2] is None or job[2] in done]
            if not ready:
                break
            pending.remove(ready[0])
            name, cmd, _ = ready[0]
            print("$", " ".join(cmd[2:]), flush=True)
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed when the job ends
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env())
            running.append((name, proc, log))
        time.sleep(1)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    for _, other, _ in running:
                        other.kill()
                    raise SystemExit(f"{name} failed (exit {proc.returncode}): see {logs / name}.log")
                done.add(name)
                print(f"done {name}", flush=True)


def training_jobs(
    rows: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    minutes: float,
    image_size: int,
    pixel_steps: int | None,
    overrides: Sequence[str] = (),
) -> list[Job]:
    """The pixel-only tokenizer's training first (unless ``<out>/pixel-only-tokenizer`` holds one trained
    for as many steps: reused), then every unified run, seed-major; the pixel-only rows wait for their
    tokenizer while the others train beside it."""
    jobs: list[Job] = []
    needs = None
    folder = out / "pixel-only-tokenizer"
    if PIXEL_ONLY in rows and not pixel_only_done(folder, pixel_steps):
        needs = "pixel-only-tokenizer"
        jobs.append((needs, pixel_only_command(folder, pixel_steps), None))
    for seed in seeds:
        for row in rows:
            command = unified_command(row, seed, out, minutes, image_size, overrides)
            jobs.append((run_name(row, seed), command, needs if row == PIXEL_ONLY else None))
    return jobs


def pixel_only_done(folder: Path, steps: int | None) -> bool:
    """Whether ``folder`` holds the pixel-only tokenizer trained for ``steps`` (None: the shipped
    config's ``max_steps``), not one of another length (a quick run's, say)."""
    from polytok.recipes.tokenizer_run import load_run_config

    if not (folder / "tokenizer").is_dir() or not (folder / "log.jsonl").is_file():
        return False
    if steps is None:
        steps = load_run_config(CONFIG_DIR / f"{PIXEL_ONLY_BASE}.yaml").train.max_steps
    return trained_steps(folder) == steps


def trained_steps(run_dir: Path) -> int:
    """Optimiser steps a run reached (its last log line: the final step is always logged)."""
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    return int(json.loads(lines[-1])["step"]) if lines else 0


# -- evaluation ----------------------------------------------------------------------------------------


def study_prompts(prompts_per_pair: int, max_seen: int | None = None, max_heldout: int | None = None):
    """The prompt suite, optionally cut to the first ``max_seen`` seen and ``max_heldout`` held-out
    prompts (the quick mode keeps both groups)."""
    from polytok.eval.shapes.prompts import prompt_suite

    suite = prompt_suite(prompts_per_pair)
    seen = [p for p in suite if not p.heldout][:max_seen]
    held = [p for p in suite if p.heldout][:max_heldout]
    return sorted(seen + held, key=lambda p: p.index)


def evaluate_run(model_dir: Path, summary: Path, settings: Mapping[str, Any]) -> None:
    """evaluate_unified on one trained run; its ``to_dict()`` written atomically to ``summary``."""
    import torch

    from polytok.eval.unified.evaluate import evaluate_unified
    from polytok.unified.hub import load_unified

    torch.set_num_threads(1)
    model, tokenizer = load_unified(str(model_dir))
    prompts = study_prompts(
        settings["prompts_per_pair"], settings.get("max_seen_prompts"), settings.get("max_heldout_prompts")
    )
    report = evaluate_unified(
        model,
        tokenizer,
        name=model_dir.parent.name,
        prompts=prompts,
        samples_per_prompt=settings["samples_per_prompt"],
        caption_images_per_split=settings["caption_images_per_split"],
        bits_images_per_split=settings["bits_images_per_split"],
        gfd="auto",
        progress=False,
        **SAMPLING,
    )
    tmp = summary.with_name(summary.name + ".tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=1, default=str))
    os.replace(tmp, summary)


def evaluation_is_current(summary: Path, model_dir: Path) -> bool:
    """Whether ``summary`` was written after the weights of the model it measures (so a rerun with
    ``--keep-evaluations`` keeps it; the settings it was measured with are in its protocol)."""
    weights = model_dir / "model.safetensors"
    return summary.is_file() and weights.is_file() and summary.stat().st_mtime >= weights.stat().st_mtime


def evaluate_command(model_dir: Path, summary: Path, quick: bool) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--evaluate-one",
        str(model_dir),
        str(summary),
        *(["--quick"] if quick else []),
    ]


# -- the table -----------------------------------------------------------------------------------------


def _value(metrics: Mapping[str, Any], key: str) -> float | None:
    entry = metrics.get(key)
    return None if entry is None else float(entry["value"])


def study_row(summary: Mapping[str, Any]) -> dict[str, float | None]:
    """One run's figures (``UnifiedReport.to_dict()``) -> the table's numbers, keyed by column."""
    m = summary["metrics"]
    row: dict[str, float | None] = {}
    for group in ("seen", "heldout"):
        for attr in (*JUDGED, "all", "pair"):
            row[f"t2i[{group}] {attr}"] = _value(m, f"t2i[{group}] attr[{attr}]")
        for score in ("all", "pair"):  # what the tokens can carry: the judge on their reconstructions
            entry = m.get(f"t2i[{group}] attr[{score}]")
            baselines = entry["protocol"]["baselines"] if entry else {}
            row[f"ceiling[{group}] {score}"] = baselines.get(CEILING)
    row["gFD"] = _value(m, "gFD (EfficientNet-Lite0)")
    for split in ("val", "heldout"):
        for attr in (*CAPTIONED, "all", "pair"):
            row[f"caption[{split}] {attr}"] = _value(m, f"caption[{split}] attr[{attr}]")
        row[f"reranked[{split}] pair"] = _value(m, f"caption reranked[{split}] attr[pair]")
        row[f"bits/token[{split}]"] = _value(m, f"bits/image token[{split}]")
    return row


def mean_row(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """Column-wise mean over seeds (a column missing from any seed stays missing)."""
    keys = rows[0].keys()
    out: dict[str, float | None] = {}
    for key in keys:
        values = [r.get(key) for r in rows]
        out[key] = None if any(v is None for v in values) else statistics.fmean(values)  # type: ignore[arg-type]
    return out


def study_baselines(summary: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Figure -> its baselines that every row shares (chance, single-attribute, judge on real images),
    from one run; the ceiling (the judge on the tokenizer's reconstructions) is a column instead."""
    wanted = [f"t2i[{g}] attr[{s}]" for g in ("seen", "heldout") for s in ("all", "pair")]
    wanted += [f"caption[{g}] attr[{s}]" for g in ("val", "heldout") for s in ("all", "pair")]
    metrics = summary["metrics"]
    return {
        k: {name: v for name, v in metrics[k]["protocol"]["baselines"].items() if name != CEILING}
        for k in wanted
        if k in metrics
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _attrs(row: Mapping[str, float | None], prefix: str, names: Sequence[str]) -> str:
    return "/".join(_fmt(row.get(f"{prefix} {n}")) for n in names)


COLUMNS = (
    "tokenizer", "seed", "steps", "judge ceiling: all seen / held-out (held-out pair)", "gen seen all",
    "gen seen pair",
    "gen held-out all", "gen held-out pair", "gen seen per attr", "gen held-out per attr", "gFD",
    "cap val all", "cap held-out all", "cap held-out pair", "cap re-ranked pair: val / held-out",
    "cap val per attr", "cap held-out per attr",
    "bits/token val", "bits/token held-out",
)  # fmt: skip


def table_line(name: str, seed: str, steps: str, row: Mapping[str, float | None]) -> str:
    cells = [
        name,
        seed,
        steps,
        f"{_fmt(row.get('ceiling[seen] all'))} / {_fmt(row.get('ceiling[heldout] all'))} "
        f"(pair {_fmt(row.get('ceiling[heldout] pair'))})",
        _fmt(row.get("t2i[seen] all")),
        _fmt(row.get("t2i[seen] pair")),
        _fmt(row.get("t2i[heldout] all")),
        _fmt(row.get("t2i[heldout] pair")),
        _attrs(row, "t2i[seen]", JUDGED),
        _attrs(row, "t2i[heldout]", JUDGED),
        _fmt(row.get("gFD"), 1),
        _fmt(row.get("caption[val] all")),
        _fmt(row.get("caption[heldout] all")),
        _fmt(row.get("caption[heldout] pair")),
        f"{_fmt(row.get('reranked[val] pair'))} / {_fmt(row.get('reranked[heldout] pair'))}",
        _attrs(row, "caption[val]", CAPTIONED),
        _attrs(row, "caption[heldout]", CAPTIONED),
        _fmt(row.get("bits/token[val]"), 3),
        _fmt(row.get("bits/token[heldout]"), 3),
    ]
    return "| " + " | ".join(cells) + " |"


def build_table(runs: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Runs (``tokenizer``, ``seed``, ``steps``, ``summary``: a ``UnifiedReport.to_dict()``) -> the
    markdown table (one line per run, then a mean line per tokenizer with several seeds; baselines in a
    footnote) and its JSON (rows, means, baselines)."""
    if not runs:
        raise ValueError("no runs to tabulate")
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    rows, means = [], {}
    order = list(dict.fromkeys(r["tokenizer"] for r in runs))
    for name in order:
        mine = [r for r in runs if r["tokenizer"] == name]
        figures = [study_row(r["summary"]) for r in mine]
        for run, row in zip(mine, figures):
            rows.append({"tokenizer": name, "seed": run["seed"], "steps": run["steps"], **row})
            lines.append(table_line(name, str(run["seed"]), str(run["steps"]), row))
        if len(mine) > 1:
            mean = mean_row(figures)
            steps = statistics.fmean(r["steps"] for r in mine)
            means[name] = {"seeds": [r["seed"] for r in mine], "steps": steps, **mean}
            lines.append(table_line(f"**{name}**", "mean", f"{steps:.0f}", mean))
    baselines = study_baselines(runs[0]["summary"])
    notes = [
        "",
        "gen: text-to-image, the shapes judge's accuracy on the samples (all: every judged attribute "
        "right; pair: shape and colour both right); per attr: " + "/".join(JUDGED) + ". cap: greedy "
        "captions, parsed; per attr: " + "/".join(CAPTIONED) + "; re-ranked: the greedy caption's shape "
        "word chosen by the model's text -> image likelihood. held-out: the (shape, colour) pairs "
        "never in a training caption. Judge ceiling: the judge on the tokenizer's pixel-prefix "
        "reconstructions of the prompts' real images. bits/token: "
        "-log2 p(image sub-code | caption), teacher forced.",
        "",
        "Baselines (the same for every row): "
        + "; ".join(
            f"{key}: " + ", ".join(f"{b} {v:.3f}" for b, v in values.items())
            for key, values in baselines.items()
        ),
    ]
    return "\n".join(lines + notes) + "\n", {"rows": rows, "means": means, "baselines": baselines}


# -- the image-size probe ------------------------------------------------------------------------------


def probe_sizes(sizes: Sequence[int], rounds: int, ceiling_images: int) -> dict[str, Any]:
    """Training steps of the study's model at each image size, timed in turn each round (one thread, one
    process: load changes hit every size alike), and the judge on the tokenizers' pixel-prefix
    reconstructions (and on the real images) at each size."""
    import numpy as np
    import torch

    from polytok.data.shapes import ShapesDataset
    from polytok.eval.shapes.judge import load_shapes_judge
    from polytok.eval.shapes.scores import accuracy, correct_flags
    from polytok.eval.unified.evaluate import encode_alone, pixel_prefix_reconstruction
    from polytok.recipes.unified_objective import UnifiedObjective
    from polytok.recipes.unified_run import image_grid, load_image_tokenizer, load_unified_run_config
    from polytok.train.objective import StepContext
    from polytok.unified.data import MixedTaskCollate
    from polytok.unified.model import UnifiedModel
    from polytok.unified.text_tokenizer import train_text_tokenizer

    torch.set_num_threads(1)
    judge = load_shapes_judge()
    steppers, encoders, positions, ceilings = {}, {}, {}, {}
    for size in sizes:
        config = load_unified_run_config(
            UNIFIED_CONFIG,
            [
                f"data.image_size={size}",
                f"unified.model.backbone.max_position_embeddings={max_positions(size)}",
            ],
        )
        tok = load_image_tokenizer(config.unified.tokenizer)
        data = ShapesDataset("train", image_size=size, length=config.train.batch_size)
        items = [data[i] for i in range(config.train.batch_size)]
        text = train_text_tokenizer((it["caption"] for it in items), config.unified.model.text_vocab_size)
        grid = image_grid(tok, size)
        torch.manual_seed(0)
        model = UnifiedModel.from_tokenizer(tok, text, config.unified.model, grid=grid)
        images = torch.stack([it["image"] for it in items])
        codes = encode_alone(tok, images)
        batch = MixedTaskCollate(model.format, text, 0.0)(
            [{"codes": c, "caption": it["caption"]} for c, it in zip(codes, items)]
        )
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        ctx = StepContext(step=0, max_steps=1, micro_step=0, accum_steps=1, world_size=1)

        def step(model=model, batch=batch, optimizer=optimizer, ctx=ctx) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss, _ = UnifiedObjective().generator_loss(model, batch, ctx)
            loss.backward()
            optimizer.step()

        def encode(tok=tok, images=images) -> None:
            encode_alone(tok, images)

        step()
        steppers[size], encoders[size], positions[size] = step, encode, grid[0] * grid[1]
        # the ceiling: every shipped tokenizer's pixel-prefix reconstructions at this size, judged
        real_data = ShapesDataset("val", image_size=size, length=ceiling_images, seed=1)
        real = [real_data[i] for i in range(ceiling_images)]
        real_images = torch.stack([it["image"] for it in real])

        def judged(images: torch.Tensor, real=real) -> dict[str, float]:
            readings = judge.read(images)
            return accuracy(
                [
                    correct_flags({a: int(v[i]) for a, v in readings.items()}, it["attributes"], JUDGED)
                    for i, it in enumerate(real)
                ]
            )

        ceilings[f"real images@{size}"] = judged(real_images)
        for row, (shipped, _) in TOKENIZERS.items():
            if shipped is None:
                continue
            other = load_image_tokenizer(shipped)
            layout_model = UnifiedModel.from_tokenizer(other, text, config.unified.model, grid=grid)
            ceilings[f"{row}@{size}"] = judged(pixel_prefix_reconstruction(layout_model, other, real_images))
    step_times: dict[int, list[float]] = {s: [] for s in sizes}
    encode_times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(rounds):
        for size in sizes:
            start = time.perf_counter()
            steppers[size]()
            step_times[size].append(time.perf_counter() - start)
            start = time.perf_counter()
            encoders[size]()
            encode_times[size].append(time.perf_counter() - start)
    batch_size = len(items)
    result: dict[str, Any] = {"batch_size": batch_size, "rounds": rounds, "sizes": {}}
    for size in sizes:
        t_step = float(np.median(step_times[size]))
        t_encode = float(np.median(encode_times[size]))
        result["sizes"][size] = {
            "grid_positions": positions[size],
            "step_seconds": t_step,
            "encode_seconds_per_batch": t_encode,
            "steps_per_second": 1 / t_step,
            "image_tokens_per_second": batch_size * positions[size] / t_step,
            "images_per_second_first_epoch": batch_size / (t_step + t_encode),
        }
    result["ceilings"] = {k: {a: round(v, 3) for a, v in c.items()} for k, c in ceilings.items()}
    result["ceiling_images"] = ceiling_images
    return result


# -- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/unified-study")
    parser.add_argument("--tokenizers", nargs="*", default=None, help=f"rows (default: {list(TOKENIZERS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default 0 1 (--quick: 0)")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of every unified run")
    parser.add_argument("--image-size", type=int, default=None, help=f"px; 64 (--quick: {QUICK_IMAGE_SIZE})")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides",
        help="config overrides of every unified run (e.g. unified.model.object_loss_weight=24)",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budget and evaluation")
    parser.add_argument("--eval-only", action="store_true", help="measure the runs already in --out")
    parser.add_argument(
        "--keep-evaluations", action="store_true",
        help="keep each run's eval.json written after its model; measure only the others",
    )  # fmt: skip
    parser.add_argument("--probe-sizes", nargs="*", type=int, default=None, help="time steps at these sizes")
    parser.add_argument("--probe-rounds", type=int, default=10)
    parser.add_argument("--evaluate-one", nargs=2, metavar=("MODEL_DIR", "SUMMARY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = QUICK_EVAL if args.quick else FULL_EVAL
    if args.evaluate_one:
        evaluate_run(Path(args.evaluate_one[0]), Path(args.evaluate_one[1]), settings)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.probe_sizes:
        result = probe_sizes(args.probe_sizes, args.probe_rounds, 16 if args.quick else 64)
        (out / "size_probe.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    seeds = args.seeds or ([0] if args.quick else [0, 1])
    rows = args.tokenizers or list(TOKENIZERS)
    unknown = [r for r in rows if r not in TOKENIZERS]
    if unknown:
        parser.error(f"unknown tokenizers {unknown}: {list(TOKENIZERS)}")
    malformed = [o for o in args.overrides if "=" not in o or o.startswith("=")]
    if malformed:
        parser.error(f"--set takes key=value, got {malformed}")
    minutes = QUICK_MINUTES if args.quick else args.minutes
    image_size = args.image_size or (QUICK_IMAGE_SIZE if args.quick else 64)
    runs = [(row, seed) for seed in seeds for row in rows]
    start = time.perf_counter()
    if not args.eval_only:
        pixel_steps = QUICK_PIXEL_ONLY_STEPS if args.quick else None
        jobs = training_jobs(rows, seeds, out, minutes, image_size, pixel_steps, args.overrides)
        run_side_by_side(jobs, out / "logs", args.parallel)
    trained_at = time.perf_counter()
    summaries = {run_name(r, s): out / "runs" / run_name(r, s) / "eval.json" for r, s in runs}
    jobs = [
        (f"eval-{name}", evaluate_command(path.parent / "model", path, args.quick), None)
        for name, path in summaries.items()
        if not (args.keep_evaluations and evaluation_is_current(path, path.parent / "model"))
    ]
    run_side_by_side(jobs, out / "logs", args.parallel)
    results = [
        {
            "tokenizer": r,
            "seed": s,
            "steps": trained_steps(out / "runs" / run_name(r, s)),
            "summary": json.loads(summaries[run_name(r, s)].read_text()),
        }
        for r, s in runs
    ]
    markdown, table = build_table(results)
    plan = {
        "unified_config": UNIFIED_CONFIG.name,
        "overrides": args.overrides,
        "tokenizers": {r: {"tokenizer": tokenizer_path(r, out), "layout": TOKENIZERS[r][1]} for r in rows},
        "pixel_only": {"config": f"{PIXEL_ONLY_BASE}.yaml", "overrides": PIXEL_ONLY_OVERRIDES},
        "seeds": seeds,
        "max_minutes": minutes,
        "image_size": image_size,
        "parallel": args.parallel,
        "sampling": SAMPLING,
        "evaluation": settings,
        "wall_seconds": {"train": trained_at - start, "evaluate": time.perf_counter() - trained_at},
    }
    with_overrides = f" with {' '.join(args.overrides)}" if args.overrides else ""
    header = (
        f"Unified model ({UNIFIED_CONFIG.name}{with_overrides}) "
        f"at {image_size} px, {minutes} min per run "
        f"({args.parallel} side by side, one thread each), seeds {seeds}; sampling {SAMPLING}; "
        f"evaluation {settings}.\n\n"
    )
    (out / "unified_study.md").write_text(header + markdown)
    full = {"plan": plan, **table, "runs": [{k: v for k, v in r.items()} for r in results]}
    (out / "unified_study.json").write_text(json.dumps(full, indent=1, default=str))
    print(header + markdown)


if __name__ == "__main__":
    main()
