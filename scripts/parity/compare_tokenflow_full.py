"""Full-size comparison of the tokenflow-256 peer with TokenFlow's official tokenizer.

    python scripts/parity/compare_tokenflow_full.py --tokenflow /path/to/TokenFlow [--images 2] [--seed 0]

TokenFlow's ``TokenFlow`` is built by its own ``__init__`` as the released
``tokenflow_clipb_32k_enhanced.pt`` is evaluated at 256 px (teacher ``clipb_224``: CLIP ViT-B/16 built
from sizes as in make_tokenflow_fixture.py, the enhanced decoder, ``infer_interpolate``: scales 1 to 16,
32768 x (32 + 8)-d codes) with seeded random weights, every norm weight and bias perturbed, and converted
with ``polytok.peers.tokenflow.convert_tokenflow`` from ``{"model": state, "args": ...}`` as TokenFlow's
training script saves it. Both run on the same random 256 px images. Prints one JSON line: codes that
differ (B x 817), the smallest float64 margin between the best and second-best code pair over all scales
and positions (TokenFlow's quantization replayed in float64), the largest differences of the pixel
reconstruction ([-1, 1] scale, unclamped) and of the semantic decoder's tokens (both decoding the
official codes, as ``decode_code``), and the seconds encode + decode took on each side. About 5 GB of
memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import code_figures, main, max_abs_diff, timed
from make_parity_fixtures import perturb
from make_tokenflow_fixture import dual_code_margin, official_model, streams

from polytok.peers.tokenflow.convert import convert_tokenflow

# the arguments TokenFlow's training script records for the released clipb_224 tokenizer
ARGS = {"teacher": "clipb_224", "codebook_size": 32768, "codebook_embed_dim": 8, "semantic_code_dim": 32}
ARGS["enhanced_decoder"] = True


def compare(root: Path, n_images: int, seed: int) -> dict:
    official = official_model(root, full=True, seed=seed)
    perturb(official, seed + 100)
    tok = convert_tokenflow({"model": official.state_dict(), "args": ARGS})
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(n_images, 3, 256, 256, generator=gen)
    x = images * 2 - 1  # TokenFlow's input scale

    def official_run():
        _, _, codes = official.encode(x)
        semantic, pixels = official.decode_code(codes)  # pixels on the [-1, 1] scale, unclamped
        return codes, semantic, pixels

    def polytok_run():
        codes = tok.encode(images)
        vectors = tok.code_vectors(official_codes)  # the official codes: comparable everywhere
        return codes, tok.semantic_decode(vectors), tok.pixels(vectors)

    (official_codes, official_semantic, official_pixels), official_seconds = timed(official_run)
    (codes, semantic, pixels), polytok_seconds = timed(polytok_run)
    books = official.quantize.embedding_vqkd.weight, official.quantize.embedding_vqgan.weight
    margin = dual_code_margin(
        streams(official, x), *books, official.scale_rq_layers, ARGS["semantic_code_dim"]
    )
    return {
        "system": "tokenflow-256",
        "images": n_images,
        "parameters": sum(p.numel() for p in official.parameters()),
        **code_figures(codes, official_codes),
        "min_code_margin": margin,
        "pixel_std": float(official_pixels.std()),
        "pixel_max_abs_diff": max_abs_diff(pixels, official_pixels),
        "semantic_std": float(official_semantic.std()),
        "semantic_max_abs_diff": max_abs_diff(semantic, official_semantic),
        "official_seconds": official_seconds,
        "polytok_seconds": polytok_seconds,
    }


if __name__ == "__main__":
    main(__doc__, "tokenflow", "checkout of github.com/ByteFlow-AI/TokenFlow", compare)
