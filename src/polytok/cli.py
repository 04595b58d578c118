"""Command-line interface: a thin layer over the library (no logic lives only here).

polytok demo                                  # the main job on the built-in data
polytok demo --unified NAME_OR_DIR            # ... also sampling and captioning a unified model
polytok presets                               # every name: architectures, trained weights (arch.tag)
polytok train CONFIG.yaml [key=value ...]     # train (single process or under torchrun)
polytok generate MODEL "PROMPT" ... --out-dir DIR   # unified model: images from text (PNG + JSON lines)
polytok caption MODEL IMAGE ...                # unified model: one JSON line per image
polytok eval MODEL --data shapes --report out/report.html
polytok eval UNIFIED_MODEL --samples-per-prompt 4 --cfg 3.0   # unified model: generation + captions on shapes
polytok encode MODEL DATA --out tokens/       # a dataset to tar shards of tokens (also under torchrun)
polytok encode MODEL DATA --out tokens.npz    # ... or to .npz token files
polytok decode MODEL tokens/ --out-dir images/
polytok reconstruct [MODEL] photo.png --out-dir out/   # MODEL defaults to the shipped unitok-tiny
polytok convert unitok CHECKPOINT OUT_DIR      # an official UniTok / EvoTok checkpoint to polytok

Bad input prints one line (polytok: error: ...) and exits with status 2; --debug shows the traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_demo(args: argparse.Namespace) -> int:
    from polytok.demo import run_demo

    run_demo(
        out_dir=args.out_dir,
        minutes=args.minutes,
        seed=args.seed,
        unified=args.unified,
        unified_samples_per_prompt=args.unified_samples,
        unified_caption_images=args.unified_captions,
        unified_only=args.unified_only,
    )
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from polytok.hub import list_shipped
    from polytok.models.registry import list_presets
    from polytok.peers import describe_peers
    from polytok.registry import list_models
    from polytok.unified.hub import list_shipped_unified

    models = [
        {"name": e.name, "kind": e.kind, "arch": e.arch, "tag": e.tag, "trained": e.trained}
        | ({"path": str(e.path)} if e.path is not None else {})
        for e in list_models()
    ]
    shipped = {"shipped": list_shipped(), "shipped_unified": list_shipped_unified()}
    peers = {"peers": describe_peers()}  # polytok.peers: family, tokens, bits, parameters, official figures
    print(json.dumps({"models": models, "presets": list_presets(), **shipped, **peers}, indent=1))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from polytok.recipes.train import train_from_file

    train_from_file(args.config, args.overrides)
    return 0


def _check_finite(value: float, flag: str) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value}")


def _cmd_generate(args: argparse.Namespace) -> int:
    from polytok.recipes.unified_sample import generate_files
    from polytok.unified.hub import load_unified

    _check_finite(args.cfg, "--cfg")
    model, tok = load_unified(args.model)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    for record in generate_files(
        model, tok, args.prompts, args.out_dir, num_samples=args.num_samples, seed=args.seed,
        guidance_scale=args.cfg, batch_size=args.batch_size, **options,
    ):  # fmt: skip
        print(json.dumps(record), flush=True)
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from polytok.recipes.unified_sample import caption_files
    from polytok.unified.hub import load_unified

    model, tok = load_unified(args.model)
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    for record in caption_files(
        model, tok, args.images, max_new_tokens=args.max_tokens, batch_size=args.batch_size,
        rerank=args.rerank, **options,
    ):  # fmt: skip
        print(json.dumps(record), flush=True)
    return 0


def _load_model(args: argparse.Namespace):
    from polytok.hub import load_tokenizer
    from polytok.models.registry import list_presets

    try:
        tok = load_tokenizer(args.model, allow_untrained=args.untrained)
    except FileNotFoundError as exc:
        if args.untrained or str(args.model) not in list_presets():
            raise
        raise FileNotFoundError(f"{exc}; on the command line: --untrained") from exc
    return tok.eval()


def _check_depth(depth: int | None, tok) -> None:
    """``--depth k`` keeps the first k residual levels; it must be one the pixel decoder can use."""
    if depth is None:
        return
    if not hasattr(tok, "num_levels"):  # a peer whose codes are not levels (tokenflow-256: scales)
        scales = getattr(tok, "scales", None)
        codes = (
            ""
            if scales is None
            else f" (its codes are {sum(s * s for s in scales)} tokens over scales {scales})"
        )
        raise ValueError(
            f"--depth applies to residual tokenizers; {tok.config.name} has no residual levels{codes}"
        )
    if tok.num_levels == 1:
        raise ValueError(
            f"--depth applies to residual tokenizers; {tok.config.name} has one level of codes "
            f"(code shape {tuple(tok.code_shape)})"
        )
    if not 1 <= depth <= tok.pixel_depth:
        raise ValueError(
            f"--depth must be between 1 and {tok.pixel_depth} (the levels {tok.config.name} decodes "
            f"pixels from), got {depth}"
        )


def _take_depth(codes, depth: int | None, tok):
    """Codes (B, h, w, L) or (B, h, w, L, C) -> their first ``depth`` levels (all when None)."""
    from polytok.models.levels import code_prefix

    return codes if depth is None else code_prefix(codes, depth, tok.code_shape, tok.num_levels)


def _cmd_encode(args: argparse.Namespace) -> int:
    from torch.utils.data import Subset

    from polytok.tokensets import encode_format, encode_token_set
    from polytok.tokensets.npz import dataset_for_encoding, encoding_source

    encode_format(args.out, args.format)  # refused before the model loads
    tok = _load_model(args)
    dataset = dataset_for_encoding(args.data, split=args.split, image_size=args.image_size)
    source = encoding_source(args.data, args.split, args.image_size, args.max_images, dataset)
    if args.max_images is not None:
        if not hasattr(dataset, "__len__"):
            raise ValueError("--max-images needs a dataset with a length (not a shard stream)")
        dataset = Subset(dataset, range(min(args.max_images, len(dataset))))
    report = encode_token_set(
        tok, dataset, args.out, format=args.format, shard_size=args.shard_size,
        batch_size=args.batch_size, workers=args.workers, source=source,
    )  # fmt: skip
    if report is not None:  # rank 0 reports the whole set
        print(json.dumps(report))
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    from polytok.image_io import save_images
    from polytok.tokensets import open_token_set

    tok = _load_model(args)
    _check_depth(args.depth, tok)
    codes = open_token_set(args.tokens, tokenizer=tok, limit=args.limit)["codes"]
    out = Path(args.out_dir)
    for start in range(0, len(codes), args.batch_size):
        chunk = _take_depth(codes[start : start + args.batch_size], args.depth, tok)
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
    if Path(first).is_dir() or first in list_shipped() or first in list_presets():
        if len(paths) == 1:
            raise ValueError(f"no image given: {first} names a tokenizer; give image files after it")
        return first, list(paths[1:])
    return DEFAULT_RECONSTRUCT_MODEL, list(paths)


def unique_output_names(images: Sequence[str], suffix: str = "_recon.png") -> list[str]:
    """``<stem><suffix>`` per image; images sharing a stem get ``<stem>-2``, ``-3`` ... in order."""
    names, seen = [], set()
    for image in images:
        stem, n = Path(image).stem, 1
        name = f"{stem}{suffix}"
        while name in seen:
            n += 1
            name = f"{stem}-{n}{suffix}"
        seen.add(name)
        names.append(name)
    return names


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from polytok.image_io import load_images, save_images

    args.model, args.images = _split_model_and_images(args.paths)
    tok = _load_model(args)
    _check_depth(args.depth, tok)
    out = Path(args.out_dir)
    names = unique_output_names(args.images)
    for start in range(0, len(args.images), args.batch_size):
        sources = args.images[start : start + args.batch_size]
        images = load_images(sources, args.image_size)
        recon = tok.decode(_take_depth(tok.encode(images), args.depth, tok))
        paths = save_images(recon, [out / name for name in names[start : start + len(sources)]])
        mse = (recon - images).square().flatten(1).mean(1).clamp(min=1e-10)
        for source, path, value in zip(sources, paths, mse):
            record = {"image": source, "reconstruction": str(path)}
            print(json.dumps({**record, "psnr_db": round(float(-10 * value.log10()), 2)}))
    return 0


TOKENIZER_EVAL_FLAGS = {  # eval flags that only apply to a tokenizer, and their defaults there
    "data": ("--data", "photos"),
    "split": ("--split", "val"),
    "image_size": ("--image-size", 64),
    "max_images": ("--max-images", 512),
    "zero_shot_task": ("--zero-shot-task", None),
}


def _check_unified_eval_flags(args: argparse.Namespace) -> None:
    """Every flag of ``eval`` on a unified model, before anything is loaded or computed."""
    from polytok.storage import check_writable

    given = [flag for key, (flag, _) in TOKENIZER_EVAL_FLAGS.items() if getattr(args, key) is not None]
    given += ["--untrained"] * args.untrained + ["--no-semantic-fidelity"] * args.no_semantic_fidelity
    if given:
        raise ValueError(
            f"{', '.join(given)} only apply to a tokenizer's evaluation; {args.model} is a unified model, "
            "evaluated on shapes (see the unified model options of 'polytok eval --help')"
        )
    from polytok.unified.sampling import SamplingOptions

    _check_finite(args.cfg, "--cfg")
    _check_finite(args.caption_rerank_weight, "--caption-rerank-weight")
    SamplingOptions(args.temperature, args.top_k, args.top_p)
    if args.fidelity_size is not None and args.fidelity_size < 32:
        raise ValueError(f"--fidelity-size must be at least 32 (pixels), got {args.fidelity_size}")
    report = Path(args.report)
    summary = Path(args.summary) if args.summary is not None else report.with_suffix(".json")
    if report.resolve() == summary.resolve():
        raise ValueError(
            f"--summary and --report name the same file ({report}): the JSON summary would replace the "
            "HTML report; give --summary another name"
        )
    check_writable(report, "--report")
    check_writable(summary, "--summary")


def _cmd_eval_unified(args: argparse.Namespace) -> int:
    from polytok.recipes.unified_evaluation import evaluate_unified_to_files

    _check_unified_eval_flags(args)
    options = {} if args.fidelity_size is None else {"gfd_size": args.fidelity_size}
    evaluate_unified_to_files(
        args.model, report=args.report, summary=args.summary, prompts_per_pair=args.prompts_per_pair,
        max_prompts=args.max_prompts, samples_per_prompt=args.samples_per_prompt, guidance_scale=args.cfg,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        caption_images_per_split=args.caption_images, bits_images_per_split=args.bits_images,
        caption_rerank=args.caption_rerank, caption_rerank_weight=args.caption_rerank_weight,
        bits_token_sets=args.bits_token_set,
        gfd=False if args.no_gfd else "auto", batch_size=args.batch_size, **options,
    )  # fmt: skip
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from polytok.recipes.tokenizer_evaluation import evaluate_to_report
    from polytok.unified.hub import is_unified_model

    if is_unified_model(args.model):
        return _cmd_eval_unified(args)
    for key, (_, default) in TOKENIZER_EVAL_FLAGS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
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
        progress=True,  # on stderr, as the training bar; stdout keeps the JSON lines
    )
    return 0


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="save_pretrained directory or shipped checkpoint name")
    p.add_argument("--untrained", action="store_true", help="allow a fresh (untrained) preset by name")
    p.add_argument("--batch-size", type=positive_int, default=32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polytok",
        description="Unified discrete image tokenizers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug also after the subcommand
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = functools.partial(sub.add_parser, parents=[common])

    p = add_parser("demo", help="train the tiny presets on the built-in data, evaluate, write the report")
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget for all presets together")
    p.add_argument("--seed", type=int, default=0)
    u = p.add_argument_group("unified model stage (sampling and captioning on shapes)")
    u.add_argument(
        "--unified",
        metavar="NAME_OR_DIR",
        default=None,
        help="unified model to sample: a folder or a shipped name (default: the first shipped one; "
        "the stage is skipped when none is shipped)",
    )
    u.add_argument("--unified-samples", type=int, default=2, help="samples of each of the 42 prompts")
    u.add_argument("--unified-captions", type=int, default=16, help="held-out shapes images captioned")
    u.add_argument(
        "--unified-only", action="store_true", help="only the unified stage and the report (no tokenizers)"
    )
    p.set_defaults(func=_cmd_demo)

    p = add_parser("presets", help="list registered presets and shipped checkpoints (unified models too)")
    p.set_defaults(func=_cmd_presets)

    p = add_parser("train", help="train from a run config (YAML) with key=value overrides")
    p.add_argument("config", help="run config file, e.g. configs/unitok-tiny.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=100 data.name=photos")
    p.set_defaults(func=_cmd_train)

    for name, text in (("generate", "images from prompts"), ("caption", "captions of image files")):
        p = add_parser(name, help=f"unified model: {text}, one JSON line per image")
        p.add_argument("model", help="unified model: a folder (<out_dir>/model of a run) or shipped name")
        if name == "generate":
            p.add_argument("prompts", nargs="+", metavar="PROMPT")
            p.add_argument("--num-samples", type=positive_int, default=1, help="images per prompt")
            p.add_argument("--cfg", type=float, default=3.0, help="guidance scale (1: no guidance)")
            p.add_argument(
                "--out-dir", default="generated",
                help="files <prompt>_<sample>.png; images already there are kept: when a name is taken, "
                "this run's files get the first free suffix (-2, -3, ...)",
            )  # fmt: skip
        else:
            p.add_argument("images", nargs="+", metavar="IMAGE")
            p.add_argument("--max-tokens", type=positive_int, default=32)
            p.add_argument(
                "--rerank", nargs="+", default=[], metavar="ATTRIBUTE",
                help="shapes models: also the caption with these attributes re-ranked by the model's "
                "text -> image likelihood (e.g. shape)",
            )  # fmt: skip
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--temperature", type=float, default=1.0 if name == "generate" else 0.0)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--batch-size", type=positive_int, default=8)
        p.set_defaults(func=_cmd_generate if name == "generate" else _cmd_caption)

    p = add_parser("eval", help="measure a tokenizer (or a unified model on shapes), write the HTML report")
    _add_model_args(p)
    t = p.add_argument_group("tokenizer only (refused for a unified model)")
    t.add_argument("--data", default=None, help="built-in dataset, image folder or shard pattern (photos)")
    t.add_argument("--split", default=None, help="(val)")
    t.add_argument("--image-size", type=int, default=None, help="(64)")
    t.add_argument("--max-images", type=int, default=None, help="(512)")
    t.add_argument("--zero-shot-task", default=None, help="e.g. colour or shape for the shapes dataset")
    p.add_argument("--report", default="out/report.html")
    p.add_argument(
        "--no-semantic-fidelity",
        action="store_true",
        help="skip the EfficientNet-Lite0 agreement / KL / rFD figures",
    )
    p.add_argument("--fidelity-size", type=int, help="their classifier input size, also gFD's")
    u = p.add_argument_group("unified model (generation and captioning on shapes)")
    u.add_argument("--samples-per-prompt", type=positive_int, default=4)
    u.add_argument(
        "--prompts-per-pair", type=positive_int, default=1, help="prompts per (shape, colour) pair"
    )
    u.add_argument("--max-prompts", type=positive_int, default=None, help="only the suite's first N prompts")
    u.add_argument("--cfg", type=float, default=3.0, help="guidance scale (1: no guidance)")
    u.add_argument("--temperature", type=float, default=1.0)
    u.add_argument("--top-k", type=int, default=0)
    u.add_argument("--top-p", type=float, default=1.0)
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--caption-images", type=int, default=32, help="captioned images per split (val, heldout)")
    u.add_argument("--bits-images", type=int, default=32, help="images per split for bits per image token")
    u.add_argument(
        "--caption-rerank", nargs="*", default=["shape"], metavar="ATTRIBUTE",
        help="attributes of each caption re-ranked by the text -> image likelihood (none: skipped)",
    )  # fmt: skip
    u.add_argument(
        "--caption-rerank-weight", type=float, default=0.0,
        help="weight of the caption's own bits in the re-ranking score (0: the image's bits alone)",
    )  # fmt: skip
    u.add_argument(
        "--bits-token-set", action="append", default=[], metavar="DIR",
        help="also bits per image token on a token set of this tokenizer (repeatable)",
    )  # fmt: skip
    u.add_argument("--no-gfd", action="store_true", help="skip gFD (EfficientNet-Lite0)")
    u.add_argument("--summary", default=None, help="JSON summary (default: the report's path, .json)")
    p.set_defaults(func=_cmd_eval)

    p = add_parser("encode", help="encode a dataset to tar shards (a directory) or a token file (.npz)")
    _add_model_args(p)
    p.add_argument("data", help="built-in dataset, image folder or shard pattern")
    p.add_argument("--split", default="train", help="folder/<split> when it exists (no augmentation)")
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument(
        "--out", default="tokens.npz", help="a directory (tar shards + manifest) or a .npz token file"
    )
    p.add_argument("--format", choices=("auto", "wds", "npz"), default="auto", help="auto: by --out")
    p.add_argument("--shard-size", type=positive_int, default=100_000, help="samples per shard / file")
    p.add_argument("--max-images", type=positive_int, default=None, help="encode only the first N samples")
    p.add_argument("--workers", type=int, default=0)
    p.set_defaults(func=_cmd_encode)

    p = add_parser("decode", help="decode a token file to PNG images")
    _add_model_args(p)
    p.add_argument("tokens", help="token-shard directory, token file or manifest written by 'polytok encode'")
    p.add_argument("--out-dir", default="decoded")
    p.add_argument("--depth", type=int, default=None, help="residual tokenizers: decode the first k levels")
    p.add_argument("--limit", type=positive_int, default=None, help="decode only the first N samples")
    p.set_defaults(func=_cmd_decode)

    p = add_parser("reconstruct", help="encode and decode image files, print PSNR")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL] IMAGE",
        help=f"optional tokenizer (a directory or shipped name; {DEFAULT_RECONSTRUCT_MODEL}), then images",
    )
    p.add_argument("--untrained", action="store_true", help="allow a fresh (untrained) preset by name")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--image-size", type=positive_int, default=64)
    p.add_argument("--depth", type=int, default=None, help="residual tokenizers: decode the first k levels")
    p.add_argument("--out-dir", default="out")
    p.set_defaults(func=_cmd_reconstruct)

    from polytok.convert.cli import add_convert_parser

    add_convert_parser(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that report bad input, not a bug: shown as one line without a traceback. OSError
    included: an unwritable destination or a full disk is the user's to fix."""
    from polytok.train.checkpoint import CheckpointError

    return (ValueError, OSError, CheckpointError)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:  # a file not read or written: which and why
        text = exc.strerror if exc.filename is None else f"cannot use {exc.filename}: {exc.strerror}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; bad input prints ``polytok: error: ...`` and returns 2 (``--debug``: traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("polytok: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug or not isinstance(exc, user_errors()):
            raise
        print(f"polytok: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
