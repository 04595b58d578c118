"""The folder format every peer saves: ``config.json`` (``"peer": name`` and the peer's config),
``model.safetensors``, optional extra files (a text tokenizer) and ``manifest.json`` (sizes and sha256,
written last and checked on load; see :mod:`polytok.storage`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def save_peer_folder(
    directory: str | Path,
    peer: str,
    config: dict[str, Any],
    state: dict[str, Tensor],
    *,
    what: str,
    files: dict[str, bytes] | None = None,
    optional: set[str] = frozenset(),
) -> Path:
    """Write a peer's folder atomically: its config under ``"peer": peer``, the tensors of ``state``, and
    ``files`` (name -> bytes); ``optional`` names files a saved folder of this peer may hold besides."""
    from safetensors.torch import save_file

    from polytok import storage

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    files = dict(files or {})

    def write(staging: Path) -> None:
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "polytok_peer": peer})
        (staging / CONFIG_NAME).write_text(json.dumps({"peer": peer, **config}, indent=2))
        for name, data in files.items():
            (staging / name).write_bytes(data)

    known = {CONFIG_NAME, WEIGHTS_NAME, *files, *optional}
    return storage.save_folder(Path(directory), write, known=known, what=what)


def open_peer_folder(directory: str | Path, peer: str, *, what: str) -> tuple[Path, dict[str, Any]]:
    """A saved peer folder, verified against its manifest: its path and its config (``"peer"`` removed);
    a folder of another model is refused naming what it lacks."""
    from polytok import storage

    root = storage.open_folder(Path(directory), what)
    data = json.loads((root / CONFIG_NAME).read_text())
    if not isinstance(data, dict) or data.pop("peer", None) != peer:
        raise ValueError(f'{root / CONFIG_NAME} is not a {what}\'s config (no "peer": "{peer}")')
    return root, data


def load_peer_weights(root: Path) -> dict[str, Tensor]:
    """The tensors of a peer folder's ``model.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(root / WEIGHTS_NAME))
