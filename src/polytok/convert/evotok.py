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

from typing import Any

import torch
from torch import Tensor

from polytok.convert.checkpoint import args_of, check_arg, tensors_of
from polytok.convert.state import ConversionError, StateMapper
from polytok.models.config import TokenizerConfig
from polytok.models.tokenizer import Tokenizer


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
    if m.has(f"{src}.nin_shortcut.weight") or m.has(f"{src}.nin_shortcut.bias"):  # one alone is missing
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


# -- the whole model --------------------------------------------------------------------------------

# EvoTok's --teacher choices fix the SigLIP tower and the semantic decoder (its vq_model/evotok.py).
EVOTOK_TEACHERS: dict[str, dict[str, int]] = {
    "siglip_256": {
        "width": 1024,
        "patch_size": 16,
        "decoder_width": 1024,
        "decoder_heads": 12,
        "decoder_depth": 3,
        "feature_dim": 1024,
    },
}
_QUANT_STATISTICS = ("usage_ema", "initialized", "steps", "_dropout_steps", "cluster_size", "embed_sum")


def check_evotok_args(args: dict[str, Any], cfg: TokenizerConfig, encoder_width: int) -> None:
    """The checkpoint's ``args`` must describe the target config (the parser's defaults differ from the
    released script, so nothing is assumed)."""
    what = "EvoTok checkpoint"
    q, s = cfg.quantizer, cfg.semantic
    if q.kind != "rvq" or s.kind != "distill" or s.decoder_layout != "beit":
        raise ConversionError(f"{what}: the target needs an 'rvq' quantizer and a 'beit' semantic decoder")
    check_arg(args, "vq_model", "EvoTok", what, "an EvoTok model")
    check_arg(args, "codebook_size", q.codebook_size, what, "quantizer.codebook_size")
    check_arg(args, "codebook_embed_dim", q.dim, what, "quantizer.dim")
    check_arg(args, "vqkd_depth", q.levels, what, "quantizer.levels")
    check_arg(args, "vqgan_depth", cfg.pixel_depth or q.levels, what, "pixel_depth")
    known = EVOTOK_TEACHERS.get(args.get("teacher", ""))
    if known is not None:  # other teachers are checked by tensor shapes alone
        have = {
            "width": encoder_width,
            "patch_size": int((cfg.encoder.hf_config or {}).get("patch_size", 0)),
            "decoder_width": s.decoder_width,
            "decoder_heads": s.decoder_heads,
            "decoder_depth": s.decoder_depth,
            "feature_dim": s.feature_dim,
        }
        for key in known:
            check_arg(known, key, have[key], what, f"{key} (for teacher {args['teacher']!r})")


def model_state_of(checkpoint: dict[str, Any]) -> tuple[str, dict[str, Tensor]]:
    """EvoTok's loaders take ``ema``, then ``model``, then ``state_dict``."""
    for key in ("ema", "model", "state_dict"):
        if key in checkpoint:
            return key, tensors_of(checkpoint[key], f"EvoTok checkpoint[{key!r}]")
    raise ConversionError(f"EvoTok checkpoint: no 'ema', 'model' or 'state_dict' (has {sorted(checkpoint)})")


def map_evotok(m: StateMapper, cfg: TokenizerConfig, siglip_target_keys: list[str]) -> None:
    """The official ``EvoTok`` state dict -> a polytok Tokenizer's."""
    # SigLIP tower: transformers 4.x nests it under `vision_model.`, 5.x does not; the target uses
    # whichever layout the installed transformers builds.
    nested = any(k.startswith("vision_model.") for k in siglip_target_keys)
    file_nested = any(k.startswith("encoder_vqkd.vision_model.") for k in m.source)
    m.map_prefix(
        "encoder_vqkd.vision_model." if file_nested else "encoder_vqkd.",
        f"encoder.model.{'vision_model.' if nested else ''}",
    )
    for key in m.keys_under("encoder_vqkd."):
        rest = key.removeprefix("encoder_vqkd.").removeprefix("vision_model.")
        if rest.startswith("head."):  # the pooling head: unused (features come from a hidden layer)
            m.drop(key)
            continue
        m.put(f"encoder.model.{'vision_model.' if nested else ''}{rest}", m.take(key))
    for leaf, name, values in (("shift", "mean", cfg.encoder.mean), ("scale", "std", cfg.encoder.std)):
        stored = m.take(f"scaling_layer.{leaf}").flatten()
        if not torch.allclose(stored, torch.tensor(values, dtype=stored.dtype)):
            raise ConversionError(
                f"EvoTok checkpoint: scaling_layer.{leaf} is {stored.tolist()} but encoder.{name} is {values}"
            )
    m.copy("encode_task_layer.0", "projection.fc1")
    m.copy("encode_task_layer.2", "projection.fc2")

    if m.has("quantize.codebook_used"):
        m.drop("quantize.codebook_used")  # usage record, not weights
    for level in range(cfg.quantizer.levels):
        src, dst = f"quantize.codebooks.{level}", f"quantizer.codebooks.{level}"
        m.put(f"{dst}.embed", m.take(f"{src}.weight")[:-1].unsqueeze(0))  # last row: padding index
        counts = m.take(f"{src}.cluster_size_ema").unsqueeze(0)
        m.put(f"{dst}.cluster_size", counts)
        m.put(f"{dst}.usage_ema", counts.clone())
        m.put(f"{dst}.embed_sum", m.take(f"{src}.embed_ema").unsqueeze(0))
        if m.has(f"{src}.step"):
            m.put(f"{dst}.steps", m.take(f"{src}.step").reshape(()).long())

    pd = cfg.pixel_decoder
    map_pixel_decoder(m, "post_quant_conv", "decoder", "pixel_decoder", len(pd.ch_mult), pd.num_res_blocks)
    depth = cfg.semantic.decoder_depth
    map_semantic_decoder(m, "decoder_vqkd", "decode_task_layer", "semantic_decoder", depth)


def convert_evotok(checkpoint: dict[str, Any], cfg: TokenizerConfig) -> Tokenizer:
    """EvoTok's ``save_ckpt`` file (``model`` / ``ema`` / ``state_dict`` plus ``args``) -> Tokenizer."""
    from polytok.convert.unitok import fill_quantizer_statistics

    if "trainer" in checkpoint:
        raise ConversionError(
            "EvoTok checkpoint: the file has a 'trainer' entry, the layout of UniTok's checkpoints "
            "('polytok convert unitok')"
        )
    tok = Tokenizer(cfg, load_backbone_weights=False)
    if cfg.pixel_decoder.kind != "cnn" or not cfg.pixel_decoder.z_channels:
        raise ConversionError("EvoTok checkpoint: the target needs a 'cnn' pixel decoder with z_channels")
    check_evotok_args(args_of(checkpoint, "EvoTok checkpoint"), cfg, tok.encoder.width)
    source, state = model_state_of(checkpoint)
    mapper = StateMapper(state, f"EvoTok checkpoint[{source!r}]")
    map_evotok(mapper, cfg, list(tok.encoder.model.state_dict()))
    target = fill_quantizer_statistics(mapper.finish(), tok.checkpoint_state_dict(), mapper)
    tok.load_checkpoint_state(target, "EvoTok")
    return tok.eval()
