"""Frozen teachers for feature distillation and how their features are aligned to the token grid."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class FrozenTeacher(nn.Module):
    """Wraps a frozen network so that ``forward(images in [0, 1], grid) -> (B, h*w, C)`` features.

    Accepted network outputs: an object with ``feature_maps`` (a list; ``feature_index`` picks the map,
    the input is resized so that map's grid equals the token grid when ``feature_stride`` is given, or
    to ``input_size`` when that is set), a (B, C, h', w') map, or (B, N, C) tokens on a square grid.
    Maps of another size are average-pooled (or bilinearly interpolated) to the token grid. Networks with
    a ``feature_maps(images, layers, size)`` method (EfficientNet-Lite) stop after the map they need.
    The network stays in eval mode and gets no gradients.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        feature_index: int = 3,
        feature_stride: int | None = 16,
        input_transform: Any = None,
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.feature_index, self.feature_stride = feature_index, feature_stride
        self.input_transform = input_transform
        self.input_size = input_size
        net.requires_grad_(False)
        net.eval()

    def train(self, mode: bool = True) -> FrozenTeacher:
        super().train(mode)
        self.net.eval()
        return self

    @torch.no_grad()
    def forward(self, images: Tensor, grid: tuple[int, int]) -> Tensor:
        h, w = grid
        x = self.input_transform(images) if self.input_transform is not None else images
        size = None
        if self.input_size is not None:
            size = (self.input_size, self.input_size)
        elif self.feature_stride is not None:
            size = (h * self.feature_stride, w * self.feature_stride)
        if hasattr(self.net, "feature_maps") and callable(self.net.feature_maps):
            out = self.net.feature_maps(x, [self.feature_index], size=size)[0]
        elif hasattr(self.net, "feature_channels") and size is not None:
            out = self.net(x, size=size)
        else:
            out = self.net(x)
        if hasattr(out, "feature_maps"):
            out = out.feature_maps[self.feature_index]
        if not isinstance(out, Tensor):
            raise TypeError(
                f"teacher returned {type(out).__name__}; expected a tensor or an object with feature_maps"
            )
        if out.dim() == 3:  # (B, N, C) tokens
            side = round(out.shape[1] ** 0.5)
            if side * side != out.shape[1]:
                raise ValueError(f"teacher tokens ({out.shape[1]}) are not a square grid")
            out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        if out.dim() != 4:
            raise ValueError(f"teacher features must be (B, C, h, w) or (B, N, C), got {tuple(out.shape)}")
        if out.shape[-2:] != (h, w):
            if out.shape[-2] >= h and out.shape[-1] >= w:
                out = F.adaptive_avg_pool2d(out, (h, w))
            else:
                out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
        return out.flatten(2).transpose(1, 2).float()
