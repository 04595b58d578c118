"""Convolutional blocks: the ViTamin-style hybrid stem (down) and its mirrored upsampler (up)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MBConvBlock(nn.Module):
    """Pre-norm inverted bottleneck: LN -> 1x1 expand (x4) -> GELU -> depthwise 3x3 (stride) -> GELU
    -> 1x1 project, plus a shortcut (3x3 average pool + 1x1 conv when strided or widened).
    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""

    def __init__(self, in_ch: int, out_ch: int, *, stride: int = 1, expand_ratio: float = 4.0) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        mid = int(out_ch * expand_ratio)
        if stride == 2:
            expand: nn.Module = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
            self.shortcut: nn.Module = nn.Sequential(
                nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), expand
            )
        else:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.pre_norm = LayerNorm2d(in_ch, eps=1e-6)
        self.expand = nn.Conv2d(in_ch, mid, 1)
        self.depthwise = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid)
        self.project = nn.Conv2d(mid, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.gelu(self.expand(self.pre_norm(x)))
        y = F.gelu(self.depthwise(y))
        return self.project(y) + self.shortcut(x)


class HybridConvStem(nn.Module):
    """ViTamin's convolutional front end, total stride ``2 ** (len(stage_widths) + 2)``.

    conv 3x3 stride 2 (3 -> stem) -> LN + GELU -> conv 3x3; MBConv stages (first block of each stage
    has stride 2); then LN + conv 3x3 stride 2 to the transformer width. ViTamin-L: stem 160,
    stages (160, 320) x (2, 4), width 1024 -> stride 16.
    (B, 3, H, W) -> (B, width, H / stride, W / stride).
    """

    def __init__(
        self,
        stem_width: int,
        stage_widths: Sequence[int],
        stage_depths: Sequence[int],
        width: int,
        in_ch: int = 3,
    ) -> None:
        super().__init__()
        if len(stage_widths) != len(stage_depths):
            raise ValueError(
                f"stage_widths {list(stage_widths)} and stage_depths {list(stage_depths)} differ in length"
            )
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, stem_width, 3, stride=2, padding=1),
            LayerNorm2d(stem_width, eps=1e-6),
            nn.GELU(),
            nn.Conv2d(stem_width, stem_width, 3, padding=1),
        )
        stages = []
        prev = stem_width
        for w, depth in zip(stage_widths, stage_depths):
            blocks = [MBConvBlock(prev if d == 0 else w, w, stride=2 if d == 0 else 1) for d in range(depth)]
            stages.append(nn.Sequential(*blocks))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.down_norm = LayerNorm2d(prev, eps=1e-6)
        self.down = nn.Conv2d(prev, width, 3, stride=2, padding=1)
        self.stride = 2 ** (len(stage_widths) + 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.down(self.down_norm(x))


def upsampling_kernel(weight: Tensor) -> Tensor:
    """3x3 kernels (C_out, C_in, 3, 3) -> the transposed-convolution kernel (C_in, C_out, 4, 4) of
    ``conv3x3(nearest_x2(x))``.

    After a nearest x2 upsampling, output row 2i reads source rows (i - 1, i, i) through the kernel's rows
    (0, 1, 2) and output row 2i + 1 reads (i, i, i + 1): the 3 taps fold into 2 per output phase,
    (w0, w1 + w2) and (w0 + w1, w2). A stride-2 transposed convolution with padding 1 places them with
    the 4 taps (w2, w1 + w2, w0 + w1, w0); the same along columns.
    """
    w0, w1, w2 = weight.unbind(2)
    rows = torch.stack([w2, w1 + w2, w0 + w1, w0], 2)  # (C_out, C_in, 4, 3)
    c0, c1, c2 = rows.unbind(3)
    return torch.stack([c2, c1 + c2, c0 + c1, c0], 3).transpose(0, 1)


class Upsample2d(nn.Module):
    """Nearest-neighbour x2 then conv 3x3 (zero padding 1). (B, C_in, H, W) -> (B, C_out, 2H, 2W).

    Computed as one stride-2 transposed convolution at the input resolution (``upsampling_kernel``):
    16 instead of 36 multiply-adds per output pixel and channel pair, no upsampled copy of the input.
    The same function up to float rounding (folded taps are summed before the product). Without
    gradients the folded kernel is kept until the weight changes.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self._kernel: tuple[tuple, Tensor] | None = None

    def kernel(self) -> Tensor:
        weight = self.conv.weight
        if torch.is_grad_enabled():
            return upsampling_kernel(weight)
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._kernel is None or self._kernel[0] != key:
            self._kernel = (key, upsampling_kernel(weight.detach()))
        return self._kernel[1]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv_transpose2d(x, self.kernel(), self.conv.bias, stride=2, padding=1)


class InvertedMBConvBlock(nn.Module):
    """MBConv mirrored for decoding: LN -> 1x1 expand (x4) -> GELU -> [x2 upsample] -> depthwise 3x3
    -> GELU -> 1x1 project, plus a shortcut (upsample + conv 3x3 when upsampling).
    (B, C_in, H, W) -> (B, C_out, H * up, W * up)."""

    def __init__(self, in_ch: int, out_ch: int, *, upsample: bool = False, expand_ratio: float = 4.0) -> None:
        super().__init__()
        mid = int(out_ch * expand_ratio)
        if upsample:
            self.shortcut: nn.Module = Upsample2d(in_ch, out_ch)
        else:
            self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.pre_norm = LayerNorm2d(in_ch, eps=1e-6)
        self.expand = nn.Conv2d(in_ch, mid, 1)
        self.up: nn.Module = Upsample2d(mid, mid) if upsample else nn.Identity()
        self.depthwise = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.project = nn.Conv2d(mid, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.up(F.gelu(self.expand(self.pre_norm(x))))
        y = F.gelu(self.depthwise(y))
        return self.project(y) + self.shortcut(x)


class ConvUpsampler(nn.Module):
    """The hybrid stem run backwards (UniTok's pixel head), total upsampling ``2 ** (len(widths) + 2)``.

    Upsample2d (width -> widths[0]); inverted-MBConv stages (first block of each upsamples); then
    upsample + LN + GELU + conv 3x3 to ``out_ch``. UniTok-L: widths (320, 160), depths (4, 2) -> x16.
    With ``upsample_first=False`` the first conv keeps the resolution, total ``2 ** (len(widths) + 1)``
    (a x4 head for a stride-4 encoder from one stage).
    (B, width, h, w) -> (B, out_ch, h * up, w * up).
    """

    def __init__(
        self,
        width: int,
        widths: Sequence[int],
        depths: Sequence[int],
        out_ch: int = 3,
        *,
        upsample_first: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(
                f"upsampler widths {list(widths)} and depths {list(depths)} must be non-empty and "
                "of equal length"
            )
        self.up_in: nn.Module = (
            Upsample2d(width, widths[0]) if upsample_first else nn.Conv2d(width, widths[0], 3, padding=1)
        )
        stages = []
        prev = widths[0]
        for w, depth in zip(widths, depths):
            blocks = [InvertedMBConvBlock(prev if d == 0 else w, w, upsample=d == 0) for d in range(depth)]
            stages.append(nn.Sequential(*blocks))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.up_out = Upsample2d(prev, prev)
        self.norm_out = LayerNorm2d(prev, eps=1e-6)
        self.conv_out = nn.Conv2d(prev, out_ch, 3, padding=1)
        self.factor = 2 ** (len(widths) + (2 if upsample_first else 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.up_in(x))
        return self.conv_out(F.gelu(self.norm_out(self.up_out(x))))
