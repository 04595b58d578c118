"""Nearest-code search: one shared, chunked, fp32 kernel for every quantizer.

The nearest code under squared Euclidean distance is the argmax of ``x . c - |c|^2 / 2``; under cosine
similarity (unit-norm inputs and codes) it is the argmax of ``x . c``. Both are one matrix product plus a
row-wise max, so the search is a GEMM. It is run over tiles of inputs and codes into one preallocated
score buffer: memory stays bounded (a full 65536 x 32768 score matrix would be 8 GiB) and no temporaries are
allocated per chunk (which, on glibc, fragments the heap and inflates peak RSS).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Score buffer budgets. One codebook: the scores are computed in tiles of up to 512 inputs x (4 MiB worth
# of) codes, which stay in cache, with a running max across tiles; measured steadier and faster than
# whole-row chunks on a 2-core CPU whose memory bandwidth is shared (1-16 MiB tiles measured; see
# benchmarks/quantizers.py). Several codebooks: thin batched GEMMs into small chunks. Either way the
# budget also bounds the memory beyond inputs and outputs.
DEFAULT_BUFFER_BYTES = 4 * 1024 * 1024
GROUPED_BUFFER_BYTES = 1024 * 1024
TILE_ROWS = 512


def _chunk_rows(groups: int, codebook_size: int, buffer_bytes: int) -> int:
    return max(1, buffer_bytes // (4 * groups * codebook_size))


def _nearest_tiled(x: Tensor, codes_t: Tensor, bias: Tensor | None, out: Tensor, buffer_bytes: int) -> None:
    """One codebook: x (N, d), codes_t (d, K), bias (K,) or None -> out (N,), tile by tile."""
    n, k = x.shape[0], codes_t.shape[1]
    rows = min(n, TILE_ROWS)
    cols = min(k, max(1, buffer_bytes // (4 * rows)))
    scores = x.new_empty(rows, cols)
    vals, best = x.new_empty(rows), x.new_empty(rows)
    idx, best_idx = x.new_empty(rows, dtype=torch.long), x.new_empty(rows, dtype=torch.long)
    better = x.new_empty(rows, dtype=torch.bool)
    # (cols, d) row blocks of the (K, d) codebook, used transposed: contiguous memory, no copies.
    blocks = [
        (c0, codes_t[:, c0 : c0 + cols], None if bias is None else bias[c0 : c0 + cols])
        for c0 in range(0, k, cols)
    ]
    for start in range(0, n, rows):
        m = min(rows, n - start)
        xs, v, i, bv, bi, gt = x[start : start + m], vals[:m], idx[:m], best[:m], best_idx[:m], better[:m]
        bv.fill_(-float("inf"))
        for c0, block, block_bias in blocks:
            buf = scores[:m, : block.shape[1]]
            if block_bias is None:
                torch.mm(xs, block, out=buf)
            else:
                torch.addmm(block_bias, xs, block, out=buf)
            torch.max(buf, dim=1, out=(v, i))
            # Strictly greater: on ties the earlier block, hence the lower index, is kept.
            torch.gt(v, bv, out=gt)
            torch.where(gt, v, bv, out=bv)
            i.add_(c0)
            torch.where(gt, i, bi, out=bi)
        out[start : start + m] = bi


@torch.no_grad()
def nearest_codes(
    x: Tensor,
    codebooks: Tensor,
    *,
    cosine: bool = False,
    buffer_bytes: int | None = None,
) -> Tensor:
    """Index of the nearest code for every vector, per group.

    Args:
        x: (G, N, d) vectors, G groups (codebooks) of N vectors each. Any float dtype; searched in fp32.
        codebooks: (G, K, d) codes of each group.
        cosine: if True, inputs and codes are taken as unit-norm and the largest dot product wins
            (callers normalise); else the smallest squared Euclidean distance wins.
        buffer_bytes: size of the reusable score buffer, which bounds the memory beyond inputs/outputs
            (default 4 MiB for one codebook, 1 MiB for several).

    Returns:
        (G, N) int64 indices in [0, K). Ties go to the lowest index.
    """
    if x.dim() != 3 or codebooks.dim() != 3:
        raise ValueError(
            f"expected x (G, N, d) and codebooks (G, K, d), got {tuple(x.shape)} and {tuple(codebooks.shape)}"
        )
    groups, n, d = x.shape
    if codebooks.shape[0] != groups or codebooks.shape[2] != d:
        raise ValueError(
            f"x {tuple(x.shape)} and codebooks {tuple(codebooks.shape)} disagree on groups or dim"
        )
    k = codebooks.shape[1]
    if buffer_bytes is None:
        buffer_bytes = DEFAULT_BUFFER_BYTES if groups == 1 else GROUPED_BUFFER_BYTES
    x = x.float()
    codes_t = codebooks.float().transpose(1, 2)  # (G, d, K)
    out = torch.empty(groups, n, dtype=torch.long, device=x.device)
    if n == 0:
        return out
    bias = None if cosine else codebooks.float().pow(2).sum(-1) * -0.5  # (G, K)
    if groups == 1:
        _nearest_tiled(x[0], codes_t[0], None if bias is None else bias[0], out[0], buffer_bytes)
        return out
    chunk = min(n, _chunk_rows(groups, k, buffer_bytes))
    scores = torch.empty(groups, chunk, k, dtype=torch.float32, device=x.device)
    best = torch.empty(groups, chunk, dtype=torch.float32, device=x.device)
    best_idx = torch.empty(groups, chunk, dtype=torch.long, device=x.device)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = stop - start
        buf, vals, idx = scores[:, :rows], best[:, :rows], best_idx[:, :rows]
        xs = x[:, start:stop]
        if bias is None:
            torch.bmm(xs, codes_t, out=buf)
        else:
            torch.baddbmm(bias.unsqueeze(1), xs, codes_t, out=buf)
        torch.max(buf, dim=2, out=(vals, idx))
        out[:, start:stop] = idx
    return out


def nearest_codes_reference(x: Tensor, codebooks: Tensor, *, cosine: bool = False) -> Tensor:
    """Brute force in float64 (full distance matrix): the independent reference for tests/benchmarks."""
    x64, c64 = x.double(), codebooks.double()
    if cosine:
        return torch.einsum("gnd,gkd->gnk", x64, c64).argmax(-1)
    return torch.cdist(x64, c64).argmin(-1)
