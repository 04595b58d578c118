"""Saved directories survive crashes and corruption: ``save_pretrained`` and the training checkpoints
(real subprocesses killed mid-save, real files), checksums verified on load, ``map_location``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from polytok.hub import SHIPPED_DIR, list_shipped
from polytok.models.tokenizer import Tokenizer
from polytok.train import checkpoint as ckpt
from save_crash_worker import tokenizer, write_checkpoint

WORKER = Path(__file__).with_name("save_crash_worker.py")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _crash(*args: object) -> int:
    proc = subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-3000:]
    return proc.returncode


def _load_quietly(path: Path) -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "reading <name>.old-*": tested below
        return Tokenizer.from_pretrained(path)


def _generation(tok: Tokenizer, generations: dict[int, dict[str, torch.Tensor]]) -> int:
    """Which of the saved generations ``tok`` holds, entirely (never a mix)."""
    state = tok.checkpoint_state_dict()
    matches = [g for g, ref in generations.items() if all(torch.equal(state[k], v) for k, v in ref.items())]
    assert len(matches) == 1, "the loaded weights are no single saved generation"
    return matches[0]


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


# ---------------------------------------------------------------------------------------------------------
# crashes


@pytest.mark.parametrize("crash_at", [1, 2, 3, 0])  # before: the manifest's rename, old aside, new in; none
def test_save_pretrained_killed_at_each_rename_leaves_old_or_new_complete(tmp_path, crash_at):
    target = tmp_path / "tok"
    generations = {0: tokenizer(0).checkpoint_state_dict(), 1: tokenizer(1).checkpoint_state_dict()}
    tokenizer(0).save_pretrained(target)
    code = _crash("tokenizer", target, 1, crash_at)
    assert code == (0 if crash_at == 0 else -signal.SIGKILL)
    assert _generation(_load_quietly(target), generations) == (1 if crash_at == 0 else 0)
    if crash_at == 3:  # killed between the renames: only the previous version exists, and is found
        assert not target.exists()
        with pytest.warns(RuntimeWarning, match=r"tok\.old-"):
            Tokenizer.from_pretrained(target)
    # the next save restores order and removes the leftovers
    tokenizer(2).save_pretrained(target)
    assert _leftovers(target) == []
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    generations[2] = tokenizer(2).checkpoint_state_dict()
    assert _generation(Tokenizer.from_pretrained(target), generations) == 2


def test_save_pretrained_killed_at_random_moments_always_leaves_a_complete_directory(tmp_path):
    target = tmp_path / "tok"
    generations = {1: tokenizer(1).checkpoint_state_dict(), 2: tokenizer(2).checkpoint_state_dict()}
    for delay in (0.0, 0.021, 0.057, 0.11):
        proc = subprocess.Popen([sys.executable, str(WORKER), "loop", str(target)], env=_env())
        try:
            deadline = time.monotonic() + 120
            while not (target / "manifest.json").exists() and not list(tmp_path.glob("tok.old-*")):
                assert proc.poll() is None and time.monotonic() < deadline, "the saving loop did not start"
                time.sleep(0.005)
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        _generation(_load_quietly(target), generations)  # loads, verified, one whole generation
    tokenizer(1).save_pretrained(target)
    assert _leftovers(target) == []


@pytest.mark.parametrize("crash_at", [3, 4, 5])  # before: manifest rename, old step aside, new step in
def test_resaving_a_training_checkpoint_never_loses_the_only_copy(tmp_path, crash_at):
    """keep_last=1 and the same step saved again (as after a resume): a crash keeps one complete copy."""
    root = tmp_path / "checkpoints"
    write_checkpoint(root, 5, 1.0)
    assert _crash("checkpoint", root, 5, crash_at) == -signal.SIGKILL
    [(step, found)] = ckpt.list_checkpoints(root)
    assert step == 5 and ckpt.find_latest_checkpoint(root) == found
    assert ckpt.load_trained_weights(found)["w"][0].item() == 1.0  # the complete previous version
    # the next save restores the step's own name and removes every partial or previous directory
    write_checkpoint(root, 6, 3.0)
    ckpt.prune_checkpoints(root, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000006"]


def test_stale_partial_checkpoint_directories_are_removed_by_the_next_save(tmp_path):
    root = tmp_path / "checkpoints"
    write_checkpoint(root, 1, 1.0)
    assert _crash("checkpoint", root, 2, 1) == -signal.SIGKILL  # killed while writing its first file
    assert (root / ".step_00000002.partial").is_dir()
    write_checkpoint(root, 3, 1.0)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000001", "step_00000003"]


# ---------------------------------------------------------------------------------------------------------
# checksums


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_same_length_corruption_is_refused_on_load(tmp_path, name):
    tokenizer(0).save_pretrained(tmp_path / "tok")
    path = tmp_path / "tok" / name
    size = path.stat().st_size
    _flip_byte(path, size - 3 if name == "model.safetensors" else size // 2)  # a weight / a config value
    assert path.stat().st_size == size
    with pytest.raises(ValueError, match=rf"{name}.*sha256"):
        Tokenizer.from_pretrained(tmp_path / "tok")


def test_directory_without_a_manifest_loads_with_a_warning(tmp_path):
    tok = tokenizer(0)
    tok.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "manifest.json").unlink()
    with pytest.warns(UserWarning, match="no manifest.json"):
        loaded = Tokenizer.from_pretrained(tmp_path / "tok")
    assert _generation(loaded, {0: tok.checkpoint_state_dict()}) == 0


def test_shipped_checkpoints_carry_checksums_that_verify():
    for name in list_shipped():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "not verified" warning
            Tokenizer.from_pretrained(SHIPPED_DIR / name)
        manifest = ckpt.verify_checkpoint(SHIPPED_DIR / name)  # the same manifest format
        assert set(manifest["files"]) == {"config.json", "model.safetensors"}


def test_save_pretrained_refuses_to_replace_a_directory_with_other_files(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "log.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match=r"refusing.*log\.jsonl"):
        tokenizer(0).save_pretrained(tmp_path / "run")
    assert (tmp_path / "run" / "log.jsonl").read_text() == "{}\n"


# ---------------------------------------------------------------------------------------------------------
# map_location


def _devices() -> list[str]:
    return ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
def test_from_pretrained_moves_the_model_to_map_location(tmp_path, device):
    tok = tokenizer(0)
    tok.save_pretrained(tmp_path / "tok")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok", map_location=device)
    assert {t.device.type for t in [*loaded.parameters(), *loaded.buffers()]} == {device}
    assert loaded.device.type == device
    if device != "meta":
        assert _generation(loaded.cpu(), {0: tok.checkpoint_state_dict()}) == 0
