"""The main job end to end at a toy budget: trains the three tiny presets, measures them beside the
shipped checkpoints on the held-out built-in data, samples and captions a (tiny) unified model and writes
one report; every stage shows progress."""

from __future__ import annotations

import json

from polytok.demo import DEMO_PRESETS, run_demo
from polytok.hub import list_shipped, load_tokenizer
from polytok.recipes.tokenizer_evaluation import evaluate_on_builtin
from polytok.unified.model import IMAGE_TOKENIZER_DIR
from unified_helpers import tiny_model, tokenizer


def test_demo_trains_evaluates_and_reports(tmp_path, capfd):
    unified = tmp_path / "tiny-unified"
    tiny_model("evotok-tiny", grid=(4, 4)).float().save_pretrained(unified)
    tokenizer("evotok-tiny").save_pretrained(unified / IMAGE_TOKENIZER_DIR)
    out = tmp_path / "demo"
    path = run_demo(
        out_dir=out,
        minutes=0.001,  # each preset: its first step
        max_eval_images=8,
        unified=str(unified),
        unified_samples_per_prompt=1,
        unified_caption_images=2,
    )
    reports = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in reports]
    models = [*DEMO_PRESETS, *(f"{n} (shipped)" for n in list_shipped())]
    assert names == [f"{m} | photos val" for m in models] + [f"{m} | shapes held-out" for m in models]
    for preset in DEMO_PRESETS:
        assert (out / preset / "tokenizer" / "model.safetensors").is_file()
    by_name = {r["name"]: r for r in reports}
    assert "PSNR" in by_name["unitok-tiny | photos val"]["metrics"]
    assert "zero-shot top-1" in by_name["unitok-tiny | shapes held-out"]["metrics"]
    html = path.read_text()
    assert all(m in html for m in models)
    # the unified model's section after the tokenizers' tables: sample grid (held-out pairs tagged), captions
    assert html.index("unitok-tiny | photos val") < html.index('<section class="unified">')
    assert "held-out pair</span>" in html and "<h3>Captions</h3>" in html
    stdout, err = capfd.readouterr()
    lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    trained = {x["preset"]: x for x in lines if "preset" in x}
    assert all(trained[p]["steps"] == 1 for p in DEMO_PRESETS)  # stopped by the clock, not by max_steps
    timing = next(x for x in lines if "stage_seconds" in x)
    stages = timing["stage_seconds"]
    assert list(timing["stage_cpu_seconds"]) == list(stages)
    expected = [*(f"train {p}" for p in DEMO_PRESETS), "load shipped", "evaluate photos", "evaluate shapes"]
    assert list(stages) == [*expected, "sample unified", "write report"]
    assert any(x.get("unified") == f"{unified} (unified)" for x in lines)
    for i, stage in enumerate(stages, 1):  # each stage announced on stderr with what it does
        assert f"[demo {i}/{len(stages)}] {stage}: " in err
    assert f"train ({0.001 / 3:g} min budget)" in err  # the trainer's bar shows the time budget
    assert "eval polytok-tiny | shapes held-out" in err and "report: 100%" in err


def test_evaluation_stage_shows_progress_per_tokenizer_dataset_and_family(capfd):
    tokenizers = {"unitok-tiny (shipped)": load_tokenizer("unitok-tiny")}
    photos, shapes = evaluate_on_builtin(tokenizers, max_images=4, progress=True)
    err = capfd.readouterr().err
    for name in ("unitok-tiny (shipped) | photos val", "unitok-tiny (shipped) | shapes held-out"):
        bar_lines = [line for line in err.replace("\r", "\n").splitlines() if f"eval {name}" in line]
        assert any("4/4" in line for line in bar_lines), err  # counts the images to the end
    # the slow families are named while they run and timed in the final line, and in the report
    for family in ("semantic fidelity", "codec references", "encode", "decode"):
        assert family in err
        assert photos[0].timing[f"seconds[{family}]"] >= 0
    assert "attribute judge" in err and "seconds[attribute judge]" in shapes[0].timing
    quiet, _ = evaluate_on_builtin(tokenizers, max_images=4, progress=False)
    assert "eval unitok-tiny" not in capfd.readouterr().err
    assert quiet[0].metrics["PSNR"].value == photos[0].metrics["PSNR"].value
