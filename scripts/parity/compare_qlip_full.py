"""Full-size comparison of the qlip-b16-256 peer with QLIP's official ``QLIPModel``.

    python scripts/parity/compare_qlip_full.py --qlip /path/to/QLIP [--images 2] [--seed 0]

QLIP's ``QLIPModel`` is built by its own ``__init__`` at the configuration polytok's ``qlip-b16-256``
assumes (``published_config()`` of make_qlip_fixture.py: EVA02-CLIP-B/16 towers at 256 px, 28-bit BSQ,
a decoder of the encoder's size, CLIP's text tower) with seeded random weights, every LayerNorm weight
and every bias perturbed, written as a Hugging Face folder (config.json, model.safetensors,
preprocessor_config.json) and converted with ``polytok.peers.qlip.convert_qlip``. Both run on the same
random 256 px images and on three caption id rows (start token, words, end token, padding; 77 tokens).
Prints one JSON line: codes that differ (B x 16 x 16, 28 bits each; the official code is the index of
the bits of QLIP's quantized output, channel 0 the most significant, since QLIP's own ``indices`` are
summed in float32 and lose low bits at 28: how many of those differ is printed too), the smallest |bit
input| over all positions and bits (float32, QLIP's own values: a bit flips only near 0), the largest
differences of the reconstruction (QLIP's normalised pixel space, unclamped; polytok decoding the
official codes), of the image embedding (the unquantised class token) and of the text embedding, and the
seconds encode + decode took on each side. About 4 GB of memory and 1 GB of temporary disk.
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
from make_parity_fixtures import perturb
from make_qlip_fixture import CLIP_MEAN, CLIP_STD, import_official, published_config, text_ids

from polytok.peers.qlip.convert import convert_qlip


def write_folder(model, folder: Path) -> Path:
    """The official model as ``QLIPModel.save_pretrained`` writes it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({**model.config.to_dict(), "architectures": ["QLIPModel"]})
    )
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": CLIP_MEAN, "image_std": CLIP_STD})
    )
    # every block holds its tower's rotary tables: one copy each, as the parity fixture stores them
    state = {k: v.clone() if ".rope." in k else v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def compare(root: Path, n_images: int, seed: int) -> dict:
    model_cls, config_cls = import_official(root)
    config = published_config()
    torch.manual_seed(seed)
    official = model_cls(config_cls(**config)).eval()
    perturb(official, seed + 100)
    official.logit_scale.fill_(2.3)
    with tempfile.TemporaryDirectory() as tmp:
        tok = convert_qlip(write_folder(official, Path(tmp) / "QLIP-B-16-256"))
    gen = torch.Generator().manual_seed(seed + 1)
    images = torch.rand(n_images, 3, 256, 256, generator=gen)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = (images - mean) / std  # QLIP's image processor
    text = config["text_config"]
    ids = text_ids(
        {**text, "bos_token_id": text["vocab_size"] - 2, "pad_token_id": text["eos_token_id"]}, gen
    )
    vision = official.vision_model

    def official_run():
        tokens = vision.encoder(inputs_embeds=vision.embeddings(pixels))[0]
        h = vision.quant_embed(tokens[:, 1:])  # the patch tokens; the class token is the image embedding
        h = F.normalize(h, dim=-1) if vision.quantizer_l2_norm else h
        quant, _, info = vision.quantizer(h)
        return h, quant, info["indices"], official.vision_decoder(vision.quant_embed_post(quant))

    def polytok_run():
        codes = tok.encode(images)
        return codes, tok.pixels(
            tok.code_vectors(official_codes)
        )  # the official codes: comparable everywhere

    (h, quant, indices, official_pixels), official_seconds = timed(official_run)
    # The index of QLIP's own bits, channel 0 the most significant. QLIP's ``indices`` sum bit x 2^k in
    # float32, which drops low bits above 2^24: at 28 bits most of them are not the index of its bits.
    bits = quant.shape[-1]
    exact = ((quant > 0).long() * 2 ** torch.arange(bits - 1, -1, -1)).sum(-1)
    official_codes = exact.reshape(n_images, *tok.grid)
    (codes, pixels_ours), polytok_seconds = timed(polytok_run)
    out = official(input_ids=ids, pixel_values=pixels)
    return {
        "system": "qlip-b16-256",
        "images": n_images,
        "parameters": sum(p.numel() for p in official.parameters()),
        **code_figures(codes, official_codes),
        "official_float32_indices_differing": int((indices.reshape(exact.shape) != exact).sum()),
        "min_bit_margin": float(h.abs().min()),
        "pixel_std": float(official_pixels.std()),
        "pixel_max_abs_diff": max_abs_diff(pixels_ours, official_pixels),
        "forward_reconstruction_max_abs_diff": max_abs_diff(official_pixels, out.reconstructions),
        "image_embedding_max_abs_diff": max_abs_diff(tok.image_features(images), out.image_embeds),
        "text_embedding_max_abs_diff": max_abs_diff(tok.encode_text(ids), out.text_embeds),
        "official_seconds": official_seconds,
        "polytok_seconds": polytok_seconds,
    }


if __name__ == "__main__":
    main(
        __doc__,
        "qlip",
        "checkout of github.com/NVlabs/QLIP (NVIDIA Source Code License-NC: read only)",
        compare,
    )
