"""Residual levels of codes: the one definition of "the first k levels" used by decoding, the CLI's
``--depth`` and the evaluation's depth curves.

Codes end in ``code_shape``: () one codebook, (C,) several codebooks, (L,) residual levels, (L, C)
residual levels of C codebooks each; the level axis is the first axis of ``code_shape``.

    >>> import torch
    >>> codes = torch.arange(2 * 4 * 4 * 8).reshape(2, 4, 4, 8)          # (B, h, w, L): 8 levels
    >>> code_prefix(codes, 3, code_shape=(8,), num_levels=8).shape
    torch.Size([2, 4, 4, 3])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def code_prefix(codes: torch.Tensor, depth: int, code_shape: Sequence[int], num_levels: int) -> torch.Tensor:
    """The codes of the first ``depth`` residual levels: (..., L) -> (..., depth) and (..., L, C) ->
    (..., depth, C), whatever the leading axes ((B, h, w) grids or (B, N) sequences); codes of a
    non-residual tokenizer are returned whole (``depth`` must then be 1)."""
    if not 1 <= depth <= num_levels:
        raise ValueError(f"depth must lie in [1, {num_levels}], got {depth}")
    if num_levels == 1:
        return codes
    if len(code_shape) not in (1, 2):
        raise ValueError(f"a residual tokenizer must have code_shape (L,) or (L, C), got {tuple(code_shape)}")
    return codes.narrow(codes.ndim - len(code_shape), 0, depth)
