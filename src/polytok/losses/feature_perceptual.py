"""Perceptual loss in the feature space of a pretrained EfficientNet-Lite (ImageNet classifier).

For each chosen feature map the channel vector at every position is scaled to unit length, the squared
Euclidean distance between reconstruction and target is summed over channels and averaged over
positions, and the per-layer values are summed with weights. It follows the "unit-normalised deep
features" recipe of perceptual metrics, but without learned per-channel heads: it is a feature distance,
not LPIPS, and its values are not comparable with LPIPS figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from polytok.losses.output import LossOutput, detached
from polytok.pretrained import EfficientNetLite, load_pretrained

_EPS = 1e-10
_RANGE_SLACK = 1e-4


def unit_normalise_channels(features: Tensor) -> Tensor:
    """(B, C, H, W) -> same shape, each position's channel vector scaled to unit L2 norm."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)


class EfficientNetPerceptualLoss(nn.Module):
    """Feature distance between reconstructions and targets on a frozen EfficientNet-Lite.

    Args:
        network: registry name (``"efficientnet-lite0"``, ``-lite1``, ``-lite2``) or a loaded
            :class:`~polytok.pretrained.EfficientNetLite` to share.
        layers: indices of the feature maps used (0..4, strides 2, 4, 8, 16, 32); all five by default.
        layer_weights: one weight per entry of ``layers`` (default 1.0 each).
        size: resize both images first (int or (h, w)); ``None`` keeps their resolution.
        weight: factor applied to the returned ``loss`` (terms keep the raw values).
        weights_path: explicit weights file when ``network`` is a name.

    Call: ``loss(reconstruction, target)`` with (B, 3, H, W) -> :class:`LossOutput` (mean over the batch;
    terms ``effnet_perceptual`` and ``effnet_perceptual/layer{i}``). ``distance`` gives (B,) values.
    The target must lie in [0, 1]; the reconstruction may stray outside (raw decoder output).

    Example::

        loss_fn = EfficientNetPerceptualLoss("efficientnet-lite0", layers=(1, 2, 3))
        out = loss_fn(reconstruction, target)
        out.loss.backward()
    """

    def __init__(
        self,
        network: str | EfficientNetLite = "efficientnet-lite0",
        layers: Sequence[int] = (0, 1, 2, 3, 4),
        layer_weights: Sequence[float] | None = None,
        size: int | tuple[int, int] | None = None,
        weight: float = 1.0,
        weights_path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if isinstance(network, str):
            network = load_pretrained(network, weights_path=weights_path)
        elif not isinstance(network, EfficientNetLite):
            raise TypeError(
                f"network must be a registry name or an EfficientNetLite, got {type(network).__name__}"
            )
        if not network.frozen:
            raise ValueError(
                "the network of a perceptual loss must be frozen (load_pretrained(..., freeze=True))"
            )
        self.net = network
        self.layers = [int(i) for i in layers]
        if not self.layers:
            raise ValueError("layers is empty")
        count = len(network.feature_channels)
        bad = [i for i in self.layers if not 0 <= i < count]
        if bad or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct indices in [0, {count - 1}], got {list(layers)}")
        weights = [1.0] * len(self.layers) if layer_weights is None else [float(w) for w in layer_weights]
        if len(weights) != len(self.layers):
            raise ValueError(f"layer_weights has {len(weights)} entries but layers has {len(self.layers)}")
        self.layer_weights = weights
        self.size = size
        self.weight = float(weight)

    def layer_distances(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Unweighted per-layer distances, shape (B, len(layers))."""
        if reconstruction.dim() != 4 or reconstruction.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(reconstruction.shape)}")
        if reconstruction.shape != target.shape:
            raise ValueError(
                "reconstruction and target shapes differ: "
                f"{tuple(reconstruction.shape)} vs {tuple(target.shape)}"
            )
        with torch.no_grad():  # the target is a constant: no graph through its features
            target_maps = self.net.feature_maps(target.float(), self.layers, self.size, check_range=True)
        recon_maps = self.net.feature_maps(reconstruction.float(), self.layers, self.size, check_range=False)
        per_layer = [
            (unit_normalise_channels(r) - unit_normalise_channels(t)).pow(2).sum(dim=1).mean(dim=(1, 2))
            for r, t in zip(recon_maps, target_maps)
        ]
        return torch.stack(per_layer, dim=1)

    def distance(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Weighted sum over layers, shape (B,)."""
        weights = torch.tensor(self.layer_weights, device=reconstruction.device)
        return (self.layer_distances(reconstruction, target) * weights).sum(dim=1)

    def forward(self, reconstruction: Tensor, target: Tensor) -> LossOutput:
        per_layer = self.layer_distances(reconstruction, target).mean(dim=0)
        weights = torch.tensor(self.layer_weights, device=per_layer.device)
        value = (per_layer * weights).sum()
        terms = {"effnet_perceptual": detached(value)}
        terms.update({f"effnet_perceptual/layer{i}": detached(v) for i, v in zip(self.layers, per_layer)})
        return LossOutput(self.weight * value, terms)
