"""The quantizer families (FSQ, LFQ, BSQ, VAR multi-scale, SimVQ projected codes, TokenFlow dual
codebook) against float64 loops written from each paper's definition, against vector-quantize-pytorch
where the definitions agree, and the invariants every polytok quantizer keeps.

Inputs are built with margins (values away from rounding boundaries, signs away from 0, nearest codes
well ahead of the second), so float rounding on another CPU cannot flip a decision.
"""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from polytok.quant import (
    BinarySphericalQuantizer,
    DualCodebookQuantizer,
    FiniteScalarQuantizer,
    LookupFreeQuantizer,
    MultiCodebookQuantizer,
    MultiScaleResidualQuantizer,
    ResidualQuantizer,
    VectorQuantizer,
)
from polytok.quant.multiscale import phi_schedule

# -- references from the papers' definitions (float64, one row and one channel at a time) -----------


def fsq_reference(z: torch.Tensor, levels: list[int], eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """FSQ indices (M,) and codes (M, C) by a loop over rows and channels, in float64."""
    rows = z.double().tolist()
    indices, codes = [], []
    for row in rows:
        index, radix, code = 0, 1, []
        for value, level in zip(row, levels):
            half = (level - 1) * (1 - eps) / 2
            offset = 0.5 if level % 2 == 0 else 0.0
            bounded = math.tanh(value + math.atanh(offset / half)) * half - offset
            digit = round(bounded) + level // 2
            assert 0 <= digit < level
            index += digit * radix
            radix *= level
            code.append((digit - level // 2) / (level // 2))
        indices.append(index)
        codes.append(code)
    return torch.tensor(indices), torch.tensor(codes, dtype=torch.float64)


def fsq_inputs(levels: list[int], rows: int, seed: int) -> torch.Tensor:
    """Latents whose bounded values sit within 0.3 of an integer level: rounding cannot flip."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(rows, len(levels), dtype=torch.float64)
    for c, level in enumerate(levels):
        half = (level - 1) * (1 - 1e-3) / 2
        offset = 0.5 if level % 2 == 0 else 0.0
        k = torch.randint(-(level // 2), (level - 1) // 2 + 1, (rows,), generator=g).double()
        target = k + (torch.rand(rows, generator=g, dtype=torch.float64) - 0.5) * 0.6
        target = target.clamp(-half - offset + 0.05, half - offset - 0.05)
        out[:, c] = torch.atanh((target + offset) / half) - math.atanh(offset / half)
    return out.float()


def binary_reference(
    x: torch.Tensor, value: float, temperature: float, group_size: int, spherical: bool
) -> dict[str, torch.Tensor]:
    """LFQ / BSQ by brute force over all 2^D codes, in float64: codes, indices (first channel the most
    significant bit), per-sample entropy and the grouped codebook entropy."""
    x = x.double()
    if spherical:
        x = x / x.norm(dim=-1, keepdim=True)
    d = x.shape[1]
    all_bits = list(itertools.product([0, 1], repeat=d))  # first channel the most significant bit
    table = torch.tensor(all_bits, dtype=torch.float64) * 2 * value - value  # (2^D, D)
    dist2 = ((x[:, None, :] - table[None]) ** 2).sum(-1)  # (M, 2^D)
    indices = dist2.argmin(-1)
    codes = table[indices]
    probs = torch.softmax(-dist2 / temperature, dim=-1)
    per_sample = -(probs * probs.log()).sum(-1).mean()
    avg = probs.mean(0)
    codebook = 0.0
    for g0 in range(0, d, group_size):  # marginal of each group of bits, summed from the full table
        key = torch.tensor([int("".join(map(str, bits[g0 : g0 + group_size])), 2) for bits in all_bits])
        marginal = torch.zeros(2**group_size, dtype=torch.float64).index_add_(0, key, avg)
        codebook = codebook + -(marginal * marginal.log()).sum()
    return {
        "codes": codes,
        "indices": indices,
        "per_sample": per_sample,
        "codebook": torch.as_tensor(codebook),
        "commitment": ((x - codes) ** 2).mean(),
    }


def signed_inputs(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Values with |x| in [0.2, 1.5]: no sign is near 0."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
    return sign * (0.2 + 1.3 * torch.rand(shape, generator=g))


# -- FSQ -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 6, 4], [3, 4]])
def test_fsq_matches_the_paper_definition(levels: list[int]) -> None:
    z = fsq_inputs(levels, 64, seed=len(levels))
    q = FiniteScalarQuantizer(levels).eval()
    out = q(z[None])
    ref_idx, ref_codes = fsq_reference(z, levels)
    assert torch.equal(out.indices[0], ref_idx)
    assert torch.equal(out.quantized[0], ref_codes.float())  # (d - L//2) / (L//2): one rounding each
    assert out.indices.max() < math.prod(levels)
    # Every code of the grid is reachable and decodes to its digits.
    all_idx = torch.arange(math.prod(levels))
    digits = q.indices_to_digits(all_idx)
    assert torch.equal((digits * torch.cumprod(torch.tensor([1, *levels[:-1]]), 0)).sum(-1), all_idx)


def test_fsq_indices_and_codes_equal_vector_quantize_pytorch() -> None:
    """Conventions that differ: vector-quantize-pytorch bounds with half = (L-1)(1+eps)/2 where the
    paper (and polytok) use (1-eps); with the margins of these inputs both round alike. Both take the
    first channel as the least significant digit and normalise codes by L // 2."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    levels = [8, 5, 5, 5]
    z = fsq_inputs(levels, 256, seed=3)[None]
    ours = FiniteScalarQuantizer(levels).eval()
    theirs = vqp.FSQ(levels=levels).eval()
    with torch.no_grad():
        out = ours(z)
        their_q, their_idx = theirs(z)
    assert torch.equal(out.indices, their_idx.long())
    assert torch.allclose(out.quantized, their_q, atol=1e-6)
    assert torch.equal(ours.indices_to_codes(their_idx.long()), out.quantized)


def test_fsq_gradient_flows_through_the_bound() -> None:
    levels = [8, 5, 5, 5]
    q = FiniteScalarQuantizer(levels)
    z = fsq_inputs(levels, 16, seed=5)[None].requires_grad_()
    g = torch.randn_like(z)
    (q(z).quantized * g).sum().backward()
    lv = torch.tensor(levels, dtype=torch.float64)
    half, offset = (lv - 1) * (1 - 1e-3) / 2, (lv % 2 == 0).double() * 0.5
    t = torch.tanh(z.detach().double() + torch.atanh(offset / half))
    expected = g.double() * (1 - t**2) * half / (lv // 2)  # d/dz [tanh(z + s) * half / (L // 2)]
    assert torch.allclose(z.grad.double(), expected, atol=1e-5)


def test_fsq_with_projection() -> None:
    torch.manual_seed(0)
    q = FiniteScalarQuantizer([8, 5, 5, 5], dim=16)
    z = torch.randn(2, 6, 16, requires_grad=True)
    out = q(z)
    assert out.quantized.shape == z.shape and out.indices.shape == (2, 6)
    out.quantized.square().sum().backward()
    assert z.grad.abs().sum() > 0 and q.project_in.weight.grad.abs().sum() > 0


# -- LFQ and BSQ -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spherical", [False, True])
@pytest.mark.parametrize("group_size", [6, 3, 2])
def test_lfq_bsq_match_brute_force_over_all_codes(spherical: bool, group_size: int) -> None:
    kind = BinarySphericalQuantizer if spherical else LookupFreeQuantizer
    temperature = 0.5 if spherical else 2.0  # soft enough for every code to carry probability
    q = kind(
        dim=6, group_size=group_size, temperature=temperature, beta=0.3, entropy_weight=0.7, diversity=0.8
    )
    x = signed_inputs((1, 40, 6), seed=group_size)
    out = q(x)
    ref = binary_reference(x[0], q.code_value, temperature, group_size, spherical)
    assert torch.equal(out.indices[0], ref["indices"])
    assert torch.allclose(out.quantized[0].double(), ref["codes"], atol=1e-6)
    assert torch.allclose(out.stats["per_sample_entropy"].double(), ref["per_sample"], atol=1e-5)
    assert torch.allclose(out.stats["codebook_entropy"].double(), ref["codebook"], atol=1e-5)
    assert torch.allclose(out.stats["commitment"].double(), ref["commitment"], atol=1e-6)
    expected = 0.3 * ref["commitment"] + 0.7 * (ref["per_sample"] - 0.8 * ref["codebook"])
    assert torch.allclose(out.loss.double(), expected, atol=1e-5)


def test_lfq_and_bsq_codes_equal_vector_quantize_pytorch() -> None:
    """Conventions: both take the first channel as the most significant bit and x = 0 as bit 0. What
    differs: with several codebooks vector-quantize-pytorch splits the channels into independent
    quantizers (indices (B, N, C)) and, when spherical, normalises each split; polytok's groups only
    factorise the entropy (one index of all bits, the whole vector normalised). Its codebook entropy
    averages the groups' entropies where polytok sums them (the entropy of the factorised joint)."""
    vqp = pytest.importorskip("vector_quantize_pytorch")
    x = signed_inputs((2, 32, 10), seed=11)
    for spherical in (False, True):
        ours = (BinarySphericalQuantizer if spherical else LookupFreeQuantizer)(dim=10).eval()
        theirs = vqp.LFQ(dim=10, codebook_size=2**10, spherical=spherical).eval()
        with torch.no_grad():
            out = ours(x)
            their_q, their_idx, _ = theirs(x)
        assert torch.equal(out.indices, their_idx.long())
        assert torch.allclose(out.quantized, their_q, atol=1e-6)


def test_bsq_gradient_goes_through_the_normalisation_and_lfq_is_straight_through() -> None:
    x = signed_inputs((1, 8, 6), seed=2).requires_grad_()
    g = torch.randn_like(x)
    (LookupFreeQuantizer(dim=6)(x).quantized * g).sum().backward()
    assert torch.equal(x.grad, g)
    x.grad = None
    (BinarySphericalQuantizer(dim=6)(x).quantized * g).sum().backward()
    u = F.normalize(x.detach(), dim=-1)
    expected = (g - u * (u * g).sum(-1, keepdim=True)) / x.detach().norm(dim=-1, keepdim=True)
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_large_lfq_never_builds_the_full_table() -> None:
    """36 bits in groups of 9: usage counters of 4 x 512 codes; indices need all 36 bits."""
    q = BinarySphericalQuantizer(dim=36, group_size=9)
    assert q.usage_ema.shape == (4, 512) and q.codebook_size == 2**36
    x = signed_inputs((1, 8, 36), seed=4)
    out = q(x)
    bits = (x[0] > 0).long()
    expected = sum(bits[:, j] * 2 ** (35 - j) for j in range(36))
    assert torch.equal(out.indices[0], expected)


# -- SimVQ projected codebooks ----------------------------------------------------------------------


def test_projected_codes_are_a_learned_map_of_a_frozen_basis() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(dim=6, codebook_size=24, projected=True, init_std=6**-0.5)
    book = q.codebooks[0]
    names = {name for name, _ in q.named_parameters()}
    assert names == {"codebooks.0.proj_weight", "codebooks.0.proj_bias"}  # the basis is a buffer
    basis = book.embed[0].double()
    codes = basis @ book.proj_weight[0].double().T + book.proj_bias[0].double()  # SimVQ: C W^T + b
    assert torch.allclose(book.codes()[0].double(), codes, atol=1e-6)
    # The search is over the projected codes: float64 brute force, on rows with a clear nearest code.
    z = torch.randn(1, 64, 6)
    dist2 = torch.cdist(z[0].double(), codes)
    top2 = dist2.topk(2, largest=False).values
    keep = (top2[:, 1] - top2[:, 0]) > 1e-3
    assert keep.sum() > 50
    out = q(z)
    assert torch.equal(out.indices[0][keep], dist2.argmin(-1)[keep])
    # The codebook loss trains the map, never the basis; one optimiser step moves every code.
    frozen = book.embed.clone()
    out.loss.backward()
    assert book.proj_weight.grad.abs().sum() > 0 and book.proj_bias.grad.abs().sum() > 0
    before = book.codes().detach().clone()
    torch.optim.SGD(q.parameters(), lr=0.5).step()
    assert torch.equal(book.embed, frozen)
    moved = (book.codes().detach() - before).norm(dim=-1)
    assert (moved > 0).all()


def test_projected_codes_refuse_what_writes_codes_directly() -> None:
    for kwargs in ({"update": "ema"}, {"kmeans_init": True}, {"dead_code_threshold": 1.0}):
        with pytest.raises(ValueError, match="projected"):
            MultiCodebookQuantizer(dim=8, num_codebooks=2, codebook_size=8, projected=True, **kwargs)


# -- VAR multi-scale residual quantization ---------------------------------------------------------


def area_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(out, in) float64 area down-sampling: output i averages inputs floor(i in/out) to ceil((i+1) in/out)
    (exclusive)."""
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        lo, hi = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def bicubic_matrix(size_in: int, size_out: int, a: float = -0.75) -> torch.Tensor:
    """(out, in) float64 bicubic up-sampling (Keys kernel, a = -0.75, half-pixel centres, edge
    replication), the definition PyTorch's align_corners=False bicubic follows."""

    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a if x < 2 else 0.0

    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    for o in range(size_out):
        src = (o + 0.5) * size_in / size_out - 0.5
        base = math.floor(src)
        for j in range(base - 1, base + 3):
            m[o, min(max(j, 0), size_in - 1)] += kernel(src - j)
    return m


def multiscale_reference(q: MultiScaleResidualQuantizer, f: torch.Tensor) -> dict[str, object]:
    """VAR's multi-scale residual quantization of f (H, W, D) in float64, one scale at a time."""
    codes = q.codebooks[0].embed[0].double()
    height, width = q.scales[-1]
    rest = f.double().permute(2, 0, 1)  # (D, H, W)
    f_hat = torch.zeros_like(rest)
    indices, gaps, prefixes = [], [], []
    for k, (h, w) in enumerate(q.scales):
        small = area_matrix(height, h) @ rest @ area_matrix(width, w).T  # (D, h, w)
        dist2 = torch.cdist(small.reshape(len(codes[0]), -1).T, codes)  # (h w, K)
        top2 = dist2.topk(2, largest=False).values
        gaps.append((top2[:, 1] - top2[:, 0]).min())
        idx = dist2.argmin(-1)
        grid = codes[idx].T.reshape(-1, h, w)
        up = bicubic_matrix(h, height) @ grid @ bicubic_matrix(w, width).T if k < len(q.scales) - 1 else grid
        phi = phi_schedule(len(q.scales), len(q.phis))[k]
        conv = q.phis[phi]
        mixed = F.conv2d(up[None], conv.weight.double(), conv.bias.double(), padding=1)[0]
        step = (1 - q.phi_ratio) * up + q.phi_ratio * mixed
        f_hat = f_hat + step
        rest = rest - step
        indices.append(idx)
        prefixes.append(f_hat.permute(1, 2, 0).clone())
    return {"indices": torch.cat(indices), "gap": min(gaps), "prefixes": prefixes}


def test_phi_schedule_is_vars_partial_sharing() -> None:
    """VAR: ticks linspace(1/12, 11/12, 4) for 4 convolutions (1/(2K) margins otherwise), scale k of S at
    k / (S - 1), the nearest tick; worked out by hand for these schedules."""
    assert phi_schedule(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert phi_schedule(10, 3) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert phi_schedule(10, 1) == [0] * 10
    assert phi_schedule(5, 0) == [-1] * 5


def test_multiscale_matches_a_float64_loop_of_vars_definition() -> None:
    torch.manual_seed(0)
    scales = (1, 2, 3, 5, 8)
    q = MultiScaleResidualQuantizer(dim=4, codebook_size=16, scales=scales, phi_count=2, beta=0.3).eval()
    f = torch.randn(2, 8, 8, 4) * 1.5
    out = q(f)
    assert out.indices.shape == (2, sum(s * s for s in scales))
    for b in range(2):
        ref = multiscale_reference(q, f[b])
        assert ref["gap"] > 1e-4  # no near-tie anywhere: float32 cannot choose another code
        assert torch.equal(out.indices[b], ref["indices"])
        for k, expected in enumerate(ref["prefixes"]):
            assert torch.allclose(out.prefix(k + 1)[b].double(), expected, atol=1e-5)
        assert torch.allclose(out.quantized[b].double(), ref["prefixes"][-1], atol=1e-5)
    # Loss: the mean over scales of beta |f - f_hat_k|^2 + |f_hat_k - f|^2 (both terms alike in value).
    errs = [
        torch.stack(
            [(multiscale_reference(q, f[b])["prefixes"][k] - f[b].double()).square().mean() for b in range(2)]
        ).mean()
        for k in range(len(scales))
    ]
    assert torch.allclose(out.loss.double(), 1.3 * torch.stack(errs).mean(), atol=1e-5)
    # split_indices: one (B, h, w) map per scale; a prefix of the flat indices decodes those scales.
    maps = q.split_indices(out.indices)
    assert [tuple(m.shape) for m in maps] == [(2, s, s) for s in scales]
    with torch.no_grad():
        assert torch.equal(q.indices_to_codes(out.indices[:, : 1 + 4 + 9]), out.prefix(3))
    with pytest.raises(ValueError, match="first K scales"):
        q.indices_to_codes(out.indices[:, :7])


def test_multiscale_default_schedule_and_gradients() -> None:
    torch.manual_seed(0)
    q = MultiScaleResidualQuantizer(dim=8, codebook_size=32)
    assert q.scales[-1] == (16, 16) and q.num_tokens == 680 and len(q.phis) == 4
    z = torch.randn(1, 16, 16, 8, requires_grad=True)
    out = q(z)
    g = torch.randn_like(z)
    (out.quantized * g).sum().backward(retain_graph=True)
    assert torch.equal(z.grad, g)  # straight through to the input
    out.loss.backward()  # the codebook and every phi convolution learn from the loss
    assert q.codebooks[0].embed.grad.abs().sum() > 0
    assert all(conv.weight.grad.abs().sum() > 0 for conv in q.phis)
    with pytest.raises(ValueError, match="last scale"):
        q(torch.randn(1, 8, 8, 8))


# -- TokenFlow dual codebook -----------------------------------------------------------------------


def test_dual_codebook_shared_index_is_the_weighted_brute_force() -> None:
    torch.manual_seed(0)
    ws, wp = 0.7, 2.5
    q = DualCodebookQuantizer(
        semantic_dim=5, pixel_dim=3, codebook_size=32, semantic_weight=ws, pixel_weight=wp, beta=0.4
    )
    s, p = torch.randn(2, 30, 5), torch.randn(2, 30, 3)
    out = q(s, p)
    sem, pix = q.codebooks[0].embed[0].double(), q.codebooks[1].embed[0].double()
    chosen, gaps = [], []
    for row_s, row_p in zip(s.reshape(-1, 5).double(), p.reshape(-1, 3).double()):
        costs = [
            ws * (row_s - sem[k]).square().sum() + wp * (row_p - pix[k]).square().sum() for k in range(32)
        ]
        order = sorted(range(32), key=lambda k: costs[k])
        chosen.append(order[0])
        gaps.append(costs[order[1]] - costs[order[0]])
    assert min(gaps) > 1e-4
    chosen = torch.tensor(chosen).view(2, 30)
    assert torch.equal(out.indices, chosen)
    assert torch.allclose(out.semantic.double(), sem[chosen], atol=1e-6)
    assert torch.allclose(out.pixel.double(), pix[chosen], atol=1e-6)
    # Neither stream alone picks these codes: the index really is the joint one.
    assert not torch.equal(chosen, torch.cdist(s.double(), sem[None]).argmin(-1))
    assert not torch.equal(chosen, torch.cdist(p.double(), pix[None]).argmin(-1))
    err = F.mse_loss(s.double(), sem[chosen]) + F.mse_loss(p.double(), pix[chosen])
    assert torch.allclose(out.loss.double(), 1.4 * err, atol=1e-5)


def test_dual_codebook_cosine_streams_and_restarts_in_pairs() -> None:
    torch.manual_seed(0)
    q = DualCodebookQuantizer(semantic_dim=4, pixel_dim=4, codebook_size=16, normalize=True)
    s, p = torch.randn(1, 20, 4) * 3, torch.randn(1, 20, 4) * 0.1
    q.eval()
    out = q(s, p)
    sem, pix = (book.codes()[0].detach() for book in q.codebooks)
    cost = (2 - 2 * F.normalize(s[0], dim=-1) @ sem.T) + (2 - 2 * F.normalize(p[0], dim=-1) @ pix.T)
    assert torch.equal(out.indices[0], cost.argmin(-1))
    # EMA with restarts: a restarted code pair comes from one position of both streams.
    q = DualCodebookQuantizer(
        semantic_dim=3, pixel_dim=2, codebook_size=64, update="ema", dead_code_threshold=2.0
    )
    s, p = torch.randn(1, 10, 3) + 10, torch.randn(1, 10, 2) - 10  # far from every initial code
    out = q(s, p)
    assert out.stats["restarts"] > 0
    sem, pix = q.codebooks[0].embed[0], q.codebooks[1].embed[0]
    moved = (sem[:, 0] > 5).nonzero()[:, 0]
    assert len(moved) > 0 and (pix[moved, 0] < -5).all()
    for k in moved.tolist():
        row = ((s[0] - sem[k]).abs().sum(-1) < 1e-5).nonzero()[:, 0]
        assert len(row) == 1 and torch.allclose(p[0, row[0]], pix[k])


# -- invariants of every family ---------------------------------------------------------------------


def _tokens(dim: int):
    return lambda g, b: (torch.randn(b, 6, dim, generator=g),)


FAMILIES = {
    "fsq": (lambda: FiniteScalarQuantizer([8, 5, 5, 5]), _tokens(4)),
    "fsq-proj": (lambda: FiniteScalarQuantizer([5, 5, 5], dim=8), _tokens(8)),
    "lfq": (lambda: LookupFreeQuantizer(dim=12, group_size=4), _tokens(12)),
    "bsq": (lambda: BinarySphericalQuantizer(dim=12), _tokens(12)),
    "vq-simvq": (lambda: VectorQuantizer(dim=8, codebook_size=32, projected=True), _tokens(8)),
    "msrq": (
        lambda: MultiScaleResidualQuantizer(dim=4, codebook_size=32, scales=(1, 2, 4), phi_count=2),
        lambda g, b: (torch.randn(b, 4, 4, 4, generator=g),),
    ),
    "msrq-ema": (
        lambda: MultiScaleResidualQuantizer(
            dim=4, codebook_size=16, scales=(1, (2, 3), (3, 5)), update="ema"
        ),
        lambda g, b: (torch.randn(b, 3, 5, 4, generator=g),),
    ),
    "dual": (
        lambda: DualCodebookQuantizer(semantic_dim=6, pixel_dim=3, codebook_size=16, pixel_weight=2.0),
        lambda g, b: (torch.randn(b, 5, 6, generator=g), torch.randn(b, 5, 3, generator=g)),
    ),
    "dual-ema": (
        lambda: DualCodebookQuantizer(
            semantic_dim=4, pixel_dim=4, codebook_size=16, update="ema", normalize=True
        ),
        lambda g, b: (torch.randn(b, 5, 4, generator=g), torch.randn(b, 5, 4, generator=g)),
    ),
    "rmcq-simvq": (
        lambda: ResidualQuantizer(dim=8, levels=2, codebook_size=16, num_codebooks=2, projected=True),
        _tokens(8),
    ),
}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _inputs(name: str, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return FAMILIES[name][1](torch.Generator().manual_seed(seed), batch)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_roundtrip_gradient_and_eval_codes(name: str) -> None:
    torch.manual_seed(0)
    q = FAMILIES[name][0]()
    args = tuple(a.requires_grad_() for a in _inputs(name))
    out = q(*args)
    assert out.indices.dtype == torch.int64 and (out.indices >= 0).all()
    assert out.quantized.shape[0] == args[0].shape[0] and torch.isfinite(out.loss)
    loss = out.quantized.square().sum() + out.loss
    loss.backward()
    for a in args:  # the straight-through path reaches every input
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert out.stats["skipped_update"].item() == 0.0
    q.eval()
    with torch.no_grad():
        ev = q(*(a.detach() for a in args))
    assert torch.equal(q.indices_to_codes(ev.indices), ev.quantized)
    usage = q.codebook_usage()
    assert (usage["usage"] > 0).all() and (usage["perplexity"] >= 1).all()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_state_dict_round_trip_resumes_exactly(name: str) -> None:
    torch.manual_seed(0)
    q = FAMILIES[name][0]()
    for step in range(3):
        q(*_inputs(name, seed=step))
    torch.manual_seed(1)  # a fresh module with other initial values, then the saved state
    resumed = FAMILIES[name][0]()
    resumed.load_state_dict(q.state_dict())
    assert_same_state(snapshot(resumed), snapshot(q))
    nxt = _inputs(name, seed=9)
    a, b = q(*nxt), resumed(*nxt)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.quantized, b.quantized)
    assert torch.equal(a.loss, b.loss)
    assert_same_state(snapshot(resumed), snapshot(q))
    for key in ("usage", "perplexity"):
        assert torch.equal(q.codebook_usage()[key], resumed.codebook_usage()[key])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_bad_input_is_a_reported_skip_in_training_and_an_error_in_eval(name: str, value: float) -> None:
    torch.manual_seed(0)
    q = FAMILIES[name][0]()
    q(*_inputs(name, seed=1))  # some statistics already
    before = snapshot(q)
    args = _inputs(name)
    poisoned = tuple(a.clone() for a in args)
    poisoned[-1].view(-1)[5] = value
    out = q(*poisoned)
    assert torch.isnan(out.loss) and out.stats["skipped_update"].item() == 1.0
    assert (out.indices == -1).any() and (out.indices >= 0).any()
    assert torch.isnan(out.quantized).any()
    assert_same_state(snapshot(q), before)
    q.eval()
    with pytest.raises(ValueError, match="NaN or Inf" if value != 1e30 else "magnitude"):
        q(*poisoned)
    with pytest.raises(TypeError, match="float"):
        q(*(a.long() for a in args))  # wrong dtype: a TypeError, as the other quantizers
    with pytest.raises(ValueError, match="shape"):
        q(*(a[..., :-1] for a in args))  # wrong channel count
    with pytest.raises(ValueError, match="shape"):
        q(*(a[0] for a in args))  # a missing batch dim
    q.train()
    assert q(*args).stats["skipped_update"].item() == 0.0


@pytest.mark.parametrize("name", list(FAMILIES))
def test_empty_batch_is_a_skip(name: str) -> None:
    torch.manual_seed(0)
    q = FAMILIES[name][0]()
    before = snapshot(q)
    args = _inputs(name, batch=0)
    out = q(*args)
    assert out.indices.shape[0] == 0 and out.loss.item() == 0.0
    assert out.stats["skipped_update"].item() == 1.0
    assert_same_state(snapshot(q), before)


# -- statistics across ranks -----------------------------------------------------------------------

SYNCED = ["fsq", "lfq", "bsq", "msrq-ema", "dual-ema", "vq-simvq"]
DDP_STEPS, DDP_BATCH = 3, 4


def _ddp_run(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Each synchronised family for a few training steps on this rank's share of every batch."""
    result = {}
    for name in SYNCED:
        torch.manual_seed(0)
        q = FAMILIES[name][0]()
        per = DDP_BATCH // world
        for step in range(DDP_STEPS):
            args = _inputs(name, batch=DDP_BATCH, seed=step)
            out = q(*(a[rank * per : (rank + 1) * per].requires_grad_() for a in args))
            assert out.stats["skipped_update"].item() == 0.0
            (out.quantized.square().mean() + out.loss).backward()  # collectives in backward too
            if "codebook_entropy" in out.stats:  # a batch statistic: over every rank's rows
                result[f"{name}/codebook_entropy/{step}"] = out.stats["codebook_entropy"]
        for key, value in q.state_dict().items():
            result[f"{name}/{key}"] = value.clone()
    return result


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_ddp_run(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_keep_the_statistics_of_one_process_with_the_whole_batch(tmp_path) -> None:
    single = _ddp_run(0, 1)
    assert any(key.endswith("usage_ema") and value.sum() > 0 for key, value in single.items())
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0].keys() == single.keys() == ranks[1].keys()
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # identical on every rank
        # ... and those of one process on the concatenated batch (sums split over ranks: rounding only)
        assert torch.allclose(ranks[0][key].double(), value.double(), atol=1e-5, rtol=1e-5), key
