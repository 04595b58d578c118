"""Codebook updates applied once per kept optimiser step: deferred recording, commit and discard, with a
plain loop, with the Trainer (accumulation, skipped steps) and with two real gloo ranks."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from polytok.quant import CodebookUpdates, MultiCodebookQuantizer, ResidualQuantizer, VectorQuantizer
from polytok.train import OptimConfig, TrainConfig, Trainer

DIM = 4


def clustered(n: int, seed: int, tokens: int = 8) -> torch.Tensor:
    """(n, tokens, DIM) points drawn from 12 small-integer locations at least 4 apart.

    Every sum of them is exact in float32 whatever the order, and a point's nearest code wins by a wide
    margin over any code not at its location, so the order in which micro-batches are summed or searched
    cannot change a code choice.
    """
    g = torch.Generator().manual_seed(seed)
    grid = [[a, b, c, 0.0] for a in (-4.0, 4.0) for b in (-4.0, 0.0, 4.0) for c in (0.0, 8.0)]
    return torch.tensor(grid)[torch.randint(len(grid), (n, tokens), generator=g)]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(a: dict, b: dict, exact: bool) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact or not a[key].is_floating_point():
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-6, msg=key)


def quantizers() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    common = dict(kmeans_init=True, kmeans_iters=4, dead_code_threshold=0.5, decay=0.5, seed=3)
    return {
        "vq-ema": VectorQuantizer(dim=DIM, codebook_size=16, update="ema", **common),
        "mcq-grad": MultiCodebookQuantizer(dim=DIM, num_codebooks=2, codebook_size=8, **common),
        "rvq-shared-ema": ResidualQuantizer(
            dim=DIM, levels=2, codebook_size=16, update="ema", shared_codebook=True, **common
        ),
    }


def test_k_micro_batches_equal_one_batch_of_k_times_the_size() -> None:
    """Three micro-batches per step, committed once, end with the codebooks of one threefold batch:
    k-means init from all of them, EMA statistics, restarts drawn from the same rows, step counters."""
    for name in quantizers():
        big, small = quantizers()[name], quantizers()[name]
        CodebookUpdates(big), CodebookUpdates(small)
        restarts = 0.0
        for step in range(4):
            batch = clustered(6, seed=step)
            big(batch)
            out = big.commit_codebook_updates()
            restarts += float(out["restarts"])
            for micro in batch.chunk(3):
                small(micro)
            assert small.commit_codebook_updates()["restarts"] == out["restarts"], name
            # The first step is bit-identical (k-means init redoes the step from the stored inputs).
            assert_same_state(snapshot(small), snapshot(big), exact=step == 0)
        assert restarts > 0, name  # the restart path ran
        for book in big.codebooks:
            assert int(book.steps) == 4 and bool(book.initialized)


def test_deferred_forwards_change_nothing_until_commit_and_discard_forgets_them() -> None:
    for name, q in quantizers().items():
        updates = CodebookUpdates(q)
        before = snapshot(q)
        for _ in range(3):
            q(clustered(2, seed=1))
        assert_same_state(snapshot(q), before, exact=True)
        updates.discard()
        assert q.commit_codebook_updates()["skipped"] == 1.0  # nothing left to apply
        assert_same_state(snapshot(q), before, exact=True)
        q(clustered(2, seed=1))
        assert q.commit_codebook_updates()["skipped"] == 0.0
        assert any(not torch.equal(v, before[k]) for k, v in snapshot(q).items()), name
        updates.release()
        moved = snapshot(q)
        q(clustered(2, seed=2))  # applied at the end of the forward again
        assert int(q.codebooks[0].steps) == 2
        assert any(not torch.equal(v, moved[k]) for k, v in snapshot(q).items()), name


def test_a_non_finite_micro_batch_discards_the_whole_step_at_commit() -> None:
    q = quantizers()["rvq-shared-ema"]
    CodebookUpdates(q)
    before = snapshot(q)
    q(clustered(2, seed=1))
    bad = clustered(2, seed=2)
    bad[0, 0, 0] = float("nan")
    assert q(bad).stats["skipped_update"].item() == 1.0
    q(clustered(2, seed=3))
    assert q.commit_codebook_updates()["skipped"] == 1.0
    assert_same_state(snapshot(q), before, exact=True)


def test_counts_only_warmup_statistics_do_not_depend_on_the_order_of_micro_batches() -> None:
    """EvoTok's EMA step (cluster sizes moving during the warm-up, sizes clamped to 1), inside and after
    the warm-up: the same micro-batches recorded in opposite orders give bit-identical codebooks. Each
    micro-batch is searched alone in both runs, so only the order of the summed statistics differs; the
    off-grid noise makes float32 sums depend on that order, the float64 sums do not."""

    def make() -> ResidualQuantizer:
        torch.manual_seed(0)
        return ResidualQuantizer(
            dim=DIM,
            levels=2,
            codebook_size=16,
            update="ema",
            decay=0.5,
            init_std=4.0,
            ema_warmup_steps=2,
            ema_warmup="counts_only",
            ema_min_cluster_size=1.0,
        )

    forward, backward = make(), make()
    CodebookUpdates(forward), CodebookUpdates(backward)
    g = torch.Generator().manual_seed(5)
    moved = []
    for step in range(4):
        micro = list((clustered(12, seed=step) + 0.3 * torch.randn(12, 8, DIM, generator=g)).chunk(4))
        before = snapshot(forward)
        for x in micro:
            forward(x)
        for x in reversed(micro):
            backward(x)
        forward.commit_codebook_updates(), backward.commit_codebook_updates()
        assert_same_state(snapshot(backward), snapshot(forward), exact=True)
        moved.append(not torch.equal(forward.codebooks[0].embed, before["codebooks.0.embed"]))
    assert all(moved)  # the codes moved at every step, warm-up included


# -- through the Trainer ---------------------------------------------------------------------------


class QuantAutoencoder(nn.Module):
    """Latents are the data themselves (no encoder GEMM whose rounding depends on the batch size)."""

    def __init__(self, warmup: int = 0, restart_below: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.quantizer = ResidualQuantizer(
            dim=DIM,
            levels=2,
            codebook_size=16,
            update="ema",
            kmeans_init=True,
            kmeans_iters=4,
            dead_code_threshold=restart_below,
            ema_warmup_steps=warmup,
            decay=0.8,
        )
        self.decoder = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor):
        out = self.quantizer(x)
        return self.decoder(out.quantized), out


class Objective:
    def __init__(self, nan_loss_steps=(), nan_latent_steps=(), rank: int = -1) -> None:
        self.nan_loss_steps, self.nan_latent_steps, self.rank = (
            set(nan_loss_steps),
            set(nan_latent_steps),
            rank,
        )

    def generator_loss(self, model, batch, ctx):
        (x,) = batch
        mine = self.rank in (-1, int(os.environ.get("TEST_RANK", "0")))
        if ctx.step in self.nan_latent_steps and mine and ctx.micro_step == 0:
            x = x.clone()
            x[0, 0, 1] = float("nan")
        rec, out = model(x)
        loss = F.mse_loss(rec, x) + out.loss
        if ctx.step in self.nan_loss_steps and mine:
            loss = loss * float("nan")
        return loss, {"usage": out.stats["usage"].mean()}


def make_trainer(tmp_path, objective, *, batch: int, accum: int = 1, steps: int = 4, **model_kw):
    config = TrainConfig(
        max_steps=steps,
        batch_size=batch,
        grad_accum_steps=accum,
        precision="fp32",
        device="cpu",
        progress=False,
        out_dir=str(tmp_path),
        log_every=1,
        save_every=0,
        shuffle=False,
        optim=OptimConfig(lr=1e-2, warmup_steps=0),
    )
    data = TensorDataset(clustered(48, seed=7))
    return Trainer(QuantAutoencoder(**model_kw), objective, data, config)


def codebook_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return snapshot(trainer.raw_model.quantizer)


def test_trainer_skipped_steps_leave_every_codebook_buffer_bit_identical(tmp_path) -> None:
    """Step 1 has a NaN loss with finite latents, step 2 a NaN latent: both skipped, codebooks untouched;
    the codebook step counters count kept optimiser steps."""
    states = []
    trainer = make_trainer(tmp_path, Objective(nan_loss_steps=[1], nan_latent_steps=[2]), batch=4, accum=2)
    trainer.callbacks.append(lambda t, rec: states.append((rec["step_skipped"], codebook_state(t))))
    trainer.fit()
    assert [skipped for skipped, _ in states] == [False, True, True, False]
    assert_same_state(states[1][1], states[0][1], exact=True)
    assert_same_state(states[2][1], states[0][1], exact=True)
    assert any(not torch.equal(v, states[2][1][k]) for k, v in states[3][1].items())
    for book in trainer.raw_model.quantizer.codebooks:
        assert int(book.steps) == 2  # kept optimiser steps, not micro-batches (4 x 2)


def test_trainer_accumulation_equals_the_large_batch_in_the_codebooks(tmp_path) -> None:
    big = make_trainer(tmp_path / "big", Objective(), batch=12)
    accum = make_trainer(tmp_path / "accum", Objective(), batch=4, accum=3)
    big.fit(), accum.fit()
    assert_same_state(codebook_state(accum), codebook_state(big), exact=False)
    assert int(accum.raw_model.quantizer.codebooks[0].steps) == 4


def test_trainer_ema_warmup_counts_optimiser_steps(tmp_path) -> None:
    embeds = []
    trainer = make_trainer(tmp_path, Objective(), batch=4, accum=3, steps=3, warmup=2, restart_below=0.0)
    trainer.callbacks.append(lambda t, rec: embeds.append(t.raw_model.quantizer.codebooks[1].embed.clone()))
    trainer.fit()
    # k-means init at the first commit; then frozen until 2 optimiser steps (6 micro-batches) are done.
    assert torch.equal(embeds[1], embeds[0])
    assert not torch.equal(embeds[2], embeds[1])


# -- two real ranks ---------------------------------------------------------------------------------


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["TEST_RANK"] = str(rank)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        trainer = make_trainer(os.path.join(out_dir, "ddp"), Objective(nan_latent_steps=[2], rank=1), batch=4)
        states = []
        trainer.callbacks.append(lambda t, rec: states.append(codebook_state(t)))
        trainer.fit()
        torch.save(
            {"states": states, "skipped": trainer.skipped_steps}, os.path.join(out_dir, f"rank{rank}.pt")
        )
    finally:
        dist.destroy_process_group()


def test_a_nan_latent_on_one_rank_skips_the_step_on_both(tmp_path) -> None:
    """Rank 1 alone sees a NaN latent at step 2: both ranks skip it (no hang, no raise), their codebooks
    stay bit-identical to each other and to before the step, and equal one process with the global batch
    (2 ranks x 4 samples; the sampler makes that batch the rank-order concatenation)."""
    mp.spawn(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1
    for a, b in zip(ranks[0]["states"], ranks[1]["states"]):
        assert_same_state(a, b, exact=True)
    assert_same_state(ranks[0]["states"][2], ranks[0]["states"][1], exact=True)
    single = make_trainer(tmp_path / "single", Objective(nan_loss_steps=[2]), batch=8)
    single.fit()
    assert_same_state(ranks[0]["states"][-1], codebook_state(single), exact=False)


class GradCodebookModel(nn.Module):
    """Codes trained by the codebook loss: a parameter that FSDP shards between forwards."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.quantizer = MultiCodebookQuantizer(
            dim=DIM, num_codebooks=2, codebook_size=8, kmeans_init=True, dead_code_threshold=0.5
        )
        self.decoder = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor):
        out = self.quantizer(x)
        return self.decoder(out.quantized), out


def _strategy_worker(rank: int, init_file: str, out_dir: str, strategy: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        config = TrainConfig(
            max_steps=3,
            batch_size=4,
            precision="fp32",
            device="cpu",
            progress=False,
            out_dir=os.path.join(out_dir, f"run-{strategy}"),  # a run directory of its own per strategy
            save_every=0,
            shuffle=False,
            strategy=strategy,
            optim=OptimConfig(lr=1e-2, warmup_steps=0),
        )
        trainer = Trainer(GradCodebookModel(), Objective(), TensorDataset(clustered(48, seed=7)), config)
        trainer.fit()
        embed = trainer.raw_model.quantizer.codebooks[0].embed.detach()
        embed = embed.full_tensor() if hasattr(embed, "full_tensor") else embed
        torch.save(embed.clone(), os.path.join(out_dir, f"{strategy}{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_fsdp_sharded_grad_codebooks_take_kmeans_init_and_restarts_like_ddp(tmp_path) -> None:
    """Updates are applied between forwards, where FSDP holds a "grad" codebook sharded: they are
    written shard by shard, so FSDP ends with the codes of DDP (k-means init and restarts included)."""
    for strategy in ("ddp", "fsdp"):
        mp.spawn(
            _strategy_worker, args=(str(tmp_path / f"init-{strategy}"), str(tmp_path), strategy), nprocs=2
        )
    ddp, fsdp = (torch.load(tmp_path / f"{s}0.pt", weights_only=True) for s in ("ddp", "fsdp"))
    assert torch.equal(fsdp, torch.load(tmp_path / "fsdp1.pt", weights_only=True))
    torch.testing.assert_close(fsdp, ddp, rtol=1e-5, atol=1e-6)
    initial = GradCodebookModel().quantizer.codebooks[0].embed.detach()
    assert (ddp - initial).abs().max() > 1.0  # k-means moved the codes onto the data (4 apart)


def _collective_worker(rank: int, init_file: str, out_dir: str) -> None:
    import polytok.quant.distributed as qdist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    calls = []
    real = qdist.dist.all_reduce
    qdist.dist.all_reduce = lambda *a, **kw: (calls.append(1), real(*a, **kw))[1]  # count, then do it
    try:
        torch.manual_seed(0)
        q = ResidualQuantizer(dim=DIM, levels=3, codebook_size=16, num_codebooks=2, update="ema")
        CodebookUpdates(q)
        counts = []
        for step in range(2):
            for micro in clustered(4, seed=10 * step + rank).chunk(2):
                q(micro)
            counts.append(len(calls))
            q.commit_codebook_updates()
            counts.append(len(calls))
        torch.save(torch.tensor(counts), os.path.join(out_dir, f"calls{rank}.pt"))
    finally:
        qdist.dist.all_reduce = real
        dist.destroy_process_group()


def test_forwards_run_no_collective_and_a_commit_one(tmp_path) -> None:
    """Deferred forwards never wait for other ranks; each commit is one all-reduce for all levels."""
    mp.spawn(_collective_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert torch.load(tmp_path / f"calls{rank}.pt").tolist() == [0, 1, 1, 2]
