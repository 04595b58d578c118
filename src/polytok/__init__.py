"""polytok: unified discrete image tokenizers.

One set of discrete tokens that decodes back to pixels (generation) and carries semantics
(understanding). UniTok (multi-codebook) and EvoTok (residual latent evolution) are presets of
one composable framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Heavy submodules load on first use so that `import polytok` stays cheap.
_LAZY = {
    "Tokenizer": ("polytok.models.tokenizer", "Tokenizer"),
    "list_presets": ("polytok.models.registry", "list_presets"),
}

if TYPE_CHECKING:  # pragma: no cover
    from polytok.models.registry import list_presets
    from polytok.models.tokenizer import Tokenizer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'polytok' has no attribute {name!r}")


__all__ = ["Tokenizer", "__version__", "list_presets"]
