"""The shared nearest-code kernel against brute force and a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytok.quant import nearest_codes, nearest_codes_reference


def naive_nearest(x: torch.Tensor, codes: torch.Tensor, cosine: bool) -> torch.Tensor:
    """One vector and one code at a time, in float64."""
    groups, n, _ = x.shape
    out = torch.empty(groups, n, dtype=torch.long)
    for g in range(groups):
        for i in range(n):
            best, best_j = None, -1
            for j in range(codes.shape[1]):
                if cosine:
                    score = float((x[g, i].double() * codes[g, j].double()).sum())
                else:
                    score = -float(((x[g, i].double() - codes[g, j].double()) ** 2).sum())
                if best is None or score > best:
                    best, best_j = score, j
            out[g, i] = best_j
    return out


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("groups", [1, 3])
def test_matches_naive_loop(cosine: bool, groups: int) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(groups, 37, 5, generator=g)
    codes = torch.randn(groups, 23, 5, generator=g)
    if cosine:
        x, codes = F.normalize(x, dim=-1), F.normalize(codes, dim=-1)
    got = nearest_codes(x, codes, cosine=cosine, buffer_bytes=4 * groups * 23 * 4)  # 4-row chunks
    assert torch.equal(got, naive_nearest(x, codes, cosine))


@pytest.mark.parametrize("buffer_bytes", [1, 4096, 1 << 22])
def test_chunking_does_not_change_result(buffer_bytes: int) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1000, 16, generator=g)
    codes = torch.randn(2, 512, 16, generator=g)
    assert torch.equal(nearest_codes(x, codes, buffer_bytes=buffer_bytes), nearest_codes_reference(x, codes))


def test_large_codebook_matches_float64_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 512, 32, generator=g)
    codes = torch.randn(1, 32768, 32, generator=g)
    assert torch.equal(nearest_codes(x, codes), nearest_codes_reference(x, codes))


def test_bf16_input_is_searched_in_fp32() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 200, 8, generator=g).bfloat16()
    codes = torch.randn(1, 300, 8, generator=g)
    assert torch.equal(nearest_codes(x, codes), nearest_codes_reference(x.float(), codes))


def test_empty_input_and_shape_errors() -> None:
    assert nearest_codes(torch.randn(1, 0, 4), torch.randn(1, 8, 4)).shape == (1, 0)
    with pytest.raises(ValueError, match="groups or dim"):
        nearest_codes(torch.randn(1, 3, 4), torch.randn(1, 8, 5))
    with pytest.raises(ValueError, match=r"\(G, N, d\)"):
        nearest_codes(torch.randn(3, 4), torch.randn(1, 8, 4))
