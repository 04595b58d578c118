"""Token-wise feed-forward networks."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, (B, N, D) -> (B, N, D_out)."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class GeGluMlp(nn.Module):
    """Gated GELU feed-forward (ViTamin / UniTok): ``w2(gelu(w0 x) * w1 x)``.

    ``inner_norm`` adds the LayerNorm ViTamin applies on the block input inside the MLP.
    (B, N, D) -> (B, N, D_out).
    """

    def __init__(
        self, dim: int, hidden: int, out_dim: int | None = None, *, inner_norm: bool = False
    ) -> None:
        super().__init__()
        self.norm: nn.Module = nn.LayerNorm(dim, eps=1e-6) if inner_norm else nn.Identity()
        self.w0 = nn.Linear(dim, hidden)
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.w2(F.gelu(self.w0(x), approximate="tanh") * self.w1(x))
