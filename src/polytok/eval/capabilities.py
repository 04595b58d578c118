"""What a tokenizer offers the evaluation: its code layout, residual levels, codebook and semantic branch.

:func:`evaluate_tokenizer` and the metric families read a tokenizer through one
:class:`TokenizerCapabilities`, never through its class. :func:`capabilities_of` describes a polytok
``Tokenizer`` (or any duck-typed one) from its attributes; a tokenizer that is laid out otherwise (the peers
of :mod:`polytok.peers`: multi-scale codes, an image embedding that is not a function of the codes, 2^28
codes) describes itself with an ``eval_capabilities()`` method returning one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

# (images (B, 3, H, W), codes of the depth measured) -> (B, E) embedding
Embed = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TokenizerCapabilities:
    """What the evaluation may read of ``tokenizer``.

    Codes are (B, *positions, *code_shape): ``position_dims`` position axes ((h, w): 2; a flat sequence: 1),
    then ``code_shape`` ((), (C,), (L,) or (L, C), the level axis first). ``num_levels`` > 1: residual
    levels, whose prefixes are measured (depth curves); ``pixel_depth`` of them reach the pixel decoder.

    Codebook usage counts ``usage_codes(codes)`` (default: the codes themselves) as codes of
    ``usage_shape`` over ``usage_codebook_size`` entries (defaults: ``code_shape`` and ``codebook_size``);
    ``usage_note`` says what is counted when that is not the codes as they are.

    ``semantic_embedding(images, codes)`` -> (B, E), None without a semantic branch (``semantic_reason``
    says why); ``semantic_input`` names what it reads (``"codes"``, else its figures are labelled with it);
    ``semantic_levels``: the code depths it is defined at (None: every depth). ``encode_text``: the text
    tower (None: no zero-shot, ``text_reason`` says why). ``layout``: the code layout in words, when the
    shape alone does not say it.
    """

    tokenizer: Any
    codebook_size: int
    code_shape: tuple[int, ...] = ()
    position_dims: int = 2
    num_levels: int = 1
    pixel_depth: int = 1
    stride: int | None = None
    usage_codes: Callable[[Tensor], Tensor] | None = None
    usage_shape: tuple[int, ...] | None = None
    usage_codebook_size: int | None = None
    usage_note: str | None = None
    semantic_embedding: Embed | None = None
    semantic_input: str = "codes"
    semantic_levels: tuple[int, ...] | None = None
    semantic_reason: str | None = None
    encode_text: Callable[[Any], Tensor] | None = None
    text_reason: str | None = None
    code_embedding: Callable[[Tensor], Tensor] | None = None
    layout: str | None = None

    def semantic_at(self, levels: int) -> bool:
        """Whether the semantic embedding is defined at ``levels`` code levels."""
        return self.semantic_embedding is not None and (
            self.semantic_levels is None or levels in self.semantic_levels
        )

    def protocol(self) -> dict[str, Any]:
        """What the report records of the layout beyond the code shape."""
        out: dict[str, Any] = {}
        if self.layout:
            out["code_layout"] = self.layout
        if self.usage_note:
            out["codebook_usage_counts"] = self.usage_note
        if self.semantic_embedding is not None:
            out["semantic_input"] = self.semantic_input
        return out


def capabilities_of(tokenizer: Any) -> TokenizerCapabilities:
    """The tokenizer's own ``eval_capabilities()``, else what its attributes say (a polytok ``Tokenizer``:
    ``quantizer.code_shape`` / ``codebook_size`` / ``num_levels``, ``pixel_depth``, ``stride``, a semantic
    branch unless ``semantic_kind`` is ``"none"``, ``encode_text`` and ``code_embedding`` when present)."""
    own = getattr(tokenizer, "eval_capabilities", None)
    if callable(own):
        return own()
    quantizer = tokenizer.quantizer
    num_levels = int(getattr(quantizer, "num_levels", 1))
    # A tokenizer without the attribute decodes every level it is given.
    pixel_depth = min(int(getattr(tokenizer, "pixel_depth", num_levels) or num_levels), num_levels)
    embed, reason = None, None
    if not hasattr(tokenizer, "semantic_features"):
        reason = "the tokenizer has no semantic_features()"
    elif getattr(tokenizer, "semantic_kind", None) == "none":
        reason = "the tokenizer has no semantic branch (semantic.kind is 'none')"
    else:
        embed = lambda images, codes: tokenizer.semantic_features(codes)
    stride = getattr(tokenizer, "stride", None)
    return TokenizerCapabilities(
        tokenizer=tokenizer,
        codebook_size=int(quantizer.codebook_size),
        code_shape=tuple(int(s) for s in quantizer.code_shape),
        num_levels=num_levels,
        pixel_depth=pixel_depth,
        stride=int(stride) if stride else None,
        semantic_embedding=embed,
        semantic_reason=reason,
        encode_text=getattr(tokenizer, "encode_text", None),
        text_reason=None if hasattr(tokenizer, "encode_text") else "the tokenizer has no encode_text()",
        code_embedding=getattr(tokenizer, "code_embedding", None),
    )
