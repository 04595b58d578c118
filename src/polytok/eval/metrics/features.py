"""Feature spaces for distribution metrics: images (B, 3, H, W) in [0, 1] -> features (B, D).

``InceptionFeatures`` is the standard one (TF-ported 2015-12-05 Inception-v3 via torchmetrics /
torch-fidelity); ``ModuleFeatures`` turns any network (e.g. a pretrained backbone) into a feature space
for a Frechet distance in that space. Each carries a ``protocol`` dict that is reported with the figure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from polytok.eval.metrics.checks import check_images
from polytok.eval.metrics.weights import inception_weights_path


class FeatureSpace(nn.Module):
    """Base class: ``forward(images (B, 3, H, W) in [0, 1]) -> (B, num_features)``."""

    name: str = "features"
    num_features: int

    @property
    def protocol(self) -> dict[str, Any]:
        return {"feature_network": self.name, "feature_dim": self.num_features}


class InceptionFeatures(FeatureSpace):
    """Inception-v3 "compat" features of the TF 2015-12-05 weights (torch-fidelity's network).

    ``feature="2048"`` gives pool3 features (FID), ``"logits_unbiased"`` the 1008 logits (IS).
    Images are rounded to uint8 (as when saved to PNG) and resized to 299 px with TF1-compatible
    bilinear interpolation (as torch-fidelity does) unless ``antialias=True`` is requested.
    """

    def __init__(
        self,
        feature: str = "2048",
        weights_path: str | Path | None = None,
        antialias: bool = False,
    ) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        valid = ("64", "192", "768", "2048", "logits_unbiased", "logits")
        if feature not in valid:
            raise ValueError(f"feature must be one of {valid}, got {feature!r}")
        path = inception_weights_path(weights_path)
        # torch-fidelity unpickles the file without ``weights_only``; refuse anything but plain tensors first.
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(
                f"{path} is not a plain tensor state dict (refusing to unpickle it): {err}"
            ) from err
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=[feature],
            feature_extractor_weights_path=str(path),
            antialias=antialias,
        )
        self.feature = feature
        self.antialias = antialias
        self.weights_file = path.name
        self.num_features = 1008 if feature.startswith("logits") else int(feature)
        self.name = "inception-v3-compat"

    @property
    def protocol(self) -> dict[str, Any]:
        resize = "bilinear+antialias" if self.antialias else "bilinear, TF1-compatible (torch-fidelity)"
        return {
            "feature_network": "Inception-v3 (TF 2015-12-05 weights, torch-fidelity inception-v3-compat)",
            "weights_file": self.weights_file,
            "feature_layer": "pool3" if self.feature == "2048" else self.feature,
            "feature_dim": self.num_features,
            "network_input": f"uint8 (round), resized to 299x299, {resize}",
        }

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        as_uint8 = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(as_uint8).reshape(images.shape[0], -1)


class ModuleFeatures(FeatureSpace):
    """Any network as a feature space: optional resize and normalisation, then global pooling.

    ``module`` receives normalised float images and may return (B, D), tokens (B, N, D) (averaged over
    N) or maps (B, D, h, w) (averaged over h, w); ``select`` picks the tensor out of a richer output.

    Example (the pooled 1280-d features of the pretrained EfficientNet-Lite0, which normalises its
    input itself)::

        from polytok.pretrained.efficientnet_lite import build_efficientnet_lite
        net = build_efficientnet_lite("efficientnet-lite0")
        space = ModuleFeatures(net, name="efficientnet-lite0", size=224, select=lambda out: out.embedding)
    """

    def __init__(
        self,
        module: nn.Module,
        name: str,
        size: int | tuple[int, int] | None = None,
        mean: float | tuple[float, float, float] = 0.0,
        std: float | tuple[float, float, float] = 1.0,
        num_features: int | None = None,
        select: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.module = module.eval()
        self.select = select
        self.name = name
        self.size = (size, size) if isinstance(size, int) else size
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1), persistent=False
        )
        if num_features is None:
            probe = torch.rand(1, 3, *(self.size or (64, 64)))
            num_features = int(self.forward(probe).shape[-1])
        self.num_features = num_features

    @property
    def protocol(self) -> dict[str, Any]:
        resize = f"bilinear+antialias to {self.size[0]}x{self.size[1]}" if self.size else "none"
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        if set(mean) == {0.0} and set(std) == {1.0}:
            normalisation = "[0, 1] passed to the network as is"
        else:
            normalisation = f"normalised with mean {mean} std {std}"
        return {
            "feature_network": self.name,
            "feature_dim": self.num_features,
            "network_input": f"float, resize {resize}, {normalisation}",
        }

    def train(self, mode: bool = True) -> ModuleFeatures:
        # A feature space is frozen: never switch its batch norms or dropouts to training behaviour.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images)
        x = images.float()
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        out = self.module(x)
        if self.select is not None:
            out = self.select(out)
        if out.dim() == 4:
            out = out.mean(dim=(2, 3))
        elif out.dim() == 3:
            out = out.mean(dim=1)
        if out.dim() != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(
                f"feature module {self.name!r} returned shape {tuple(out.shape)}; expected (B, D)"
            )
        return out
