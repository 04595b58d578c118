"""Figures for the report as PNG bytes, drawn with matplotlib's Agg canvas (no display needed).

The object-oriented API is used (``Figure`` + ``FigureCanvasAgg``) so that importing this module never
changes the process-wide pyplot backend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from polytok.eval.metrics.codebook import CodebookStats
from polytok.eval.tokenizer_report import EvalReport

# Curves where a lower value is better get a note in the title.
LOWER_IS_BETTER = ("rFID", "rFD", "LPIPS", "semantic KL")


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def _decoded(reports: Sequence[EvalReport], metric: str) -> bool:
    """Pixel figures record the levels decoded (``decoded_levels``), code figures the code levels read."""
    return any(
        "decoded_levels" in result.protocol
        for report in reports
        for result in report.depth_curves.get(metric, {}).values()
    )


def depth_curves_png(reports: Sequence[EvalReport], labels: Sequence[str] | None = None) -> bytes | None:
    """One panel per metric that some report measured at two depths or more: value against the number
    of decoded residual levels, one line per report, named by ``labels`` (default: the reports' names)."""
    names = list(labels) if labels is not None else [report.name for report in reports]
    if len(names) != len(reports):
        raise ValueError(f"{len(names)} labels for {len(reports)} reports")
    metrics: list[str] = []
    for report in reports:
        metrics += [m for m, curve in report.depth_curves.items() if len(curve) > 1 and m not in metrics]
    if not metrics:
        return None
    cols = min(3, len(metrics))
    rows = (len(metrics) + cols - 1) // cols
    fig = Figure(figsize=(4.2 * cols, 3.0 * rows))
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for report, name in zip(reports, names):
            curve = report.depth_curves.get(metric)
            if not curve:
                continue
            xs = sorted(curve)
            ax.plot(xs, [curve[x].value for x in xs], marker="o", label=name)
        lower = metric.startswith(LOWER_IS_BETTER)
        ax.set_title(f"{metric} ({'lower' if lower else 'higher'} is better)", fontsize=9)
        ax.set_xlabel("levels decoded" if _decoded(reports, metric) else "code levels")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(reports) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def codebook_usage_png(stats: CodebookStats, title: str) -> bytes:
    """Left: code frequencies sorted by rank (log scale), one line per codebook (up to 16 drawn).
    Right: used fraction per residual level."""
    fig = Figure(figsize=(9.0, 3.0))
    ax = fig.add_subplot(1, 2, 1)
    counts = stats.counts.reshape(-1, stats.codebook_size)
    total = counts.sum(dim=1, keepdim=True).clamp_min(1)
    freq = (counts.double() / total).sort(dim=1, descending=True).values
    ranks = torch.arange(1, stats.codebook_size + 1)
    for row in range(min(16, freq.shape[0])):
        positive = freq[row] > 0
        ax.plot(ranks[positive].numpy(), freq[row][positive].numpy(), linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("code rank")
    ax.set_ylabel("frequency")
    ax.set_title(f"{title}: code frequency by rank", fontsize=9)
    ax.grid(alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    if stats.num_levels > 1:  # residual: one bar per level (averaged over the level's codebooks)
        usage, label = stats.per_level()["usage"], "residual level"
    else:  # one bar per codebook
        usage, label = stats.usage[0], "codebook"
    positions = list(range(1, usage.numel() + 1))
    ax2.bar(positions, usage.numpy(), color="#4c72b0")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel(label)
    ax2.set_xticks(positions if len(positions) <= 16 else positions[:: max(1, len(positions) // 8)])
    ax2.set_ylabel("codebook usage")
    ax2.set_title("used fraction of entries", fontsize=9)
    fig.tight_layout()
    return _png(fig)
