"""``polytok convert qlip DIR OUT_DIR``: a QLIP Hugging Face folder (``QLIPModel``) -> a polytok QLIP model.

DIR holds ``config.json`` (QLIP's ``QLIPConfig``: ``vision_config``, ``decoder_config``, ``text_config``,
``projection_dim``, ``vision_projection_bias``, ``text_projection_bias``), the weights
(``model.safetensors``, shards listed in ``model.safetensors.index.json``, or ``pytorch_model.bin`` read
with ``weights_only=True``) and optionally ``preprocessor_config.json`` (``image_mean`` / ``image_std``).
The model is built from DIR's own config, so every published size converts.

Official layouts (read from NVlabs/QLIP ``modeling_qlip.py``): ``vision_model`` (``embeddings``:
``class_embedding``, ``patch_embedding``, ``position_embedding``; ``encoder.layers.<i>``;
``post_layernorm`` on the class token; ``quant_embed`` / ``quant_embed_post``: ``c_fc``, GELU, ``c_proj``),
``vision_decoder`` (``position_embeddings``, ``encoder.layers.<i>``, ``norm``, ``ffn.0`` + tanh,
``conv_out``), ``text_model`` (``embeddings``, ``encoder.layers.<i>``, ``final_layer_norm``),
``visual_projection``, ``text_projection``, ``logit_scale``. A layer holds ``layer_norm1``,
``self_attn.{q,k,v,out}_proj`` (and ``inner_attn_ln`` with sub-LN), ``layer_norm2`` and ``mlp``
(``fc1`` / ``fc2``, or SwiGLU's ``w1`` (gate), ``w2``, ``w3``; ``ffn_ln`` with sub-LN). The rotary tables
(``rope.freqs_cos`` / ``freqs_sin``) are derived from the config and recomputed, not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from polytok.convert.state import ConversionError, StateMapper
from polytok.peers.folder import read_image_statistics, read_json, read_safetensors_folder
from polytok.peers.qlip.config import ACTIVATIONS, QlipConfig
from polytok.peers.qlip.model import QlipTokenizer

WHAT = "QLIP model"
# QLIP's config defaults (configuration_qlip.py) for keys a config.json may leave out
_TOWER_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "q_bias": True,
    "k_bias": True,
    "v_bias": True,
    "subln": False,
    "swiglu": False,
    "rope": False,
}
_TEXT_DEFAULTS = {**_TOWER_DEFAULTS, "hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}
_BSQ_DEFAULTS = {
    "embed_dim": 18,
    "group_size": 9,
    "beta": 0.0,
    "gamma_0": 1.0,
    "gamma_1": 1.0,
    "l2_norm": True,
}


def _tower(section: dict[str, Any], defaults: dict[str, Any], key: str) -> dict[str, Any]:
    """A QLIP tower config section -> polytok's :class:`QlipTowerConfig` fields."""
    get = {**defaults, **section}.get
    act = get("hidden_act")
    if not get("swiglu") and act not in ACTIVATIONS:
        raise ConversionError(
            f"{WHAT}: {key}.hidden_act {act!r} is not one polytok builds ({', '.join(ACTIVATIONS)})"
        )
    return {
        "width": get("hidden_size"),
        "mlp_width": get("intermediate_size"),
        "layers": get("num_hidden_layers"),
        "heads": get("num_attention_heads"),
        "norm_eps": float(get("layer_norm_eps")),
        **{name: bool(get(name)) for name in ("q_bias", "k_bias", "v_bias", "subln", "swiglu", "rope")},
        "activation": act if act in ACTIVATIONS else "gelu",
    }


def config_from_folder(folder: str | Path) -> QlipConfig:
    """The polytok config a QLIP folder's ``config.json`` (and ``preprocessor_config.json``) describes."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{WHAT} config not found: {path} (DIR must be a QLIP Hugging Face folder)")
    data = read_json(path)
    sections = {k: data.get(k) for k in ("vision_config", "decoder_config", "text_config")}
    missing = [k for k, v in sections.items() if not isinstance(v, dict)]
    if missing:
        raise ConversionError(f"{path} is not a QLIPModel config (no {', '.join(missing)})")
    vision, decoder, text = sections["vision_config"], sections["decoder_config"], sections["text_config"]
    if vision.get("quantizer", "none") != "bsq":
        raise ConversionError(
            f"{WHAT}: vision_config.quantizer is {vision.get('quantizer', 'none')!r}; polytok converts "
            "QLIP's 'bsq' tokenizers"
        )
    bsq = {**_BSQ_DEFAULTS, **(vision.get("quantizer_cfg") or {})}
    if bsq.get("input_format", "bchw") != "blc":
        raise ConversionError(
            f"{WHAT}: vision_config.quantizer_cfg.input_format must be 'blc' (QLIP's tokens)"
        )
    bits = int(bsq["embed_dim"])
    image_size, patch = vision.get("image_size", 224), vision.get("patch_size", 32)
    if (decoder.get("image_size", 224), decoder.get("patch_size", 32)) != (image_size, patch):
        raise ConversionError(f"{WHAT}: the decoder's image_size / patch_size differ from the encoder's")
    dec = _tower(decoder, _TOWER_DEFAULTS, "decoder_config")
    post_q = vision.get("hidden_size_post_q") or vision.get("hidden_size", 768)
    if post_q != dec["width"]:
        raise ConversionError(
            f"{WHAT}: vision_config.hidden_size_post_q ({post_q}) differs from the decoder width "
            f"({dec['width']})"
        )
    for key in ("vision_projection_bias", "text_projection_bias"):
        if not isinstance(data.get(key), bool):
            raise ConversionError(f"{path}: {key} is missing (QLIPModel reads it)")
    group = int(bsq["group_size"])
    if group > 16 or bits % group:  # training statistics only: polytok's groups hold at most 16 bits
        group = max(g for g in range(1, min(bits, 16) + 1) if bits % g == 0)
    text_tower = _tower(text, _TEXT_DEFAULTS, "text_config") | {"rope": False}  # the text model has none
    cfg: dict[str, Any] = {
        "name": str(data.get("_name_or_path") or folder.name),
        "image_size": image_size,
        "patch_size": patch,
        "encoder": _tower(vision, _TOWER_DEFAULTS, "vision_config"),
        "quantizer": {
            "bits": bits,
            "embed": "mlp" if vision.get("quantizer_embed_type", "identity") == "mlp" else "identity",
            "normalize": bool(vision.get("quantizer_l2_norm", False)),
            "spherical": bool(bsq["l2_norm"]),
            "group_size": group,
            "inv_temperature": float(bsq.get("inv_temperature", 100.0)),
            "beta": float(bsq["beta"]),
            "gamma0": float(bsq["gamma_0"]),
            "gamma1": float(bsq["gamma_1"]),
        },
        "decoder": dec,
        "text": text_tower,
        "vocab_size": text.get("vocab_size", 49408),
        "context_length": text.get("max_position_embeddings", 77),
        "eos_token_id": text.get("eos_token_id", 49407),
        "embed_dim": data.get("projection_dim", 512),
        "vision_projection_bias": data["vision_projection_bias"],
        "text_projection_bias": data["text_projection_bias"],
    }
    cfg.update(read_image_statistics(folder))
    try:
        return QlipConfig.from_dict(cfg)
    except ValueError as exc:
        raise ConversionError(f"{WHAT}: {exc}") from exc


def read_weights(folder: Path) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors``, of the shards its index lists, or of ``pytorch_model.bin``
    (unpickled with ``weights_only=True``)."""
    state = read_safetensors_folder(folder)
    if state is not None:
        return state
    pickle = folder / "pytorch_model.bin"
    if not pickle.is_file():
        raise FileNotFoundError(
            f"{WHAT} weights not found in {folder}: expected model.safetensors, model.safetensors.index.json "
            "or pytorch_model.bin"
        )
    from polytok.convert.checkpoint import read_checkpoint

    state = read_checkpoint(pickle)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{pickle} does not hold a state dict of tensors")
    return state


_LAYER = {  # official name in a layer -> polytok's
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.q_proj": "attn.q",
    "self_attn.k_proj": "attn.k",
    "self_attn.v_proj": "attn.v",
    "self_attn.inner_attn_ln": "attn.norm",
    "self_attn.out_proj": "attn.out",
    "mlp.ffn_ln": "mlp.norm",
}


def _layer_parts(tower: dict[str, Any]) -> dict[str, str]:
    mlp = {"mlp.w1": "mlp.gate", "mlp.w2": "mlp.up", "mlp.w3": "mlp.down"} if tower["swiglu"] else {
        "mlp.fc1": "mlp.up", "mlp.fc2": "mlp.down"
    }  # fmt: skip
    parts = {**_LAYER, **mlp}
    if not tower["subln"]:
        del parts["self_attn.inner_attn_ln"], parts["mlp.ffn_ln"]
    return parts


def _map_tower(m: StateMapper, src: str, dst: str, tower: dict[str, Any]) -> None:
    """``<src>.layers.<i>.*`` -> ``<dst>.blocks.<i>.*``; a bias the config leaves out is not read."""
    biases = {
        "self_attn.q_proj": tower["q_bias"],
        "self_attn.k_proj": tower["k_bias"],
        "self_attn.v_proj": tower["v_bias"],
    }
    for i in range(tower["layers"]):
        for theirs, ours in _layer_parts(tower).items():
            names = ("weight", "bias") if biases.get(theirs, True) else ("weight",)
            m.copy(f"{src}.layers.{i}.{theirs}", f"{dst}.blocks.{i}.{ours}", names)


def map_qlip(m: StateMapper, cfg: QlipConfig) -> None:
    """QLIP's ``QLIPModel`` state -> a :class:`QlipTokenizer`'s; a missing key is named as QLIP names it."""
    for key in list(m.source):
        if key.endswith(("rope.freqs_cos", "rope.freqs_sin", "position_ids")):  # derived, recomputed
            m.drop(key)
    towers = {k: getattr(cfg, k).__dict__ for k in ("encoder", "decoder", "text")}
    m.copy("vision_model.embeddings.class_embedding", "class_token", ())
    m.copy("vision_model.embeddings.patch_embedding", "patch_embed")
    m.copy("vision_model.embeddings.position_embedding.weight", "encoder_positions", ())
    _map_tower(m, "vision_model.encoder", "encoder", towers["encoder"])
    m.copy("vision_model.post_layernorm", "class_norm")
    if cfg.quantizer.embed == "mlp":
        for theirs, ours in (("quant_embed", "quant_in"), ("quant_embed_post", "quant_out")):
            m.copy(f"vision_model.{theirs}.c_fc", f"{ours}.0")
            m.copy(f"vision_model.{theirs}.c_proj", f"{ours}.2")
    m.copy("vision_decoder.position_embeddings", "decoder_positions", ())
    _map_tower(m, "vision_decoder.encoder", "decoder", towers["decoder"])
    m.copy("vision_decoder.norm", "decoder_norm")
    m.copy("vision_decoder.ffn.0", "decoder_hidden")
    m.copy("vision_decoder.conv_out", "to_pixels")
    m.copy("text_model.embeddings.token_embedding.weight", "token_embedding.weight", ())
    m.copy("text_model.embeddings.position_embedding.weight", "text_positions", ())
    _map_tower(m, "text_model.encoder", "text", towers["text"])
    m.copy("text_model.final_layer_norm", "text_norm")
    m.copy(
        "visual_projection",
        "visual_projection",
        ("weight", "bias") if cfg.vision_projection_bias else ("weight",),
    )
    m.copy(
        "text_projection", "text_projection", ("weight", "bias") if cfg.text_projection_bias else ("weight",)
    )
    m.copy("logit_scale", "logit_scale_log", ())


def convert_qlip(folder: str | Path, *, text_tokenizer: Any = None) -> QlipTokenizer:
    """A QLIP Hugging Face folder -> :class:`QlipTokenizer` in eval mode (``text_tokenizer`` is not used:
    QLIP's captions go through CLIP's BPE, which polytok bundles)."""
    from polytok.convert.unitok import fill_quantizer_statistics

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{WHAT} folder not found: {folder}")
    if text_tokenizer is not None:
        raise ConversionError("qlip: --text-tokenizer is not used (QLIP's captions use CLIP's BPE, bundled)")
    cfg = config_from_folder(folder)
    mapper = StateMapper(read_weights(folder), f"{WHAT} {folder}")
    map_qlip(mapper, cfg)
    model = QlipTokenizer(cfg)
    expected = model.checkpoint_state_dict()
    mapped = mapper.finish()
    for key, value in mapped.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{mapper.what}: tensor for {key!r} has shape {tuple(value.shape)}, the config gives "
                f"{tuple(expected[key].shape)}"
            )
    mapped = fill_quantizer_statistics(mapped, expected, mapper)
    model.load_checkpoint_state(
        {k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}, WHAT
    )
    return model.eval()
