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

from typing import Any

import torch
from torch import Tensor

from polytok.convert.checkpoint import args_of, check_arg, tensors_of
from polytok.convert.state import ConversionError, StateMapper
from polytok.models.config import TokenizerConfig
from polytok.models.text import CLIP_BPE_VOCAB_SIZE, ByteTextTokenizer
from polytok.models.tokenizer import Tokenizer


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


# -- the whole model --------------------------------------------------------------------------------

# ViTamin encoders UniTok names by timm model name (its models/vitamin.py).
VITAMIN_ENCODERS: dict[str, dict[str, Any]] = {
    "vitamin_large": {
        "width": 1024,
        "depth": 31,
        "heads": 16,
        "stem_width": 160,
        "stage_widths": [160, 320],
        "stage_depths": [2, 4],
    },
    "vitamin_base": {
        "width": 768,
        "depth": 14,
        "heads": 12,
        "stem_width": 128,
        "stage_widths": [128, 256],
        "stage_depths": [2, 4],
    },
}
_CONV_NAMES = {"conv1_1x1": "expand", "conv2_kxk": "depthwise", "conv3_1x1": "project"}
_QUANT_STATISTICS = ("usage_ema", "initialized", "steps", "_dropout_steps", "cluster_size", "embed_sum")


def check_unitok_args(args: dict[str, Any], cfg: TokenizerConfig) -> None:
    """The checkpoint's ``args`` must describe the target config's architecture."""
    what = "UniTok checkpoint"
    q, s, e = cfg.quantizer, cfg.semantic, cfg.encoder
    if q.kind != "mcq":
        raise ConversionError(f"{what}: the target quantizer must be 'mcq', got {q.kind!r}")
    check_arg(args, "num_query", 0, what, "no query tokens")
    kind = {"attention": "attn", "linear": "linear"}.get(cfg.projection.kind)
    check_arg(args, "quant_proj", kind, what, "projection.kind")
    check_arg(args, "vocab_width", q.dim, what, "quantizer.dim")
    check_arg(args, "num_codebooks", q.num_codebooks, what, "quantizer.num_codebooks")
    check_arg(args, "vocab_size", q.codebook_size * q.num_codebooks, what, "codebook_size x num_codebooks")
    if "vocab_norm" in args:
        check_arg(args, "vocab_norm", q.normalize, what, "quantizer.normalize")
    check_arg(args, "embed_dim", s.embed_dim, what, "semantic.embed_dim")
    t = s.text_tower
    if s.kind != "contrastive" or t.kind != "transformer":
        raise ConversionError(f"{what}: the target needs a contrastive branch and a 'transformer' text tower")
    for key, value, name in (
        ("text_width", t.width, "width"),
        ("text_heads", t.heads, "heads"),
        ("text_layers", t.depth, "depth"),
        ("text_context_length", t.context_length, "context_length"),
    ):
        check_arg(args, key, value, what, f"semantic.text_tower.{name}")
    vocab_size = CLIP_BPE_VOCAB_SIZE if t.vocab == "clip_bpe" else ByteTextTokenizer.vocab_size
    check_arg(args, "text_vocab_size", vocab_size, what, f"the {t.vocab!r} text vocabulary size")
    known = VITAMIN_ENCODERS.get(args.get("model", ""))
    if known is not None:  # other encoders are checked by tensor shapes alone
        for key in known:
            check_arg(known, key, getattr(e, key), what, f"encoder.{key} (for {args['model']!r})")


def _copy_renamed(m: StateMapper, src: str, dst: str) -> None:
    """Every key under ``src.`` -> ``dst.``, with ViTamin's conv names replaced by polytok's."""
    back = {v: k for k, v in _CONV_NAMES.items()}
    m.map_prefix(f"{src}.", f"{dst}.", lambda rest: ".".join(back.get(p, p) for p in rest.split(".")))
    for key in m.keys_under(f"{src}."):
        rest = ".".join(_CONV_NAMES.get(part, part) for part in key[len(src) + 1 :].split("."))
        m.put(f"{dst}.{rest}", m.take(key))


def _map_vit_blocks(m: StateMapper, src: str, dst: str) -> None:
    """timm ViT blocks (GeGLU MLP with its own norm) -> polytok Transformer blocks: same leaf names."""
    m.map_prefix(f"{src}.", f"{dst}.")
    for key in m.keys_under(f"{src}."):
        m.put(f"{dst}.{key[len(src) + 1 :]}", m.take(key))


def map_unitok(m: StateMapper, cfg: TokenizerConfig) -> None:
    """The official ``UniTok`` state dict -> a polytok Tokenizer's (see the module docstring)."""
    backbone = "encoder.patch_embed.backbone"
    m.copy(f"{backbone}.stem.conv1", "encoder.stem.stem.0")
    m.copy(f"{backbone}.stem.norm1", "encoder.stem.stem.1")
    m.copy(f"{backbone}.stem.conv2", "encoder.stem.stem.3")
    for stage, depth in enumerate(cfg.encoder.stage_depths):
        for b in range(depth):
            s, d = f"{backbone}.stages.{stage}.{b}", f"encoder.stem.stages.{stage}.{b}"
            if m.has(f"{s}.shortcut.expand.weight") or m.has(f"{s}.shortcut.expand.bias"):  # pool, 1x1 conv
                m.copy(f"{s}.shortcut.expand", f"{d}.shortcut.1")
            elif m.has(f"{s}.shortcut.weight"):
                m.copy(f"{s}.shortcut", f"{d}.shortcut")
            for name in ("pre_norm", "conv1_1x1", "conv2_kxk", "conv3_1x1"):
                m.copy(f"{s}.{name}", f"{d}.{_CONV_NAMES.get(name, name)}")
    m.copy(f"{backbone}.pool.norm", "encoder.stem.down_norm")
    m.copy(f"{backbone}.pool.proj", "encoder.stem.down")
    m.drop("encoder.pos_embed", must_be_zero=True)  # UniTok's placeholder: a frozen all-zero position
    _map_vit_blocks(m, "encoder.blocks", "encoder.transformer.blocks")
    m.copy("encoder.norm", "encoder.norm")

    for src, dst in (("quant_proj", "projection"), ("post_quant_proj", "post_projection")):
        if cfg.projection.kind == "attention":
            map_attention_projection(m, src, dst)
        else:
            m.copy(src, dst)
    books = []
    for i in range(cfg.quantizer.num_codebooks):
        books.append(m.take(f"quantizer.codebooks.{i}.codebook.weight"))
        m.drop(f"quantizer.codebooks.{i}.vocab_usage")  # usage statistics, not weights
    m.put("quantizer.codebooks.0.embed", torch.stack(books))

    _map_vit_blocks(m, "decoder.blocks", "pixel_decoder.transformer.blocks")
    m.copy("decoder.norm", "pixel_decoder.norm")
    up = "pixel_decoder.upsampler"
    m.copy("decoder.up_conv1.conv", f"{up}.up_in.conv")
    for stage in range(len(cfg.pixel_decoder.up_widths)):
        _copy_renamed(m, f"decoder.up_conv{stage + 2}", f"{up}.stages.{stage}")
    last = f"decoder.up_conv{len(cfg.pixel_decoder.up_widths) + 2}"
    m.copy(f"{last}.conv1.conv", f"{up}.up_out.conv")
    m.copy(f"{last}.norm1", f"{up}.norm_out")
    m.copy(f"{last}.conv2", f"{up}.conv_out")

    map_text_tower(m, "text_encoder", "text_tower", cfg.semantic.text_tower.depth)
    m.copy("fc_norm", "clip_head.norm")
    m.copy("projection", "clip_head.proj")
    m.put("log_logit_scale", m.take("logit_scale").reshape(1))


def fill_quantizer_statistics(
    state: dict[str, Tensor], expected: dict[str, Tensor], mapper: StateMapper | None = None
) -> dict[str, Tensor]:
    """Add the polytok quantizer's own statistics buffers (fresh, marked initialised) to ``state``;
    any other key the target has and ``state`` lacks is an error naming it (by its official name when
    ``mapper`` knows it)."""
    out = dict(state)
    for key, value in expected.items():
        if key in out:
            continue
        if key.startswith("quantizer.") and key.rsplit(".", 1)[-1] in _QUANT_STATISTICS:
            out[key] = torch.ones_like(value) if key.endswith(".initialized") else value.clone()
        else:
            if mapper is not None:
                raise mapper.missing_target(key)
            raise ConversionError(f"conversion produced no tensor for the target's key {key!r}")
    return out


def convert_unitok(checkpoint: dict[str, Any], cfg: TokenizerConfig) -> Tokenizer:
    """UniTok's ``torch.save({'args', 'epoch', 'iter', 'trainer': {..., 'unitok': state}})`` -> Tokenizer."""
    trainer = checkpoint.get("trainer")
    if not isinstance(trainer, dict) or "unitok" not in trainer:
        evotok_like = "model" in checkpoint or "ema" in checkpoint
        hint = "; it looks like an EvoTok checkpoint ('polytok convert evotok')" if evotok_like else ""
        raise ConversionError(f"UniTok checkpoint: no 'trainer' -> 'unitok' state dict in the file{hint}")
    check_unitok_args(args_of(checkpoint, "UniTok checkpoint"), cfg)
    mapper = StateMapper(tensors_of(trainer["unitok"], "trainer.unitok"), "UniTok checkpoint")
    map_unitok(mapper, cfg)
    target = mapper.finish()
    tok = Tokenizer(cfg, load_backbone_weights=False)
    tok.load_checkpoint_state(
        fill_quantizer_statistics(target, tok.checkpoint_state_dict(), mapper), "UniTok"
    )
    return tok.eval()
