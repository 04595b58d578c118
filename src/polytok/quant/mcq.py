"""Multi-codebook quantization (UniTok): split the channel dim, one small codebook per chunk."""

from __future__ import annotations

from typing import Any

from polytok.quant.core import LevelledQuantizer


class MultiCodebookQuantizer(LevelledQuantizer):
    """``num_codebooks`` codebooks, codebook c quantizing channels [c*dim/C, (c+1)*dim/C).

    Capacity grows as K^C while each codebook stays small enough to train stably. UniTok uses
    dim=64, num_codebooks=8, codebook_size=4096, normalize=True (8-d cosine codes).
    Input (B, N, dim) -> indices (B, N, C).
    """

    def __init__(self, dim: int, num_codebooks: int, codebook_size: int, **kwargs: Any) -> None:
        for key in ("levels", "shared_codebook", "quantize_dropout"):
            if key in kwargs:
                raise TypeError(f"MultiCodebookQuantizer does not take {key!r}; use ResidualQuantizer")
        super().__init__(dim, codebook_size, levels=1, num_codebooks=num_codebooks, **kwargs)

    def _kept_axes(self) -> tuple[bool, bool]:
        return (False, True)
