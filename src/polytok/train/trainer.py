"""The training engine: one code path for a single process and for ``torchrun`` (DDP or FSDP).

    trainer = Trainer(model, objective, dataset, TrainConfig(max_steps=1000, batch_size=8))
    trainer.fit()

Per optimiser step: ``grad_accum_steps`` micro-batches (gradient sync only on the last one), bf16 autocast,
backward, global-norm clipping, AdamW step(s), codebook updates, lr schedule, optional weight EMA. A step
whose loss or gradient norm is not finite on any rank is skipped on every rank (no update, codebooks
included), counted and logged. Quantizers only record codebook statistics in forward; they are applied
once per kept optimiser step (see ``polytok.quant.updates``).
Checkpoints hold everything needed to continue bit-exactly (see ``checkpoint.py``) with the same world
size. Random augmentations inside the dataset continue exactly with ``num_workers=0`` (they draw from the
restored process RNG); with worker processes, derive their randomness from the sample index instead.

Training stops at ``max_steps`` or, with ``max_minutes``, when the wall-clock budget is spent, whichever
comes first. Rank 0's clock decides: its elapsed time is broadcast each step, so every rank stops after
the same step and uses the same learning rate (the schedule follows the larger of the step and time
fractions, see ``schedule.py``). The time spent is stored in checkpoints and resumes with the run; the
length of a run stopped by the clock depends on the machine's speed, so only runs stopped by steps
resume bit-exactly.

Data come from a map-style dataset (a resumable sampler splits it over ranks) or from a streaming
``IterableDataset`` such as webdataset shards (it splits itself over ranks and workers); at the end of an
epoch the next one starts, and ``dataset.set_epoch(epoch)`` is called when the dataset has it. For
streams all ranks agree each batch on whether the epoch goes on, so they stay in the same epoch; for web
scale, ``resampled=True`` with ``epoch_length`` avoids dropping the uneven tail. See ``batches.py`` for
when a resumed stream continues exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import Dataset

from polytok.config import to_dict
from polytok.quant.updates import CodebookUpdates
from polytok.train import checkpoint as ckpt
from polytok.train.batches import TrainBatches
from polytok.train.distributed import (
    DistInfo,
    all_true,
    barrier,
    cleanup_distributed,
    resolve_strategy,
    setup_distributed,
    wrap_model,
)
from polytok.train.ema import ModelEMA
from polytok.train.logger import RunLogger, Throughput
from polytok.train.objective import StepContext, has_discriminator
from polytok.train.optim import build_adamw
from polytok.train.out_dir import previous_run_entries, refuse_or_clear
from polytok.train.precision import resolve_precision
from polytok.train.schedule import build_scheduler, set_time_fraction
from polytok.train.train_config import TrainConfig

log = logging.getLogger(__name__)

Callback = Callable[["Trainer", dict[str, Any]], None]
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_FULL_LOAD = StateDictOptions(full_state_dict=True)
_FULL_LOAD_PARTIAL = StateDictOptions(full_state_dict=True, strict=False)  # keys checked beforehand


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts / lists / tuples to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [move_to_device(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Switch on activation checkpointing through the model's own hook."""
    if hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    else:
        raise ValueError(
            f"gradient_checkpointing=True but {type(model).__name__} has no "
            "set_gradient_checkpointing(enabled) or gradient_checkpointing_enable() method"
        )


def unstored_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes the model rebuilds itself (``model.frozen_state_prefixes()``, if it has one)."""
    hook = getattr(model, "frozen_state_prefixes", None)
    return tuple(hook()) if callable(hook) else ()


@contextlib.contextmanager
def frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily set requires_grad=False (the discriminator during the generator's pass)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Trainer:
    """Generic engine; the losses come from ``objective`` (see ``polytok.train.objective``).

    Args:
        model: the network; its ``named_parameters()`` make the generator optimiser's groups. Build it with
            the same seed on every rank (DDP broadcasts rank 0's weights; FSDP is given rank 0's too).
        objective: ``generator_loss`` (+ optional ``discriminator`` / ``discriminator_loss``).
        dataset: map-style dataset, or a streaming ``IterableDataset`` that shards itself over ranks and
            workers (``polytok.data.ShardDataset``); batches go through ``collate_fn`` (default collation).
            ``config.shuffle`` applies to map-style datasets only.
        config: TrainConfig.
        callbacks: called on every rank after each step with the step record.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Any,
        dataset: Dataset,
        config: TrainConfig,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        callbacks: Iterable[Callback] = (),
    ) -> None:
        if not callable(getattr(objective, "generator_loss", None)):
            raise TypeError(f"objective {type(objective).__name__} has no generator_loss(model, batch, ctx)")
        self.config = config
        self.objective = objective
        self.callbacks = list(callbacks)
        self.dist: DistInfo = setup_distributed(config)
        self.device = self.dist.device
        self.out_dir = Path(config.out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self._seed_everything()

        self.precision = resolve_precision(config.precision, self.device)  # "auto" made concrete
        self.autocast_dtype = torch.bfloat16 if self.precision == "bf16" else None
        self.strategy = resolve_strategy(config, self.dist)

        # generator model: place, sync initial weights, wrap, compile
        self.raw_model = model.to(self.device)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(self.raw_model)
        if self.strategy == "fsdp":
            self._broadcast_module(self.raw_model)
        self.wrapped_model = wrap_model(self.raw_model, config, self.dist, self.strategy, config.fsdp_layers)
        self.last_layer = self._find_last_layer()  # after wrapping: FSDP replaces the parameters
        self.model = torch.compile(self.wrapped_model) if config.compile else self.wrapped_model
        self.optimizer = build_adamw(self.raw_model.named_parameters(), config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.max_steps)
        # Quantizers record codebook statistics per micro-batch; they are applied once per kept step.
        self.codebook_updates = CodebookUpdates(self.raw_model)

        # optional discriminator with its own optimiser and schedule
        self.raw_disc = self.disc = self.disc_optimizer = self.disc_scheduler = None
        self._disc_trainable: list[nn.Parameter] = []
        if has_discriminator(objective):
            self.raw_disc = objective.discriminator().to(self.device)
            if self.strategy == "fsdp":
                self._broadcast_module(self.raw_disc)
            self._disc_trainable = [p for p in self.raw_disc.parameters() if p.requires_grad]
            self.disc = wrap_model(self.raw_disc, config, self.dist, self.strategy, [])
            self.disc_optimizer = build_adamw(self.raw_disc.named_parameters(), config.disc_optim)
            self.disc_scheduler = build_scheduler(self.disc_optimizer, config.disc_optim, config.max_steps)

        # frozen third-party modules (a distillation teacher) are rebuilt by the model, never stored
        self.unstored_prefixes = unstored_prefixes(self.raw_model)
        self.ema = (
            ModelEMA(self.raw_model, config.ema_decay, exclude=self.unstored_prefixes)
            if config.ema_decay is not None
            else None
        )

        # data: map-style through a resumable sampler, or a self-sharding stream (see batches.py)
        self.batches = TrainBatches(
            dataset,
            config.batch_size,
            self.dist,
            num_workers=config.num_workers,
            seed=config.seed,
            shuffle=config.shuffle,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
        )
        self.sampler = self.batches.sampler  # None for streaming datasets
        self.loader = self.batches.loader

        # progress counters (all saved in checkpoints)
        self.step = 0  # completed optimiser steps
        self.skipped_steps = 0
        self.train_seconds = 0.0  # wall-clock time of the training loop, over all resumes (rank 0's)
        self.time_up = False  # the max_minutes budget is spent (the same on every rank)
        self._clock_origin = time.perf_counter()  # perf_counter() - train_seconds
        self.resumed_from: Path | None = None
        if not config.resume:
            self._claim_out_dir()  # before anything is written into out_dir

    # ----------------------------------------------------------------------------------------------------
    # set-up helpers

    def _seed_everything(self) -> None:
        seed = self.config.seed + self.dist.rank  # different dropout/augmentation noise per rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _find_last_layer(self) -> nn.Parameter | None:
        name = self.config.last_layer
        if name is None:
            if hasattr(self.raw_model, "last_layer") and callable(self.raw_model.last_layer):
                return self.raw_model.last_layer()
            return None
        params = dict(self.raw_model.named_parameters())
        if name not in params:
            raise ValueError(f"last_layer={name!r} is not a parameter of the model")
        return params[name]

    def _broadcast_module(self, module: nn.Module) -> None:
        """Give every rank rank 0's initial weights (DDP does this itself; FSDP shards what it is given)."""
        if self.dist.distributed:
            with torch.no_grad():
                for t in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(t.data, src=0)

    @property
    def images_per_step(self) -> int:
        return self.config.batch_size * self.config.grad_accum_steps * self.dist.world_size

    # ----------------------------------------------------------------------------------------------------
    # data

    @property
    def epoch(self) -> int:
        return self.batches.epoch

    @property
    def samples_in_epoch(self) -> int:
        """Samples of the current epoch consumed by this rank."""
        return self.batches.samples_in_epoch

    def _next_batch(self) -> Any:
        return self.batches.next()

    # ----------------------------------------------------------------------------------------------------
    # one optimiser step

    @contextlib.contextmanager
    def _grad_sync(self, module: nn.Module | None, enabled: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on non-final micro-batches (DDP no_sync, FSDP gradient sync off)."""
        if module is None or enabled or self.strategy == "none":
            yield
            return
        if isinstance(module, nn.parallel.DistributedDataParallel):
            with module.no_sync():
                yield
        elif hasattr(module, "set_requires_gradient_sync"):
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        else:
            yield

    @staticmethod
    def _clip(params: Sequence[nn.Parameter], max_norm: float | None) -> Tensor:
        limit = max_norm if max_norm else math.inf  # inf: measure the norm, scale by exactly 1
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            return torch.zeros(())
        norm = torch.nn.utils.clip_grad_norm_(with_grad, limit)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def train_step(self) -> dict[str, Any]:
        """Run one optimiser step (all micro-batches) and return its record (losses averaged over ranks)."""
        cfg = self.config
        accum = cfg.grad_accum_steps
        self.optimizer.zero_grad(set_to_none=True)
        if self.disc_optimizer is not None:
            self.disc_optimizer.zero_grad(set_to_none=True)
        sums: dict[str, Tensor] = {}
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        disc_updated = False

        def add(logs: Any, prefix: str = "") -> None:
            for key, value in dict(logs).items():
                v = (
                    value.detach().float().reshape(())
                    if isinstance(value, Tensor)
                    else torch.tensor(float(value))
                )
                sums[prefix + key] = sums.get(prefix + key, 0.0) + v.to(self.device) / accum

        for micro in range(accum):
            batch = move_to_device(self._next_batch(), self.device)
            ctx = StepContext(
                self.step,
                cfg.max_steps,
                micro,
                accum,
                self.dist.world_size,
                discriminator=self.raw_disc,
                last_layer=self.last_layer,
            )
            sync = micro == accum - 1
            with self._grad_sync(self.wrapped_model, sync), frozen(self._disc_trainable):
                with self._autocast():
                    loss, logs = self.objective.generator_loss(self.model, batch, ctx)
                if not isinstance(loss, Tensor) or loss.numel() != 1:
                    raise ValueError("generator_loss must return a scalar tensor as its first element")
                finite &= torch.isfinite(loss.detach()).reshape(())
                (loss / accum).backward()
            add(logs)
            sums["loss"] = sums.get("loss", 0.0) + loss.detach().float().reshape(()) / accum
            if self.disc is not None:
                ctx.discriminator = self.disc
                with self._grad_sync(self.disc, sync):
                    with self._autocast():
                        out = self.objective.discriminator_loss(self.disc, batch, ctx)
                    if out is not None:
                        d_loss, d_logs = out
                        finite &= torch.isfinite(d_loss.detach()).reshape(())
                        (d_loss / accum).backward()
                        disc_updated = True
                        add(d_logs, "disc/")
                        sums["disc/loss"] = (
                            sums.get("disc/loss", 0.0) + d_loss.detach().float().reshape(()) / accum
                        )

        grad_norm = self._clip(list(self.raw_model.parameters()), cfg.grad_clip)
        finite &= torch.isfinite(grad_norm.to(self.device))
        disc_norm = None
        if disc_updated:
            disc_norm = self._clip(self._disc_trainable, cfg.disc_grad_clip)
            finite &= torch.isfinite(disc_norm.to(self.device))
        ok = all_true(bool(finite.item()), self.dist)  # same decision on every rank
        if ok:
            self.optimizer.step()
            self.codebook_updates.commit()  # collective, like the decision above: same on every rank
            if disc_updated:
                self.disc_optimizer.step()
            if self.ema is not None and self.step >= cfg.ema_start_step:
                self.ema.update(self.raw_model, decay=0.0 if self.step == cfg.ema_start_step else None)
        else:
            self.skipped_steps += 1
            self.codebook_updates.discard()
            self.optimizer.zero_grad(set_to_none=True)
            if self.disc_optimizer is not None:
                self.disc_optimizer.zero_grad(set_to_none=True)
        record = {
            "step": self.step + 1,
            "epoch": self.epoch,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        if self.disc_optimizer is not None:
            record["disc_lr"] = self.disc_optimizer.param_groups[0]["lr"]
        self._advance_clock()  # before the schedule steps: the next lr follows the time used too
        with warnings.catch_warnings():
            # lr is a function of the step, also for skipped steps and a discriminator that starts later
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            self.scheduler.step()
            if self.disc_scheduler is not None:
                self.disc_scheduler.step()
        self.step += 1
        record["grad_norm"] = float(grad_norm)
        if disc_norm is not None:
            record["disc_grad_norm"] = float(disc_norm)
        record.update({k: float(v) for k, v in self._mean_over_ranks(sums).items()})
        record["skipped"] = self.skipped_steps
        record["step_skipped"] = not ok
        if cfg.max_minutes is not None:
            record["train_seconds"] = self.train_seconds
        return record

    # ----------------------------------------------------------------------------------------------------
    # the wall-clock budget

    @property
    def time_budget_s(self) -> float | None:
        return None if self.config.max_minutes is None else self.config.max_minutes * 60.0

    def _start_clock(self) -> None:
        """(Re)start the clock so that it reads ``train_seconds`` now (after a resume: the time spent)."""
        self._clock_origin = time.perf_counter() - self.train_seconds
        budget = self.time_budget_s
        self.time_up = budget is not None and self.train_seconds >= budget

    def _advance_clock(self) -> None:
        """Read the clock; with a time budget, rank 0's reading is shared (one scalar broadcast per step)
        and moves the schedule and the stop decision on every rank alike."""
        elapsed = time.perf_counter() - self._clock_origin
        budget = self.time_budget_s
        if budget is None:
            self.train_seconds = elapsed
            return
        if self.dist.distributed:
            shared = torch.tensor([elapsed], dtype=torch.float64, device=self.device)
            dist.broadcast(shared, src=0)
            elapsed = float(shared.item())
        self.train_seconds = elapsed
        self.time_up = elapsed >= budget
        set_time_fraction(self.scheduler, elapsed / budget)
        if self.disc_scheduler is not None:
            set_time_fraction(self.disc_scheduler, elapsed / budget)

    def _mean_over_ranks(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.dist.distributed or not values:
            return values
        keys = sorted(values)
        stacked = torch.stack([values[k].reshape(()).float() for k in keys])
        dist.all_reduce(stacked)
        stacked /= self.dist.world_size
        return dict(zip(keys, stacked))

    # ----------------------------------------------------------------------------------------------------
    # the loop

    def fit(self) -> dict[str, Any]:
        """Train until ``max_steps`` or the ``max_minutes`` budget, whichever comes first (resuming first
        when ``config.resume``); returns the last record. The final step is logged and saved either way."""
        cfg = self.config
        if cfg.resume and self.resume() is None and self.dist.is_main:
            log.warning("train.resume is set but %s holds no checkpoint: starting afresh", self.ckpt_root)
        logger = RunLogger(
            self.out_dir,
            self.dist.is_main,
            cfg.max_steps,
            self.step,
            images_per_step=self.images_per_step,
            stdout=cfg.log_stdout,
            progress=cfg.progress,
            tensorboard=cfg.tensorboard,
            max_minutes=cfg.max_minutes,
        )
        record: dict[str, Any] = {"step": self.step, "skipped": self.skipped_steps}
        meter = Throughput()
        self._start_clock()
        try:
            while self.step < cfg.max_steps and not self.time_up:
                record = self.train_step()
                meter.add(self.images_per_step)
                done = self.step >= cfg.max_steps or self.time_up
                logger.progress(
                    1, {"loss": record["loss"], "skipped": self.skipped_steps}, self.train_seconds
                )
                if self.step % cfg.log_every == 0 or done or record["step_skipped"]:
                    record["images_per_s"] = meter.rate()
                    logger.log(record)
                for callback in self.callbacks:
                    callback(self, record)
                if (cfg.save_every and self.step % cfg.save_every == 0) or done:
                    self.save_checkpoint()
            if self.time_up and self.dist.is_main:
                log.info(
                    "time budget of %g min spent after %d of %d steps",
                    cfg.max_minutes,
                    self.step,
                    cfg.max_steps,
                )
        finally:
            logger.close()
        return record

    def _claim_out_dir(self) -> None:
        """A fresh run: refuse an out_dir holding another run unless ``overwrite`` (then clear it)."""
        found: list[Any] = [None]
        if self.dist.is_main:
            found = [[str(p) for p in previous_run_entries(self.out_dir)]]
        if self.dist.distributed:
            dist.broadcast_object_list(found, src=0)  # every rank raises, or none does
        entries = [Path(p) for p in found[0]]
        refuse_or_clear(self.out_dir, entries, self.config.overwrite, remove=self.dist.is_main)
        barrier(self.dist)

    def close(self) -> None:
        """Leave the process group (when this trainer created it)."""
        cleanup_distributed(self.dist)

    # ----------------------------------------------------------------------------------------------------
    # checkpoints

    def save_checkpoint(self) -> Path:
        """Write a complete checkpoint for the current step (collective: call on every rank)."""
        model_sd = self.stored_model_state()
        optim_sd = get_optimizer_state_dict(self.raw_model, self.optimizer, options=_FULL)
        disc_sd = disc_optim_sd = None
        if self.raw_disc is not None:
            disc_sd = get_model_state_dict(self.raw_disc, options=_FULL)
            disc_optim_sd = get_optimizer_state_dict(self.raw_disc, self.disc_optimizer, options=_FULL)
        ema_sd = self.ema.state_dict() if self.ema is not None else None
        if self.dist.is_main:
            ckpt.begin_checkpoint(self.ckpt_root, self.step)
        barrier(self.dist)
        staging = ckpt.partial_dir(self.ckpt_root, self.step)
        try:
            return self._write_checkpoint(staging, model_sd, optim_sd, disc_sd, disc_optim_sd, ema_sd)
        except BaseException:
            if self.dist.world_size == 1:  # a full disk, an error: no half-written step left behind
                shutil.rmtree(staging, ignore_errors=True)
            raise

    def _write_checkpoint(self, staging, model_sd, optim_sd, disc_sd, disc_optim_sd, ema_sd) -> Path:
        ckpt.atomic_torch_save(ckpt.capture_rng_state(), staging / f"rng_rank{self.dist.rank}.pt")
        barrier(self.dist)
        final = self.ckpt_root / ckpt.step_dir_name(self.step)
        if self.dist.is_main:
            ckpt.atomic_save_safetensors(model_sd, staging / "model.safetensors")
            if ema_sd is not None:
                ckpt.atomic_save_safetensors(ema_sd, staging / "ema.safetensors")
            if disc_sd is not None:
                ckpt.atomic_save_safetensors(disc_sd, staging / "discriminator.safetensors")
            state = {
                "step": self.step,
                **self.batches.state_dict(),  # epoch, samples_in_epoch, batches_in_epoch, batch_size
                "world_size": self.dist.world_size,
                "skipped_steps": self.skipped_steps,
                "train_seconds": self.train_seconds,
                "optimizer": optim_sd,
                "scheduler": self.scheduler.state_dict(),
                "disc_optimizer": disc_optim_sd,
                "disc_scheduler": self.disc_scheduler.state_dict()
                if self.disc_scheduler is not None
                else None,
                "config": to_dict(self.config),
            }
            ckpt.atomic_torch_save(state, staging / ckpt.STATE_FILE)
            ckpt.finalize_checkpoint(self.ckpt_root, self.step, {"world_size": self.dist.world_size})
            ckpt.prune_checkpoints(self.ckpt_root, self.config.keep_last)
        barrier(self.dist)
        return final

    def stored_model_state(self) -> dict[str, Tensor]:
        """The model's full weights as checkpoints store them, on the CPU (frozen rebuilt modules left
        out). Collective under FSDP, where it gathers the shards: call on every rank."""
        return self._stored(get_model_state_dict(self.raw_model, options=_FULL))

    def _stored(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state`` without the frozen modules the model rebuilds (older checkpoints may hold them)."""
        return {k: v for k, v in state.items() if not k.startswith(self.unstored_prefixes)}

    def _check_model_keys(self, state: dict[str, Tensor], path: Path) -> None:
        expected = set(self._stored(self.raw_model.state_dict()))
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"{path}/model.safetensors does not match the model: missing {missing[:10]}, "
                f"unexpected {unexpected[:10]}"
            )

    def resume(self) -> Path | None:
        """Load the newest complete checkpoint in ``out_dir/checkpoints`` (rank 0 picks; all ranks agree)."""
        choice = [None]
        if self.dist.is_main:
            found = ckpt.find_latest_checkpoint(self.ckpt_root)
            choice = [str(found) if found is not None else None]
        if self.dist.distributed:
            dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return None
        self.load_checkpoint(choice[0])
        return self.resumed_from

    def load_checkpoint(self, path: str | Path, verify: bool = True) -> None:
        """Restore model, optimisers, schedulers, EMA, counters, data position and this rank's RNG."""
        path = Path(path)
        if verify:
            ckpt.verify_checkpoint(path)
        state = ckpt.load_pickled(path / ckpt.STATE_FILE)
        model_sd = self._stored(ckpt.load_safetensors(path / "model.safetensors"))
        self._check_model_keys(model_sd, path)
        set_model_state_dict(self.raw_model, model_sd, options=_FULL_LOAD_PARTIAL)
        set_optimizer_state_dict(self.raw_model, self.optimizer, state["optimizer"], options=_FULL_LOAD)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.raw_disc is not None:
            if state.get("disc_optimizer") is None:
                raise ckpt.CheckpointError(f"{path} holds no discriminator, but the objective has one")
            disc_sd = ckpt.load_safetensors(path / "discriminator.safetensors")
            set_model_state_dict(self.raw_disc, disc_sd, options=_FULL_LOAD)
            set_optimizer_state_dict(
                self.raw_disc, self.disc_optimizer, state["disc_optimizer"], options=_FULL_LOAD
            )
            self.disc_scheduler.load_state_dict(state["disc_scheduler"])
        if self.ema is not None:
            ema_file = path / "ema.safetensors"
            if ema_file.is_file():
                self.ema.load_state_dict(self._stored(ckpt.load_safetensors(ema_file)))
            else:
                warnings.warn(
                    f"{path} has no EMA weights; the EMA restarts from the loaded weights",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.ema.update(self.raw_model, decay=0.0)
        self.step = int(state["step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.train_seconds = float(state.get("train_seconds", 0.0))  # absent in older checkpoints
        self.batches.load_state_dict(state, saved_world_size=int(state["world_size"]))
        rng_file = path / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file():
            ckpt.restore_rng_state(ckpt.load_pickled(rng_file))
        else:
            warnings.warn(
                f"{rng_file} not found; random streams are not restored", RuntimeWarning, stacklevel=2
            )
        self.resumed_from = path
