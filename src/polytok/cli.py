"""Command-line interface: a thin layer over the library (no logic lives only here).

polytok demo                                  # the main job on the built-in data
polytok presets                               # registered presets and shipped checkpoints
polytok train CONFIG.yaml [key=value ...]     # train (single process or under torchrun)
polytok eval MODEL --data shapes --report out/report.html
polytok encode MODEL DATA --out tokens.npz    # a dataset to tokens for LLM training
polytok decode MODEL tokens.npz --out-dir images/
polytok reconstruct [MODEL] photo.png --out-dir out/   # MODEL defaults to the shipped unitok-tiny
polytok convert unitok CHECKPOINT OUT_DIR      # an official UniTok / EvoTok checkpoint to polytok
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from polytok.demo import run_demo

    run_demo(out_dir=args.out_dir, minutes=args.minutes, seed=args.seed)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from polytok.hub import list_shipped
    from polytok.models.registry import list_presets

    print(json.dumps({"presets": list_presets(), "shipped": list_shipped()}, indent=1))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from polytok.recipes.run import load_run_config, train_tokenizer

    train_tokenizer(load_run_config(args.config, args.overrides))
    return 0


def _load_model(args: argparse.Namespace):
    from polytok.hub import load_tokenizer

    tok = load_tokenizer(args.model, allow_untrained=args.untrained)
    return tok.eval()


def _cmd_encode(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from polytok.data import build_dataloader, build_dataset
    from polytok.tokens import encode_batches

    tok = _load_model(args)
    dataset = build_dataset(args.data, split=args.split, image_size=args.image_size)
    if args.max_images is not None:
        if not hasattr(dataset, "__len__"):
            raise ValueError("--max-images needs a dataset with a length (not a shard stream)")
        dataset = Subset(dataset, range(min(args.max_images, len(dataset))))
    loader = build_dataloader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=False)
    paths = encode_batches(tok, loader, args.out, shard_size=args.shard_size)
    print(json.dumps({"written": [str(p) for p in paths]}))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from polytok.image_io import save_images
    from polytok.tokens import check_tokens_fit, load_tokens

    tok = _load_model(args)
    tokens = load_tokens(args.tokens)
    check_tokens_fit(tokens["meta"], tok)
    codes = tokens["codes"][: args.limit] if args.limit else tokens["codes"]
    out = Path(args.out_dir)
    for start in range(0, len(codes), args.batch_size):
        chunk = codes[start : start + args.batch_size]
        if args.depth:
            chunk = chunk[..., : args.depth] if len(tok.code_shape) == 1 else chunk[..., : args.depth, :]
        save_images(tok.decode(chunk), [out / f"{start + i:06d}.png" for i in range(len(chunk))])
    print(json.dumps({"decoded": len(codes), "out_dir": str(out)}))
    return 0


DEFAULT_RECONSTRUCT_MODEL = "unitok-tiny"


def _split_model_and_images(paths: Sequence[str]) -> tuple[str, list[str]]:
    """``reconstruct``'s optional leading MODEL: a directory, a shipped name or a preset name; otherwise
    every argument is an image and the shipped default tokenizer is used."""
    from polytok.hub import list_shipped
    from polytok.models.registry import list_presets

    first = paths[0]
    if len(paths) > 1 and (Path(first).is_dir() or first in list_shipped() or first in list_presets()):
        return first, list(paths[1:])
    return DEFAULT_RECONSTRUCT_MODEL, list(paths)


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from polytok.image_io import load_images, save_images

    args.model, args.images = _split_model_and_images(args.paths)
    tok = _load_model(args)
    images = load_images(args.images, args.image_size)
    codes = tok.encode(images)
    if args.depth:
        codes = codes[..., : args.depth] if len(tok.code_shape) == 1 else codes[..., : args.depth, :]
    recon = tok.decode(codes)
    out = Path(args.out_dir)
    paths = save_images(recon, [out / f"{Path(p).stem}_recon.png" for p in args.images])
    mse = (recon - images).square().flatten(1).mean(1).clamp(min=1e-10)
    for path, value in zip(paths, mse):
        print(json.dumps({"reconstruction": str(path), "psnr_db": round(float(-10 * value.log10()), 2)}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from polytok.recipes.evaluation import evaluate_to_report

    evaluate_to_report(
        [_load_model(args)],
        names=[args.model],
        data=args.data,
        split=args.split,
        image_size=args.image_size,
        max_images=args.max_images,
        report=args.report,
        zero_shot_task=args.zero_shot_task,
        batch_size=args.batch_size,
        semantic_fidelity=not args.no_semantic_fidelity,
        semantic_fidelity_size=args.fidelity_size,
    )
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="save_pretrained directory or shipped checkpoint name")
    p.add_argument("--untrained", action="store_true", help="allow a fresh (untrained) preset by name")
    p.add_argument("--batch-size", type=int, default=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polytok",
        description="Unified discrete image tokenizers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train the tiny presets on the built-in data, evaluate, write the report")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget for all presets together")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("presets", help="list registered presets and shipped checkpoints")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("train", help="train from a run config (YAML) with key=value overrides")
    p.add_argument("config", help="run config file, e.g. configs/unitok-tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100 data.name=photos")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="measure a tokenizer and write the HTML report")
    _add_model_args(p)
    p.add_argument("--data", default="photos", help="built-in dataset, image folder or shard pattern")
    p.add_argument("--split", default="val")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--max-images", type=int, default=512)
    p.add_argument("--zero-shot-task", default=None, help="e.g. colour or shape for the shapes dataset")
    p.add_argument("--report", default="out/report.html")
    p.add_argument(
        "--no-semantic-fidelity",
        action="store_true",
        help="skip the EfficientNet-Lite0 agreement / KL / rFD figures",
    )
    p.add_argument("--fidelity-size", type=int, default=128, help="classifier input size for them")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("encode", help="encode a dataset to a token file (.npz)")
    _add_model_args(p)
    p.add_argument("data", help="built-in dataset, image folder or shard pattern")
    p.add_argument("--split", default="val")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--out", default="tokens.npz")
    p.add_argument("--shard-size", type=int, default=100_000)
    p.add_argument("--max-images", type=int, default=None, help="encode only the first N samples")
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="decode a token file to PNG images")
    _add_model_args(p)
    p.add_argument("tokens", help="token file written by 'polytok encode'")
    p.add_argument("--out-dir", default="decoded")
    p.add_argument("--depth", type=int, default=None, help="residual tokenizers: decode the first k levels")
    p.add_argument("--limit", type=int, default=None, help="decode only the first N samples")
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("reconstruct", help="encode and decode image files, print PSNR")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL] IMAGE",
        help=f"optional tokenizer (a directory or shipped name; {DEFAULT_RECONSTRUCT_MODEL}), then images",
    )
    p.add_argument("--untrained", action="store_true", help="allow a fresh (untrained) preset by name")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--depth", type=int, default=None, help="residual tokenizers: decode the first k levels")
    p.add_argument("--out-dir", default="out")
    p.set_defaults(func=_cmd_reconstruct)

    from polytok.convert.cli import add_convert_parser

    add_convert_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
