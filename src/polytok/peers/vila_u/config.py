"""VILA-U's unified vision tower as a typed config (layout read from mit-han-lab/vila-u, ``rqvaesiglip/``).

    image [0, 1] -> (x - 0.5) / 0.5 -> SigLIP vision tower, blocks 1 .. L-1 -> (B, 16, 16, 1024)
      -> residual VQ (depth 4, 16384 codes, EMA k-means)            -> codes (B, 16, 16, 4)
    sum of the code vectors -> 1 x 1 conv (post_quant_conv) -> CNN decoder (RQ-VAE's) -> image
    sum of the code vectors -> SigLIP's last block -> post-layernorm -> pooling head -> L2 norm
    texts -> SentencePiece -> SigLIP text tower (pooled last token, head) -> L2 norm

``siglip`` holds the transformers ``SiglipConfig`` (``vision_config`` and ``text_config``); VILA-U reads
it from the hub by name (``pretrained_model``), polytok keeps it in the config so that nothing is fetched.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from polytok.config import ConfigError, from_dict

# google/siglip-large-patch16-256, the SigLIP VILA-U's 256 px tower starts from (its vision tower is the
# one polytok.models.encoders.SIGLIP_LARGE_256 describes; here with its text tower).
SIGLIP_LARGE_PATCH16_256: dict[str, Any] = {
    "vision_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 256,
        "patch_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
    "text_config": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "vocab_size": 32000,
        "max_position_embeddings": 64,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
}

# SigLIP configs VILA-U may name in ``pretrained_model``, known without the hub.
KNOWN_SIGLIP_CONFIGS: dict[str, dict[str, Any]] = {
    "google/siglip-large-patch16-256": SIGLIP_LARGE_PATCH16_256,
}


@dataclass
class VilaUQuantizerConfig:
    """RQ-VAE's bottleneck on the SigLIP features: ``levels`` residual levels of ``codebook_size`` codes
    of ``dim`` channels (the SigLIP width: no projection), one codebook for all levels when
    ``shared_codebook``; EMA k-means (``decay``), unused codes restarted in training."""

    dim: int = 1024
    levels: int = 4
    codebook_size: int = 16384
    shared_codebook: bool = True
    decay: float = 0.99


@dataclass
class VilaUDecoderConfig:
    """RQ-VAE's CNN decoder (its ``ddconfig``): a 1 x 1 convolution to ``z_channels``, then ``conv_in``, a
    middle (res, attention, res), per resolution from the lowest ``num_res_blocks + 1`` residual blocks
    (self-attention after each at the lowest resolution when ``attention``: RQ-VAE's ``attn_resolutions``)
    and a nearest x2 + conv upsample, GroupNorm, SiLU, ``conv_out`` to RGB in [-1, 1]."""

    z_channels: int = 256
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    attention: bool = True


@dataclass
class VilaUConfig:
    """Everything that defines a VILA-U vision tower (see the module docstring)."""

    name: str = "vila-u"
    siglip: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SIGLIP_LARGE_PATCH16_256))
    quantizer: VilaUQuantizerConfig = field(default_factory=VilaUQuantizerConfig)
    decoder: VilaUDecoderConfig = field(default_factory=VilaUDecoderConfig)
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    # SigLIP's tokenizer: lower-cased, punctuation removed, </s> appended, padded with </s>
    do_lower_case: bool = True

    def __post_init__(self) -> None:
        vision, text = self.vision_config, self.text_config
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"):
            if not isinstance(vision.get(key), int) or vision[key] <= 0:
                raise ConfigError(f"config key siglip.vision_config.{key} must be a positive int")
        for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
            if not isinstance(text.get(key), int) or text[key] <= 0:
                raise ConfigError(f"config key siglip.text_config.{key} must be a positive int")
        if vision["num_hidden_layers"] < 2:
            raise ConfigError("config key siglip.vision_config.num_hidden_layers must be >= 2 (VILA-U "
                              "quantizes the second-to-last layer)")  # fmt: skip
        if vision["image_size"] % vision["patch_size"]:
            raise ConfigError("config key siglip.vision_config.image_size must be a multiple of patch_size")
        q, d = self.quantizer, self.decoder
        if q.dim != vision["hidden_size"]:
            raise ConfigError(
                f"config key quantizer.dim ({q.dim}) must equal siglip.vision_config.hidden_size "
                f"({vision['hidden_size']}): VILA-U quantizes the SigLIP features themselves"
            )
        for key, value in (("levels", q.levels), ("codebook_size", q.codebook_size)):
            if value <= 0:
                raise ConfigError(f"config key quantizer.{key} must be positive, got {value}")
        if not 0.0 < q.decay < 1.0:
            raise ConfigError(f"config key quantizer.decay must be in (0, 1), got {q.decay}")
        if not d.ch_mult or any(m <= 0 for m in d.ch_mult) or min(d.ch, d.z_channels) <= 0:
            raise ConfigError("config keys decoder.ch, ch_mult and z_channels must be positive")
        if d.num_res_blocks < 0:
            raise ConfigError(f"config key decoder.num_res_blocks must be >= 0, got {d.num_res_blocks}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError("config keys mean / std must hold 3 values (std > 0)")

    @property
    def vision_config(self) -> dict[str, Any]:
        return self.siglip.get("vision_config") or {}

    @property
    def text_config(self) -> dict[str, Any]:
        return self.siglip.get("text_config") or {}

    @property
    def image_size(self) -> int:
        return int(self.vision_config["image_size"])

    @property
    def patch_size(self) -> int:
        return int(self.vision_config["patch_size"])

    @property
    def context_length(self) -> int:
        """Text tokens per caption: SigLIP's position table (64), every caption padded to it."""
        return int(self.text_config.get("max_position_embeddings", 64))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VilaUConfig:
        """Strict parse; a ConfigError names the offending key."""
        return from_dict(cls, data)
