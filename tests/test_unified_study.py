"""scripts/studies/unified_study.py: the table built from evaluate_unified's figures (fast), and the whole
study in its quick mode, end to end with real training and evaluation subprocesses (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from polytok.eval.result import MetricResult
from polytok.eval.shapes.captions import CAPTION_ATTRIBUTES
from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES
from polytok.eval.shapes.prompts import prompt_suite
from polytok.eval.shapes.scores import correct_flags
from polytok.eval.unified.evaluate import GFD_LABEL, _caption_figures, _t2i_figures
from polytok.eval.unified.report import CaptionedImage, PromptSamples, UnifiedReport
from script_helpers import SCRIPTS, load_script

SCRIPT = SCRIPTS / "unified_study.py"


def _study():
    return load_script("unified_study")


def _summary(wrong: set[str], gfd: float | None) -> dict:
    """A report made by evaluate_unified's own figure functions: every sample and caption right except
    the attributes in ``wrong``; the reconstructions get the colour wrong on every held-out prompt; the
    re-ranked captions are always right."""
    prompts = prompt_suite()
    samples, real, recon = [], {}, {}
    for p in prompts:
        truth = p.attributes
        reading = {a: truth[a] + (1 if a in wrong else 0) for a in JUDGED_ATTRIBUTES}
        flags = correct_flags(reading, truth, JUDGED_ATTRIBUTES)
        samples.append(PromptSamples(p, p.index, torch.zeros(2, 3, 4, 4), [reading] * 2, [flags] * 2))
        real[p.index] = [correct_flags(truth, truth, JUDGED_ATTRIBUTES)] * 2
        off = {**truth, "colour": truth["colour"] + 1} if p.heldout else truth
        recon[p.index] = [correct_flags(off, truth, JUDGED_ATTRIBUTES)] * 2
    metrics = _t2i_figures(samples, real, recon, JUDGED_ATTRIBUTES, {})
    for split in ("val", "heldout"):
        captioned = []
        for i, p in enumerate(prompts[:8]):
            truth = {a: p.attributes[a] for a in CAPTION_ATTRIBUTES}
            parsed = {a: truth[a] + (1 if a in wrong else 0) for a in CAPTION_ATTRIBUTES}
            flags = correct_flags(parsed, truth, CAPTION_ATTRIBUTES)
            right = correct_flags(truth, truth, CAPTION_ATTRIBUTES)
            image = torch.zeros(3, 4, 4)
            captioned.append(CaptionedImage(split, i, image, truth, "c", parsed, flags, truth, right))
        metrics.update(_caption_figures(captioned, split, ("shape",)))
        metrics[f"bits/image token[{split}]"] = MetricResult(2.0 if wrong else 1.0)
    if gfd is not None:
        metrics[GFD_LABEL] = MetricResult(gfd)
    return UnifiedReport("run", {}, metrics).to_dict()


def test_table_rows_means_and_baselines():
    study = _study()
    runs = [
        {"tokenizer": "a", "seed": 0, "steps": 10, "summary": _summary(set(), 4.0)},
        {"tokenizer": "a", "seed": 1, "steps": 14, "summary": _summary({"shape"}, 6.0)},
        {"tokenizer": "b", "seed": 0, "steps": 9, "summary": _summary({"colour"}, None)},
    ]
    markdown, table = study.build_table(runs)
    rows = {(r["tokenizer"], r["seed"]): r for r in table["rows"]}
    perfect, no_shape, no_colour = rows["a", 0], rows["a", 1], rows["b", 0]
    for group in ("seen", "heldout"):
        assert perfect[f"t2i[{group}] all"] == 1.0 and perfect[f"t2i[{group}] pair"] == 1.0
        assert no_shape[f"t2i[{group}] shape"] == 0.0 and no_shape[f"t2i[{group}] colour"] == 1.0
        assert no_shape[f"t2i[{group}] pair"] == 0.0 and no_colour[f"t2i[{group}] count"] == 1.0
    # the ceiling is the judge on the reconstructions: colour wrong on held-out prompts only
    assert perfect["ceiling[seen] all"] == 1.0 and perfect["ceiling[heldout] all"] == 0.0
    assert no_colour["caption[heldout] colour"] == 0.0 and no_colour["caption[val] shape"] == 1.0
    assert no_shape["caption[val] all"] == 0.0 and perfect["caption[heldout] pair"] == 1.0
    assert no_shape["reranked[val] pair"] == no_shape["reranked[heldout] pair"] == 1.0
    assert perfect["bits/token[val]"] == 1.0 and no_shape["bits/token[heldout]"] == 2.0
    assert no_colour["gFD"] is None
    mean = table["means"]["a"]
    assert mean["steps"] == 12 and mean["gFD"] == 5.0 and mean["t2i[seen] shape"] == 0.5
    assert mean["bits/token[val]"] == 1.5 and mean["seeds"] == [0, 1]
    assert "b" not in table["means"]  # one seed: no mean line
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(lines) == 2 + 3 + 1  # header, rule, three runs, one mean
    assert lines[-2].startswith("| **a** | mean | 12 |") and "| 5.0 |" in lines[-2]
    assert lines[-1].startswith("| b | 0 | 9 | 1.00 / 0.00 (pair 0.00) |") and "| - |" in lines[-1]
    assert "| 1.00 / 1.00 |" in lines[-1]  # the re-ranked captions' pair, val / held-out
    # baselines: chance of the shape-and-colour pair is 1/42, and the single-attribute models beside it
    pair = table["baselines"]["t2i[heldout] attr[pair]"]
    assert pair["chance"] == pytest.approx(1 / 42) and len(pair) > 3
    assert pair["judge on real images"] == 1.0 and "judge on reconstructions" not in pair  # a column
    assert "Baselines" in markdown and "chance 0.024" in markdown


def test_table_refuses_no_runs():
    with pytest.raises(ValueError, match="no runs"):
        _study().build_table([])


def test_unified_command_holds_all_but_the_tokenizer(tmp_path):
    study = _study()
    commands = {row: study.unified_command(row, 1, tmp_path, 2.5, 32) for row in study.TOKENIZERS}
    stripped = {
        row: [a for a in cmd if not a.startswith(("unified.tokenizer=", "train.out_dir="))]
        for row, cmd in commands.items()
    }
    assert len({tuple(c) for c in stripped.values()}) == 1
    assert "train.max_minutes=2.5" in commands["evotok-tiny"] and "train.seed=1" in commands["evotok-tiny"]
    pixel = f"unified.tokenizer={tmp_path / 'pixel-only-tokenizer' / 'tokenizer'}"
    assert pixel in commands["pixel-only"]


def test_study_overrides_reach_every_unified_run_last(tmp_path):
    study = _study()
    overrides = ["unified.model.object_loss_weight=24", "train.batch_size=8"]
    jobs = study.training_jobs(list(study.TOKENIZERS), [0], tmp_path, 1.0, 64, None, overrides)
    unified = [command for name, command, _ in jobs if name != "pixel-only-tokenizer"]
    assert len(unified) == len(study.TOKENIZERS)
    for command in unified:  # after the study's own settings, so that they win
        assert command[-2:] == overrides
    pixel_tokenizer = [command for name, command, _ in jobs if name == "pixel-only-tokenizer"]
    assert pixel_tokenizer and all("train.batch_size=8" not in command for command in pixel_tokenizer)


@pytest.mark.slow
def test_quick_study_end_to_end(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = tmp_path / "study"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), "--quick", "--seeds", "0"],
        check=True,
        env=env,
        timeout=900,
    )
    table = json.loads((out / "unified_study.json").read_text())
    rows = ["unitok-tiny", "evotok-tiny", "polytok-tiny", "pixel-only"]
    assert [r["tokenizer"] for r in table["rows"]] == rows
    for row in table["rows"]:
        assert row["steps"] >= 1
        for key in ("t2i[seen] all", "t2i[heldout] pair", "caption[heldout] all", "ceiling[heldout] all"):
            assert 0.0 <= row[key] <= 1.0
        assert row["bits/token[val]"] > 0
    assert table["plan"]["max_minutes"] == 0.3 and table["plan"]["sampling"]["guidance_scale"] == 3.0
    assert (out / "pixel-only-tokenizer" / "tokenizer").is_dir()
    assert (out / "unified_study.md").read_text().count("\n| ") == 1 + 4


def test_pixel_only_rows_wait_for_their_tokenizer_and_reuse_it(tmp_path):
    study = _study()
    jobs = study.training_jobs(list(study.TOKENIZERS), [0, 1], tmp_path, 1.0, 32, 7)
    assert jobs[0][0] == "pixel-only-tokenizer" and "train.max_steps=7" in jobs[0][1]
    assert "loss.semantic=0" in jobs[0][1]
    needs = {name: after for name, _, after in jobs}
    assert needs["pixel-only-seed0"] == needs["pixel-only-seed1"] == "pixel-only-tokenizer"
    assert needs["unitok-tiny-seed1"] is None and len(jobs) == 1 + 8
    folder = tmp_path / "pixel-only-tokenizer"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "log.jsonl").write_text('{"step": 5}\n{"step": 7}\n')
    again = study.training_jobs(list(study.TOKENIZERS), [0], tmp_path, 1.0, 32, 7)
    assert [name for name, _, _ in again] == [f"{row}-seed0" for row in study.TOKENIZERS]
    assert all(after is None for _, _, after in again)
    # a tokenizer of another length (a quick run's, or the shipped config's 600 steps) is not reused
    for steps in (8, None):
        retrained = study.training_jobs([study.PIXEL_ONLY], [0], tmp_path, 1.0, 32, steps)
        assert retrained[0][0] == "pixel-only-tokenizer" and len(retrained) == 2


def test_side_by_side_runs_a_waiting_job_after_the_one_it_needs(tmp_path):
    """Real subprocesses: 'late' needs 'first' (slow); 'other' may start beside 'first' meanwhile."""
    study = _study()

    def job(name: str, seconds: float, needs: str | None):
        code = f"import time, pathlib; time.sleep({seconds}); pathlib.Path(r'{tmp_path}', '{name}').touch()"
        return (name, [sys.executable, "-c", code], needs)

    study.run_side_by_side(
        [job("first", 2.0, None), job("late", 0.0, "first"), job("other", 0.0, None)], tmp_path / "logs", 2
    )
    times = {n: (tmp_path / n).stat().st_mtime for n in ("first", "late", "other")}
    assert times["other"] < times["first"] <= times["late"]
    failing = ("bad", [sys.executable, "-c", "raise SystemExit(3)"], None)
    with pytest.raises(SystemExit, match="bad failed"):
        study.run_side_by_side([failing], tmp_path / "logs", 1)


def test_a_kept_evaluation_must_be_newer_than_its_model(tmp_path):
    study = _study()
    model, summary = tmp_path / "run" / "model", tmp_path / "run" / "eval.json"
    model.mkdir(parents=True)
    assert not study.evaluation_is_current(summary, model)  # neither there
    (model / "model.safetensors").write_bytes(b"weights")
    assert not study.evaluation_is_current(summary, model)  # never measured
    summary.write_text("{}")
    os.utime(model / "model.safetensors", (1_000, 1_000))
    os.utime(summary, (2_000, 2_000))
    assert study.evaluation_is_current(summary, model)
    os.utime(model / "model.safetensors", (3_000, 3_000))  # retrained since: measured again
    assert not study.evaluation_is_current(summary, model)
