"""What a training run leaves in its ``out_dir``, so that a new run neither mixes with nor silently
replaces an old one.

A run writes ``checkpoints/`` (complete and partial step directories), ``log.jsonl`` and, with
tensorboard installed, ``tensorboard/``. A fresh run into a folder that holds any of them is refused
unless it resumes that run (``resume``) or replaces it (``overwrite``: the old files are removed first,
so a later resume cannot pick up one of the old run's higher-numbered checkpoints).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

RUN_ENTRIES = ("checkpoints", "log.jsonl", "tensorboard")


class OutDirInUseError(FileExistsError):
    """``out_dir`` holds another run and neither resume nor overwrite was asked for."""


def previous_run_entries(out_dir: str | os.PathLike) -> list[Path]:
    """The run files and folders present in ``out_dir`` (an empty ``checkpoints/`` does not count)."""
    out = Path(out_dir)
    found = []
    for name in RUN_ENTRIES:
        path = out / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            found.append(path)
    return found


def refuse_or_clear(
    out_dir: str | os.PathLike, entries: list[Path], overwrite: bool, remove: bool = True
) -> None:
    """Raise :class:`OutDirInUseError` naming ``entries``, or with ``overwrite`` remove them (only where
    ``remove``: one rank removes, every rank decides the same)."""
    if not entries:
        return
    if not overwrite:
        names = ", ".join(p.name for p in entries)
        raise OutDirInUseError(
            f"{out_dir} already holds a training run ({names}): set train.resume=true to continue it, "
            "train.overwrite=true to replace it, or choose another train.out_dir"
        )
    for path in entries if remove else []:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
