"""Pre-norm transformer blocks."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from polytok.nn.attention import MultiHeadAttention
from polytok.nn.mlp import GeGluMlp, Mlp

MlpKind = Literal["geglu", "mlp"]


class TransformerBlock(nn.Module):
    """``x + attn(LN(x))`` then ``x + mlp(LN(x))`` on (B, N, D) tokens.

    Args:
        dim: token width.
        heads: attention heads.
        mlp: "geglu" (ViTamin: gated GELU, hidden = ratio * dim, inner LayerNorm) or "mlp" (GELU).
        mlp_ratio: hidden width over ``dim``.
        causal: causal attention (text towers).
        norm_eps: epsilon of the two LayerNorms (1e-6 as in ViTamin; CLIP text towers use 1e-5).
        head_dim: channels per head when ``heads`` does not divide ``dim`` (see MultiHeadAttention).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp: MlpKind = "geglu",
        mlp_ratio: float = 2.0,
        causal: bool = False,
        norm_eps: float = 1e-6,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, heads, causal=causal, head_dim=head_dim)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        if mlp == "geglu":
            self.mlp: nn.Module = GeGluMlp(dim, hidden, inner_norm=True)
        elif mlp == "mlp":
            self.mlp = Mlp(dim, hidden)
        else:
            raise ValueError(f"unknown mlp kind {mlp!r}; expected 'geglu' or 'mlp'")

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of ``depth`` :class:`TransformerBlock` s. (B, N, D) -> (B, N, D).

    ``grad_checkpointing`` trades compute for memory during training (large presets).
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        *,
        mlp: MlpKind = "geglu",
        mlp_ratio: float = 2.0,
        causal: bool = False,
        norm_eps: float = 1e-6,
        head_dim: int | None = None,
    ) -> None:
        super().__init__()
        options = dict(mlp=mlp, mlp_ratio=mlp_ratio, causal=causal, norm_eps=norm_eps, head_dim=head_dim)
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, **options) for _ in range(depth)])
        self.grad_checkpointing = False

    def forward(
        self, x: Tensor, attn_mask: Tensor | None = None, *, return_hidden: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """With ``return_hidden`` also returns the input of every block plus the final output."""
        hidden = [x]
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
            hidden.append(x)
        return (x, hidden) if return_hidden else x
