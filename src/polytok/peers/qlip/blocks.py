"""QLIP's transformer pieces: EVA-02-style blocks (sub-LayerNorms, SwiGLU, 2-D rotary embedding) and the
CLIP-style ones of its text tower, one block class switched by :class:`QlipTowerConfig`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.peers.qlip.config import QlipTowerConfig

# Rotary frequencies are laid out for a 16 x 16 grid (EVA-02's pretraining grid); other grids are
# interpolated onto it, as QLIP's VisionRotaryEmbeddingFast(pt_seq_len=16) does.
ROPE_BASE_GRID = 16


def rotary_tables(head_dim: int, grid: int, base_grid: int = ROPE_BASE_GRID) -> tuple[Tensor, Tensor]:
    """(cos, sin), each (grid * grid, head_dim), for a row-major grid of patches.

    The first half of a head's channels turns with the patch's row, the second half with its column;
    within each half, channel pairs (2k, 2k + 1) share the frequency 10000^(-4k / head_dim), and positions
    are scaled by base_grid / grid. Computed in float64, returned in float32.
    """
    quarter = head_dim // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) * 4 / head_dim)
    pos = torch.arange(grid, dtype=torch.float64) * (base_grid / grid)
    angles = (pos[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)  # (grid, head_dim / 2)
    rows = angles[:, None, :].expand(grid, grid, -1)
    cols = angles[None, :, :].expand(grid, grid, -1)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return table.cos().float(), table.sin().float()


def _turn(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate channel pairs (2k, 2k + 1) of x (..., N, head_dim) by the tabled angles."""
    pairs = x.unflatten(-1, (-1, 2))
    swapped = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos + swapped * sin


class QlipAttention(nn.Module):
    """Self-attention with separate q / k / v projections (each bias optional) and an optional LayerNorm
    on the merged heads before the output projection (EVA-02's sub-LN)."""

    def __init__(self, cfg: QlipTowerConfig) -> None:
        super().__init__()
        width = cfg.width
        self.heads, self.head_dim = cfg.heads, width // cfg.heads
        self.q = nn.Linear(width, width, bias=cfg.q_bias)
        self.k = nn.Linear(width, width, bias=cfg.k_bias)
        self.v = nn.Linear(width, width, bias=cfg.v_bias)
        self.norm: nn.Module = nn.LayerNorm(width, eps=cfg.norm_eps) if cfg.subln else nn.Identity()
        self.out = nn.Linear(width, width)

    def forward(
        self, x: Tensor, *, causal: bool = False, rope: tuple[Tensor, Tensor] | None = None, skip: int = 0
    ) -> Tensor:
        """(B, N, D) -> (B, N, D); ``rope`` turns queries and keys of tokens ``skip`` onwards."""
        b, n, d = x.shape
        q, k, v = (
            proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2) for proj in (self.q, self.k, self.v)
        )
        if rope is not None:
            cos, sin = rope
            q = torch.cat([q[:, :, :skip], _turn(q[:, :, skip:], cos, sin)], dim=2)
            k = torch.cat([k[:, :, :skip], _turn(k[:, :, skip:], cos, sin)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(self.norm(out.transpose(1, 2).reshape(b, n, d)))


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    return F.silu


class QlipMlp(nn.Module):
    """SwiGLU (``out(norm(silu(gate x) * up x))``) or a plain MLP (``out(norm(act(up x)))``); ``norm`` is
    EVA-02's sub-LN on the hidden width, or nothing."""

    def __init__(self, cfg: QlipTowerConfig) -> None:
        super().__init__()
        self.gated = cfg.swiglu
        self.gate: nn.Module | None = nn.Linear(cfg.width, cfg.mlp_width) if cfg.swiglu else None
        self.up = nn.Linear(cfg.width, cfg.mlp_width)
        self.norm: nn.Module = nn.LayerNorm(cfg.mlp_width, eps=cfg.norm_eps) if cfg.subln else nn.Identity()
        self.down = nn.Linear(cfg.mlp_width, cfg.width)
        self.act = _activation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.silu(self.gate(x)) * self.up(x) if self.gate is not None else self.act(self.up(x))
        return self.down(self.norm(hidden))


class QlipBlock(nn.Module):
    """``x + attn(LN(x))`` then ``x + mlp(LN(x))``."""

    def __init__(self, cfg: QlipTowerConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = QlipAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = QlipMlp(cfg)

    def forward(self, x: Tensor, **attn_options) -> Tensor:
        x = x + self.attn(self.norm1(x), **attn_options)
        return x + self.mlp(self.norm2(x))


class QlipTower(nn.Module):
    """``layers`` blocks; with ``rope`` (and ``grid``) the patch tokens, from token ``skip`` on, carry 2-D
    rotary positions (the tables are recomputed, never stored)."""

    def __init__(self, cfg: QlipTowerConfig, *, grid: int | None = None, causal: bool = False, skip: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList([QlipBlock(cfg) for _ in range(cfg.layers)])
        self.causal, self.skip = causal, skip
        self.uses_rope = cfg.rope and grid is not None
        if self.uses_rope:
            cos, sin = rotary_tables(cfg.width // cfg.heads, int(grid))
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        rope = (self.rope_cos.to(x.dtype), self.rope_sin.to(x.dtype)) if self.uses_rope else None
        for block in self.blocks:
            x = block(x, causal=self.causal, rope=rope, skip=self.skip)
        return x


__all__ = ["QlipAttention", "QlipBlock", "QlipMlp", "QlipTower", "rotary_tables"]
