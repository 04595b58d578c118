"""The quantizer benchmark runs end to end on small shapes and its correctness checks hold.

Timing is not asserted here (benchmarks report ratios); the index checks and the memory bound are.
"""

from __future__ import annotations

import json
import math
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
