"""Token sets hold what they claim: a set records the input it encodes and refuses to be continued from
other input; reading verifies the manifest as a whole and every shard's checksum; a failed write leaves
no partial file. Real encodes (the shipped ``evotok-tiny`` on ``shapes``), real files, real CLI calls.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from polytok.cli import main
from polytok.tokensets.npz import TokenFileError
from polytok.tokensets.shards import TokenShardDataset, load_token_shards, shard_name

IMAGES, SHARD = 12, 4
ENCODE = ["encode", "evotok-tiny", "shapes", "--max-images", str(IMAGES), "--shard-size", str(SHARD)]


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polytok: error: "), lines
    return lines[0]


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def token_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("set") / "tokens"
    assert main([*ENCODE, "--batch-size", "4", "--out", str(out)]) == 0
    return out


@pytest.fixture
def copy(token_set: Path, tmp_path) -> Path:
    out = tmp_path / "tokens"
    shutil.copytree(token_set, out)
    return out


# ------------------------------------------------------------------------------------- 1: what a set encodes


def test_set_records_its_input_and_a_rerun_with_other_input_is_refused(copy: Path, tmp_path, capsys) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    source = manifest["source"]
    assert source["data"] == "shapes" and source["split"] == "train" and source["image_size"] == 64
    assert source["max_images"] == IMAGES and "augmentation" in source
    before = _contents(copy)
    folder = tmp_path / "images"
    folder.mkdir()
    from polytok.data import build_dataset
    from polytok.image_io import save_images

    shapes = build_dataset("shapes", split="val", image_size=64)
    import torch

    save_images(
        torch.stack([shapes[i]["image"] for i in range(IMAGES)]),
        [folder / f"{i:02d}.png" for i in range(IMAGES)],
    )
    capsys.readouterr()
    out = ["--out", str(copy)]
    for args, named in (
        ([*ENCODE, *out, "--split", "val"], "split"),
        ([*ENCODE, *out, "--image-size", "32"], "image size"),
        ([*ENCODE[:2], str(folder), *ENCODE[3:], *out], "data"),
    ):
        assert main(args) == 2, args
        line = _error_line(capsys)
        assert named in line and "another --out" in line, line
        assert _contents(copy) == before  # the old tokens are kept, not passed off as the new input's

    # an interrupted set (no manifest, a shard missing) is not completed from other input either
    (copy / "manifest.json").unlink()
    (copy / shard_name(2)).unlink()
    before = _contents(copy)
    for change in (["--split", "val"], ["--image-size", "32"]):
        assert main([*ENCODE, "--out", str(copy), *change]) == 2
        assert "split" in _error_line(capsys) or change[0] != "--split"
        assert _contents(copy) == before
    assert main([*ENCODE, "--out", str(copy)]) == 0  # the same input resumes
    assert json.loads(capsys.readouterr().out)["resumed"] == [shard_name(0), shard_name(1)]
    assert len(load_token_shards(copy)["keys"]) == IMAGES


def test_npz_set_refuses_to_be_replaced_by_other_input(tmp_path, capsys) -> None:
    out = tmp_path / "t.npz"
    base = ["encode", "evotok-tiny", "shapes", "--max-images", "2", "--out", str(out)]
    assert main(base) == 0
    assert json.loads((tmp_path / "t.manifest.json").read_text())["source"]["split"] == "train"
    before = _contents(tmp_path)
    capsys.readouterr()
    assert main([*base, "--split", "val"]) == 2
    assert "split" in _error_line(capsys)
    assert _contents(tmp_path) == before


# ------------------------------------------------------------------------------ 2 and 3: reading verifies


def _decode_refused(path: Path, tmp_path: Path, capsys, *words: str) -> str:
    out = tmp_path / "decoded"
    assert main(["decode", "evotok-tiny", str(path), "--out-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert all(w in line for w in words), line
    assert not out.exists() or not any(out.iterdir())  # no image of a set that is not what it claims
    return line


def _edit_manifest(directory: Path, edit) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    edit(manifest)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_changed_shard_bytes_or_checksum_are_refused(token_set: Path, tmp_path, capsys) -> None:
    changed = tmp_path / "changed"
    shutil.copytree(token_set, changed)
    tar = changed / shard_name(1)
    data = bytearray(tar.read_bytes())
    start = data.index(b"\x93NUMPY")  # a code inside the first .npy member: the tar stays well-formed
    data[start + 200] ^= 0x01
    tar.write_bytes(bytes(data))
    _decode_refused(changed, tmp_path, capsys, shard_name(1), "sha256")
    with pytest.raises(TokenFileError, match="sha256"):
        list(TokenShardDataset(changed))

    edited = tmp_path / "edited"
    shutil.copytree(token_set, edited)
    _edit_manifest(edited, lambda m: m["shards"][0].update(sha256="0" * 64))
    _decode_refused(edited, tmp_path, capsys, shard_name(0), "sha256")


def test_manifest_is_checked_whole(token_set: Path, tmp_path, capsys) -> None:
    def variant(name: str, edit) -> Path:
        path = tmp_path / name
        shutil.copytree(token_set, path)
        edit(path)
        return path

    removed = variant("removed", lambda p: _edit_manifest(p, lambda m: m["shards"].pop(1)))
    _decode_refused(removed, tmp_path, capsys, "manifest")
    count = variant("count", lambda p: _edit_manifest(p, lambda m: m.update(samples=IMAGES - SHARD)))
    _decode_refused(count, tmp_path, capsys, "samples")
    entry = variant("entry", lambda p: _edit_manifest(p, lambda m: m["shards"][2].update(samples=1)))
    _decode_refused(entry, tmp_path, capsys, shard_name(2))

    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(token_set / shard_name(0), outside / shard_name(0))
    escaped = variant(
        "escaped",
        lambda p: _edit_manifest(p, lambda m: m["shards"][0].update(file=f"../outside/{shard_name(0)}")),
    )
    _decode_refused(escaped, tmp_path, capsys, "inside")

    no_identity = variant("no_identity", lambda p: _edit_manifest(p, lambda m: m.pop("identity")))
    _decode_refused(no_identity, tmp_path, capsys, "identity")
    with pytest.raises(TokenFileError, match="identity"):
        load_token_shards(no_identity)

    def truncate(p: Path) -> None:
        tar = p / shard_name(2)
        tar.write_bytes(tar.read_bytes()[:3000])

    _decode_refused(variant("truncated", truncate), tmp_path, capsys, shard_name(2), "bytes")


# --------------------------------------------------------------------------------- 4: a failed write


def test_failed_shard_write_leaves_no_partial_file(tmp_path, capsys) -> None:
    from disk_helpers import full_disk

    out = tmp_path / "tokens"
    with full_disk(room=20_000):  # the shard records fit, the tar shards (about 30 KB) do not
        code = main([*ENCODE, "--batch-size", "4", "--out", str(out)])
    err = capsys.readouterr().err
    errors = [x.split("polytok: error: ", 1)[1] for x in err.splitlines() if "polytok: error: " in x]
    assert code == 2 and len(errors) == 1 and "File too large" in errors[0] and shard_name(0) in errors[0]
    assert sorted(p.name for p in out.iterdir()) == []  # no temporary, no record without its shard
    assert main([*ENCODE, "--batch-size", "4", "--out", str(out)]) == 0  # with room, the same command
    assert len(load_token_shards(out)["keys"]) == IMAGES


def test_atomic_write_that_raises_inside_leaves_the_old_file(tmp_path) -> None:
    from polytok.storage import atomic_write

    target = tmp_path / "tokens-000000.tar"
    target.write_bytes(b"old")

    def write(f) -> None:
        f.write(b"new, half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, write)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]
