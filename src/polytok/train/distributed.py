"""Process-group set-up for single-process and ``torchrun`` launches, and model wrapping (DDP / FSDP).

``torchrun`` exports RANK, LOCAL_RANK and WORLD_SIZE; without them the run is a single process and no
process group is created. Gradient synchronisation is left to torch's DDP / FSDP engines.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from polytok.train.train_config import TrainConfig


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None  # None: single process, no process group
    owns_group: bool  # True when this module created the process group (and so destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(config: TrainConfig) -> DistInfo:
    """Pick the device and join the process group described by torchrun's environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = config.backend
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size(), device, dist.get_backend(), False)
    if world > 1:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
        return DistInfo(rank, local_rank, world, device, backend, True)
    return DistInfo(0, 0, 1, device, None, False)


def cleanup_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def resolve_strategy(config: TrainConfig, info: DistInfo) -> str:
    if config.strategy == "auto":
        return "ddp" if info.distributed else "none"
    if config.strategy == "ddp" and not info.distributed:
        return "none"
    return config.strategy


def wrap_model(
    model: nn.Module, config: TrainConfig, info: DistInfo, strategy: str, fsdp_layers: Sequence[str] = ()
) -> nn.Module:
    """Return the module to call in training: ``model`` itself, a DDP wrapper, or ``model`` FSDP-sharded.

    FSDP (torch.distributed.fsdp.fully_shard) shards every submodule whose class name is listed in
    ``fsdp_layers`` as its own unit, then the root; parameters stay fp32 (autocast does the bf16).
    """
    if strategy == "none":
        return model
    if strategy == "ddp":
        if not any(p.requires_grad for p in model.parameters()):
            return model  # nothing to synchronise (e.g. a frozen module)
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=ids, find_unused_parameters=config.find_unused_parameters
        )
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        scalars = [n for n, p in model.named_parameters() if p.ndim == 0]
        if scalars:
            raise ValueError(f"FSDP cannot shard 0-dim parameters {scalars}; store them with shape (1,)")
        mesh = init_device_mesh(info.device.type, (info.world_size,))
        wanted = set(fsdp_layers)
        found = set()
        units = [m for m in model.modules() if m is not model and type(m).__name__ in wanted]
        for module in units:  # names first: fully_shard swaps the class for an FSDP subclass
            found.add(type(module).__name__)
        for module in units:
            fully_shard(module, mesh=mesh)
        missing = wanted - found
        if missing:
            raise ValueError(f"fsdp_layers names no submodule class of the model: {sorted(missing)}")
        fully_shard(model, mesh=mesh)
        return model
    raise ValueError(f"unknown strategy {strategy!r}; expected 'auto', 'none', 'ddp' or 'fsdp'")


def all_true(flag: bool, info: DistInfo) -> bool:
    """Logical AND of a per-rank flag, so every rank takes the same branch (no collective mismatch)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)
