"""Encoders, decoders, semantic heads, text towers and the :class:`Tokenizer` that composes them."""

from polytok.models.config import TokenizerConfig
from polytok.models.registry import get_preset_config, list_presets, register_preset
from polytok.models.tokenizer import Tokenizer, TokenizerOutput

__all__ = [
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerOutput",
    "get_preset_config",
    "list_presets",
    "register_preset",
]
