"""The value every polytok loss module returns: a differentiable total plus detached terms for logging."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class LossOutput:
    """Result of a loss module.

    Attributes:
        loss: scalar tensor to back-propagate (already weighted).
        terms: detached scalar tensors by name (raw unweighted values, factors and the weighted total),
            for logging only. Keys are flat strings such as ``"l1"``, ``"lpips"``, ``"adaptive_weight"``.
    """

    loss: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)

    def prefixed(self, prefix: str) -> dict[str, Tensor]:
        """The terms with ``prefix`` added to every key (e.g. ``"rec/"``), to merge several losses' logs."""
        return {f"{prefix}{name}": value for name, value in self.terms.items()}


def detached(value: Tensor) -> Tensor:
    """A float32 detached copy of a scalar, safe to keep for logging without holding the graph."""
    return value.detach().float()
