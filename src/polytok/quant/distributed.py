"""Collectives that keep codebooks identical on every rank.

Every helper here is a no-op outside an initialised process group (or when syncing is switched off), so
the same code runs on one CPU and on many GPUs. Callers must call them unconditionally on every rank:
a collective entered by some ranks only is the classic cause of DDP hangs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed(enabled: bool = True) -> bool:
    return enabled and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: Tensor, enabled: bool = True) -> Tensor:
    """Sum ``tensor`` over ranks in place (no-op when not distributed)."""
    if is_distributed(enabled):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_(tensor: Tensor, src: int = 0, enabled: bool = True) -> Tensor:
    if is_distributed(enabled):
        dist.broadcast(tensor, src=src)
    return tensor


def world_and_rank(enabled: bool = True) -> tuple[int, int]:
    """(world size, rank) of the group the statistics are summed over; (1, 0) when not distributed."""
    if not is_distributed(enabled):
        return 1, 0
    return dist.get_world_size(), dist.get_rank()


def global_row_offsets(local_rows: int, device: torch.device, enabled: bool = True) -> tuple[int, int]:
    """(offset of this rank's rows in the rank-ordered global batch, total global rows); collective."""
    if not is_distributed(enabled):
        return 0, local_rows
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = torch.zeros(world, dtype=torch.long, device=device)
    sizes[rank] = local_rows
    dist.all_reduce(sizes)
    return int(sizes[:rank].sum()), int(sizes.sum())


def sample_global_rows(
    x: Tensor,
    count: int,
    generator: torch.Generator,
    enabled: bool = True,
    offsets: tuple[int, int] | None = None,
) -> Tensor:
    """Draw ``count`` rows per group uniformly from the batch concatenated over ranks in rank order.

    Every rank draws the same global row numbers from an identically seeded generator, contributes the
    rows it holds and the contributions are summed, so each rank gets the same sample and that sample
    equals what one process holding the whole batch would draw. Traffic is ``count`` rows, not the batch.

    Args:
        x: (G, M, d) local rows per group.
        count: rows to draw per group (with replacement).
        generator: CPU generator seeded identically on every rank.
        offsets: ``global_row_offsets`` of ``x`` when already known (saves one collective).
    Returns:
        (G, count, d) float32.
    """
    groups, local_rows, d = x.shape
    offset, total = offsets if offsets is not None else global_row_offsets(local_rows, x.device, enabled)
    if total == 0:
        raise ValueError("cannot sample rows from an empty batch")
    picks = torch.randint(total, (groups, count), generator=generator, device="cpu").to(x.device)
    out = torch.zeros(groups, count, d, dtype=torch.float32, device=x.device)
    mine = (picks >= offset) & (picks < offset + local_rows)
    if local_rows > 0:
        local = (picks - offset).clamp(0, local_rows - 1)
        gathered = torch.gather(x.float(), 1, local.unsqueeze(-1).expand(-1, -1, d))
        out = torch.where(mine.unsqueeze(-1), gathered, out)
    return all_reduce_sum_(out, enabled)
