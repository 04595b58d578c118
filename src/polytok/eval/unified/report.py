"""The result of :func:`polytok.eval.evaluate_unified`: figures with their protocols and baselines, and
the items behind them (sampled images with the judge's readings, captioned images with their parses),
kept for an HTML report.

Figure names:

* ``t2i[<group>] attr[<a>]`` (a in shape, colour, count, size, position, ``all``, ``pair`` = shape and
  colour both right), group ``seen`` (pairs in training captions) or ``heldout`` (held-out pairs);
* ``gFD (EfficientNet-Lite0)``: samples against real ``shapes`` images of the same prompts;
* ``bits/image token[<split>]`` and ``bits/image[<split>]``: the model's mean -log2 likelihood of
  the image tokens given the caption;
* ``caption[<split>] attr[<a>]`` (the caption's six attributes, ``all``, ``pair``) and
  ``caption[<split>] unparsed`` (a count: captions outside the grammar, wrong for every attribute);
  ``caption reranked[<split>] attr[<a>]``: the same captions after re-ranking attributes by the
  generator's likelihood (:mod:`polytok.eval.unified.rerank`).

Each figure's ``protocol["baselines"]`` holds what it must be read against (chance, single-attribute
models, the judge's accuracy on real images and on the tokenizer's reconstructions of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from polytok.eval.result import MetricResult
from polytok.eval.shapes.prompts import ShapesPrompt


@dataclass
class PromptSamples:
    """The samples of one prompt: ``images`` (N, 3, H, W) uint8 as decoded, the judge's ``readings``
    (N dicts attribute -> class index), ``correct`` (N dicts attribute / all / pair -> bool), the seed
    of the sampling call."""

    prompt: ShapesPrompt
    seed: int
    images: Tensor
    readings: list[dict[str, int]]
    correct: list[dict[str, bool]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt.to_dict(),
            "seed": self.seed,
            "readings": self.readings,
            "correct": self.correct,
        }


@dataclass
class CaptionedImage:
    """One captioned image: ``image`` (3, H, W) uint8, its dataset ``split`` and ``index``, the true
    ``attributes``, the model's ``caption``, the ``parsed`` attributes (None: outside the grammar) and
    ``correct`` (attribute / all / pair -> bool); ``reranked`` / ``reranked_correct``: the same after
    re-ranking by the generator (:mod:`polytok.eval.unified.rerank`), None where it was not run."""

    split: str
    index: int
    image: Tensor
    attributes: dict[str, int]
    caption: str
    parsed: dict[str, int] | None
    correct: dict[str, bool]
    reranked: dict[str, int] | None = None
    reranked_correct: dict[str, bool] | None = None

    @property
    def heldout(self) -> bool:
        return self.split == "heldout"

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "index": self.index,
            "attributes": self.attributes,
            "caption": self.caption,
            "parsed": self.parsed,
            "correct": self.correct,
            **(
                {"reranked": self.reranked, "reranked_correct": self.reranked_correct}
                if self.reranked_correct is not None
                else {}
            ),
        }


@dataclass
class UnifiedReport:
    """``metrics``: figure name -> :class:`MetricResult` (protocol and baselines inside); ``protocol``:
    what every figure shares (model, tokenizer, prompt suite, sampling settings); ``samples``: one
    :class:`PromptSamples` per prompt; ``captions``: one :class:`CaptionedImage` per captioned image;
    ``skipped``: figure -> why it is missing."""

    name: str
    protocol: dict[str, Any]
    metrics: dict[str, MetricResult] = field(default_factory=dict)
    samples: list[PromptSamples] = field(default_factory=list)
    captions: list[CaptionedImage] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every figure, the protocol and the per-item readings (images left out)."""
        return {
            "name": self.name,
            "protocol": dict(self.protocol),
            "metrics": {key: value.to_dict() for key, value in self.metrics.items()},
            "samples": [s.to_dict() for s in self.samples],
            "captions": [c.to_dict() for c in self.captions],
            "skipped": dict(self.skipped),
        }

    def table_rows(self) -> list[tuple[str, str, str]]:
        """(figure, value, baselines) rows, in the order the figures were measured."""
        rows = []
        for key, result in self.metrics.items():
            baselines = result.protocol.get("baselines", {})
            text = ", ".join(f"{name} {_short(value)}" for name, value in baselines.items())
            value = (
                f"{result.value:.0f}" if result.protocol.get("unit") == "captions" else _short(result.value)
            )
            rows.append((key, value, text))
        return rows

    def format_tables(self) -> str:
        """A plain-text table: figure | value | baselines beside it."""
        header = ("figure", "value", "baselines (chance, single-attribute, judge ceilings)")
        rows = [header, *self.table_rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows]
        lines += [f"{key}: {reason}" for key, reason in self.skipped.items()]
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)
