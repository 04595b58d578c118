"""Every name polytok answers to, in one place: architectures, trained weights, unified models, run configs.

Names follow timm's ``arch.tag``: an architecture name (``evotok-tiny``) builds untrained weights
(``Tokenizer.from_preset``); ``arch.tag`` names trained weights of it (``evotok-tiny.builtin``: trained on
the built-in data, shipped inside the package). Loading an architecture name by
:func:`polytok.hub.load_tokenizer` resolves to its default tag, the shipped weights, as timm resolves a
model name to its default pretrained tag.

    >>> from polytok.registry import get_model, list_models
    >>> get_model("evotok-tiny.builtin").arch, get_model("evotok-tiny").trained
    ('evotok-tiny', False)
    >>> "unified-evotok-tiny.builtin" in [m.name for m in list_models(kind="unified")]
    True

Unified models kept outside the package are found by their folder name in the directories listed in
``POLYTOK_UNIFIED_WEIGHTS`` (``os.pathsep``-separated). Run configs (``polytok train CONFIG``) are found by
name in :data:`CONFIG_DIR`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_DIR = PACKAGE_DIR / "weights"  # trained weights shipped inside the package, one folder each
CONFIG_DIR = PACKAGE_DIR / "configs"  # run configs: the recipes of the presets and the shipped weights
DEFAULT_TAG = "builtin"  # the tag of weights trained on the built-in data (all shipped weights)
UNIFIED_WEIGHTS_ENV = "POLYTOK_UNIFIED_WEIGHTS"
UNIFIED_META = "unified.json"  # the file that marks a unified model's folder

Kind = Literal["tokenizer", "unified"]


@dataclass(frozen=True)
class ModelEntry:
    """One name: ``kind`` tokenizer or unified model; ``arch`` the architecture; ``tag`` None for the
    architecture itself (untrained), else the trained weights' tag, stored in the folder ``path``."""

    name: str
    kind: Kind
    arch: str
    tag: str | None
    path: Path | None

    @property
    def trained(self) -> bool:
        return self.path is not None


def split_name(name: str) -> tuple[str, str | None]:
    """``"evotok-tiny.builtin"`` -> ``("evotok-tiny", "builtin")``; ``"evotok-tiny"`` -> ``(.., None)``."""
    arch, _, tag = str(name).partition(".")
    return arch, (tag or None)


def unified_weights_dirs() -> list[Path]:
    """Where unified models are found by name: the package's ``weights/`` first, then the directories of
    ``POLYTOK_UNIFIED_WEIGHTS``, for models kept outside the package."""
    extra = [Path(p) for p in os.environ.get(UNIFIED_WEIGHTS_ENV, "").split(os.pathsep) if p]
    return [SHIPPED_DIR, *extra]


def _shipped_entries() -> list[ModelEntry]:
    from polytok.storage import is_aside

    entries: list[ModelEntry] = []
    for root in unified_weights_dirs():
        if not root.is_dir():
            continue
        shipped = root == SHIPPED_DIR
        for folder in sorted(root.iterdir()):
            if is_aside(folder) or not folder.is_dir():
                continue
            if (folder / UNIFIED_META).is_file():
                kind: Kind = "unified"
            elif shipped and (folder / "config.json").is_file():
                kind = "tokenizer"
            else:
                continue
            # shipped folders are named by architecture and carry the default tag; a folder elsewhere is
            # named as it is
            name = f"{folder.name}.{DEFAULT_TAG}" if shipped else folder.name
            arch, tag = split_name(name)
            entries.append(ModelEntry(name, kind, arch, tag, folder))
    return entries


def list_models(kind: Kind | None = None, trained: bool | None = None) -> list[ModelEntry]:
    """Every name: tokenizer architectures (the presets), trained weights shipped in the package, and
    unified models (shipped, or in ``POLYTOK_UNIFIED_WEIGHTS``); the first found wins for a name."""
    from polytok.models.registry import list_presets
    from polytok.peers import list_peers

    entries = [ModelEntry(p, "tokenizer", p, None, None) for p in [*list_presets(), *list_peers()]]
    seen = {e.name for e in entries}
    for entry in _shipped_entries():
        if entry.name not in seen:
            entries.append(entry)
            seen.add(entry.name)
    return [
        e
        for e in sorted(entries, key=lambda e: (e.kind, e.name))
        if (kind is None or e.kind == kind) and (trained is None or e.trained == trained)
    ]


def find_model(name: str, kind: Kind | None = None) -> ModelEntry | None:
    """The entry called exactly ``name`` (None when there is none); :func:`trained_weights` resolves an
    architecture name to its default tag."""
    entries = {e.name: e for e in list_models(kind)}
    return entries.get(str(name))


def get_model(name: str, kind: Kind | None = None) -> ModelEntry:
    """:func:`find_model`, or KeyError listing the names there are."""
    entry = find_model(name, kind)
    if entry is None:
        names = ", ".join(e.name for e in list_models(kind))
        raise KeyError(f"no model named {name!r}; known: {names}")
    return entry


def trained_weights(name: str, kind: Kind | None = None) -> ModelEntry | None:
    """The trained weights a name stands for: ``arch.tag`` itself, or an architecture's default tag."""
    entry = find_model(name, kind)
    if entry is not None and entry.trained:
        return entry
    arch, tag = split_name(name)
    if tag is None:
        default = find_model(f"{arch}.{DEFAULT_TAG}", kind)
        if default is not None and default.trained:
            return default
    return None


def run_config_path(name: str) -> Path:
    """The run config ``configs/<name>.yaml`` shipped with polytok (FileNotFoundError listing them)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no run config {name!r} in {CONFIG_DIR}; known: {known}")
    return path
