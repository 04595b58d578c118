"""The quantizer benchmark runs end to end on small shapes and its correctness checks hold.

Timing is not asserted here (benchmarks report ratios); the index checks and the memory bound are.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "quantizers.py"


def test_quick_benchmark_indices_and_memory(tmp_path) -> None:
    pytest.importorskip("vector_quantize_pytorch", reason="benchmark extra not installed")
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(BENCH), "--quick", "--json", str(out)], check=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["cpu"] and result["threads"] == 2
    rows = result["rows"]
    checked = [r for r in rows if "indices == brute force" in r]
    assert len(checked) == 2 and all(r["indices == brute force"] for r in checked)
    memory = next(r for r in rows if "peak extra MB" in r)
    # Chunked search: far below the full distance matrix (64 MB here), only the 8 MiB score buffer.
    assert memory["peak extra MB"] < 16 < memory["full distance matrix MB"]
    # The busy-process row ran both conditions for both libraries (values are ratios, not asserted).
    busy = next(r for r in rows if "beside a busy process" in r["case"])
    ratios = [v for k, v in busy.items() if k != "case"]
    assert len(ratios) == 7 and all(math.isfinite(v) and v > 0 for v in ratios)


OFFICIAL_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "official_throughput.py"


def test_quick_official_throughput_runs_both_sides_on_the_same_function(tmp_path) -> None:
    """Needs the official checkouts: POLYTOK_OFFICIAL_UNITOK / POLYTOK_OFFICIAL_EVOTOK, and their extra
    packages (timm 1.0.8 for UniTok, pytz, typed-argument-parser) in POLYTOK_OFFICIAL_PACKAGES."""
    roots = {name: os.environ.get(f"POLYTOK_OFFICIAL_{name.upper()}") for name in ("unitok", "evotok")}
    roots = {name: root for name, root in roots.items() if root and Path(root).is_dir()}
    if not roots:
        pytest.skip("official UniTok / EvoTok checkouts not given (POLYTOK_OFFICIAL_UNITOK, _EVOTOK)")
    env = dict(os.environ)
    extra = os.environ.get("POLYTOK_OFFICIAL_PACKAGES")
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH")) if p)
    out = tmp_path / "rows.json"
    argv = [sys.executable, str(OFFICIAL_BENCH), "--quick", "--repeats", "1", "--json", str(out)]
    for name, root in roots.items():
        argv += [f"--{name}", root]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    ops = {"unitok": ["encode", "decode"], "evotok": ["encode", "decode", "semantic tokens"]}
    expected = {
        (f"{name}-l", op, batch, dtype)
        for name in roots
        for op in ops[name]
        for batch in (1, 8)
        for dtype in ("fp32", "bf16")
    }
    assert {(r["model"], r["op"], r["batch"], r["dtype"]) for r in rows} == expected
    for r in rows:
        assert r["official s/img"] > 0 and r["polytok s/img"] > 0 and math.isfinite(r["speed-up"])
        if r["dtype"] == "fp32":  # the same function: equal codes (margins aside), decoders within rounding
            if r["check"] == "codes equal":
                assert r["check value"] > 0.95, r
            else:
                assert r["check value"] < 1e-4, r
    assert "| model | op |" in result.stdout


FAMILIES_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "quant_families.py"


def test_quick_quantizer_families_benchmark_runs_both_libraries(tmp_path) -> None:
    pytest.importorskip("vector_quantize_pytorch", reason="benchmark extra not installed")
    out = tmp_path / "families.json"
    argv = [sys.executable, str(FAMILIES_BENCH), "--quick", "--threads", "1", "--json", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    cases = {r["case"].split(",")[0].split(" ")[0] for r in rows}
    assert cases == {"FSQ", "LFQ", "BSQ", "SimVQ", "multi-scale", "dual"}
    assert len(rows) == 12 and all(r["polytok ms"] > 0 for r in rows)
    compared = [r for r in rows if r["vqp ms"] != "none"]
    assert len(compared) == 8 and all(math.isfinite(r["speed-up"]) and r["speed-up"] > 0 for r in compared)
    # Same definitions, same inputs: the indices agree (FSQ's bound differs by 2 eps: nearly all).
    agree = {r["case"].split(" ")[0]: r["agree"] for r in compared if "agree" in r}
    assert agree["LFQ"] == agree["BSQ"] == agree["SimVQ"] == 1.0 and agree["FSQ"] > 0.95
    memory = next(r for r in rows if "polytok step MB" in r)
    assert memory["case"].startswith("LFQ") and math.isfinite(memory["memory ratio"])
    assert "| case | polytok ms |" in result.stdout
