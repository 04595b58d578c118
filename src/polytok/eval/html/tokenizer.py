"""``write_report``: one self-contained HTML page (inline CSS, images and plots as base64 PNG).

The first screen (readable at 1300 px without sideways scrolling) holds, per dataset, a narrow table of
headline figures with tokenizers as rows and the strip of originals against reconstructions
(``report_overview``). Optional further sections follow it. Below, per dataset, the full table (every
figure as a row, tokenizers as columns), the depth curves of residual tokenizers, and per tokenizer its
figures with their protocols, samples at every decoded depth and codebook usage. A small script marks
``<body data-images-decoded=N data-images-total=M>`` once loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from polytok.eval.html.overview import headline_legend, headline_table, reconstruction_strip
from polytok.eval.html.pieces import (
    DatasetGroup,
    data_uri,
    esc,
    figure_title,
    group_by_dataset,
    image_tag,
    protocol_html,
    skip_reason,
)
from polytok.eval.html.plots import LOWER_IS_BETTER, codebook_usage_png, depth_curves_png
from polytok.eval.progress import progress_bar
from polytok.eval.tokenizer_report import EvalReport
from polytok.storage import atomic_write_text

_CSS = """
body { font-family: system-ui, sans-serif; margin: 16px 24px; color: #222; font-size: 14px; }
h1 { font-size: 1.4em; margin: 0 0 4px; } h2 { font-size: 1.15em; margin: 14px 0 4px; }
h2.part { margin-top: 2em; border-bottom: 1px solid #ccc; font-size: 1.3em; }
h3 { font-size: 1.05em; margin: 1.2em 0 4px; }
p.stamp { margin: 0 0 8px; color: #555; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; }
th { background: #f0f0f0; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { font-weight: bold; background: #e8f4e8; }
td.ref, tr.reference th { color: #666; font-style: italic; }
tr.reference th, tr.reference td { background: #fafafa; }
th.name { text-align: left; max-width: 16em; overflow-wrap: anywhere; }
p.note { font-size: 0.8em; color: #555; margin: 0 0 10px; max-width: 1150px; }
.protocol { font-size: 0.8em; color: #555; }
.protocol span { display: inline-block; margin-right: 10px; }
.strips { display: flex; flex-wrap: wrap; gap: 0 28px; }
figure.strip-box { margin: 0; } figure.strip-box figcaption { font-weight: 600; margin: 4px 0; }
table.strip td, table.strip th { padding: 1px; border: none; background: none; font-weight: normal; }
table.strip th { text-align: right; padding-right: 6px; vertical-align: middle; max-width: 10em;
  overflow-wrap: anywhere; }
table.strip tr.original th { font-weight: 600; }
table.strip img { image-rendering: pixelated; width: 64px; height: 64px; display: block; }
.grid img { image-rendering: pixelated; width: 128px; height: 128px; display: block; }
img.plot { max-width: 100%; height: auto; }
.scroll { overflow-x: auto; max-width: 100%; }
details.tokenizer { margin: 6px 0; } details.tokenizer > summary { cursor: pointer; font-weight: 600; }
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


def _full_table(group: DatasetGroup) -> str:
    """Every figure of the group's reports as a row, tokenizers as columns (narrow: few tokenizers per
    dataset); each number's protocol is its tooltip, and the per-tokenizer tables list it in full."""
    reports = group.reports
    names: list[str] = []
    for report in reports:
        names += [m for m in report.metrics if m not in names]
    head = "".join(f'<th title="{esc(r.name)}">{esc(label)}</th>' for r, label in zip(reports, group.labels))
    rows = []
    for metric in names:
        values = [r.metrics[metric].value if metric in r.metrics else None for r in reports]
        present = [v for v in values if v is not None]
        best = None
        if len(set(present)) > 1:  # a tie everywhere: no best
            best = min(present) if metric.startswith(LOWER_IS_BETTER) else max(present)
        cells = []
        for report, value in zip(reports, values):
            if value is None:
                reason = skip_reason(report, metric)
                cells.append(f'<td class="skipped" title="{esc(reason)}">n/a</td>')
            else:
                result = report.metrics[metric]
                cls = "num best" if best is not None and value == best else "num"
                cells.append(
                    f'<td class="{cls}" title="{esc(figure_title(result))}">{esc(result.format())}</td>'
                )
        rows.append(f"<tr><th>{esc(metric)}</th>{''.join(cells)}</tr>")
    rows_info = (
        ("images", "num_images"),
        ("image size", "image_size"),
        ("code shape", "code_shape"),
        ("residual levels", "num_levels"),
        ("levels decoded to pixels", "pixel_depth"),
        ("codebook size", "codebook_size"),
    )
    for label, key in rows_info:
        cells = "".join(f'<td class="num">{esc(r.protocol.get(key))}</td>' for r in reports)
        rows.append(f"<tr><th>{label}</th>{cells}</tr>")
    return (
        '<div class="scroll"><table class="comparison"><thead><tr><th>metric</th>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )


def _metrics_table(report: EvalReport) -> str:
    rows = [
        f'<tr><th>{esc(name)}</th><td class="num">{esc(result.format())}</td>'
        f"<td>{protocol_html(result.protocol)}</td></tr>"
        for name, result in report.metrics.items()
    ]
    rows += [
        f'<tr><th>{esc(name)}</th><td class="skipped">skipped</td><td class="skipped">{esc(reason)}</td></tr>'
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
            f'<td class="num">{esc(curve[d].format()) if d in curve else "n/a"}</td>' for d in report.depths
        )
        rows.append(f"<tr><th>{esc(metric)}</th>{cells}</tr>")
    return (
        '<div class="scroll"><table class="depth"><thead><tr><th>metric \\ levels (pixel rows: decoded)</th>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
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
        cells = [f"<td>{image_tag(originals[i], f'original {i}')}</td>"]
        cells += [
            f"<td>{image_tag(recons[d][i], f'depth {d} reconstruction {i}')}</td>"
            for d in depths
            if i < len(recons[d])
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<div class="scroll"><table class="grid"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _tokenizer_details(report: EvalReport, index: int) -> str:
    """One tokenizer on one dataset: figures with protocols, depth table, samples, codebook, timing."""
    parts = [f'<details class="tokenizer" id="report-{index}"><summary>{esc(report.name)}</summary>']
    parts.append(protocol_html(report.protocol))
    parts.append("<h4>Figures</h4>" + _metrics_table(report))
    if report.depth_curves:
        parts.append("<h4>By number of decoded residual levels</h4>" + _depth_table(report))
    grid = _sample_grid(report)
    if grid:
        parts.append("<h4>Originals and reconstructions</h4>" + grid)
    if report.codebook is not None:
        summary = report.codebook.summary()
        parts.append(
            "<h4>Codebook usage</h4><p>"
            + ", ".join(
                f"{esc(k)}: {esc(round(v, 4) if isinstance(v, float) else v)}" for k, v in summary.items()
            )
            + f" (codebook size {report.codebook.codebook_size}, "
            f"{report.codebook.num_tokens} tokens per codebook)</p>"
        )
        png = codebook_usage_png(report.codebook, report.name)
        parts.append(f'<img class="plot" alt="codebook usage of {esc(report.name)}" src="{data_uri(png)}">')
    timing = report.timing
    if timing:
        parts.append(
            f"<p>Encoding, decoding and metric updates: {timing.get('seconds', 0):.1f} s "
            f"({timing.get('images_per_second', 0):.2f} images/s); final figures: "
            f"{timing.get('compute_seconds', 0):.1f} s.</p>"
        )
    parts.append("</details>")
    return "".join(parts)


def _dataset_figures(group: DatasetGroup, number: int) -> str:
    parts = [
        f'<section class="dataset" id="dataset-{number}"><h3>{esc(group.title)}</h3>',
        _full_table(group),
    ]
    curves = depth_curves_png(group.reports, group.labels)
    if curves is not None:
        parts.append(
            f'<h4>Depth curves</h4><img class="plot" alt="depth curves on {esc(group.title)}" '
            f'src="{data_uri(curves)}">'
        )
    parts += [_tokenizer_details(r, i) for r, i in zip(group.reports, group.indices)]
    parts.append("</section>")
    return "".join(parts)


def _check_sections(extra_sections: Sequence[str]) -> list[str]:
    if isinstance(extra_sections, str):
        raise ValueError("extra_sections must be a sequence of HTML fragments, got one string")
    sections = list(extra_sections)
    odd = [type(s).__name__ for s in sections if not isinstance(s, str)]
    if odd:
        raise ValueError(f"extra_sections must hold HTML strings, got {odd}")
    return sections


def render_report(
    reports: EvalReport | Sequence[EvalReport],
    title: str = "polytok evaluation",
    extra_sections: Sequence[str] = (),
    progress: bool | None = None,
) -> str:
    """The HTML text of the report (see ``write_report``)."""
    if isinstance(reports, EvalReport):
        reports = [reports]
    reports = list(reports)
    if not reports:
        raise ValueError("no reports to render")
    sections = _check_sections(extra_sections)
    groups = group_by_dataset(reports)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f'<h1>{esc(title)}</h1><p class="stamp">Generated {stamp}. {len(reports)} evaluation'
        f"{'s' if len(reports) > 1 else ''} on {len(groups)} dataset{'s' if len(groups) > 1 else ''}; "
        'every figure, depth curves and protocols under <a href="#all-figures">All figures</a>.</p>'
    ]
    with progress_bar(len(groups) + 1, "report", progress, unit="part") as bar:
        bar.set_postfix_str("headline tables", refresh=True)
        body.append('<section id="overview">')
        body += [f"<h2>{esc(g.title)}</h2>{headline_table(g)}" for g in groups]
        body.append(headline_legend(groups))
        strips = [strip for strip in (reconstruction_strip(g) for g in groups) if strip]
        if strips:
            body.append(f'<h2>Originals and reconstructions</h2><div class="strips">{"".join(strips)}</div>')
        body.append("</section>")
        body += sections
        body.append('<section id="all-figures"><h2 class="part">All figures</h2>')
        bar.update(1)
        for n, g in enumerate(groups):
            bar.set_postfix_str(g.title, refresh=True)
            body.append(_dataset_figures(g, n))
            bar.update(1)
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_report(
    reports: EvalReport | Sequence[EvalReport],
    path: str | Path,
    title: str = "polytok evaluation",
    extra_sections: Sequence[str] = (),
    progress: bool | None = None,
) -> Path:
    """Write one self-contained HTML file comparing one or more ``EvalReport``s; returns the path.

    Reports are grouped by the ``dataset`` and ``split`` of their protocol. ``extra_sections``: HTML
    fragments (each best a ``<section>`` with its own ``<h2>``, self-contained and at most the page's
    width) inserted in order after the per-dataset tokenizer tables and reconstruction strips, before
    the full figures. ``progress``: a bar over the parts on stderr (True), none (False), only on a
    terminal (None).
    """
    path = Path(path)
    text = render_report(reports, title, extra_sections, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, text)
