"""Training data of the unified model: datasets of ``{"codes", "caption"}`` items and their collation.

Any map-style or streaming dataset whose items are ``{"codes": int64 (h, w, *code_shape), "caption": str}``
trains the unified model; an optional ``"key": (epoch, index)`` makes caption dropout a function of the
sample, an optional ``"object_cover": float (h, w)`` (each grid cell's coverage by objects) feeds
``object_loss_weight``. Small image datasets are encoded on the fly through the frozen image tokenizer by
:class:`EncodedCaptions`; token shards written by ``polytok encode`` are streamed by
:class:`TokenShardCaptions`.

:class:`MixedTaskCollate` turns a list of items into one mixed batch: even rows text -> image, odd rows
image -> text, so every batch of two or more trains both the depth head and the LM head (under DDP every
parameter then gets a gradient every step and no rank waits for one).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

from polytok.unified.sequence import SequenceFormat, Task
from polytok.unified.text_tokenizer import TextTokenizer


class EncodedCaptions(Dataset):
    """An image dataset (items with ``image`` (3, H, W) and ``caption``) seen as ``{"codes", "caption",
    "key"}``, plus ``"object_cover"`` (h, w) where the items have an ``object_mask`` (1, H, W): the mask
    averaged over each grid cell of the codes.

    Each image is encoded alone (batch 1), so its codes never depend on which samples share a batch or a
    rank. ``cache=True`` keeps the codes of each index after the first encoding: only for datasets that
    give the same image for an index every epoch (``shapes`` does; random crops do not).
    """

    def __init__(self, images: Dataset, tokenizer: Any, *, cache: bool = True) -> None:
        self.images, self.tokenizer, self.cache = images, tokenizer, cache
        self.epoch = 0
        self._codes: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.images, "set_epoch"):
            self.images.set_epoch(epoch)

    def caption(self, index: int) -> str:
        """The caption of sample ``index`` without encoding its image."""
        return self.images[index]["caption"]

    @torch.no_grad()
    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.images[index]
        caption = item.get("caption")
        if not isinstance(caption, str):
            raise ValueError(f"sample {index} has no caption: the unified model trains on captioned images")
        codes = self._codes.get(index)
        if codes is None:
            image = item["image"][None].to(self.tokenizer.device)
            codes = self.tokenizer.encode(image)[0].cpu()
            if self.cache:
                self._codes[index] = codes
        out = {"codes": codes, "caption": caption, "key": (self.epoch, index)}
        mask = item.get("object_mask")
        if mask is not None:
            out["object_cover"] = cell_cover(mask, (codes.shape[0], codes.shape[1]))
        return out


def cell_cover(mask: Tensor, grid: tuple[int, int]) -> Tensor:
    """An object mask (1, H, W) in [0, 1] -> (h, w): the mean of the mask over each grid cell (H, W must be
    multiples of h, w: the tokenizer's stride)."""
    m = torch.as_tensor(mask, dtype=torch.float32)
    if m.dim() != 3 or m.shape[0] != 1 or m.shape[1] % grid[0] or m.shape[2] % grid[1]:
        raise ValueError(
            f"object_mask must be (1, H, W) with H, W multiples of the grid {grid}, got {tuple(m.shape)}"
        )
    return F.avg_pool2d(m[None], (m.shape[1] // grid[0], m.shape[2] // grid[1]))[0, 0]


def sample_number(key: str) -> int:
    """A token shard's sample key as an int: the dataset index it names (``"000000012"`` -> 12, the key
    :class:`EncodedCaptions` gives the same image), else a stable 63-bit hash of a file's name."""
    if key.isdigit():
        return int(key)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


class TokenShardCaptions(IterableDataset):
    """A token set (:class:`polytok.tokensets.shards.TokenShardDataset`) streamed as ``{"codes", "caption",
    "key": (epoch, sample number)}`` items.

    The stream splits itself over ranks and DataLoader workers; its order is a function of (seed, epoch),
    so a resumed run re-reads an epoch exactly. Keys make caption dropout a function of the sample, as for
    the same images encoded on the fly.
    """

    def __init__(self, shards: Any) -> None:
        super().__init__()
        self.shards = shards
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.shards.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.shards:
            key = (self.epoch, sample_number(item["key"]))
            yield {"codes": item["codes"], "caption": item["caption"], "key": key}

    def captions(self, count: int) -> list[str]:
        """The captions of the set's first ``count`` samples in dataset order (the same on every rank)."""
        from polytok.tokensets.shards import load_token_shards

        return load_token_shards(self.shards.manifest["directory"], limit=count)["captions"]


def batch_tasks(size: int) -> list[Task]:
    """Tasks of a batch's rows: text -> image on even rows, image -> text on odd rows."""
    return ["t2i" if row % 2 == 0 else "i2t" for row in range(size)]


class MixedTaskCollate:
    """``{"codes", "caption"}`` items -> the fields of a :class:`SequenceBatch` as a dict of tensors.

    Caption dropout (text -> image rows trained on the empty caption): an item with a ``key`` (epoch,
    index) is dropped by a draw from (seed, epoch, index) alone, the same whichever rank or micro-batch
    it lands in and on resume; others draw from the process's torch random stream, which the engine's
    checkpoints restore.
    """

    def __init__(
        self, fmt: SequenceFormat, text: TextTokenizer, caption_dropout: float, seed: int = 0
    ) -> None:
        self.format, self.text, self.caption_dropout, self.seed = fmt, text, caption_dropout, seed

    def _dropped(self, item: dict[str, Any]) -> bool:
        if self.caption_dropout == 0.0:
            return False
        key = item.get("key")
        if key is None:
            return bool(torch.rand(()) < self.caption_dropout)
        return bool(
            np.random.default_rng([self.seed, *(int(k) for k in key)]).random() < self.caption_dropout
        )

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        codes = torch.stack([torch.as_tensor(it["codes"], dtype=torch.long) for it in items])
        tasks = batch_tasks(len(items))
        captions = [
            [] if task == "t2i" and self._dropped(it) else self.text.encode(it["caption"])
            for it, task in zip(items, tasks)
        ]
        cover = None
        if all("object_cover" in it for it in items):  # all or none: a batch weighs its rows alike
            cover = torch.stack([torch.as_tensor(it["object_cover"], dtype=torch.float32) for it in items])
        return vars(self.format.training_batch(codes, captions, tasks, object_cover=cover))


def caption_batch(fmt: SequenceFormat, text: TextTokenizer, items: Sequence[dict[str, Any]]) -> dict:
    """Image -> text rows only (held-out caption loss): the fields of a :class:`SequenceBatch`."""
    codes = fmt.layout.to_levels(torch.stack([torch.as_tensor(it["codes"]) for it in items]))
    rows = [fmt.image_to_text(c, text.encode(it["caption"])) for c, it in zip(codes, items)]
    return vars(fmt.collate(rows))
