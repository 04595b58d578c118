"""``build_dataset``: one entry point for built-in datasets, image folders and webdataset shards."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset

from polytok.data.folder import ImageFolderDataset
from polytok.data.photos import PhotoCrops
from polytok.data.shapes import ShapesDataset
from polytok.data.shards import ShardDataset
from polytok.data.transforms import transform_for_split

_BUILTIN: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Register a factory ``(split, image_size, **kw) -> Dataset`` under ``name``."""

    def decorate(factory: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in _BUILTIN:
            raise ValueError(f"dataset name {name!r} is already registered")
        _BUILTIN[name] = factory
        return factory

    return decorate


def list_datasets() -> list[str]:
    """Names of the built-in datasets."""
    return sorted(_BUILTIN)


@register_dataset("photos")
def _photos(split: str, image_size: int, **kw) -> Dataset:
    return PhotoCrops(split=split, image_size=image_size, **kw)


@register_dataset("shapes")
def _shapes(split: str, image_size: int, **kw) -> Dataset:
    return ShapesDataset(split=split, image_size=image_size, **kw)


def _is_shard_spec(spec: str | os.PathLike | Sequence) -> bool:
    if isinstance(spec, (list, tuple)):
        return bool(spec) and all(str(s).endswith(".tar") or str(s).endswith(".tar}") for s in spec)
    text = str(spec)
    return text.endswith(".tar") or (text.endswith("}") and ".tar" in text)


def build_dataset(
    name_or_path: str | os.PathLike | Sequence[str],
    split: str = "train",
    image_size: int = 64,
    **kw,
) -> Dataset:
    """Build a dataset by name, folder path or shard pattern.

    * ``"photos"`` / ``"shapes"`` (and any registered name): ``kw`` go to the dataset class.
    * a folder: :class:`ImageFolderDataset`; when ``folder/<split>`` exists (ImageNet layout) it is used.
    * ``/d/shard-{000000..000009}.tar``, one ``.tar`` or a list of them: :class:`ShardDataset`
      (``kw``: shuffle, shuffle_buffer, resampled, epoch_length, seed).

    Folders and shards get the ``train`` transform (random resized crop over ``kw["scale"]``, default
    (0.9, 1.0) as UniTok; flip unless ``hflip=False``) for ``split="train"``, else resize + centre crop.
    Example: ``build_dataset("shapes", split="heldout", image_size=64)``.
    """
    if isinstance(name_or_path, str) and name_or_path in _BUILTIN:
        return _BUILTIN[name_or_path](split=split, image_size=image_size, **kw)
    transform = transform_for_split(
        split, image_size, scale=kw.pop("scale", (0.9, 1.0)), hflip=kw.pop("hflip", True)
    )
    if _is_shard_spec(name_or_path):
        return ShardDataset(name_or_path, transform=transform, **kw)
    if isinstance(name_or_path, (str, os.PathLike)):
        path = Path(name_or_path)
        if path.is_dir():
            root = path / split if (path / split).is_dir() else path
            return ImageFolderDataset(root, transform=transform, **kw)
        if path.exists() or os.sep in str(name_or_path):
            raise FileNotFoundError(f"dataset path {str(path)!r} is not a folder of images or a .tar shard")
    raise ValueError(
        f"unknown dataset {name_or_path!r}: expected one of {list_datasets()}, an image folder path, "
        "or webdataset shards ('/data/shard-{000000..000009}.tar' or a list of .tar paths)"
    )
