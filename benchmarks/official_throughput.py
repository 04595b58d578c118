"""Throughput of unitok-l and evotok-l against the official UniTok and EvoTok code, same weights, one process.

    PYTHONPATH=/tmp/offpkgs python benchmarks/official_throughput.py --unitok /path/to/UniTok \\
        --evotok /path/to/EvoTok [--repeats 3] [--batch8-repeats 1] [--quick] [--json rows.json]

Each official model is built as scripts/parity/compare_official_full.py builds it (published size, seeded
random
weights, nothing downloaded), converted into the polytok preset, and both run side by side: encode
(images -> codes), decode (codes -> image) and, for EvoTok, the semantic branch (codes -> semantic
tokens), at batch 1 and 8, in fp32 and under bf16 autocast. Calls alternate official, polytok,
official, polytok... after one warm-up call each (``--no-warmup-large``: none at batch 8), and the
median is kept, so load on the machine falls on both sides alike. Everything runs under
``torch.inference_mode``. The table gives seconds per image and the speed-up official / polytok (above 1:
polytok is faster), with a check that both computed the same thing (the fraction of equal codes, or the
largest difference of the outputs). ``--quick`` runs the reduced widths of the parity fixtures instead
(a smoke run). The official code needs the packages named in scripts/parity/make_parity_fixtures.py (UniTok:
timm 1.0.8, ``pytz``, ``typed-argument-parser``, e.g. ``pip install --target /tmp/offpkgs ...`` and
that directory on PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "parity"
sys.path.insert(0, str(SCRIPTS))
from compare_official_full import EVOTOK_L_ARCH, EVOTOK_L_ARGS, UNITOK_L_ARCH, UNITOK_L_ARGS  # noqa: E402
from make_parity_fixtures import (  # noqa: E402
    EVOTOK_REDUCED_ARCH,
    EVOTOK_REDUCED_ARGS,
    UNITOK_REDUCED_ARCH,
    UNITOK_REDUCED_ARGS,
    build_official_evotok,
    build_official_unitok,
)

from polytok.config import merge  # noqa: E402
from polytok.convert.evotok import convert_evotok  # noqa: E402
from polytok.convert.unitok import convert_unitok  # noqa: E402
from polytok.models.config import TokenizerConfig  # noqa: E402
from polytok.models.registry import get_preset_dict  # noqa: E402


@dataclass
class Case:
    """One row: the same work done by the official model and by polytok."""

    model: str
    op: str
    official: Callable[[], Tensor]
    polytok: Callable[[], Tensor]
    agreement: Callable[[Tensor, Tensor], tuple[str, float]]


def unitok_config(quick: bool) -> TokenizerConfig:
    preset = get_preset_dict("unitok-l")
    if not quick:
        return TokenizerConfig.from_dict(preset)
    a, arch = UNITOK_REDUCED_ARGS, UNITOK_REDUCED_ARCH
    block = {"width": arch["width"], "depth": arch["depth"], "heads": arch["heads"]}
    heads = arch["width"] // a["vocab_width"]
    return TokenizerConfig.from_dict(
        merge(
            preset,
            {
                "image_size": a["img_size"],
                "encoder": {
                    **block,
                    "stem_width": arch["stem_width"],
                    "stage_widths": arch["stage_widths"],
                    "stage_depths": arch["stage_depths"],
                },
                "projection.heads": heads,
                "post_projection.heads": heads,
                "quantizer": {
                    "dim": a["vocab_width"],
                    "num_codebooks": a["num_codebooks"],
                    "codebook_size": a["vocab_size"] // a["num_codebooks"],
                },
                "pixel_decoder": {**block, "up_widths": arch["up_widths"], "up_depths": arch["up_depths"]},
                "semantic": {
                    "embed_dim": a["embed_dim"],
                    "text_tower": {
                        "width": a["text_width"],
                        "depth": a["text_layers"],
                        "heads": a["text_heads"],
                        "context_length": a["text_context_length"],
                        "vocab": "bytes",
                    },
                },
            },
        )
    )


def evotok_config(quick: bool) -> TokenizerConfig:
    preset = get_preset_dict("evotok-l")
    if not quick:
        return TokenizerConfig.from_dict(preset)
    a, arch = EVOTOK_REDUCED_ARGS, EVOTOK_REDUCED_ARCH
    siglip = arch["siglip"]
    return TokenizerConfig.from_dict(
        merge(
            preset,
            {
                "image_size": a["image_size"],
                "encoder.hf_config": siglip,
                "projection.hidden": siglip["hidden_size"],
                "quantizer": {
                    "dim": a["codebook_embed_dim"],
                    "levels": a["vqkd_depth"],
                    "codebook_size": a["codebook_size"],
                },
                "pixel_depth": a["vqgan_depth"],
                "pixel_decoder": {
                    "z_channels": arch["z_channels"],
                    "ch": arch["ch"],
                    "ch_mult": arch["ch_mult"],
                    "num_res_blocks": arch["num_res_blocks"],
                },
                "semantic": {
                    "decoder_width": siglip["hidden_size"],
                    "decoder_depth": arch["decoder_depth"],
                    "decoder_heads": arch["decoder_heads"],
                    "feature_dim": siglip["hidden_size"],
                },
            },
        )
    )


def codes_agree(official: Tensor, ours: Tensor) -> tuple[str, float]:
    return "codes equal", (official == ours).float().mean().item()


def max_diff(official: Tensor, ours: Tensor) -> tuple[str, float]:
    return "max abs diff", (official.float() - ours.float()).abs().max().item()


def unitok_cases(root: Path, quick: bool, batch: int, seed: int) -> list[Case]:
    args, arch = (UNITOK_REDUCED_ARGS, UNITOK_REDUCED_ARCH) if quick else (UNITOK_L_ARGS, UNITOK_L_ARCH)
    official = build_official_unitok(root, args, arch, seed)
    tok = convert_unitok({"args": args, "trainer": {"unitok": official.state_dict()}}, unitok_config(quick))
    tok.eval()
    size = args["img_size"]
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
    with torch.inference_mode():
        codes = official.img_to_idx(images)  # (B, codebooks, N)
    b, g, n = codes.shape
    side = int(n**0.5)
    grid_codes = codes.transpose(1, 2).reshape(b, side, side, g)
    return [
        Case(
            "unitok-l",
            "encode",
            lambda: official.img_to_idx(images),
            lambda: tok.encode((images + 1) / 2).reshape(b, n, g).transpose(1, 2),
            codes_agree,
        ),
        Case(
            "unitok-l",
            "decode",
            lambda: official.idx_to_img(codes),
            lambda: tok.decode(grid_codes) * 2 - 1,
            max_diff,
        ),
    ]


def evotok_cases(root: Path, quick: bool, batch: int, seed: int) -> list[Case]:
    args, arch = (EVOTOK_REDUCED_ARGS, EVOTOK_REDUCED_ARCH) if quick else (EVOTOK_L_ARGS, EVOTOK_L_ARCH)
    official = build_official_evotok(root, args, arch, seed)
    tok = convert_evotok(
        {"model": official.state_dict(), "args": argparse.Namespace(**args)}, evotok_config(quick)
    )
    tok.eval()
    size = args["image_size"]
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed + 1)) * 2 - 1
    with torch.inference_mode():
        codes = official.encode(images)[2][2]  # (B, h, w, levels)
    pixel_levels = args["vqgan_depth"]

    def official_latent(levels: int) -> Tensor:
        embeds, _ = official.quantize.embed_code_with_depth(codes[..., :levels])  # (B, h, w, L, D)
        return official.quantize.to_latent_shape(embeds.sum(-2))

    def official_pixels() -> Tensor:
        return official.decode((official_latent(pixel_levels), None))[1].clamp(-1, 1)

    def official_semantic() -> Tensor:
        return official.decode((None, official_latent(codes.shape[-1])))[0]

    return [
        Case(
            "evotok-l",
            "encode",
            lambda: official.encode(images)[2][2],
            lambda: tok.encode((images + 1) / 2),
            codes_agree,
        ),
        Case("evotok-l", "decode", official_pixels, lambda: tok.decode(codes) * 2 - 1, max_diff),
        Case("evotok-l", "semantic tokens", official_semantic, lambda: tok.semantic_tokens(codes), max_diff),
    ]


def time_pair(case: Case, dtype: str, repeats: int, warmup: bool) -> tuple[float, float, tuple[str, float]]:
    """Median seconds of the official and polytok calls, alternated (after a warm-up call each)."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()
    runs: dict[str, list[float]] = {"official": [], "polytok": []}
    outputs: dict[str, Tensor] = {}
    with torch.inference_mode(), autocast:
        for _ in range(repeats + int(warmup)):
            for side in runs:
                start = time.perf_counter()
                outputs[side] = getattr(case, side)()
                runs[side].append(time.perf_counter() - start)
    first = int(warmup)
    check = case.agreement(outputs["official"], outputs["polytok"])
    return statistics.median(runs["official"][first:]), statistics.median(runs["polytok"][first:]), check


def run(opts: argparse.Namespace) -> list[dict]:
    rows = []
    builders = [(opts.unitok, unitok_cases), (opts.evotok, evotok_cases)]
    for root, build in builders:
        if root is None:
            continue
        for batch in opts.batches:
            cases = build(root.resolve(), opts.quick, batch, opts.seed)
            repeats = opts.repeats if batch == 1 else opts.batch8_repeats
            for case in cases:
                for dtype in opts.dtypes:
                    warmup = batch == 1 or opts.warmup_large
                    official, ours, check = time_pair(case, dtype, repeats, warmup)
                    row = {
                        "model": case.model,
                        "op": case.op,
                        "batch": batch,
                        "dtype": dtype,
                        "official s/img": official / batch,
                        "polytok s/img": ours / batch,
                        "speed-up": official / ours,
                        "check": check[0],
                        "check value": check[1],
                        "repeats": repeats,
                        "warm-up": warmup,
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
            del cases
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | op | batch | dtype | official s/image | polytok s/image | speed-up | same output |",
        "|---|---|---:|---|---:|---:|---:|---|",
    ]
    for r in rows:
        value = r["check value"]
        check = f"{value:.1%} codes equal" if r["check"] == "codes equal" else f"max abs diff {value:.1e}"
        lines.append(
            f"| {r['model']} | {r['op']} | {r['batch']} | {r['dtype']} | {r['official s/img']:.4g} "
            f"| {r['polytok s/img']:.4g} | {r['speed-up']:.2f}x | {check} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unitok", type=Path, help="checkout of github.com/FoundationVision/UniTok")
    parser.add_argument("--evotok", type=Path, help="checkout of github.com/VisionXLab/EvoTok")
    parser.add_argument("--quick", action="store_true", help="reduced widths (smoke run)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side at batch 1")
    parser.add_argument("--batch8-repeats", type=int, default=1, help="timed calls per side, larger batches")
    parser.add_argument(
        "--no-warmup-large",
        dest="warmup_large",
        action="store_false",
        help="no warm-up call before the timed ones at larger batches (batch 1 warms up)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows and the machine here")
    opts = parser.parse_args(argv)
    if not opts.unitok and not opts.evotok:
        parser.error("give --unitok and/or --evotok")
    if min(opts.repeats, opts.batch8_repeats) < 1:
        parser.error("--repeats and --batch8-repeats must be at least 1")
    torch.manual_seed(opts.seed)
    rows = run(opts)
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": opts.quick,
    }
    print(f"torch {machine['torch']}, {machine['threads']} threads, {machine['cpu']}")
    print(markdown(rows))
    if opts.json:
        opts.json.write_text(json.dumps({**machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
