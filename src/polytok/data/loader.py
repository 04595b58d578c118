"""Batching: the collate function and a DataLoader factory that works with any sampler.

A batch is a dict::

    {"image": (B, 3, H, W) float in [0, 1], "caption": list[str], "label": LongTensor (B,) (-1 = none),
     "key": list[str] (when samples have keys), "attributes": {task: LongTensor (B,)} (shapes only),
     "object_mask": (B, 1, H, W) float in [0, 1] (when some sample has one; zeros for those without),
     "negative_captions": list of B lists of str (when some sample has them; [] for those without)}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, RandomSampler, Sampler

log = logging.getLogger(__name__)


def collate(samples: Sequence[dict]) -> dict:
    """Stack samples into a batch dict (see the module docstring for the layout)."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"images in a batch must share one shape, got {sorted(shapes)}: set one image_size")
    batch: dict = {
        "image": torch.stack([s["image"] for s in samples]),
        "caption": [s.get("caption", "") for s in samples],
        "label": torch.tensor([int(s.get("label", -1)) for s in samples], dtype=torch.long),
    }
    if any("negative_captions" in s for s in samples):
        # hard-negative captions per image (shapes: the shape word swapped); none for photos
        batch["negative_captions"] = [list(s.get("negative_captions", [])) for s in samples]
    if all("key" in s for s in samples):
        batch["key"] = [s["key"] for s in samples]
    if any("object_mask" in s for s in samples):
        # photos have no objects marked: their pixels all count as background
        blank = torch.zeros((1, *batch["image"].shape[2:]))
        batch["object_mask"] = torch.stack([s.get("object_mask", blank) for s in samples])
    if all("attributes" in s for s in samples):
        tasks = samples[0]["attributes"].keys()
        batch["attributes"] = {
            t: torch.tensor([s["attributes"][t] for s in samples], dtype=torch.long) for t in tasks
        }
    return batch


class ReportingDataLoader(DataLoader):
    """A DataLoader that logs, after each full pass, how many broken samples the dataset skipped."""

    def __iter__(self) -> Iterator:
        counter = getattr(self.dataset, "skip_counter", None)
        before = counter.total if counter is not None else 0
        yield from super().__iter__()
        if counter is not None and counter.total > before:
            skipped_now = counter.total - before
            log.warning("%d unreadable samples skipped in this pass (%d in all)", skipped_now, counter.total)


SamplerHook = Callable[[Dataset], Sampler]


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int = 0,
    sampler: Sampler | SamplerHook | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    seed: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader with :func:`collate` for map-style or streaming datasets.

    Sampler choice for map-style datasets: ``sampler`` if given (a Sampler, or a hook
    ``dataset -> Sampler`` such as a resumable distributed sampler); otherwise a
    ``DistributedSampler`` when torch.distributed is initialised with several ranks; otherwise a seeded
    random (``shuffle=True``) or sequential order. Streaming datasets (:class:`ShardDataset`) shuffle and
    split themselves, so they take no sampler.
    Example: ``build_dataloader(build_dataset("shapes"), batch_size=32, num_workers=2)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    generator = torch.Generator().manual_seed(seed)
    chosen: Sampler | None = None
    if isinstance(dataset, IterableDataset):
        if sampler is not None:
            raise ValueError("streaming datasets split and shuffle themselves: do not pass a sampler")
    elif sampler is not None:
        chosen = sampler(dataset) if callable(sampler) and not isinstance(sampler, Sampler) else sampler
    elif dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        chosen = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        chosen = RandomSampler(dataset, generator=generator)
    return ReportingDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=chosen,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        generator=generator,
    )
