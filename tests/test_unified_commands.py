"""``polytok generate`` and ``polytok eval`` on a unified model: every input checked before any work, one
line for bad input, and nothing a user already has is overwritten. A tiny saved unified model (an
untrained one-level VQ tokenizer beside it), real files, real CLI calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polytok.cli import main
from unified_helpers import tiny_model, tokenizer

CAPTION_LIMIT = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model = tiny_model("vq", grid=(4, 4), max_caption_tokens=CAPTION_LIMIT)
    return model.save_pretrained(tmp_path_factory.mktemp("unified") / "model", tokenizer("vq"))


def _error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polytok: error: "), lines
    return lines[0]


def _records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------------------------------- 11: generate


def test_generate_refuses_a_prompt_past_the_caption_length(model_dir: Path, tmp_path, capsys) -> None:
    from polytok.unified import UnifiedModel

    long = "a red circle, a small blue square and two yellow stars"
    text = UnifiedModel.from_pretrained(model_dir).text_tokenizer
    assert len(text.encode(long)) > CAPTION_LIMIT >= len(text.encode("a red circle"))
    out = tmp_path / "gen"
    assert main(["generate", str(model_dir), "a red circle", long, "--out-dir", str(out)]) == 2
    line = _error_line(capsys)
    assert f"{CAPTION_LIMIT} tokens" in line and "prompt 2" in line, line
    assert not out.exists()  # refused before the first prompt's images


@pytest.mark.parametrize("cfg", ["nan", "inf", "-inf"])
def test_generate_refuses_a_guidance_scale_that_is_not_finite(model_dir: Path, tmp_path, capsys, cfg) -> None:
    out = tmp_path / "gen"
    assert main(["generate", str(model_dir), "a red circle", f"--cfg={cfg}", "--out-dir", str(out)]) == 2
    assert "--cfg" in _error_line(capsys) and not out.exists()


def test_a_second_generate_keeps_the_first_runs_images(
    model_dir: Path, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default out-dir, generated/, under the test's directory
    args = [
        "generate",
        str(model_dir),
        "a red circle",
        "--num-samples",
        "2",
        "--batch-size",
        "2",
        "--cfg",
        "1",
    ]
    assert main(args) == 0
    first = _records(capsys)
    kept = {r["path"]: Path(r["path"]).read_bytes() for r in first}
    assert sorted(kept) == ["generated/000_000.png", "generated/000_001.png"]
    assert main([*args, "--seed", "1"]) == 0
    second = _records(capsys)
    assert {p: Path(p).read_bytes() for p in kept} == kept  # the first run's images, untouched
    assert [r["path"] for r in second] == ["generated/000_000-2.png", "generated/000_001-2.png"]
    assert all(Path(r["path"]).is_file() for r in second)


# ------------------------------------------------------------------------------------ 12: eval, flags first


def test_eval_checks_every_flag_before_any_work(model_dir: Path, tmp_path, capsys) -> None:
    report = tmp_path / "r" / "report.html"
    base = [
        "eval",
        str(model_dir),
        "--report",
        str(report),
        "--max-prompts",
        "1",
        "--samples-per-prompt",
        "1",
    ]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cases = [
        (["--cfg", "nan"], "--cfg"),
        (["--cfg", "inf"], "--cfg"),
        (["--caption-rerank-weight", "nan"], "--caption-rerank-weight"),
        (["--fidelity-size", "0"], "--fidelity-size"),
        (["--summary", str(report)], "--summary"),
        (["--data", "shapes"], "--data"),
        (["--split", "train"], "--split"),
        (["--zero-shot-task", "shape"], "--zero-shot-task"),
        (["--temperature", "nan"], "temperature"),
        (["--bits-token-set", str(tmp_path / "no-such-set")], "no-such-set"),
    ]
    for extra, named in cases:
        assert main([*base, *extra]) == 2, extra
        line = _error_line(capsys)
        assert named in line, line
        assert not report.parent.exists()
    unwritable = blocker / "report.html"  # its folder is a file: nothing can be written there
    assert main(["eval", str(model_dir), "--report", str(unwritable), "--max-prompts", "1"]) == 2
    line = _error_line(capsys)
    assert str(unwritable) in line and "Traceback" not in line
    assert capsys.readouterr().out == ""  # refused before any figure was computed


def test_generate_on_a_full_disk_leaves_no_partial_image(model_dir: Path, tmp_path, capsys) -> None:
    from disk_helpers import files_under, full_disk

    with full_disk(room=100):  # less than one PNG
        code = main(
            ["generate", str(model_dir), "a red circle", "--cfg", "1", "--out-dir", str(tmp_path / "g")]
        )
    assert code == 2 and "File too large" in _error_line(capsys)
    assert files_under(tmp_path) == []
