"""Input a quantizer cannot search (NaN, Inf, overflowing magnitudes) and empty batches, in both modes.

Eval mode: one ValueError. Training mode: a reported skip (NaN loss, ``skipped_update``, bad rows marked
NaN / -1) that leaves every buffer as it was, for every quantizer kind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from polytok.quant import MultiCodebookQuantizer, ResidualQuantizer, VectorQuantizer

KINDS = {
    "vq": lambda: VectorQuantizer(dim=8, codebook_size=32),
    "vq-cosine-ema": lambda: VectorQuantizer(dim=8, codebook_size=32, normalize=True, update="ema"),
    "mcq-cosine": lambda: MultiCodebookQuantizer(dim=8, num_codebooks=2, codebook_size=16, normalize=True),
    "rvq-ema": lambda: ResidualQuantizer(
        dim=8, levels=3, codebook_size=16, update="ema", dead_code_threshold=1.0, kmeans_init=True
    ),
    "rmcq": lambda: ResidualQuantizer(dim=8, levels=2, codebook_size=16, num_codebooks=2),
    "rvq-shared": lambda: ResidualQuantizer(dim=8, levels=3, codebook_size=16, shared_codebook=True),
    "vq-proj": lambda: VectorQuantizer(dim=8, codebook_size=16, codebook_dim=4, dead_code_threshold=1.0),
}
BAD_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "1e30": 1e30}


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("value", list(BAD_VALUES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_unsearchable_input_is_a_reported_skip_in_training_and_an_error_in_eval(kind, value) -> None:
    torch.manual_seed(0)
    q = KINDS[kind]()
    z = torch.randn(2, 6, 8)
    poisoned = z.clone()
    poisoned[1, 4, 0] = BAD_VALUES[value]  # channel 0: the first codebook of a multi-codebook quantizer
    before = snapshot(q)

    out = q(poisoned.requires_grad_())
    assert torch.isnan(out.loss)  # the trainer skips the step for it
    assert out.stats["skipped_update"].item() == 1.0
    assert_unchanged(q, before)
    # The bad position has no code and no vector; on the others the codes are those of a clean pass.
    if q.project_in.__class__ is torch.nn.Identity:
        bad_codes = out.indices[1, 4].reshape(q.num_levels, q.num_codebooks)[:, 0]
        assert (bad_codes == -1).all()
        assert torch.isnan(out.quantized[1, 4, : q.codebook_dim]).all()
    else:  # a projection mixes channels: the whole position is unsearchable
        assert (out.indices[1, 4] == -1).all() and torch.isnan(out.quantized[1, 4]).all()
    keep = torch.ones(2, 6, dtype=torch.bool)
    keep[1, 4] = False
    with torch.no_grad():
        q.eval()
        clean = q(z)
        q.train()
    assert torch.equal(out.indices[keep], clean.indices[keep])
    assert torch.isfinite(out.quantized[keep]).all()
    # Without a graph the output is the codes themselves: the bad position is NaN there too.
    with torch.no_grad():
        assert torch.isnan(q(poisoned).quantized[1, 4]).any()
    # The gradient reaches the input (NaN, so the trainer's check also sees it) without an error.
    out.quantized.sum().backward()
    assert_unchanged(q, before)

    q.eval()
    with pytest.raises(ValueError, match="NaN or Inf" if value != "1e30" else "magnitude"):
        q(poisoned.detach())
    # And a finite batch afterwards trains as usual.
    q.train()
    assert q(z).stats["skipped_update"].item() == 0.0


def test_magnitude_limit_rejects_overflowing_codes_in_every_mode() -> None:
    q = VectorQuantizer(dim=4, codebook_size=8)
    with torch.no_grad():
        q.codebooks[0].embed[0, 3] = float("nan")
    for mode in (q.train, q.eval):
        mode()
        with pytest.raises(ValueError, match="corrupt"):
            q(torch.randn(1, 3, 4))


def test_values_within_the_magnitude_limit_are_searched_exactly() -> None:
    """Just inside the limit nothing overflows: the codes are the float64 nearest codes (argmax of
    x.c - |c|^2 / 2, which is what the distance ranking reduces to; |x - c|^2 itself loses c next to |x|)."""
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=4, levels=2, codebook_size=8).eval()
    z = torch.randn(1, 16, 4)
    z = z / z.abs().max() * q.magnitude_limit * 0.99
    out = q(z)
    codes = q.codebooks[0].embed[0].double()
    expected = (z[0].double() @ codes.T - 0.5 * codes.square().sum(-1)).argmax(-1)
    assert torch.equal(out.indices[0, :, 0], expected)
    assert torch.isfinite(out.loss) and torch.isfinite(out.quantized).all()


KMEANS_HUGE = textwrap.dedent(
    """
    import resource, sys, torch
    from polytok.quant import VectorQuantizer, ResidualQuantizer

    def vm_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    # Address space: what the interpreter holds now plus 1 GiB.
    limit = vm_bytes() + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    torch.manual_seed(0)
    for q in (
        VectorQuantizer(dim=8, codebook_size=64, kmeans_init=True, update="ema"),
        ResidualQuantizer(dim=8, levels=2, codebook_size=64, kmeans_init=True, dead_code_threshold=1.0),
    ):
        z = torch.full((4, 64, 8), 1e30)
        out = q(z)
        assert out.stats["skipped_update"].item() == 1.0, out.stats
        assert not bool(q.codebooks[0].initialized)
        out = q(torch.randn(4, 64, 8))
        assert out.stats["skipped_update"].item() == 0.0
        assert bool(q.codebooks[0].initialized)
    print("ok")
    """
)


def test_kmeans_init_on_huge_inputs_allocates_nothing_large() -> None:
    """1e30 latents made the k-means search return garbage indices and bincount ask for ~1 PB."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KMEANS_HUGE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


@pytest.mark.parametrize("shape", [(0, 5, 8), (3, 0, 8)])
@pytest.mark.parametrize("kind", list(KINDS))
def test_empty_batch_gives_empty_outputs_and_leaves_codebooks(kind, shape) -> None:
    torch.manual_seed(0)
    q = KINDS[kind]()
    before = snapshot(q)
    z = torch.zeros(shape, requires_grad=True)
    out = q(z)
    assert out.quantized.shape == shape
    assert out.indices.shape == (*shape[:2], *q.code_shape)
    assert out.loss.item() == 0.0
    assert out.stats["skipped_update"].item() == 1.0  # nothing to learn from
    (out.quantized.sum() + out.loss).backward()
    assert_unchanged(q, before)
    q.eval()
    ev = q(z.detach())
    assert ev.indices.shape == (*shape[:2], *q.code_shape)
    assert q.indices_to_codes(ev.indices).shape == shape
