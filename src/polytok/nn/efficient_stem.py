"""EfficientNet-Lite0's front end to stride 4 as a tokenizer's convolutional stem, with its batch norms
folded into the convolutions, so that a fine-tuned copy has no batch statistics.

The tiny presets' ViTamin-style stem has one nonlinearity before stride 4 (an 11-pixel receptive field),
and a transformer without positions cannot learn from it, in the hundreds of steps a CPU affords, what
tells a star from a cross (docs/study.md, section 7.3). UniTok and EvoTok both start their encoders from
pretrained networks; at 64 px the pretrained network the project ships is EfficientNet-Lite0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.nn.conv import LayerNorm2d

# (in, out, expand, stride) of the blocks to stride 4: blocks.0 (depthwise-separable) and blocks.1
_BLOCKS = ((32, 16, 1, 1), (16, 24, 6, 2), (24, 24, 6, 1))
STEM_CHANNELS = 24


def _same_pad(x: Tensor, stride: int) -> Tensor:
    """TensorFlow's SAME padding of a 3 x 3 convolution: strided, the extra row and column go after."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    ph, pw = max(3 - (h % 2 or 2), 0), max(3 - (w % 2 or 2), 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class _LiteBlock(nn.Module):
    """Inverted residual of EfficientNet-Lite (no squeeze-excite, ReLU6): 1 x 1 expand (absent when
    ``expand`` is 1), depthwise 3 x 3 (stride), 1 x 1 project; a shortcut when shapes allow.
    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""

    def __init__(self, in_ch: int, out_ch: int, expand: int, stride: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.stride = stride
        self.expand = nn.Conv2d(in_ch, mid, 1) if expand != 1 else None
        self.depthwise = nn.Conv2d(mid, mid, 3, stride=stride, groups=mid)
        self.project = nn.Conv2d(mid, out_ch, 1)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(_same_pad(y, self.stride))))
        return x + y if self.residual else y


class EfficientLiteStem(nn.Module):
    """3 x 3 stride-2 convolution (3 -> 32) and EfficientNet-Lite0's first three blocks (stride 4,
    24 channels), then LayerNorm and a 1 x 1 convolution to ``width``.
    Input normalised to [-1, 1] (the tokenizer's default mean and std, EfficientNet-Lite's own).
    (B, 3, H, W) -> (B, width, H / 4, W / 4)."""

    stride = 4

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, stride=2)
        self.blocks = nn.Sequential(*(_LiteBlock(*spec) for spec in _BLOCKS))
        self.norm = LayerNorm2d(STEM_CHANNELS, eps=1e-6)
        self.out = nn.Conv2d(STEM_CHANNELS, width, 1)

    def features(self, x: Tensor) -> Tensor:
        """The pretrained part: (B, 3, H, W) in [-1, 1] -> (B, 24, H / 4, W / 4)."""
        return self.blocks(F.relu6(self.conv(_same_pad(x, 2))))

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.norm(self.features(x)))

    @torch.no_grad()
    def load_pretrained(self, weights_path: str | None = None) -> None:
        """Copy EfficientNet-Lite0's ImageNet weights (the installed weights package, or
        ``weights_path``), each batch norm folded into the convolution before it."""
        from polytok.pretrained import load_pretrained

        net = load_pretrained("efficientnet-lite0", weights_path=weights_path).model
        pairs = [(self.conv, net.conv_stem, net.bn1)]
        ds = net.blocks[0][0]
        first = self.blocks[0]
        pairs += [(first.depthwise, ds.conv_dw, ds.bn1), (first.project, ds.conv_pw, ds.bn2)]
        for mine, theirs in zip(self.blocks[1:], net.blocks[1], strict=True):
            pairs += [
                (mine.expand, theirs.conv_pw, theirs.bn1),
                (mine.depthwise, theirs.conv_dw, theirs.bn2),
                (mine.project, theirs.conv_pwl, theirs.bn3),
            ]
        for conv, source, bn in pairs:  # folded in float64, then stored in the stem's dtype
            scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
            conv.weight.copy_(source.weight.double() * scale.view(-1, 1, 1, 1))
            conv.bias.copy_(bn.bias.double() - bn.running_mean.double() * scale)
