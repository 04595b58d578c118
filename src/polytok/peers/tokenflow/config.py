"""TokenFlow's tokenizer as a typed config (layout read from ByteFlow-AI/TokenFlow,
``tokenflow/tokenizer/vq_model.py``, teacher ``clipb_224``).

    image [0, 1] -> 2 x - 1 -> CLIP ViT-B/16 (OpenAI's, projection removed; positions resized to the
      grid) -> patch tokens after ln_post -> Linear-Tanh-Linear -> semantic stream (B, 16, 16, 32)
    image [0, 1] -> 2 x - 1 -> VQGAN CNN encoder -> 1 x 1 conv -> pixel stream (B, 16, 16, 8)
    both -> multi-scale residual quantization over a dual codebook (32768 pairs, one shared index),
      scales 1, 2, 4, ..., 14, 16                                      -> codes (B, 817)
    summed codes, pixel part -> 1 x 1 conv -> VQGAN CNN decoder (the "enhanced" one) -> image
    summed codes, semantic part -> BEiT-v2 ViT (3 blocks) -> Linear-Tanh-Linear -> CLIP-space tokens

TokenFlow trains the ``clipb_224`` tokenizer at 224 px (14 x 14 patches, scales 1, 2, 4, ..., 14) and
evaluates the released ``tokenflow_clipb_32k_enhanced.pt`` at 256 px with ``--infer_interpolate``: the
CLIP and semantic-decoder positions are resized from 14 x 14 to 16 x 16 (DINO's interpolation) and a
last scale of 16 is added. ``clip`` holds a transformers ``CLIPVisionConfig`` (OpenAI's ViT-B/16 sizes:
its ``image_size`` is the position table's, 224); ``image_size`` is the resolution the tokenizer runs at.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from polytok.config import ConfigError, from_dict

# OpenAI CLIP ViT-B/16's vision tower (TokenFlow's semantic encoder; width // 64 heads as OpenAI's loader).
CLIP_VIT_B16: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# TokenFlow's scale schedules for the clipb_224 teacher: at 224 px, and with --infer_interpolate (256 px).
SCALES_224 = [1, 2, 4, 6, 8, 10, 12, 14]
SCALES_256 = [*SCALES_224, 16]


@dataclass
class TokenFlowQuantizerConfig:
    """The dual codebook (``semantic_dim`` + ``pixel_dim`` channels per pair, ``codebook_size`` pairs, each
    stream L2-normalised, the index minimising the sum of the two squared distances) over ``scales``.
    ``beta``: TokenFlow's ``--commit-loss-beta`` (0.25)."""

    semantic_dim: int = 32
    pixel_dim: int = 8
    codebook_size: int = 32768
    scales: list[int] = field(default_factory=lambda: list(SCALES_256))
    beta: float = 0.25


@dataclass
class TokenFlowCNNConfig:
    """A VQGAN CNN (LlamaGen's, which TokenFlow keeps): ``ch`` x ``ch_mult`` channels per level,
    ``num_res_blocks`` per level (the decoder has one more), attention at the lowest resolution and in the
    middle, ``z_channels`` at the latent."""

    z_channels: int = 256
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2


def _enhanced_decoder() -> TokenFlowCNNConfig:
    return TokenFlowCNNConfig(ch=256, num_res_blocks=4)  # TokenFlow's --enhanced_decoder


@dataclass
class TokenFlowSemanticDecoderConfig:
    """``decoder_vqkd`` (a BEiT-v2 ViT on the semantic code map: 1 x 1 patch embedding, class token,
    learned positions for a ``grid`` x ``grid`` table, ``depth`` blocks of ``heads`` heads, LayerNorm) and
    ``decode_task_layer`` (Linear-Tanh-Linear to ``out_dim``, CLIP's joint space)."""

    width: int = 768
    depth: int = 3
    heads: int = 12
    out_dim: int = 512
    grid: int = 14


@dataclass
class TokenFlowConfig:
    """Everything that defines a TokenFlow tokenizer (see the module docstring)."""

    name: str = "tokenflow-256"
    image_size: int = 256
    clip: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(CLIP_VIT_B16))
    quantizer: TokenFlowQuantizerConfig = field(default_factory=TokenFlowQuantizerConfig)
    encoder: TokenFlowCNNConfig = field(default_factory=TokenFlowCNNConfig)
    decoder: TokenFlowCNNConfig = field(default_factory=_enhanced_decoder)
    semantic_decoder: TokenFlowSemanticDecoderConfig = field(default_factory=TokenFlowSemanticDecoderConfig)

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"):
            if not isinstance(self.clip.get(key), int) or self.clip[key] <= 0:
                raise ConfigError(f"config key clip.{key} must be a positive int")
        if self.clip["image_size"] % self.patch_size or self.image_size % self.patch_size:
            raise ConfigError(
                "config keys image_size and clip.image_size must be multiples of clip.patch_size"
            )
        q = self.quantizer
        if min(q.semantic_dim, q.pixel_dim, q.codebook_size) <= 0:
            raise ConfigError(
                "config keys quantizer.semantic_dim, pixel_dim and codebook_size must be positive"
            )
        if not q.scales or any(s <= 0 for s in q.scales) or q.scales != sorted(set(q.scales)):
            raise ConfigError(
                f"config key quantizer.scales must be increasing positive sizes, got {q.scales}"
            )
        if q.scales[-1] != self.grid:
            raise ConfigError(
                f"config key quantizer.scales must end at the token grid {self.grid} "
                f"(image_size {self.image_size} / patch {self.patch_size}), got {q.scales[-1]}"
            )
        for name, cnn in (("encoder", self.encoder), ("decoder", self.decoder)):
            if not cnn.ch_mult or min(cnn.ch, cnn.z_channels, *cnn.ch_mult) <= 0 or cnn.num_res_blocks < 0:
                raise ConfigError(
                    f"config keys {name}.ch, ch_mult, z_channels, num_res_blocks must be positive"
                )
            if 2 ** (len(cnn.ch_mult) - 1) != self.patch_size:
                raise ConfigError(
                    f"config key {name}.ch_mult: {len(cnn.ch_mult)} levels give a stride of "
                    f"{2 ** (len(cnn.ch_mult) - 1)}, but CLIP's patches are {self.patch_size} px"
                )
        s = self.semantic_decoder
        if min(s.width, s.depth, s.heads, s.out_dim, s.grid) <= 0 or s.width % s.heads:
            raise ConfigError("config keys semantic_decoder.* must be positive, heads dividing width")

    @property
    def patch_size(self) -> int:
        return int(self.clip["patch_size"])

    @property
    def grid(self) -> int:
        """Tokens per side at ``image_size`` (16 at 256 px)."""
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """Codes per image: sum of the scales' squares (817 for 1, 2, 4, ..., 16)."""
        return sum(s * s for s in self.quantizer.scales)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenFlowConfig:
        """Strict parse; a ConfigError names the offending key."""
        return from_dict(cls, data)
