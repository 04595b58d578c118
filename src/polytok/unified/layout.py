"""The code layout of a tokenizer, as the unified model sees it.

Every polytok tokenizer emits, per grid cell, an array of ``code_shape`` sub-codes: () VQ, (C,) MCQ,
(L,) RVQ or (L, C) residual MCQ. Inside the unified model every layout is held as (L, C) and a position's
sub-codes are read level by level, codebook by codebook within a level: sub-code s = l * C + c.
Generation predicts the pixel prefix (the first ``pixel_levels`` levels); understanding may read all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class CodeLayout:
    """Levels x codebooks of one grid cell, codebook size, pixel prefix and grid.

    Attributes:
        levels: L residual levels (1 without residual quantization).
        codebooks: C codebooks per level (1 without multi-codebook quantization).
        codebook_size: K codes in every codebook.
        pixel_levels: levels generation predicts and decodes, 1 <= pixel_levels <= L: the levels the
            tokenizer's pixel decoder reads, or fewer (``UnifiedConfig.generation_levels``).
        grid: (h, w) token grid of one image; one sequence position per cell.
        level_axis: whether the tokenizer's code_shape has the level axis.
        codebook_axis: whether the tokenizer's code_shape has the codebook axis.
        code_dim: d, the dimension of one codebook's code vectors (0 when unknown).
    """

    levels: int
    codebooks: int
    codebook_size: int
    pixel_levels: int
    grid: tuple[int, int]
    level_axis: bool
    codebook_axis: bool
    code_dim: int = 0

    def __post_init__(self) -> None:
        if self.levels < 1 or self.codebooks < 1 or self.codebook_size < 2:
            raise ValueError(
                f"a code layout needs levels >= 1, codebooks >= 1 and codebook_size >= 2, got "
                f"{self.levels}, {self.codebooks}, {self.codebook_size}"
            )
        if not 1 <= self.pixel_levels <= self.levels:
            raise ValueError(f"pixel_levels must be in [1, {self.levels}], got {self.pixel_levels}")
        if (not self.level_axis and self.levels != 1) or (not self.codebook_axis and self.codebooks != 1):
            raise ValueError("an axis left out of code_shape must have size 1")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be (h, w) with positive sides, got {self.grid}")
        object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))

    # -- sizes ------------------------------------------------------------------------------------

    @property
    def code_shape(self) -> tuple[int, ...]:
        """The tokenizer's per-position code shape: (), (C,), (L,) or (L, C)."""
        return tuple(
            n for n, keep in ((self.levels, self.level_axis), (self.codebooks, self.codebook_axis)) if keep
        )

    @property
    def num_positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def generation_depth(self) -> int:
        """Sub-codes predicted per position: the pixel prefix, pixel_levels * C."""
        return self.pixel_levels * self.codebooks

    @property
    def full_depth(self) -> int:
        return self.levels * self.codebooks

    # -- conversions ------------------------------------------------------------------------------

    def to_levels(self, codes: Tensor) -> Tensor:
        """Tokenizer codes (B, h, w, *code_shape) -> (B, N, L', C); L' <= L (a prefix of levels is allowed).

        Raises ValueError for a wrong shape, a non-integer dtype or codes out of [0, K).
        """
        if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.dtype.is_complex:
            raise ValueError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        want = (self.grid[0], self.grid[1], *self.code_shape)
        shape = tuple(codes.shape)
        ok = codes.dim() == 1 + len(want) and shape[1:3] == want[:2]
        if ok and self.level_axis:
            ok = 1 <= shape[3] <= self.levels and shape[4:] == want[3:]
        elif ok:
            ok = shape[3:] == want[2:]
        if not ok:
            raise ValueError(
                f"codes must have shape (B, {', '.join(map(str, want))}) for this layout "
                f"(a prefix of the level axis is allowed), got {shape}"
            )
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes out of range [0, {self.codebook_size}): min {int(codes.min())}, "
                f"max {int(codes.max())}"
            )
        b = shape[0]
        codes = codes.long().reshape(b, self.num_positions, *shape[3:])
        if not self.level_axis:
            codes = codes.unsqueeze(2)
        if not self.codebook_axis:
            codes = codes.unsqueeze(-1)
        return codes

    def from_levels(self, codes: Tensor) -> Tensor:
        """(B, N, L', C) -> tokenizer codes (B, h, w, *code_shape) with L' levels on the level axis."""
        b, n, levels, books = codes.shape
        if n != self.num_positions or books != self.codebooks or not 1 <= levels <= self.levels:
            raise ValueError(
                f"expected (B, {self.num_positions}, 1..{self.levels}, {self.codebooks}), "
                f"got {tuple(codes.shape)}"
            )
        if not self.codebook_axis:
            codes = codes.squeeze(-1)
        if not self.level_axis:
            codes = codes.squeeze(2)
        return codes.reshape(b, self.grid[0], self.grid[1], *codes.shape[2:])

    # -- construction -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeLayout:
        return cls(**{**data, "grid": tuple(data["grid"])})

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, grid: tuple[int, int] | None = None) -> CodeLayout:
        """The layout of a polytok ``Tokenizer``; ``grid`` defaults to its image_size / stride."""
        from polytok.quant import MultiCodebookQuantizer, ResidualQuantizer

        q = tokenizer.quantizer
        if grid is None:
            side = tokenizer.config.image_size // tokenizer.stride
            grid = (side, side)
        return cls(
            levels=q.num_levels,
            codebooks=q.num_codebooks,
            codebook_size=q.codebook_size,
            pixel_levels=tokenizer.pixel_depth,
            grid=grid,
            level_axis=isinstance(q, ResidualQuantizer),
            codebook_axis=isinstance(q, MultiCodebookQuantizer) or q.num_codebooks > 1,
            code_dim=q.codebook_dim,
        )


@torch.no_grad()
def tokenizer_code_vectors(tokenizer: Any) -> Tensor:
    """The tokenizer's code vectors, (L, C, K, d) float32: level l, codebook c, code k.

    These are the vectors the quantizer sums (in its code space, before any output projection); the sum
    over a prefix of levels, concatenated over codebooks, is the partial reconstruction of a position.
    """
    q = tokenizer.quantizer
    return torch.stack(
        [q.codebook_for_level(level).codes().detach().float().cpu() for level in range(q.num_levels)]
    )
