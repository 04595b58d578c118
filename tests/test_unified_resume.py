"""A unified run killed while writing a checkpoint resumes with consistent records (no step logged twice,
the held-out loss before training kept), and a resume with another model config is refused in one line
before anything is rewritten. A real run, killed for real (SIGKILL) while its checkpoint is staged."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from polytok.cli import main
from process_kill import kill_when_file_appears

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "unified-evotok-tiny.yaml"
WORKER = Path(__file__).with_name("train_worker_unified.py")
RUN = [
    str(CONFIG),
    "data.image_size=16",
    "unified.text_captions=200",
    "unified.heldout_samples=4",
    "train.progress=false",
    "train.log_every=1",
    "train.precision=fp32",
    "train.device=cpu",
    "train.max_steps=4",
    "train.save_every=2",
    "train.batch_size=4",
]


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_resume_after_a_kill_in_a_checkpoint_write_keeps_the_records(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(WORKER), *RUN, f"train.out_dir={out}", "--stall-in-checkpoint", "4"]
    staged = out / "checkpoints" / ".step_00000004.partial" / "trainer_state.pt"
    kill_when_file_appears(command, staged, env=env, timeout_s=120)
    assert _steps(out) == [1, 2, 3, 4]  # step 4 logged, its checkpoint not complete: resumes from 2
    before = json.loads((out / "heldout.json").read_text())["loss_before"]

    # 10: another model config is refused before anything is rewritten
    kept = _files(out)
    changed = ["train", *RUN, f"train.out_dir={out}", "train.resume=true", "unified.model.depth_layers=3"]
    assert main(changed) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "depth_layers" in lines[0] and "resume" in lines[0], lines
    assert _files(out) == kept

    # 9: the same config resumes; every step logged once, loss_before kept
    assert main(["train", *RUN, f"train.out_dir={out}", "train.resume=true"]) == 0
    assert _steps(out) == [1, 2, 3, 4]
    heldout = json.loads((out / "heldout.json").read_text())
    assert heldout["loss_before"] == before and heldout["step"] == 4 and "loss_after" in heldout
