"""The ``polytok`` command on bad input: one error line and exit 2, flags that do what they say, nothing
lost (reconstruct outputs, encode keys and skipped files, incomplete token sets refused).

Uses the shipped tiny checkpoints: ``evotok-tiny`` (8 residual levels, pixels from 4), ``unitok-tiny``
(one level of 8 codebooks) and ``polytok-tiny`` (4 levels x 8 codebooks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polytok.cli import build_parser, main
from polytok.hub import load_tokenizer
from polytok.image_io import load_images
from polytok.models.identity import weights_sha256
from polytok.tokensets.npz import TokenFileError, encode_batches, load_tokens

SRC = Path(__file__).resolve().parents[1] / "src"


def _error_line(capsys) -> str:
    """The whole stderr, which must be exactly one ``polytok: error:`` line."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("polytok: error: "), err
    return lines[0]


def _image(path: Path, seed: int, size: tuple[int, int] = (72, 80)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def evotok():
    return load_tokenizer("evotok-tiny").eval()


@pytest.fixture(scope="module")
def evo_tokens(tmp_path_factory) -> Path:
    """A complete single-file token set of 6 shapes images from evotok-tiny."""
    out = tmp_path_factory.mktemp("tok") / "evo.npz"
    assert main(["encode", "evotok-tiny", "shapes", "--max-images", "6", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- point 14: one line, exit 2


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "polytok.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_user_error_is_one_line_and_exit_2_traceback_only_with_debug(tmp_path) -> None:
    missing = tmp_path / "missing.npz"
    plain = _run_cli("decode", "evotok-tiny", str(missing))
    assert plain.returncode == 2, plain.stderr
    assert plain.stderr.strip().splitlines() == [f"polytok: error: token file not found: {missing}"]
    assert "Traceback" not in plain.stderr
    debug = _run_cli("--debug", "decode", "evotok-tiny", str(missing))
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr
    with pytest.raises(FileNotFoundError):  # --debug also after the subcommand
        main(["decode", "evotok-tiny", str(missing), "--debug"])


def test_bad_token_files_are_named_as_such(evo_tokens: Path, tmp_path, capsys) -> None:
    data = evo_tokens.read_bytes()
    cases = {
        "empty.npz": b"",
        "truncated.npz": data[: len(data) // 2],
        "photo.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8,
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(TokenFileError, match=r"not a polytok token file|truncated or corrupt"):
            load_tokens(path)
        assert main(["decode", "evotok-tiny", str(path), "--out-dir", str(tmp_path / "d")]) == 2
        line = _error_line(capsys)
        assert str(path) in line and "pickled" not in line and "BadZipFile" not in line


def test_keyboard_interrupt_exits_130(monkeypatch, capsys) -> None:
    import polytok.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_presets", interrupted)
    assert main(["presets"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_unknown_model_error_speaks_library_and_cli_languages(tmp_path, capsys) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        load_tokenizer("unitok-l")
    assert "allow_untrained=True" in str(caught.value) and "--untrained" not in str(caught.value)
    assert main(["reconstruct", "unitok-l", str(_image(tmp_path / "x.png", 0))]) == 2
    assert "--untrained" in _error_line(capsys)


# ---------------------------------------------------------------- point 3 and 15: reconstruct


def test_reconstruct_keeps_every_output_when_names_collide(tmp_path, capsys) -> None:
    first, second = _image(tmp_path / "a" / "x.png", 1), _image(tmp_path / "b" / "x.png", 2)
    out = tmp_path / "out"
    assert main(["reconstruct", str(first), str(second), "--out-dir", str(out), "--batch-size", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["image"] for r in records] == [str(first), str(second)]
    outputs = [Path(r["reconstruction"]) for r in records]
    assert len(set(outputs)) == 2 and all(p.is_file() for p in outputs)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in outputs)
    tok = load_tokenizer("unitok-tiny").eval()
    for source, output in zip((first, second), outputs):
        expected = tok.decode(tok.encode(load_images([source], 64)))
        expected = (expected * 255).round().byte()[0].permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(Image.open(output)), expected)


def test_reconstruct_honours_batch_size(tmp_path, monkeypatch, capsys) -> None:
    from polytok.models.tokenizer import Tokenizer

    sizes: list[int] = []
    real_encode = Tokenizer.encode

    def counting_encode(self, images):
        sizes.append(len(images))
        return real_encode(self, images)

    monkeypatch.setattr(Tokenizer, "encode", counting_encode)
    paths = [str(_image(tmp_path / f"p{i}.png", i)) for i in range(5)]
    assert main(["reconstruct", *paths, "--batch-size", "2", "--out-dir", str(tmp_path / "o")]) == 0
    assert sizes == [2, 2, 1]
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


def test_reconstruct_without_an_image_is_refused(tmp_path, capsys) -> None:
    model = load_tokenizer("evotok-tiny").save_pretrained(tmp_path / "model")
    assert main(["reconstruct", str(model)]) == 2
    assert "no image" in _error_line(capsys)
    assert main(["reconstruct", "evotok-tiny"]) == 2
    assert "no image" in _error_line(capsys)


def test_depth_is_checked_for_reconstruct(tmp_path, capsys) -> None:
    image = str(_image(tmp_path / "p.png", 0))
    assert main(["reconstruct", "unitok-tiny", image, "--depth", "1"]) == 2
    assert "residual" in _error_line(capsys)
    for depth in ("-1", "0", "5", "99"):  # evotok-tiny decodes pixels from at most 4 levels
        assert main(["reconstruct", "evotok-tiny", image, "--depth", depth]) == 2
        assert "between 1 and 4" in _error_line(capsys)
    out = tmp_path / "o"
    assert main(["reconstruct", "evotok-tiny", image, "--depth", "2", "--out-dir", str(out)]) == 0


# ---------------------------------------------------------------- point 5: decode


def test_decode_flags_are_checked(evo_tokens: Path, tmp_path, capsys) -> None:
    out = tmp_path / "dec"
    for flag, value in (("--limit", "0"), ("--limit", "-2"), ("--batch-size", "0")):
        with pytest.raises(SystemExit) as exc:
            main(["decode", "evotok-tiny", str(evo_tokens), "--out-dir", str(out), flag, value])
        assert exc.value.code == 2 and flag in capsys.readouterr().err
    for depth in ("-1", "0", "99"):
        assert main(["decode", "evotok-tiny", str(evo_tokens), "--out-dir", str(out), "--depth", depth]) == 2
        assert "--depth" in _error_line(capsys)
    assert not out.exists()
    assert main(["decode", "evotok-tiny", str(evo_tokens), "--out-dir", str(out), "--limit", "2"]) == 0
    assert len(list(out.glob("*.png"))) == 2


def test_decode_depth_prefix_matches_the_library(evo_tokens: Path, evotok, tmp_path) -> None:
    out = tmp_path / "dec"
    args = ["--depth", "2", "--limit", "1", "--batch-size", "1"]
    assert main(["decode", "evotok-tiny", str(evo_tokens), "--out-dir", str(out), *args]) == 0
    codes = load_tokens(evo_tokens)["codes"]
    expected = (evotok.decode(codes[:1, ..., :2]) * 255).round().byte()[0].permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(Image.open(out / "000000.png")), expected)


def test_float_codes_in_a_token_file_are_refused(evo_tokens: Path, tmp_path, capsys) -> None:
    with np.load(evo_tokens) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["codes"] = arrays["codes"].astype(np.float32) + 0.5
    bad = tmp_path / "float.npz"
    np.savez(bad, **arrays)
    with pytest.raises(TokenFileError, match="integer"):
        load_tokens(bad)
    assert main(["decode", "evotok-tiny", str(bad), "--out-dir", str(tmp_path / "d")]) == 2
    assert "integer" in _error_line(capsys)


def test_codes_with_more_levels_than_the_tokenizer_are_refused(evotok) -> None:
    codes = evotok.encode(torch.rand(1, 3, 64, 64))  # (1, 16, 16, 8)
    too_many = torch.cat([codes, codes[..., :1]], dim=-1)
    for method in (evotok.decode, evotok.semantic_features, evotok.code_embedding):
        with pytest.raises(ValueError, match="levels"):
            method(too_many)
    poly = load_tokenizer("polytok-tiny").eval()
    codes = poly.encode(torch.rand(1, 3, 64, 64))  # (1, 16, 16, 4, 8)
    with pytest.raises(ValueError, match="codebooks"):
        poly.decode(codes[..., :1])  # slices codebooks, not levels
    assert poly.decode(codes[..., :1, :]).shape == (1, 3, 64, 64)


def test_uint8_tensor_images_raise_value_error(evotok) -> None:
    with pytest.raises(ValueError, match="uint8"):
        evotok.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="integer"):
        evotok.decode(torch.zeros(1, 16, 16, 8))


# ---------------------------------------------------------------- point 5: incomplete token sets


def _batches(n: int, fail_after: int | None = None):
    from polytok.data import build_dataset

    data = build_dataset("shapes", split="heldout", image_size=64)
    for start in range(0, n, 2):
        if fail_after is not None and start >= fail_after:
            raise KeyboardInterrupt  # the process is stopped part-way
        items = [data[i] for i in range(start, start + 2)]
        yield {"image": torch.stack([x["image"] for x in items]), "caption": [x["caption"] for x in items]}


def test_interrupted_sharded_encode_is_refused_by_decode(evotok, tmp_path, capsys) -> None:
    out = tmp_path / "tokens.npz"
    with pytest.raises(KeyboardInterrupt):
        encode_batches(evotok, _batches(10, fail_after=6), out, shard_size=2, progress=False)
    shards = sorted(tmp_path.glob("tokens-*.npz"))
    assert len(shards) == 3  # written before the stop
    for target in (out, shards[0]):
        with pytest.raises(TokenFileError, match="incomplete"):
            load_tokens(target)
        assert main(["decode", "evotok-tiny", str(target), "--out-dir", str(tmp_path / "d")]) == 2
        assert "incomplete" in _error_line(capsys)

    result = encode_batches(evotok, _batches(10), out, shard_size=4, progress=False)
    whole = load_tokens(out)
    assert len(whole["codes"]) == 10 == result.samples and whole["keys"] == [f"{i:09d}" for i in range(10)]
    assert torch.equal(load_tokens(result.files[1])["codes"], whole["codes"][4:8])
    # an old complete set does not vouch for the shards of a newer, interrupted encode
    with pytest.raises(KeyboardInterrupt):
        encode_batches(evotok, _batches(10, fail_after=4), out, shard_size=2, progress=False)
    with pytest.raises(TokenFileError, match="incomplete"):
        load_tokens(out)
    with pytest.raises(TokenFileError, match="incomplete"):
        load_tokens(tmp_path / "tokens-00000.npz")


# ---------------------------------------------------------------- point 2 and 15: encode


def _broken_folder(root: Path) -> tuple[list[str], list[str]]:
    """4 readable PNGs and 3 broken files, interleaved in sorted order."""
    good = [f"{name}.png" for name in ("a", "c", "e", "g")]
    for i, name in enumerate(good):
        _image(root / name, 10 + i)
    bad = {"b.png": b"", "d.jpg": b"\xff\xd8\xff\xe0 not really", "f.png": b"\x89PNG\r\n\x1a\n trunc"}
    for name, content in bad.items():
        (root / name).write_bytes(content)
    return good, sorted(bad)


def test_encode_skips_broken_images_and_stores_keys(tmp_path, capsys) -> None:
    root = tmp_path / "images"
    good, bad = _broken_folder(root)
    out = tmp_path / "tokens.npz"
    args = ["encode", "evotok-tiny", str(root), "--out", str(out), "--batch-size", "1"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(report["skipped"]) == bad and report["samples"] == len(good)
    data = load_tokens(out)
    assert data["keys"] == [Path(name).stem for name in good]
    assert len(data["codes"]) == len(good) and len(data["captions"]) == len(good)
    tok = load_tokenizer("evotok-tiny").eval()
    for row, name in zip(data["codes"], good):  # each row is its own file (batch of one, as here)
        assert torch.equal(row, tok.encode(load_images([root / name], 64))[0])
    manifest = json.loads((tmp_path / "tokens.manifest.json").read_text())
    assert sorted(s["file"] for s in manifest["skipped"]) == bad and manifest["samples"] == len(good)
    assert manifest["weights_sha256"] == weights_sha256(tok)  # which weights made the set
    other = load_tokenizer("evotok-tiny")
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(other) != manifest["weights_sha256"]

    batched = tmp_path / "batched.npz"
    assert main(["encode", "evotok-tiny", str(root), "--out", str(batched), "--batch-size", "3"]) == 0
    assert load_tokens(batched)["keys"] == data["keys"]


def test_encode_defaults_to_the_train_split_without_augmentation(tmp_path) -> None:
    assert build_parser().parse_args(["encode", "m", "d"]).split == "train"
    root = tmp_path / "images"
    for i in range(3):
        _image(root / "train" / f"{i}.png", i)
    _image(root / "val" / "v.png", 9)
    out = tmp_path / "t.npz"
    assert main(["encode", "evotok-tiny", str(root), "--out", str(out), "--batch-size", "1"]) == 0
    data = load_tokens(out)
    assert data["keys"] == ["0", "1", "2"]  # the train subfolder
    tok = load_tokenizer("evotok-tiny").eval()
    # no random crop or flip: each row is the centre-cropped image's code
    assert torch.equal(data["codes"][1], tok.encode(load_images([root / "train" / "1.png"], 64))[0])


def test_token_file_is_an_npz_with_keys(evo_tokens: Path) -> None:
    assert zipfile.is_zipfile(evo_tokens)
    data = load_tokens(evo_tokens)
    assert data["keys"] == [f"{i:09d}" for i in range(6)]


def test_token_file_written_before_manifests_still_loads(tmp_path) -> None:
    """Files of the first format (no keys, no set) are complete by themselves."""
    codes = np.arange(2 * 16 * 16 * 8, dtype=np.uint16).reshape(2, 16, 16, 8) % 1024
    meta = {"code_shape": [8], "codebook_size": 1024, "config": None, "grid": [16, 16]}
    old = tmp_path / "old.npz"
    np.savez(old, codes=codes, captions=np.array(["a", "b"]), labels=np.array([0, 1]), meta=json.dumps(meta))
    data = load_tokens(old)
    assert torch.equal(data["codes"], torch.from_numpy(codes.astype(np.int64))) and data["keys"] is None
