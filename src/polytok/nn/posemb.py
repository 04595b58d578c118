"""Fixed 2-D sine-cosine position embeddings (any grid size, no parameters)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos_2d(
    h: int, w: int, dim: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(h * w, dim) embedding; a quarter of the channels each for sin/cos of the row and column."""
    if dim % 4:
        raise ValueError(f"sin-cos embedding width must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    ang_y = ys.reshape(-1, 1) * omega
    ang_x = xs.reshape(-1, 1) * omega
    emb = torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1)
    return emb.to(dtype)


def resize_position_map(
    table: Tensor, source: tuple[int, int], grid: tuple[int, int], *, offset: float = 0.0
) -> Tensor:
    """Learned positions of a ``source`` grid, (h0 * w0, dim), resized bicubically to ``grid`` ->
    (h * w, dim), rows first.

    ``offset`` 0: resampled to the output size (sample centres at the output's, ``align_corners=False``).
    ``offset`` 0.1: DINO's interpolation, which BEiT v2 and OpenAI-CLIP ports (TokenFlow's) use: the scale
    factor (h + 0.1) / h0 is given instead of a size, so the output has h rows (the 0.1 guards the floor)
    but the sample positions follow that factor, not h / h0.
    """
    (h0, w0), (h, w) = source, grid
    if h0 * w0 != table.shape[0]:
        raise ValueError(f"{table.shape[0]} positions are not a {h0} x {w0} grid")
    square = table.reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
    if offset:
        factor = ((h + offset) / h0, (w + offset) / w0)
        out = F.interpolate(square, scale_factor=factor, mode="bicubic")
        if tuple(out.shape[-2:]) != (h, w):
            raise ValueError(f"resizing {h0} x {w0} positions by {factor} gave {tuple(out.shape[-2:])}")
    else:
        out = F.interpolate(square, size=(h, w), mode="bicubic", align_corners=False)
    return out.flatten(2).transpose(1, 2)[0]
