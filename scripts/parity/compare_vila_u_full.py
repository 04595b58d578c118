"""Full-size comparison of the vila-u peer with VILA-U's official vision tower.

    python scripts/parity/compare_vila_u_full.py --vila-u /path/to/vila-u [--images 2] [--seed 0]

VILA-U's ``RQVAESiglipModel`` is built by its own ``__init__`` at the size polytok's ``vila-u`` preset
assumes (SigLIP-L/16-256, residual VQ depth 4 over 16384 x 1024-d, RQ-VAE's decoder ch 128, mult
1-1-2-2-4; ``PUBLISHED`` of make_vila_u_fixture.py) with seeded random weights, every norm weight and bias
perturbed, written as VILA-U's ``vision_tower/`` folder (``rqvaesiglip.*`` safetensors, config.json,
a tiny SentencePiece model) and converted with ``polytok.peers.vila_u.convert_vila_u``. Both run on the
same random 256 px images and on random caption ids (64 tokens). Prints one JSON line: codes that differ
(B x 16 x 16 x 4), the smallest float64 L2 margin between the best and second-best code over all
positions and levels, the largest differences of the reconstruction (unclamped, [-1, 1] scale, both
decoding the official codes), of the image embedding from the codes and of the text embedding, and the
seconds encode + decode took on each side. The decoder's bfloat16 cast is read as float32, as in the
fixture script. About 9 GB of memory and 3 GB of temporary disk.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from full_size import code_figures, main, max_abs_diff, timed
from make_parity_fixtures import perturb, residual_code_margin
from make_vila_u_fixture import PUBLISHED, import_official, tiny_spiece

from polytok.peers.vila_u.config import SIGLIP_LARGE_PATCH16_256
from polytok.peers.vila_u.convert import convert_vila_u


def siglip_folder(folder: Path) -> Path:
    """SigLIP-L/16-256's config where VILA-U's ``pretrained_model`` names it (VILA-U reads it by name)."""
    (folder / "siglip").mkdir(parents=True)
    (folder / "siglip" / "config.json").write_text(
        json.dumps({"model_type": "siglip", **SIGLIP_LARGE_PATCH16_256})
    )
    return folder / "siglip"


def write_tower(model, folder: Path) -> Path:
    """The official model as VILA-U saves its vision tower."""
    config = {
        "model_type": "rqvaesigliptransformer_model",
        "rqvaesiglip": {**PUBLISHED, "pretrained_model": "siglip"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    (folder / "spiece.model").write_bytes(tiny_spiece())
    # tied tensors stored once: the shared codebook (under level 0) and SigLIP's logit scale and bias
    tied = ("quantizer.codebooks.1.", "quantizer.codebooks.2.", "quantizer.codebooks.3.", "logit_")
    state = {
        f"rqvaesiglip.{k}": v.contiguous() for k, v in model.state_dict().items() if not k.startswith(tied)
    }
    save_file(state, str(folder / "model.safetensors"))
    return folder


def compare(root: Path, n_images: int, seed: int) -> dict:
    model_cls, config_cls, _ = import_official(root)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "vision_tower"
        siglip = siglip_folder(folder)
        torch.manual_seed(seed)
        official = model_cls(config_cls(**{**PUBLISHED, "pretrained_model": str(siglip)})).eval()
        perturb(official, seed + 100)
        official.siglip_model.logit_scale.fill_(2.3)  # SigLIP's log(10) start, off 0
        tok = convert_vila_u(write_tower(official, folder))
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(n_images, 3, 256, 256, generator=gen)
    pixels = (images - 0.5) / 0.5  # VILA-U's image processor: mean 0.5, std 0.5
    text = SIGLIP_LARGE_PATCH16_256["text_config"]
    ids = torch.randint(0, text["vocab_size"], (n_images, text["max_position_embeddings"]), generator=gen)

    def official_run():
        codes, _ = official.encode_image(pixels)
        return codes, official.decode(official.quantizer.embed_code(codes))  # [-1, 1] scale, unclamped

    def polytok_run():
        codes = tok.encode(images)
        return codes, tok.pixels(
            tok.code_vectors(official_codes)
        )  # the official codes: comparable everywhere

    (official_codes, official_pixels), official_seconds = timed(official_run)
    (codes, pixels_ours), polytok_seconds = timed(polytok_run)

    vision = official.siglip_model.vision_model
    hidden = vision.embeddings(pixels)
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, None)[0]
    books = [book.weight[:-1] for book in official.quantizer.codebooks]  # the last row: padding index
    summed = official.quantizer.embed_code(official_codes)
    tokens = vision.encoder.layers[-1](summed.reshape(n_images, -1, summed.shape[-1]), None)[0]
    image_emb = F.normalize(vision.head(vision.post_layernorm(tokens)), dim=-1)
    text_emb = F.normalize(official.siglip_model.get_text_features(input_ids=ids), dim=-1)
    return {
        "system": "vila-u",
        "images": n_images,
        "parameters": sum(p.numel() for p in official.parameters()),
        **code_figures(codes, official_codes),
        "min_code_margin": residual_code_margin(hidden.reshape(-1, hidden.shape[-1]), books),
        "pixel_std": float(official_pixels.std()),
        "pixel_max_abs_diff": max_abs_diff(pixels_ours, official_pixels),
        "image_embedding_max_abs_diff": max_abs_diff(tok.semantic_features(official_codes), image_emb),
        "text_embedding_max_abs_diff": max_abs_diff(tok.encode_text(ids), text_emb),
        "official_seconds": official_seconds,
        "polytok_seconds": polytok_seconds,
    }


if __name__ == "__main__":
    main(__doc__, "vila-u", "checkout of github.com/mit-han-lab/vila-u", compare)
