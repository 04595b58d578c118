"""WebDataset tar shards: a streaming reader for DataComp/CC12M-scale data, and a writer.

A shard is a tar file of samples; the files of one sample share a key: ``000123.jpg`` (or ``.jpeg``,
``.png``, ``.webp``) plus ``000123.txt`` (caption) or ``000123.json`` (``{"caption": ...}`` or
``{"text": ...}``) and optionally ``000123.cls`` (integer label).

Reading (:class:`ShardDataset`) streams each shard once per epoch. Shards are shuffled with a seed that
depends on the epoch only, so every DDP rank and DataLoader worker sees the same order and then takes
its own slice (rank first, then worker): no sample is read twice. With ``resampled=True`` each worker
instead draws shards with replacement forever, and ``epoch_length`` ends the epoch after that many
samples in total (split evenly over ranks and workers), the usual set-up for one pass over web data where
all ranks must take the same number of steps. Samples that cannot be used (undecodable image, no image,
unreadable shard) are skipped, logged and counted in :attr:`ShardDataset.skipped`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset

from polytok.data.images import SkipCounter, UnreadableImageError, decode_image

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_REMOTE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://", "ais://")


def expand_shards(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expand ``/d/shard-{000000..000009}.tar`` (or a list of those) into shard paths.

    Local shards must exist; remote URLs (``pipe:``, ``http://`` ...) are left to webdataset to open.
    """
    if isinstance(urls, (str, os.PathLike)):
        shards = wds.shardlists.expand_urls(str(urls))
    elif isinstance(urls, Sequence):
        shards = [s for u in urls for s in wds.shardlists.expand_urls(str(u))]
    else:
        kind = type(urls).__name__
        raise TypeError(f"shard urls must be a string pattern or a list of strings, got {kind}")
    if not shards:
        raise ValueError(f"no shards in {urls!r}")
    missing = [s for s in shards if not s.startswith(_REMOTE_PREFIXES) and not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(shards)} shards not found, first: {missing[0]}")
    return shards


def worker_slot() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers) of the calling process."""
    return wds.utils.pytorch_worker_info()


class ShardDataset(IterableDataset):
    """Streaming dataset over WebDataset shards.

    Yields ``{"image": (3, S, S) float in [0, 1], "caption": str, "label": int (or -1), "key": str}``.

    Args:
        urls: brace pattern (``/d/shard-{000000..000099}.tar``), a list of shard paths or URLs.
        transform: PIL RGB image -> tensor (3, S, S); see :mod:`polytok.data.transforms`.
        shuffle: shuffle the shard order each epoch and the samples in a buffer of ``shuffle_buffer``.
        shuffle_buffer: samples held for shuffling (0 disables sample shuffling).
        resampled: draw shards with replacement without end (needs ``epoch_length``).
        epoch_length: samples per epoch over all ranks and workers (optional when not resampled).
        seed: base seed of the shard order and of the sample shuffle.
    """

    def __init__(
        self,
        urls: str | os.PathLike | Sequence[str | os.PathLike],
        transform: Callable[[Image.Image], torch.Tensor],
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        epoch_length: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.shards = expand_shards(urls)
        if resampled and not epoch_length:
            raise ValueError("resampled=True streams without end: give epoch_length (samples per epoch)")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1, got {epoch_length}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.transform = transform
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.resampled = resampled
        self.epoch_length = epoch_length
        self.seed = int(seed)
        self.epoch = 0
        self.skip_counter = SkipCounter()

    @property
    def skipped(self) -> int:
        """Samples or shards skipped so far (main process and all workers together)."""
        return self.skip_counter.total

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order of ``epoch`` (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def _on_error(self, error: Exception) -> bool:
        """webdataset handler: count and log a broken shard or tar member, then go on."""
        self.skip_counter.add("a shard entry", f"{type(error).__name__}: {error}")
        return True

    def _shards_for_this_process(self, rank: int, world: int, worker: int, workers: int) -> Iterator[str]:
        if self.resampled:
            rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}")
            while True:
                yield rng.choice(self.shards)
        order = list(self.shards)
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        yield from order[rank::world][worker::workers]

    def _decode(self, sample: dict[str, Any]) -> dict | None:
        decoded = self.decode_or_mark(sample)
        return None if "unreadable" in decoded else decoded

    def decode_or_mark(self, sample: dict[str, Any]) -> dict:
        """One raw tar sample -> ``{"image", "caption", "label", "key"}``, or, when it has no readable
        image, ``{"key", "file": "<url>#<key>", "unreadable": reason}`` (counted in :attr:`skipped`)."""
        key = sample.get("__key__", "?")
        url = sample.get("__url__", "?")
        where = f"sample {key} of {url}"

        def unreadable(reason: str) -> dict:
            self.skip_counter.add(where, reason)
            return {"key": key, "file": f"{url}#{key}", "unreadable": reason}

        image_key = next((k for k in IMAGE_KEYS if k in sample), None)
        if image_key is None:
            return unreadable(f"no image entry ({'/'.join(IMAGE_KEYS)})")
        try:
            image = decode_image(sample[image_key], name=f"{where}.{image_key}")
        except UnreadableImageError as error:
            return unreadable(str(error))
        caption = ""
        if "txt" in sample:
            caption = sample["txt"].decode("utf-8", errors="replace").strip()
        elif "json" in sample:
            try:
                meta = json.loads(sample["json"])
                caption = str(meta.get("caption", meta.get("text", ""))).strip()
            except (ValueError, AttributeError):
                log.warning("unreadable json metadata in %s; empty caption", where)
        label = -1
        if "cls" in sample:
            try:
                label = int(sample["cls"].decode("ascii").strip())
            except ValueError:
                log.warning("unreadable cls entry in %s; label -1", where)
        return {"image": self.transform(image), "caption": caption, "label": label, "key": key}

    def __iter__(self) -> Iterator[dict]:
        rank, world, worker, workers = worker_slot()
        if not self.resampled and len(self.shards) < world * workers:
            log.warning(
                "%d shards for %d ranks x %d workers: some get no data; "
                "write more shards or use resampled=True",
                len(self.shards),
                world,
                workers,
            )
        shards = ({"url": url} for url in self._shards_for_this_process(rank, world, worker, workers))
        stream: Iterable[dict] = wds.tariterators.tarfile_samples(shards, handler=self._on_error)
        if self.shuffle and self.shuffle_buffer > 0:
            rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}-samples")
            stream = wds.filters.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng)(
                iter(stream)
            )
        limit = math.inf if self.epoch_length is None else math.ceil(self.epoch_length / (world * workers))
        produced = 0
        for raw in stream:
            if produced >= limit:
                break
            sample = self._decode(raw)
            if sample is not None:
                produced += 1
                yield sample


def _encode_image(image: Any, image_format: str, quality: int) -> tuple[str, bytes]:
    """(extension, bytes) for a file path, encoded bytes, PIL image, uint8 HWC array or (3, H, W) tensor."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        extension = path.suffix.lower().lstrip(".")
        extension = "jpg" if extension == "jpeg" else extension
        if extension in IMAGE_KEYS:
            return extension, path.read_bytes()  # stored as is; broken files stay broken, readers skip them
        image = decode_image(path)
    if isinstance(image, bytes):
        return image_format, image
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, H, W), got {tuple(image.shape)}")
        image = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"cannot store an image of type {type(image).__name__}")
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=image_format.upper())
    return image_format, buffer.getvalue()


def write_shards(
    samples: Iterable[dict],
    pattern: str | os.PathLike,
    maxcount: int = 10_000,
    image_format: str = "jpg",
    quality: int = 95,
) -> list[str]:
    """Write samples into tar shards named ``pattern % shard_index``; returns the shard paths.

    Each sample is a dict with ``image`` (file path, encoded bytes, PIL image, uint8 (H, W, 3) array or
    float (3, H, W) tensor in [0, 1]), optional ``caption`` (str), ``label`` (int >= 0), ``key``
    (str without dots; default: the running index) and ``json`` (dict of metadata).
    Example: ``write_shards(iter_folder_samples("photos/"), "out/shard-%06d.tar", maxcount=1000)``.
    """
    pattern = str(pattern)
    if image_format not in ("jpg", "png", "webp"):
        raise ValueError(f"image_format must be 'jpg', 'png' or 'webp', got {image_format!r}")
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    bad_pattern = f"shard pattern needs one %d field, e.g. 'out/shard-%06d.tar', got {pattern!r}"
    try:
        first = pattern % 0
    except TypeError as error:
        raise ValueError(bad_pattern) from error
    if first == pattern % 1:
        raise ValueError(bad_pattern)
    Path(first).parent.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    writer: wds.TarWriter | None = None
    count = 0
    try:
        for index, sample in enumerate(samples):
            if writer is None or count >= maxcount:
                if writer is not None:
                    writer.close()
                written.append(pattern % len(written))
                writer = wds.TarWriter(written[-1])
                count = 0
            key = str(sample.get("key", f"{index:09d}"))
            if "." in key:
                raise ValueError(f"sample key {key!r} contains a dot, which splits keys in a shard")
            extension, data = _encode_image(sample["image"], image_format, quality)
            record: dict[str, Any] = {"__key__": key, extension: data, "txt": sample.get("caption", "")}
            label = sample.get("label", -1)
            if label is not None and int(label) >= 0:
                record["cls"] = int(label)
            if "json" in sample:
                record["json"] = sample["json"]
            writer.write(record)
            count += 1
    finally:
        if writer is not None:
            writer.close()
    if not written:
        raise ValueError("write_shards got no samples")
    return written
