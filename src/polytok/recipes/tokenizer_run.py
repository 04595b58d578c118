"""One training run from one config file: tokenizer + data + losses + engine settings.

    polytok train configs/unitok-tiny.yaml train.max_steps=200 data.name=photos

A run config has four sections; unknown keys and wrong types are rejected with the dotted key's name
(parsing and overrides: :mod:`polytok.config`):

    model: {preset: unitok-tiny, overrides: {quantizer: {codebook_size: 1024}}}   # or config: path
    data:  {name: shapes, image_size: 64, options: {label_task: colour}}          # name, folder or shards
    loss:  {l1: 0.2, l2: 1.0, perceptual: efficientnet, semantic: 1.0, gan: none, ...}
    train: {max_steps: 1000, batch_size: 32, optim: {lr: 5e-4}, out_dir: runs/unitok-tiny, ...}

A run writes the config it ran, with ``train.precision`` resolved ("auto" -> "bf16" or "fp32"), to
``<out_dir>/run.yaml``; that file is itself a run config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polytok.config import from_dict, load_yaml_with_overrides
from polytok.recipes.sections import DataSection, build_training_dataset, write_run_record
from polytok.recipes.tokenizer_objective import LossConfig, build_objective
from polytok.train import TrainConfig, Trainer


@dataclass
class ModelSection:
    """``preset`` (a registered name) or ``config`` (a tokenizer config file), plus nested overrides."""

    preset: str | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.preset is None) == (self.config is None):
            raise ValueError("model: give exactly one of 'preset' or 'config'")


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=lambda: ModelSection(preset="unitok-tiny"))
    data: DataSection = field(default_factory=DataSection)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export_dir: str | None = None  # save_pretrained here after training (default: <out_dir>/tokenizer)


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a run config (YAML) with ``key=value`` dotted overrides -> validated :class:`RunConfig`."""
    return from_dict(RunConfig, load_yaml_with_overrides(path, list(overrides)))


def build_tokenizer(section: ModelSection):
    from polytok.models.tokenizer import Tokenizer

    if section.preset is not None:
        return Tokenizer.from_preset(section.preset, **section.overrides)
    return Tokenizer.from_config(section.config, **section.overrides)


def train_tokenizer(config: RunConfig):
    """Train the tokenizer described by ``config``; returns it (the exported weights on rank 0).

    Works as a single process or under torchrun (DDP/FSDP) unchanged. The trained tokenizer (its EMA
    weights when ``train.ema_decay`` is set) is written with ``save_pretrained`` to ``export_dir``.
    """
    import torch

    from polytok.data import collate
    from polytok.models.saving import save_tokenizer_state

    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    tokenizer = build_tokenizer(config.model)
    tokenizer.load_teacher()  # now, not at the first forward: the engine's EMA and wrapping must see it
    dataset = build_training_dataset(config.data)
    objective = build_objective(tokenizer, config.loss, config.train.max_steps)
    if config.train.last_layer is None:
        config.train.last_layer = _last_layer_name(tokenizer)
    trainer = Trainer(tokenizer, objective, dataset, config.train, collate_fn=collate)
    if trainer.dist.is_main:
        write_run_record(config, trainer.precision, Path(config.train.out_dir) / "run.yaml")
    try:
        trainer.fit()  # resumes first when train.resume is set
        if trainer.ema is not None:
            trainer.ema.copy_to(trainer.raw_model)
        state = trainer.stored_model_state()  # on every rank: under FSDP it gathers the shards
        if trainer.dist.rank == 0:
            export = Path(config.export_dir or Path(config.train.out_dir) / "tokenizer")
            save_tokenizer_state(tokenizer.config, state, export)
    finally:
        trainer.close()
    return tokenizer


def _last_layer_name(tokenizer) -> str | None:
    """Name of the decoder's last layer weight (for the adaptive GAN weight)."""
    target = tokenizer.last_decoder_layer()
    for name, param in tokenizer.named_parameters():
        if param is target:
            return name
    return None
