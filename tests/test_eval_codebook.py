"""Codebook health from codes of every code shape, against a naive per-entry loop."""

from __future__ import annotations

import math

import pytest
import torch

from polytok.eval import CodebookUsage


def naive_stats(codes: torch.Tensor, code_shape: tuple[int, ...], residual: bool, k: int) -> dict[str, list]:
    """Loop over (level, codebook) columns and entries; returns nested lists [level][codebook]."""
    if len(code_shape) == 0:
        levels, books = 1, 1
    elif len(code_shape) == 1:
        levels, books = (code_shape[0], 1) if residual else (1, code_shape[0])
    else:
        levels, books = code_shape
    flat = codes.reshape(-1, levels, books)
    out: dict[str, list] = {"usage": [], "perplexity": [], "entropy_bits": [], "dead": []}
    for level in range(levels):
        rows = {name: [] for name in out}
        for book in range(books):
            column = flat[:, level, book].tolist()
            counts = [0] * k
            for value in column:
                counts[value] += 1
            entropy = 0.0
            for c in counts:
                if c:
                    p = c / len(column)
                    entropy -= p * math.log2(p)
            rows["usage"].append(sum(c > 0 for c in counts) / k)
            rows["perplexity"].append(2**entropy)
            rows["entropy_bits"].append(entropy)
            rows["dead"].append(sum(c == 0 for c in counts))
        for name in out:
            out[name].append(rows[name])
    return out


CASES = [
    ((), False, "vq"),
    ((3,), False, "multi-codebook"),
    ((4,), True, "residual"),
    ((3, 2), True, "residual multi-codebook"),
]


@pytest.mark.parametrize(("code_shape", "residual", "kind"), CASES, ids=[c[2] for c in CASES])
def test_codebook_stats_match_naive_loop(code_shape, residual, kind) -> None:
    k = 37
    gen = torch.Generator().manual_seed(0)
    # A skewed distribution (squared uniform) so that some entries stay unused and entropies differ.
    batches = [
        (torch.rand((b, 3, 5, *code_shape), generator=gen) ** 2 * k).long().clamp_max(k - 1) for b in (2, 3)
    ]
    usage = CodebookUsage(k, code_shape, residual=residual)
    for codes in batches:
        usage.update(codes)
    stats = usage.compute()
    expected = naive_stats(torch.cat(batches), code_shape, residual, k)
    for name in ("usage", "perplexity", "entropy_bits"):
        assert torch.allclose(getattr(stats, name), torch.tensor(expected[name], dtype=torch.float64)), name
    assert stats.dead.tolist() == expected["dead"]
    assert stats.num_tokens == 5 * 3 * 5
    assert int(stats.counts.sum()) == stats.num_tokens * stats.counts.shape[0] * stats.counts.shape[1]
    per_level = stats.per_level()
    assert per_level["usage"].shape == (stats.num_levels,)
    assert per_level["dead"].tolist() == [sum(row) for row in expected["dead"]]
    assert stats.summary()["dead"] == sum(map(sum, expected["dead"]))


def test_uniform_codes_reach_full_perplexity() -> None:
    k = 16
    codes = torch.arange(k).repeat(4).reshape(4, 4, 4)  # (B, h, w): each entry exactly 4 times
    usage = CodebookUsage(k)
    usage.update(codes)
    stats = usage.compute()
    assert stats.usage.item() == 1.0
    assert stats.entropy_bits.item() == pytest.approx(4.0)
    assert stats.perplexity.item() == pytest.approx(16.0)
    assert stats.dead.item() == 0


def test_codebook_usage_rejects_bad_codes() -> None:
    usage = CodebookUsage(8, (2,), residual=True)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        usage.update(torch.full((1, 2, 2, 2), 8))
    with pytest.raises(ValueError, match="shape"):
        usage.update(torch.zeros(1, 2, 2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        usage.update(torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="ambiguous"):
        CodebookUsage(8, (2,))
