"""Codebook learning and health: EMA k-means, warm-up, k-means init, dead-code restart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from polytok.quant import Codebook, ResidualQuantizer, VectorQuantizer


def hand_ema_step(embed, cluster_size, embed_sum, x, decay, eps):
    """One EMA k-means step written out code by code, vector by vector."""
    k, d = embed.shape
    counts = torch.zeros(k)
    sums = torch.zeros(k, d)
    for v in x:
        j = int(((v - embed) ** 2).sum(-1).argmin())
        counts[j] += 1
        sums[j] += v
    cluster_size = decay * cluster_size + (1 - decay) * counts
    embed_sum = decay * embed_sum + (1 - decay) * sums
    n = cluster_size.sum()
    smoothed = (cluster_size + eps) / (n + k * eps) * n
    return embed_sum / smoothed[:, None], cluster_size, embed_sum


def test_ema_update_matches_hand_computed_step() -> None:
    torch.manual_seed(0)
    decay, eps = 0.9, 1e-3
    q = VectorQuantizer(dim=3, codebook_size=6, update="ema", decay=decay, eps=eps)
    book = q.codebooks[0]
    embed, cs, es = book.embed[0].clone(), book.cluster_size[0].clone(), book.embed_sum[0].clone()
    for _ in range(3):
        z = torch.randn(2, 8, 3)
        q(z)
        embed, cs, es = hand_ema_step(embed, cs, es, z.reshape(-1, 3), decay, eps)
        assert torch.allclose(book.embed[0], embed, atol=1e-5)
        assert torch.allclose(book.cluster_size[0], cs, atol=1e-6)
    assert int(book.steps) == 3


def test_ema_waits_for_warmup_then_starts() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(dim=3, codebook_size=6, update="ema", ema_warmup_steps=2, decay=0.8, eps=1e-5)
    book = q.codebooks[0]
    start = book.embed.clone()
    q(torch.randn(1, 8, 3))
    q(torch.randn(1, 8, 3))
    assert torch.equal(book.embed, start)  # frozen during warm-up
    z = torch.randn(1, 8, 3)
    q(z)
    expected, _, _ = hand_ema_step(start[0], torch.ones(6), start[0].clone(), z.reshape(-1, 3), 0.8, 1e-5)
    assert torch.allclose(book.embed[0], expected, atol=1e-5)


def test_ema_options_reject_unknown_rules() -> None:
    with pytest.raises(ValueError, match="ema_warmup must be 'frozen' or 'counts_only'"):
        Codebook(1, 4, 2, update="ema", ema_warmup="official")
    with pytest.raises(ValueError, match="ema_min_cluster_size must be >= 0"):
        Codebook(1, 4, 2, update="ema", ema_min_cluster_size=-1.0)


def test_cosine_ema_keeps_unit_codes() -> None:
    q = VectorQuantizer(dim=4, codebook_size=8, update="ema", normalize=True)
    for _ in range(3):
        q(torch.randn(2, 16, 4) * 5)
    assert torch.allclose(q.codebooks[0].embed.norm(dim=-1), torch.ones(1, 8), atol=1e-5)


def test_eval_mode_never_updates() -> None:
    q = ResidualQuantizer(dim=4, levels=2, codebook_size=8, update="ema", dead_code_threshold=5.0).eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 8, 4))
    for k, v in q.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_kmeans_init_finds_separated_clusters() -> None:
    torch.manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0]])
    points = centres.repeat_interleave(64, 0) + 0.1 * torch.randn(256, 2)
    q = VectorQuantizer(dim=2, codebook_size=32, kmeans_init=True, kmeans_iters=10)
    assert not bool(q.codebooks[0].initialized)
    q(points[torch.randperm(256)].unsqueeze(0))
    codes = q.codebooks[0].embed[0].detach()
    dist = torch.cdist(centres, codes)
    assert (dist.min(1).values < 0.2).all()  # every cluster got codes...
    assert (dist.min(0).values < 0.5).all()  # ...and every code sits in a cluster (random init would not)
    assert bool(q.codebooks[0].initialized)
    # Initialised once only: a grad-mode codebook does not move without an optimiser.
    q(torch.randn(1, 16, 2))
    assert torch.equal(q.codebooks[0].embed[0].detach(), codes)


def test_dead_codes_restart_from_batch_vectors() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(dim=2, codebook_size=8, update="ema", dead_code_threshold=0.5)
    book = q.codebooks[0]
    book.embed[0, 4:] = 1000.0  # far away: never chosen
    book.embed_sum[0, 4:] = 1000.0
    z = torch.randn(1, 32, 2)
    out = q(z)
    assert out.stats["restarts"].item() == 4.0
    restarted = book.embed[0, 4:]
    # Each restarted code is one of the batch vectors.
    d = torch.cdist(restarted, z[0])
    assert (d.min(1).values < 1e-6).all()
    assert torch.allclose(book.usage_ema[0, 4:], torch.full((4,), 0.5 * (1 - 0.99)))


def test_dead_code_restart_in_grad_mode_edits_the_parameter() -> None:
    torch.manual_seed(0)
    q = VectorQuantizer(dim=2, codebook_size=4, dead_code_threshold=0.5, normalize=True)
    z = torch.randn(1, 16, 2)
    with torch.no_grad():
        q.codebooks[0].embed[0, 3] = torch.tensor([-1.0, -1.0])
    z = z.abs()  # all in the positive quadrant: code 3 is dead
    q(z)
    code3 = q.codebooks[0].embed[0, 3].detach()
    assert torch.cdist(code3[None], F.normalize(z[0], dim=-1)).min() < 1e-6


def test_usage_counter_tracks_recent_assignments() -> None:
    q = VectorQuantizer(dim=1, codebook_size=4, decay=0.5)
    with torch.no_grad():
        q.codebooks[0].embed[0] = torch.tensor([[0.0], [10.0], [20.0], [30.0]])
    q(torch.tensor([[[0.1], [10.2]]]))
    usage = q.codebook_usage()
    assert usage["usage"].item() == 0.5
    assert torch.isclose(usage["perplexity"], torch.tensor(2.0)).all()
