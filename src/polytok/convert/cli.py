"""``polytok convert {unitok,evotok,llamagen} CHECKPOINT OUT_DIR``: an official checkpoint -> a polytok
checkpoint; ``polytok convert {vila-u,qlip} DIR OUT_DIR``: a peer's released folder -> its polytok tower;
``polytok convert tokenflow CKPT OUT_DIR``: a peer's released checkpoint file -> its polytok tokenizer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from polytok.convert.checkpoint import read_checkpoint
from polytok.convert.state import ConversionError

DEFAULT_PRESETS = {"unitok": "unitok-l", "evotok": "evotok-l", "llamagen": "llamagen-vq16"}
# Peers released as folders (polytok.peers): system -> "module:function(folder, text_tokenizer=) -> model"
PEER_FOLDERS = {
    "vila-u": "polytok.peers.vila_u.convert:convert_vila_u",
    "qlip": "polytok.peers.qlip.convert:convert_qlip",
}
# Peers released as checkpoint files: system -> "module:function(path, trusted=, overrides=) -> model"
PEER_CHECKPOINTS = {"tokenflow": "polytok.peers.tokenflow.convert:convert_tokenflow_file"}


def convert_peer_checkpoint(
    system: str, checkpoint: str | Path, out_dir: str | Path, *, config=None, trusted: bool = False,
    overwrite: bool = False,
) -> Path:  # fmt: skip
    """Convert a peer's checkpoint file (``PEER_CHECKPOINTS``; ``config``: a dict or a YAML / JSON file of
    config overrides) and ``save_pretrained`` it to ``out_dir``."""
    import importlib

    from polytok.config import load_file

    _refuse_occupied(Path(out_dir), overwrite)
    overrides = load_file(config) if isinstance(config, (str, Path)) else config
    module, _, name = PEER_CHECKPOINTS[system].partition(":")
    model = getattr(importlib.import_module(module), name)(checkpoint, trusted=trusted, overrides=overrides)
    return model.save_pretrained(out_dir)


def convert_peer_folder(
    system: str, folder: str | Path, out_dir: str | Path, *, text_tokenizer=None, overwrite: bool = False
) -> Path:
    """Convert a peer's released folder (``PEER_FOLDERS``) and ``save_pretrained`` it to ``out_dir``."""
    import importlib

    _refuse_occupied(Path(out_dir), overwrite)
    module, _, name = PEER_FOLDERS[system].partition(":")
    model = getattr(importlib.import_module(module), name)(folder, text_tokenizer=text_tokenizer)
    return model.save_pretrained(out_dir)


def _refuse_occupied(out: Path, overwrite: bool) -> None:
    if not overwrite and out.is_dir() and any(out.iterdir()):
        held = "a tokenizer" if (out / "config.json").is_file() else "files"
        raise FileExistsError(
            f"{out} already holds {held}; pass --overwrite (overwrite=True) to replace it, or choose a new "
            "directory"
        )


def convert_checkpoint(
    system: str,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    config=None,
    trusted: bool = False,
    overwrite: bool = False,
) -> Path:
    """Read ``checkpoint`` (of ``system``, a key of ``DEFAULT_PRESETS``), convert it into ``config``
    (default: the system's preset; a TokenizerConfig, a dict or a config file) and ``save_pretrained`` it.
    An ``out_dir`` that already holds something (another tokenizer) is refused unless ``overwrite``."""
    from polytok.models.config import TokenizerConfig

    if system not in DEFAULT_PRESETS:
        raise ValueError(f"unknown system {system!r}; expected one of {sorted(DEFAULT_PRESETS)}")
    _refuse_occupied(Path(out_dir), overwrite)
    if config is None:
        from polytok.models.registry import get_preset_dict

        cfg = TokenizerConfig.from_dict(get_preset_dict(DEFAULT_PRESETS[system]))
    elif isinstance(config, TokenizerConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = TokenizerConfig.from_dict(config)
    else:
        cfg = TokenizerConfig.from_file(config)
    if system == "llamagen":  # a LlamaGen checkpoint, or a Janus model file or folder
        from polytok.convert.llamagen import convert_llamagen_file

        return convert_llamagen_file(checkpoint, cfg, trusted=trusted).save_pretrained(out_dir)
    obj = read_checkpoint(checkpoint, trusted=trusted)
    if system == "unitok":
        from polytok.convert.unitok import convert_unitok

        tok = convert_unitok(obj, cfg)
    else:
        from polytok.convert.evotok import convert_evotok

        tok = convert_evotok(obj, cfg)
    return tok.save_pretrained(out_dir)


def add_convert_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official checkpoint (UniTok, EvoTok, LlamaGen, TokenFlow) or folder (VILA-U, QLIP)",
    )
    p.add_argument(
        "system",
        choices=sorted([*DEFAULT_PRESETS, *PEER_FOLDERS, *PEER_CHECKPOINTS]),
        help="which official code wrote the file",
    )
    p.add_argument(
        "checkpoint",
        help="the official torch checkpoint (.pth / .pt); llamagen also a Janus model file or folder; "
        "vila-u / qlip their released folders",
    )
    p.add_argument("out_dir", help="directory for config.json + model.safetensors")
    p.add_argument("--config", default=None, help="target tokenizer config file (default: the large preset)")
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle a file weights_only loading refuses (runs code from the file: trusted files only)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the tokenizer OUT_DIR already holds (else refused)"
    )
    p.add_argument(
        "--text-tokenizer",
        default=None,
        help="vila-u: SigLIP's spiece.model (or a folder holding it) when it is not in the folder",
    )
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    """``polytok convert``; bad input raises ValueError (ConversionError) or OSError, which ``polytok``'s
    main reports in one line."""
    if args.system in PEER_FOLDERS:
        out = convert_peer_folder(
            args.system, args.checkpoint, args.out_dir, text_tokenizer=args.text_tokenizer,
            overwrite=args.overwrite,
        )  # fmt: skip
        print(json.dumps({"converted": str(out), "system": args.system}))
        return 0
    if args.system in PEER_CHECKPOINTS:
        out = convert_peer_checkpoint(
            args.system, args.checkpoint, args.out_dir, config=args.config, trusted=args.trust_checkpoint,
            overwrite=args.overwrite,
        )  # fmt: skip
        print(json.dumps({"converted": str(out), "system": args.system}))
        return 0
    try:
        out = convert_checkpoint(
            args.system, args.checkpoint, args.out_dir, config=args.config, trusted=args.trust_checkpoint,
            overwrite=args.overwrite,
        )  # fmt: skip
    except TypeError as exc:  # a checkpoint whose structure is not the official one
        raise ConversionError(str(exc)) from exc
    print(json.dumps({"converted": str(out), "system": args.system}))
    return 0
