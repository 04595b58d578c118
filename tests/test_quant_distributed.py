"""Two real processes (gloo, CPU) end with the codebooks of one process that saw the whole batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polytok.quant import ResidualQuantizer

STEPS, BATCH, TOKENS, DIM = 4, 4, 24, 8


def build() -> ResidualQuantizer:
    torch.manual_seed(0)
    # EMA, k-means init on the first batch and dead-code restarts: every synchronised path at once.
    return ResidualQuantizer(
        dim=DIM,
        levels=3,
        codebook_size=16,
        num_codebooks=2,
        update="ema",
        kmeans_init=True,
        kmeans_iters=3,
        dead_code_threshold=1.5,
        decay=0.9,
        seed=5,
    )


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, TOKENS, DIM, generator=g) * 2 for _ in range(STEPS)]


def run_steps(q: ResidualQuantizer, rank: int, world: int) -> dict[str, torch.Tensor]:
    per = BATCH // world
    restarts = 0.0
    for z in batches():
        out = q(z[rank * per : (rank + 1) * per])
        restarts += float(out.stats["restarts"])
    state = {k: v.clone() for k, v in q.state_dict().items()}
    state["restarts"] = torch.tensor(restarts)
    return state


def worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(run_steps(build(), rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process_with_the_whole_batch(tmp_path) -> None:
    single = run_steps(build(), 0, 1)
    assert single["restarts"] > 0  # the restart path really ran
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for key, value in single.items():
        # Identical on every rank (same collectives, same seeded draws) ...
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        # ... and equal to one process on the concatenated batch (sums split over ranks: rounding only).
        assert torch.allclose(ranks[0][key].double(), value.double(), atol=1e-4, rtol=1e-4), key


def test_sync_can_be_switched_off(tmp_path) -> None:
    """With sync_distributed=False each rank learns from its own half: codebooks differ."""
    mp.spawn(_unsynced_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"u{r}.pt", weights_only=True) for r in range(2))
    assert not torch.equal(a, b)


def _unsynced_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        q = ResidualQuantizer(dim=DIM, levels=2, codebook_size=16, update="ema", sync_distributed=False)
        for z in batches():
            q(z[rank * 2 : (rank + 1) * 2])
        torch.save(q.codebooks[0].embed.clone(), os.path.join(out_dir, f"u{rank}.pt"))
    finally:
        dist.destroy_process_group()
