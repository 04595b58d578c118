"""scripts/studies/fidelity_diagnostics.py: the references it prints and a fine-tuning probe, run as a user
does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "studies" / "fidelity_diagnostics.py"


def _run(*args: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_references_rank_the_degradations_by_the_geometry_they_keep() -> None:
    rows = {row["reference"]: row for row in _run("--images", "48", "references")}
    assert rows["original"]["shape"] == rows["original"]["all"] == 1.0
    assert rows["blur sigma 0.5"]["shape"] >= 0.95  # the judge is trained to read slightly soft images
    # one flat colour per 2 x 2 cell keeps the 10-17 px shapes; per 4 x 4 cell it does not
    assert rows["token-cell means 2 x 2"]["shape"] >= 0.9 > rows["token-cell means 4 x 4"]["shape"]
    assert rows["token-cell means 4 x 4"]["psnr_pooled"] < rows["token-cell means 2 x 2"]["psnr_pooled"]
    assert rows["original"]["psnr_pooled"] is None  # no error at all


def test_finetune_reports_before_and_after_each_interval() -> None:
    probe = ("finetune", "unitok-tiny", "--steps", "2", "--every", "1", "--set", "loss.l2=2")
    rows = _run("--images", "8", *probe)
    assert [row["step"] for row in rows] == [0, 1, 2]
    assert all(row["parts"] == "decoder" and row["overrides"] == ["loss.l2=2"] for row in rows)
    assert all(0.0 <= row["shape"] <= 1.0 and row["psnr_pooled"] > 10 for row in rows)


def test_linear_codec_keeps_more_with_more_components_and_levels() -> None:
    args = ("--components", "8", "32", "--levels", "2", "--fit-images", "100", "--kmeans-rows", "5000")
    rows = _run("--images", "48", "linear", *args)
    plain = {row["components"]: row for row in rows if not row["quantized"]}
    quantized = [row for row in rows if row["quantized"]]
    assert plain[32]["psnr_pooled"] > plain[8]["psnr_pooled"]
    assert plain[32]["shape"] >= 0.9  # 32 of 48 patch components keep every shape the judge reads
    assert [row["bits_per_token"] for row in quantized] == [10, 20]
    assert quantized[1]["psnr_pooled"] > quantized[0]["psnr_pooled"]
    assert quantized[1]["psnr_pooled"] < plain[32]["psnr_pooled"]  # quantization costs something
