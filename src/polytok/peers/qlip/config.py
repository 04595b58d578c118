"""QLIP (NVlabs/QLIP) as a typed config: the layout of its ``QLIPModel``, read from the official code.

    image [0, 1] -> (x - mean) / std -> ViT encoder (class token + patches, EVA-style blocks)
      patches -> MLP 768 -> 768 -> 28 -> L2 norm -> BSQ, 28 bits   -> codes (B, 16, 16), one per patch
      class token -> LayerNorm -> Linear 768 -> 512 -> L2 norm       -> image embedding (not from the codes)
    code vectors ±1/sqrt(28) -> MLP 28 -> 768 -> 768 -> ViT decoder -> Linear + tanh -> Linear -> patches
    token ids -> causal text transformer, pooled at the first end token -> Linear -> L2 norm

A tower's blocks are pre-norm transformer blocks with optional EVA-02 features (``subln``: a LayerNorm
inside the attention before its output projection and inside the MLP before its last Linear; ``swiglu``:
SiLU-gated MLP; ``rope``: 2-D rotary position embedding on the patch tokens; ``k_bias``: EVA has none).

``QLIP_B16_256`` is the published QLIP-B-16-256 as polytok assumes it where the released ``config.json``
was not at hand (EVA02-CLIP-B/16's towers at 256 px, 28 bits, a decoder of the encoder's size); a
converted folder always follows its own ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from polytok.config import ConfigError, from_dict

# Activations a QLIP tower may name (transformers' names) for its GELU MLPs.
ACTIVATIONS = ("gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "silu")


@dataclass
class QlipTowerConfig:
    """A transformer tower of ``layers`` pre-norm blocks of width ``width``."""

    width: int = 768
    mlp_width: int = 2048
    layers: int = 12
    heads: int = 12
    norm_eps: float = 1e-6
    q_bias: bool = True
    k_bias: bool = False
    v_bias: bool = True
    subln: bool = True
    swiglu: bool = True
    rope: bool = True
    activation: str = "gelu"

    def check(self, key: str) -> None:
        for name in ("width", "mlp_width", "layers", "heads"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key {key}.{name} must be positive, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(
                f"config key {key}.width ({self.width}) must be a multiple of heads ({self.heads})"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"config key {key}.activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        if self.rope and (self.width // self.heads) % 4:
            raise ConfigError(f"config key {key}: rotary embedding needs a head width divisible by 4")


def _text_tower() -> QlipTowerConfig:
    # EVA02-CLIP-B/16's text tower, open_clip's CLIP text transformer
    return QlipTowerConfig(
        width=512, mlp_width=2048, layers=12, heads=8, norm_eps=1e-5, k_bias=True, subln=False, swiglu=False,
        rope=False,
    )  # fmt: skip


@dataclass
class QlipQuantizerConfig:
    """The bottleneck: ``embed`` "mlp" (Linear, GELU, Linear to ``bits``; back: Linear, GELU, Linear) or
    "identity" (``bits`` = the encoder width); ``normalize`` L2-normalises before the quantizer
    (QLIP's ``quantizer_l2_norm``); ``spherical`` codes are ±1/sqrt(bits) (BSQ; else ±1, LFQ).
    ``group_size``, ``inv_temperature``, ``beta``, ``gamma0``, ``gamma1``: the training entropy and
    commitment terms (BSQ's); they do not change the codes."""

    bits: int = 28
    embed: str = "mlp"
    normalize: bool = True
    spherical: bool = True
    group_size: int = 7
    inv_temperature: float = 1.0
    beta: float = 0.0
    gamma0: float = 1.0
    gamma1: float = 1.0


@dataclass
class QlipConfig:
    """Everything that defines a QLIP model (see the module docstring)."""

    name: str = "qlip-b16-256"
    image_size: int = 256
    patch_size: int = 16
    encoder: QlipTowerConfig = field(default_factory=QlipTowerConfig)
    quantizer: QlipQuantizerConfig = field(default_factory=QlipQuantizerConfig)
    decoder: QlipTowerConfig = field(default_factory=QlipTowerConfig)
    text: QlipTowerConfig = field(default_factory=_text_tower)
    vocab_size: int = 49408
    context_length: int = 77
    eos_token_id: int = 49407
    embed_dim: int = 512
    vision_projection_bias: bool = True
    text_projection_bias: bool = False
    # CLIP's image normalisation (QLIP's CLIPImageProcessor)
    mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "vocab_size", "context_length", "embed_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config key {name} must be positive, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"config key image_size ({self.image_size}) must be a multiple of patch_size "
                f"({self.patch_size})"
            )
        for key in ("encoder", "decoder", "text"):
            getattr(self, key).check(key)
        q = self.quantizer
        if not 1 <= q.bits <= 62:
            raise ConfigError(f"config key quantizer.bits must be in [1, 62] (an int64 index), got {q.bits}")
        if q.embed not in ("mlp", "identity"):
            raise ConfigError(f"config key quantizer.embed must be 'mlp' or 'identity', got {q.embed!r}")
        if q.embed == "identity" and q.bits != self.encoder.width:
            raise ConfigError(
                f"config key quantizer.bits ({q.bits}) must equal encoder.width ({self.encoder.width}) "
                "without an embedding MLP"
            )
        if q.group_size <= 0 or q.bits % q.group_size or q.group_size > 16:
            raise ConfigError(
                f"config key quantizer.group_size must divide bits and be <= 16, got {q.group_size}"
            )
        if q.inv_temperature <= 0:
            raise ConfigError(
                f"config key quantizer.inv_temperature must be positive, got {q.inv_temperature}"
            )
        if not 0 <= self.eos_token_id < self.vocab_size:
            raise ConfigError(f"config key eos_token_id must be in [0, vocab_size), got {self.eos_token_id}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError("config keys mean / std must hold 3 values (std > 0)")

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QlipConfig:
        """Strict parse; a ConfigError names the offending key."""
        return from_dict(cls, data)
