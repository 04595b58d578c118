"""In-process runs of the engine: accumulation, non-finite skips, GAN wiring, autocast, hooks, logs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from polytok.train import OptimConfig, StepContext, TrainConfig, Trainer
from polytok.train.checkpoint import CheckpointError, load_safetensors, load_trained_weights
from train_worker_toy import ToyConfig, ToyGanObjective, ToyObjective, build_dataset, build_model


def make_config(tmp_path, **kw) -> TrainConfig:
    base = dict(
        max_steps=6,
        batch_size=8,
        precision="fp32",
        device="cpu",
        progress=False,
        out_dir=str(tmp_path),
        log_every=1,
        save_every=0,
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
    )
    base.update(kw)
    return TrainConfig(**base)


def run(tmp_path, toy: ToyConfig | None = None, objective=None, callbacks=(), **kw) -> Trainer:
    toy = toy or ToyConfig()
    trainer = Trainer(
        build_model(toy),
        objective or ToyObjective(toy, 0),
        build_dataset(toy),
        make_config(tmp_path, **kw),
        callbacks=callbacks,
    )
    trainer.fit()
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = run(tmp_path / "big", batch_size=8)
    accum = run(tmp_path / "accum", batch_size=4, grad_accum_steps=2)
    small = run(tmp_path / "small", batch_size=4)
    for key, value in weights(big).items():
        torch.testing.assert_close(weights(accum)[key], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(weights(small)[k], v, atol=1e-4) for k, v in weights(big).items())
    assert accum.images_per_step == big.images_per_step == 8


def test_non_finite_loss_skips_the_update_counts_and_logs_it(tmp_path):
    snapshots = []
    toy = ToyConfig(nan_steps=[1, 2])
    trainer = run(tmp_path, toy, callbacks=[lambda t, rec: snapshots.append((rec, weights(t)))])
    assert trainer.skipped_steps == 2 and trainer.step == 6
    records = [r for r, _ in snapshots]
    assert [r["step_skipped"] for r in records] == [False, True, True, False, False, False]
    for i in (1, 2):  # no change at all across the poisoned steps
        for key, value in snapshots[i][1].items():
            assert torch.equal(value, snapshots[i - 1][1][key])
    assert any(not torch.equal(v, snapshots[2][1][k]) for k, v in snapshots[3][1].items())
    # the optimiser stepped 4 times; the schedule still advanced with the step count
    step_counts = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert step_counts == {4.0}
    assert records[-1]["lr"] == pytest.approx(1e-2 * trainer.scheduler.lr_lambdas[0](5))
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["skipped"] for x in lines] == [0, 1, 2, 2, 2, 2]
    assert lines[1]["loss"] == "nan" and isinstance(lines[3]["loss"], float)
    assert {"step", "lr", "loss", "mse", "grad_norm", "images_per_s", "skipped", "epoch"} <= set(lines[0])


def test_discriminator_is_frozen_in_the_generator_pass_and_has_its_own_optimiser(tmp_path):
    toy = ToyConfig(gan=True)
    objective = ToyGanObjective(toy, 0)
    init = {k: v.detach().clone() for k, v in objective.discriminator().state_dict().items()}
    disc_snapshots = []

    def grab(t, rec):
        disc_snapshots.append({k: v.detach().clone() for k, v in t.raw_disc.state_dict().items()})

    trainer = run(tmp_path, toy, objective, callbacks=[grab], disc_optim=OptimConfig(lr=1e-3, warmup_steps=0))
    assert trainer.disc_optimizer is not trainer.optimizer
    disc_ids = {id(p) for p in trainer.raw_disc.parameters()}
    assert not any(id(p) in disc_ids for g in trainer.optimizer.param_groups for p in g["params"])
    # steps 0 and 1: the discriminator is only used by the generator's loss, so it must not move
    assert all(torch.equal(disc_snapshots[i][k], v) for i in (0, 1) for k, v in init.items())
    assert any(not torch.equal(disc_snapshots[2][k], v) for k, v in init.items())  # trained from step 2
    assert all(p.requires_grad for p in trainer.raw_disc.parameters())  # unfrozen again
    assert trainer.disc_scheduler.base_lrs == [1e-3, 1e-3] and trainer.scheduler.base_lrs == [1e-2, 1e-2]
    assert trainer.disc_optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # cosine floor 0.1x
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert "disc/loss" not in lines[1] and "disc/loss" in lines[2] and "gan" in lines[0]
    saved = load_safetensors(tmp_path / "checkpoints" / "step_00000006" / "discriminator.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in trainer.raw_disc.state_dict().items())


class ProbeObjective:
    """Records the autocast state and uses the last layer like an adaptive GAN weight does."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, torch.dtype, bool]] = []

    def generator_loss(self, model, batch, ctx: StepContext):
        x, y = batch
        pred = model(x)
        loss = torch.nn.functional.mse_loss(pred.float(), y)
        grad = (
            torch.autograd.grad(loss, ctx.last_layer, retain_graph=True)[0]
            if ctx.last_layer is not None
            else None
        )
        self.seen.append((torch.is_autocast_enabled("cpu"), pred.dtype, grad is not None))
        return loss, {}


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_autocast_and_last_layer(tmp_path, precision, dtype):
    probe = ProbeObjective()
    run(tmp_path, objective=probe, precision=precision, max_steps=2, last_layer="out.weight")
    assert probe.seen == [(precision == "bf16", dtype, True)] * 2
    with pytest.raises(ValueError, match=r"last_layer='out\.wieght'"):
        run(tmp_path, objective=probe, last_layer="out.wieght")


class CheckpointedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = build_model(ToyConfig())
        self.checkpointing = False

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.checkpointing = enabled

    def forward(self, x):
        if self.checkpointing:
            return torch.utils.checkpoint.checkpoint(self.inner, x, use_reentrant=False)
        return self.inner(x)


def test_gradient_checkpointing_hook(tmp_path):
    toy = ToyConfig()
    model = CheckpointedModel()
    cfg = make_config(tmp_path, gradient_checkpointing=True, max_steps=2)
    trainer = Trainer(model, ProbeObjective(), build_dataset(toy), cfg)
    trainer.fit()
    assert model.checkpointing
    with pytest.raises(ValueError, match="set_gradient_checkpointing"):
        Trainer(nn.Linear(16, 16), ToyObjective(toy, 0), build_dataset(toy), cfg)


def test_bad_inputs_are_rejected(tmp_path):
    toy = ToyConfig(dataset_size=4)
    with pytest.raises(TypeError, match="generator_loss"):
        Trainer(build_model(toy), object(), build_dataset(toy), make_config(tmp_path))
    with pytest.raises(ValueError, match="fewer than batch_size=8"):
        Trainer(build_model(toy), ToyObjective(toy, 0), build_dataset(toy), make_config(tmp_path))


def test_stdout_json_lines_progress_bar_and_final_weights(tmp_path, capsys):
    trainer = run(tmp_path, max_steps=2, log_stdout=True, resume=True, progress=True)  # nothing to resume
    assert trainer.resumed_from is None
    captured = capsys.readouterr()
    printed = [json.loads(x) for x in captured.out.splitlines() if x.startswith("{")]
    assert [p["step"] for p in printed] == [1, 2]
    assert "img/s" in captured.err and "16/16" in captured.err  # 2 steps x 8 images, with a rate
    saved = load_trained_weights(tmp_path / "checkpoints")
    assert all(torch.equal(saved[k], v) for k, v in trainer.raw_model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"no ema\.safetensors"):
        load_trained_weights(tmp_path / "checkpoints" / "step_00000002", ema=True)


@pytest.mark.slow
def test_torch_compile_flag(tmp_path):
    eager = run(tmp_path / "eager", max_steps=3)
    compiled = run(tmp_path / "compiled", max_steps=3, compile=True)
    for key, value in weights(eager).items():
        torch.testing.assert_close(weights(compiled)[key], value, rtol=1e-4, atol=1e-5)
