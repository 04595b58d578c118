"""The result of evaluating one tokenizer: figures with protocols, depth curves, codebook health,
sample reconstructions, and what was skipped and why."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from polytok.eval.metrics.codebook import CodebookStats
from polytok.eval.result import MetricResult


@dataclass
class EvalReport:
    """Everything ``evaluate_tokenizer`` measured.

    ``depth_curves`` maps a metric name to ``{levels: MetricResult}``: pixel figures per number of
    levels decoded (their protocol says ``decoded_levels``), code figures per number of code levels read
    (``code_levels``); ``depths`` lists every level count measured. ``metrics`` holds the headline
    figures, each at the deepest level count of its kind. ``samples["original"]`` is (n, 3, H, W) in
    [0, 1]; ``samples["reconstructions"][levels]`` likewise, for each decoded level count.
    """

    name: str
    metrics: dict[str, MetricResult] = field(default_factory=dict)
    depth_curves: dict[str, dict[int, MetricResult]] = field(default_factory=dict)
    depths: list[int] = field(default_factory=list)
    codebook: CodebookStats | None = None
    samples: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no image tensors, no raw code counts)."""
        return {
            "name": self.name,
            "protocol": self.protocol,
            "depths": self.depths,
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "depth_curves": {
                k: {str(d): r.to_dict() for d, r in curve.items()} for k, curve in self.depth_curves.items()
            },
            "codebook": self.codebook.to_dict() if self.codebook is not None else None,
            "skipped": self.skipped,
            "timing": self.timing,
        }

    def save_json(self, path: str | Path) -> Path:
        from polytok.storage import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
