"""What every peer's folders share: the polytok folder a peer saves and loads (``config.json`` naming the
peer, ``model.safetensors``, extra files, ``manifest.json``), and the JSON and safetensors files of the
released folders its converter reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from polytok.convert.state import ConversionError

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


def save_peer_folder(
    directory: str | Path,
    peer: str,
    config: dict[str, Any],
    tensors: dict[str, Tensor],
    *,
    what: str,
    files: dict[str, bytes] | None = None,
    known: set[str] = frozenset(),
) -> Path:
    """Write ``config.json`` (``{"peer": peer, **config}``), ``model.safetensors``, ``files`` (name ->
    bytes) and ``manifest.json`` into ``directory`` atomically (:func:`polytok.storage.save_folder`);
    ``known``: other names such a folder may hold."""
    from safetensors.torch import save_file

    from polytok import storage

    payload = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    extra = dict(files or {})

    def write(staging: Path) -> None:
        save_file(payload, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "polytok_peer": peer})
        (staging / CONFIG_NAME).write_text(json.dumps({"peer": peer, **config}, indent=2))
        for name, data in extra.items():
            (staging / name).write_bytes(data)

    names = {CONFIG_NAME, WEIGHTS_NAME, *extra, *known}
    return storage.save_folder(Path(directory), write, known=names, what=what)


def open_peer_folder(
    directory: str | Path, peer: str, what: str
) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    """A folder written by :func:`save_peer_folder` (files checked against its manifest) -> (its path, its
    config without ``"peer"``, its tensors); a folder of another peer or model is refused."""
    from safetensors.torch import load_file

    from polytok import storage

    root = storage.open_folder(Path(directory), what)
    data = json.loads((root / CONFIG_NAME).read_text())
    if not isinstance(data, dict) or data.pop("peer", None) != peer:
        raise ValueError(f'{root / CONFIG_NAME} is not a {what}\'s config (no "peer": "{peer}")')
    return root, data, load_file(str(root / WEIGHTS_NAME))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (FileNotFoundError when absent; ConversionError when unreadable)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:
        raise ConversionError(f"{path} cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path} does not hold a JSON object")
    return data


def read_safetensors_folder(folder: Path) -> dict[str, Tensor] | None:
    """The tensors of ``folder/model.safetensors``, or of the shards ``model.safetensors.index.json``
    lists; None when the folder has neither."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = folder / WEIGHTS_NAME, folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ConversionError(f"{index} has no weight_map")
        files = [folder / name for name in sorted(set(weight_map.values()))]
    else:
        return None
    state: dict[str, Tensor] = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise ConversionError(f"{path} cannot be read as safetensors ({exc})") from exc
    return state


def read_image_statistics(folder: Path) -> dict[str, list[float]]:
    """``mean`` / ``std`` from a released folder's ``preprocessor_config.json`` (``image_mean`` /
    ``image_std``), those it gives as three values; none when the file is absent."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    data = read_json(path)
    found = {ours: data.get(theirs) for ours, theirs in (("mean", "image_mean"), ("std", "image_std"))}
    return {k: [float(v) for v in vs] for k, vs in found.items() if isinstance(vs, list) and len(vs) == 3}
