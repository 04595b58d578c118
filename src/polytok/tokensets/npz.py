"""Token files: a dataset encoded to codes for LLM / AR training, and back.

A token set is one or more ``.npz`` files and a manifest written last:

    tokens.npz                      all samples, when they fit in one file of ``shard_size`` samples
    tokens-00000.npz, ...           otherwise numbered files of ``shard_size`` samples
    tokens.manifest.json            written last (atomically): files, sample counts, skipped inputs,
                                    the tokenizer's config and a hash of its weights

Each ``.npz`` holds ``codes`` (N, h, w, *code_shape) in the smallest unsigned integer type that holds the
codebook size, ``keys`` (each sample's source name), ``captions``, ``labels`` and ``meta`` (a JSON
string: code shape, codebook size, grid, tokenizer config, and the set it belongs to) so that a file can
be checked against the tokenizer that will decode it. A file is only read when the manifest of its set
lists it: an interrupted encode (no manifest, or an older manifest from a previous run) is refused.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polytok.models.identity import tokenizer_identity
from polytok.storage import atomic_write_bytes, atomic_write_json

FORMAT = "polytok-tokens"
VERSION = 1


class TokenFileError(ValueError):
    """A token file or set that cannot be used: not a token file, truncated, or an incomplete set."""


def code_dtype(codebook_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def manifest_path(out: str | os.PathLike) -> Path:
    """``tokens.npz`` -> ``tokens.manifest.json``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.manifest.json")


def shard_path(out: str | os.PathLike, index: int) -> Path:
    """``tokens.npz``, 3 -> ``tokens-00003.npz``."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{index:05d}{out.suffix}")


@dataclass
class EncodedSet:
    """What :func:`encode_batches` wrote: the token files, the manifest, counts and skipped inputs."""

    files: list[Path]
    manifest: Path
    samples: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _write(path: Path, codes: list[np.ndarray], rows: dict[str, list], meta: dict) -> Path:
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        codes=np.concatenate(codes),
        keys=np.array(rows["keys"], dtype=str),
        captions=np.array(rows["captions"], dtype=str),
        labels=np.array(rows["labels"], dtype=np.int64),
        meta=np.array(json.dumps(meta)),
    )
    return atomic_write_bytes(path, buffer.getvalue())  # a reader never sees a half-written file


@torch.no_grad()
def encode_batches(
    tokenizer,
    batches: Iterable[dict[str, Any]],
    out: str | os.PathLike,
    shard_size: int = 100_000,
    progress: bool = True,
    source: dict[str, Any] | None = None,
) -> EncodedSet:
    """Encode every batch and write a token set (see the module docstring).

    A batch is ``{"image": (B, 3, H, W), "caption": [B], "label": (B,), "key": [B]}`` (caption, label
    and key optional; without keys a sample's key is its index). A batch may also carry ``"skipped"``:
    ``[{"key", "file", "reason"}]`` for inputs that could not be read (recorded in the manifest), and
    then may hold no image at all. ``out`` names the set (``tokens.npz``).
    """
    from tqdm.auto import tqdm

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out)
    manifest = manifest_path(out)
    check_replaceable(out, tokenizer, source)
    manifest.unlink(missing_ok=True)  # from here until the end, the set at ``out`` is incomplete
    run = uuid.uuid4().hex
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "code_shape": list(tokenizer.code_shape),
        "codebook_size": tokenizer.codebook_size,
        "config": tokenizer.config.to_dict() if hasattr(tokenizer.config, "to_dict") else None,
        "set": {"manifest": manifest.name, "run": run},
    }
    dtype = code_dtype(tokenizer.codebook_size)
    written: list[tuple[Path, int]] = []
    skipped: list[dict[str, str]] = []
    codes: list[np.ndarray] = []
    rows: dict[str, list] = {"keys": [], "captions": [], "labels": []}
    total = 0

    def flush(final: bool) -> None:
        nonlocal codes, rows
        if not codes and (written or not final):
            return
        name = out if final and not written else shard_path(out, len(written))
        if codes:
            meta["grid"] = list(codes[0].shape[1:3])
        else:  # nothing readable at all: an empty file keeps the layout
            codes = [np.zeros((0, 0, 0, *tokenizer.code_shape), dtype=dtype)]
        written.append((_write(name, codes, rows, meta), len(rows["keys"])))
        codes, rows = [], {"keys": [], "captions": [], "labels": []}

    for batch in tqdm(batches, desc="encode", disable=not progress):
        skipped.extend(batch.get("skipped", []))
        images = batch.get("image")
        if images is None or len(images) == 0:
            continue
        c = tokenizer.encode(images).cpu().numpy().astype(dtype)
        n = len(c)
        codes.append(c)
        rows["keys"].extend(batch.get("key") or [f"{total + i:09d}" for i in range(n)])
        rows["captions"].extend(batch.get("caption") or [""] * n)
        label = batch.get("label")
        rows["labels"].extend(label.tolist() if isinstance(label, Tensor) else [-1] * n)
        total += n
        if len(rows["keys"]) >= shard_size:
            flush(final=False)
    flush(final=True)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "run": run,
        "files": [{"file": p.name, "samples": n} for p, n in written],
        "samples": total,
        "skipped": skipped,
        "source": source,
        **tokenizer_identity(tokenizer),  # code_shape, codebook_size, config, weights_sha256, ...
    }
    atomic_write_json(manifest, record, indent=1)  # last: the set is now complete
    return EncodedSet([p for p, _ in written], manifest, total, skipped)


def check_replaceable(out: Path, tokenizer, source: dict[str, Any] | None) -> None:
    """Refuse to replace the complete set at ``out`` by tokens of other input or of another tokenizer: the
    set there would be lost. An unreadable manifest is no set: replaced."""
    from polytok.models.identity import identity_difference

    manifest = manifest_path(out)
    if not manifest.is_file():
        return
    try:
        record = read_manifest_json(manifest)
    except TokenFileError:
        return
    difference = source_difference(record.get("source"), source)
    if difference is None and _identity(record) is not None:
        other = identity_difference(_identity(record), tokenizer_identity(tokenizer))
        difference = None if other is None else f"{other} (another tokenizer)"
    if difference is not None:
        raise TokenFileError(
            f"{out} holds a token set of other input (they differ in {difference}); choose another --out "
            "or remove it first"
        )


def dataset_for_encoding(name_or_path: str | os.PathLike, split: str = "train", image_size: int = 64):
    """The dataset to encode: every image as it is (resize + centre crop, no random crop or flip, streams
    in order, whatever the split), with unreadable folder images marked instead of replaced."""
    from polytok.data import ImageFolderDataset, ShardDataset, build_dataset, eval_transform

    dataset = build_dataset(name_or_path, split=split, image_size=image_size)
    if isinstance(dataset, (ImageFolderDataset, ShardDataset)):
        dataset.transform = eval_transform(image_size)
    if isinstance(dataset, ImageFolderDataset):
        dataset.replace_broken = False
    if isinstance(dataset, ShardDataset):
        dataset.shuffle = False
    return dataset


def encoding_source(
    name_or_path: str | os.PathLike,
    split: str = "train",
    image_size: int = 64,
    max_images: int | None = None,
    dataset: Any = None,
) -> dict[str, Any]:
    """What a token set encodes, as its manifest records it: the dataset (a built-in name, or the absolute
    path of a folder / shard pattern), the split, the image size, the augmentation (none for encoding:
    :func:`dataset_for_encoding`), the cap on images and, for a folder, how many files it lists and a hash
    of their names. A set is only continued or replaced from the same input (:func:`check_same_source`)."""
    import hashlib

    from polytok.data import ImageFolderDataset
    from polytok.data.registry import list_datasets

    data = str(name_or_path)
    builtin = data in list_datasets()
    if not builtin and "://" not in data:
        data = os.path.abspath(data)
    source: dict[str, Any] = {
        "data": data,
        "split": split,
        "image_size": int(image_size),
        "augmentation": f"the built-in {split} split as it is" if builtin else "none (resize, centre crop)",
        "max_images": max_images,
    }
    if isinstance(dataset, ImageFolderDataset):
        names = "\n".join(str(Path(f).relative_to(dataset.root)) for f in dataset.files)
        source.update(files=len(dataset.files), files_sha256=hashlib.sha256(names.encode()).hexdigest())
    return source


def source_difference(recorded: dict[str, Any] | None, now: dict[str, Any] | None) -> str | None:
    """How the input a set records differs from this run's (None: the same); words for an error line."""
    if recorded == now:
        return None
    if now is None:
        return "input (the set records its input, this call gives none)"
    if recorded is None:
        return "input (the set records none: written by an older polytok or the library)"
    words = {"data": "data", "split": "split", "image_size": "image size", "max_images": "max images"}
    for key in ("data", "split", "image_size", "augmentation", "max_images", "files", "files_sha256"):
        if recorded.get(key) != now.get(key):
            name = words.get(key, key.replace("_", " "))
            if key == "files_sha256":
                return "data (the folder's files changed)"
            return f"{name} ({recorded.get(key)!r}, this run {now.get(key)!r})"
    return "input"


def collate_readable(samples: Sequence[dict]) -> dict:
    """:func:`polytok.data.collate` for encoding: samples marked ``unreadable`` are left out of the batch
    and listed in ``batch["skipped"]`` as ``{"key", "file", "reason"}``."""
    from polytok.data import collate

    readable = [s for s in samples if "unreadable" not in s]
    batch = collate(readable) if readable else {}
    batch["skipped"] = [
        {"key": s["key"], "file": s.get("file", s["key"]), "reason": s["unreadable"]}
        for s in samples
        if "unreadable" in s
    ]
    return batch


def _read_npz(path: Path) -> dict[str, Any]:
    if not zipfile.is_zipfile(path):
        raise TokenFileError(f"{path} is not a polytok token file (an .npz archive written by encode)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"codes", "captions", "labels", "meta"} - set(data.files)
            if missing:
                raise TokenFileError(f"{path} is not a polytok token file: no {', '.join(sorted(missing))}")
            codes = data["codes"]
            if not np.issubdtype(codes.dtype, np.integer):
                raise TokenFileError(f"{path}: codes must be integers, got {codes.dtype}")
            meta = json.loads(str(data["meta"]))
            return {
                "codes": torch.from_numpy(codes.astype(np.int64)),
                "keys": [str(k) for k in data["keys"]] if "keys" in data.files else None,
                "captions": [str(c) for c in data["captions"]],
                "labels": torch.from_numpy(data["labels"].astype(np.int64)),
                "meta": meta,
            }
    except TokenFileError:
        raise
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise TokenFileError(f"{path} is truncated or corrupt: {type(exc).__name__}: {exc}") from exc


def read_manifest_json(path: Path, *, format_name: str = FORMAT, listing: str = "files") -> dict[str, Any]:
    """A token-set manifest of format ``format_name`` that lists its parts under ``listing``."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TokenFileError(f"{path} is not a readable token-set manifest: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != format_name or listing not in record:
        raise TokenFileError(f"{path} is not a polytok {format_name} manifest")
    return record


def _incomplete(what: Path, manifest: Path) -> TokenFileError:
    return TokenFileError(
        f"{what} belongs to an incomplete token set: its manifest {manifest.name}, written when encoding "
        "finishes, is missing or from another run (was the encode interrupted?); encode again"
    )


def _identity(record: dict[str, Any]) -> dict[str, Any] | None:
    """The tokenizer that made a set, as its manifest records it (None before manifests named it)."""
    if "weights_sha256" not in record:
        return None
    keys = ("name", "code_shape", "codebook_size", "config", "config_sha256", "weights_sha256")
    return {k: record[k] for k in keys if k in record}


def _check_listed(path: Path, part: dict[str, Any]) -> None:
    """A file of this format is used only when its set's manifest lists it, from the same run; the
    manifest's record of the tokenizer goes to ``part["identity"]``."""
    part["identity"] = None
    info = part["meta"].get("set")
    if info is None:  # a file from before sets had manifests: complete by itself
        return
    manifest = path.with_name(info["manifest"])
    if not manifest.is_file():
        raise _incomplete(path, manifest)
    record = read_manifest_json(manifest)
    listed = {f["file"]: f["samples"] for f in record["files"]}
    if record.get("run") != info["run"] or listed.get(path.name) != len(part["codes"]):
        raise _incomplete(path, manifest)
    part["identity"] = _identity(record)


def _concat(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    nonempty = [p for p in parts if len(p["codes"])] or list(parts[:1])
    return {
        "codes": torch.cat([p["codes"] for p in nonempty]),
        "keys": [k for p in parts for k in (p["keys"] or [])],
        "captions": [c for p in parts for c in p["captions"]],
        "labels": torch.cat([p["labels"] for p in parts]),
        "meta": parts[0]["meta"],
    }


def _load_set(manifest: Path) -> dict[str, Any]:
    record = read_manifest_json(manifest)
    parts = []
    for entry in record["files"]:
        path = manifest.with_name(entry["file"])
        if not path.is_file():
            raise TokenFileError(f"token set {manifest} lists {entry['file']}, which is missing")
        part = _read_npz(path)
        _check_listed(path, part)
        parts.append(part)
    if not parts:
        raise TokenFileError(f"token set {manifest} lists no files")
    data = _concat(parts)
    data["skipped"] = record.get("skipped", [])
    data["identity"] = _identity(record)
    return data


def load_tokens(path: str | os.PathLike) -> dict[str, Any]:
    """Read a token set or one of its files.

    ``path``: the name given to encode (``tokens.npz``), its manifest, or one numbered file. Returns
    ``{"codes": LongTensor (N, h, w, *code_shape), "keys", "captions", "labels", "meta", "identity"}``
    (``identity``: the tokenizer that made the set, None for files from before manifests). Raises
    FileNotFoundError when nothing is there and :class:`TokenFileError` (a ValueError) for a file that is
    not a token file, truncated, or part of an incomplete set.
    """
    path = Path(path)
    if path.suffix == ".json" and path.is_file():
        return _load_set(path)
    if path.is_file():
        part = _read_npz(path)
        _check_listed(path, part)
        return part
    manifest = manifest_path(path)
    if manifest.is_file():
        return _load_set(manifest)
    if shard_path(path, 0).is_file():
        raise _incomplete(shard_path(path, 0), manifest)
    raise FileNotFoundError(f"token file not found: {path}")


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
