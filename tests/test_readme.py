"""Every Python example runs: each python block of the README, in order, in one namespace, and every
``>>>`` example in the docstrings of polytok's modules (doctest, outputs compared where shown)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import polytok

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_FENCE = re.compile(r"^\s*```\s*(python3?|py|pycon)\s*$")
ANY_PYTHON_FENCE = re.compile(r"^\s*```\s*(py|python)", re.I)


def python_blocks(text: str) -> list[str]:
    """The python-fenced blocks of a markdown text (indented fences too: inside lists)."""
    blocks: list[str] = []
    current: list[str] | None = None
    indent = 0
    for line in text.splitlines():
        if current is None:
            if PYTHON_FENCE.match(line):
                current, indent = [], len(line) - len(line.lstrip())
        elif line.strip() == "```":
            blocks.append("\n".join(current) + "\n")
            current = None
        else:
            current.append(line[indent:] if line[:indent].strip() == "" else line)
    assert current is None, "a python block of the README is never closed"
    return blocks


def test_every_python_block_of_the_readme_is_found() -> None:
    text = README.read_text()
    openings = [line for line in text.splitlines() if ANY_PYTHON_FENCE.match(line)]
    assert len(openings) >= 1
    assert len(python_blocks(text)) == len(openings), openings  # none skipped by an odd fence
    sample = "intro\n  ```python\n  x = 1\n  ```\n```py\ny = 2\n```\n"
    assert python_blocks(sample) == ["x = 1\n", "y = 2\n"]


def test_readme_examples_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(python_blocks(README.read_text())):
        try:
            exec(compile(block, f"README block {i}", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message names the failing block
            pytest.fail(f"README python block {i} failed: {exc!r}\n{block}")


def _modules() -> list[str]:
    names = [polytok.__name__]
    names += [m.name for m in pkgutil.walk_packages(polytok.__path__, prefix=f"{polytok.__name__}.")]
    return sorted(names)


def _docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _modules():
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module, name) if t.examples and t.name.startswith(name)]
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _docstring_examples()


def test_docstring_examples_exist() -> None:
    assert any(t.name.endswith("Tokenizer") for t in DOCTESTS)


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name)
def test_docstring_example_runs(test: doctest.DocTest, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    messages: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=messages.append)
    assert runner.failures == 0, "".join(messages)
