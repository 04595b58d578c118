"""The main job end to end at a toy budget: trains the three tiny presets, measures them beside the
shipped checkpoints on the held-out built-in data and writes one report."""

from __future__ import annotations

import json

from polytok.demo import DEMO_PRESETS, run_demo
from polytok.hub import list_shipped


def test_demo_trains_evaluates_and_reports(tmp_path):
    path = run_demo(out_dir=tmp_path, minutes=0.001, max_eval_images=8, min_steps=2)
    reports = json.loads((tmp_path / "report.json").read_text())
    names = [r["name"] for r in reports]
    models = [*DEMO_PRESETS, *(f"{n} (shipped)" for n in list_shipped())]
    assert names == [f"{m} | photos val" for m in models] + [f"{m} | shapes held-out" for m in models]
    for preset in DEMO_PRESETS:
        assert (tmp_path / preset / "tokenizer" / "model.safetensors").is_file()
    by_name = {r["name"]: r for r in reports}
    assert "PSNR" in by_name["unitok-tiny | photos val"]["metrics"]
    assert "zero-shot top-1" in by_name["unitok-tiny | shapes held-out"]["metrics"]
    html = path.read_text()
    assert all(m in html for m in models)
