"""Data: built-in datasets that need no download (``photos``, ``shapes``), image folders, webdataset
shards, transforms and batching.

Every dataset yields ``{"image": (3, H, W) float in [0, 1], "caption": str, "label": int}`` (plus
``key`` / ``attributes`` where available); :func:`collate` stacks them into a batch dict.
"""

from polytok.data.folder import ImageFolderDataset, iter_folder_samples
from polytok.data.images import IMAGE_EXTENSIONS, SkipCounter, UnreadableImageError, decode_image
from polytok.data.loader import build_dataloader, collate
from polytok.data.photos import PhotoCrops
from polytok.data.registry import build_dataset, list_datasets, register_dataset
from polytok.data.shapes import ShapesDataset
from polytok.data.shards import ShardDataset, write_shards
from polytok.data.transforms import eval_transform, train_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "PhotoCrops",
    "ShapesDataset",
    "ShardDataset",
    "SkipCounter",
    "UnreadableImageError",
    "build_dataloader",
    "build_dataset",
    "collate",
    "decode_image",
    "eval_transform",
    "iter_folder_samples",
    "list_datasets",
    "register_dataset",
    "train_transform",
    "write_shards",
]
