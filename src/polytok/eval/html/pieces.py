"""Small HTML pieces shared by the report's parts: escaping, embedded PNGs, protocols as text, and the
grouping of reports by the dataset they were measured on."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from polytok.eval.result import MetricResult
from polytok.eval.tokenizer_report import EvalReport

# Protocol fields that describe the data rather than one figure: shown once per dataset, not per number.
DATA_FIELDS = ("dataset", "split", "num_images", "image_size", "resize", "max_images", "reference_set")


def esc(value: Any) -> str:
    return html.escape(str(value))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image_png(image: torch.Tensor) -> bytes:
    """(3, H, W) in [0, 1] -> PNG bytes."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_tag(image: torch.Tensor, alt: str) -> str:
    """(3, H, W) in [0, 1] -> an ``<img>`` with the PNG inline."""
    return f'<img alt="{esc(alt)}" src="{data_uri(image_png(image))}">'


def protocol_html(protocol: dict[str, Any]) -> str:
    items = "".join(f"<span><b>{esc(k)}</b>: {esc(v)}</span>" for k, v in protocol.items() if v is not None)
    return f'<div class="protocol">{items}</div>'


def figure_title(result: MetricResult, skip: Sequence[str] = DATA_FIELDS) -> str:
    """Tooltip text of one number: the full value, then its protocol one field a line (the data fields,
    stated once per dataset, left out)."""
    lines = [result.format()]
    lines += [f"{k}: {v}" for k, v in result.protocol.items() if v is not None and k not in skip]
    return "\n".join(lines)


def skip_reason(report: EvalReport, metric: str) -> str:
    """Why ``report`` has no ``metric``: its own entry in ``skipped``, else that of the family it
    belongs to (``"zero-shot"`` for ``"zero-shot top-1"``)."""
    if metric in report.skipped:
        return report.skipped[metric]
    for key, reason in report.skipped.items():
        if metric.startswith(key):
            return reason
    return "not measured"


@dataclass(frozen=True)
class DatasetGroup:
    """Reports measured on one dataset and split. ``labels``: each report's name without the suffix
    they all share (``"unitok-tiny | photos val"`` -> ``"unitok-tiny"``)."""

    title: str
    reports: list[EvalReport]
    labels: list[str]
    indices: list[int]  # positions of the reports in the list given to the report

    @property
    def protocol(self) -> dict[str, Any]:
        """The data fields of the group's first report."""
        first = self.reports[0].protocol
        return {k: first[k] for k in DATA_FIELDS if first.get(k) is not None}


def _short_names(names: Sequence[str]) -> list[str]:
    parts = [name.rsplit(" | ", 1) for name in names]
    if all(len(p) == 2 and p[0] for p in parts) and len({p[1] for p in parts}) == 1:
        return [p[0] for p in parts]
    return list(names)


def group_by_dataset(reports: Sequence[EvalReport]) -> list[DatasetGroup]:
    """Reports grouped by their protocol's ``dataset`` and ``split``, in order of first appearance."""
    keys: dict[tuple[str, str], list[int]] = {}
    for index, report in enumerate(reports):
        key = (str(report.protocol.get("dataset", "")), str(report.protocol.get("split", "")))
        keys.setdefault(key, []).append(index)
    groups = []
    for (dataset, split), indices in keys.items():
        members = [reports[i] for i in indices]
        title = " · ".join(part for part in (dataset, split) if part) or "data not named"
        groups.append(DatasetGroup(title, members, _short_names([r.name for r in members]), indices))
    return groups
