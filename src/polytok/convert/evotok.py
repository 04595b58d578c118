"""Key mapping from the official EvoTok modules to polytok's.

Official layouts (read from its ``tokenizer/vq_model``):

- ``decoder_vqkd``: a BEiT-v2 ``VisionTransformer`` (``patch_embed.proj`` 1 x 1 conv, ``cls_token``,
  ``pos_embed``, ``blocks.<i>.{norm1, attn.{qkv.weight, q_bias, v_bias, proj}, norm2, mlp.{fc1, fc2}}``,
  ``fc_norm``) followed by ``decode_task_layer`` (Linear, Tanh, Linear).
- ``post_quant_conv`` (1 x 1) then ``decoder``: the VQGAN CNN (``conv_in``, ``mid.{0, 1, 2}``,
  ``conv_blocks.<i>.{res, attn, upsample}``, ``norm_out``, ``conv_out``) with separate q / k / v
  convolutions in its attention blocks.
"""

from __future__ import annotations

import torch

from polytok.convert.state import ConversionError, StateMapper


def _qv_bias(m: StateMapper, src: str) -> torch.Tensor:
    q_bias, v_bias = m.take(f"{src}.q_bias"), m.take(f"{src}.v_bias")
    return torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])


def map_semantic_decoder(m: StateMapper, vit: str, head: str, dst: str, depth: int) -> None:
    """``decoder_vqkd`` at ``vit`` and ``decode_task_layer`` at ``head`` ->
    :class:`polytok.models.decoders.BeitSemanticDecoder` at ``dst``."""
    conv = m.take(f"{vit}.patch_embed.proj.weight")
    if conv.shape[-2:] != (1, 1):
        raise ConversionError(f"{m.what}: semantic decoder patch embedding is not 1 x 1: {tuple(conv.shape)}")
    m.put(f"{dst}.proj_in.weight", conv.flatten(1))
    m.copy(f"{vit}.patch_embed.proj", f"{dst}.proj_in", ("bias",))
    m.copy(f"{vit}.cls_token", f"{dst}.cls_token", ())
    m.copy(f"{vit}.pos_embed", f"{dst}.pos_embed", ())
    for i in range(depth):
        s, d = f"{vit}.blocks.{i}", f"{dst}.transformer.blocks.{i}"
        m.copy(f"{s}.norm1", f"{d}.norm1")
        m.put(f"{d}.attn.qkv.weight", m.take(f"{s}.attn.qkv.weight"))
        m.put(f"{d}.attn.qkv.bias", _qv_bias(m, f"{s}.attn"))
        m.copy(f"{s}.attn.proj", f"{d}.attn.proj")
        m.copy(f"{s}.norm2", f"{d}.norm2")
        m.copy(f"{s}.mlp.fc1", f"{d}.mlp.fc1")
        m.copy(f"{s}.mlp.fc2", f"{d}.mlp.fc2")
    m.copy(f"{vit}.fc_norm", f"{dst}.norm")
    m.copy(f"{head}.0", f"{dst}.head.fc1")
    m.copy(f"{head}.2", f"{dst}.head.fc2")


def _map_res_block(m: StateMapper, src: str, dst: str) -> None:
    for name in ("norm1", "conv1", "norm2", "conv2"):
        m.copy(f"{src}.{name}", f"{dst}.{name}")
    if m.has(f"{src}.nin_shortcut.weight"):
        m.copy(f"{src}.nin_shortcut", f"{dst}.shortcut")


def _map_attn_block(m: StateMapper, src: str, dst: str) -> None:
    m.copy(f"{src}.norm", f"{dst}.norm")
    for leaf in ("weight", "bias"):
        parts = [m.take(f"{src}.{name}.{leaf}") for name in ("q", "k", "v")]
        m.put(f"{dst}.qkv.{leaf}", torch.cat(parts))
    m.copy(f"{src}.proj_out", f"{dst}.proj")


def map_pixel_decoder(
    m: StateMapper, conv: str, cnn: str, dst: str, num_levels: int, num_res_blocks: int
) -> None:
    """``post_quant_conv`` at ``conv`` and the VQGAN ``decoder`` at ``cnn`` ->
    :class:`polytok.models.decoders.CNNPixelDecoder` at ``dst``."""
    m.copy(conv, f"{dst}.post_quant_conv")
    m.copy(f"{cnn}.conv_in", f"{dst}.cnn.conv_in")
    _map_res_block(m, f"{cnn}.mid.0", f"{dst}.cnn.mid.0")
    _map_attn_block(m, f"{cnn}.mid.1", f"{dst}.cnn.mid.1")
    _map_res_block(m, f"{cnn}.mid.2", f"{dst}.cnn.mid.2")
    for i in range(num_levels):  # official index i runs from the lowest resolution up, as polytok's
        src, out = f"{cnn}.conv_blocks.{i}", f"{dst}.cnn.levels.{i}"
        with_attn = i == 0
        step = 2 if with_attn else 1
        for j in range(num_res_blocks + 1):
            _map_res_block(m, f"{src}.res.{j}", f"{out}.{step * j}")
            if with_attn:
                _map_attn_block(m, f"{src}.attn.{j}", f"{out}.{step * j + 1}")
        if i != num_levels - 1:
            m.copy(f"{src}.upsample.conv", f"{out}.{step * (num_res_blocks + 1)}.conv")
    m.copy(f"{cnn}.norm_out", f"{dst}.cnn.norm_out")
    m.copy(f"{cnn}.conv_out", f"{dst}.cnn.conv_out")
