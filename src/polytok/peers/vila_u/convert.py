"""``polytok convert vila-u DIR OUT_DIR``: VILA-U's ``vision_tower/`` folder -> a polytok VILA-U tower.

DIR is the folder as VILA-U saves its vision tower (``RQVAESIGLIPTransformer.save_pretrained``):
``config.json`` (``rqvaesiglip`` and ``rqtransformer`` sections), ``model.safetensors`` (or shards with
``model.safetensors.index.json``) whose keys start ``rqvaesiglip.``, and ``preprocessor_config.json``;
SigLIP's SentencePiece model ``spiece.model`` (and ``tokenizer_config.json``) in DIR or named apart.

Official layouts (read from ``rqvaesiglip/``): ``siglip_model`` is a SigLIP ``SiglipModel`` (the same keys
as transformers'), ``logit_scale`` / ``logit_bias`` are the same parameters again; ``quantizer`` is
RQ-VAE's ``RQBottleneck`` (``codebooks.<i>`` are ``nn.Embedding``s of ``n_embed + 1`` rows, the last the
padding index, with ``cluster_size_ema`` and ``embed_ema``; one module for every level when
``shared_codebook``, whose copies a safetensors file may hold once); ``post_quant_conv`` (1 x 1) and
``decoder``, taming's ``Decoder`` (``mid.block_1``, ``mid.attn_1``, ``mid.block_2``,
``up.<level>.block.<j>``, ``up.<level>.attn.<j>``, ``up.<level>.upsample.conv``; level 0 is the full
resolution). ``rqtransformer.*`` is VILA-U's depth transformer for generation, not part of the tokenizer:
left out.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from polytok.convert.evotok import _map_attn_block, _map_res_block
from polytok.convert.state import ConversionError, StateMapper
from polytok.peers.folder import read_image_statistics, read_safetensors_folder
from polytok.peers.folder import read_json as _read_json
from polytok.peers.vila_u.config import KNOWN_SIGLIP_CONFIGS, VilaUConfig
from polytok.peers.vila_u.model import VilaUTokenizer
from polytok.peers.vila_u.text import SPIECE_NAME, find_spiece

WHAT = "VILA-U vision tower"
# the sizes a SigLIP tower's config gives (read with transformers' defaults for those it leaves out)
_SIGLIP_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "layer_norm_eps",
)


def _with_defaults(vision: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """A SigLIP config file names only what differs from transformers' defaults: the sizes polytok reads
    are filled in from those defaults."""
    import transformers

    full = transformers.SiglipConfig(text_config=text, vision_config=vision)
    towers = {"vision_config": (vision, full.vision_config), "text_config": (text, full.text_config)}
    return {
        name: {k: getattr(obj, k) for k in (*_SIGLIP_KEYS, *extra) if hasattr(obj, k)} | given
        for (name, (given, obj)), extra in zip(
            towers.items(), (("image_size", "patch_size"), ("vocab_size", "max_position_embeddings"))
        )
    }


def _siglip_config(name: Any, folder: Path) -> dict[str, Any]:
    """The SigLIP config VILA-U reads from the hub by ``pretrained_model``: a name polytok knows, or a
    local folder (or config.json) given as an absolute path or relative to DIR."""
    if not isinstance(name, str) or not name:
        raise ConversionError(f"{WHAT}: rqvaesiglip.pretrained_model is {name!r}, not a SigLIP name")
    if name in KNOWN_SIGLIP_CONFIGS:
        return copy.deepcopy(KNOWN_SIGLIP_CONFIGS[name])
    for base in (Path(name), folder / name):
        path = base / "config.json" if base.is_dir() else base
        if path.is_file():
            data = _read_json(path)
            vision, text = data.get("vision_config"), data.get("text_config")
            if not isinstance(vision, dict) or not isinstance(text, dict):
                raise ConversionError(f"{path} is not a SigLIP config (no vision_config / text_config)")
            return _with_defaults(vision, text)
    known = ", ".join(sorted(KNOWN_SIGLIP_CONFIGS))
    raise ConversionError(
        f"{WHAT}: the SigLIP config {name!r} (rqvaesiglip.pretrained_model) is neither one polytok knows "
        f"({known}) nor a local folder with config.json (absolute, or relative to {folder})"
    )


def config_from_folder(folder: str | Path) -> tuple[VilaUConfig, str]:
    """The polytok config a VILA-U vision-tower folder describes, and its weights' key prefix."""
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{WHAT} config not found: {path} (DIR must be VILA-U's vision_tower/ folder)"
        )
    data = _read_json(path)
    if isinstance(data.get("rqvaesiglip"), dict):
        rq, prefix = data["rqvaesiglip"], "rqvaesiglip."
    elif data.get("model_type") == "rqvaesiglip_model":
        rq, prefix = data, ""
    else:
        raise ConversionError(
            f"{path} is not a VILA-U vision tower's config (no 'rqvaesiglip' section; model_type "
            f"{data.get('model_type')!r})"
        )

    def need(key: str) -> Any:
        if rq.get(key) is None:
            raise ConversionError(f"{path}: rqvaesiglip.{key} is missing")
        return rq[key]

    siglip = _siglip_config(rq.get("pretrained_model", "google/siglip-large-patch16-256"), folder)
    latent, code = list(need("latent_shape")), list(need("code_shape"))
    if len(latent) != 3 or len(code) != 3 or latent[:2] != code[:2]:
        raise ConversionError(
            f"{WHAT}: latent_shape {latent} and code_shape {code} must share their grid (one code stack per "
            "SigLIP patch, as VILA-U's towers have)"
        )
    vision = siglip["vision_config"]
    grid = int(vision.get("image_size", 0)) // max(1, int(vision.get("patch_size", 1)))
    if latent[0] != grid or latent[1] != grid or latent[2] != vision.get("hidden_size"):
        raise ConversionError(
            f"{WHAT}: latent_shape {latent} does not match SigLIP's {grid} x {grid} x "
            f"{vision.get('hidden_size')} features"
        )
    if rq.get("embed_dim") not in (None, latent[2]):
        raise ConversionError(
            f"{WHAT}: embed_dim {rq['embed_dim']} differs from the latent width {latent[2]}"
        )
    decoder_latent = rq.get("decoder_latent_shape")
    if decoder_latent is not None and list(decoder_latent) != latent[:2]:
        raise ConversionError(
            f"{WHAT}: decoder_latent_shape {decoder_latent} resizes the code map before decoding (VILA-U's "
            "384 px tower); polytok converts towers that decode the code grid as it is"
        )
    sizes, decays = need("n_embed"), rq.get("decay", 0.99)
    sizes = set(sizes) if isinstance(sizes, list) else {sizes}
    decays = set(decays) if isinstance(decays, list) else {decays}
    if len(sizes) != 1 or len(decays) != 1:
        raise ConversionError(f"{WHAT}: levels of different codebook sizes or decays ({sizes}, {decays})")
    dd = need("ddconfig")
    levels = len(dd.get("ch_mult", ()))
    lowest = int(dd.get("resolution", 0)) // 2 ** max(levels - 1, 0)
    attn = sorted(set(dd.get("attn_resolutions") or []))
    if attn not in ([], [lowest]):
        raise ConversionError(
            f"{WHAT}: ddconfig.attn_resolutions {attn}: polytok's decoder attends at the lowest resolution "
            f"({lowest}) or nowhere"
        )
    if dd.get("out_ch", 3) != 3 or not dd.get("resamp_with_conv", True) or dd.get("give_pre_end", False):
        raise ConversionError(f"{WHAT}: ddconfig needs out_ch 3, resamp_with_conv and no give_pre_end")
    cfg: dict[str, Any] = {
        "name": "vila-u",
        "siglip": siglip,
        "quantizer": {
            "dim": latent[2],
            "levels": code[2],
            "codebook_size": sizes.pop(),
            "shared_codebook": bool(rq.get("shared_codebook", False)),
            "decay": float(decays.pop()),
        },
        "decoder": {
            "z_channels": dd.get("z_channels"),
            "ch": dd.get("ch"),
            "ch_mult": list(dd.get("ch_mult", [])),
            "num_res_blocks": dd.get("num_res_blocks"),
            "attention": bool(attn),
        },
    }
    cfg.update(read_image_statistics(folder))
    tokenizer_cfg = folder / "tokenizer_config.json"
    if tokenizer_cfg.is_file():
        cfg["do_lower_case"] = bool(_read_json(tokenizer_cfg).get("do_lower_case", True))
    try:
        return VilaUConfig.from_dict(cfg), prefix
    except ValueError as exc:
        raise ConversionError(f"{WHAT}: {exc}") from exc


def read_weights(folder: str | Path) -> dict[str, Tensor]:
    """The tensors of ``model.safetensors``, or of the shards listed in ``model.safetensors.index.json``."""
    folder = Path(folder)
    state = read_safetensors_folder(folder)
    if state is None:
        raise FileNotFoundError(
            f"{WHAT} weights not found: expected {folder / 'model.safetensors'} (or "
            "model.safetensors.index.json and shards)"
        )
    return state


def _take_once(m: StateMapper, keys: list[str], what: str) -> Tensor:
    """One tensor stored under several names (tied parameters): all present copies must be equal."""
    present = [k for k in keys if m.has(k)]
    if not present:
        raise ConversionError(f"{m.what}: missing key {keys[0]!r} ({what})")
    value = m.take(present[0])
    for other in present[1:]:
        if not torch.equal(m.take(other), value):
            raise ConversionError(f"{m.what}: {present[0]!r} and {other!r} differ; they are one {what}")
    return value


def map_decoder(
    m: StateMapper, src: str, dst: str, num_levels: int, num_res_blocks: int, attention: bool
) -> None:
    """Taming's ``Decoder`` at ``src`` -> :class:`polytok.nn.VQGANDecoder` at ``dst``."""
    m.copy(f"{src}.conv_in", f"{dst}.conv_in")
    _map_res_block(m, f"{src}.mid.block_1", f"{dst}.mid.0")
    _map_attn_block(m, f"{src}.mid.attn_1", f"{dst}.mid.1")
    _map_res_block(m, f"{src}.mid.block_2", f"{dst}.mid.2")
    for k in range(num_levels):  # polytok's level k is the official up.<num_levels - 1 - k>
        up, out = f"{src}.up.{num_levels - 1 - k}", f"{dst}.levels.{k}"
        step = 2 if attention and k == 0 else 1
        for j in range(num_res_blocks + 1):
            _map_res_block(m, f"{up}.block.{j}", f"{out}.{step * j}")
            if step == 2:
                _map_attn_block(m, f"{up}.attn.{j}", f"{out}.{step * j + 1}")
        if k != num_levels - 1:
            m.copy(f"{up}.upsample.conv", f"{out}.{step * (num_res_blocks + 1)}.conv")
    m.copy(f"{src}.norm_out", f"{dst}.norm_out")
    m.copy(f"{src}.conv_out", f"{dst}.conv_out")


def map_vila_u(m: StateMapper, cfg: VilaUConfig, prefix: str) -> None:
    """VILA-U's ``RQVAESiglipModel`` state (keys under ``prefix``) -> a :class:`VilaUTokenizer`'s."""
    for key in m.keys_under("rqtransformer."):  # the LLM's depth head for generation
        m.drop(key)
    siglip = f"{prefix}siglip_model."
    m.map_prefix(siglip, "siglip.")
    for key in m.keys_under(siglip):
        rest = key.removeprefix(siglip)
        if rest in ("logit_scale", "logit_bias"):
            continue
        m.put(f"siglip.{rest}", m.take(key))
    for name in ("logit_scale", "logit_bias"):
        m.put(f"siglip.{name}", _take_once(m, [f"{siglip}{name}", f"{prefix}{name}"], f"SigLIP {name}"))

    q = cfg.quantizer
    books = 1 if q.shared_codebook else q.levels
    for level in range(books):
        # a shared codebook is one module under every level's name: any stored copy will do
        names = range(q.levels) if q.shared_codebook else [level]
        src = [f"{prefix}quantizer.codebooks.{i}" for i in names]
        dst = f"quantizer.codebooks.{level}"
        weight = _take_once(m, [f"{s}.weight" for s in src], f"codebook {level}")
        if weight.shape[0] != q.codebook_size + 1:
            raise ConversionError(
                f"{m.what}: {src[0]}.weight has {weight.shape[0]} rows, expected n_embed + 1 = "
                f"{q.codebook_size + 1} (the last the padding index)"
            )
        m.put(f"{dst}.embed", weight[:-1].unsqueeze(0))  # the padding row is never a code
        counts = _take_once(m, [f"{s}.cluster_size_ema" for s in src], f"codebook {level} counts").unsqueeze(
            0
        )
        m.put(f"{dst}.cluster_size", counts)
        m.put(f"{dst}.usage_ema", counts.clone())
        m.put(
            f"{dst}.embed_sum", _take_once(m, [f"{s}.embed_ema" for s in src], f"codebook {level} sums")[None]
        )
    m.copy(f"{prefix}post_quant_conv", "post_quant_conv")
    d = cfg.decoder
    map_decoder(m, f"{prefix}decoder", "decoder", len(d.ch_mult), d.num_res_blocks, d.attention)


def convert_vila_u(folder: str | Path, *, text_tokenizer: str | Path | None = None) -> VilaUTokenizer:
    """A VILA-U ``vision_tower/`` folder (plus SigLIP's ``spiece.model`` in it or at ``text_tokenizer``)
    -> :class:`VilaUTokenizer` in eval mode."""
    from polytok.convert.unitok import fill_quantizer_statistics

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{WHAT} folder not found: {folder}")
    cfg, prefix = config_from_folder(folder)
    spiece = find_spiece(text_tokenizer if text_tokenizer is not None else folder / SPIECE_NAME)
    state = read_weights(folder)
    if prefix and not any(k.startswith(prefix) for k in state):
        raise ConversionError(f"{folder}: no tensor under {prefix!r} (keys start {sorted(state)[:3]})")
    mapper = StateMapper(state, f"{WHAT} {folder}")
    map_vila_u(mapper, cfg, prefix)
    tok = VilaUTokenizer(cfg, text_tokenizer=spiece)
    mapped = fill_quantizer_statistics(mapper.finish(), tok.checkpoint_state_dict(), mapper)
    tok.load_checkpoint_state({k: v.float() if v.is_floating_point() else v for k, v in mapped.items()}, WHAT)
    return tok.eval()
