"""Every command that writes: a destination that cannot be written or a disk that fills up gives one line
(``polytok: error: ...``, exit 2) and leaves no partial file (no 0-byte PNG, no temporary). The full disk
is real (a file-size limit on this process, :mod:`disk_helpers`), as are the files and the CLI calls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from disk_helpers import files_under, full_disk
from polytok.cli import main
from polytok.image_io import save_images


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and not x.startswith("encode")]
    assert len(lines) == 1 and lines[0].startswith("polytok: error: "), err  # progress bars aside
    return lines[0]


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("in") / "photo.png"
    save_images(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)), [path])
    return path


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokens") / "t.npz"
    assert main(["encode", "evotok-tiny", "shapes", "--max-images", "2", "--out", str(out)]) == 0
    return out


def test_full_disk_while_writing_images(picture: Path, tokens: Path, tmp_path, capsys) -> None:
    capsys.readouterr()
    for command in (
        ["reconstruct", "evotok-tiny", str(picture), "--out-dir", str(tmp_path / "recon")],
        ["decode", "evotok-tiny", str(tokens), "--out-dir", str(tmp_path / "decoded")],
    ):
        with full_disk():
            code = main(command)
        assert code == 2, command
        line = _error_line(capsys)
        assert "File too large" in line and ".png" in line, line
        assert files_under(tmp_path) == [], files_under(tmp_path)  # not a 0-byte PNG, no temporary


def test_full_disk_while_writing_a_token_file(tmp_path, capsys) -> None:
    with full_disk():
        code = main(
            ["encode", "evotok-tiny", "shapes", "--max-images", "2", "--out", str(tmp_path / "t.npz")]
        )
    assert code == 2 and "File too large" in _error_line(capsys)
    assert files_under(tmp_path) == []
    with full_disk():
        code = main(
            ["encode", "evotok-tiny", "shapes", "--max-images", "2", "--out", str(tmp_path / "t.npz")]
        )
    assert code == 2 and "File too large" in _error_line(capsys)
    assert files_under(tmp_path) == []


def test_unwritable_destinations_are_one_line(picture: Path, tokens: Path, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where a folder is wanted")
    capsys.readouterr()
    for command in (
        ["reconstruct", "evotok-tiny", str(picture), "--out-dir", str(blocker / "out")],
        ["decode", "evotok-tiny", str(tokens), "--out-dir", str(blocker / "out")],
        ["encode", "evotok-tiny", "shapes", "--max-images", "2", "--out", str(blocker / "t.npz")],
        ["encode", "evotok-tiny", "shapes", "--max-images", "2", "--out", str(blocker / "shards")],
        ["eval", "evotok-tiny", "--max-images", "2", "--report", str(blocker / "report.html")],
    ):
        assert main(command) == 2, command
        line = _error_line(capsys)
        assert str(blocker) in line, line
    assert files_under(tmp_path) == ["a-file"]


def test_full_disk_while_writing_a_training_checkpoint_leaves_no_partial_one(tmp_path) -> None:
    from test_train_engine import run

    with full_disk(room=1000), pytest.raises(OSError, match="File too large"):
        run(tmp_path, max_steps=2, save_every=1)
    assert not list((tmp_path / "checkpoints").glob(".step_*")), files_under(tmp_path)
