"""Metric families: each one a small module with ``build(caps, options, device, skipped)`` that returns a
:class:`MetricFamily` (or None when it has nothing to measure); ``caps`` is the tokenizer's
:class:`~polytok.eval.capabilities.TokenizerCapabilities`, all a family reads of the tokenizer. Pixel
families first, then code families; the report lists figures in this order."""

from __future__ import annotations

from typing import Any

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families import (
    attributes,
    code_probe,
    frechet,
    pixel,
    references,
    semantic_fidelity,
    semantics,
)
from polytok.eval.families.base import DepthBatch, DepthResult, MetricFamily, Reads, RealBatch
from polytok.eval.options import EvalOptions

BUILDERS = (
    pixel.build,
    references.build,
    attributes.build,
    semantic_fidelity.build,
    frechet.build,
    semantics.build,
    code_probe.build,
)


def build_families(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> list[MetricFamily]:
    """The families ``options`` ask for; optional parts that cannot run record why in ``skipped``."""
    families = [builder(caps, options, device, skipped) for builder in BUILDERS]
    return [family for family in families if family is not None]


__all__ = ["DepthBatch", "DepthResult", "MetricFamily", "Reads", "RealBatch", "build_families"]
