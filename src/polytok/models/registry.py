"""Presets by name, like a model zoo: ``register_preset``, ``list_presets``, ``get_preset_config``."""

from __future__ import annotations

import copy
from typing import Any

from polytok.models.config import TokenizerConfig
from polytok.models.presets import BUILTIN_PRESETS

_PRESETS: dict[str, dict[str, Any]] = {}


def register_preset(name: str, config: dict[str, Any] | TokenizerConfig, *, overwrite: bool = False) -> None:
    """Register ``config`` (a dict in the config-file schema, or a TokenizerConfig) under ``name``.

    The config is validated now, so a broken preset fails at registration, not at first use.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("preset name must be a non-empty string")
    if name in _PRESETS and not overwrite:
        raise ValueError(f"preset {name!r} is already registered (pass overwrite=True to replace it)")
    data = config.to_dict() if isinstance(config, TokenizerConfig) else copy.deepcopy(config)
    data.setdefault("name", name)
    TokenizerConfig.from_dict(data)
    _PRESETS[name] = data


def list_presets() -> list[str]:
    """Names of all registered presets, sorted."""
    return sorted(_PRESETS)


def get_preset_dict(name: str) -> dict[str, Any]:
    """A copy of the raw config dict of preset ``name``."""
    if name not in _PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return copy.deepcopy(_PRESETS[name])


def get_preset_config(name: str) -> TokenizerConfig:
    """The parsed :class:`TokenizerConfig` of preset ``name`` (a fresh copy)."""
    return TokenizerConfig.from_dict(get_preset_dict(name))


for _name, _cfg in BUILTIN_PRESETS.items():
    register_preset(_name, _cfg)
