"""The parameter figures of the preset table in docs/tokenizers.md, counted: large presets on the meta
device (no memory, no weights), tiny ones built for real with their frozen pretrained parts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from polytok.models.registry import list_presets
from polytok.models.tokenizer import Tokenizer

PAGE = Path(__file__).resolve().parents[1] / "docs" / "tokenizers.md"
PARTS = {  # the table's wording -> Tokenizer.parameter_counts() key
    "encoder": "encoder",
    "vision tower": "encoder",
    "pixel decoder": "pixel_decoder",
    "CNN decoder": "pixel_decoder",
    "semantic decoder": "semantic_decoder",
    "text tower": "text_tower",
}
FIGURE = re.compile(
    r"^(?P<label>[A-Za-z ]*?)\s*(?P<value>\d+(?:\.\d+)?)M(?:\s+(?P<suffix>in all|trainable))?$"
)


def readme_figures() -> dict[str, list[tuple[str, str | None, float]]]:
    """preset -> [(label, suffix, millions)] from the 'parameters (polytok)' column."""
    lines = PAGE.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| preset | what | parameters"))
    figures = {}
    for line in lines[header + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, cell = cells[0].strip("`"), re.sub(r"\([^)]*\)", "", cells[2])
        parsed = []
        for piece in filter(None, (p.strip() for p in re.split(r"[,;+]", cell))):
            m = FIGURE.match(piece)
            assert m, f"{PAGE.name}: figure {piece!r} of {name} is not '<part> <x.y>M'"
            parsed.append((m["label"], m["suffix"], float(m["value"])))
        figures[name] = parsed
    return figures


FIGURES = readme_figures()


def test_the_table_covers_every_preset():
    assert set(FIGURES) == set(list_presets())


def _build(name: str) -> Tokenizer:
    if name.endswith("-tiny"):  # real: the frozen MiniLM and the teacher load from their packages
        tok = Tokenizer.from_preset(name)
        tok.load_teacher()
        return tok
    with torch.device("meta"):
        return Tokenizer.from_preset(name, load_backbone_weights=False)


def _count(tok: Tokenizer, label: str, suffix: str | None) -> int:
    params = dict(tok.named_parameters())
    if label in PARTS:
        return tok.parameter_counts()[PARTS[label]]
    if label == "" and suffix == "in all":
        return tok.parameter_counts()["total"]
    if label == "" and suffix in ("trainable", None):
        return sum(p.numel() for p in params.values() if p.requires_grad)
    if label == "frozen MiniLM":
        return sum(
            p.numel()
            for n, p in params.items()
            if n.startswith("text_tower.encoder.") and not p.requires_grad
        )
    if label == "frozen teacher":
        assert tok.teacher is not None
        return sum(p.numel() for p in tok.teacher.parameters())
    raise AssertionError(f"no rule to count the figure {label!r} {suffix!r}")


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_readme_parameter_figures_are_counted(name):
    tok = _build(name)
    assert not name.endswith("-l") or all(p.device.type == "meta" for p in tok.parameters())
    assert FIGURES[name], f"no parameter figures for {name}"
    for label, suffix, millions in FIGURES[name]:
        count = _count(tok, label, suffix)
        assert round(count / 1e6, 1) == millions, (name, label, suffix, count)
