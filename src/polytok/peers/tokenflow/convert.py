"""``polytok convert tokenflow CKPT OUT_DIR``: TokenFlow's released pickle -> a polytok TokenFlow tokenizer.

CKPT is a file TokenFlow's training script writes (``tokenizer/vq_train.py``: ``model``, ``optimizer``,
..., ``args`` an ``argparse.Namespace``, plus ``ema`` when trained with EMA) or a released one such as
``tokenflow_clipb_32k_enhanced.pt``; the state dict is taken from ``ema``, else ``model``, else
``state_dict`` (the order of TokenFlow's loaders). It is read with ``weights_only=True``: a file that
needs more is refused unless trusted.

Official layouts (read from ``tokenflow/tokenizer/``, teacher ``clipb_224``):

- ``encoder_vqkd``: OpenAI CLIP's ``VisionTransformer`` without ``proj`` (``class_embedding``,
  ``positional_embedding``, ``conv1``, ``ln_pre``, ``transformer.resblocks.<i>.{attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}``, ``ln_post``); heads = width // 64
  as OpenAI's loader; ``encode_task_layer`` (Linear, Tanh, Linear).
- ``encoder`` (LlamaGen's VQGAN encoder) and ``quant_conv``; ``quantize.embedding_vqkd`` /
  ``quantize.embedding_vqgan`` (raw; L2-normalised where used) and ``quantize.codebook_used`` (a record of
  recent indices, no weights: dropped).
- ``decoder_vqkd`` (BEiT-v2 ViT, 12 heads as TokenFlow's ``get_model_default_params``) and
  ``decode_task_layer``; ``post_quant_conv`` and ``decoder`` (the layout EvoTok kept).

The network is sized from the tensors; what they do not hold, the token grid and the scale schedule, is
TokenFlow's for the clipb_224 teacher: a 14 x 14 CLIP position table runs at 256 px with scales 1, 2, 4,
..., 14, 16 (``--infer_interpolate``, how the released tokenizer is evaluated). ``overrides`` (``--config
FILE`` on the command line) change any config key, e.g. ``{"image_size": 224, "quantizer": {"scales":
[1, 2, 4, 6, 8, 10, 12, 14]}}`` for the 224 px schedule.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import Tensor

from polytok.convert.checkpoint import read_checkpoint, tensors_of
from polytok.convert.evotok import map_pixel_decoder, map_semantic_decoder
from polytok.convert.llamagen import map_encoder
from polytok.convert.state import ConversionError, StateMapper
from polytok.peers.tokenflow.config import SCALES_256, TokenFlowConfig
from polytok.peers.tokenflow.model import TokenFlowTokenizer

WHAT = "TokenFlow checkpoint"
_STATE_ENTRIES = ("ema", "model", "state_dict")
_SEMANTIC_DECODER_HEADS = 12  # TokenFlow's get_model_default_params
_TEACHERS = {"clipb_224": "converted", "siglip_384": "TokenFlow-XL", "vitamin_xlarge_256": "ViTamin-XL"}


def model_state_of(checkpoint: dict[str, Any]) -> tuple[str, dict[str, Tensor]]:
    """TokenFlow's loaders take ``ema``, then ``model``, then ``state_dict``."""
    for key in _STATE_ENTRIES:
        if key in checkpoint:
            return key, tensors_of(checkpoint[key], f"{WHAT}[{key!r}]")
    raise ConversionError(f"{WHAT}: no 'ema', 'model' or 'state_dict' (has {sorted(checkpoint)})")


def _need(state: dict[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise ConversionError(f"{WHAT}: missing key {key!r}")
    return state[key]


def _count(state: dict[str, Tensor], prefix: str) -> int:
    """How many numbered children ``prefix<i>.`` the keys hold (1 + the largest i; 0 when none), so that a
    missing tensor of one child is reported by its name, not taken for a smaller network."""
    found = [key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)]
    numbers = [int(n) for n in found if n.isdigit()]
    return max(numbers) + 1 if numbers else 0


def _square_side(n: int, key: str) -> int:
    side = math.isqrt(n)
    if side * side != n:
        raise ConversionError(f"{WHAT}: {key} holds {n} positions, not a square grid")
    return side


def config_from_state(state: dict[str, Tensor], args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The polytok config (a dict) a TokenFlow state dict describes; ``args`` (the checkpoint's training
    arguments, when stored) are checked against it."""
    if any(k.startswith("encoder_vqkd.vision_model.") for k in state):
        raise ConversionError(
            f"{WHAT}: its semantic encoder is a SigLIP tower (teacher siglip_384, TokenFlow-XL), which "
            "polytok does not convert yet; the clipb_224 tokenizer (tokenflow_clipb_32k_enhanced.pt) converts"
        )
    conv1 = _need(state, "encoder_vqkd.conv1.weight")
    width, patch = int(conv1.shape[0]), int(conv1.shape[-1])
    if width % 64:
        raise ConversionError(f"{WHAT}: CLIP width {width} is not a multiple of 64 (OpenAI's heads of 64)")
    table = _square_side(
        int(_need(state, "encoder_vqkd.positional_embedding").shape[0]) - 1, "positional_embedding"
    )
    blocks = "encoder_vqkd.transformer.resblocks."
    layers = _count(state, blocks)
    clip = {
        "hidden_size": width,
        "intermediate_size": int(_need(state, f"{blocks}0.mlp.c_fc.weight").shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": width // 64,
        "image_size": table * patch,
        "patch_size": patch,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    sem_book = _need(state, "quantize.embedding_vqkd.weight")
    pix_book = _need(state, "quantize.embedding_vqgan.weight")
    if sem_book.shape[0] != pix_book.shape[0]:
        raise ConversionError(
            f"{WHAT}: the semantic and pixel codebooks hold {sem_book.shape[0]} and {pix_book.shape[0]} "
            "codes; a dual codebook pairs them one to one"
        )
    quant_conv = _need(state, "quant_conv.weight")

    def cnn(prefix: str, z_channels: int, *, decoder: bool) -> dict[str, Any]:
        levels = _count(state, f"{prefix}.conv_blocks.")
        widths = [
            int(_need(state, f"{prefix}.conv_blocks.{i}.res.0.conv1.weight").shape[0]) for i in range(levels)
        ]
        if decoder:  # the decoder's conv_blocks run from the lowest resolution up
            widths = widths[::-1]
        ch = math.gcd(*widths) if widths else 0
        blocks_per_level = _count(state, f"{prefix}.conv_blocks.0.res.")
        return {
            "z_channels": z_channels,
            "ch": ch,
            "ch_mult": [w // max(ch, 1) for w in widths],
            "num_res_blocks": blocks_per_level - 1 if decoder else blocks_per_level,
        }

    sem_grid = _square_side(
        int(_need(state, "decoder_vqkd.pos_embed").shape[1]) - 1, "decoder_vqkd.pos_embed"
    )
    known = table == 14  # clipb_224: run at 256 px with --infer_interpolate's scales
    cfg: dict[str, Any] = {
        "name": "tokenflow-256",
        "image_size": 256 if known else table * patch,
        "clip": clip,
        "quantizer": {
            "semantic_dim": int(_need(state, "encode_task_layer.2.weight").shape[0]),
            "pixel_dim": int(quant_conv.shape[0]),
            "codebook_size": int(sem_book.shape[0]),
            "scales": list(SCALES_256) if known else [table],
        },
        "encoder": cnn("encoder", int(quant_conv.shape[1]), decoder=False),
        "decoder": cnn("decoder", int(_need(state, "post_quant_conv.weight").shape[0]), decoder=True),
        "semantic_decoder": {
            "width": int(_need(state, "decoder_vqkd.cls_token").shape[-1]),
            "depth": _count(state, "decoder_vqkd.blocks."),
            "heads": _SEMANTIC_DECODER_HEADS,
            "out_dim": int(_need(state, "decode_task_layer.2.weight").shape[0]),
            "grid": sem_grid,
        },
    }
    if args:
        _check_args(args, cfg)
    return cfg


def _check_args(args: dict[str, Any], cfg: dict[str, Any]) -> None:
    teacher = args.get("teacher")
    if teacher is not None and teacher != "clipb_224":
        kind = _TEACHERS.get(teacher, "an unknown teacher")
        raise ConversionError(
            f"{WHAT}: trained with teacher {teacher!r} ({kind}); polytok converts the clipb_224 tokenizer"
        )
    q = cfg["quantizer"]
    for key, ours in (
        ("codebook_size", q["codebook_size"]),
        ("codebook_embed_dim", q["pixel_dim"]),
        ("semantic_code_dim", q["semantic_dim"]),
    ):
        if key in args and args[key] != ours:
            raise ConversionError(
                f"{WHAT}: its args say {key}={args[key]!r} but its tensors hold {ours}: a damaged checkpoint"
            )


def map_tokenflow(m: StateMapper, cfg: TokenFlowConfig, clip_prefix: str) -> None:
    """The official ``TokenFlow`` state dict -> a :class:`TokenFlowTokenizer`'s (``clip_prefix``: where the
    target's CLIP vision transformer sits, ``clip.`` or ``clip.vision_model.``)."""
    src, dst = "encoder_vqkd", clip_prefix
    m.copy(f"{src}.class_embedding", f"{dst}embeddings.class_embedding", ())
    m.copy(f"{src}.conv1.weight", f"{dst}embeddings.patch_embedding.weight", ())
    m.copy(f"{src}.positional_embedding", f"{dst}embeddings.position_embedding.weight", ())
    m.copy(f"{src}.ln_pre", f"{dst}pre_layrnorm")
    for i in range(int(cfg.clip["num_hidden_layers"])):
        s, d = f"{src}.transformer.resblocks.{i}", f"{dst}encoder.layers.{i}"
        for leaf in ("weight", "bias"):  # nn.MultiheadAttention's packed q, k, v
            packed = m.take(f"{s}.attn.in_proj_{leaf}")
            for name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3)):
                m.put(f"{d}.self_attn.{name}.{leaf}", part)
        m.copy(f"{s}.attn.out_proj", f"{d}.self_attn.out_proj")
        m.copy(f"{s}.ln_1", f"{d}.layer_norm1")
        m.copy(f"{s}.mlp.c_fc", f"{d}.mlp.fc1")
        m.copy(f"{s}.mlp.c_proj", f"{d}.mlp.fc2")
        m.copy(f"{s}.ln_2", f"{d}.layer_norm2")
    m.copy(f"{src}.ln_post", f"{dst}post_layernorm")
    m.copy("encode_task_layer.0", "semantic_projection.fc1")
    m.copy("encode_task_layer.2", "semantic_projection.fc2")

    e, d = cfg.encoder, cfg.decoder
    map_encoder(m, "encoder", "encoder", len(e.ch_mult), e.num_res_blocks)
    m.copy("quant_conv", "quant_conv")
    for i, stream in enumerate(("vqkd", "vqgan")):  # raw codes: normalised where used, as TokenFlow
        m.put(
            f"quantizer.dual.codebooks.{i}.embed", m.take(f"quantize.embedding_{stream}.weight").unsqueeze(0)
        )
    if m.has("quantize.codebook_used"):
        m.drop("quantize.codebook_used")  # recently chosen indices, not weights
    map_semantic_decoder(
        m, "decoder_vqkd", "decode_task_layer", "semantic_decoder", cfg.semantic_decoder.depth
    )
    map_pixel_decoder(m, "post_quant_conv", "decoder", "pixel_decoder", len(d.ch_mult), d.num_res_blocks)


def convert_tokenflow(
    checkpoint: dict[str, Any], overrides: dict[str, Any] | None = None
) -> TokenFlowTokenizer:
    """A TokenFlow checkpoint dictionary -> :class:`TokenFlowTokenizer` in eval mode."""
    from polytok.config import merge
    from polytok.convert.unitok import fill_quantizer_statistics

    source, state = model_state_of(checkpoint)
    args = checkpoint.get("args")
    args = vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else args
    data = config_from_state(state, args if isinstance(args, dict) else None)
    try:
        cfg = TokenFlowConfig.from_dict(merge(data, overrides or {}))
    except ValueError as exc:
        raise ConversionError(f"{WHAT}: {exc}") from exc
    tok = TokenFlowTokenizer(cfg)
    clip_prefix = "clip.vision_model." if hasattr(tok.clip, "vision_model") else "clip."
    mapper = StateMapper(state, f"{WHAT}[{source!r}]")
    map_tokenflow(mapper, cfg, clip_prefix)
    mapped = fill_quantizer_statistics(mapper.finish(), tok.checkpoint_state_dict(), mapper)
    tok.load_checkpoint_state({k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}, WHAT)
    return tok.eval()


def convert_tokenflow_file(
    path: str | Path, *, trusted: bool = False, overrides: dict[str, Any] | None = None
) -> TokenFlowTokenizer:
    """Read ``path`` weights-only (``argparse.Namespace`` arguments allowed) and convert it."""
    return convert_tokenflow(read_checkpoint(path, trusted=trusted, mmap=True), overrides)
