"""LlamaGen's VQ tokenizer (and Janus' generation tokenizer, the same network) -> polytok.

Official layout (read from LlamaGen's ``tokenizer/tokenizer_image/vq_model.py`` and Janus'
``janus/models/vq_model.py``):

- ``encoder``: ``conv_in``, ``conv_blocks.<i>.{res.<j>, attn.<j>, downsample.conv}`` from the finest level
  (attention only at the last, coarsest one), ``mid.{0, 1, 2}`` (res, attention, res), ``norm_out``,
  ``conv_out``; attention blocks have separate ``q`` / ``k`` / ``v`` / ``proj_out`` 1 x 1 convolutions.
- ``quant_conv`` (1 x 1, 256 -> 8), ``quantize.embedding.weight`` (16384 x 8, L2-normalised where used),
  ``quantize.codebook_used`` (a record of recently chosen indices when ``codebook_show_usage``: no weights).
- ``post_quant_conv`` (1 x 1, 8 -> 256) and ``decoder``: the layout EvoTok kept
  (:func:`polytok.convert.evotok.map_pixel_decoder`).

Where the network sits in the file: LlamaGen's training script saves ``{"model", "optimizer", ...,
"args"}`` (plus ``"ema"`` when trained with EMA) and its loaders take ``ema``, else ``model``, else
``state_dict``; the released ``vq_ds16_*.pt`` hold ``{"model": state_dict}``. Janus keeps it as
``gen_vision_model.`` inside the whole multimodal model's weights (``pytorch_model.bin``, shards with an
index, or safetensors), so the network is found by the prefix of its ``quantize.embedding.weight``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from torch import Tensor

from polytok.convert.checkpoint import args_of, check_arg, read_checkpoint
from polytok.convert.evotok import _map_attn_block, _map_res_block, map_pixel_decoder
from polytok.convert.state import ConversionError, StateMapper
from polytok.models.config import TokenizerConfig
from polytok.models.tokenizer import Tokenizer

CODEBOOK_KEY = "quantize.embedding.weight"
# LlamaGen's model names (its VQ_models) and the channel multipliers they stand for.
VQ_MODELS = {"VQ-16": [1, 1, 2, 2, 4], "VQ-8": [1, 2, 2, 4]}
_STATE_ENTRIES = ("ema", "model", "state_dict")  # the order LlamaGen's loaders try
_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def map_encoder(m: StateMapper, src: str, dst: str, num_levels: int, num_res_blocks: int) -> None:
    """The official VQGAN ``Encoder`` at ``src`` -> :class:`polytok.nn.VQGANEncoder` at ``dst``."""
    m.copy(f"{src}.conv_in", f"{dst}.conv_in")
    for i in range(num_levels):  # official index i runs from the finest resolution down, as polytok's
        block, out = f"{src}.conv_blocks.{i}", f"{dst}.levels.{i}"
        with_attn = i == num_levels - 1
        step = 2 if with_attn else 1
        for j in range(num_res_blocks):
            _map_res_block(m, f"{block}.res.{j}", f"{out}.{step * j}")
            if with_attn:
                _map_attn_block(m, f"{block}.attn.{j}", f"{out}.{step * j + 1}")
        if i != num_levels - 1:
            m.copy(f"{block}.downsample.conv", f"{out}.{step * num_res_blocks}.conv")
    _map_res_block(m, f"{src}.mid.0", f"{dst}.mid.0")
    _map_attn_block(m, f"{src}.mid.1", f"{dst}.mid.1")
    _map_res_block(m, f"{src}.mid.2", f"{dst}.mid.2")
    m.copy(f"{src}.norm_out", f"{dst}.norm_out")
    m.copy(f"{src}.conv_out", f"{dst}.conv_out")


def map_llamagen(m: StateMapper, cfg: TokenizerConfig, prefix: str = "") -> None:
    """LlamaGen's ``VQModel`` state dict (its keys under ``prefix``) -> a polytok Tokenizer's."""
    e, q, pd = cfg.encoder, cfg.quantizer, cfg.pixel_decoder
    # the code layout first: a checkpoint of another size is named by its codes, not by a missing block
    conv = m.take(f"{prefix}quant_conv.weight")
    if tuple(conv.shape) != (q.dim, e.width, 1, 1):
        raise ConversionError(
            f"{m.what}: {prefix}quant_conv.weight has shape {tuple(conv.shape)} but the target maps "
            f"{e.width} encoder channels to quantizer.dim={q.dim} codes by a 1 x 1 convolution"
        )
    m.put("projection.weight", conv.flatten(1))
    m.copy(f"{prefix}quant_conv", "projection", ("bias",))
    codebook = m.take(f"{prefix}{CODEBOOK_KEY}")
    if tuple(codebook.shape) != (q.codebook_size, q.dim):
        raise ConversionError(
            f"{m.what}: {prefix}{CODEBOOK_KEY} has shape {tuple(codebook.shape)} but the target has "
            f"quantizer.codebook_size={q.codebook_size} codes of quantizer.dim={q.dim}"
        )
    m.put("quantizer.codebooks.0.embed", codebook.unsqueeze(0))  # raw: normalised where used, as LlamaGen
    if m.has(f"{prefix}quantize.codebook_used"):
        m.drop(f"{prefix}quantize.codebook_used")  # recently chosen indices, not weights
    map_encoder(m, f"{prefix}encoder", "encoder.cnn", len(e.ch_mult), e.num_res_blocks)
    map_pixel_decoder(
        m, f"{prefix}post_quant_conv", f"{prefix}decoder", "pixel_decoder", len(pd.ch_mult), pd.num_res_blocks
    )


def check_llamagen_target(cfg: TokenizerConfig) -> None:
    """The target must have LlamaGen's parts: a CNN encoder, a linear projection, one codebook, a CNN
    decoder behind a 1 x 1 convolution."""
    ok = (
        cfg.encoder.kind == "cnn"
        and cfg.projection.kind == "linear"
        and cfg.quantizer.kind == "vq"
        and cfg.quantizer.codebook_dim is None
        and cfg.post_projection.kind == "identity"
        and cfg.pixel_decoder.kind == "cnn"
        and bool(cfg.pixel_decoder.z_channels)
        and not cfg.linear_path
    )
    if not ok:
        raise ConversionError(
            "LlamaGen checkpoint: the target needs LlamaGen's layout (encoder.kind 'cnn', projection "
            "'linear', quantizer 'vq', post_projection 'identity', pixel_decoder 'cnn' with z_channels, no "
            "linear_path), as the llamagen-vq16 preset"
        )


def check_llamagen_args(args: dict[str, Any], cfg: TokenizerConfig) -> None:
    """The training arguments of a LlamaGen checkpoint must describe the target."""
    what = "LlamaGen checkpoint"
    q = cfg.quantizer
    check_arg(args, "codebook_size", q.codebook_size, what, "quantizer.codebook_size")
    check_arg(args, "codebook_embed_dim", q.dim, what, "quantizer.dim")
    if "codebook_l2_norm" in args:
        check_arg(args, "codebook_l2_norm", q.normalize, what, "quantizer.normalize")
    mult = VQ_MODELS.get(args.get("vq_model", ""))
    if mult is not None:  # other names are checked by the tensors alone
        check_arg({"ch_mult": mult}, "ch_mult", cfg.encoder.ch_mult, what, "encoder.ch_mult")
        check_arg({"ch_mult": mult}, "ch_mult", cfg.pixel_decoder.ch_mult, what, "pixel_decoder.ch_mult")


def find_prefix(keys: list[str], what: str) -> str:
    """The prefix of the one VQ model among ``keys`` (``""`` for LlamaGen, ``gen_vision_model.`` in Janus)."""
    prefixes = sorted(k[: -len(CODEBOOK_KEY)] for k in keys if k.endswith(CODEBOOK_KEY))
    if not prefixes:
        shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if len(keys) > 5 else "")
        raise ConversionError(
            f"{what}: no LlamaGen VQ model in it (no key ending in {CODEBOOK_KEY!r}; has {shown})"
        )
    if len(prefixes) > 1:
        raise ConversionError(f"{what}: several VQ models in it (prefixes {prefixes}); convert one per file")
    return prefixes[0]


def _tensors_under(state: Mapping[str, Any], what: str) -> tuple[str, dict[str, Tensor]]:
    """The VQ model's tensors (keys kept whole, prefix included) and their prefix."""
    prefix = find_prefix(list(state), what)
    picked = {k: v for k, v in state.items() if k.startswith(prefix)}
    odd = [k for k, v in picked.items() if not isinstance(v, Tensor)]
    if odd:
        raise ConversionError(f"{what}: {odd[0]!r} is not a tensor")
    return prefix, picked


def _safetensors_under(paths: list[Path], what: str) -> tuple[str, dict[str, Tensor]]:
    """Only the VQ model's tensors of safetensors files (nothing executes; the rest stays on disk)."""
    from safetensors import safe_open

    handles = [safe_open(str(p), "pt") for p in paths]
    owner = {k: h for h in handles for k in h.keys()}  # noqa: SIM118 (a safetensors handle is not iterable)
    prefix = find_prefix(list(owner), what)
    return prefix, {k: h.get_tensor(k) for k, h in owner.items() if k.startswith(prefix)}


def _read_folder(root: Path, trusted: bool) -> tuple[str, dict[str, Tensor], dict[str, Any] | None, str]:
    """A model folder (Janus' as released): an index of shards, or one weights file."""
    for name in _INDEX_FILES:
        index = root / name
        if not index.is_file():
            continue
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConversionError(f"{index} is not a weights index (no 'weight_map')") from exc
        what = f"model folder {root}"
        prefix = find_prefix(list(weight_map), what)
        shards = sorted({root / f for k, f in weight_map.items() if k.startswith(prefix)})
        missing = [s for s in shards if not s.is_file()]
        if missing:
            raise FileNotFoundError(f"{what}: shard {missing[0].name} named by {name} is missing")
        if name.startswith("model.safetensors"):
            prefix, state = _safetensors_under(shards, what)
        else:
            state = {}
            for shard in shards:
                state.update(read_checkpoint(shard, trusted=trusted, mmap=True))
            prefix, state = _tensors_under(state, what)
        return prefix, state, None, what
    for name in _SINGLE_FILES:
        if (root / name).is_file():
            return read_llamagen_source(root / name, trusted=trusted)
    raise ConversionError(
        f"{root} is a folder without {' or '.join(_INDEX_FILES + _SINGLE_FILES)}: give the checkpoint file"
    )


def read_llamagen_source(
    path: str | os.PathLike, *, trusted: bool = False
) -> tuple[str, dict[str, Tensor], dict[str, Any] | None, str]:
    """Read a LlamaGen checkpoint, a Janus model file or folder -> (prefix, the VQ model's tensors with
    their keys as in the file, the training arguments when stored, a description for messages).

    Pickles are read with ``weights_only=True`` (see :func:`polytok.convert.checkpoint.read_checkpoint`);
    safetensors files are read key by key, only the VQ model's tensors.
    """
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, trusted)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        what = f"safetensors file {path.name}"
        try:
            prefix, state = _safetensors_under([path], what)
        except SafetensorError as exc:
            raise ConversionError(f"{path} is not a readable safetensors file ({exc})") from exc
        return prefix, state, None, what
    obj = read_checkpoint(path, trusted=trusted, mmap=True)
    for entry in _STATE_ENTRIES:
        if entry in obj:
            state = obj[entry]
            what = f"LlamaGen checkpoint[{entry!r}]"
            if not isinstance(state, dict):
                raise ConversionError(f"{what} is a {type(state).__name__}, not a state dict")
            args = args_of(obj, "LlamaGen checkpoint") if "args" in obj else None
            prefix, tensors = _tensors_under(state, what)
            return prefix, tensors, args, what
    if "trainer" in obj:
        raise ConversionError(
            "LlamaGen checkpoint: the file has a 'trainer' entry, the layout of UniTok's checkpoints "
            "('polytok convert unitok')"
        )
    prefix, tensors = _tensors_under(obj, f"model file {path.name}")  # a bare state dict (Janus' .bin)
    return prefix, tensors, None, f"model file {path.name}"


def convert_llamagen(
    state: Mapping[str, Tensor],
    cfg: TokenizerConfig,
    *,
    prefix: str = "",
    args: dict[str, Any] | None = None,
    what: str = "LlamaGen checkpoint",
) -> Tokenizer:
    """The VQ model's tensors (keys under ``prefix``) -> Tokenizer in eval mode."""
    from polytok.convert.unitok import fill_quantizer_statistics

    check_llamagen_target(cfg)
    if args is not None:
        check_llamagen_args(args, cfg)
    tok = Tokenizer(cfg, load_backbone_weights=False)
    mapper = StateMapper(state, what)
    map_llamagen(mapper, cfg, prefix)
    target = fill_quantizer_statistics(mapper.finish(), tok.checkpoint_state_dict(), mapper)
    tok.load_checkpoint_state(target, what)
    return tok.eval()


def convert_llamagen_file(
    path: str | os.PathLike, cfg: TokenizerConfig, *, trusted: bool = False
) -> Tokenizer:
    """``polytok convert llamagen``: a LlamaGen checkpoint or a Janus model file / folder -> Tokenizer."""
    prefix, state, args, what = read_llamagen_source(path, trusted=trusted)
    return convert_llamagen(state, cfg, prefix=prefix, args=args, what=what)
