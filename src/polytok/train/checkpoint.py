"""Atomic, verifiable training checkpoints with fall-back to the newest complete one.

Layout of one checkpoint (a directory ``<root>/step_00001000``)::

    model.safetensors          full model weights
    ema.safetensors            EMA weights (when enabled)
    <name>.safetensors         further modules, e.g. ``discriminator.safetensors``
    trainer_state.pt           optimisers, schedulers, step, data position, counters (torch.save)
    rng_rank<r>.pt             python / numpy / torch / cuda RNG states of rank r
    manifest.json              written last: step and the size + sha256 of every file above

Every file is written to a temporary file in the same directory, fsync'ed and moved into place with
``os.replace``; the files are gathered in ``.step_XXXXXXXX.partial`` and the directory takes its final
name only once complete (``polytok.storage.publish``: saving a step again swaps the directories so that
a complete one always exists, at ``step_XXXXXXXX`` or, after a crash mid-swap, ``step_XXXXXXXX.old-*``,
which ``list_checkpoints`` finds). Partial directories a crash left behind are removed by the next save.
A checkpoint without a manifest, or with a file whose size or checksum differs from it, is reported as
``CheckpointError``; ``find_latest_checkpoint`` then falls back to the previous complete one. Pickled
files are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor

from polytok import storage
from polytok.storage import atomic_write, sha256_file

MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_PREVIOUS_STEP_DIR = re.compile(r"^step_(\d{8,})\.old-\d+-[0-9a-f]+$")  # left by a crash mid-swap
_PARTIAL_DIR = re.compile(r"^\.step_\d{8,}\.partial$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, truncated or corrupt."""


# ---------------------------------------------------------------------------------------------------------
# low-level atomic writes


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_safetensors(tensors: Mapping[str, Tensor], path: str | Path) -> None:
    """Save a flat tensor dict as safetensors atomically (tensors sharing memory are copied)."""
    path = Path(path)
    seen: set[tuple[int, int]] = set()
    flat = {}
    for name, t in tensors.items():
        t = t.detach().cpu()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else (id(t), 0)
        flat[name] = t.clone().contiguous() if key in seen or not t.is_contiguous() else t
        seen.add(key)
    atomic_write(path, lambda f: f.write(save(flat)))


# ---------------------------------------------------------------------------------------------------------
# RNG states (plain types + tensors, so that weights_only loading works)


def capture_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------------
# checkpoint directories


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every finalised checkpoint directory under ``root``, oldest first.

    A step whose directory a crash left only as ``step_XXXXXXXX.old-*`` (the previous version, mid-swap)
    is listed with that directory.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    steps = set()
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name) or _PREVIOUS_STEP_DIR.match(child.name)
        if m and child.is_dir():
            steps.add(int(m.group(1)))
    found = [(step, storage.resolve(root / step_dir_name(step))) for step in steps]
    return sorted((step, path) for step, path in found if path is not None)


def partial_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f".{step_dir_name(step)}.partial"


def begin_checkpoint(root: str | Path, step: int) -> Path:
    """Create an empty staging directory for ``step`` (call on one rank, then synchronise); first remove
    what crashed saves left: partial directories, and previous versions of re-saved steps (moved back
    where a crash lost the step's directory itself)."""
    root = Path(root)
    if root.is_dir():
        for child in root.iterdir():
            if _PARTIAL_DIR.match(child.name):
                shutil.rmtree(child, ignore_errors=True)
            elif m := _PREVIOUS_STEP_DIR.match(child.name):
                final = root / step_dir_name(int(m.group(1)))
                storage.restore_interrupted(final)
                storage.prune_stale(final)
    staging = partial_dir(root, step)
    staging.mkdir(parents=True)
    return staging


def finalize_checkpoint(root: str | Path, step: int, extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Checksum the staged files, write the manifest last, and rename the directory into place."""
    root = Path(root)
    staging = partial_dir(root, step)
    files = {}
    for f in sorted(staging.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            files[f.name] = {"size": f.stat().st_size, "sha256": sha256_file(f)}
    manifest = {"format": FORMAT_VERSION, "step": step, "files": files, **dict(extra_meta or {})}
    atomic_write(staging / MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    return storage.publish(staging, root / step_dir_name(step))  # replaces a saved step atomically


def prune_checkpoints(root: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (0 keeps everything)."""
    if keep_last <= 0:
        return
    complete = [(s, p) for s, p in list_checkpoints(root) if (p / MANIFEST).is_file()]
    for _, path in complete[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check that ``path`` is a complete checkpoint; return its manifest or raise ``CheckpointError``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"incomplete checkpoint {path}: {MANIFEST} is missing (interrupted save?)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"corrupt checkpoint {path}: unreadable {MANIFEST} ({err})") from err
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"incomplete checkpoint {path}: {name}, listed in the manifest, is missing")
        size = f.stat().st_size
        if size != meta["size"]:
            raise CheckpointError(
                f"corrupt checkpoint {path}: {name} has {size} bytes, the manifest says {meta['size']} "
                "(truncated?)"
            )
        if sha256_file(f) != meta["sha256"]:
            raise CheckpointError(
                f"corrupt checkpoint {path}: checksum of {name} does not match the manifest"
            )
    return manifest


def find_latest_checkpoint(root: str | Path) -> Path | None:
    """Newest checkpoint under ``root`` that verifies; broken newer ones are skipped with a warning."""
    for step, path in reversed(list_checkpoints(root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint of step {step}: {err}", RuntimeWarning, stacklevel=2)
            continue
        return path
    return None


def load_safetensors(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise CheckpointError(f"corrupt checkpoint file {path}: {err}") from err


def load_pickled(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with a clear error for missing or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"corrupt checkpoint file {path}: {err}") from err


def load_trained_weights(path: str | Path, ema: bool = False) -> dict[str, Tensor]:
    """Model (or EMA) weights of a verified checkpoint directory, e.g. to export a trained model.

    ``path`` may also be a run's ``checkpoints`` directory: its newest complete checkpoint is used.
    """
    path = Path(path)
    if not (path / MANIFEST).is_file() and list_checkpoints(path):
        latest = find_latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no complete checkpoint under {path}")
        path = latest
    verify_checkpoint(path)
    name = "ema.safetensors" if ema else "model.safetensors"
    if not (path / name).is_file():
        raise CheckpointError(f"{path} has no {name}" + (" (the run had no EMA)" if ema else ""))
    return load_safetensors(path / name)
