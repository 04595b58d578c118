"""Training engine: torchrun-ready (DDP / FSDP) trainer, optimisers, schedules, checkpoints, sampler, logs.

    from polytok.train import Trainer, TrainConfig
    Trainer(model, objective, dataset, TrainConfig(max_steps=100, batch_size=8)).fit()

Objectives plug in through ``polytok.train.objective`` (``generator_loss`` and, for GANs,
``discriminator`` / ``discriminator_loss``).
"""

from polytok.config import ConfigError, apply_overrides, from_dict, load_yaml_with_overrides, to_dict
from polytok.train.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_trained_weights,
    verify_checkpoint,
)
from polytok.train.ema import ModelEMA
from polytok.train.objective import AdversarialObjective, Objective, StepContext
from polytok.train.optim import build_adamw, build_param_groups
from polytok.train.sampler import ResumableDistributedSampler
from polytok.train.schedule import build_scheduler, lr_multiplier
from polytok.train.train_config import OptimConfig, TrainConfig
from polytok.train.trainer import Trainer

__all__ = [
    "AdversarialObjective",
    "CheckpointError",
    "ConfigError",
    "ModelEMA",
    "Objective",
    "OptimConfig",
    "ResumableDistributedSampler",
    "StepContext",
    "TrainConfig",
    "Trainer",
    "apply_overrides",
    "build_adamw",
    "build_param_groups",
    "build_scheduler",
    "find_latest_checkpoint",
    "from_dict",
    "load_trained_weights",
    "load_yaml_with_overrides",
    "lr_multiplier",
    "to_dict",
    "verify_checkpoint",
]
