"""HTML for :class:`polytok.eval.unified.report.UnifiedReport`: a self-contained fragment (inline PNG as
base64, no external file) with the figures and their baselines, a grid of samples per prompt with the
judge's reading under each, and each captioned image beside its caption.

    html = render_unified_section(report)               # a <section> to place in any page
    write_unified_report(report, "out/unified.html")     # or a page of its own
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from polytok.data.shapes import TASK_CLASSES, caption_for
from polytok.eval.unified.report import CaptionedImage, PromptSamples, UnifiedReport

_STYLE = """
.unified table { border-collapse: collapse; margin: 0.5em 0; }
.unified td, .unified th { border: 1px solid #ccc; padding: 2px 6px; font: 12px sans-serif; }
.unified img { width: 64px; height: 64px; image-rendering: pixelated; display: block; }
.unified .wrong { color: #b00; }
.unified .right { color: #070; }
.unified .tag { background: #fd6; padding: 0 4px; border-radius: 3px; }
"""


def _png_uri(image: torch.Tensor) -> str:
    """(3, H, W) uint8 or float in [0, 1] -> a data URI of its PNG."""
    if image.is_floating_point():
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _reading_html(reading: dict[str, int] | None, correct: dict[str, bool]) -> str:
    if reading is None:
        return '<span class="wrong">(not a caption of the grammar)</span>'
    parts = []
    for name, index in reading.items():
        css = "right" if correct.get(name) else "wrong"
        parts.append(f'<span class="{css}">{_esc(TASK_CLASSES[name][index])}</span>')
    return "<br>".join(parts)


def _metrics_table(report: UnifiedReport) -> str:
    rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{_esc(value)}</td><td>{_esc(baselines)}</td></tr>"
        for name, value, baselines in report.table_rows()
    )
    skipped = "".join(
        f"<tr><td>{_esc(k)}</td><td colspan=2>{_esc(v)}</td></tr>" for k, v in report.skipped.items()
    )
    return "<table><tr><th>figure</th><th>value</th><th>baselines</th></tr>" + rows + skipped + "</table>"


def _prompt_grid(samples: PromptSamples) -> str:
    prompt = samples.prompt
    tag = ' <span class="tag">held-out pair</span>' if prompt.heldout else ""
    cells = "".join(
        f'<td><img src="{_png_uri(image)}" alt="sample {j}">{_reading_html(reading, flags)}</td>'
        for j, (image, reading, flags) in enumerate(zip(samples.images, samples.readings, samples.correct))
    )
    return (
        f"<p>{prompt.index}: <b>{_esc(prompt.caption)}</b>{tag} (seed {samples.seed})</p>"
        f"<table><tr>{cells}</tr></table>"
    )


def _caption_row(item: CaptionedImage) -> str:
    truth = {name: TASK_CLASSES[name][index] for name, index in item.attributes.items()}
    caption, reading = _esc(item.caption), _reading_html(item.parsed, item.correct)
    if item.reranked is not None and item.reranked_correct is not None:
        caption += f"<br><i>re-ranked:</i> {_esc(caption_for(item.reranked))}"
        reading += f"<br><i>re-ranked:</i> {_reading_html(item.reranked, item.reranked_correct)}"
    return (
        f'<tr><td><img src="{_png_uri(item.image)}" alt="{_esc(item.split)} {item.index}"></td>'
        f"<td>{_esc(item.split)} #{item.index}</td><td>{caption}</td>"
        f"<td>{reading}</td><td>{_esc(', '.join(truth.values()))}</td></tr>"
    )


def render_unified_section(report: UnifiedReport) -> str:
    """A self-contained ``<section>`` (its own ``<style>``) for one unified-model evaluation."""
    protocol = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in report.protocol.items())
    prompts = "".join(_prompt_grid(s) for s in report.samples)
    captions = ""
    if report.captions:
        captions = (
            "<h3>Captions</h3><table><tr><th>image</th><th>split</th><th>caption</th><th>parsed</th>"
            "<th>truth</th></tr>" + "".join(_caption_row(c) for c in report.captions) + "</table>"
        )
    return (
        f'<section class="unified"><style>{_STYLE}</style><h2>{_esc(report.name)}: unified model on '
        f"shapes</h2><h3>Figures</h3>{_metrics_table(report)}<h3>Protocol</h3><table>{protocol}</table>"
        f"<h3>Samples (the judge's reading under each)</h3>{prompts}{captions}</section>"
    )


def write_unified_report(
    report: UnifiedReport, path: str | os.PathLike, title: str = "polytok unified evaluation"
) -> Path:
    """A page holding :func:`render_unified_section`, written atomically."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(title)}</title></head>'
        f"<body><h1>{_esc(title)}</h1>{render_unified_section(report)}</body></html>"
    )
    from polytok.storage import atomic_write_text

    return atomic_write_text(out, page)
