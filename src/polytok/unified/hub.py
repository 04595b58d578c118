"""Load a trained unified model by name or folder, with the image tokenizer it was trained on.

    model, tokenizer = load_unified("unified-evotok-tiny")      # shipped (its default tag, ``.builtin``)
    model, tokenizer = load_unified("runs/unified/model")       # a folder written by save_pretrained

Names are answered by :mod:`polytok.registry` (the package's ``weights/`` and ``POLYTOK_UNIFIED_WEIGHTS``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from polytok.registry import SHIPPED_DIR, UNIFIED_META, UNIFIED_WEIGHTS_ENV, list_models, trained_weights
from polytok.unified.model import IMAGE_TOKENIZER_DIR, UnifiedModel

WEIGHTS_ENV = UNIFIED_WEIGHTS_ENV


def find_shipped_unified(name: str) -> Path | None:
    """The folder of the unified model called ``name`` (``arch.tag``, a folder name in
    ``POLYTOK_UNIFIED_WEIGHTS``, or an architecture's default tag); None when there is none."""
    entry = trained_weights(name, kind="unified")
    return None if entry is None else entry.path


def list_shipped_unified() -> list[str]:
    """Unified models by name: the shipped ones by architecture (loading it picks its default tag,
    ``.builtin``), the others by their folder name in ``POLYTOK_UNIFIED_WEIGHTS``."""
    entries = list_models(kind="unified", trained=True)
    return sorted({e.arch if e.path.parent == SHIPPED_DIR else e.name for e in entries})


def is_unified_model(name_or_path: str) -> bool:
    """True for a folder written by the unified model's ``save_pretrained`` or a unified model's name."""
    path = Path(name_or_path)
    if path.is_dir():
        return (path / UNIFIED_META).is_file()
    return find_shipped_unified(str(name_or_path)) is not None


def _is_path(name: str) -> bool:
    """True for a recorded tokenizer name that is a file-system path rather than a name."""
    return "/" in name or "\\" in name or name.startswith(".") or Path(name).is_absolute()


def load_unified(name_or_path: str, device: str | torch.device = "cpu") -> tuple[UnifiedModel, Any]:
    """A trained unified model (a ``save_pretrained`` folder or a name) and its image tokenizer.

    The image tokenizer is the one saved beside the model (``image_tokenizer/``), else the trained
    weights of the recorded name; either way it must be the one the model was trained on.
    """
    from polytok.hub import load_tokenizer

    path = Path(name_or_path)
    if not path.is_dir():
        found = find_shipped_unified(str(name_or_path))
        if found is None:
            raise FileNotFoundError(
                f"no unified model {str(name_or_path)!r}: not a folder holding {UNIFIED_META} (written by "
                f"'polytok train' into <out_dir>/model), nor a shipped unified model "
                f"{list_shipped_unified()} (searched: the package's weights/ and ${WEIGHTS_ENV})"
            )
        path = found
    model = UnifiedModel.from_pretrained(path, map_location=device).eval()
    beside = path / IMAGE_TOKENIZER_DIR
    if beside.is_symlink() or (beside.exists() and not beside.resolve().is_relative_to(path.resolve())):
        raise ValueError(
            f"{beside} leads outside the model folder (to {beside.resolve()}): a unified model reads its "
            f"image tokenizer from {IMAGE_TOKENIZER_DIR}/ inside its own folder; copy the tokenizer there"
        )
    if beside.is_dir():
        tokenizer = load_tokenizer(beside)
    else:
        if model.tokenizer_id is None:
            raise ValueError(f"{path} records no image tokenizer and holds none in {IMAGE_TOKENIZER_DIR}/")
        name = str(model.tokenizer_id.get("name", ""))
        if _is_path(name):
            raise ValueError(
                f"{path / UNIFIED_META} names its image tokenizer by the path {name!r}, outside the model "
                f"folder: a unified model reads its tokenizer from {IMAGE_TOKENIZER_DIR}/ inside its folder "
                "or by a shipped name; put the tokenizer in that folder"
            )
        tokenizer = load_tokenizer(name)
        try:
            model.check_tokenizer(tokenizer)
        except ValueError as exc:
            raise type(exc)(
                f"{path} holds no {IMAGE_TOKENIZER_DIR}/ and the tokenizer found by its recorded name "
                f"{name!r} is not the one it was trained on: {exc}"
            ) from exc
    tokenizer = tokenizer.eval().to(device)
    model.check_tokenizer(tokenizer)
    return model, tokenizer
