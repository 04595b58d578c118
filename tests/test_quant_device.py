"""Every quantizer path allocates on its input's device.

Two checks: the quantizers run on CUDA when a GPU is present (same indices as a float64 reference on
inputs with clear margins), and, on any machine, they run on the CPU while factory calls that name no
device default to ``meta``: a buffer made without ``device=`` then lands on ``meta`` and fails (or shows
up in the outputs), which is exactly the allocation that would sit on the host beside CUDA inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from polytok.quant import LevelledQuantizer, MultiCodebookQuantizer, ResidualQuantizer, VectorQuantizer

# Every option that adds a code path: EMA and grad learning, k-means init, dead-code restarts,
# quantize-dropout, entropy loss, rotation trick, shared codebooks, projections.
CONFIGS: dict[str, Callable[[], LevelledQuantizer]] = {
    "vq-grad-projected": lambda: VectorQuantizer(dim=8, codebook_size=64, codebook_dim=4),
    "mcq-cosine-entropy": lambda: MultiCodebookQuantizer(
        dim=16, num_codebooks=4, codebook_size=32, normalize=True, entropy_weight=0.1
    ),
    "rvq-ema-kmeans-restarts-dropout": lambda: ResidualQuantizer(
        dim=8,
        levels=3,
        codebook_size=32,
        update="ema",
        kmeans_init=True,
        kmeans_iters=2,
        dead_code_threshold=0.5,
        quantize_dropout=0.5,
    ),
    "rmcq-shared-rotation": lambda: ResidualQuantizer(
        dim=8, levels=2, codebook_size=16, num_codebooks=2, shared_codebook=True, rotation_trick=True
    ),
}


def run_steps(q: LevelledQuantizer, z: torch.Tensor, steps: int = 3) -> dict[str, torch.Tensor]:
    """Training steps (forward, backward, codebook update), then an eval forward and a decode."""
    results: dict[str, torch.Tensor] = {}
    q.train()
    for step in range(steps):
        x = z.clone().requires_grad_(True)
        out = q(x)
        (out.quantized.square().mean() + out.loss).backward()
        results[f"grad{step}"] = x.grad
        results |= {f"{key}{step}": value for key, value in out.stats.items()}
        results[f"indices{step}"] = out.indices
    q.eval()
    with torch.no_grad():
        out = q(z)
        results |= {"quantized": out.quantized, "indices": out.indices, "loss": out.loss}
        results["decoded"] = q.indices_to_codes(out.indices)
        results |= q.codebook_usage()
    results |= {f"state.{key}": value for key, value in q.state_dict().items()}
    return results


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_allocation_ignores_the_input_device(name: str) -> None:
    torch.manual_seed(0)
    plain = CONFIGS[name]()
    with_meta_default = copy.deepcopy(plain)
    z = torch.randn(2, 20, plain.dim, generator=torch.Generator().manual_seed(1))
    expected = run_steps(plain, z)
    with torch.device("meta"):
        got = run_steps(with_meta_default, z)
    assert got.keys() == expected.keys()
    for key, value in got.items():
        assert value.device.type == "cpu", key
        assert torch.equal(value, expected[key]), key
    if name.startswith("rvq"):  # the restart path ran (it allocates samples)
        assert sum(float(expected[f"restarts{s}"]) for s in range(3)) > 0


def known_residual_input(q: LevelledQuantizer, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Input (1, tokens, D) made of chosen codes, one per level and codebook, and the chosen (tokens, L, C).

    Level l's codes are scaled by 0.05 ** l so that what later levels add never moves a vector across an
    earlier level's decision boundary; checked below in float64. Needs no projection, no shared codebook.
    """
    g = torch.Generator().manual_seed(seed)
    levels, books, k = q.num_levels, q.num_codebooks, q.codebook_size
    for level in range(1, levels):
        book = q.codebook_for_level(level)
        book.embed.data.mul_(0.05**level)
        if book.update_mode == "ema":
            book.embed_sum.mul_(0.05**level)
    chosen = torch.randint(k, (tokens, levels, books), generator=g)
    z = torch.zeros(tokens, books, q.codebook_dim)
    for level in range(levels):
        codes = q.codebook_for_level(level).codes().detach()  # (C, K, d)
        z += codes[torch.arange(books), chosen[:, level]]
    z += 1e-5 * torch.randn(z.shape, generator=g)
    # Precondition in float64: at every level the chosen code wins by a margin (1e-5 in distance) far
    # above the fp32 rounding of the residuals (about 1e-7 here).
    residual = z.double()
    for level in range(levels):
        codes = q.codebook_for_level(level).codes().detach().double()
        for c in range(books):
            dist = torch.cdist(residual[:, c], codes[c])
            top2 = dist.topk(2, dim=-1, largest=False)
            assert torch.equal(top2.indices[:, 0], chosen[:, level, c])
            assert (top2.values[:, 1] - top2.values[:, 0]).min() > 1e-5
        residual = residual - codes[torch.arange(books), chosen[:, level]]
    return z.reshape(1, tokens, -1), chosen


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
        ),
    ],
)
def test_quantizers_on_device_match_float64_reference(device: str) -> None:
    torch.manual_seed(0)
    margin_cases = {
        "vq": VectorQuantizer(dim=8, codebook_size=64),
        "mcq": MultiCodebookQuantizer(dim=16, num_codebooks=4, codebook_size=32, normalize=True),
        "rvq": ResidualQuantizer(dim=8, levels=3, codebook_size=32, update="ema"),
    }
    for name, q in margin_cases.items():
        z, chosen = known_residual_input(q, 300, seed=2)
        public = q._to_public(chosen.unsqueeze(0))
        on_device = copy.deepcopy(q).to(device).eval()
        with torch.no_grad():
            out = on_device(z.to(device))
        assert out.indices.device.type == device and torch.equal(out.indices.cpu(), public), name
        torch.testing.assert_close(on_device.indices_to_codes(out.indices), out.quantized)
        # One EMA / grad training step: same indices, so the updated codebooks agree with the CPU's.
        q.train(), on_device.train()
        x = z.to(device).requires_grad_(True)
        out_cpu, out_dev = q(z), on_device(x)
        assert torch.equal(out_dev.indices.cpu(), public), name
        (out_dev.quantized.square().mean() + out_dev.loss).backward()
        assert x.grad is not None and x.grad.device.type == device, name
        assert all(v.device.type == device for v in out_dev.stats.values()), name
        assert all(p.grad is None or p.grad.device.type == device for p in on_device.parameters()), name
        for (key, mine), theirs in zip(on_device.state_dict().items(), q.state_dict().values()):
            assert mine.device.type == device, key
            torch.testing.assert_close(mine.cpu(), theirs, rtol=1e-5, atol=1e-5, msg=f"{name} {key}")
        assert torch.isfinite(out_cpu.loss) and torch.isfinite(out_dev.loss)
