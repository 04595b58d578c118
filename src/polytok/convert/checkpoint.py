"""Reading the official training checkpoints safely, and writing the converted tokenizer."""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polytok.convert.state import ConversionError


class UntrustedCheckpointError(ConversionError):
    """The file holds Python objects that only a full (code-running) unpickling can rebuild."""


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a torch checkpoint, judged from its bytes (None: it may be one)."""
    import zipfile

    size = path.stat().st_size
    if size == 0:
        return f"{path} is empty (0 bytes): not a checkpoint"
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # torch.save's zip archive
        if not zipfile.is_zipfile(path):
            return f"{path} is truncated or corrupt: a torch zip archive without its end ({size} bytes)"
        return None
    if head[:1] == b"\x80":  # a pickle (torch.save's legacy format): read on
        return None
    return f"{path} is not a torch checkpoint (neither torch.save's zip archive nor a pickle)"


def read_checkpoint(path: str | os.PathLike, *, trusted: bool = False, mmap: bool = False) -> dict[str, Any]:
    """Load a torch checkpoint with ``weights_only=True`` (tensors, plain containers, dtypes and
    ``argparse.Namespace``, which EvoTok stores its arguments in).

    A file that needs more is refused unless ``trusted``: a full unpickling runs code from the file.
    An empty, truncated or foreign file is a :class:`ConversionError` saying so. ``mmap``: map the
    tensors of a zip archive from disk instead of reading them whole (a large file of which a part is
    converted); ignored for the legacy pickle format.
    """
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    why = _not_a_checkpoint(path)
    if why is not None:
        raise ConversionError(why)
    damaged = (EOFError, RuntimeError, KeyError, ValueError, zipfile.BadZipFile)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(
                path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
            )
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if not found and "Weights only load failed" not in str(exc):  # not a refusal: broken bytes
            raise ConversionError(f"{path} is truncated or corrupt ({str(exc).splitlines()[0]})") from exc
        reason = f"it holds {found.group(1)}" if found else str(exc).splitlines()[0]
        if not trusted:
            raise UntrustedCheckpointError(
                f"{path} cannot be read with weights_only=True ({reason}); reading it would run code "
                "stored in the file. If you trust the file, allow it explicitly "
                "(--trust-checkpoint, or trusted=True)"
            ) from exc
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except (pickle.UnpicklingError, *damaged) as err:
            raise ConversionError(f"{path} is truncated or corrupt ({type(err).__name__}: {err})") from err
    except damaged as exc:
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ConversionError(f"{path} is truncated or corrupt ({type(exc).__name__}: {first})") from exc
    if not isinstance(obj, dict):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a checkpoint dictionary")
    return obj


def args_of(checkpoint: dict[str, Any], what: str) -> dict[str, Any]:
    """The training arguments stored in ``checkpoint['args']`` (a dict or an argparse.Namespace)."""
    if "args" not in checkpoint:
        raise ConversionError(f"{what}: the checkpoint has no 'args' (keys: {sorted(checkpoint)})")
    args = checkpoint["args"]
    if isinstance(args, argparse.Namespace):
        return vars(args)
    if isinstance(args, dict):
        return args
    raise ConversionError(f"{what}: 'args' is a {type(args).__name__}, expected a dict or Namespace")


def tensors_of(state: Any, what: str) -> dict[str, Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{what} is not a state dict of tensors")
    return state


def check_arg(args: dict[str, Any], key: str, expected: Any, what: str, target: str) -> None:
    """Raise naming ``key`` when the checkpoint's argument differs from what the target preset has."""
    if key not in args:
        raise ConversionError(f"{what}: the checkpoint's args lack {key!r}")
    if args[key] != expected:
        raise ConversionError(
            f"{what}: the checkpoint was trained with {key}={args[key]!r} but the target has "
            f"{target}={expected!r}; this is a checkpoint of another model (or pass a matching config)"
        )
