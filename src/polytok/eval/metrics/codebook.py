"""Codebook health from the codes a tokenizer emits.

Codes have shape (B, h, w, *code_shape) with ``code_shape`` one of () (one codebook), (C,) (several
codebooks side by side), (L,) (residual levels) or (L, C) (residual levels of several codebooks).
Counts stream in through one ``bincount`` over offset indices (no one-hot), so a 16 x 32768 residual
codebook costs 2 MiB of counters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def _normalise_code_shape(code_shape: tuple[int, ...] | torch.Size, residual: bool | None) -> tuple[int, int]:
    """(levels, codebooks per level) for a code shape; a 1-tuple is residual only when ``residual``."""
    code_shape = tuple(int(s) for s in code_shape)
    if len(code_shape) == 0:
        return 1, 1
    if len(code_shape) == 1:
        if residual is None:
            raise ValueError("code_shape (n,) is ambiguous: pass residual=True (levels) or False (codebooks)")
        return (code_shape[0], 1) if residual else (1, code_shape[0])
    if len(code_shape) == 2:
        return code_shape[0], code_shape[1]
    raise ValueError(f"code_shape must have at most 2 dims (levels, codebooks), got {code_shape}")


@dataclass(frozen=True)
class CodebookStats:
    """Usage statistics; per-codebook tensors have shape (levels, codebooks per level).

    ``entropy_bits`` is the entropy of the empirical code distribution, ``perplexity`` = 2**entropy,
    ``usage`` the fraction of entries used at least once and ``dead`` the number never used.
    Per-level figures average over the level's codebooks (``dead`` sums).
    """

    counts: torch.Tensor  # (L, C, K) int64
    usage: torch.Tensor  # (L, C)
    perplexity: torch.Tensor  # (L, C)
    entropy_bits: torch.Tensor  # (L, C)
    dead: torch.Tensor  # (L, C) int64
    num_tokens: int  # per codebook

    @property
    def codebook_size(self) -> int:
        return int(self.counts.shape[-1])

    @property
    def num_levels(self) -> int:
        return int(self.counts.shape[0])

    def per_level(self) -> dict[str, torch.Tensor]:
        """Figures per residual level: dict of (L,) tensors."""
        return {
            "usage": self.usage.mean(dim=1),
            "perplexity": self.perplexity.mean(dim=1),
            "entropy_bits": self.entropy_bits.mean(dim=1),
            "dead": self.dead.sum(dim=1),
        }

    def summary(self) -> dict[str, float]:
        """One figure each, averaged over all codebooks (``dead`` summed)."""
        return {
            "usage": float(self.usage.mean()),
            "perplexity": float(self.perplexity.mean()),
            "entropy_bits": float(self.entropy_bits.mean()),
            "dead": int(self.dead.sum()),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "codebook_size": self.codebook_size,
            "num_tokens_per_codebook": self.num_tokens,
            "summary": self.summary(),
            "per_level": {k: v.tolist() for k, v in self.per_level().items()},
            "per_codebook": {
                "usage": self.usage.tolist(),
                "perplexity": self.perplexity.tolist(),
                "entropy_bits": self.entropy_bits.tolist(),
                "dead": self.dead.tolist(),
            },
        }


def stats_from_counts(counts: torch.Tensor, num_tokens: int) -> CodebookStats:
    """Figures from a (L, C, K) count tensor."""
    counts = counts.to(torch.int64)
    total = counts.sum(dim=-1, keepdim=True).clamp_min(1).double()
    p = counts.double() / total
    plogp = torch.where(p > 0, p * torch.log2(p), torch.zeros_like(p))
    entropy = -plogp.sum(dim=-1)
    used = counts > 0
    return CodebookStats(
        counts=counts,
        usage=used.double().mean(dim=-1),
        perplexity=torch.exp2(entropy),
        entropy_bits=entropy,
        dead=(~used).sum(dim=-1),
        num_tokens=num_tokens,
    )


class CodebookUsage:
    """Streaming code counts: ``update(codes)`` with codes (B, h, w, *code_shape), ``compute()``.

    Args:
        codebook_size: entries per codebook (K).
        code_shape: the quantizer's code shape: (), (C,), (L,) or (L, C).
        residual: for a 1-tuple code shape, whether it counts residual levels (True) or codebooks.
        spatial_dims: number of position dims between batch and code dims (2 for (B, h, w, ...)).
    """

    def __init__(
        self,
        codebook_size: int,
        code_shape: tuple[int, ...] | torch.Size = (),
        residual: bool | None = None,
        spatial_dims: int = 2,
    ) -> None:
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.codebook_size = int(codebook_size)
        self.code_shape = tuple(int(s) for s in code_shape)
        self.levels, self.codebooks = _normalise_code_shape(self.code_shape, residual)
        self.spatial_dims = spatial_dims
        self.reset()

    def reset(self) -> None:
        self._counts = torch.zeros(self.levels * self.codebooks * self.codebook_size, dtype=torch.int64)
        self._tokens = 0

    def update(self, codes: torch.Tensor) -> None:
        if codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        prefix = 1 + self.spatial_dims
        if codes.dim() != prefix + len(self.code_shape) or tuple(codes.shape[prefix:]) != self.code_shape:
            raise ValueError(
                f"codes must have shape (B, {', '.join(['*'] * self.spatial_dims)}, *{self.code_shape}), "
                f"got {tuple(codes.shape)}"
            )
        flat = codes.reshape(-1, self.levels * self.codebooks).to("cpu", torch.int64)
        if flat.numel() and (flat.min() < 0 or flat.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got [{int(flat.min())}, {int(flat.max())}]"
            )
        # Offset each (level, codebook) column into its own slice of one flat counter.
        offsets = torch.arange(self.levels * self.codebooks, dtype=torch.int64) * self.codebook_size
        self._counts += torch.bincount((flat + offsets).reshape(-1), minlength=self._counts.numel())
        self._tokens += flat.shape[0]

    def compute(self) -> CodebookStats:
        counts = self._counts.reshape(self.levels, self.codebooks, self.codebook_size)
        return stats_from_counts(counts, self._tokens)
