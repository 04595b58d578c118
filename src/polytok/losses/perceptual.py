"""LPIPS perceptual distance on VGG16 features (the metric and loss both recipes train with).

The ``lpips`` package ships the learned linear heads; the VGG16 backbone is torchvision's ImageNet
checkpoint ``vgg16-397923af.pth``, read from the torch hub cache or an explicit path. Nothing is downloaded.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from polytok.losses.output import LossOutput, detached
from polytok.losses.weights import load_state_dict_file, resolve_weights, torch_hub_checkpoint

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"

# lpips splits torchvision's vgg16.features into five slices at these layer indices (relu1_2 ... relu5_3).
_VGG_SLICE_BOUNDS = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))


def vgg16_weights_path(path: str | Path | None = None) -> Path:
    """Locate ``vgg16-397923af.pth``: ``path`` if given, else ``$TORCH_HOME/hub/checkpoints/``.

    Raises:
        FileNotFoundError: naming the file and where to put it.
    """
    return resolve_weights(
        f"VGG16 backbone for LPIPS ({VGG16_FILENAME})",
        path,
        [torch_hub_checkpoint(VGG16_FILENAME)],
        f"It is torchvision's ImageNet VGG16 checkpoint: {VGG16_URL}",
    )


def _vgg_features_to_lpips_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision keys ``features.<i>.<param>`` to the lpips backbone's ``slice<k>.<i>.<param>``."""
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue  # the classifier is not used by LPIPS
        _, index, param = key.split(".", 2)
        layer = int(index)
        for slice_number, (start, stop) in enumerate(_VGG_SLICE_BOUNDS, start=1):
            if start <= layer < stop:
                mapped[f"slice{slice_number}.{layer}.{param}"] = value
                break
    return mapped


class LPIPSLoss(nn.Module):
    """LPIPS (VGG16, v0.1 linear heads) between images in [0, 1].

    Args:
        vgg_weights_path: explicit path of ``vgg16-397923af.pth``; default: the torch hub cache.
        allow_random_backbone: build with a randomly initialised VGG16 instead of loading weights. Only for
            checking the wiring of a training loop: the values mean nothing and must never be reported.
        weight: factor applied to the returned ``loss`` (terms keep the raw value).

    Call: ``loss(prediction, target)`` with (B, 3, H, W) tensors -> :class:`LossOutput` (scalar mean over the
    batch, term ``lpips``). ``distance(prediction, target)`` returns the per-image values, shape (B,).
    Inputs are mapped to the [-1, 1] range lpips expects. The target must lie in [0, 1]; the prediction may
    stray outside it (raw decoder output) and is mapped by the same affine rule.
    """

    def __init__(
        self,
        vgg_weights_path: str | Path | None = None,
        allow_random_backbone: bool = False,
        weight: float = 1.0,
    ) -> None:
        super().__init__()
        import lpips

        state = None
        if not allow_random_backbone:
            # Resolve before building so a missing file fails fast with the clear message.
            state = _vgg_features_to_lpips_keys(load_state_dict_file(vgg16_weights_path(vgg_weights_path)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice for `pretrained=`
            # pnet_rand=True keeps lpips from asking torchvision to download the backbone.
            model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        if state is not None:
            model.net.load_state_dict(state, strict=True)
        model.eval().requires_grad_(False)
        self.model = model
        self.weight = float(weight)
        self.random_backbone = bool(allow_random_backbone)

    def train(self, mode: bool = True) -> LPIPSLoss:
        # The network is a fixed metric: keep its dropout off whatever the surrounding model does.
        super().train(mode)
        self.model.eval()
        return self

    def distance(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Per-image LPIPS, shape (B,). Inputs (B, 3, H, W), target in [0, 1]."""
        if prediction.dim() != 4 or prediction.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(prediction.shape)}")
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)}"
            )
        low, high = torch.aminmax(target.detach())
        if float(low) < -1e-4 or float(high) > 1 + 1e-4:
            raise ValueError(
                f"target images must be in [0, 1], got values in [{float(low):.4f}, {float(high):.4f}]"
            )
        # lpips expects [-1, 1]; its own `normalize=True` flag does the same mapping.
        return self.model(prediction.float() * 2 - 1, target.float() * 2 - 1).flatten()

    def forward(self, prediction: Tensor, target: Tensor) -> LossOutput:
        value = self.distance(prediction, target).mean()
        return LossOutput(self.weight * value, {"lpips": detached(value)})
