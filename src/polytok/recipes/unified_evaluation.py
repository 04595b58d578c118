"""``polytok eval`` on a unified model: the shapes evaluation (:func:`polytok.eval.evaluate_unified`),
its tables printed with their baselines, a JSON summary and an HTML page."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from polytok.eval.unified.report import UnifiedReport
from polytok.storage import atomic_write_text


def evaluate_unified_to_files(
    name_or_path: str,
    *,
    report: str | os.PathLike,
    summary: str | os.PathLike | None = None,
    prompts_per_pair: int = 1,
    max_prompts: int | None = None,
    **kwargs: Any,
) -> UnifiedReport:
    """Load the unified model, evaluate it, print the tables, write the HTML ``report`` and the JSON
    ``summary`` (default: beside the report, ``.json``). ``max_prompts``: only the suite's first N
    prompts (a quick look; the figures then cover fewer pairs). Other keywords: ``evaluate_unified``'s."""
    from polytok.eval.html.unified import write_unified_report
    from polytok.eval.shapes.prompts import prompt_suite
    from polytok.eval.unified.evaluate import evaluate_unified
    from polytok.storage import check_writable
    from polytok.unified.hub import load_unified

    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
    summary_path = Path(summary) if summary is not None else Path(report).with_suffix(".json")
    if summary_path.resolve() == Path(report).resolve():
        raise ValueError(f"the summary and the report are the same file ({report}): choose another summary")
    check_writable(report, "report")  # before the work, not after it
    check_writable(summary_path, "summary")
    model, tokenizer = load_unified(name_or_path)
    prompts = prompt_suite(prompts_per_pair)[:max_prompts]
    result = evaluate_unified(model, tokenizer, name=str(name_or_path), prompts=prompts, **kwargs)
    print(result.format_tables())
    page = write_unified_report(result, report)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(summary_path, json.dumps(result.to_dict(), indent=1, default=str))
    print(json.dumps({"report": str(page), "summary": str(summary_path)}))
    return result
