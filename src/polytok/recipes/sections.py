"""What every training run shares, tokenizer or unified model: the data section, the training dataset
it names, the record of the config as run (``<out_dir>/run.yaml``) and the steps a run trained."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import ConcatDataset

from polytok.config import to_dict
from polytok.storage import atomic_write_text


@dataclass
class DataSection:
    """``name``: a built-in dataset (photos, shapes), an image folder or a webdataset shard pattern.
    ``options``: keyword arguments of the dataset; with ``a+b``, a key named after a part (``shapes:
    {...}``) holds options of that part only, the other keys go to every part."""

    name: str = "photos"
    split: str = "train"
    image_size: int = 64
    options: dict[str, Any] = field(default_factory=dict)


class ConcatWithEpoch(ConcatDataset):
    """ConcatDataset that passes ``set_epoch`` on to its parts (built-in photo crops change per epoch)."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)


def build_training_dataset(section: DataSection):
    """The dataset ``section.name``; ``a+b`` concatenates datasets (e.g. ``photos+shapes``)."""
    from polytok.data import build_dataset

    names = section.name.split("+")
    for name in names:
        if not isinstance(section.options.get(name, {}), dict):
            raise ValueError(f"data.options.{name} must hold {name}'s own options as a mapping")
    shared = {k: v for k, v in section.options.items() if k not in names}
    parts = [
        build_dataset(
            name,
            split=section.split,
            image_size=section.image_size,
            **shared,
            **section.options.get(name, {}),
        )
        for name in names
    ]
    return parts[0] if len(parts) == 1 else ConcatWithEpoch(parts)


def write_run_record(config: Any, precision: str, path: Path) -> Path:
    """Write ``config`` as run by this machine (``train.precision`` resolved) to ``path``, atomically."""
    import yaml

    data = to_dict(config)
    data["train"]["precision"] = precision
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def trained_steps(out_dir: Path) -> int:
    """Optimiser steps of the run in ``out_dir`` (its last log line: the final step is always logged)."""
    lines = (Path(out_dir) / "log.jsonl").read_text().splitlines()
    return int(json.loads(lines[-1])["step"]) if lines else 0
