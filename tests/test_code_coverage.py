"""scripts/studies/code_coverage.py: the unseen-code fraction against hand-made codes, and a run as a user
does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from script_helpers import load_script, script_path

SCRIPT = script_path("code_coverage")


def test_unseen_fraction_counts_codes_absent_from_the_same_level_and_codebook() -> None:
    train = torch.zeros(2, 3, 2, 2, dtype=torch.long)  # (B, N, L, C)
    train[0, :, 0, 0] = torch.tensor([1, 2, 3])
    train[1, :, 1, 1] = torch.tensor([7, 7, 7])
    other = torch.zeros(1, 4, 2, 2, dtype=torch.long)
    other[0, :, 0, 0] = torch.tensor([1, 4, 4, 2])  # 2 of 4 unseen; codebook 1 of level 0: all 0, seen
    other[0, :, 1, 1] = torch.tensor([7, 0, 3, 1])  # 2 of 4 unseen (level 1 used 7 and 0 there)
    other[0, :, 1, 0] = torch.tensor([0, 0, 0, 5])  # 1 of 4 unseen
    # a code seen at another level or codebook does not count: 1 at level 0 is unseen at level 1
    assert load_script("code_coverage").unseen_fraction(train, other) == [2 / 8, 3 / 8]


def test_script_prints_a_fraction_per_split_and_level() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--train-images", "32", "--images", "8", "--image-size", "32"]
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["split"], r["level"]) for r in rows] == [
        (s, lv) for s in ("val", "heldout") for lv in range(8)
    ]
    assert all(0.0 <= r["unseen_fraction"] <= 1.0 for r in rows)
