"""storage's single-file writes: the old content or the new one, never a partial file or a temporary left
behind; saved folders honour the umask and refuse to swallow foreign files."""

from __future__ import annotations

import json
import os
import stat

import pytest

from polytok import storage


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "record.json"
    storage.atomic_write_json(path, {"step": 1})

    def broken(handle) -> None:
        handle.write(b'{"step": ')
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        storage.atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
    storage.atomic_write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_saved_folders_honour_the_umask_and_refuse_foreign_files(tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    def write(staging) -> None:
        save_file({"w": torch.zeros(2)}, str(staging / "model.safetensors"))  # safetensors makes it 0600
        (staging / "config.json").write_text("{}")

    old = os.umask(0o022)
    try:
        out = storage.save_folder(tmp_path / "m", write, known={"model.safetensors", "config.json"}, what="x")
    finally:
        os.umask(old)
    for name in ("model.safetensors", "config.json", storage.MANIFEST):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644, name
    storage.verify_files(out, storage.read_manifest(out))
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        storage.save_folder(out, write, known={"model.safetensors", "config.json"}, what="x")
    assert (out / "notes.txt").read_text() == "mine"
