"""Key mapping from the official UniTok modules to polytok's.

Official layouts (read from its ``models/vqvae.py`` and ``open_clip/transformer.py``):

- ``AttnProjection``: ``norm3`` + ``proj`` (the linear path), ``norm1`` + ``attn`` (``qkv.weight`` without
  bias, separate ``q_bias`` / ``v_bias``, a constant ``zero_k_bias`` buffer, ``proj``), ``norm2`` + ``mlp``
  (GeGLU with its own ``norm``, ``w0``, ``w1``, ``w2``).
- open_clip ``TextTransformer``: ``token_embedding``, ``positional_embedding``,
  ``transformer.resblocks.<i>.{ln_1, attn.in_proj_*, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``,
  ``ln_final``, ``text_projection`` (a (width, out) matrix applied on the right).
"""

from __future__ import annotations

import torch

from polytok.convert.state import StateMapper


def map_attention_projection(m: StateMapper, src: str, dst: str) -> None:
    """Official ``AttnProjection`` at ``src`` -> :class:`polytok.nn.AttentionProjection` at ``dst``."""
    m.copy(f"{src}.norm3", f"{dst}.norm_linear")
    m.copy(f"{src}.proj", f"{dst}.linear")
    m.copy(f"{src}.norm1", f"{dst}.norm_attn")
    m.put(f"{dst}.attn.qkv.weight", m.take(f"{src}.attn.qkv.weight"))
    q_bias, v_bias = m.take(f"{src}.attn.q_bias"), m.take(f"{src}.attn.v_bias")
    if m.has(f"{src}.attn.zero_k_bias"):
        m.drop(f"{src}.attn.zero_k_bias", must_be_zero=True)
    m.put(f"{dst}.attn.qkv.bias", torch.cat([q_bias, torch.zeros_like(q_bias), v_bias]))
    m.copy(f"{src}.attn.proj", f"{dst}.attn.proj")
    m.copy(f"{src}.norm2", f"{dst}.norm_mlp")
    for name in ("norm", "w0", "w1", "w2"):
        m.copy(f"{src}.mlp.{name}", f"{dst}.mlp.{name}")


def map_text_blocks(m: StateMapper, src: str, dst: str, depth: int) -> None:
    """open_clip ``Transformer`` resblocks at ``src`` -> :class:`polytok.nn.Transformer` at ``dst``."""
    for i in range(depth):
        s, d = f"{src}.resblocks.{i}", f"{dst}.blocks.{i}"
        m.copy(f"{s}.ln_1", f"{d}.norm1")
        m.put(f"{d}.attn.qkv.weight", m.take(f"{s}.attn.in_proj_weight"))
        m.put(f"{d}.attn.qkv.bias", m.take(f"{s}.attn.in_proj_bias"))
        m.copy(f"{s}.attn.out_proj", f"{d}.attn.proj")
        m.copy(f"{s}.ln_2", f"{d}.norm2")
        m.copy(f"{s}.mlp.c_fc", f"{d}.mlp.fc1")
        m.copy(f"{s}.mlp.c_proj", f"{d}.mlp.fc2")


def map_text_tower(m: StateMapper, src: str, dst: str, depth: int) -> None:
    """open_clip ``TextTransformer`` at ``src`` -> :class:`polytok.models.text.TextTransformer` at ``dst``."""
    prefix = f"{src}." if src else ""
    m.copy(f"{prefix}token_embedding", f"{dst}.token_embedding", ("weight",))
    m.copy(f"{prefix}positional_embedding", f"{dst}.positional_embedding", ())
    map_text_blocks(m, f"{prefix}transformer", f"{dst}.transformer", depth)
    m.copy(f"{prefix}ln_final", f"{dst}.ln_final")
    m.put(f"{dst}.text_projection.weight", m.take(f"{prefix}text_projection").t().contiguous())
