"""Build tests/fixtures/parity/vila_u_model.safetensors from VILA-U's official code (mit-han-lab/vila-u).

Usage (a checkout anywhere; its modules are imported from there, never copied; SigLIP's tokenizer as
VILA-U ships it needs ``protobuf``, e.g. ``pip install --target /tmp/offpkgs protobuf`` and
``PYTHONPATH=/tmp/offpkgs``):

    python scripts/parity/make_vila_u_fixture.py --vila-u /path/to/vila-u

VILA-U's ``RQVAESiglipModel`` is built by its own ``__init__`` at reduced width from a local SigLIP config
folder (VILA-U reads that config from the hub by name), seeded, every norm weight and bias perturbed.
Its package ``__init__`` files import the whole VILA-U model (and a dataclass that Python 3.11 refuses),
so the ``rqvaesiglip`` files are imported as a package of their own. Two departures, both to make float32
the reference: the decoder's upsampling casts to bfloat16 (``.to(torch.bfloat16)``), which is read here as
float32 (the module sees a ``torch`` whose ``bfloat16`` is ``float32``); nothing else is changed.

Saved: the images (multiples of 1/255 in [0, 1]), the official codes (``encode_image``), the
reconstruction (``decode`` of the summed code vectors, VILA-U's [-1, 1] scale), the image embedding of
the codes (SigLIP's last block, post-layernorm, pooling head on the summed code vectors, L2-normalised),
the captions' token ids (VILA-U's SigLIP tokenizer, padded to the context) and text embeddings, the tiny
SentencePiece model the tokenizer used, the official state dict as VILA-U's vision-tower folder names it
(``rqvaesiglip.`` keys; the codebook shared by the four levels under each level's name) and the configs.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import OUT_DEFAULT, perturb, residual_code_margin, save

RQ_DIR = "vila_u/model/multimodal_encoder/rqvaesigliptransformer/rqvaesiglip"
SIGLIP = {
    "vision_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": 16,
        "patch_size": 4,
    },
    "text_config": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 48,
        "max_position_embeddings": 12,
    },
}
# VILA-U's vision-tower config at reduced width: 4 x 4 codes of depth 4 over 16 x 16 images.
RQVAESIGLIP = {
    "architectures": ["RQVAESiglipModel"],
    "embed_dim": 32,
    "n_embed": 64,
    "latent_shape": [4, 4, 32],
    "code_shape": [4, 4, 4],
    "shared_codebook": True,
    "restart_unused_codes": True,
    "decay": 0.99,
    "ddconfig": {
        "double_z": False,
        "z_channels": 16,
        "resolution": 16,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 32,
        "ch_mult": [2, 1, 1],
        "num_res_blocks": 1,
        "attn_resolutions": [4],
        "dropout": 0.0,
    },
}
CAPTIONS = ["A photo of a cat.", "two dogs, playing in the SNOW!", "A  cat", "a red circle on a blue square"]
CORPUS = [
    "a photo of a cat",
    "a red circle on a blue square",
    "two dogs play in the snow",
    "the quick brown fox jumps over the lazy dog",
    "a bowl of soup on a table",
]


def import_official(root: Path):
    """VILA-U's rqvaesiglip modules as the package ``vila_u_rqvaesiglip`` (their relative imports work,
    the package __init__ files that pull in the LLM are skipped)."""
    base = root / RQ_DIR
    pkg = types.ModuleType("vila_u_rqvaesiglip")
    pkg.__path__ = [str(base)]
    sub = types.ModuleType("vila_u_rqvaesiglip.siglip")
    sub.__path__ = [str(base / "siglip")]
    sys.modules.update({pkg.__name__: pkg, sub.__name__: sub})
    siglip = importlib.import_module("vila_u_rqvaesiglip.siglip.modeling_siglip")
    sub.SiglipModel = siglip.SiglipModel  # what `from .siglip import SiglipModel` finds
    modules = importlib.import_module("vila_u_rqvaesiglip.modules")
    float32_torch = types.ModuleType("torch_bf16_as_fp32")
    float32_torch.__getattr__ = lambda name: getattr(torch, name)  # everything else is torch's
    float32_torch.bfloat16 = torch.float32
    modules.torch = float32_torch  # Upsample: .to(torch.bfloat16) -> float32
    model = importlib.import_module("vila_u_rqvaesiglip.modeling_rqvaesiglip")
    config = importlib.import_module("vila_u_rqvaesiglip.configuration_rqvaesiglip")
    tokenization = importlib.import_module("vila_u_rqvaesiglip.siglip.tokenization_siglip")
    return model.RQVAESiglipModel, config.RQVAESiglipConfig, tokenization.SiglipTokenizer


def tiny_spiece() -> bytes:
    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=buf,
        vocab_size=40,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        normalization_rule_name="identity",
        minloglevel=2,
    )
    return buf.getvalue()


def build(root: Path, work: Path, seed: int):
    model_cls, config_cls, tokenizer_cls = import_official(root)
    siglip_dir = work / "siglip"
    siglip_dir.mkdir()
    (siglip_dir / "config.json").write_text(json.dumps({"model_type": "siglip", **SIGLIP}))
    torch.manual_seed(seed)
    model = model_cls(config_cls(**{**RQVAESIGLIP, "pretrained_model": str(siglip_dir)})).eval()
    perturb(model, seed + 100)
    with torch.no_grad():
        model.siglip_model.logit_scale.fill_(2.3)  # SigLIP's log(10) start, off 0
    return model, tokenizer_cls


# VILA-U's 256 px tower as polytok's `vila-u` preset assumes it (RQ-VAE's defaults where the released
# config.json is not at hand: one codebook shared by the levels, attention at the 16 x 16 resolution).
PUBLISHED = {
    **RQVAESIGLIP,
    "embed_dim": 1024,
    "n_embed": 16384,
    "latent_shape": [16, 16, 1024],
    "code_shape": [16, 16, 4],
    "ddconfig": {
        **RQVAESIGLIP["ddconfig"],
        "z_channels": 256,
        "resolution": 256,
        "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [16],
    },
}


def official_full_counts(root: Path, work: Path) -> dict[str, int]:
    """Parameters per part of the official model at the published size (meta device: no memory)."""
    from polytok.peers.vila_u.config import SIGLIP_LARGE_PATCH16_256

    model_cls, config_cls, _ = import_official(root)
    siglip_dir = work / "siglip-large"
    siglip_dir.mkdir()
    (siglip_dir / "config.json").write_text(json.dumps({"model_type": "siglip", **SIGLIP_LARGE_PATCH16_256}))
    with torch.device("meta"):
        model = model_cls(config_cls(**{**PUBLISHED, "pretrained_model": str(siglip_dir)}))
    parts = {
        "vision_tower": model.siglip_model.vision_model,
        "quantizer": model.quantizer,
        "pixel_decoder": torch.nn.ModuleList([model.post_quant_conv, model.decoder]),
        "text_tower": model.siglip_model.text_model,
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--vila-u", type=Path, required=True, help="checkout of github.com/mit-han-lab/vila-u"
    )
    parser.add_argument("--commit", default="unknown", help="the checkout's commit, recorded in the fixture")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        full_counts = official_full_counts(args.vila_u.resolve(), Path(tmp))
        model, tokenizer_cls = build(args.vila_u.resolve(), Path(tmp), seed=11)
        spiece = tiny_spiece()
        (Path(tmp) / "spiece.model").write_bytes(spiece)
        tokenizer = tokenizer_cls(str(Path(tmp) / "spiece.model"), model_max_length=12)
        # VILA-U pins transformers 4.36.2, whose PreTrainedTokenizer.tokenize lower-cases the text of a
        # tokenizer with do_lower_case (SigLIP's is); transformers 5 dropped that step from the base class,
        # so it is taken here, as 4.36 took it (the captions hold no special tokens).
        lowered = [c.lower() for c in CAPTIONS] if tokenizer.do_lower_case else CAPTIONS
        ids = tokenizer(lowered, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    ids = ids["input_ids"]
    vision = model.siglip_model.vision_model
    size = SIGLIP["vision_config"]["image_size"]
    gen = torch.Generator().manual_seed(12)
    for _attempt in range(50):
        images = torch.randint(0, 256, (2, 3, size, size), generator=gen).float() / 255
        pixels = (images - 0.5) / 0.5  # VILA-U's image processor: mean 0.5, std 0.5
        with torch.no_grad():
            hidden = vision.embeddings(pixels)
            for layer in vision.encoder.layers[:-1]:
                hidden = layer(hidden, None)[0]
        books = [book.weight[:-1] for book in model.quantizer.codebooks]  # last row: padding index
        margin = residual_code_margin(hidden.reshape(-1, hidden.shape[-1]), books)
        if margin > 1e-3:
            break
    else:
        raise RuntimeError("no input with code margins above 1e-3")
    with torch.no_grad():
        codes, _ = model.encode_image(pixels)
        summed = model.quantizer.embed_code(codes)  # (B, h, w, width): the code vectors summed over depth
        reconstruction = model.decode(summed)
        tokens = summed.reshape(summed.shape[0], -1, summed.shape[-1])
        last = vision.encoder.layers[-1](tokens, None)[0]
        image_embedding = F.normalize(vision.head(vision.post_layernorm(last)), dim=-1)
        text_embedding = F.normalize(model.siglip_model.get_text_features(input_ids=ids), dim=-1)
    state = {f"rqvaesiglip.{k}": v for k, v in model.state_dict().items()}
    meta = {
        "rqvaesiglip": RQVAESIGLIP,
        "siglip": SIGLIP,
        "captions": CAPTIONS,
        "code_margin": margin,
        "vila_u_commit": args.commit,
        "published": PUBLISHED,
        "official_full_parameters": full_counts,
    }
    outputs = dict(images=images, codes=codes, reconstruction=reconstruction, image_embedding=image_embedding)
    outputs.update(text_ids=ids, text_embedding=text_embedding)
    outputs["spiece_model"] = torch.frombuffer(bytearray(spiece), dtype=torch.uint8)  # the file's bytes
    save(args.out, "vila_u_model", outputs, state, meta)


if __name__ == "__main__":
    main()
