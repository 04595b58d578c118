"""Single-codebook vector quantization."""

from __future__ import annotations

from typing import Any

from polytok.quant.core import LevelledQuantizer


class VectorQuantizer(LevelledQuantizer):
    """One codebook of ``codebook_size`` codes (LlamaGen / VQGAN style).

    Input (B, N, dim) -> indices (B, N). ``codebook_dim`` smaller than ``dim`` adds in/out projections
    (low-dimensional codes); ``normalize=True`` gives cosine (L2-normalised) codes.

    Example:
        >>> import torch
        >>> vq = VectorQuantizer(dim=8, codebook_size=4096, normalize=True)
        >>> out = vq(torch.randn(2, 16, 8))
        >>> out.indices.shape
        torch.Size([2, 16])
    """

    def __init__(self, dim: int, codebook_size: int, **kwargs: Any) -> None:
        for key in ("levels", "num_codebooks", "shared_codebook", "quantize_dropout"):
            if key in kwargs:
                raise TypeError(
                    f"VectorQuantizer does not take {key!r}; use ResidualQuantizer or MultiCodebookQuantizer"
                )
        super().__init__(dim, codebook_size, levels=1, num_codebooks=1, **kwargs)

    def _kept_axes(self) -> tuple[bool, bool]:
        return (False, False)
