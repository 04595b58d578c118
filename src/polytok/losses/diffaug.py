"""DiffAugment (Zhao et al., 2020): differentiable colour, translation and cutout augmentation.

Applied to real and fake images alike before the discriminator, so that the discriminator cannot
memorise the real set and gradients still reach the generator through the augmentation. The magnitudes
are those of the original policy, calibrated for images in [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POLICY_OPS = ("color", "translation", "cutout")


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation,cutout"`` -> ("color", "translation", "cutout"); None or "" -> ()."""
    if not policy:
        return ()
    ops = tuple(op.strip() for op in policy.split(",") if op.strip())
    unknown = [op for op in ops if op not in POLICY_OPS]
    if unknown:
        raise ValueError(f"unknown DiffAugment op(s) {unknown}; choose from {list(POLICY_OPS)}")
    return ops


def _uniform(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """One U[0, 1) draw per sample, shape (B, 1, 1, 1), on x's device and dtype."""
    draw = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device="cpu" if generator else x.device)
    return draw.to(device=x.device, dtype=x.dtype)


def random_color(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Random brightness (+U[-0.5, 0.5]), saturation (x U[0, 2]) and contrast (x U[0.5, 1.5]) per sample."""
    x = x + (_uniform(x, generator) - 0.5)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = (x - channel_mean) * (_uniform(x, generator) * 2) + channel_mean
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - image_mean) * (_uniform(x, generator) + 0.5) + image_mean


def translate(x: Tensor, shift_y: Tensor, shift_x: Tensor) -> Tensor:
    """Shift each image by whole pixels, filling the uncovered border with zeros.

    Args:
        x: (B, C, H, W).
        shift_y, shift_x: (B,) integer shifts; output[b, :, i, j] = x[b, :, i - shift_y[b], j - shift_x[b]].
    """
    batch, _, height, width = x.shape
    padded = F.pad(x, [1, 1, 1, 1])  # the zero border receives every out-of-range index
    rows = torch.arange(height, device=x.device)[None, :] - shift_y.to(x.device)[:, None] + 1
    cols = torch.arange(width, device=x.device)[None, :] - shift_x.to(x.device)[:, None] + 1
    rows = rows.clamp(0, height + 1)
    cols = cols.clamp(0, width + 1)
    batch_index = torch.arange(batch, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def cutout(x: Tensor, top: Tensor, left: Tensor, size_y: int, size_x: int) -> Tensor:
    """Zero a (size_y x size_x) rectangle with top-left corner (top[b], left[b]) per image, clipped."""
    _, _, height, width = x.shape
    rows = torch.arange(height, device=x.device)[None, :]
    cols = torch.arange(width, device=x.device)[None, :]
    top, left = top.to(x.device)[:, None], left.to(x.device)[:, None]
    inside_rows = (rows >= top) & (rows < top + size_y)  # (B, H)
    inside_cols = (cols >= left) & (cols < left + size_x)  # (B, W)
    hole = inside_rows[:, :, None] & inside_cols[:, None, :]
    return x * (~hole)[:, None].to(x.dtype)


def random_translation(x: Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> Tensor:
    """Translate by up to ``ratio`` of the image size in each direction (uniform integer shifts)."""
    batch, _, height, width = x.shape
    max_y, max_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    shift_y = torch.randint(-max_y, max_y + 1, (batch,), generator=generator)
    shift_x = torch.randint(-max_x, max_x + 1, (batch,), generator=generator)
    return translate(x, shift_y, shift_x)


def random_cutout(x: Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Zero a square of ``ratio`` times the image size centred anywhere in the image (clipped at edges)."""
    batch, _, height, width = x.shape
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    centre_y = torch.randint(0, height, (batch,), generator=generator)
    centre_x = torch.randint(0, width, (batch,), generator=generator)
    return cutout(x, centre_y - size_y // 2, centre_x - size_x // 2, size_y, size_x)


def diff_augment(
    x: Tensor, policy: str | None = "color,translation,cutout", generator: torch.Generator | None = None
) -> Tensor:
    """Apply the ops of ``policy`` in order to a batch (B, C, H, W) in [-1, 1], drawing per sample."""
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(x.shape)}")
    for op in parse_policy(policy):
        if op == "color":
            x = random_color(x, generator)
        elif op == "translation":
            x = random_translation(x, generator=generator)
        else:
            x = random_cutout(x, generator=generator)
    return x


class DiffAugment(nn.Module):
    """Module form of :func:`diff_augment` (no parameters); identity when the policy is empty."""

    def __init__(self, policy: str | None = "color,translation,cutout") -> None:
        super().__init__()
        self.ops = parse_policy(policy)
        self.policy = ",".join(self.ops)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return diff_augment(x, self.policy, generator) if self.ops else x

    def extra_repr(self) -> str:
        return f"policy={self.policy!r}"
