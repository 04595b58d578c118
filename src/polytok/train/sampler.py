"""A deterministic, resumable distributed sampler.

Epoch ``e`` visits a permutation drawn from ``seed + e`` (or the identity without shuffling). The
permutation is padded by wrapping (or cut, with ``drop_last``) to a multiple of ``W * block_size`` and cut
into blocks of ``block_size`` consecutive samples; rank ``r`` takes blocks ``r, r + W, r + 2W, ...``.
Because the per-rank lists interleave block by block, the first ``k`` blocks of every rank, concatenated
in rank order, are exactly the first ``k * W`` blocks of the epoch's permutation, in order. With
``block_size`` equal to the batch size, a 2-process run with batch ``b`` consumes per step the same
samples, in the same order, as 1 process with batch ``2b``; the order matters to whatever draws from the
batch as a whole (codebook k-means initialisation and dead-code restarts sample rows of the global batch).
``set_epoch(epoch, start=n)`` skips the first ``n`` samples of this rank, so a resumed run continues
with the exact next batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    def __init__(
        self,
        dataset_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        block_size: int = 1,
    ) -> None:
        if dataset_size < 1:
            raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not valid for num_replicas={num_replicas}")
        if drop_last and dataset_size < num_replicas:
            raise ValueError(f"drop_last with {dataset_size} samples and {num_replicas} ranks leaves nothing")
        self.dataset_size, self.num_replicas, self.rank = dataset_size, num_replicas, rank
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if drop_last and dataset_size < num_replicas * block_size:
            raise ValueError(
                f"drop_last with {dataset_size} samples, {num_replicas} ranks and blocks of "
                f"{block_size} leaves nothing"
            )
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.block_size = block_size
        self.epoch, self.start = 0, 0
        span = num_replicas * block_size
        blocks = dataset_size // span if drop_last else -(-dataset_size // span)
        self.per_rank = blocks * block_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip this rank's first ``start`` samples."""
        if epoch < 0 or not 0 <= start <= self.per_rank:
            raise ValueError(f"invalid position epoch={epoch} start={start} (per-rank size {self.per_rank})")
        self.epoch, self.start = epoch, start

    def epoch_indices(self, epoch: int) -> list[int]:
        """This rank's full index list for ``epoch`` (before skipping)."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=g).tolist()
        else:
            order = list(range(self.dataset_size))
        total = self.per_rank * self.num_replicas
        if total > len(order):  # wrap around so every rank gets the same count
            reps = -(-total // len(order))
            order = (order * reps)[:total]
        order = order[:total]
        b, w = self.block_size, self.num_replicas
        return [i for start in range(self.rank * b, total, w * b) for i in order[start : start + b]]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start
