"""Attribute fidelity on built-in ``shapes`` images: does the reconstruction still show what the original
was made of (shape, colour, count, size, position), as read by the shapes judge?

Ground truth is the generator's own attributes. The judge's accuracy on the originals is measured on the
same images and recorded in every figure's protocol: a reconstruction cannot score above what the judge
reads on real images, and a judge that misreads originals cannot judge anything.

Beside it, the simplest strong reference: the judge on the originals' *token-cell means* (each
stride x stride cell of the token grid replaced by its mean colour), what a tokenizer keeping one flat
colour per token would score. A tokenizer at or below it carries no geometry finer than its grid.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch
from polytok.eval.options import EvalOptions
from polytok.eval.result import MetricResult

ALL_CORRECT = "all"


def cell_means(images: Tensor, stride: int) -> Tensor:
    """(B, 3, H, W) -> (B, 3, H, W): each stride x stride cell replaced by its mean colour (H, W multiples
    of ``stride``): what a tokenizer that keeps one flat colour per token would return."""
    if images.shape[-1] % stride or images.shape[-2] % stride:
        raise ValueError(f"image side {tuple(images.shape[-2:])} is not a multiple of the stride {stride}")
    return F.interpolate(F.avg_pool2d(images, stride), scale_factor=stride, mode="nearest")


def figure_name(attribute: str) -> str:
    """Report name of one attribute's fidelity, e.g. ``"attr[shape]"``; ``"attr[all]"`` for all at once."""
    return f"attr[{attribute}]"


class _Counts:
    """Correct readings per attribute (and of every attribute at once) over the images seen."""

    def __init__(self, attributes: tuple[str, ...]) -> None:
        self.correct = {name: 0 for name in (*attributes, ALL_CORRECT)}
        self.images = 0

    def update(self, readings: dict[str, Tensor], truth: dict[str, Tensor]) -> None:
        every = torch.ones_like(next(iter(truth.values())), dtype=torch.bool)
        for name, labels in truth.items():
            right = readings[name] == labels
            self.correct[name] += int(right.sum())
            every &= right
        self.correct[ALL_CORRECT] += int(every.sum())
        self.images += int(every.numel())

    def accuracy(self) -> dict[str, float]:
        return {name: count / max(self.images, 1) for name, count in self.correct.items()}


class AttributeFidelity:
    """Judge's readings of each decoded depth against the generator's attributes.

    Batches without ``attributes`` for every judged attribute (any dataset but ``shapes``) are ignored.
    """

    reads = "pixels"
    label = "attribute judge"  # named in progress lines

    def __init__(self, judge: Any, required: bool = False, stride: int | None = None) -> None:
        from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES

        self.judge = judge
        self.stride = stride  # the token grid's cell side; None: no cell-mean reference
        self.attributes: tuple[str, ...] = JUDGED_ATTRIBUTES
        self.required = required
        self.skipped: dict[str, str] = {}
        self._originals = _Counts(self.attributes)
        self._cell_means = _Counts(self.attributes)
        self._depths: dict[int, _Counts] = {}
        self._truth: dict[str, Tensor] | None = None

    def _batch_truth(self, batch: RealBatch) -> dict[str, Tensor] | None:
        attributes = batch.fields.get("attributes")
        if not isinstance(attributes, dict) or not all(name in attributes for name in self.attributes):
            return None
        return {name: torch.as_tensor(attributes[name]).long().cpu() for name in self.attributes}

    def prepare(self, batch: RealBatch) -> None:
        self._truth = self._batch_truth(batch)
        if self._truth is not None:
            images = batch.images.float().cpu()
            self._originals.update(self.judge.read(images), self._truth)
            if self.stride is not None and self.stride > 1:
                self._cell_means.update(self.judge.read(cell_means(images, self.stride)), self._truth)

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        if self._truth is None:
            return
        assert depth.reconstruction is not None
        counts = self._depths.setdefault(depth.levels, _Counts(self.attributes))
        counts.update(self.judge.read(depth.reconstruction.float().cpu()), self._truth)

    def compute(self) -> list[DepthResult]:
        if not self._depths:
            if self.required:
                raise ValueError(
                    "attribute fidelity needs images with shapes attributes (data 'shapes'); none were seen"
                )
            return []
        judge_on_originals = self._originals.accuracy()
        judge_on_cell_means = self._cell_means.accuracy() if self._cell_means.images else None
        results = []
        for levels in sorted(self._depths):
            counts = self._depths[levels]
            figures = {}
            for name, value in counts.accuracy().items():
                protocol = {
                    "num_images": counts.images,
                    "judge": "polytok shapes judge (trained on the shapes train split)",
                    "truth": "the generator's attributes",
                    "judge_accuracy_on_originals": round(judge_on_originals[name], 4),
                    "chance": _chance(name),
                }
                if judge_on_cell_means is not None:
                    protocol["judge_accuracy_on_cell_means"] = round(judge_on_cell_means[name], 4)
                    protocol["cell_mean_stride"] = self.stride
                figures[figure_name(name)] = MetricResult(value, protocol)
            results.append(DepthResult(levels, "pixels", figures))
        return results


def _chance(attribute: str) -> float:
    """Accuracy of a uniform guess (for ``all``: of guessing every attribute at once)."""
    from polytok.data.shapes import TASK_CLASSES
    from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES

    names = JUDGED_ATTRIBUTES if attribute == ALL_CORRECT else (attribute,)
    chance = 1.0
    for name in names:
        chance /= len(TASK_CLASSES[name])
    return round(chance, 6)


def build(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> AttributeFidelity | None:
    if options.attribute_fidelity is False:
        return None
    from polytok.eval.shapes.judge import load_shapes_judge

    required = options.attribute_fidelity is True
    return AttributeFidelity(load_shapes_judge(), required=required, stride=caps.stride)
