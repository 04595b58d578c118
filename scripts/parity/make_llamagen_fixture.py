"""Build tests/fixtures/parity/llamagen_model.safetensors from LlamaGen's official VQ model.

Usage (the official repositories checked out anywhere; their code is imported from there, never copied):

    python scripts/parity/make_llamagen_fixture.py --llamagen /path/to/LlamaGen [--janus /path/to/Janus]

LlamaGen's ``VQModel`` (``tokenizer/tokenizer_image/vq_model.py``) is built at reduced width (its
``Encoder`` / ``Decoder`` take the width and the blocks per level; ``VQModel`` fixes them, so the two are
rebuilt small and put in its place), seeded, with every GroupNorm weight and every bias perturbed. Every
weight is rounded to float16 first, so the fixture stores them in half the bytes and the float32 model
the tests rebuild is exactly the one that produced the outputs. Inputs are redrawn until every position's
best code beats the second by a cosine margin above 1e-3 (in float64), so no code depends on one CPU's
rounding. With ``--janus``, Janus' copy of the network (``janus/models/vq_model.py``) is loaded with the
same weights and must give the same codes and images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import OUT_DEFAULT, _code_margin, _load_file_module, perturb, save

LLAMAGEN_REDUCED_ARGS = {
    "vq_model": "VQ-reduced",  # not one of LlamaGen's names: its widths are in the arch
    "codebook_size": 256,
    "codebook_embed_dim": 8,
    "codebook_l2_norm": True,
    "image_size": 16,
}
# Widths must be multiples of 32 (LlamaGen's GroupNorm has 32 groups); two levels keep one width change
# (a 1 x 1 shortcut) on each side, and attention at the coarse level and in the middle.
LLAMAGEN_REDUCED_ARCH = {"ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 16}


def build_official_vq(module, args: dict, arch: dict, seed: int, *, half_values: bool = True) -> nn.Module:
    """The official ``VQModel`` of ``module`` (LlamaGen's or Janus' file) at ``arch``, seeded, norms and
    biases perturbed, weights rounded to float16 values (``half_values``), in eval mode."""
    torch.manual_seed(seed)
    model = module.VQModel(
        module.ModelArgs(
            codebook_size=args["codebook_size"],
            codebook_embed_dim=args["codebook_embed_dim"],
            codebook_l2_norm=args["codebook_l2_norm"],
            encoder_ch_mult=arch["ch_mult"],
            decoder_ch_mult=arch["ch_mult"],
            z_channels=arch["z_channels"],
        )
    )
    widths = {"ch": arch["ch"], "ch_mult": arch["ch_mult"], "num_res_blocks": arch["num_res_blocks"]}
    model.encoder = module.Encoder(z_channels=arch["z_channels"], **widths)
    model.decoder = module.Decoder(z_channels=arch["z_channels"], **widths)
    model.eval()
    perturb(model, seed + 100)
    if half_values:
        with torch.no_grad():
            for param in model.parameters():
                param.copy_(param.half().float())
    return model


def official_outputs(model: nn.Module, images: Tensor) -> dict[str, Tensor]:
    with torch.no_grad():
        quant, _, info = model.encode(images)
        indices = info[2]
        reconstruction = model.decode_code(indices, quant.shape)  # [-1, 1] scale, not clamped
    b, _, h, w = quant.shape
    return {"codes": indices.reshape(b, h, w), "reconstruction": reconstruction}


def llamagen_fixture(llamagen: Path, janus: Path | None, out: Path) -> None:
    args, arch = LLAMAGEN_REDUCED_ARGS, LLAMAGEN_REDUCED_ARCH
    official = _load_file_module(llamagen / "tokenizer" / "tokenizer_image" / "vq_model.py", "llamagen_vq")
    model = build_official_vq(official, args, arch, seed=11)
    gen = torch.Generator().manual_seed(12)
    size = args["image_size"]
    for _attempt in range(500):
        images = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
        with torch.no_grad():
            feats = model.quant_conv(model.encoder(images))
        rows = feats.permute(0, 2, 3, 1).reshape(-1, args["codebook_embed_dim"])
        margin = _code_margin(rows, model.quantize.embedding.weight, cosine=True)
        if margin > 1e-3:
            break
    else:
        raise RuntimeError("no input with code margins above 1e-3")
    outputs = official_outputs(model, images)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # The usage record (65536 zeros) is left out of the file: the tests put the same zeros back.
    assert not state.pop("quantize.codebook_used").any()
    meta = {"args": args, "arch": arch, "code_margin": margin, "janus_checked": janus is not None}
    if janus is not None:
        other = _load_file_module(janus / "janus" / "models" / "vq_model.py", "janus_vq")
        twin = build_official_vq(other, args, arch, seed=11)
        twin.load_state_dict(model.state_dict(), strict=True)
        got = official_outputs(twin, images)
        assert torch.equal(got["codes"], outputs["codes"]), "Janus' VQ model chose other codes"
        assert torch.equal(got["reconstruction"], outputs["reconstruction"]), "Janus' VQ model decoded other"
    save(out, "llamagen_model", {"images": images, **outputs}, {k: v.half() for k, v in state.items()}, meta)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llamagen", type=Path, required=True, help="checkout of FoundationVision/LlamaGen")
    parser.add_argument("--janus", type=Path, help="checkout of deepseek-ai/Janus (checks its copy agrees)")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    llamagen_fixture(args.llamagen.resolve(), args.janus.resolve() if args.janus else None, args.out)


if __name__ == "__main__":
    main()
