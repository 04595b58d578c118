"""Registry of frozen pretrained networks, built by name (like timm's model registry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass(frozen=True)
class PretrainedEntry:
    """One registered network: its builder and the package that ships its weights."""

    name: str
    builder: Callable[..., nn.Module]
    weights_package: str
    description: str


_REGISTRY: dict[str, PretrainedEntry] = {}


def register_pretrained(
    name: str, weights_package: str, description: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder(weights_path=None, **kwargs) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"pretrained network {name!r} is already registered")
        _REGISTRY[name] = PretrainedEntry(name, builder, weights_package, description)
        return builder

    return wrap


def list_pretrained() -> list[str]:
    """Names accepted by :func:`load_pretrained`, sorted."""
    return sorted(_REGISTRY)


def pretrained_entry(name: str) -> PretrainedEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown pretrained network {name!r}; known: {', '.join(list_pretrained())}")
    return _REGISTRY[name]


def freeze_(module: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter and switch to eval mode, in place."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


def load_pretrained(
    name: str, *, weights_path: str | Path | None = None, freeze: bool = True, **kwargs
) -> nn.Module:
    """Build the pretrained network ``name`` with its real weights.

    Args:
        name: one of :func:`list_pretrained` (``"efficientnet-lite0"``, ``"minilm-l6"``, ...).
        weights_path: a local weights file or folder; by default the installed weights package.
        freeze: ``True`` (default) gives a frozen network: no parameter requires grad and it stays in
            eval mode even when a parent module calls ``.train()``.
        kwargs: passed to the network's builder.

    Raises ``MissingWeightsError`` (a ``FileNotFoundError``) naming the package to install when the
    weights are absent; a randomly initialised network is never returned.
    """
    entry = pretrained_entry(name)
    module = entry.builder(weights_path=weights_path, **kwargs)
    if freeze:
        freeze_(module)
    module.frozen = freeze
    return module
