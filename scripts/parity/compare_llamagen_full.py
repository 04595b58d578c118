"""Full-size comparison of llamagen-vq16 with LlamaGen's official VQ-16.

    python scripts/parity/compare_llamagen_full.py --llamagen /path/to/LlamaGen [--images 2] [--seed 0]

LlamaGen's ``VQModel`` is built at its published size (``VQ_16``: ch 128, ch_mult (1, 1, 2, 2, 4), 2 blocks
per level, z 256, 16384 x 8-d codes) with seeded random weights, GroupNorm weights and biases perturbed as
in the parity fixtures, converted with ``polytok.convert.llamagen`` into the preset, and both run on the
same random 256 px images. Prints one JSON line: codes that differ, the smallest float64 cosine margin
between the best and second-best code over all positions (a flip needs a margin near float32 rounding),
the largest difference of the unclamped decoder outputs ([-1, 1] scale, both decoding the official
codes, with their standard deviation for scale), and the seconds each side took. Nothing is downloaded;
about 2 GB of memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import main, timed
from make_llamagen_fixture import build_official_vq
from make_parity_fixtures import _code_margin, _load_file_module

from polytok.convert.llamagen import convert_llamagen
from polytok.models.config import TokenizerConfig
from polytok.models.registry import get_preset_dict

VQ16_ARGS = {"vq_model": "VQ-16", "codebook_size": 16384, "codebook_embed_dim": 8, "codebook_l2_norm": True}
VQ16_ARCH = {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "z_channels": 256}


def compare(root: Path, n_images: int, seed: int) -> dict:
    module = _load_file_module(root / "tokenizer" / "tokenizer_image" / "vq_model.py", "llamagen_vq")
    official = build_official_vq(module, VQ16_ARGS, VQ16_ARCH, seed, half_values=False)
    cfg = TokenizerConfig.from_dict(get_preset_dict("llamagen-vq16"))
    tok = convert_llamagen(official.state_dict(), cfg, args=VQ16_ARGS)
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(n_images, 3, 256, 256, generator=gen) * 2 - 1

    def official_run():
        quant, _, info = official.encode(images)
        return quant, info, official.decode_code(info[2], quant.shape)  # [-1, 1] scale, unclamped

    (quant, info, pixels), official_seconds = timed(official_run)
    b, _, h, w = quant.shape
    codes = info[2].reshape(b, h, w)
    feats = official.quant_conv(official.encoder(images)).permute(0, 2, 3, 1).reshape(-1, 8)
    margin = _code_margin(feats, official.quantize.embedding.weight, cosine=True)

    def polytok_run():
        ours = tok.encode((images + 1) / 2)
        flat, grid = tok._flatten_codes(codes)  # decode the official codes: outputs comparable everywhere
        return ours, tok.pixel_decoder(tok.post_projection(tok.quantizer.indices_to_codes(flat)), grid)

    (ours, our_pixels), polytok_seconds = timed(polytok_run)
    return {
        "system": "llamagen-vq16",
        "images": n_images,
        "parameters": sum(p.numel() for p in official.parameters()),
        "codes_differing": int((codes != ours).sum()),
        "codes_total": codes.numel(),
        "min_code_margin": margin,
        "pixel_std": float(pixels.std()),
        "pixel_max_abs_diff": float((our_pixels - pixels).abs().max()),
        "official_seconds": official_seconds,
        "polytok_seconds": polytok_seconds,
    }


if __name__ == "__main__":
    main(__doc__, "llamagen", "checkout of FoundationVision/LlamaGen", compare)
