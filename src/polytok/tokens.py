"""Token files: a dataset encoded to codes for LLM / AR training, and back.

A token file is an ``.npz`` with ``codes`` (N, h, w, *code_shape) in the smallest unsigned integer type
that holds the codebook size, ``captions`` and ``labels`` of the samples, and ``meta`` (a JSON string:
code shape, codebook size, grid, tokenizer config) so that a file can be checked against the tokenizer
that will decode it. Large datasets are split into numbered files of ``shard_size`` samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


def code_dtype(codebook_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _write(path: Path, codes: list[np.ndarray], captions: list[str], labels: list[int], meta: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        codes=np.concatenate(codes),
        captions=np.array(captions, dtype=str),
        labels=np.array(labels, dtype=np.int64),
        meta=np.array(json.dumps(meta)),
    )
    os.replace(tmp, path)  # a reader never sees a half-written file
    return path


@torch.no_grad()
def encode_batches(
    tokenizer,
    batches: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    shard_size: int = 100_000,
    progress: bool = True,
) -> list[Path]:
    """Encode every batch ({"image", "caption", "label"}) and write token files.

    ``out`` is a file name (``tokens.npz``); with more than ``shard_size`` samples the files are
    ``tokens-00000.npz``, ``tokens-00001.npz``, ... Returns the written paths.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    meta = {
        "code_shape": list(tokenizer.code_shape),
        "codebook_size": tokenizer.codebook_size,
        "config": tokenizer.config.to_dict() if hasattr(tokenizer.config, "to_dict") else None,
    }
    dtype = code_dtype(tokenizer.codebook_size)
    written: list[Path] = []
    codes: list[np.ndarray] = []
    captions: list[str] = []
    labels: list[int] = []
    count = 0

    def flush(final: bool) -> None:
        nonlocal codes, captions, labels, count
        if not codes:
            return
        name = out if final and not written else out.with_name(f"{out.stem}-{len(written):05d}{out.suffix}")
        meta["grid"] = list(codes[0].shape[1:3])
        written.append(_write(name, codes, captions, labels, meta))
        codes, captions, labels, count = [], [], [], 0

    for batch in tqdm(batches, desc="encode", disable=not progress):
        c = tokenizer.encode(batch["image"]).cpu().numpy().astype(dtype)
        n = len(c)
        codes.append(c)
        captions.extend(batch.get("caption") or [""] * n)
        label = batch.get("label")
        labels.extend(label.tolist() if isinstance(label, Tensor) else [-1] * n)
        count += n
        if count >= shard_size:
            flush(final=False)
    flush(final=True)
    return written


def load_tokens(path: str | os.PathLike) -> dict[str, Any]:
    """Read a token file -> {"codes": LongTensor (N, h, w, *code_shape), "captions", "labels", "meta"}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {
                "codes": torch.from_numpy(data["codes"].astype(np.int64)),
                "captions": [str(c) for c in data["captions"]],
                "labels": torch.from_numpy(data["labels"]),
                "meta": json.loads(str(data["meta"])),
            }
    except (ValueError, KeyError, OSError) as exc:
        raise ValueError(f"{path} is not a readable polytok token file: {exc}") from exc


def check_tokens_fit(meta: dict[str, Any], tokenizer) -> None:
    """ValueError when a token file was made with a different code layout than ``tokenizer``'s."""
    if (
        tuple(meta["code_shape"]) != tuple(tokenizer.code_shape)
        or meta["codebook_size"] != tokenizer.codebook_size
    ):
        raise ValueError(
            f"token file has code shape {meta['code_shape']} x {meta['codebook_size']} codes, the "
            f"tokenizer {tuple(tokenizer.code_shape)} x {tokenizer.codebook_size}"
        )
