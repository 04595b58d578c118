"""Every example runs: each python block of the README, in order, in one namespace; each page of
``docs/`` the same way, in a namespace and a temporary directory of its own; every ``polytok`` command
of their bash blocks parses; every relative link points at a file; and every ``>>>`` example in the
docstrings of polytok's modules (doctest, outputs compared where shown)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import shlex
from pathlib import Path

import pytest
import torch

import polytok

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))  # any page added to docs/ is picked up
README_MAX_LINES = 320
PYTHON_FENCE = re.compile(r"^\s*```\s*(python3?|py|pycon)\s*$")
ANY_PYTHON_FENCE = re.compile(r"^\s*```\s*(py|python)", re.I)
BASH_FENCE = re.compile(r"^\s*```\s*(bash|sh|shell|console)\s*$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def fenced_blocks(text: str, fence: re.Pattern[str] = PYTHON_FENCE) -> list[str]:
    """The blocks of a markdown text opened by ``fence`` (indented fences too: inside lists)."""
    blocks: list[str] = []
    current: list[str] | None = None
    indent = 0
    for line in text.splitlines():
        if current is None:
            if fence.match(line):
                current, indent = [], len(line) - len(line.lstrip())
        elif line.strip() == "```":
            blocks.append("\n".join(current) + "\n")
            current = None
        else:
            current.append(line[indent:] if line[:indent].strip() == "" else line)
    assert current is None, "a fenced block is never closed"
    return blocks


def python_blocks(text: str) -> list[str]:
    """The python-fenced blocks of a markdown text."""
    return fenced_blocks(text, PYTHON_FENCE)


def run_blocks(path: Path) -> None:
    """Run the python blocks of one markdown file in order, in one namespace."""
    text = path.read_text()
    openings = [line for line in text.splitlines() if ANY_PYTHON_FENCE.match(line)]
    blocks = python_blocks(text)
    assert len(blocks) == len(openings), openings  # none skipped by an odd fence
    namespace: dict = {"__name__": f"{path.stem}_examples"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny examples: one thread is fastest, and immune to a busy machine
    try:
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{path.name} block {i}", "exec"), namespace)
            except Exception as exc:  # pragma: no cover - the message names the failing block
                pytest.fail(f"{path.name}: python block {i} failed: {exc!r}\n{block}")
    finally:
        torch.set_num_threads(threads)


def test_every_python_block_of_the_readme_is_found() -> None:
    text = README.read_text()
    openings = [line for line in text.splitlines() if ANY_PYTHON_FENCE.match(line)]
    assert len(openings) >= 1
    assert len(python_blocks(text)) == len(openings), openings  # none skipped by an odd fence
    sample = "intro\n  ```python\n  x = 1\n  ```\n```py\ny = 2\n```\n"
    assert python_blocks(sample) == ["x = 1\n", "y = 2\n"]


def test_readme_examples_run(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_blocks(README)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_page_examples_run(page: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_blocks(page)


def test_the_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    first = [line.split("#")[0].strip() for line in lines[2:6]]
    assert first == ["```bash", "make demo", "make test", "```"], "the two set-up commands come first"
    linked = {(README.parent / target).resolve() for target in LINK.findall(README.read_text())}
    assert not [p.name for p in PAGES if p.resolve() not in linked], "every docs page is linked"


def slug(heading: str) -> str:
    """The anchor a markdown heading gets (GitHub's rule)."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # no comments of code blocks
    return {slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_relative_links_point_at_files(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    assert not broken, f"{path.name}: links to nothing: {broken}"


def cli_commands(text: str) -> list[list[str]]:
    """The ``polytok ...`` commands of the bash blocks (also ``torchrun ... -m polytok.cli ...``), as
    argument lists for the CLI's parser."""
    commands = []
    for block in fenced_blocks(text, BASH_FENCE):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["polytok"]:
                commands.append(words[1:])
            elif "polytok.cli" in words and words[words.index("polytok.cli") - 1] == "-m":
                commands.append(words[words.index("polytok.cli") + 1 :])
    return commands


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_cli_examples_parse(path: Path) -> None:
    from polytok.cli import build_parser

    for args in cli_commands(path.read_text()):
        try:
            build_parser().parse_args(args)
        except SystemExit:  # pragma: no cover - argparse printed the reason
            pytest.fail(f"{path.name}: 'polytok {shlex.join(args)}' does not parse")


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
