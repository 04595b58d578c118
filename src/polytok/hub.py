"""Find a tokenizer by name or path: a saved directory, a checkpoint shipped in the package, or a preset.

tok = load_tokenizer("runs/unitok-tiny/tokenizer")   # a save_pretrained directory
tok = load_tokenizer("unitok-tiny")                  # the weights shipped with polytok, if any
"""

from __future__ import annotations

import os
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "weights"


def list_shipped() -> list[str]:
    """Names of the trained checkpoints shipped inside the package."""
    if not SHIPPED_DIR.is_dir():
        return []
    from polytok.storage import is_aside

    return sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file() and not is_aside(p))


def load_tokenizer(name_or_path: str | os.PathLike, *, allow_untrained: bool = False):
    """A trained tokenizer from a directory or a shipped name; a fresh preset only if allowed.

    Raises FileNotFoundError naming what was looked for when nothing matches.
    """
    from polytok.models.registry import list_presets
    from polytok.models.tokenizer import Tokenizer
    from polytok.storage import resolve

    path = Path(name_or_path)
    found = resolve(path) or path  # the previous version, if a save was interrupted while replacing it
    if found.is_dir():
        if not (found / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a save_pretrained directory")
        return Tokenizer.from_pretrained(path)
    name = str(name_or_path)
    if name in list_shipped():
        return Tokenizer.from_pretrained(SHIPPED_DIR / name)
    if allow_untrained and name in list_presets():
        return Tokenizer.from_preset(name)
    raise FileNotFoundError(
        f"no tokenizer {name!r}: not a directory with config.json + model.safetensors, not a shipped "
        f"checkpoint {list_shipped()}"
        + (
            ""
            if allow_untrained
            else f", and presets {list_presets()} are untrained (pass allow_untrained=True to use one)"
        )
    )
