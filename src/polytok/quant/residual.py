"""Residual quantization (EvoTok, RQ-VAE), optionally with several codebooks per level."""

from __future__ import annotations

from typing import Any

from polytok.quant.core import LevelledQuantizer


class ResidualQuantizer(LevelledQuantizer):
    """``levels`` residual levels: level l quantizes what the levels before it left over.

    Any prefix of the levels decodes (``indices_to_codes(indices[..., :k])`` or ``out.prefix(k)``), so
    early levels can serve pixels and the full stack semantics (EvoTok: 16 levels x 32768 x 32-d, EMA,
    pixels from the first 4). With ``num_codebooks > 1`` each level is multi-codebook.
    Input (B, N, dim) -> indices (B, N, L), or (B, N, L, C) when ``num_codebooks > 1``.
    """

    def __init__(
        self, dim: int, levels: int, codebook_size: int, num_codebooks: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(dim, codebook_size, levels=levels, num_codebooks=num_codebooks, **kwargs)

    def _kept_axes(self) -> tuple[bool, bool]:
        return (True, self.num_codebooks > 1)
