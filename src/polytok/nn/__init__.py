"""Building blocks shared by encoders and decoders: attention, MLPs, transformer blocks, conv stems and
upsamplers, and the attention projection between a wide feature space and a narrow code space."""

from polytok.nn.attention import MultiHeadAttention
from polytok.nn.conv import (
    ConvUpsampler,
    HybridConvStem,
    InvertedMBConvBlock,
    LayerNorm2d,
    MBConvBlock,
    Upsample2d,
)
from polytok.nn.mlp import GeGluMlp, Mlp
from polytok.nn.posemb import resize_position_map, sincos_2d
from polytok.nn.projection import AttentionProjection, LinearProjection, TanhMlpProjection
from polytok.nn.transformer import Transformer, TransformerBlock
from polytok.nn.vqgan import VQGANDecoder, VQGANEncoder

__all__ = [
    "AttentionProjection",
    "ConvUpsampler",
    "GeGluMlp",
    "HybridConvStem",
    "InvertedMBConvBlock",
    "LayerNorm2d",
    "LinearProjection",
    "MBConvBlock",
    "Mlp",
    "MultiHeadAttention",
    "TanhMlpProjection",
    "Transformer",
    "TransformerBlock",
    "Upsample2d",
    "VQGANDecoder",
    "VQGANEncoder",
    "resize_position_map",
    "sincos_2d",
]
