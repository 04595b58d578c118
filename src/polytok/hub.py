"""Load a tokenizer by name or path: a saved directory, trained weights by name, or a preset.

    tok = load_tokenizer("runs/unitok-tiny/tokenizer")   # a save_pretrained directory
    tok = load_tokenizer("unitok-tiny.builtin")          # trained weights shipped with polytok
    tok = load_tokenizer("unitok-tiny")                  # the same: an architecture's default tag

Names are answered by :mod:`polytok.registry`.
"""

from __future__ import annotations

import os
from pathlib import Path

from polytok.registry import SHIPPED_DIR

__all__ = ["SHIPPED_DIR", "list_shipped", "load_tokenizer"]


def list_shipped() -> list[str]:
    """Architectures whose trained weights ship inside the package (their ``.builtin`` tag)."""
    from polytok.registry import list_models

    return sorted(e.arch for e in list_models(kind="tokenizer", trained=True) if e.path.parent == SHIPPED_DIR)


def load_tokenizer(name_or_path: str | os.PathLike, *, allow_untrained: bool = False):
    """A trained tokenizer from a directory or a name (``arch.tag``, or an architecture's default tag); a
    fresh preset only if allowed.

    Raises FileNotFoundError naming what was looked for when nothing matches.
    """
    from polytok.models.registry import list_presets
    from polytok.models.tokenizer import Tokenizer
    from polytok.peers import list_peers, peer_class, peer_of_folder
    from polytok.registry import list_models, split_name, trained_weights
    from polytok.storage import resolve

    path = Path(name_or_path)
    found = resolve(path) or path  # the previous version, if a save was interrupted while replacing it
    if found.is_dir():
        if not (found / "config.json").is_file():
            raise FileNotFoundError(f"{path} has no config.json: not a save_pretrained directory")
        peer = peer_of_folder(found)  # a peer's tower (polytok.peers) names itself in its config
        return peer_class(peer).from_pretrained(path) if peer else Tokenizer.from_pretrained(path)
    name = str(name_or_path)
    entry = trained_weights(name, kind="tokenizer")
    if entry is not None:
        return Tokenizer.from_pretrained(entry.path)
    arch, tag = split_name(name)
    if allow_untrained and tag is None and arch in list_presets():
        return Tokenizer.from_preset(arch)
    if allow_untrained and tag is None and arch in list_peers():
        return peer_class(arch).from_preset(arch)
    trained = [e.name for e in list_models(kind="tokenizer", trained=True)]
    raise FileNotFoundError(
        f"no tokenizer {name!r}: not a directory with config.json + model.safetensors, not trained "
        f"weights {trained}"
        + (
            ""
            if allow_untrained
            else f", and presets {list_presets()} are untrained (pass allow_untrained=True to use one)"
        )
    )
