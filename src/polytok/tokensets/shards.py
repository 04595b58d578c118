"""Token sets as webdataset tar shards: encode a dataset at scale (one process or torchrun), resume, read.

A set is a directory::

    tokens-000000.tar, ...      shard i holds samples [i*S, (i+1)*S) of the dataset order (S: shard size,
                                less the unreadable ones; from webdataset input: the samples of input
                                shard i), written under a temporary name and renamed when complete
    tokens-000000.json, ...     the shard's record: sample count, keys, skipped inputs, SHA-256 and size
                                of the tar, the tokenizer identity and the shard size (written before the
                                rename, so a shard under its final name always has its record)
    manifest.json               written last by rank 0: every shard record, sample counts, the skipped
                                inputs of every rank and the tokenizer identity (config + weights hash)

A sample in a tar is ``<index>.codes.npy`` ((h, w, *code_shape) in the smallest unsigned type that holds
the codebook size), ``<index>.key.txt`` (its source name: a file's relative path or the dataset index),
``<index>.txt`` (caption) and ``<index>.cls`` (label, -1 when none); ``<index>`` is the dataset index
(tar keys cannot hold dots, file names can).

Under torchrun rank r writes the shards i with ``i % world == r``; rerunning the same command skips the
shards that are complete (the tar matches its record) and refuses a directory written with another
tokenizer or shard size. :class:`TokenShardDataset` streams a complete set back, split over ranks and
DataLoader workers.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import random
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from polytok.models.identity import TokenizerMismatchError, identity_difference, tokenizer_identity
from polytok.storage import ChecksumError, atomic_write_bytes, atomic_write_json, sha256_file, verify_file
from polytok.tokensets.npz import TokenFileError, code_dtype, read_manifest_json, source_difference

FORMAT = "polytok-token-shards"
VERSION = 1
MANIFEST = "manifest.json"


class TokenSetMismatchError(TokenFileError, TokenizerMismatchError):
    """A token set made by another tokenizer (or with another shard size) than the one at hand."""


def shard_name(index: int) -> str:
    return f"tokens-{index:06d}.tar"


def record_name(index: int) -> str:
    return f"tokens-{index:06d}.json"


def check_identity(recorded: dict[str, Any], tokenizer, where: str | os.PathLike) -> None:
    """:class:`TokenSetMismatchError` unless ``tokenizer`` is the one that made the set at ``where``."""
    difference = identity_difference(recorded, tokenizer_identity(tokenizer))
    if difference is not None:
        raise TokenSetMismatchError(
            f"{where} was encoded by another tokenizer (they differ in {difference}); decode it with the "
            "tokenizer that encoded it"
        )


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same samples, same bytes
    tar.addfile(info, io.BytesIO(data))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_shard(
    out_dir: Path,
    index: int,
    rows: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, str]],
    header: dict[str, Any],
) -> dict[str, Any]:
    """Write shard ``index`` (rows: ``{"index", "key", "codes" (h, w, *code_shape), "caption", "label"}``)
    and its record; returns the record. The tar appears under its final name only when complete."""
    path = out_dir / shard_name(index)
    buffer = io.BytesIO()  # a shard is small (shard_size rows of codes): built in memory, written once
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            base = f"{row['index']:09d}"
            _add_member(tar, f"{base}.codes.npy", _npy_bytes(row["codes"]))
            _add_member(tar, f"{base}.key.txt", str(row["key"]).encode())
            _add_member(tar, f"{base}.txt", str(row["caption"]).encode())
            _add_member(tar, f"{base}.cls", str(int(row["label"])).encode())
    record = {
        **header,
        "file": path.name,
        "index": index,
        "samples": len(rows),
        "keys": [str(row["key"]) for row in rows],
        "skipped": list(skipped),
        "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
        "bytes": len(buffer.getvalue()),
    }
    atomic_write_json(out_dir / record_name(index), record, indent=1)  # the record first, then the tar
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except BaseException:
        (out_dir / record_name(index)).unlink(missing_ok=True)  # no record of a shard that is not there
        raise
    return record


def complete_record(out_dir: Path, index: int) -> dict[str, Any] | None:
    """Shard ``index``'s record when the shard is complete (its tar is there and matches), else None."""
    path, record_path = out_dir / shard_name(index), out_dir / record_name(index)
    if not (path.is_file() and record_path.is_file()):
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("bytes") != path.stat().st_size or record.get("sha256") != sha256_file(path):
        return None
    return record


def check_resumable(out_dir: Path, header: dict[str, Any]) -> None:
    """Refuse to add to a directory whose shards were made by another tokenizer or with another layout
    of shards: the set would mix two encodings."""
    manifest = out_dir / MANIFEST
    records = sorted(out_dir.glob("tokens-*.json"))
    if manifest.is_file():
        records.append(manifest)
    for path in records:
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a torn record: its shard is incomplete and will be written again
        difference = identity_difference(recorded.get("identity", {}), header["identity"])
        if difference is not None:
            raise TokenSetMismatchError(
                f"{out_dir} holds tokens from another tokenizer (they differ in {difference}); choose "
                "another --out or empty it"
            )
        difference = source_difference(recorded.get("source"), header.get("source"))
        if difference is not None:
            raise TokenSetMismatchError(
                f"{out_dir} holds a set encoded from other input (they differ in {difference}); rerun "
                "with the same input to resume, or choose another --out"
            )
        for setting in ("shard_size", "samples_planned", "inputs"):
            then, now = recorded.get(setting), header.get(setting)
            if then != now:
                if setting == "inputs":  # shard lists can be long: say how they differ in size
                    then, now = (f"{len(x)} shards" if x else x for x in (then, now))
                raise TokenSetMismatchError(
                    f"{out_dir} holds a set with other {setting.replace('_', ' ')} ({then}, this run {now}); "
                    "rerun with the same settings to resume, or choose another --out"
                )


@dataclass
class ShardedSet:
    """What :func:`encode_to_shards` wrote (on rank 0: the whole set; elsewhere this rank's shards)."""

    out_dir: Path
    manifest: Path | None
    shards: list[dict[str, Any]]
    samples: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  # this rank's shards kept from an earlier run
    seconds: float = 0.0  # wall time from joining the group to the last rank's last shard


def _process_group() -> tuple[int, int, bool]:
    """(rank, world, created): join torchrun's group (gloo) when WORLD_SIZE > 1."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group(backend="gloo")
        return dist.get_rank(), world, True
    return 0, 1, False


class _IndexedSubset(torch.utils.data.Dataset):
    """The items of ``dataset`` at ``order``, each tagged with its dataset index."""

    def __init__(self, dataset, order: Sequence[int]) -> None:
        self.dataset, self.order = dataset, list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> dict[str, Any]:
        return {**self.dataset[self.order[position]], "index": self.order[position]}


def _collate_indexed(samples: Sequence[dict]) -> dict:
    """:func:`polytok.tokensets.npz.collate_readable` that keeps each sample's dataset index."""
    from polytok.tokensets.npz import collate_readable

    batch = collate_readable(samples)
    batch["index"] = [s["index"] for s in samples if "unreadable" not in s]
    for note, sample in zip(batch["skipped"], [s for s in samples if "unreadable" in s]):
        note["index"] = sample["index"]
    return batch


def _encoded_rows(tokenizer, loader, dtype: np.dtype) -> Iterator[dict]:
    """Encoded rows and skip notes (``{"index", "skipped"}``) in dataset-index order."""
    for batch in loader:
        events = [{"index": note.pop("index"), "skipped": note} for note in batch["skipped"]]
        if batch.get("index"):
            codes = tokenizer.encode(batch["image"]).cpu().numpy().astype(dtype)
            for i, index in enumerate(batch["index"]):
                events.append(
                    {
                        "index": index,
                        "key": batch["key"][i] if batch.get("key") else f"{index:09d}",
                        "codes": codes[i],
                        "caption": batch["caption"][i],
                        "label": int(batch["label"][i]),
                    }
                )
        yield from sorted(events, key=lambda e: e["index"])


def _map_style_shards(tokenizer, dataset, todo, shard_size, batch_size, workers, dtype, bar) -> Iterator:
    """(index, kept rows, skip notes) for each shard in ``todo``: samples [i*S, (i+1)*S) of ``dataset``."""
    from torch.utils.data import DataLoader

    total = len(dataset)
    ranges = [range(i * shard_size, min((i + 1) * shard_size, total)) for i in todo]
    order = [j for r in ranges for j in r]
    if not order:
        return
    indexed = _IndexedSubset(dataset, order)
    loader = DataLoader(indexed, batch_size=batch_size, num_workers=workers, collate_fn=_collate_indexed)
    rows = _encoded_rows(tokenizer, loader, dtype)
    for index, span in zip(todo, ranges):
        kept, skipped = [], []
        for expected in span:
            row = next(rows)
            if row["index"] != expected:
                raise RuntimeError(f"the loader gave sample {row['index']} where {expected} was due")
            (skipped.append(row["skipped"]) if "skipped" in row else kept.append(row))
            bar.update(1)
        yield index, kept, skipped


def _encode_samples(tokenizer, samples: Sequence[tuple[int, dict]], dtype: np.dtype) -> list[dict[str, Any]]:
    """(position, decoded sample) pairs -> rows with their codes, as one batch."""
    from polytok.data import collate

    codes = tokenizer.encode(collate([s for _, s in samples])["image"]).cpu().numpy().astype(dtype)
    return [
        {"index": position, "key": s["key"], "codes": code, "caption": s["caption"], "label": s["label"]}
        for (position, s), code in zip(samples, codes)
    ]


def _stream_shards(tokenizer, dataset, todo, batch_size, dtype, bar) -> Iterator:
    """(index, kept rows, skip notes) for each shard in ``todo``: the samples of input tar shard i, in
    their order (a row's index is its position in that tar)."""
    import webdataset as wds

    for index in todo:
        kept: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        pending: list[tuple[int, dict]] = []
        raws = wds.tariterators.tarfile_samples([{"url": dataset.shards[index]}], handler=dataset._on_error)
        for position, raw in enumerate(raws):
            sample = dataset.decode_or_mark(raw)
            if "unreadable" in sample:
                skipped.append({"key": sample["key"], "file": sample["file"], "reason": sample["unreadable"]})
                continue
            pending.append((position, sample))
            if len(pending) == batch_size:
                kept.extend(_encode_samples(tokenizer, pending, dtype))
                bar.update(len(pending))
                pending = []
        if pending:
            kept.extend(_encode_samples(tokenizer, pending, dtype))
            bar.update(len(pending))
        yield index, kept, skipped


@torch.no_grad()
def encode_to_shards(
    tokenizer,
    dataset,
    out_dir: str | os.PathLike,
    shard_size: int = 10_000,
    batch_size: int = 32,
    workers: int = 0,
    progress: bool = True,
    source: dict[str, Any] | None = None,
) -> ShardedSet:
    """Encode ``dataset`` into tar shards under ``out_dir`` (see the module docstring); under torchrun
    each rank writes its shards.

    A map-style dataset (items as :func:`polytok.tokensets.npz.dataset_for_encoding` gives them;
    unreadable ones marked ``{"key", "file", "unreadable"}``) is cut into shards of ``shard_size``
    samples in its order.
    A :class:`polytok.data.ShardDataset` (webdataset input, no length) gives one token shard per input
    tar shard, in the order of its shard list (``shard_size`` and ``workers`` do not apply). Complete
    shards of an earlier run of the same command are kept, not encoded again. ``source``: what
    ``dataset`` is (:func:`polytok.tokensets.npz.encoding_source`), recorded with every shard and in the
    manifest; a directory that records other input is refused, finished or not.
    """
    from tqdm.auto import tqdm

    from polytok.data import ShardDataset

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    stream = isinstance(dataset, ShardDataset)
    if not stream and not hasattr(dataset, "__len__"):
        raise ValueError("tar-shard encoding needs a dataset with a length, or webdataset shards")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} must be a directory for tar shards")
    rank, world, created = _process_group()
    started = time.perf_counter()
    import torch.distributed as dist

    was_training = tokenizer.training
    tokenizer.eval()  # no codebook updates, no dropout: the codes a decoder will see
    try:
        header: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "identity": tokenizer_identity(tokenizer),
            "source": source,
        }
        if stream:
            header["inputs"] = [str(url) for url in dataset.shards]
            count = len(dataset.shards)
        else:
            header.update(shard_size=shard_size, samples_planned=len(dataset))
            count = math.ceil(len(dataset) / shard_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        check_resumable(out_dir, header)  # every rank reads the same files: all refuse or none
        if rank == 0:  # the set is incomplete from here; temporaries of a killed run go
            (out_dir / MANIFEST).unlink(missing_ok=True)
            for pattern in ("tokens-*.tmp*", ".tokens-*.tmp-*", f".{MANIFEST}.tmp-*"):
                for stale in out_dir.glob(pattern):  # storage's temporaries are hidden files
                    stale.unlink(missing_ok=True)
        if world > 1:
            dist.barrier()  # no rank writes before the clean-up
        records: list[dict[str, Any]] = []
        todo: list[int] = []
        for index in range(rank, count, world):
            record = complete_record(out_dir, index)
            (records.append(record) if record is not None else todo.append(index))
        resumed = [r["file"] for r in records]
        dtype = code_dtype(tokenizer.codebook_size)
        planned = None if stream else sum(min(shard_size, len(dataset) - i * shard_size) for i in todo)
        bar = tqdm(total=planned, desc=f"encode (rank {rank})", disable=not progress)
        if stream:
            shards = _stream_shards(tokenizer, dataset, todo, batch_size, dtype, bar)
        else:
            shards = _map_style_shards(tokenizer, dataset, todo, shard_size, batch_size, workers, dtype, bar)
        for index, kept, skipped in shards:
            records.append(write_shard(out_dir, index, kept, skipped, header))
        bar.close()
        if world > 1:
            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, records)  # also a barrier: every shard is written
            records = [r for part in gathered for r in part]
        records.sort(key=lambda r: r["index"])
        skipped_all = [s for r in records for s in r["skipped"]]
        manifest = None
        if rank == 0:
            manifest = out_dir / MANIFEST
            atomic_write_json(
                manifest,
                {
                    **header,
                    "samples": sum(r["samples"] for r in records),
                    "shards": [{k: v for k, v in r.items() if k not in header} for r in records],
                    "skipped": skipped_all,
                },
            )
        if world > 1:
            dist.barrier()  # the set is complete for every rank when encode returns
        samples = sum(r["samples"] for r in records)
        seconds = time.perf_counter() - started
        return ShardedSet(out_dir, manifest, records, samples, skipped_all, resumed, seconds)
    finally:
        tokenizer.train(was_training)
        if created and dist.is_initialized():
            dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ reading


def holds_shards(path: str | os.PathLike) -> bool:
    """True for a directory holding a shard set, complete (its manifest) or not (shards only)."""
    path = Path(path)
    return path.is_dir() and ((path / MANIFEST).is_file() or any(path.glob("tokens-*.tar")))


def is_token_shard_set(path: str | os.PathLike) -> bool:
    """True for a directory meant for / holding tar shards, or its manifest."""
    path = Path(path)
    if path.is_dir():
        return True
    return path.name == MANIFEST and path.is_file()


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the set at ``path`` (its directory or manifest), checked whole
    (:func:`check_manifest`); refuses an incomplete set."""
    path = Path(path)
    manifest = path if path.name == MANIFEST else path / MANIFEST
    if not manifest.parent.is_dir():
        raise FileNotFoundError(f"token set not found: {path}")
    if not manifest.is_file():
        if any(manifest.parent.glob("tokens-*.tar")):
            raise TokenFileError(
                f"{manifest.parent} is an incomplete token set: no {MANIFEST} (written when encoding "
                "finishes; was the encode interrupted?); run the same encode again to complete it"
            )
        raise FileNotFoundError(f"no token set in {manifest.parent}: {MANIFEST} is missing")
    record = read_manifest_json(manifest, format_name=FORMAT, listing="shards")
    check_manifest(record, manifest)
    record["directory"] = str(manifest.parent)
    return record


def check_manifest(record: dict[str, Any], where: Path) -> None:
    """:class:`TokenFileError` unless the manifest ``record`` (read from ``where``) describes a whole set:
    the tokenizer identity; shards 0, 1, ... in order, each a file of the set's own directory with its
    sample count, keys, size and sha256; sample counts that add up; as many shards as the input asks."""

    def bad(why: str) -> TokenFileError:
        return TokenFileError(f"{where} is not a whole token-set manifest: {why} (edited or damaged?)")

    identity = record.get("identity")
    if not isinstance(identity, dict) or not {"code_shape", "codebook_size"} <= identity.keys():
        raise bad("it records no tokenizer identity")
    shards = record["shards"]
    if not isinstance(shards, list) or not all(isinstance(e, dict) for e in shards):
        raise bad("'shards' is not a list of shard records")
    total = 0
    for position, entry in enumerate(shards):
        name = entry.get("file")
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise bad(f"it names the shard {name!r}; a shard must be a file inside the set's directory")
        if name != shard_name(position) or entry.get("index") != position:
            raise bad(f"its shard {position} is {name!r}, not {shard_name(position)}: a shard is missing")
        samples, keys = entry.get("samples"), entry.get("keys")
        if not isinstance(samples, int) or samples < 0 or not isinstance(keys, list) or len(keys) != samples:
            count = len(keys) if isinstance(keys, list) else "no"
            raise bad(f"{name} records {samples!r} samples and {count} keys")
        sha, size = entry.get("sha256"), entry.get("bytes")
        if not isinstance(sha, str) or len(sha) != 64 or not isinstance(size, int):
            raise bad(f"{name} has no size and sha256")
        total += samples
    if record.get("samples") != total:
        raise bad(f"it says {record.get('samples')!r} samples, its shards hold {total}")
    skipped = record.get("skipped")
    if not isinstance(skipped, list):
        raise bad("'skipped' is not a list")
    planned, size = record.get("samples_planned"), record.get("shard_size")
    if planned is not None:
        if not isinstance(planned, int) or not isinstance(size, int) or size < 1:
            raise bad("'samples_planned' and 'shard_size' must be whole numbers")
        if len(shards) != math.ceil(planned / size) or total + len(skipped) != planned:
            raise bad(
                f"it lists {len(shards)} shards holding {total} samples and {len(skipped)} skipped inputs; "
                f"{planned} samples in shards of {size} make {math.ceil(planned / size)} shards"
            )
    elif isinstance(record.get("inputs"), list) and len(record["inputs"]) != len(shards):
        raise bad(f"it lists {len(shards)} shards for {len(record['inputs'])} input shards")


def _shard_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The set's non-empty shards: ``{"path", "file", "samples", "sha256", "bytes"}``."""
    directory = Path(manifest["directory"])
    keep = ("file", "samples", "sha256", "bytes")
    return [
        {"path": str(directory / s["file"]), **{k: s[k] for k in keep}}
        for s in manifest["shards"]
        if s["samples"]
    ]


def verify_shard(entry: dict[str, Any]) -> None:
    """:class:`TokenFileError` unless the shard file has the size and sha256 its manifest records."""
    try:
        verify_file(entry["path"], entry["bytes"], entry["sha256"], f"the set's {MANIFEST}")
    except (FileNotFoundError, ChecksumError) as exc:
        raise TokenFileError(str(exc)) from exc


def _parse_sample(sample: dict[str, Any]) -> dict[str, Any]:
    codes = np.load(io.BytesIO(sample["codes.npy"]), allow_pickle=False)
    return {
        "key": sample["key.txt"].decode(),
        "codes": torch.from_numpy(codes.astype(np.int64)),
        "caption": sample.get("txt", b"").decode(),
        "label": int(sample.get("cls", b"-1").decode()),
    }


def _tar_samples(entries: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The samples of the shards ``entries`` (:func:`_shard_entries`), each shard verified against its
    manifest entry before it is read, and its sample count after."""
    import webdataset as wds

    def fail(error: Exception) -> bool:
        raise TokenFileError(f"unreadable token shard: {type(error).__name__}: {error}") from error

    for entry in entries:
        verify_shard(entry)
        count = 0
        for raw in wds.tariterators.tarfile_samples([{"url": entry["path"]}], handler=fail):
            count += 1
            yield _parse_sample(raw)
        if count != entry["samples"]:
            raise TokenFileError(f"{entry['path']} holds {count} samples, {MANIFEST} says {entry['samples']}")


class TokenShardDataset(IterableDataset):
    """Stream a complete token set: ``{"key": str, "codes": LongTensor (h, w, *code_shape), "caption":
    str, "label": int}``.

    Shards are split over DDP ranks, then DataLoader workers (``order[rank::world][worker::workers]``),
    so no sample is read twice. ``shuffle`` permutes the shard order with ``seed`` and the epoch
    (:meth:`set_epoch`) and, with ``shuffle_buffer`` > 0, the samples within a buffer of that many.
    ``tokenizer``: refuse a set that another tokenizer made. :attr:`samples`: the set's size (all ranks).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        tokenizer=None,
        shuffle: bool = False,
        shuffle_buffer: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        self.manifest = read_manifest(path)
        if tokenizer is not None:
            check_identity(self.manifest["identity"], tokenizer, path)
        self.entries = _shard_entries(self.manifest)
        self.shards = [e["path"] for e in self.entries]
        self.samples = int(self.manifest["samples"])
        self.shuffle, self.shuffle_buffer, self.seed, self.epoch = shuffle, shuffle_buffer, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order of ``epoch`` (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        from polytok.data.shards import worker_slot

        rank, world, worker, workers = worker_slot()
        order = list(self.entries)
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        stream: Iterator[dict[str, Any]] = _tar_samples(order[rank::world][worker::workers])
        if self.shuffle and self.shuffle_buffer > 0:
            rng = random.Random(f"{self.seed}-{self.epoch}-{rank}-{worker}-samples")
            buffer = self.shuffle_buffer
            stream = wds.filters.shuffle(buffer, initial=min(100, buffer), rng=rng)(stream)
        yield from stream


def load_token_shards(path: str | os.PathLike, tokenizer=None, limit: int | None = None) -> dict[str, Any]:
    """A set (its first ``limit`` samples) in memory, in dataset order: ``{"codes": LongTensor
    (N, h, w, *code_shape), "keys", "captions", "labels", "meta", "skipped"}`` (``meta``: the manifest).
    ``tokenizer``: refuse a set that another tokenizer made."""
    manifest = read_manifest(path)
    if tokenizer is not None:
        check_identity(manifest["identity"], tokenizer, path)
    stream = _tar_samples(_shard_entries(manifest))
    rows = list(itertools.islice(stream, limit))  # reads only the shards it needs
    identity = manifest["identity"]
    empty = torch.zeros((0, 0, 0, *identity["code_shape"]), dtype=torch.long)
    return {
        "codes": torch.stack([r["codes"] for r in rows]) if rows else empty,
        "keys": [r["key"] for r in rows],
        "captions": [r["caption"] for r in rows],
        "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
        "meta": {
            **manifest,
            "code_shape": identity["code_shape"],
            "codebook_size": identity["codebook_size"],
        },
        "skipped": manifest["skipped"],
    }
