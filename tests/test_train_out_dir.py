"""A fresh run under torchrun into an out_dir that holds a run: every rank refuses (no rank left waiting),
and an explicit overwrite replaces the old run on all ranks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("train_worker_toy.py")
COMMON = ["train.progress=false", "train.device=cpu", "train.log_every=1", "train.save_every=0"]


def _torchrun(out_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd = [*launcher, str(WORKER), *COMMON, f"train.out_dir={out_dir}", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def test_two_ranks_refuse_a_used_out_dir_together_and_overwrite_together(tmp_path) -> None:
    out = tmp_path / "run"
    first = _torchrun(out, "train.max_steps=3")
    assert first.returncode == 0, first.stderr[-3000:]
    old_log = (out / "log.jsonl").read_text()

    refused = _torchrun(out, "train.max_steps=2")  # would hang past the timeout if one rank went on
    assert refused.returncode != 0
    assert refused.stderr.count("already holds a training run") >= 2, refused.stderr[-3000:]  # both ranks
    assert (out / "log.jsonl").read_text() == old_log
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000003"]

    replaced = _torchrun(out, "train.max_steps=2", "train.overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000002"]
    assert len((out / "log.jsonl").read_text().splitlines()) == 2
