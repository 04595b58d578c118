"""Toy training run for the engine's tests; launched as ``python`` or under ``torchrun``.

    python tests/train_worker_toy.py train.out_dir=/tmp/run train.max_steps=8 toy.dropout=0.1

Keys under ``train.`` go to TrainConfig, keys under ``toy.`` to ToyConfig below. The model is a small MLP
with a LayerNorm and a CLIP-like ``logit_scale``; the data are fixed synthetic regression pairs, or, with
``toy.shards=/d/shard-{000000..000002}.tar``, images streamed from webdataset shards that the MLP learns
to reconstruct (flattened, ``3 * image_size**2`` values).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from polytok.train import TrainConfig, Trainer, from_dict, load_yaml_with_overrides


@dataclass
class ToyConfig:
    dim: int = 16
    width: int = 32
    dataset_size: int = 64
    dropout: float = 0.0
    noise: float = 0.0  # input noise drawn from the global torch RNG (exercises RNG restore)
    nan_steps: list[int] = field(default_factory=list)  # 0-based steps whose loss is made NaN
    nan_rank: int = -1  # rank that produces the NaN (-1: every rank)
    sleep_after_step: int = -1  # after this many completed steps, sleep sleep_s per step
    sleep_s: float = 0.0
    delay_rank: int = -1  # this rank waits delay_s before its training loop starts (a late clock)
    delay_s: float = 0.0
    gan: bool = False
    shards: str = ""  # webdataset shard pattern: stream images instead of the regression pairs
    image_size: int = 4
    resampled: bool = False
    epoch_length: int = 0  # 0: one pass over the shards per epoch
    shuffle_buffer: int = 8
    record_keys: bool = False  # write keys_rank{r}.json: per step, the epoch and the sample keys
    save_rank_weights: bool = False  # write weights_rank{r}.safetensors at the end


class ToyBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.drop(torch.nn.functional.gelu(self.norm(self.fc(h))))


class ToyModel(nn.Module):
    def __init__(self, dim: int, width: int, dropout: float) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList([ToyBlock(width, dropout), ToyBlock(width, dropout)])
        self.out = nn.Linear(width, dim)
        # shape (1,), not (): FSDP shards no 0-dim parameters
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))
        # a float buffer beside the parameters: under FSDP a plain tensor among DTensors (weight EMA)
        self.register_buffer("out_scale", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        out = self.out(h)
        return out * self.out_scale.to(out.dtype)  # keeps autocast's output dtype


class ToyDisc(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ToyObjective:
    """MSE regression + a small pull on logit_scale; optional hinge GAN."""

    def __init__(self, toy: ToyConfig, rank: int) -> None:
        self.toy, self.rank = toy, rank
        self.keys: list[str] = []  # sample keys of the current step (streamed images)

    def generator_loss(self, model, batch, ctx):
        if isinstance(batch, dict):  # streamed images: reconstruct them
            self.keys.extend(batch["key"])
            x = y = batch["image"].flatten(1)
        else:
            x, y = batch
        if self.toy.noise:
            x = x + self.toy.noise * torch.randn_like(x)
        pred = model(x)
        rec = torch.nn.functional.mse_loss(pred.float(), y)
        raw = model.module if hasattr(model, "module") else model
        reg = 1e-3 * ((raw.logit_scale - 2.0) ** 2).sum()
        loss = rec + reg
        logs = {"mse": rec.detach()}
        if self.toy.gan and ctx.discriminator is not None:
            g = -ctx.discriminator(pred.float()).mean()
            loss = loss + 0.1 * g
            logs["gan"] = g.detach()
            ctx.cache["fake"] = pred.detach().float()
        if ctx.step in self.toy.nan_steps and self.toy.nan_rank in (-1, self.rank):
            loss = loss * float("nan")
        return loss, logs


class ToyGanObjective(ToyObjective):
    """Adds a small discriminator with a hinge loss, trained from step 2 on."""

    def __init__(self, toy: ToyConfig, rank: int) -> None:
        super().__init__(toy, rank)
        torch.manual_seed(99)
        self._disc = ToyDisc(toy.dim)

    def discriminator(self) -> nn.Module:
        return self._disc

    def discriminator_loss(self, disc, batch, ctx):
        if ctx.step < 2:  # discriminator starts later, as in the published recipes
            return None
        y = batch["image"].flatten(1) if isinstance(batch, dict) else batch[1]
        real = disc(y).float()
        fake = disc(ctx.cache["fake"]).float()
        loss = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
        return loss, {"real": real.mean().detach()}


def build_dataset(toy: ToyConfig) -> TensorDataset:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(toy.dataset_size, toy.dim, generator=g)
    w = torch.randn(toy.dim, toy.dim, generator=g) / math.sqrt(toy.dim)
    return TensorDataset(x, torch.sin(x @ w))


def build_shard_dataset(toy: ToyConfig, seed: int):
    from polytok.data import build_dataset as build_data

    return build_data(
        toy.shards,
        split="train",
        image_size=toy.image_size,
        resampled=toy.resampled,
        epoch_length=toy.epoch_length or None,
        shuffle_buffer=toy.shuffle_buffer,
        seed=seed,
    )


def build_model(toy: ToyConfig) -> ToyModel:
    torch.manual_seed(7)  # identical initial weights on every rank and in every run
    return ToyModel(toy.dim, toy.width, toy.dropout)


def main(argv: list[str]) -> None:
    raw = load_yaml_with_overrides(None, argv)
    unknown = set(raw) - {"train", "toy"}
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}")
    config = from_dict(TrainConfig, raw.get("train", {}))
    toy = from_dict(ToyConfig, raw.get("toy", {}))
    rank = int(os.environ.get("RANK", "0"))
    if toy.shards:
        toy.dim = 3 * toy.image_size**2
    objective = ToyGanObjective(toy, rank) if toy.gan else ToyObjective(toy, rank)

    def slow_down(trainer: Trainer, record: dict) -> None:
        if 0 <= toy.sleep_after_step < record["step"]:
            print(f"sleeping after step {record['step']}", flush=True)
            time.sleep(toy.sleep_s)

    steps: list[dict] = []

    def keep_keys(trainer: Trainer, record: dict) -> None:
        steps.append({"step": record["step"], "epoch": record["epoch"], "keys": objective.keys})
        objective.keys = []
        if toy.record_keys:  # rewritten each step: a killed run keeps what it did
            Path(config.out_dir, f"keys_rank{rank}.json").write_text(json.dumps(steps))

    if toy.shards:
        from polytok.data import collate

        dataset, collate_fn = build_shard_dataset(toy, config.seed), collate
    else:
        dataset, collate_fn = build_dataset(toy), None
    trainer = Trainer(
        build_model(toy), objective, dataset, config, collate_fn=collate_fn, callbacks=[keep_keys, slow_down]
    )
    if rank == toy.delay_rank:
        time.sleep(toy.delay_s)
    last = trainer.fit()
    Path(config.out_dir, f"final_rank{rank}.json").write_text(json.dumps({"step": trainer.step}))
    if toy.save_rank_weights:
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in trainer.raw_model.state_dict().items()}
        save_file(state, str(Path(config.out_dir, f"weights_rank{rank}.safetensors")))
    if trainer.dist.is_main:
        result = {
            "step": trainer.step,
            "skipped": trainer.skipped_steps,
            "last": last,
            "resumed_from": str(trainer.resumed_from) if trainer.resumed_from else None,
            "world_size": trainer.dist.world_size,
        }
        Path(config.out_dir, "result.json").write_text(json.dumps(result))
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
