"""Saved folders and checkpoints get the file mode the umask gives, as every other file polytok writes
(safetensors' writer alone would create its files 0600)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from polytok.train import checkpoint as ckpt
from unified_helpers import tiny_model, tokenizer


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    try:
        yield 0o640  # what the umask gives a new file
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


def test_saved_folders_and_checkpoints_follow_the_umask(tmp_path, umask_027) -> None:
    tok = tokenizer("vq")
    tok_dir = tok.save_pretrained(tmp_path / "tokenizer")
    unified_dir = tiny_model("vq", grid=(2, 2)).save_pretrained(tmp_path / "unified", tok)

    root = tmp_path / "checkpoints"  # a training checkpoint, written as the trainer writes one
    ckpt.begin_checkpoint(root, 10)
    staging = ckpt.partial_dir(root, 10)
    ckpt.atomic_save_safetensors({"w": torch.ones(4)}, staging / "model.safetensors")
    ckpt.atomic_torch_save({"step": 10}, staging / ckpt.STATE_FILE)
    step_dir = ckpt.finalize_checkpoint(root, 10)

    for folder, must in (
        (tok_dir, {"model.safetensors", "config.json", "manifest.json"}),
        (unified_dir, {"model.safetensors", "unified.json", "image_tokenizer/model.safetensors"}),
        (step_dir, {"model.safetensors", ckpt.STATE_FILE, "manifest.json"}),
    ):
        modes = _modes(folder)
        assert must <= set(modes), sorted(modes)
        assert {name: oct(mode) for name, mode in modes.items() if mode != umask_027} == {}, folder
