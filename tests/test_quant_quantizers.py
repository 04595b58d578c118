"""Public quantizers: shapes, invariants, losses and gradients against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytok.quant import LevelledQuantizer, MultiCodebookQuantizer, ResidualQuantizer, VectorQuantizer

CASES = {
    "vq": (lambda: VectorQuantizer(dim=8, codebook_size=64, normalize=True), 8, ()),
    "vq-proj": (lambda: VectorQuantizer(dim=12, codebook_size=32, codebook_dim=4), 12, ()),
    "mcq": (
        lambda: MultiCodebookQuantizer(dim=32, num_codebooks=4, codebook_size=64, normalize=True),
        32,
        (4,),
    ),
    "rvq": (lambda: ResidualQuantizer(dim=16, levels=5, codebook_size=64, update="ema"), 16, (5,)),
    "rmcq": (lambda: ResidualQuantizer(dim=16, levels=3, codebook_size=32, num_codebooks=4), 16, (3, 4)),
    "rvq-shared": (
        lambda: ResidualQuantizer(dim=8, levels=4, codebook_size=32, shared_codebook=True),
        8,
        (4,),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_shapes_gradients_and_roundtrip(name: str) -> None:
    torch.manual_seed(0)
    make, dim, code_shape = CASES[name]
    q = make()
    assert q.code_shape == code_shape
    z = torch.randn(3, 10, dim, requires_grad=True)
    out = q(z)
    assert out.quantized.shape == z.shape
    assert out.indices.shape == (3, 10, *code_shape) and out.indices.dtype == torch.int64
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    (out.quantized.square().sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    q.eval()
    with torch.no_grad():
        ev = q(z)
    assert torch.equal(q.indices_to_codes(ev.indices), ev.quantized)


def test_vq_matches_naive_nearest_and_projections() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(dim=6, codebook_size=20).eval()
    z = torch.randn(2, 7, 6)
    out = q(z)
    codes = q.codebooks[0].embed[0]
    for b in range(2):
        for n in range(7):
            d = ((z[b, n] - codes) ** 2).sum(-1)
            assert out.indices[b, n] == int(d.argmin())
            assert torch.allclose(out.quantized[b, n], codes[out.indices[b, n]])
    proj = VectorQuantizer(dim=12, codebook_size=16, codebook_dim=3)
    assert isinstance(proj.project_in, torch.nn.Linear) and proj.project_in.out_features == 3
    assert isinstance(q.project_in, torch.nn.Identity)


def test_mcq_chunks_are_independent_cosine_codebooks() -> None:
    torch.manual_seed(0)
    q = MultiCodebookQuantizer(dim=12, num_codebooks=3, codebook_size=10, normalize=True).eval()
    z = torch.randn(1, 5, 12)
    out = q(z)
    codes = q.codebooks[0].codes()  # (3, 10, 4), unit norm
    assert torch.allclose(codes.norm(dim=-1), torch.ones(3, 10), atol=1e-6)
    for c in range(3):
        chunk = F.normalize(z[0, :, 4 * c : 4 * (c + 1)], dim=-1)
        assert torch.equal(out.indices[0, :, c], (chunk @ codes[c].T).argmax(-1))
        assert torch.allclose(out.quantized[0, :, 4 * c : 4 * (c + 1)], codes[c][out.indices[0, :, c]])


def test_residual_levels_match_naive_loop_and_prefixes() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=4, levels=4, codebook_size=16).eval()
    z = torch.randn(2, 6, 4)
    out = q(z)
    residual = z.clone()
    total = torch.zeros_like(z)
    for level in range(4):
        codes = q.codebooks[level].embed[0]
        idx = torch.cdist(residual.double(), codes.double().unsqueeze(0)).argmin(-1)
        assert torch.equal(out.indices[..., level], idx)
        total = total + codes[idx]
        residual = residual - codes[idx]
        # Any prefix decodes, from indices or from the forward output.
        assert torch.allclose(q.indices_to_codes(out.indices[..., : level + 1]), total, atol=1e-6)
        assert torch.allclose(out.prefix(level + 1), total, atol=1e-6)
    assert torch.allclose(out.quantized, total, atol=1e-6)
    with pytest.raises(ValueError, match="prefix depth"):
        out.prefix(5)


def test_residual_multicodebook_prefix_of_levels() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=8, levels=3, codebook_size=8, num_codebooks=2).eval()
    out = q(torch.randn(1, 4, 8))
    assert torch.allclose(q.indices_to_codes(out.indices[..., :2, :]), out.prefix(2), atol=1e-6)


def test_grad_mode_loss_and_gradients_by_hand() -> None:
    torch.manual_seed(0)
    beta = 0.3
    q = VectorQuantizer(dim=4, codebook_size=8, beta=beta)
    z = torch.randn(2, 5, 4, requires_grad=True)
    out = q(z)
    codes = q.codebooks[0].embed[0]
    chosen = codes[out.indices].detach()
    expected = beta * F.mse_loss(z.detach(), chosen) + F.mse_loss(chosen, z.detach())
    assert torch.allclose(out.loss, expected, atol=1e-6)
    # Straight-through: d quantized / d z is the identity, and the codes get no gradient from it.
    g = torch.randn_like(z)
    (out.quantized * g).sum().backward(retain_graph=True)
    assert torch.allclose(z.grad, g)
    assert q.codebooks[0].embed.grad is None or q.codebooks[0].embed.grad.abs().sum() == 0
    # The codebook loss pulls the chosen codes towards z: gradient 2 (q - z) / numel on chosen rows.
    z.grad = None
    out.loss.backward()
    grad = q.codebooks[0].embed.grad[0]
    manual = torch.zeros_like(codes)
    manual.index_add_(0, out.indices.reshape(-1), 2 * (chosen - z.detach()).reshape(-1, 4) / z.numel())
    assert torch.allclose(grad, manual, atol=1e-6)


def test_ema_mode_loss_is_commitment_only_and_codes_are_buffers() -> None:
    q = VectorQuantizer(dim=4, codebook_size=8, update="ema", beta=0.5)
    assert not any(p.requires_grad for p in q.codebooks.parameters())
    z = torch.randn(2, 5, 4)
    q.eval()
    out = q(z)
    chosen = q.codebooks[0].embed[0][out.indices]
    assert torch.allclose(out.loss, 0.5 * F.mse_loss(z, chosen), atol=1e-6)


def test_rotation_trick_forward_value_and_gradient_by_hand() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(dim=3, codebook_size=5, rotation_trick=True)
    z = torch.randn(1, 4, 3, requires_grad=True)
    out = q(z)
    codes = q.codebooks[0].embed[0][out.indices].detach()
    assert torch.allclose(out.quantized, codes, atol=1e-5)
    g = torch.randn_like(z)
    (out.quantized * g).sum().backward()
    for n in range(4):
        e, c = z[0, n].detach(), codes[0, n]
        u, v = e / e.norm(), c / c.norm()
        r = (u + v) / (u + v).norm()
        rot = torch.eye(3) - 2 * torch.outer(r, r) + 2 * torch.outer(v, u)
        jac = (c.norm() / e.norm()) * rot
        assert torch.allclose(rot @ u, v, atol=1e-5)  # R rotates z's direction onto q's
        assert torch.allclose(z.grad[0, n], jac.T @ g[0, n], atol=1e-5)


def test_entropy_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    kw = dict(dim=4, codebook_size=6, normalize=True)
    plain = VectorQuantizer(**kw)
    with_ent = VectorQuantizer(**kw, entropy_weight=0.5, entropy_temperature=0.1)
    with_ent.load_state_dict(plain.state_dict())
    z = torch.randn(2, 5, 4)
    base, full = plain(z).loss, with_ent(z).loss
    x = F.normalize(z.reshape(10, 4), dim=-1)
    p = torch.softmax(x @ with_ent.codebooks[0].codes()[0].T / 0.1, dim=-1)
    per_sample = -(p * p.log()).sum(-1).mean()
    avg = p.mean(0)
    expected = per_sample - (-(avg * avg.log()).sum())
    assert torch.allclose(full - base, 0.5 * expected, atol=1e-5)


def test_stats_usage_and_perplexity_by_hand() -> None:
    torch.manual_seed(0)
    q = MultiCodebookQuantizer(dim=4, num_codebooks=2, codebook_size=5)
    out = q(torch.randn(3, 7, 4))
    for c in range(2):
        counts = torch.bincount(out.indices[..., c].reshape(-1), minlength=5).float()
        p = counts / counts.sum()
        ppl = torch.exp(-(p[p > 0] * p[p > 0].log()).sum())
        assert torch.isclose(out.stats["usage"][0, c], (counts > 0).float().mean())
        assert torch.isclose(out.stats["perplexity"][0, c], ppl, atol=1e-5)
    usage = q.codebook_usage()
    assert usage["usage"].shape == (1, 2) and (usage["usage"] > 0).all()


def test_quantize_dropout_uses_random_prefix() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=4, levels=6, codebook_size=8, quantize_dropout=1.0)
    depths = set()
    for _ in range(20):
        out = q(torch.randn(2, 3, 4))
        valid = (out.indices >= 0).all(dim=(0, 1))
        depth = int(valid.sum())
        assert torch.equal(valid, torch.arange(6) < depth)  # a prefix, the rest -1
        assert torch.allclose(out.quantized, out.prefix(depth), atol=1e-6)
        depths.add(depth)
    assert len(depths) > 2
    q.eval()
    assert (q(torch.randn(2, 3, 4)).indices >= 0).all()  # never in eval


def test_bf16_autocast_keeps_fp32_search() -> None:
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=8, levels=3, codebook_size=64).eval()
    z = torch.randn(2, 50, 8)
    ref = q(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z)
    assert torch.equal(out.indices, ref)
    assert out.quantized.dtype == torch.float32
    out16 = q(z.bfloat16())
    assert out16.quantized.dtype == torch.bfloat16
    assert torch.equal(out16.indices, q(z.bfloat16().float()).indices)


@pytest.mark.parametrize("quantizer", [v[0] for v in CASES.values()], ids=list(CASES))
def test_state_dict_roundtrip(quantizer) -> None:
    torch.manual_seed(0)
    a = quantizer()
    z = torch.randn(2, 4, a.dim)
    a(z)  # one training step moves EMA buffers and counters
    b = quantizer()
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert torch.equal(a(z).indices, b(z).indices)


def test_clear_errors() -> None:
    q = ResidualQuantizer(dim=8, levels=2, codebook_size=16)
    with pytest.raises(ValueError, match=r"\(B, N, 8\)"):
        q(torch.randn(4, 8))
    with pytest.raises(ValueError, match="last dim 8"):
        q(torch.randn(1, 4, 7))
    with pytest.raises(ValueError, match="NaN or Inf"):
        q.eval()(torch.full((1, 2, 8), float("nan")))
    q.train()
    with pytest.raises(TypeError, match="float tensor"):
        q(torch.ones(1, 2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        q.indices_to_codes(torch.tensor([[[0, 16]]]))
    with pytest.raises(ValueError, match="out of range"):
        q.indices_to_codes(torch.tensor([[[-1, 0]]]))
    with pytest.raises(ValueError, match="do not fit code shape"):
        q.indices_to_codes(torch.zeros(1, 1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        q.indices_to_codes(torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="divisible"):
        MultiCodebookQuantizer(dim=10, num_codebooks=3, codebook_size=4)
    with pytest.raises(ValueError, match="single-level"):
        ResidualQuantizer(dim=8, levels=2, codebook_size=4, normalize=True)
    with pytest.raises(ValueError, match="update"):
        VectorQuantizer(dim=8, codebook_size=4, update="adam")
    with pytest.raises(TypeError, match="levels"):
        VectorQuantizer(dim=8, codebook_size=4, levels=2)


def test_every_public_quantizer_is_one_engine() -> None:
    for make, _, _ in CASES.values():
        assert isinstance(make(), LevelledQuantizer)


def test_non_finite_training_input_skips_codebook_update() -> None:
    """In training a NaN latent gives a NaN loss (the trainer skips the step) and leaves codebooks alone."""
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=4, levels=2, codebook_size=8, update="ema", dead_code_threshold=1.0)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    z = torch.randn(2, 5, 4)
    z[1, 2, 0] = float("inf")
    out = q(z)
    assert not torch.isfinite(out.loss)
    assert out.stats["skipped_update"].item() == 1.0
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert q(torch.randn(2, 5, 4)).stats["skipped_update"].item() == 0.0
