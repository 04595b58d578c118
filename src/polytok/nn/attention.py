"""Multi-head self-attention on (B, N, D) tokens through ``scaled_dot_product_attention``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MultiHeadAttention(nn.Module):
    """Self-attention with ``heads`` heads of ``dim // heads`` channels.

    Args:
        dim: token width D.
        heads: number of heads; must divide ``dim``.
        causal: each token attends only to itself and earlier tokens (text towers).
        qkv_bias: bias on the query/key/value projection.
        head_dim: channels per head when ``heads`` does not divide ``dim`` (BEiT style: the heads then
            span ``heads * head_dim`` inner channels, projected back to ``dim``); None: ``dim // heads``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        causal: bool = False,
        qkv_bias: bool = True,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % heads:
                raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
            head_dim = dim // heads
        self.heads, self.head_dim, self.causal = heads, head_dim, causal
        self.inner = heads * head_dim
        self.qkv = nn.Linear(dim, 3 * self.inner, bias=qkv_bias)
        self.proj = nn.Linear(self.inner, dim)

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v each (B, heads, N, head_dim)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(B, N, D) -> (B, N, D). ``attn_mask`` (bool, True = attend) broadcastable to (B, H, N, N)."""
        b, n, _ = x.shape
        q, k, v = self.split_heads(x)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, self.inner))
