"""Semantic heads that turn token features into one image embedding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ClipHead(nn.Module):
    """CLIP-style image head (UniTok): mean pool -> LayerNorm -> Linear -> L2 norm.
    (B, N, width) -> (B, embed_dim), unit norm."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.proj(self.norm(tokens.mean(dim=1))), dim=-1)


def pooled_embedding(features: Tensor) -> Tensor:
    """Mean-pooled, L2-normalised embedding of per-token features. (B, N, C) -> (B, C)."""
    return F.normalize(features.mean(dim=1), dim=-1)
