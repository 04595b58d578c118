"""Decoders from code vectors: pixel decoders (image) and the ViT semantic decoder (features)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytok.models.config import PixelDecoderConfig
from polytok.nn import ConvUpsampler, TanhMlpProjection, Transformer, VQGANDecoder, sincos_2d
from polytok.nn.posemb import resize_position_map


def tokens_to_map(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, h * w, C) -> (B, C, h, w)."""
    b, n, c = x.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} tokens do not fill a {h}x{w} grid")
    return x.transpose(1, 2).reshape(b, c, h, w)


class PatchHead(nn.Module):
    """Linear unpatchify (ViT-VQGAN / MAE style): each token's vector -> a p x p patch of pixels.
    (B, width, h, w) -> (B, out_ch, h * p, w * p). Far cheaper than a conv upsampler on a CPU."""

    def __init__(self, width: int, patch_size: int, out_ch: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(width, out_ch * patch_size * patch_size, 1)
        self.shuffle = nn.PixelShuffle(patch_size)
        self.factor = patch_size

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.proj(x))


class ViTPixelDecoder(nn.Module):
    """UniTok's pixel decoder: transformer blocks on the tokens, LN, then the conv upsampler, or with
    empty ``up_widths`` a linear patch head of side ``patch_size`` (the encoder stride).
    (B, h*w, width) -> (B, 3, h * up, w * up) in [-1, 1] scale (not clamped)."""

    def __init__(self, cfg: PixelDecoderConfig, pos_embed: bool, patch_size: int | None = None) -> None:
        super().__init__()
        self.width, self.pos_embed = cfg.width, pos_embed
        self.transformer = Transformer(cfg.width, cfg.depth, cfg.heads, mlp=cfg.mlp, mlp_ratio=cfg.mlp_ratio)
        self.transformer.grad_checkpointing = cfg.grad_checkpointing
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        if cfg.up_widths:
            self.upsampler: ConvUpsampler | PatchHead = ConvUpsampler(
                cfg.width, cfg.up_widths, cfg.up_depths, upsample_first=cfg.upsample_first
            )
        else:
            if patch_size is None:
                raise ValueError(
                    "a ViT pixel decoder without up_widths needs patch_size (the encoder stride)"
                )
            self.upsampler = PatchHead(cfg.width, patch_size)
        self.factor = self.upsampler.factor

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if self.pos_embed:
            x = x + sincos_2d(*grid, self.width, device=x.device, dtype=x.dtype)
        x = self.norm(self.transformer(x))
        return self.upsampler(tokens_to_map(x, grid))

    def last_layer(self) -> Tensor:
        if isinstance(self.upsampler, PatchHead):
            return self.upsampler.proj.weight
        return self.upsampler.conv_out.weight


class CNNPixelDecoder(nn.Module):
    """EvoTok's pixel decoder: VQGAN-style CNN on the code map. (B, h*w, D) -> (B, 3, h*up, w*up).

    With ``cfg.z_channels`` a 1 x 1 convolution (EvoTok's ``post_quant_conv``, D -> z_channels) comes
    first; it cannot be folded into the CNN's 3 x 3 input convolution, whose zero padding at the borders
    sees the 1 x 1 convolution's bias as zeros.
    """

    def __init__(self, cfg: PixelDecoderConfig, in_dim: int) -> None:
        super().__init__()
        self.post_quant_conv: nn.Module = (
            nn.Conv2d(in_dim, cfg.z_channels, 1) if cfg.z_channels else nn.Identity()
        )
        z_ch = cfg.z_channels or in_dim
        self.cnn = VQGANDecoder(z_ch, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, norm_groups=cfg.norm_groups)
        self.factor = self.cnn.factor

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        return self.cnn(self.post_quant_conv(tokens_to_map(x, grid)))

    def last_layer(self) -> Tensor:
        return self.cnn.conv_out.weight


class BeitSemanticDecoder(nn.Module):
    """EvoTok's semantic decoder (a BEiT-v2-style ViT on the code map).

    Linear ``in_dim`` -> ``width`` per token (EvoTok's 1 x 1 patch embedding), a learned class token,
    learned positions for the class token and the ``grid`` tokens (resized bicubically for another grid),
    ``depth`` pre-norm blocks whose ``heads`` heads have ``width // heads`` channels each (EvoTok: 12
    heads of 85, an inner width of 1020), LayerNorm on the patch tokens, then Linear-Tanh-Linear to the
    teacher's ``out_dim``. (B, N, in_dim) -> (B, N, out_dim): the class token is dropped.
    """

    def __init__(
        self,
        in_dim: int,
        width: int,
        depth: int,
        heads: int,
        out_dim: int,
        grid: tuple[int, int],
        *,
        resize_offset: float = 0.0,
    ) -> None:
        super().__init__()
        self.grid = grid
        self.resize_offset = resize_offset  # 0.1: DINO's resizing (TokenFlow's), see resize_position_map
        self.proj_in = nn.Linear(in_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1] + 1, width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.transformer = Transformer(width, depth, heads, mlp="mlp", mlp_ratio=4.0, head_dim=width // heads)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = TanhMlpProjection(width, out_dim, hidden=width)

    def positions(self, grid: tuple[int, int]) -> Tensor:
        """(1, 1 + h * w, width): the learned positions, the patch part resized to ``grid``."""
        if tuple(grid) == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        resized = resize_position_map(patch_pos, self.grid, tuple(grid), offset=self.resize_offset)
        return torch.cat([cls_pos, resized.unsqueeze(0)], dim=1)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.proj_in(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.positions(grid)
        return self.head(self.norm(self.transformer(x)[:, 1:]))


class SemanticDecoder(nn.Module):
    """A lighter semantic decoder: Linear to ``width``, sin-cos positions, ``depth`` transformer blocks
    (heads of ``width // heads``), LN, Linear to the teacher's ``out_dim``. (B, N, in_dim) -> (B, N, out_dim).
    The layout the shipped evotok-tiny checkpoint was trained with (``semantic.decoder_layout: sincos``)."""

    def __init__(self, in_dim: int, width: int, depth: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.width = width
        self.proj_in = nn.Linear(in_dim, width)
        self.transformer = Transformer(width, depth, heads, mlp="mlp", mlp_ratio=4.0)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.proj_out = nn.Linear(width, out_dim)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.proj_in(x) + sincos_2d(*grid, self.width, device=x.device, dtype=x.dtype)
        return self.proj_out(self.norm(self.transformer(x)))
