"""The report's first screen: per dataset one narrow table (tokenizers as rows, a few headline figures as
columns, with the references that make them honest) and the strip of originals against each tokenizer's
reconstructions. Every other figure is in the full tables below it (``html_report``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from polytok.eval.html.pieces import DatasetGroup, esc, figure_title, image_tag, skip_reason
from polytok.eval.html.plots import LOWER_IS_BETTER
from polytok.eval.result import MetricResult
from polytok.eval.tokenizer_report import EvalReport

BITS = "bits / image"  # derived from the codec references' budget, not a metric of its own
STRIP_SAMPLES = 6  # images per row of the strip: 6 x 64 px keeps two datasets' strips side by side


@dataclass(frozen=True)
class Column:
    """One headline column: ``metric`` (a key of ``EvalReport.metrics``, or ``BITS``) shown as ``label``
    under the spanning header ``group`` (None: a header of its own), to ``digits`` decimals.
    ``reference``: a plain codec given the same bits, never marked best."""

    metric: str
    label: str
    note: str
    group: str | None = None
    digits: int = 3
    reference: bool = False


HEADLINE = (
    Column(
        BITS,
        BITS,
        "code bits the pixel decoder reads per image (positions x codes x log2 codebook size)",
        digits=0,
    ),
    Column("PSNR", "tokenizer", "PSNR of the reconstructions (higher is better)", "PSNR (dB)", 2),
    Column(
        "PSNR[JPEG, equal bits]",
        "JPEG",
        "PSNR of JPEG (Pillow) at the highest quality within the tokenizer's bits per image",
        "PSNR (dB)",
        2,
        True,
    ),
    Column(
        "PSNR[bicubic, equal bits]",
        "bicubic",
        "PSNR of a bicubic down-and-up whose 8-bit pixels fit the tokenizer's bits per image",
        "PSNR (dB)",
        2,
        True,
    ),
    Column("SSIM", "SSIM", "SSIM of the reconstructions (higher is better)"),
    Column("LPIPS", "LPIPS", "LPIPS (VGG) of the reconstructions (lower is better)"),
    Column(
        "rFID",
        "rFID",
        "Inception-v3 Frechet distance, originals vs reconstructions (lower is better)",
        digits=2,
    ),
    Column(
        "semantic top-1 agreement",
        "semantic agreement",
        "fraction of images whose reconstruction gets "
        "the original's top-1 ImageNet class from a frozen EfficientNet-Lite0",
    ),
    Column(
        "attr[shape]",
        "shape",
        "the shapes judge reads the original's shape on the reconstruction",
        "attribute fidelity",
    ),
    Column(
        "attr[colour]",
        "colour",
        "the shapes judge reads the original's colour on the reconstruction",
        "attribute fidelity",
    ),
    Column(
        "attr[all]",
        "all",
        "the shapes judge reads every attribute (shape, colour, count, size, position) right at once",
        "attribute fidelity",
    ),
    Column(
        "zero-shot top-1",
        "zero-shot top-1",
        "class named through the text tower from the tokens' semantic features",
    ),
)


def _value(report: EvalReport, column: Column) -> MetricResult | None:
    if column.metric != BITS:
        return report.metrics.get(column.metric)
    for result in report.metrics.values():
        bits = result.protocol.get("budget_bits_per_image")
        if bits is not None:
            return MetricResult(float(bits), {"decoded_levels": result.protocol.get("decoded_levels")})
    return None


def _columns(group: DatasetGroup) -> list[Column]:
    return [c for c in HEADLINE if any(_value(r, c) is not None for r in group.reports)]


def _best(values: Sequence[MetricResult | None], column: Column) -> float | None:
    present = [v.value for v in values if v is not None]
    if column.reference or column.metric == BITS or len(set(present)) < 2:  # a tie everywhere: no best
        return None
    return min(present) if column.metric.startswith(LOWER_IS_BETTER) else max(present)


def _cell(report: EvalReport, column: Column, value: MetricResult | None, best: float | None) -> str:
    if value is None:
        reason = skip_reason(report, column.metric)
        return f'<td class="skipped" title="{esc(reason)}">–</td>'
    classes = ["num"] + (["ref"] if column.reference else []) + (["best"] if value.value == best else [])
    return (
        f'<td class="{" ".join(classes)}" title="{esc(figure_title(value))}">'
        f"{value.value:.{column.digits}f}</td>"
    )


def _chance(result: MetricResult) -> float | None:
    if "chance" in result.protocol:
        return float(result.protocol["chance"])
    classes = result.protocol.get("num_classes")
    return 1.0 / classes if classes else None


def _reference_rows(group: DatasetGroup, columns: Sequence[Column]) -> list[str]:
    """Rows under the tokenizers: the judge's accuracy on the originals, on their token-cell means (one
    flat colour per token) and chance, where figures carry them (the same images for every tokenizer;
    differing values, e.g. cell means at different strides, are shown as a range)."""
    readers = (
        ("judge on originals", lambda r: r.protocol.get("judge_accuracy_on_originals")),
        ("judge on token-cell means", lambda r: r.protocol.get("judge_accuracy_on_cell_means")),
        ("chance", _chance),
    )
    rows = []
    for label, read in readers:
        cells, any_value = [], False
        for column in columns:
            found = {read(r.metrics[column.metric]) for r in group.reports if column.metric in r.metrics}
            found.discard(None)
            if found:
                any_value = True
                low, high = min(found), max(found)
                text = f"{low:.3f}" if low == high else f"{low:.3f}–{high:.3f}"
                cells.append(f'<td class="num ref">{text}</td>')
            else:
                cells.append("<td></td>")
        if any_value:
            rows.append(f'<tr class="reference"><th>{label}</th>{"".join(cells)}</tr>')
    return rows


def _header(columns: Sequence[Column]) -> str:
    top, sub = ['<th rowspan="2">tokenizer</th>'], []
    i = 0
    while i < len(columns):
        group = columns[i].group
        if group is None:
            top.append(f'<th rowspan="2" title="{esc(columns[i].note)}">{esc(columns[i].label)}</th>')
            i += 1
            continue
        span = 1
        while i + span < len(columns) and columns[i + span].group == group:
            span += 1
        top.append(f'<th colspan="{span}">{esc(group)}</th>')
        sub += [f'<th title="{esc(c.note)}">{esc(c.label)}</th>' for c in columns[i : i + span]]
        i += span
    return f"<thead><tr>{''.join(top)}</tr><tr>{''.join(sub)}</tr></thead>"


def _data_note(group: DatasetGroup) -> str:
    data = group.protocol
    count = f"{data['num_images']} images" if "num_images" in data else "images"
    size = f" of {data['image_size']}" if "image_size" in data else ""
    parts = [f"{esc(group.title)}: {count}{size}"]
    if "resize" in data:
        parts.append(f"resize {esc(data['resize'])}")
    return f'<p class="note">{"; ".join(parts)}.</p>'


def headline_legend(groups: Sequence[DatasetGroup]) -> str:
    """What the headline columns of all the tables mean, once for every dataset."""
    shown = {c.metric for group in groups for c in _columns(group)}
    defined = "; ".join(
        f"<b>{esc(c.label if c.group is None else f'{c.group}, {c.label}')}</b>: {esc(c.note)}"
        for c in HEADLINE
        if c.metric in shown
    )
    return (
        f'<p class="note">Pixel figures at the deepest decoded depth, zero-shot from all code levels. '
        f"{defined}. Bold: the best tokenizer of a column; italic: references, not tokenizers. Hover a "
        "number for its protocol; every figure is under All figures.</p>"
    )


def headline_table(group: DatasetGroup) -> str:
    """Tokenizers as rows, the headline figures present in the group as columns, references beneath."""
    columns = _columns(group)
    values = [[_value(r, c) for c in columns] for r in group.reports]
    best = [_best([row[j] for row in values], c) for j, c in enumerate(columns)]
    rows = []
    for report, label, row in zip(group.reports, group.labels, values):
        cells = "".join(_cell(report, c, v, b) for c, v, b in zip(columns, row, best))
        rows.append(f'<tr><th class="name" title="{esc(report.name)}">{esc(label)}</th>{cells}</tr>')
    return (
        f'<table class="headline">{_header(columns)}<tbody>{"".join(rows)}</tbody>'
        f"<tfoot>{''.join(_reference_rows(group, columns))}</tfoot></table>{_data_note(group)}"
    )


def _deepest(report: EvalReport) -> tuple[int, torch.Tensor] | None:
    recons: dict[int, torch.Tensor] = report.samples.get("reconstructions", {})
    depths = [d for d in sorted(recons) if len(recons[d])]
    return (depths[-1], recons[depths[-1]]) if depths else None


def reconstruction_strip(group: DatasetGroup) -> str:
    """Originals, then each tokenizer's reconstructions at its deepest decoded depth (the one its
    headline pixel figures measure); another row of originals wherever a tokenizer saw other images."""
    rows, shown = [], None
    for report, label in zip(group.reports, group.labels):
        originals = report.samples.get("original")
        deepest = _deepest(report)
        if originals is None or len(originals) == 0 or deepest is None:
            continue
        originals = originals[:STRIP_SAMPLES]
        if shown is None or shown.shape != originals.shape or not torch.equal(shown, originals):
            cells = "".join(f"<td>{image_tag(img, f'original {i}')}</td>" for i, img in enumerate(originals))
            rows.append(f'<tr class="original"><th>original</th>{cells}</tr>')
            shown = originals
        levels, recons = deepest
        depth = (
            f"<br><small>{levels} level{'s' if levels > 1 else ''} decoded</small>"
            if len(report.depths) > 1
            else ""
        )
        cells = "".join(
            f"<td>{image_tag(img, f'{report.name}: reconstruction {i}')}</td>"
            for i, img in enumerate(recons[:STRIP_SAMPLES])
        )
        rows.append(f'<tr><th title="{esc(report.name)}">{esc(label)}{depth}</th>{cells}</tr>')
    if not rows:
        return ""
    return (
        f'<figure class="strip-box"><figcaption>{esc(group.title)}</figcaption>'
        f'<table class="strip"><tbody>{"".join(rows)}</tbody></table></figure>'
    )
