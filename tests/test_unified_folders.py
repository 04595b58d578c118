"""A saved unified model folder is read only as saved: checksums verified (weights, text tokenizer, the
image tokenizer beside it), malformed or unknown content named in one line, a backbone key that does not
exist refused, and an image tokenizer looked for nowhere outside the folder. Real saved folders, real
CLI calls."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from polytok import storage
from polytok.cli import main
from polytok.unified import UnifiedModel
from polytok.unified.hub import load_unified
from unified_helpers import tiny_config, tiny_model, tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    model = tiny_model("vq", grid=(2, 2))
    return model.save_pretrained(tmp_path_factory.mktemp("unified") / "model", tokenizer("vq"))


@pytest.fixture
def folder(saved: Path, tmp_path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(saved, copy)
    return copy


def _refused(folder: Path, capsys, *words: str) -> str:
    """``polytok generate`` on the folder: one line holding ``words``, no image written."""
    out = folder.parent / "generated"
    assert main(["generate", str(folder), "a red circle", "--cfg", "1", "--out-dir", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polytok: error: "), lines
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()
    return lines[0]


def _flip_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x01  # inside the tensor data, past the safetensors header
    path.write_bytes(bytes(data))


def _resave_manifest(folder: Path) -> None:
    """Record the folder's files as they are now (as a folder saved that way would be)."""
    storage.write_manifest(folder, {"kind": "unified model"})


# ------------------------------------------------------------------------------------------ 5: checksums


def test_changed_weights_or_text_tokenizer_are_refused(saved: Path, tmp_path, capsys) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(saved, weights)
    _flip_byte(weights / "model.safetensors")
    with pytest.raises(storage.ChecksumError, match=r"model\.safetensors"):
        UnifiedModel.from_pretrained(weights)
    with pytest.raises(storage.ChecksumError):
        load_unified(str(weights))
    _refused(weights, capsys, "model.safetensors", "sha256")

    text = tmp_path / "text"
    shutil.copytree(saved, text)
    file = text / "text_tokenizer.json"
    vocab = json.loads(file.read_text())["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[-2:]  # the last two merges (ids of as many digits): two words
    entry = {w: f"{json.dumps(w, ensure_ascii=False)}: {vocab[w]}" for w in (a, b)}
    swapped = (
        file.read_text()
        .replace(entry[a], "\0")
        .replace(entry[b], entry[a].replace(str(vocab[a]), str(vocab[b])))
    )
    file.write_text(swapped.replace("\0", entry[b].replace(str(vocab[b]), str(vocab[a]))))
    assert json.loads(file.read_text())["model"]["vocab"][a] == vocab[b]  # a valid tokenizer, another one
    assert file.stat().st_size == (saved / "text_tokenizer.json").stat().st_size
    _refused(text, capsys, "text_tokenizer.json", "sha256")

    image = tmp_path / "image"
    shutil.copytree(saved, image)
    _flip_byte(image / "image_tokenizer" / "model.safetensors")
    UnifiedModel.from_pretrained(image)  # the model's own files are intact ...
    with pytest.raises(storage.ChecksumError, match="image_tokenizer"):
        load_unified(str(image))  # ... the tokenizer beside it is not
    _refused(image, capsys, "image_tokenizer", "sha256")


# ----------------------------------------------------------------------------- 6: malformed, unknown keys


def test_malformed_or_unknown_content_is_one_line_naming_the_file(saved: Path, tmp_path, capsys) -> None:
    for name, edit, words in (
        ("unified.json", lambda t: t[: len(t) // 2], ("unified.json",)),
        ("text_tokenizer.json", lambda t: t[: len(t) // 2], ("text_tokenizer.json",)),
        ("unified.json", lambda t: _with_config_key(t, "depth_layer", 3), ("unified.json", "depth_layer")),
    ):
        folder = tmp_path / f"{name}-{len(words)}"
        shutil.copytree(saved, folder)
        (folder / name).write_text(edit((folder / name).read_text()))
        _resave_manifest(folder)
        _refused(folder, capsys, *words)


def _with_config_key(text: str, key: str, value) -> str:
    meta = json.loads(text)
    meta["config"][key] = value
    return json.dumps(meta)


# ------------------------------------------------------------------------------------ 7: backbone typos


def test_a_backbone_key_the_backbone_does_not_have_is_refused(tmp_path, capsys) -> None:
    backbone = {**tiny_config().backbone, "hiden_size": 6}
    with pytest.raises(ValueError, match="hiden_size"):
        tiny_config(backbone=backbone)
    tiny_config(backbone={**tiny_config().backbone, "rope_theta": 500.0})  # a key llama has: accepted
    config = Path(__file__).resolve().parents[1] / "configs" / "unified-evotok-tiny.yaml"
    out = tmp_path / "run"
    argv = ["train", str(config), "unified.model.backbone.hiden_size=6", f"train.out_dir={out}"]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "hiden_size" in lines[0], lines
    assert not out.exists()  # refused before the run wrote anything


# ----------------------------------------------------------------------- 8: the image tokenizer's place


def test_an_image_tokenizer_outside_the_folder_is_refused(saved: Path, tmp_path, capsys) -> None:
    outside = tmp_path / "tok"
    shutil.copytree(saved / "image_tokenizer", outside)

    named = tmp_path / "named"  # no image_tokenizer/ inside; unified.json names a path to one outside
    shutil.copytree(saved, named, ignore=shutil.ignore_patterns("image_tokenizer"))
    meta = json.loads((named / "unified.json").read_text())
    meta["tokenizer"]["name"] = "../tok"
    (named / "unified.json").write_text(json.dumps(meta))
    _resave_manifest(named)
    line = _refused(named, capsys, "../tok", "outside")
    assert "different" not in line

    linked = tmp_path / "linked"  # image_tokenizer/ is a link to a folder outside
    shutil.copytree(saved, linked, ignore=shutil.ignore_patterns("image_tokenizer"))
    (linked / "image_tokenizer").symlink_to(outside, target_is_directory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _refused(linked, capsys, "image_tokenizer", "outside")
