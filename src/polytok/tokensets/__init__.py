"""Token sets: a dataset encoded to codes for LLM / AR training, and read back.

Two on-disk formats, one entry point for each direction:

- tar shards (:mod:`polytok.tokensets.shards`): a directory of webdataset shards and a manifest, written
  at scale (one process or torchrun, resumable), streamed in training;
- ``.npz`` files (:mod:`polytok.tokensets.npz`): one or more numbered files and a manifest, for sets that
  fit in memory.

:func:`encode_token_set` chooses the format from the output name (a ``.npz`` name, else a directory of
shards); :func:`open_token_set` reads either, refusing a set another tokenizer made.

    >>> from polytok.tokensets import token_set_format
    >>> token_set_format("tokens.npz"), token_set_format("tokens/")
    ('npz', 'wds')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from polytok.tokensets.npz import TokenFileError

FORMATS = ("npz", "wds")

__all__ = [
    "FORMATS",
    "TokenFileError",
    "encode_token_set",
    "is_token_set",
    "open_token_set",
    "token_set_format",
]


def token_set_format(out: str | os.PathLike, requested: str = "auto") -> str:
    """``requested`` ("npz" or "wds"), or by the name: a ``.npz`` name -> npz files, else tar shards."""
    if requested not in ("auto", *FORMATS):
        raise ValueError(f"token set format must be auto, npz or wds, got {requested!r}")
    if requested != "auto":
        return requested
    return "npz" if Path(out).suffix == ".npz" else "wds"


def encode_format(out: str | os.PathLike, requested: str = "auto") -> str:
    """:func:`token_set_format` for writing: under torchrun only tar shards can be written (each rank
    writes its own shards)."""
    kind = token_set_format(out, requested)
    if kind == "npz" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "under torchrun encode writes tar shards: give a directory as --out (or --format wds)"
        )
    return kind


def is_token_set(path: str | os.PathLike) -> bool:
    """True for a directory of token shards (complete or not) or an npz token set / file."""
    from polytok.tokensets.npz import manifest_path, shard_path
    from polytok.tokensets.shards import holds_shards

    p = Path(path)
    if p.is_dir():
        return holds_shards(p)
    return p.suffix == ".npz" and (p.is_file() or manifest_path(p).is_file() or shard_path(p, 0).is_file())


def encode_token_set(
    tokenizer: Any,
    dataset: Any,
    out: str | os.PathLike,
    *,
    format: str = "auto",
    shard_size: int = 1000,
    batch_size: int = 32,
    workers: int = 0,
    source: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Encode ``dataset`` (items as :func:`polytok.tokensets.npz.dataset_for_encoding` gives them) into a
    token set at ``out``; returns what was written (None on ranks other than 0 under torchrun). Under
    torchrun only tar shards can be written (:func:`encode_format`). ``source``: what ``dataset`` is
    (:func:`polytok.tokensets.npz.encoding_source`), recorded in the set; a set at ``out`` that records
    other input is refused, never continued or replaced."""
    kind = token_set_format(out, format)
    if kind == "npz" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "under torchrun encode writes tar shards: give a directory as --out (or --format wds)"
        )
    if kind == "wds":
        from polytok.tokensets.shards import encode_to_shards

        written = encode_to_shards(
            tokenizer, dataset, out, shard_size, batch_size=batch_size, workers=workers, source=source
        )
        if written.manifest is None:
            return None
        return {
            "shards": [s["file"] for s in written.shards],
            "manifest": str(written.manifest),
            "samples": written.samples,
            "skipped": [s["file"] for s in written.skipped],
            "resumed": written.resumed,
            "seconds": round(written.seconds, 3),
        }
    from torch.utils.data import DataLoader

    from polytok.data import ShardDataset
    from polytok.tokensets.npz import collate_readable, encode_batches

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_readable)
    result = encode_batches(tokenizer, loader, out, shard_size=shard_size, source=source)
    report: dict[str, Any] = {
        "written": [str(p) for p in result.files],
        "manifest": str(result.manifest),
        "samples": result.samples,
        "skipped": [s["file"] for s in result.skipped],
    }
    if isinstance(dataset, ShardDataset) and dataset.skipped:
        report["skipped_in_shards"] = dataset.skipped  # counted, not named
    return report


def open_token_set(
    path: str | os.PathLike, tokenizer: Any = None, limit: int | None = None
) -> dict[str, Any]:
    """A token set of either format in memory: ``{"codes": LongTensor (N, h, w, *code_shape), "keys",
    "captions", "labels", "meta", ...}`` (its first ``limit`` samples). With ``tokenizer``, a set made by
    another tokenizer (or with another code layout) is refused."""
    from polytok.tokensets.npz import check_tokens_fit, load_tokens
    from polytok.tokensets.shards import check_identity, is_token_shard_set, load_token_shards

    if is_token_shard_set(path):
        return load_token_shards(path, tokenizer=tokenizer, limit=limit)
    tokens = load_tokens(path)
    if tokenizer is not None:
        check_tokens_fit(tokens["meta"], tokenizer)
        if tokens.get("identity") is not None:
            check_identity(tokens["identity"], tokenizer, path)
    if limit is not None:
        for key in ("codes", "keys", "captions", "labels"):
            tokens[key] = tokens[key][:limit]
    return tokens
