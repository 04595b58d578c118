"""The UniTok-vs-EvoTok study at small scale: quantizer variants at equal bits and equal training time,
and the ablations of the pretrained parts (real teacher vs none, perceptual term vs none, MiniLM text
tower frozen vs fine-tuned vs a tower trained from scratch).

    python scripts/studies/study.py --group quantizers --minutes 4 --out runs/study  # runs/study/study.md ...
    python scripts/studies/study.py --group ablations --minutes 4 --out runs/ablations
    python scripts/studies/study.py --group shipped --out runs/shipped-eval   # the shipped ones

Every variant is a shipped tiny config (``polytok/configs/<preset>.yaml``) with only the named parts
changed, trained on built-in photos + captioned shapes for the same wall-clock budget (``train.max_minutes``,
capped by the config's ``max_steps``; the steps each run took are listed), then measured with
the same protocol: PSNR / SSIM / codebook usage / semantic fidelity / rFD on held-out photo crops,
zero-shot classification of the (colour, shape) pair (42 classes) and linear probes on held-out
(shape, colour) combinations. Bits per image are listed beside each row; the residual rows also report
every depth (the EvoTok claim: early levels serve pixels, the full code semantics).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from polytok.hub import list_shipped, load_tokenizer
from polytok.recipes.sections import trained_steps
from polytok.recipes.tokenizer_evaluation import evaluate_on_builtin
from polytok.recipes.tokenizer_run import load_run_config, train_tokenizer
from polytok.registry import CONFIG_DIR

# name -> (claim tested, model overrides on unitok-tiny). All quantizers see the same 32-d latent; two
# families at equal bits per position: 12 bits (one 4096-code codebook vs several small ones) and 32 bits
# (multi-codebook, residual, both; attention vs linear projections).
QUANTIZER_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "vq-1x4096": (
        "12 bits: one codebook of 4096",
        {"quantizer": {"kind": "vq", "num_codebooks": 1, "codebook_size": 4096}},
    ),
    "mcq-2x64": (
        "12 bits: UniTok, 2 codebooks of 64",
        {"quantizer": {"kind": "mcq", "num_codebooks": 2, "codebook_size": 64}},
    ),
    "mcq-4x8": (
        "12 bits: UniTok, 4 codebooks of 8",
        {"quantizer": {"kind": "mcq", "num_codebooks": 4, "codebook_size": 8}},
    ),
    "mcq-4x256": (
        "32 bits: UniTok, 4 codebooks of 256",
        {"quantizer": {"kind": "mcq", "num_codebooks": 4, "codebook_size": 256}},
    ),
    "mcq-4x256-linear": (
        "32 bits: UniTok's ablation, linear instead of attention projections",
        {
            "quantizer": {"kind": "mcq", "num_codebooks": 4, "codebook_size": 256},
            "projection": {"kind": "linear"},
            "post_projection": {"kind": "linear"},
        },
    ),
    "rvq-4x256": (
        "32 bits: EvoTok, 4 residual levels of 256 (EMA), pixels from the first 2",
        {
            "quantizer": {
                "kind": "rvq",
                "levels": 4,
                "num_codebooks": 1,
                "codebook_size": 256,
                "normalize": False,
                "update": "ema",
                "kmeans_init": True,
            },
            "pixel_depth": 2,
        },
    ),
    "rmcq-2x2x256": (
        "32 bits: both, 2 residual levels x 2 codebooks of 256, pixels from level 1",
        {
            "quantizer": {
                "kind": "rvq",
                "levels": 2,
                "num_codebooks": 2,
                "codebook_size": 256,
                "normalize": False,
                "kmeans_init": True,
            },
            "pixel_depth": 1,
        },
    ),
}


# name -> (claim tested, preset, model overrides, run-config overrides): each pretrained part of the
# shipped recipes against the same recipe without it, at equal training time.
ABLATIONS: dict[str, tuple[str, str, dict[str, Any], list[str]]] = {
    "evotok-tiny": ("EvoTok recipe: distilled onto the frozen EfficientNet-Lite0", "evotok-tiny", {}, []),
    "evotok-tiny-no-teacher": (
        "EvoTok recipe without the teacher (no semantic branch)",
        "evotok-tiny",
        {"semantic": {"kind": "none"}},
        [],
    ),
    "unitok-tiny": ("UniTok recipe with the EfficientNet-Lite0 perceptual term", "unitok-tiny", {}, []),
    "unitok-tiny-no-perceptual": (
        "UniTok recipe without the perceptual term",
        "unitok-tiny",
        {},
        ["loss.perceptual=none"],
    ),
    "unitok-tiny-minilm-finetuned": (
        "UniTok recipe with the MiniLM tower fine-tuned (at 0.1x the lr) instead of frozen",
        "unitok-tiny",
        {"semantic": {"text_tower": {"freeze": False}}},
        ["train.optim.lr_scales={text_tower.encoder.: 0.1}"],
    ),
    "unitok-tiny-text-from-scratch": (
        "UniTok recipe with a text tower trained from scratch (4 x 128 byte-level transformer), no MiniLM",
        "unitok-tiny",
        {
            "semantic": {
                "text_tower": {
                    "kind": "transformer",
                    "width": 128,
                    "depth": 4,
                    "heads": 4,
                    "vocab": "bytes",
                    "context_length": 64,
                }
            }
        },
        [],
    ),
}

GROUPS: dict[str, dict[str, tuple[str, str, dict[str, Any], list[str]]]] = {
    "quantizers": {n: (claim, "unitok-tiny", ov, []) for n, (claim, ov) in QUANTIZER_VARIANTS.items()},
    "ablations": ABLATIONS,
    # Not trained here: the checkpoints shipped in the package (trained by scripts/shipped/train_shipped.sh).
    "shipped": {n: ("shipped checkpoint", n, {}, []) for n in list_shipped()},
}


def bits_per_image(tok, image_size: int = 64) -> float:
    positions = (image_size // tok.stride) ** 2
    return positions * math.prod(tok.code_shape) * math.log2(tok.codebook_size)


def run_study(out: Path, minutes: float, group: str, variants: list[str], max_eval_images: int) -> Path:
    tokenizers, rows = {}, []
    for name in variants:
        claim, preset, model_overrides, run_overrides = GROUPS[group][name]
        config = load_run_config(
            CONFIG_DIR / f"{preset}.yaml",
            [
                f"train.out_dir={out / name}",
                "train.save_every=0",
                "train.progress=false",
                "train.overwrite=true",  # a rerun of the study replaces its runs
                f"train.max_minutes={minutes}",
                *run_overrides,
            ],
        )
        config.model.overrides = model_overrides
        if group == "shipped":
            tokenizers[name] = load_tokenizer(name).eval()  # its config's max_steps trained it
            train_seconds, steps = None, config.train.max_steps
        else:
            start = time.perf_counter()
            tokenizers[name] = train_tokenizer(config).eval()
            train_seconds = round(time.perf_counter() - start)
            steps = trained_steps(out / name)
        rows.append(
            {
                "variant": name,
                "claim": claim,
                "steps": steps,
                "train_seconds": train_seconds,
                "bits_per_image": bits_per_image(tokenizers[name]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    photos, shapes = evaluate_on_builtin(tokenizers, max_eval_images, progress=True)
    from polytok.eval import write_report

    write_report(photos + shapes, out / "report.html", title=f"polytok study: {group}", progress=True)
    (out / "study.json").write_text(
        json.dumps({"runs": rows, "reports": [r.to_dict() for r in photos + shapes]}, indent=1, default=str)
    )
    columns = [
        ("PSNR", "photos", "PSNR"),
        ("SSIM", "photos", "SSIM"),
        ("sem. agreement", "photos", "semantic top-1 agreement"),
        ("rFD (EffNet-L0)", "photos", "rFD (EfficientNet-Lite0)"),
        ("zero-shot pair (1/42)", "shapes", "zero-shot top-1"),
        ("probe (semantic)", "shapes", "linear probe top-1"),
        ("probe (codes)", "shapes", "code probe top-1"),
    ]
    lines = [
        "| variant | bits/image | steps | " + " | ".join(c[0] for c in columns) + " | usage |",
        "|---|---|---|" + "---|" * len(columns) + "---|",
    ]
    for row, p, s in zip(rows, photos, shapes):
        cells = []
        for _, data, key in columns:
            report = p if data == "photos" else s
            cells.append(f"{report.metrics[key].value:.3f}" if key in report.metrics else "-")
        usage = p.codebook.summary().get("usage") if p.codebook is not None else None
        lines.append(
            f"| {row['variant']} | {row['bits_per_image']:.0f} | {row['steps']} | "
            + " | ".join(cells)
            + f" | {'-' if usage is None else f'{usage:.3f}'} |"
        )
    table = out / "study.md"
    table.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--group", default="quantizers", choices=list(GROUPS))
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per variant")
    parser.add_argument("--out", default="runs/study")
    parser.add_argument("--variants", nargs="*", default=None, help="a subset of the group's variants")
    parser.add_argument("--max-eval-images", type=int, default=256)
    args = parser.parse_args()
    variants = args.variants or list(GROUPS[args.group])
    unknown = [v for v in variants if v not in GROUPS[args.group]]
    if unknown:
        parser.error(f"unknown variants {unknown} for group {args.group!r}: {list(GROUPS[args.group])}")
    run_study(Path(args.out), args.minutes, args.group, variants, args.max_eval_images)


if __name__ == "__main__":
    main()
