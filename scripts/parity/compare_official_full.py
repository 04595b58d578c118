"""Full-size comparison of unitok-l and evotok-l with the official UniTok and EvoTok code.

    python scripts/parity/compare_official_full.py --unitok /path/to/UniTok --evotok /path/to/EvoTok

Each official model is built at its published size with seeded random weights (LayerNorm weights and
biases perturbed, as in the parity fixtures; EvoTok's SigLIP tower randomly initialised, nothing
downloaded), converted with ``polytok.convert`` into the preset, and both run on the same random images
and captions. Prints one JSON line per system: codes that differ, the largest difference of the unclamped
decoder outputs ([-1, 1] scale, both decoding the official codes; with the outputs' standard deviation
for scale), and the largest difference / smallest cosine of the semantic outputs. The official code's
extra packages are those of scripts/parity/make_parity_fixtures.py (UniTok pins timm 1.0.8; EvoTok imports
transformers 4.x); several GB of memory per system.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import build_official_evotok, build_official_unitok

from polytok.convert.evotok import convert_evotok
from polytok.convert.unitok import VITAMIN_ENCODERS, convert_unitok
from polytok.models.config import TokenizerConfig
from polytok.models.encoders import SIGLIP_LARGE_256
from polytok.models.registry import get_preset_dict

UNITOK_L_ARGS = {
    "model": "vitamin_large",
    "img_size": 256,
    "num_query": 0,
    "vocab_size": 32768,
    "vocab_width": 64,
    "num_codebooks": 8,
    "vocab_norm": True,
    "vq_beta": 0.25,
    "quant_proj": "attn",
    "embed_dim": 768,
    "text_width": 768,
    "text_heads": 12,
    "text_layers": 12,
    "text_vocab_size": 49408,
    "text_context_length": 77,
}
UNITOK_L_ARCH = {**VITAMIN_ENCODERS["vitamin_large"], "up_widths": [320, 160], "up_depths": [4, 2]}
# The released training script (scripts/train_evotok_siglip256.sh).
EVOTOK_L_ARGS = {
    "vq_model": "EvoTok",
    "teacher": "siglip_256",
    "image_size": 256,
    "codebook_size": 32768,
    "codebook_embed_dim": 32,
    "vqgan_depth": 4,
    "vqkd_depth": 16,
    "vq_warmup": 2000,
    "restart_unused_codes": True,
    "dropout_p": 0.0,
}
EVOTOK_L_ARCH = {
    "siglip": SIGLIP_LARGE_256,
    "decoder_heads": 12,
    "decoder_depth": 3,
    "z_channels": 256,
    "ch": 128,
    "ch_mult": [1, 1, 2, 2, 4],
    "num_res_blocks": 2,
}


def preset(name: str) -> TokenizerConfig:
    return TokenizerConfig.from_dict(get_preset_dict(name))


@torch.no_grad()
def compare_unitok(root: Path, n_images: int, seed: int) -> dict:
    start = time.perf_counter()
    official = build_official_unitok(root, UNITOK_L_ARGS, UNITOK_L_ARCH, seed)
    checkpoint = {"args": UNITOK_L_ARGS, "trainer": {"unitok": official.state_dict()}}
    tok = convert_unitok(checkpoint, preset("unitok-l"))
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(n_images, 3, 256, 256, generator=gen) * 2 - 1
    ids = torch.zeros(n_images, 77, dtype=torch.long)
    ids[:, 0] = 49406
    ids[:, 1:11] = torch.randint(1, 49000, (n_images, 10), generator=gen)
    ids[:, 11] = 49407  # end of text: the largest id, where both towers pool

    codes = official.img_to_idx(images)  # (B, codebooks, N)
    ours = tok.encode((images + 1) / 2)
    b, h, w, g = ours.shape
    ours = ours.reshape(b, h * w, g).transpose(1, 2)
    grid_codes = codes.transpose(1, 2).reshape(b, h, w, g)
    # Unclamped decoder outputs on the [-1, 1] scale (clamping would hide differences where it saturates).
    pixels = official.decoder(official.post_quant_proj(official.quantizer.idx_to_f(codes)))
    flat, grid = tok._flatten_codes(grid_codes)
    our_pixels = tok.pixel_decoder(tok.post_projection(tok.quantizer.indices_to_codes(flat)), grid)
    image_emb = official.encode_image(images, normalize=True)
    text_emb = official.encode_text(ids, normalize=True)
    our_text = F.normalize(tok.text_tower(ids), dim=-1)
    return {
        "system": "unitok-l",
        "images": n_images,
        "codes_differing": int((codes != ours).sum()),
        "codes_total": codes.numel(),
        "pixel_std": float(pixels.std()),
        "pixel_max_abs_diff": float((our_pixels - pixels).abs().max()),
        "image_embedding_max_abs_diff": float((tok.semantic_features(grid_codes) - image_emb).abs().max()),
        "text_embedding_max_abs_diff": float((our_text - text_emb).abs().max()),
        "seconds": round(time.perf_counter() - start, 1),
    }


@torch.no_grad()
def compare_evotok(root: Path, n_images: int, seed: int) -> dict:
    start = time.perf_counter()
    official = build_official_evotok(root, EVOTOK_L_ARGS, EVOTOK_L_ARCH, seed)
    checkpoint = {"model": official.state_dict(), "args": argparse.Namespace(**EVOTOK_L_ARGS)}
    tok = convert_evotok(checkpoint, preset("evotok-l"))
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(n_images, 3, 256, 256, generator=gen) * 2 - 1
    quant, _, info = official.encode(images)
    codes = info[2]  # (B, h, w, levels)
    semantic, pixels = official.decode(quant)
    ours = tok.encode((images + 1) / 2)
    tokens = tok.semantic_tokens(codes)
    flat, grid = tok._flatten_codes(codes[..., : EVOTOK_L_ARGS["vqgan_depth"]])
    our_pixels = tok.pixel_decoder(tok.quantizer.indices_to_codes(flat), grid)  # unclamped, [-1, 1] scale
    return {
        "system": "evotok-l",
        "images": n_images,
        "codes_differing": int((codes != ours).sum()),
        "codes_total": codes.numel(),
        "pixel_std": float(pixels.std()),
        "pixel_max_abs_diff": float((our_pixels - pixels).abs().max()),
        "semantic_tokens_max_abs_diff": float((tokens - semantic).abs().max()),
        "semantic_tokens_min_cosine": float(F.cosine_similarity(tokens, semantic, dim=-1).min()),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unitok", type=Path, help="checkout of github.com/FoundationVision/UniTok")
    parser.add_argument("--evotok", type=Path, help="checkout of github.com/VisionXLab/EvoTok")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.unitok and not args.evotok:
        parser.error("give --unitok and/or --evotok")
    if args.unitok:
        print(json.dumps(compare_unitok(args.unitok.resolve(), args.images, args.seed)), flush=True)
    if args.evotok:
        print(json.dumps(compare_evotok(args.evotok.resolve(), args.images, args.seed)), flush=True)


if __name__ == "__main__":
    main()
