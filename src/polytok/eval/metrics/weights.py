"""Where the third-party evaluation weights live on disk.

Nothing is downloaded: the files come from the torch hub cache (``$TORCH_HOME/hub/checkpoints``,
default ``~/.cache/torch/hub/checkpoints``) or from an explicit path, and a missing file is a clear
``FileNotFoundError`` naming the file and where to put it.
"""

from __future__ import annotations

from pathlib import Path

import torch

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILENAME
VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILENAME


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder; honours ``TORCH_HOME`` (read at call time)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(filename: str, url: str, explicit: str | Path | None, what: str) -> Path:
    """Return the path of a weights file, or raise ``FileNotFoundError`` explaining where it belongs.

    ``explicit`` (a user-given file) wins over the hub cache; it must exist.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{what} weights file not found at the given path: {path}")
        return path
    path = hub_checkpoint_dir() / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights '{filename}' not found in the torch hub cache ({path}). "
            f"Download {url} and place it at {path} (the folder follows $TORCH_HOME), "
            f"or pass the file's location explicitly."
        )
    return path


def inception_weights_path(explicit: str | Path | None = None) -> Path:
    """Path of the TF-ported 2015-12-05 Inception-v3 weights used by FID / IS."""
    return resolve_weights(INCEPTION_FILENAME, INCEPTION_URL, explicit, "Inception-v3 (FID/IS, 2015-12-05)")


def vgg16_weights_path(explicit: str | Path | None = None) -> Path:
    """Path of torchvision's ImageNet VGG16 weights used as the LPIPS backbone."""
    return resolve_weights(VGG16_FILENAME, VGG16_URL, explicit, "VGG16 (LPIPS backbone, torchvision)")
