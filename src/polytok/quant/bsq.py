"""Binary spherical quantization (BSQ, Zhao et al. 2024): lookup-free quantization on the unit sphere."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from polytok.quant.lfq import LookupFreeQuantizer


class BinarySphericalQuantizer(LookupFreeQuantizer):
    """The input is L2-normalised over all ``dim`` channels, u = x / |x|, and channel j becomes the bit
    [u_j > 0] and the code value ±1/sqrt(dim): every code lies on the unit sphere, so the quantization
    error is bounded whatever the input's scale.

    Index, groups and loss terms are those of :class:`LookupFreeQuantizer`, applied to u and to codes of
    magnitude 1/sqrt(dim): q(c | u) ∝ exp(-|u - c|^2 / temperature), bit j being 1 with probability
    sigmoid(4 u_j / (sqrt(dim) temperature)) (BSQ's analytical per-sample entropy), the codebook entropy
    summed over groups of ``group_size`` bits (BSQ's factorised approximation). The straight-through
    gradient goes to u, and through the normalisation to x. The commitment is |u - sg(code)|^2.

    Defaults: temperature 1 (BSQ-ViT's inverse temperature 1), per-sample and codebook entropy weighted
    alike (diversity 1, BSQ's gamma0 = gamma = 1); entropy weight 0.1 and commitment 0.25 as LFQ here.
    Input (B, N, dim) -> indices (B, N), first channel the most significant bit.

    Example:
        >>> import torch
        >>> bsq = BinarySphericalQuantizer(dim=18)
        >>> out = bsq(torch.randn(2, 16, 18))
        >>> bool((out.quantized.norm(dim=-1) - 1).abs().max() < 1e-5)
        True
    """

    def __init__(self, dim: int = 18, *, temperature: float = 1.0, **kwargs) -> None:
        if "scale" in kwargs:
            raise TypeError("BinarySphericalQuantizer codes have magnitude 1/sqrt(dim); it takes no 'scale'")
        super().__init__(dim, temperature=temperature, **kwargs)

    @property
    def code_value(self) -> float:
        return 1.0 / math.sqrt(self.dim)

    def _prepare(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)
