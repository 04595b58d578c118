"""Where third-party pretrained weights are looked up, and the error raised when they are absent.

Nothing here downloads: weights come from an explicit path or from the caches the usual tools fill
(the torch hub cache ``$TORCH_HOME/hub/checkpoints`` and the Hugging Face hub cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def torch_hub_checkpoint(filename: str) -> Path:
    """Path of ``filename`` in the torch hub checkpoint cache (honours ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def hf_hub_cached_file(repo_id: str, filename: str) -> Path | None:
    """Path of a file already in the local Hugging Face hub cache, or None (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers and timm
        return None
    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def resolve_weights(
    what: str, explicit: str | Path | None, candidates: Sequence[Path | None], download_hint: str
) -> Path:
    """Return the first existing weights file, or raise FileNotFoundError saying which file and where.

    Args:
        what: human name of the weights, e.g. "VGG16 backbone for LPIPS (vgg16-397923af.pth)".
        explicit: a path given by the caller; when set it is the only place looked at.
        candidates: cache locations tried in order when ``explicit`` is None (None entries are skipped).
        download_hint: where the file can be obtained, for the error message.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        raise FileNotFoundError(f"{what}: weights file not found at the given path {str(path)!r}.")
    tried = [Path(c) for c in candidates if c is not None]
    for path in tried:
        if path.is_file():
            return path
    places = "\n  ".join(str(p) for p in tried) or "(no cache location)"
    raise FileNotFoundError(
        f"{what}: weights file not found. Looked in:\n  {places}\n"
        f"Put the file at the first location above or pass its path explicitly. {download_hint}"
    )


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``), unwrapping nesting."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state
