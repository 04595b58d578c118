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
    """

    def __init__(self, dim: int, heads: int, *, causal: bool = False, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim, self.causal = heads, dim // heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v each (B, heads, N, head_dim)."""
        b, n, _ = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(B, N, D) -> (B, N, D). ``attn_mask`` (bool, True = attend) broadcastable to (B, H, N, N)."""
        b, n, d = x.shape
        q, k, v = self.split_heads(x)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=self.causal and attn_mask is None
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))
