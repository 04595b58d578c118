"""``write_report``: one self-contained HTML page (inline CSS, images and plots as base64 PNG).

Several reports side by side give a comparison table; each report then has its own section with the
figures and their protocols, sample grids (one column per decoded depth), depth curves and codebook
usage plots. A small script marks ``<body data-images-decoded=N data-images-total=M>`` once loaded.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from polytok.eval.plots import LOWER_IS_BETTER, codebook_usage_png, depth_curves_png
from polytok.eval.progress import progress_bar
from polytok.eval.report_data import EvalReport

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #e8f4e8; }
.protocol { font-size: 0.8em; color: #555; }
.protocol span { display: inline-block; margin-right: 10px; }
.grid img { image-rendering: pixelated; width: 128px; height: 128px; display: block; }
.skipped { color: #8a4b00; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-decoded', String(ok));
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _image_png(image: torch.Tensor) -> bytes:
    """(3, H, W) in [0, 1] -> PNG bytes."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _protocol_html(protocol: dict[str, Any]) -> str:
    items = "".join(f"<span><b>{_esc(k)}</b>: {_esc(v)}</span>" for k, v in protocol.items() if v is not None)
    return f'<div class="protocol">{items}</div>'


def _comparison_table(reports: Sequence[EvalReport]) -> str:
    names: list[str] = []
    for report in reports:
        names += [m for m in report.metrics if m not in names]
    head = "".join(f"<th>{_esc(r.name)}</th>" for r in reports)
    rows = []
    for metric in names:
        values = [r.metrics[metric].value if metric in r.metrics else None for r in reports]
        present = [v for v in values if v is not None]
        best = None
        if len(present) > 1:
            best = min(present) if metric.startswith(LOWER_IS_BETTER) else max(present)
        cells = []
        for report, value in zip(reports, values):
            if value is None:
                reason = report.skipped.get(metric, "not measured")
                cells.append(f'<td class="skipped" title="{_esc(reason)}">n/a</td>')
            else:
                cls = "num best" if best is not None and value == best else "num"
                cells.append(f'<td class="{cls}">{_esc(report.metrics[metric].format())}</td>')
        rows.append(f"<tr><th>{_esc(metric)}</th>{''.join(cells)}</tr>")
    rows_info = (
        ("images", "num_images"),
        ("image size", "image_size"),
        ("code shape", "code_shape"),
        ("residual levels", "num_levels"),
        ("levels decoded to pixels", "pixel_depth"),
        ("codebook size", "codebook_size"),
    )
    for label, key in rows_info:
        cells = "".join(f'<td class="num">{_esc(r.protocol.get(key))}</td>' for r in reports)
        rows.append(f"<tr><th>{label}</th>{cells}</tr>")
    return (
        '<table id="comparison"><thead><tr><th>metric</th>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _metrics_table(report: EvalReport) -> str:
    rows = [
        f'<tr><th>{_esc(name)}</th><td class="num">{_esc(result.format())}</td>'
        f"<td>{_protocol_html(result.protocol)}</td></tr>"
        for name, result in report.metrics.items()
    ]
    rows += [
        f'<tr><th>{_esc(name)}</th><td class="skipped">skipped</td>'
        f'<td class="skipped">{_esc(reason)}</td></tr>'
        for name, reason in report.skipped.items()
    ]
    return (
        '<table class="metrics"><thead><tr><th>metric</th><th>value</th><th>protocol</th></tr></thead><tbody>'
        + "".join(rows)
        + "</tbody></table>"
    )


def _depth_table(report: EvalReport) -> str:
    if not report.depth_curves:
        return ""
    head = "".join(f"<th>{d}</th>" for d in report.depths)
    rows = []
    for metric, curve in report.depth_curves.items():
        cells = "".join(
            f'<td class="num">{_esc(curve[d].format()) if d in curve else "n/a"}</td>' for d in report.depths
        )
        rows.append(f"<tr><th>{_esc(metric)}</th>{cells}</tr>")
    return (
        '<table class="depth"><thead><tr><th>metric \\ levels (pixel rows: decoded)</th>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _sample_grid(report: EvalReport) -> str:
    originals = report.samples.get("original")
    if originals is None or len(originals) == 0:
        return ""
    recons: dict[int, torch.Tensor] = report.samples.get("reconstructions", {})
    depths = [d for d in sorted(recons) if len(recons[d])]
    single = len(depths) == 1
    head = "<th>original</th>" + "".join(
        "<th>reconstruction</th>" if single else f"<th>{d} level{'s' if d > 1 else ''}</th>" for d in depths
    )
    rows = []
    for i in range(len(originals)):
        cells = [f'<td><img alt="original {i}" src="{_data_uri(_image_png(originals[i]))}"></td>']
        cells += [
            f'<td><img alt="depth {d} reconstruction {i}" src="{_data_uri(_image_png(recons[d][i]))}"></td>'
            for d in depths
            if i < len(recons[d])
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _section(report: EvalReport, index: int) -> str:
    parts = [f'<section id="report-{index}"><h2>{_esc(report.name)}</h2>']
    parts.append(_protocol_html(report.protocol))
    parts.append("<h3>Figures</h3>" + _metrics_table(report))
    if report.depth_curves:
        parts.append("<h3>By number of decoded residual levels</h3>" + _depth_table(report))
    grid = _sample_grid(report)
    if grid:
        parts.append("<h3>Originals and reconstructions</h3>" + grid)
    if report.codebook is not None:
        summary = report.codebook.summary()
        parts.append(
            "<h3>Codebook usage</h3><p>"
            + ", ".join(
                f"{_esc(k)}: {_esc(round(v, 4) if isinstance(v, float) else v)}" for k, v in summary.items()
            )
            + f" (codebook size {report.codebook.codebook_size}, "
            f"{report.codebook.num_tokens} tokens per codebook)</p>"
        )
        png = codebook_usage_png(report.codebook, report.name)
        parts.append(f'<img class="plot" alt="codebook usage of {_esc(report.name)}" src="{_data_uri(png)}">')
    timing = report.timing
    if timing:
        parts.append(
            f"<p>Encoding, decoding and metric updates: {timing.get('seconds', 0):.1f} s "
            f"({timing.get('images_per_second', 0):.2f} images/s); final figures: "
            f"{timing.get('compute_seconds', 0):.1f} s.</p>"
        )
    parts.append("</section>")
    return "".join(parts)


def render_report(
    reports: EvalReport | Sequence[EvalReport],
    title: str = "polytok evaluation",
    progress: bool | None = None,
) -> str:
    """The HTML text of the report (see ``write_report``)."""
    if isinstance(reports, EvalReport):
        reports = [reports]
    reports = list(reports)
    if not reports:
        raise ValueError("no reports to render")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_esc(title)}</h1><p>Generated {stamp}.</p>"]
    with progress_bar(len(reports) + 2, "report", progress, unit="part") as bar:
        bar.set_postfix_str("comparison table", refresh=True)
        body.append("<h2>Comparison</h2>" + _comparison_table(reports))
        bar.update(1)
        bar.set_postfix_str("depth curves", refresh=True)
        curves = depth_curves_png(reports)
        if curves is not None:
            body.append(
                f'<h2>Depth curves</h2><img class="plot" alt="depth curves" src="{_data_uri(curves)}">'
            )
        bar.update(1)
        for i, report in enumerate(reports):
            bar.set_postfix_str(report.name, refresh=True)
            body.append(_section(report, i))
            bar.update(1)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_report(
    reports: EvalReport | Sequence[EvalReport],
    path: str | Path,
    title: str = "polytok evaluation",
    progress: bool | None = None,
) -> Path:
    """Write one self-contained HTML file comparing one or more ``EvalReport``s; returns the path.
    ``progress``: a bar per section on stderr (True), none (False), only on a terminal (None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(reports, title, progress), encoding="utf-8")
    return path
