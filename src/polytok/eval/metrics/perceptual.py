"""LPIPS (VGG) with weights from disk only.

The linear heads ship inside the ``lpips`` package; the VGG16 backbone is torchvision's ImageNet file
(``vgg16-397923af.pth``) from the torch hub cache or an explicit path. Without it there is no LPIPS
figure (a randomly initialised backbone would give a meaningless number).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from polytok.eval.metrics.checks import check_pair
from polytok.eval.metrics.pixel import MeanOverImages
from polytok.eval.metrics.weights import vgg16_weights_path


def build_lpips_vgg(vgg_weights_path: str | Path | None = None) -> torch.nn.Module:
    """LPIPS(VGG) network with the backbone loaded from ``vgg16-397923af.pth`` (hub cache or path).

    Raises ``FileNotFoundError`` naming the file and where to put it when the backbone is absent.
    """
    import lpips

    path = vgg16_weights_path(vgg_weights_path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # Build with an unloaded backbone (no download attempt), then fill it from the file.
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    backbone = model.net
    loaded = 0
    for slice_name in ("slice1", "slice2", "slice3", "slice4", "slice5"):
        for layer_index, layer in getattr(backbone, slice_name).named_children():
            for param_name, param in layer.named_parameters(recurse=False):
                key = f"features.{layer_index}.{param_name}"
                if key not in state:
                    raise ValueError(f"{path} is not a torchvision VGG16 state dict: key {key!r} missing")
                if state[key].shape != param.shape:
                    raise ValueError(
                        f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(param.shape)}"
                    )
                with torch.no_grad():
                    param.copy_(state[key])
                loaded += 1
    if loaded != 26:  # 13 conv layers x (weight, bias)
        raise ValueError(f"loaded {loaded} VGG16 tensors from {path}, expected 26")
    return model.eval()


class LPIPS(MeanOverImages):
    """Mean LPIPS (VGG, lpips v0.1 heads) over images; lower is closer."""

    def __init__(
        self,
        vgg_weights_path: str | Path | None = None,
        protocol: dict[str, Any] | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        # ``model`` lets several accumulators (e.g. one per residual depth) share one loaded network.
        self.model = model if model is not None else build_lpips_vgg(vgg_weights_path)

        def per_image(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            check_pair(preds, target)
            device = next(self.model.parameters()).device
            with torch.no_grad():
                out = self.model(preds.float().to(device) * 2 - 1, target.float().to(device) * 2 - 1)
            return out.reshape(-1)

        super().__init__(
            "lpips",
            per_image,
            {
                "network": "LPIPS v0.1, VGG16 (torchvision ImageNet weights)",
                "input": "[-1, 1]",
                **(protocol or {}),
            },
        )
