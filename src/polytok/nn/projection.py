"""Projections between the backbone width and the code width (before and after quantization)."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from polytok.nn.mlp import GeGluMlp


class HeadAveragedAttention(nn.Module):
    """Full multi-head self-attention whose heads are averaged instead of concatenated.

    ``heads`` heads of ``in_dim // heads`` channels; the head average is resized to ``out_dim`` channels
    (average pooling when narrower, repetition when wider) and mixed by a Linear.
    (B, N, in_dim) -> (B, N, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int) -> None:
        super().__init__()
        if in_dim % heads:
            raise ValueError(f"projection width {in_dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.out_dim = heads, in_dim // heads, out_dim
        self.qkv = nn.Linear(in_dim, 3 * in_dim)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).mean(dim=1)  # (B, N, head_dim)
        if self.head_dim != self.out_dim:
            out = F.adaptive_avg_pool1d(out, self.out_dim)
        return self.proj(out)


class ConcatHeadAttention(nn.Module):
    """Widening multi-head self-attention: ``heads`` heads of ``out_dim // heads`` channels read from
    ``in_dim``-wide tokens, concatenated to ``out_dim`` and mixed by an ``out_dim`` x ``out_dim`` Linear
    (UniTok's post-quantization attention). (B, N, in_dim) -> (B, N, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, heads: int) -> None:
        super().__init__()
        if out_dim % heads:
            raise ValueError(f"projection width {out_dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.out_dim = heads, out_dim // heads, out_dim
        self.qkv = nn.Linear(in_dim, 3 * out_dim)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.out_dim))


WideningAttention = Literal["concat", "head_average"]


class AttentionProjection(nn.Module):
    """UniTok's attention projection: ``y = Linear(LN(x)) + Attn(LN(x))``, then ``y + GeGLU(LN(y))``.

    Maps (B, N, in_dim) -> (B, N, out_dim) with token mixing, used 1024 -> 64 before the quantizer and
    64 -> 1024 after it. ``heads`` defaults to ``max(in_dim, out_dim) // min(in_dim, out_dim)``.
    Narrowing, the heads (of ``in_dim // heads`` channels) are averaged. Widening, ``widening_attention``
    "concat" concatenates heads of ``out_dim // heads`` channels (UniTok); "head_average" averages heads
    of ``in_dim // heads`` channels and repeats the result (the layout of checkpoints trained before the
    official layout was adopted). ``mlp_norm`` gives the GeGLU MLP its own inner LayerNorm on top of
    the block's (UniTok); False drops it (that older layout again).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int | None = None,
        mlp_ratio: float = 2.0,
        *,
        widening_attention: WideningAttention = "concat",
        mlp_norm: bool = True,
    ) -> None:
        super().__init__()
        if heads is None:
            heads = max(in_dim, out_dim) // min(in_dim, out_dim)
        if widening_attention not in ("concat", "head_average"):
            raise ValueError(
                f"unknown widening_attention {widening_attention!r}; expected 'concat' or 'head_average'"
            )
        self.norm_linear = nn.LayerNorm(in_dim)
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm_attn = nn.LayerNorm(in_dim)
        if out_dim > in_dim and widening_attention == "concat":
            self.attn: nn.Module = ConcatHeadAttention(in_dim, out_dim, heads)
        else:
            self.attn = HeadAveragedAttention(in_dim, out_dim, heads)
        self.norm_mlp = nn.LayerNorm(out_dim)
        self.mlp = GeGluMlp(out_dim, int(out_dim * mlp_ratio), inner_norm=mlp_norm)

    def forward(self, x: Tensor) -> Tensor:
        y = self.linear(self.norm_linear(x)) + self.attn(self.norm_attn(x))
        return y + self.mlp(self.norm_mlp(y))


class LinearProjection(nn.Linear):
    """Plain token-wise Linear (UniTok's ablation baseline). (B, N, in_dim) -> (B, N, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__(in_dim, out_dim)


class TanhMlpProjection(nn.Module):
    """EvoTok's Linear -> Tanh -> Linear map to the shared latent. (B, N, in_dim) -> (B, N, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or in_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.fc1(x).tanh())
