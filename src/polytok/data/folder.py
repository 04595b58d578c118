"""Image folders, with or without class subfolders, and optional caption sidecar files.

Layouts understood (images: .jpg .jpeg .png .webp .bmp .gif .tif .tiff, any case, searched recursively)::

    root/cat/001.jpg, root/dog/002.png ...   labels from the top-level subfolder (sorted names -> 0, 1, ...)
    root/001.jpg, root/002.jpg ...           no subfolders: every label is -1
    root/001.jpg + root/001.txt              caption read from the .txt file with the same stem

Without a sidecar caption the caption is ``caption_template`` filled with the class name when there
are classes ("a photo of a cat"), else the empty string. Broken image files (empty, truncated, not an
image) are skipped: for training the sample is replaced by the next readable index (deterministically);
with ``replace_broken=False`` (encoding a dataset, where a copy would be a wrong row) the sample comes
back marked ``{"key", "file", "unreadable": reason}`` without an image. Each skip is counted in
:attr:`ImageFolderDataset.skipped`, also from DataLoader workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from polytok.data.images import IMAGE_EXTENSIONS, SkipCounter, UnreadableImageError, decode_image


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root``, sorted by relative path (deterministic across machines)."""
    root = Path(root)
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def read_sidecar_caption(image_path: Path) -> str | None:
    """The caption in ``<stem>.txt`` beside the image, stripped, or None when there is none."""
    sidecar = image_path.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8", errors="replace").strip()
    return None


class ImageFolderDataset(Dataset):
    """Map-style dataset over an image folder.

    Each item: ``{"image": (3, S, S) float in [0, 1], "caption": str, "label": int (or -1),
    "key": relative path}``.

    Args:
        root: the folder.
        transform: PIL RGB image -> tensor (3, S, S); see :mod:`polytok.data.transforms`.
        caption_template: caption for images without a sidecar .txt when classes exist.
        replace_broken: True: a broken file's index yields the next readable image; False: it yields
            ``{"key", "file", "unreadable": reason}`` (no image) so that the caller can skip and list it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], torch.Tensor],
        caption_template: str = "a photo of a {}",
        replace_broken: bool = True,
    ) -> None:
        self.root = Path(root)
        self.replace_broken = replace_broken
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.files = find_images(self.root)
        if not self.files:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")
        class_dirs = sorted({p.relative_to(self.root).parts[0] for p in self.files if p.parent != self.root})
        self.classes: list[str] = class_dirs
        class_index = {name: i for i, name in enumerate(class_dirs)}
        self.labels = [
            -1 if p.parent == self.root else class_index[p.relative_to(self.root).parts[0]]
            for p in self.files
        ]
        self.transform = transform
        self.caption_template = caption_template
        self.skip_counter = SkipCounter()

    @property
    def skipped(self) -> int:
        """Broken files skipped so far (main process and all workers together)."""
        return self.skip_counter.total

    def __len__(self) -> int:
        return len(self.files)

    def class_names(self, task: str = "class") -> list[str]:
        """Subfolder names in label order."""
        if task != "class":
            raise ValueError(f"unknown task {task!r} for an image folder: expected 'class'")
        return list(self.classes)

    def caption(self, index: int) -> str:
        sidecar = read_sidecar_caption(self.files[index])
        if sidecar is not None:
            return sidecar
        label = self.labels[index]
        return self.caption_template.format(self.classes[label]) if label >= 0 else ""

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.files):
            raise IndexError(f"index {index} out of range for {len(self.files)} images in {self.root}")
        for attempt in range(len(self.files)):
            current = (index + attempt) % len(self.files)
            path = self.files[current]
            try:
                image = decode_image(path)
            except UnreadableImageError as error:
                self.skip_counter.add(str(path), str(error))
                if not self.replace_broken:
                    relative = path.relative_to(self.root)
                    return {
                        "key": relative.with_suffix("").as_posix(),
                        "file": relative.as_posix(),
                        "unreadable": str(error),
                    }
                continue
            return {
                "image": self.transform(image),
                "caption": self.caption(current),
                "label": self.labels[current],
                "key": path.relative_to(self.root).with_suffix("").as_posix(),
            }
        raise RuntimeError(f"no readable image among the {len(self.files)} files under {self.root}")


def iter_folder_samples(root: str | os.PathLike, caption_template: str = "a photo of a {}") -> Iterator[dict]:
    """Raw samples of a folder for :func:`polytok.data.shards.write_shards`: the image as its file path
    (copied into the shard without re-encoding), caption and label as :class:`ImageFolderDataset` reads
    them, and the file's index in sorted order as key (paths may hold dots, which keys cannot)."""
    dataset = ImageFolderDataset(root, transform=lambda image: image, caption_template=caption_template)
    for index, path in enumerate(dataset.files):
        yield {
            "key": f"{index:09d}",
            "image": path,
            "caption": dataset.caption(index),
            "label": dataset.labels[index],
        }
