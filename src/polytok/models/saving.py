"""The tokenizer's folder format: ``config.json`` + ``model.safetensors`` + ``manifest.json``.

Written and read through :mod:`polytok.storage` (staging directory, checksums, whole-directory swap), the
same format every saved polytok model uses. ``save_tokenizer_state`` also serves weights held apart from
a model (gathered from FSDP shards).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from polytok.models.config import TokenizerConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LEGACY_WEIGHTS_NAME = "pytorch_model.bin"
SAVED_FILES = {CONFIG_NAME, WEIGHTS_NAME, LEGACY_WEIGHTS_NAME}


def save_tokenizer_state(
    config: TokenizerConfig, state: dict[str, Tensor], directory: str | os.PathLike
) -> Path:
    """``save_pretrained`` for weights held apart from a model, e.g. gathered from FSDP shards:
    ``state`` is ``checkpoint_state_dict()`` of a tokenizer built from ``config``."""
    from safetensors.torch import save_file

    from polytok import storage

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}

    def write(staging: Path) -> None:
        metadata = {"format": "pt", "polytok_preset": config.name}
        save_file(tensors, str(staging / WEIGHTS_NAME), metadata=metadata)
        (staging / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2))

    return storage.save_folder(Path(directory), write, known=SAVED_FILES, what="tokenizer")


def read_tokenizer_folder(directory: str | os.PathLike) -> tuple[TokenizerConfig, dict[str, Tensor], Path]:
    """The config, the stored tensors (on the CPU) and the folder actually read (after a crash in the
    middle of replacing ``directory``, its previous version) of a saved tokenizer; files verified against
    the manifest first."""
    from polytok import storage

    root = storage.open_folder(Path(directory), "checkpoint")
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"checkpoint config missing: expected {config_path}")
    return TokenizerConfig.from_file(config_path), _read_weights(root, "cpu"), root


def _read_weights(root: Path, map_location: str | torch.device) -> dict[str, Tensor]:
    weights = root / WEIGHTS_NAME
    if weights.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(weights), device=str(map_location))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise ValueError(f"cannot read {weights}: truncated or corrupt (half-written?) ({exc})") from exc
    pickled = root / LEGACY_WEIGHTS_NAME
    if pickled.is_file():
        try:
            state = torch.load(pickled, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise ValueError(
                f"refusing to unpickle {pickled}: it is not a plain tensor file loadable with "
                f"weights_only=True ({exc})"
            ) from exc
        if not isinstance(state, dict):
            raise ValueError(f"{pickled} does not hold a state dict")
        return state
    raise FileNotFoundError(f"checkpoint weights missing: expected {weights}")
