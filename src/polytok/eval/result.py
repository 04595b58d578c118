"""A metric value together with the protocol that produced it.

Reconstruction figures (rFID above all) move with the crop method, image count, reference set and
feature network, so every figure travels with a description of how it was measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricResult:
    """One figure: ``value`` (a float), an optional spread ``std`` and the ``protocol`` dict."""

    value: float
    protocol: dict[str, Any] = field(default_factory=dict)
    std: float | None = None

    def __float__(self) -> float:
        return float(self.value)

    def format(self, digits: int = 4) -> str:
        """Human-readable value, e.g. ``'12.3456'`` or ``'9.1200 ± 0.3000'``."""
        if math.isinf(self.value) or math.isnan(self.value):
            text = str(self.value)
        else:
            text = f"{self.value:.{digits}f}"
        if self.std is not None:
            text += f" ± {self.std:.{digits}f}"
        return text

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"value": self.value, "protocol": dict(self.protocol)}
        if self.std is not None:
            out["std"] = self.std
        return out


def describe_images(images_seen: int, **extra: Any) -> dict[str, Any]:
    """Protocol fields shared by the image metrics."""
    return {"num_images": int(images_seen), **extra}
