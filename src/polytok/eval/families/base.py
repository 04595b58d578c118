"""The metric-family interface: what one kind of figure needs from the evaluation loop.

Per batch the loop encodes the originals once and hands every family a :class:`RealBatch`
(``prepare``: statistics of the originals, computed once for all depths). Then, for each depth, pixel
families get the reconstruction decoded from the code prefix and code families get the prefix itself
(``measure``). At the end ``compute`` returns one :class:`DepthResult` per measured depth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from torch import Tensor

from polytok.eval.options import Toggle
from polytok.eval.result import MetricResult

Reads = Literal["pixels", "codes"]
T = TypeVar("T")


@dataclass(frozen=True)
class RealBatch:
    """One batch of originals. ``images``: (B, 3, H, W) in [0, 1] on the evaluation device; ``labels``:
    (B,) class indices or None; ``codes``: (B, h, w, *code_shape), every level; ``seen``: images in the
    batches before this one; ``fields``: the batch's other entries (``caption``, ``attributes``, ...)
    cut to the same B images."""

    images: Tensor
    labels: Tensor | None
    codes: Tensor
    seen: int
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DepthBatch:
    """One depth of one batch. ``levels``: residual levels read; ``codes``: the prefix (B, h, w, levels)
    or (B, h, w, levels, C); ``reconstruction``: (B, 3, H, W) decoded from it (pixel families only)."""

    levels: int
    codes: Tensor
    reconstruction: Tensor | None = None


@dataclass(frozen=True)
class DepthResult:
    """The figures of one family at one number of levels: levels decoded to pixels (``reads ==
    "pixels"``) or code levels read (``"codes"``), recorded under :attr:`level_field`."""

    levels: int
    reads: Reads
    figures: dict[str, MetricResult]

    @property
    def level_field(self) -> str:
        return "decoded_levels" if self.reads == "pixels" else "code_levels"


class MetricFamily(Protocol):
    """A group of figures measured together. ``reads``: what ``measure`` receives per depth;
    ``skipped``: metric -> reason for figures it could not give. An optional ``label`` names the family in
    progress lines (default: its class name)."""

    reads: Reads
    skipped: dict[str, str]

    def prepare(self, batch: RealBatch) -> None:
        """Once per batch, before any depth: accumulate what depends on the originals only."""

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        """Once per batch and depth."""

    def compute(self) -> list[DepthResult]:
        """The figures, one result per measured depth (ascending)."""


def family_label(family: Any) -> str:
    """The family's name in progress lines."""
    return str(getattr(family, "label", type(family).__name__))


def load_optional(toggle: Toggle, metric: str, build: Callable[[], Any], skipped: dict[str, str]) -> Any:
    """Build an optional part; with ``"auto"`` a missing weights file skips it with the reason."""
    if toggle is False:
        return None
    try:
        return build()
    except FileNotFoundError as err:
        if toggle is True:
            raise
        skipped[metric] = f"skipped: {err}"
        return None


def at_depth(store: dict[int, T], levels: int, make: Callable[[], T]) -> T:
    """The accumulator of ``levels`` in ``store``, made on first use (only then: some hold (D, D)
    matrices)."""
    if levels not in store:
        store[levels] = make()
    return store[levels]
