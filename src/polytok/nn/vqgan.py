"""VQGAN-style convolutional encoder and decoder (residual blocks, GroupNorm, one attention stage at the
lowest resolution)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from polytok.nn.conv import Upsample2d


def _group_norm(ch: int, groups: int) -> nn.GroupNorm:
    g = groups
    while ch % g:  # largest divisor of ch not above the requested group count
        g -= 1
    return nn.GroupNorm(g, ch, eps=1e-6)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv 3x3 -> GN -> SiLU -> conv 3x3, plus a (1x1) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, groups: int = 32) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.shortcut(x)


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions of a map, with a residual."""

    def __init__(self, ch: int, groups: int = 32) -> None:
        super().__init__()
        self.norm = _group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


def _middle(ch: int, groups: int) -> nn.Sequential:
    """The middle of a VQGAN encoder or decoder: residual block, attention, residual block."""
    return nn.Sequential(ResBlock(ch, ch, groups), SpatialSelfAttention(ch, groups), ResBlock(ch, ch, groups))


def _level(
    in_ch: int, out_ch: int, blocks: int, groups: int, attention: bool, resample: nn.Module | None
) -> nn.Sequential:
    """One resolution of a VQGAN encoder or decoder: ``blocks`` residual blocks to ``out_ch`` channels,
    each followed by attention when ``attention``, then ``resample`` (if any)."""
    layers: list[nn.Module] = []
    for _ in range(blocks):
        layers.append(ResBlock(in_ch, out_ch, groups))
        in_ch = out_ch
        if attention:
            layers.append(SpatialSelfAttention(out_ch, groups))
    if resample is not None:
        layers.append(resample)
    return nn.Sequential(*layers)


class _VQGANStack(nn.Module):
    """What the VQGAN encoder and decoder share: after their levels, GN -> SiLU -> conv 3x3 to ``out_ch``."""

    def _set_output(self, ch: int, out_ch: int, groups: int, levels: int) -> None:
        self.norm_out = _group_norm(ch, groups)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)
        self.factor = 2 ** (levels - 1)

    def _output(self, h: Tensor) -> Tensor:
        return self.conv_out(F.silu(self.norm_out(h)))


class VQGANDecoder(_VQGANStack):
    """Latent map (B, z_ch, h, w) -> image (B, out_ch, h * 2^(len(ch_mult)-1), ...).

    conv_in -> mid (res, attention, res) -> for each level from the deepest: ``num_res_blocks + 1``
    residual blocks (attention after each at the lowest resolution) and a nearest x2 + conv upsample
    (except the last) -> GN -> SiLU -> conv_out. EvoTok: ch 128, ch_mult (1, 1, 2, 2, 4) -> x16.
    """

    def __init__(
        self,
        z_ch: int,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        out_ch: int = 3,
        norm_groups: int = 32,
        attn_lowest: bool = True,
    ) -> None:
        super().__init__()
        widths = [ch * m for m in ch_mult]
        self.conv_in = nn.Conv2d(z_ch, widths[-1], 3, padding=1)
        self.mid = _middle(widths[-1], norm_groups)
        levels = []
        prev = widths[-1]
        for i in reversed(range(len(widths))):
            attention = attn_lowest and i == len(widths) - 1
            up = _NearestConvUp(widths[i]) if i > 0 else None
            levels.append(_level(prev, widths[i], num_res_blocks + 1, norm_groups, attention, up))
            prev = widths[i]
        self.levels = nn.Sequential(*levels)
        self._set_output(prev, out_ch, norm_groups, len(ch_mult))

    def forward(self, z: Tensor) -> Tensor:
        return self._output(self.levels(self.mid(self.conv_in(z))))


class VQGANEncoder(_VQGANStack):
    """Image (B, in_ch, H, W) -> latent map (B, z_ch, H / 2^(len(widths)-1), ...): the mirror of
    :class:`VQGANDecoder`, with the channels of each level given (``ch * ch_mult`` there).

    conv_in -> for each level from the finest: ``num_res_blocks`` residual blocks to ``widths[i]``
    channels (attention after each at the last, coarsest level) and a stride-2 downsampling (except the
    last) -> mid (res, attention, res) -> GN -> SiLU -> conv_out. LlamaGen's VQ-16: widths
    (128, 128, 256, 256, 512), 2 blocks per level, z_ch 256 -> /16.
    """

    def __init__(
        self,
        z_ch: int,
        widths: Sequence[int],
        num_res_blocks: int = 2,
        *,
        in_ch: int = 3,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        levels = []
        prev = widths[0]
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            down = None if last else Downsample2d(width)
            levels.append(_level(prev, width, num_res_blocks, norm_groups, last, down))
            prev = width
        self.levels = nn.Sequential(*levels)
        self.mid = _middle(prev, norm_groups)
        self._set_output(prev, z_ch, norm_groups, len(widths))

    def forward(self, x: Tensor) -> Tensor:
        return self._output(self.mid(self.levels(self.conv_in(x))))


class Downsample2d(nn.Module):
    """Halve the resolution: conv 3x3 stride 2 after one row and one column of zeros on the bottom and
    right (VQGAN's asymmetric padding: output pixel i reads input rows 2i .. 2i + 2)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _NearestConvUp(Upsample2d):
    """Nearest x2 then conv 3x3 at constant width (see Upsample2d)."""

    def __init__(self, ch: int) -> None:
        super().__init__(ch, ch)
