"""Build tests/fixtures/parity/qlip_model.safetensors from QLIP's official code (NVlabs/QLIP).

Usage (a checkout anywhere; its three modules are imported from its ``QLIP/`` folder, never copied):

    python scripts/parity/make_qlip_fixture.py --qlip /path/to/QLIP --commit cf86fcc

QLIP's ``QLIPModel`` is built by its own ``__init__`` at reduced width, seeded, every LayerNorm weight and
every bias perturbed, in two variants: "eva" (the published layout: EVA-02 blocks with SwiGLU, sub-LNs,
2-D rotary embedding on a 4 x 4 grid, no key bias; an MLP bottleneck to 12 bits; a decoder narrower than
the encoder) and "plain" (CLIP blocks with quick-GELU, no rotary embedding, an identity bottleneck of
16 bits, LFQ-style codes ±1). QLIP's configuration module imports ``transformers.onnx`` for a class it
does not use, which transformers 5 no longer has: an empty stand-in module is registered under that
name; nothing else is changed.

Saved per variant: the config.json QLIP writes (``QLIPConfig.to_dict()``), the images (multiples of
1/255 in [0, 1], normalised with CLIP's mean and std as QLIP's image processor does), the codes
(``quantizer`` indices of the forward pass), the reconstruction (``reconstructions``, QLIP's normalised
pixel space), the image and text embeddings (``image_embeds`` / ``text_embeds``, L2-normalised) of token
ids with end tokens and padding, the smallest |bit input| in float64 (every bit far from a tie), and the
official state dict. Also the parameters per part of the official model at polytok's ``qlip-b16-256``
configuration, counted on the meta device.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import OUT_DEFAULT, perturb, save

VARIANTS = {
    "eva": {
        "vision_config": {
            "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-6, "k_bias": False, "subln": True,
            "swiglu": True, "rope": True, "quantizer": "bsq", "quantizer_l2_norm": True,
            "quantizer_embed_type": "mlp", "hidden_size_post_q": 24,
            "quantizer_cfg": {"embed_dim": 12, "group_size": 4, "input_format": "blc", "l2_norm": True,
                              "inv_temperature": 1.0},
        },
        "decoder_config": {
            "hidden_size": 24, "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-6, "k_bias": False, "subln": True,
            "swiglu": True, "rope": True,
        },
        "text_config": {
            "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 12, "eos_token_id": 63, "bos_token_id": 62,
            "pad_token_id": 63,
        },
        "projection_dim": 16, "vision_projection_bias": True, "text_projection_bias": False,
    },
    "plain": {
        "vision_config": {
            "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 16, "patch_size": 4, "hidden_act": "quick_gelu", "quantizer": "bsq",
            "quantizer_l2_norm": False, "quantizer_embed_type": "identity",
            "quantizer_cfg": {"embed_dim": 16, "group_size": 8, "input_format": "blc", "l2_norm": False},
        },
        "decoder_config": {
            "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2,
            "image_size": 16, "patch_size": 4, "hidden_act": "quick_gelu",
        },
        "text_config": {
            "vocab_size": 40, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "max_position_embeddings": 10, "eos_token_id": 2, "bos_token_id": 1,
            "pad_token_id": 0,
        },
        "projection_dim": 8, "vision_projection_bias": False, "text_projection_bias": True,
    },
}  # fmt: skip
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
MARGIN = 1e-3


def import_official(root: Path):
    """QLIP's ``QLIPModel`` and ``QLIPConfig`` from ``root/QLIP`` (its modules import each other by their
    top-level names)."""
    if "transformers.onnx" not in sys.modules:
        stand_in = types.ModuleType("transformers.onnx")
        stand_in.OnnxConfig = object  # imported by configuration_qlip.py, never used
        sys.modules["transformers.onnx"] = stand_in
    sys.path.insert(0, str(root / "QLIP"))
    try:
        config = importlib.import_module("configuration_qlip")
        modeling = importlib.import_module("modeling_qlip")
    finally:
        sys.path.remove(str(root / "QLIP"))
    return modeling.QLIPModel, config.QLIPConfig


def published_config() -> dict:
    """polytok's ``qlip-b16-256`` written as QLIP's config (the inverse of the converter's reading)."""
    from polytok.peers.qlip.model import QlipTokenizer

    with torch.device("meta"):
        cfg = QlipTokenizer.from_preset("qlip-b16-256").config

    def tower(t) -> dict:
        return {
            "hidden_size": t.width, "intermediate_size": t.mlp_width, "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads, "layer_norm_eps": t.norm_eps, "hidden_act": t.activation,
            "q_bias": t.q_bias, "k_bias": t.k_bias, "v_bias": t.v_bias, "subln": t.subln, "swiglu": t.swiglu,
            "rope": t.rope,
        }  # fmt: skip

    q, size = cfg.quantizer, {"image_size": cfg.image_size, "patch_size": cfg.patch_size}
    vision = tower(cfg.encoder) | size | {
        "quantizer": "bsq", "quantizer_l2_norm": q.normalize, "quantizer_embed_type": q.embed,
        "hidden_size_post_q": cfg.decoder.width,
        "quantizer_cfg": {"embed_dim": q.bits, "group_size": q.group_size, "input_format": "blc",
                          "l2_norm": q.spherical, "inv_temperature": q.inv_temperature},
    }  # fmt: skip
    text = tower(cfg.text) | {
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.context_length,
        "eos_token_id": cfg.eos_token_id,
    }  # fmt: skip
    return {
        "vision_config": vision, "decoder_config": tower(cfg.decoder) | size, "text_config": text,
        "projection_dim": cfg.embed_dim, "vision_projection_bias": cfg.vision_projection_bias,
        "text_projection_bias": cfg.text_projection_bias,
    }  # fmt: skip


def official_parts(model) -> dict[str, int]:
    """Parameters per part of a ``QLIPModel``, in polytok's parts."""
    vision = model.vision_model
    parts = {
        "encoder": [vision.embeddings, vision.encoder, vision.post_layernorm],
        "bottleneck": [vision.quant_embed, vision.quant_embed_post],
        "decoder": [model.vision_decoder],
        "text_tower": [model.text_model],
        "projections": [model.visual_projection, model.text_projection],
    }
    counts = {k: sum(p.numel() for m in ms for p in m.parameters()) for k, ms in parts.items()}
    counts["projections"] += model.logit_scale.numel()
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def text_ids(text: dict, gen: torch.Generator) -> torch.Tensor:
    """Three captions as ids: start token, words, end token, then padding. QLIP pools at the first end
    token, or, when the end token is 2 (transformers' legacy CLIP configs), at the largest id: there the
    caption ends in the largest id, as CLIP's end token is."""
    vocab, context = text["vocab_size"], text["max_position_embeddings"]
    end = vocab - 1 if text["eos_token_id"] == 2 else text["eos_token_id"]
    rows = []
    for length in (3, context - 2, 5):
        ids = torch.full((context,), text["pad_token_id"], dtype=torch.long)
        ids[0], ids[length + 1] = text["bos_token_id"], end
        ids[1 : length + 1] = torch.randint(3, vocab - 2, (length,), generator=gen)
        rows.append(ids)
    return torch.stack(rows)


def build_variant(model_cls, config_cls, name: str, seed: int) -> tuple[dict, dict, dict]:
    config = VARIANTS[name]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**config)).eval()
    perturb(model, seed + 100)
    with torch.no_grad():
        model.logit_scale.fill_(2.3)
    vision = config["vision_config"]
    size = vision["image_size"]
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    exact = model_cls(config_cls(**config)).double().eval()
    exact.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed + 1)
    for _attempt in range(200):
        images = torch.randint(0, 256, (2, 3, size, size), generator=gen).float() / 255
        with torch.no_grad():
            tokens = exact.vision_model.encoder(
                exact.vision_model.embeddings(((images - mean) / std).double())
            )[0]
            h = exact.vision_model.quant_embed(tokens[:, 1:])
        margin = float(h.abs().min())
        if margin > MARGIN:
            break
    else:
        raise RuntimeError(f"{name}: no input whose bits all clear {MARGIN}")
    ids = text_ids(config["text_config"], gen)
    pixels = (images - mean) / std
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels)
        h = model.vision_model.quant_embed(
            model.vision_model.encoder(model.vision_model.embeddings(pixels))[0][:, 1:]
        )
        if model.vision_model.quantizer_l2_norm:
            h = torch.nn.functional.normalize(h, dim=-1)
        _, _, info = model.vision_model.quantizer(h)
    grid = size // vision["patch_size"]
    outputs = {
        "images": images,
        "codes": info["indices"].reshape(2, grid, grid),
        "reconstruction": out.reconstructions,
        "image_embedding": out.image_embeds,
        "text_ids": ids,
        "text_embedding": out.text_embeds,
    }
    meta = {"config": model.config.to_dict(), "code_margin": margin}
    return (
        {f"{name}.{k}": v for k, v in outputs.items()},
        {f"{name}.{k}": v for k, v in model.state_dict().items()},
        meta,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qlip", type=Path, required=True, help="checkout of github.com/NVlabs/QLIP")
    parser.add_argument("--commit", default="unknown", help="the checkout's commit, recorded in the fixture")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model_cls, config_cls = import_official(args.qlip.resolve())
    with torch.device("meta"):
        full = model_cls(config_cls(**published_config()))
    outputs, state, meta = (
        {},
        {},
        {"qlip_commit": args.commit, "official_full_parameters": official_parts(full)},
    )
    for seed, name in enumerate(VARIANTS):
        out, st, info = build_variant(model_cls, config_cls, name, seed=21 + 10 * seed)
        outputs.update(out)
        state.update(st)
        meta[name] = info
    save(args.out, "qlip_model", outputs, state, meta)


if __name__ == "__main__":
    main()
