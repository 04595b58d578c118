"""Token export to webdataset tar shards: real torchrun (2 gloo processes) against 1 process, SIGKILL and
resume, unreadable images named, another tokenizer refused, and the streaming reader.

Uses the shipped ``evotok-tiny`` (8 residual levels of 1024 codes) on the built-in ``shapes``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from polytok.cli import main
from polytok.hub import load_tokenizer
from polytok.image_io import load_images
from polytok.tokensets.npz import TokenFileError, load_tokens
from polytok.tokensets.shards import (
    TokenSetMismatchError,
    TokenShardDataset,
    load_token_shards,
    shard_name,
)

SRC = Path(__file__).resolve().parents[1] / "src"
SLOW_WORKER = Path(__file__).with_name("encode_worker_slow.py")
IMAGES, SHARD, BATCH = 40, 8, 4  # the batch divides the shard: both runs encode the same batches
SHAPES = ["shapes", "--max-images", str(IMAGES), "--shard-size", str(SHARD), "--batch-size", str(BATCH)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _command(nproc: int, args: list[str], script: Path | None = None) -> list[str]:
    program = [str(script)] if script else ["-m", "polytok.cli"]
    if nproc == 1:
        return [sys.executable, *program, *args]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, *program, *args]


def _encode(nproc: int, args: list[str]) -> dict:
    """Run ``polytok encode`` (under torchrun when nproc > 1); rank 0's report."""
    proc = subprocess.run(
        _command(nproc, ["encode", *args]), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"encode failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == 1, proc.stdout  # rank 0 reports the whole set, once
    return reports[0]


def _pairs(path: Path) -> dict[str, bytes]:
    """{key: codes as bytes} of a set, checking that no key occurs twice."""
    data = load_token_shards(path)
    assert len(set(data["keys"])) == len(data["keys"])
    return {k: c.numpy().tobytes() for k, c in zip(data["keys"], data["codes"])}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "tokens"
    report = _encode(1, ["evotok-tiny", *SHAPES, "--out", str(out)])
    assert report["samples"] == IMAGES and report["resumed"] == []
    return out


def test_two_processes_write_the_same_set_as_one(one_process: Path, tmp_path) -> None:
    out = tmp_path / "tokens"
    report = _encode(2, ["evotok-tiny", *SHAPES, "--out", str(out)])
    assert report["samples"] == IMAGES and report["shards"] == [shard_name(i) for i in range(5)]
    reference = _pairs(one_process)
    assert sorted(reference) == [f"{i:09d}" for i in range(IMAGES)]  # shapes: the key is the index
    assert _pairs(out) == reference
    # shard i holds samples [8i, 8i + 8): the same shards, in the same order, whoever wrote them
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["keys"] for s in manifest["shards"]] == [
        [f"{j:09d}" for j in range(i * SHARD, (i + 1) * SHARD)] for i in range(5)
    ]
    tok = load_tokenizer("evotok-tiny").eval()  # an independent check of some rows
    data = load_token_shards(out)
    from polytok.tokensets.npz import dataset_for_encoding

    shapes = dataset_for_encoding("shapes", image_size=64)
    images = torch.stack([shapes[i]["image"] for i in range(8, 12)])
    with torch.no_grad():
        assert torch.equal(data["codes"][8:12], tok.encode(images))
    assert data["captions"][9] == shapes[9]["caption"] and int(data["labels"][9]) == shapes[9]["label"]


def test_killed_run_resumes_with_every_sample_once(one_process: Path, tmp_path) -> None:
    out = tmp_path / "tokens"
    args = ["encode", "evotok-tiny", *SHAPES, "--out", str(out)]
    env = {**_env(), "SLOW_FROM": str(SHARD), "SLOW_S": "2"}  # shard 0 fast, then 2 s per sample
    proc = subprocess.Popen(
        _command(2, args, script=SLOW_WORKER),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    first = out / shard_name(0)
    deadline = time.monotonic() + 120
    try:
        while not first.exists():
            assert proc.poll() is None, f"encode ended early:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no shard within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, without any clean-up
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists() and not (out / shard_name(4)).exists()
    with pytest.raises(TokenFileError, match="incomplete"):
        load_token_shards(out)
    before = first.read_bytes()

    report = _encode(2, args[1:])
    assert shard_name(0) in report["resumed"] and report["samples"] == IMAGES
    assert first.read_bytes() == before  # kept, not written again
    assert _pairs(out) == _pairs(one_process)
    assert not list(out.glob("*.tmp*"))  # no temporaries of the killed run left


def _folder(root: Path, count: int, broken: int) -> list[str]:
    """``count`` PNGs named 00.png ...; the one at ``broken`` is a truncated file. Returns the good names."""
    root.mkdir(parents=True)
    good = []
    for i in range(count):
        path = root / f"{i:02d}.png"
        if i == broken:
            path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            continue
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(path)
        good.append(path.name)
    return good


def test_unreadable_image_is_skipped_and_named(tmp_path) -> None:
    root = tmp_path / "images"
    good = _folder(root, 10, broken=5)  # shard 1 (samples 4-7), written by rank 1
    out = tmp_path / "tokens"
    report = _encode(
        2, ["evotok-tiny", str(root), "--out", str(out), "--shard-size", "4", "--batch-size", "1"]
    )
    assert report["skipped"] == ["05.png"] and report["samples"] == 9
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["file"] for s in manifest["skipped"]] == ["05.png"]
    assert [s["samples"] for s in manifest["shards"]] == [4, 3, 2]
    data = load_token_shards(out)
    assert data["keys"] == [Path(name).stem for name in good]  # the source name with every sample
    tok = load_tokenizer("evotok-tiny").eval()
    with torch.no_grad():
        for row, name in zip(data["codes"], good):  # batches of one: each row is its own file's code
            assert torch.equal(row, tok.encode(load_images([root / name], 64))[0])


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    """evotok-tiny with one weight nudged: the same code layout, another tokenizer."""
    other = load_tokenizer("evotok-tiny")
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    return other.save_pretrained(tmp_path_factory.mktemp("other") / "model")


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polytok: error: "), lines
    return lines[0]


def test_another_tokenizer_of_the_same_layout_is_refused(
    one_process: Path, other_tokenizer: Path, tmp_path, capsys
) -> None:
    out = tmp_path / "dec"
    assert main(["decode", str(other_tokenizer), str(one_process), "--out-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert "another tokenizer" in line and "weights" in line and not out.exists()
    other = load_tokenizer(str(other_tokenizer)).eval()
    with pytest.raises(TokenSetMismatchError, match="another tokenizer"):
        TokenShardDataset(one_process, tokenizer=other)
    assert main(["decode", "evotok-tiny", str(one_process), "--out-dir", str(out), "--limit", "2"]) == 0
    assert len(list(out.glob("*.png"))) == 2

    # .npz sets record the tokenizer too
    npz = tmp_path / "t.npz"
    assert main(["encode", "evotok-tiny", "shapes", "--max-images", "2", "--out", str(npz)]) == 0
    capsys.readouterr()
    assert main(["decode", str(other_tokenizer), str(npz), "--out-dir", str(out / "n")]) == 2
    assert "another tokenizer" in _error_line(capsys)
    assert (
        load_tokens(npz)["identity"]["weights_sha256"]
        == json.loads((tmp_path / "t.manifest.json").read_text())["weights_sha256"]
    )


def test_sets_recorded_before_a_config_field_existed_still_match(one_process: Path, tmp_path) -> None:
    """A set whose recorded config lacks fields added since (at their defaults) is the same tokenizer's; a
    recorded config that differs in a chosen value is another's."""
    import shutil

    tok = load_tokenizer("evotok-tiny").eval()
    for name, edit, same in (
        ("older", lambda c: c.pop("linear_path_gate_init"), True),
        ("other", lambda c: c["quantizer"].update(levels=c["quantizer"]["levels"] - 1), False),
    ):
        copy = tmp_path / name
        shutil.copytree(one_process, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        config = manifest["identity"]["config"]
        assert config["linear_path_gate_init"] == 0.0  # a field at its default in the recorded config
        edit(config)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        if same:
            assert len(list(TokenShardDataset(copy, tokenizer=tok))) == IMAGES
        else:
            with pytest.raises(TokenSetMismatchError, match="differ in config"):
                TokenShardDataset(copy, tokenizer=tok)


def test_resume_into_a_set_of_another_tokenizer_or_shard_size_is_refused(
    one_process: Path, other_tokenizer: Path, tmp_path, capsys
) -> None:
    import shutil

    out = tmp_path / "tokens"
    shutil.copytree(one_process, out)
    (out / "manifest.json").unlink()  # as if interrupted
    (out / shard_name(4)).unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    base = ["encode", "shapes", "--max-images", str(IMAGES), "--batch-size", str(BATCH), "--out", str(out)]
    assert main([base[0], str(other_tokenizer), *base[1:], "--shard-size", str(SHARD)]) == 2
    assert "another tokenizer" in _error_line(capsys)
    assert main([base[0], "evotok-tiny", *base[1:], "--shard-size", "4"]) == 2
    assert "shard size" in _error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched


def test_reader_streams_every_sample_once_over_workers(one_process: Path) -> None:
    dataset = TokenShardDataset(one_process, shuffle=True, shuffle_buffer=6, seed=3)
    assert dataset.samples == IMAGES
    loader = DataLoader(dataset, batch_size=None, num_workers=2)
    read = [(s["key"], s["codes"].numpy().tobytes()) for s in loader]
    assert len(read) == IMAGES and dict(read) == _pairs(one_process)
    assert [k for k, _ in read] != sorted(k for k, _ in read)  # shuffled (fixed seed)
    assert [k for k, _ in read] == [s["key"] for s in DataLoader(dataset, batch_size=None, num_workers=2)]
    sample = next(iter(dataset))
    assert sample["codes"].dtype == torch.long and sample["codes"].shape == (16, 16, 8)
    assert isinstance(sample["caption"], str) and sample["caption"] and isinstance(sample["label"], int)


def test_export_benchmark_runs_and_compares_the_sets(tmp_path) -> None:
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "token_export.py"
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(bench), "--quick", "--json", str(rows_file)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(rows_file.read_text())
    assert [r["processes"] for r in rows] == [1, 2] and all(r["same (key, codes)"] for r in rows)
    assert all(r["samples"] == 16 and r["images/s"] > 0 for r in rows)
    assert "images/s" in proc.stdout and "speed-up" in proc.stdout  # the table


def test_reader_splits_the_shards_over_torchrun_ranks(one_process: Path, tmp_path) -> None:
    worker = Path(__file__).with_name("read_token_shards_worker.py")
    command = _command(2, [str(one_process), str(tmp_path)], script=worker)
    proc = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    shard_keys = [[f"{j:09d}" for j in range(i * SHARD, (i + 1) * SHARD)] for i in range(5)]
    assert ranks[0] == shard_keys[0] + shard_keys[2] + shard_keys[4]  # shards 0, 2, 4
    assert ranks[1] == shard_keys[1] + shard_keys[3]


def test_webdataset_input_gives_one_token_shard_per_input_shard(tmp_path) -> None:
    from polytok.data import write_shards
    from polytok.tokensets.npz import dataset_for_encoding

    shapes = dataset_for_encoding("shapes", image_size=64)
    samples = [{"key": f"img{i:03d}", **{k: shapes[i][k] for k in ("image", "caption")}} for i in range(20)]
    samples[10]["image"] = b"not an image"  # stored as is: a broken member of the second tar
    write_shards(samples, tmp_path / "in" / "part-%03d.tar", maxcount=8, image_format="png")
    pattern = str(tmp_path / "in" / "part-{000..002}.tar")
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}"
        report = _encode(nproc, ["evotok-tiny", pattern, "--out", str(out), "--batch-size", "3"])
        assert report["samples"] == 19 and report["shards"] == [shard_name(i) for i in range(3)]
        assert report["skipped"] == [str(tmp_path / "in" / "part-001.tar") + "#img010"]
        runs[nproc] = _pairs(out)
    assert runs[1] == runs[2] and sorted(runs[1]) == [f"img{i:03d}" for i in range(20) if i != 10]
    manifest = json.loads((tmp_path / "p2" / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [8, 7, 4]
    data = load_token_shards(tmp_path / "p1")
    reread = TokenShardDataset(tmp_path / "p1")
    assert [s["key"] for s in reread] == data["keys"]
    assert data["captions"][0] == shapes[0]["caption"]


def test_output_kind_follows_out_and_npz_under_torchrun_is_refused(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "named.npz"
    args = ["encode", "evotok-tiny", "shapes", "--max-images", "2", "--batch-size", "2"]
    assert main([*args, "--out", str(out), "--format", "wds"]) == 0
    assert (out / "manifest.json").is_file() and (out / shard_name(0)).is_file()  # a directory, as asked
    capsys.readouterr()
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main([*args, "--out", str(tmp_path / "t.npz")]) == 2
    assert "directory" in _error_line(capsys) and not (tmp_path / "t.npz").exists()
