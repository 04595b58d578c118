"""Finite scalar quantization (FSQ, Mentzer et al. 2023): each channel rounded to a few fixed levels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from polytok.quant.implicit import ImplicitQuantizer


class _BoundedRound(torch.autograd.Function):
    """Value: the codes; gradient: that of tanh(x + shift) * half / (L // 2) (straight-through round)."""

    @staticmethod
    def forward(ctx, x: Tensor, codes: Tensor, t: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(t, scale)
        return codes.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        t, scale = ctx.saved_tensors
        return grad * torch.addcmul(scale, t * t, scale, value=-1), None, None, None


class FiniteScalarQuantizer(ImplicitQuantizer):
    """Channel i is bounded to ``levels[i]`` values and rounded; the codebook is their product grid.

    Per channel with L levels (the paper's definition):
        half = (L - 1) (1 - eps) / 2, offset = 1/2 if L is even else 0, shift = atanh(offset / half)
        bounded = tanh(x + shift) * half - offset            in (-L/2, L/2 - 1) for even L, (-(L-1)/2,
                                                             (L-1)/2) for odd L; x = 0 maps to 0
        code = round(bounded) / (L // 2)                      straight-through rounding: the gradient
                                                             flows through tanh, not past the bound
    so an even L has the integer levels -L/2 .. L/2 - 1 (the half-step offset keeps them centred), an
    odd L has -(L-1)/2 .. (L-1)/2. The paper's listing writes the shift with tan; atanh is its exact
    inverse (both agree to third order) and maps a zero latent to the zero code exactly.

    Index: the mixed-radix number of the digits d_i = round(bounded_i) + L_i // 2 in [0, L_i), with the
    first channel least significant (the paper's basis [1, L_0, L_0 L_1, ...]):
    index = sum_i d_i * prod_{j < i} L_j, in [0, prod(levels)).

    No auxiliary loss (``loss`` is 0). ``dim`` other than ``len(levels)`` adds linear in/out projections.
    Input (B, N, dim) -> indices (B, N). The paper's recommended levels: [8, 6, 5] (2^8), [8, 5, 5, 5]
    (2^10, the default), [7, 5, 5, 5, 5] (2^12), [8, 8, 8, 6, 5] (2^14), [8, 8, 8, 5, 5, 5] (2^16).

    Example:
        >>> fsq = FiniteScalarQuantizer(levels=[8, 5, 5, 5])
        >>> fsq(torch.randn(2, 16, 4)).indices.shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        levels: Sequence[int] = (8, 5, 5, 5),
        *,
        dim: int | None = None,
        eps: float = 1e-3,
        decay: float = 0.99,
        sync_distributed: bool = True,
    ) -> None:
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 3:
            # L = 2 has no centred bound: offset / half = 1 / (1 - eps) > 1 has no atanh.
            raise ValueError(f"levels must be a non-empty list of integers >= 3, got {levels}")
        size = math.prod(levels)
        if size > 2**24:
            raise ValueError(f"prod(levels) = {size} codes: at most 2^24 are supported (usage counters)")
        code_dim = len(levels)
        dim = code_dim if dim is None else dim
        super().__init__(dim, 1, size, decay=decay, sync_distributed=sync_distributed)
        self.levels, self.eps, self.code_dim = levels, eps, code_dim
        lv = torch.tensor(levels, dtype=torch.float64)
        half = (lv - 1) * (1 - eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        # Constants of the bound, computed once in float64 and stored as fp32 (non-persistent: they
        # follow from ``levels``, so a state dict holds only the usage counters).
        self.register_buffer("_half", half.float(), persistent=False)
        self.register_buffer("_neg_offset", -offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half).float(), persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        self.register_buffer("_levels", torch.tensor(levels), persistent=False)
        basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), 0)
        self.register_buffer("_basis", basis, persistent=False)
        self.register_buffer("_basis_float", basis.float(), persistent=False)
        # sum_i (L_i // 2) basis_i: the index of the digits is rounded . basis plus this.
        self.register_buffer("_index_offset", ((lv // 2) * basis.double()).sum().float(), persistent=False)
        # d code / d x = (1 - tanh^2) * half / (L // 2).
        self.register_buffer("_grad_scale", (half / (lv // 2)).float(), persistent=False)
        self.project_in: nn.Module = nn.Linear(dim, code_dim) if dim != code_dim else nn.Identity()
        self.project_out: nn.Module = nn.Linear(code_dim, dim) if dim != code_dim else nn.Identity()

    @property
    def codebook_size(self) -> int:
        return self.group_codes

    def _project_in(self, z: Tensor) -> Tensor:
        return self.project_in(z) if self.dim != self.code_dim else z

    def _project_out(self, q: Tensor) -> Tensor:
        if self.dim == self.code_dim:
            return q
        return self.project_out(q.to(self.project_out.weight.dtype))

    def bound(self, x: Tensor) -> Tensor:
        """(..., code_dim) -> bounded values before rounding (see the class docstring)."""
        return torch.addcmul(self._neg_offset, torch.tanh(x + self._shift), self._half)

    def _quantize(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        wants_grad = self._wants_grad(x)
        with torch.no_grad():
            t = torch.tanh(x + self._shift)
            rounded = torch.addcmul(self._neg_offset, t, self._half).round_()  # integer levels
            # The index as a float product: digits and basis are integers, prod(levels) <= 2^24: exact.
            indices = torch.addmv(self._index_offset.expand(len(rounded)), rounded, self._basis_float).long()
            codes = self._levels_to_codes(rounded)
        # Straight-through rounding, fused: the value is the code, the gradient that of the bound.
        q = _BoundedRound.apply(x, codes, t, self._grad_scale) if wants_grad else None
        return q, codes, indices, indices.unsqueeze(-1), x.new_zeros(()), {}

    def _levels_to_codes(self, rounded: Tensor) -> Tensor:
        # + 0.0 turns the -0.0 of round(-0.3) into 0.0: the same bits as from indices.
        return (rounded + 0.0) / self._half_width

    def indices_to_digits(self, indices: Tensor) -> Tensor:
        """(...,) indices -> (..., code_dim) digits in [0, L_i) (first channel least significant)."""
        return torch.div(indices.unsqueeze(-1), self._basis, rounding_mode="floor") % self._levels

    def _codes_from_indices(self, indices: Tensor) -> Tensor:
        return self._levels_to_codes(self.indices_to_digits(indices).float() - self._half_width)
