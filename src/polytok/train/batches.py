"""The training data stream: endless batches over epochs, with a position that checkpoints can restore.

Two kinds of dataset go through the same interface:

* map-style (``len`` + ``__getitem__``): a :class:`ResumableDistributedSampler` gives every rank the same
  number of samples per epoch; a resumed run skips the consumed indices without loading them.
* streaming (``torch.utils.data.IterableDataset``, e.g. webdataset shards): no sampler; the dataset splits
  itself over ranks and DataLoader workers. Ranks can hold different amounts of data (uneven shards), so
  after every batch the ranks agree, with one all-reduce of a "have a batch" flag, whether the epoch goes
  on: when any rank's stream has ended, every rank starts the next epoch together (the other ranks drop
  their current batch). Epoch counters and checkpoint positions therefore agree on all ranks, and every
  rank takes the same number of steps. A resumed run re-reads the epoch from its start and drops the
  batches already consumed: exact when the stream order is a deterministic function of (seed, epoch),
  and world size, ``batch_size`` and ``num_workers`` are unchanged. Random augmentations continue exactly
  too: with ``num_workers=0`` the process RNG is restored after the skip; with workers, their seeds
  depend on (seed, epoch, rank) only, so the skipped batches replay the same draws.

Datasets that define ``set_epoch(epoch)`` (``PhotoCrops``, ``ShardDataset``) are told the epoch before
each pass, also on resume, so per-epoch crops and shard orders continue exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from polytok.train import checkpoint as ckpt
from polytok.train.distributed import DistInfo, all_true
from polytok.train.sampler import ResumableDistributedSampler


def is_streaming(dataset: Dataset) -> bool:
    """True for datasets read as a stream (IterableDataset) rather than by index."""
    return isinstance(dataset, IterableDataset)


class TrainBatches:
    """Endless per-rank batches of ``batch_size`` (partial batches are dropped) with a resumable position.

    Args:
        dataset: map-style or streaming dataset.
        batch_size: samples per batch on this rank.
        dist_info: rank / world size (and device for the agreement all-reduce).
        num_workers: DataLoader worker processes.
        seed: base seed of the map-style shuffle and of the DataLoader worker seeds.
        shuffle: shuffle map-style datasets (streaming datasets shuffle themselves).
        collate_fn: batching function (default collation when None).
        pin_memory: pin host memory (for CUDA training).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        dist_info: DistInfo,
        *,
        num_workers: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.dist = dist_info
        self.seed = seed
        self.num_workers = num_workers
        self.streaming = is_streaming(dataset)
        self.sampler: ResumableDistributedSampler | None = None
        if not self.streaming:
            if not hasattr(dataset, "__len__"):
                raise TypeError(
                    f"{type(dataset).__name__} is neither an IterableDataset nor a map-style dataset with "
                    "__len__"
                )
            # Blocks of one batch: the global batch is the rank-order concatenation of the local ones.
            self.sampler = ResumableDistributedSampler(
                len(dataset),
                dist_info.world_size,
                dist_info.rank,
                shuffle=shuffle,
                seed=seed,
                block_size=batch_size,
            )
            if (
                len(dataset) < batch_size * dist_info.world_size
            ):  # the sampler pads by wrapping: count real ones
                raise ValueError(
                    f"each of the {dist_info.world_size} process(es) sees "
                    f"{len(dataset) // dist_info.world_size} samples per "
                    f"epoch, fewer than batch_size={batch_size}"
                )
        self._generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            drop_last=True,
            pin_memory=pin_memory,
            generator=self._generator,
        )
        self.epoch = 0
        self.batches_in_epoch = 0  # batches of the current epoch consumed by this rank (same on all ranks)
        self.samples_in_epoch = 0  # samples of the current epoch consumed by this rank
        self._skip = 0  # streaming: batches to drop when the epoch's iterator is (re)created
        self._iter: Iterator[Any] | None = None

    # ----------------------------------------------------------------------------------------------------

    def _start_epoch(self) -> None:
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        if self.streaming:
            # worker seeds depend on the epoch only, so skipping batches on resume replays the same draws
            self._generator.manual_seed(self.seed * 1_000_003 + self.epoch * 7_919 + self.dist.rank * 104_729)
            self._iter = iter(self.loader)
            self._drop_consumed_batches()
        else:
            self.sampler.set_epoch(self.epoch, self.samples_in_epoch)
            # seeds DataLoader workers from the data position, never from the global RNG
            self._generator.manual_seed(
                self.seed * 1_000_003 + self.epoch * 7_919 + self.dist.rank * 104_729 + self.samples_in_epoch
            )
            self._iter = iter(self.loader)

    def _drop_consumed_batches(self) -> None:
        """Re-read and drop the batches a resumed run already trained on, leaving the process RNG as it was
        (without workers, the dataset's augmentations draw from it)."""
        if self._skip == 0:
            return
        rng = ckpt.capture_rng_state()
        try:
            for _ in range(self._skip):
                next(self._iter)
        except StopIteration:
            # the stream is shorter than recorded (changed data or settings): the next fetch ends the epoch
            warnings.warn(
                f"the stream of epoch {self.epoch} ended while skipping {self._skip} consumed batches",
                RuntimeWarning,
                stacklevel=3,
            )
            self._iter = iter(())
        finally:
            ckpt.restore_rng_state(rng)
            self._skip = 0

    def _fetch(self) -> Any | None:
        try:
            return next(self._iter)
        except StopIteration:
            return None

    def next(self) -> Any:
        """The next batch; crosses into new epochs as needed."""
        while True:
            if self._iter is None:
                self._start_epoch()
            batch = self._fetch()
            has_batch = batch is not None
            if self.streaming:
                has_batch = all_true(has_batch, self.dist)  # every rank ends the epoch together
            if not has_batch:
                if self.streaming and self.batches_in_epoch == 0:
                    raise RuntimeError(
                        f"the streaming dataset gave no full batch of {self.batch_size} samples on some rank "
                        f"in epoch {self.epoch} (world size {self.dist.world_size}, {self.num_workers} "
                        "worker(s)): use fewer ranks/workers, more shards, or resampled=True with an "
                        "epoch_length of at least batch_size x world size x max(1, num_workers)"
                    )
                self.epoch += 1
                self.batches_in_epoch = self.samples_in_epoch = 0
                self._iter = None
                continue
            self.batches_in_epoch += 1
            self.samples_in_epoch += self.batch_size
            return batch

    # ----------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any], saved_world_size: int) -> None:
        """Continue at a saved position (exact with the same world size and batch size)."""
        epoch = int(state["epoch"])
        saved_batch = int(state.get("batch_size", self.batch_size))
        samples = int(state["samples_in_epoch"])  # per rank of the saved run
        if epoch < 0 or samples < 0:
            raise ValueError(f"invalid data position epoch={epoch} samples_in_epoch={samples}")
        if saved_world_size != self.dist.world_size or saved_batch != self.batch_size:
            # keep the global position; exact continuation needs the same world size and batch size
            samples = samples * saved_world_size // self.dist.world_size
            warnings.warn(
                f"resuming with world size {self.dist.world_size} and batch size {self.batch_size} from a "
                f"run with {saved_world_size} and {saved_batch}: the data order continues approximately",
                RuntimeWarning,
                stacklevel=3,
            )
        if self.sampler is not None:
            samples = min(samples, self.sampler.per_rank)
        self.epoch = epoch
        self.samples_in_epoch = samples  # the sampler skips single samples: kept exact
        self.batches_in_epoch = samples // self.batch_size
        self._skip = self.batches_in_epoch if self.streaming else 0
        self._iter = None
