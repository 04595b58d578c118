"""Build tests/fixtures/parity/tokenflow_model.safetensors from TokenFlow's official code
(ByteFlow-AI/TokenFlow, ``tokenflow/tokenizer/vq_model.py``).

Usage (a checkout anywhere; its modules are imported from there, never copied):

    python scripts/parity/make_tokenflow_fixture.py --tokenflow /path/to/TokenFlow --commit 9812da0

TokenFlow's ``TokenFlow`` model is built by its own ``__init__`` with the ``clipb_224`` teacher, the
enhanced decoder and ``infer_interpolate`` (how the released tokenizer is evaluated at 256 px), then its
parts are rebuilt small with the official classes and put in their places (its ``__init__`` fixes the
widths): OpenAI's CLIP ``VisionTransformer`` (its loader downloads ViT-B/16; here the same class is
built from the sizes in REDUCED), the VQGAN ``Encoder`` / ``Decoder``, the BEiT-v2 ``decoder_vqkd``
and the task layers; ``scale_rq_layers`` is set to the reduced grid's schedule. Seeded, every norm weight
and bias perturbed, every weight rounded to float16 values (the fixture stores them in half the bytes and
the float32 model the tests rebuild is exactly the one that produced the outputs).

Three shims let the official files import on a current stack, none touching the computation:
``pkg_resources`` (gone from setuptools; its ``clip.py`` reads ``packaging`` from it) and
``transformers.modeling_utils.get_parameter_device`` / ``get_parameter_dtype`` (gone in transformers 5;
used by two properties only).

Inputs (multiples of 1/255 in [0, 1], given to TokenFlow as 2 x - 1) are redrawn until, at every scale,
every position's best code pair beats the second by a margin above 1e-3 in float64 (the quantization
replayed in float64 from the official streams), so no code depends on one CPU's rounding.

Saved: the images, the official codes (``encode``'s indices, (B, 21)), ``decode_code`` of the codes (the
semantic decoder's tokens and the pixel reconstruction, [-1, 1] scale, unclamped), ``decode`` of
``encode``'s own quantized map, the official state dict (float16 values; the 131072-entry usage record
``quantize.codebook_used`` is left out: zeros the tests put back), the reduced configuration, and the
official model's parameter counts per part at the published size (meta device: no memory).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_parity_fixtures import OUT_DEFAULT, perturb, save

# The reduced network: CLIP width 64 (one head, as OpenAI's loader gives width // 64), 2 blocks, 2 px
# patches, a 3 x 3 position table run at 4 x 4 (the 14 -> 16 resize of the released model in small),
# VQGAN width 32 with two levels (stride 2), dual codebook 64 x (8 + 4), semantic decoder width 48 with
# TokenFlow's 12 heads and a 3 x 3 table, scales 1, 2, 4.
REDUCED = {
    "clip": {"width": 64, "layers": 2, "patch_size": 2, "table_grid": 3},
    "image_size": 8,
    "scales": [1, 2, 4],
    "codebook_size": 64,
    "semantic_code_dim": 8,
    "codebook_embed_dim": 4,
    "encoder": {"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "z_channels": 16},
    "decoder": {"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 2, "z_channels": 16},
    "semantic_decoder": {"width": 48, "depth": 2, "heads": 12, "out_dim": 24},
}
TOKENIZER_DIR = "tokenflow/tokenizer"


def import_official(root: Path):
    """TokenFlow's tokenizer modules as the package ``tokenflow_tokenizer`` (relative imports work)."""
    import packaging
    import transformers.modeling_utils as mu

    if "pkg_resources" not in sys.modules:
        shim = types.ModuleType("pkg_resources")
        shim.packaging = packaging
        importlib.import_module("packaging.version")
        sys.modules["pkg_resources"] = shim
    if not hasattr(mu, "get_parameter_device"):
        mu.get_parameter_device = lambda module: next(module.parameters()).device
        mu.get_parameter_dtype = lambda module: next(module.parameters()).dtype
    pkg = types.ModuleType("tokenflow_tokenizer")
    pkg.__path__ = [str(root / TOKENIZER_DIR)]
    sys.modules[pkg.__name__] = pkg
    vq_model = importlib.import_module("tokenflow_tokenizer.vq_model")
    clip_module = importlib.import_module("tokenflow_tokenizer.clip.clip")
    clip_model = importlib.import_module("tokenflow_tokenizer.clip.model")
    vqkd = importlib.import_module("tokenflow_tokenizer.vqkd_model")
    return vq_model, clip_module, clip_model, vqkd


def clip_visual(clip_model, resolution: int, patch: int, width: int, layers: int) -> nn.Module:
    """What ``clip.load_clip_vision`` returns, built from sizes (heads = width // 64, proj removed)."""
    visual = clip_model.VisionTransformer(
        input_resolution=resolution, patch_size=patch, width=width, layers=layers, heads=width // 64,
        output_dim=16,
    )  # fmt: skip
    del visual.proj
    return visual


def official_model(root: Path, *, full: bool, seed: int = 0) -> nn.Module:
    vq_model, clip_module, clip_model, vqkd = import_official(root)
    r = REDUCED
    if full:
        size = (224, 16, 768, 12)
    else:
        c = r["clip"]
        size = (c["table_grid"] * c["patch_size"], c["patch_size"], c["width"], c["layers"])
    clip_module.load_clip_vision = lambda name, download_root=None: clip_visual(clip_model, *size)
    torch.manual_seed(seed)
    if full:
        return vq_model.TokenFlowFunc(
            codebook_size=32768, codebook_embed_dim=8, semantic_code_dim=32, teacher="clipb_224",
            enhanced_decoder=True, infer_interpolate=True,
        ).eval()  # fmt: skip
    model = vq_model.TokenFlowFunc(
        codebook_size=r["codebook_size"], codebook_embed_dim=r["codebook_embed_dim"],
        semantic_code_dim=r["semantic_code_dim"], teacher="clipb_224", enhanced_decoder=True,
        infer_interpolate=True,
    )  # fmt: skip
    # TokenFlow's __init__ fixes the widths below: the same classes, rebuilt small
    e, d, s = r["encoder"], r["decoder"], r["semantic_decoder"]
    model.encoder = vq_model.Encoder(**e)
    model.decoder = vq_model.Decoder(**d)
    model.quant_conv = nn.Conv2d(e["z_channels"], r["codebook_embed_dim"], 1)
    model.post_quant_conv = nn.Conv2d(r["codebook_embed_dim"], d["z_channels"], 1)
    params = vq_model.get_model_default_params()
    params.update(
        img_size=r["clip"]["table_grid"], patch_size=1, in_chans=r["semantic_code_dim"], num_classes=0,
        embed_dim=s["width"], depth=s["depth"], num_heads=s["heads"],
    )  # fmt: skip
    model.decoder_vqkd = vqkd.VisionTransformer(**params)
    width = r["clip"]["width"]
    model.encode_task_layer = nn.Sequential(
        nn.Linear(width, width), nn.Tanh(), nn.Linear(width, r["semantic_code_dim"])
    )
    model.decode_task_layer = nn.Sequential(
        nn.Linear(s["width"], s["width"]), nn.Tanh(), nn.Linear(s["width"], s["out_dim"])
    )
    model.scale_rq_layers = list(r["scales"])
    model.rq_depth = len(r["scales"])
    model.eval()
    perturb(model, seed + 100)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model


def official_full_counts(root: Path) -> dict[str, int]:
    """Parameters per part of the official model at the published size (on the CPU: BEiT's init calls
    ``.item()``, which the meta device refuses; about 1.2 GB for a moment)."""
    model = official_model(root, full=True)
    parts = {
        "clip_encoder": [model.encoder_vqkd, model.encode_task_layer],
        "pixel_encoder": [model.encoder, model.quant_conv],
        "codebooks": [model.quantize],
        "semantic_decoder": [model.decoder_vqkd, model.decode_task_layer],
        "pixel_decoder": [model.post_quant_conv, model.decoder],
    }
    counts = {k: sum(p.numel() for m in ms for p in m.parameters()) for k, ms in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total"), "a part is not counted"
    return counts


def streams(model: nn.Module, x: Tensor) -> Tensor:
    """The official (B, Ds + Dp, h, w) map ``encode`` quantizes."""
    feat = model.encoder_vqkd(x, return_patch_tokens=True)
    feat = model.encode_task_layer(feat)
    side = int(feat.shape[1] ** 0.5)
    sem = feat.transpose(1, 2).reshape(feat.shape[0], -1, side, side)
    return torch.cat([sem, model.quant_conv(model.encoder(x))], 1)


def dual_code_margin(h: Tensor, sem_book: Tensor, pix_book: Tensor, scales: list[int], ds: int) -> float:
    """The smallest gap, over scales and positions, between the best and second-best code pair's summed
    squared distance (each stream and codebook L2-normalised), TokenFlow's quantization replayed in
    float64 with exact codes."""
    residual = h.detach().double()
    books = F.normalize(sem_book.double(), dim=-1), F.normalize(pix_book.double(), dim=-1)
    last, margin = scales[-1], float("inf")
    for size in scales:
        small = F.interpolate(residual, size=(size, size), mode="area")
        rows = small.permute(0, 2, 3, 1).reshape(-1, small.shape[1])
        s, p = F.normalize(rows[:, :ds], dim=-1), F.normalize(rows[:, ds:], dim=-1)
        dist = torch.cdist(s, books[0]).square() + torch.cdist(p, books[1]).square()
        top = dist.topk(2, dim=-1, largest=False).values
        margin = min(margin, float((top[:, 1] - top[:, 0]).min()))
        codes = torch.cat([books[0], books[1]], -1)[dist.argmin(-1)]
        codes = codes.reshape(small.shape[0], size, size, -1).permute(0, 3, 1, 2)
        residual = residual - F.interpolate(codes, size=(last, last), mode="bicubic")
    return margin


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenflow", type=Path, required=True, help="checkout of ByteFlow-AI/TokenFlow")
    parser.add_argument("--commit", default="unknown", help="the checkout's commit, recorded in the fixture")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    root = args.tokenflow.resolve()
    full_counts = official_full_counts(root)
    model = official_model(root, full=False, seed=11)
    r = REDUCED
    gen = torch.Generator().manual_seed(12)
    books = model.quantize.embedding_vqkd.weight, model.quantize.embedding_vqgan.weight
    for _attempt in range(500):
        images = torch.randint(0, 256, (2, 3, r["image_size"], r["image_size"]), generator=gen).float() / 255
        x = images * 2 - 1  # TokenFlow's input scale, as polytok computes it
        with torch.no_grad():
            margin = dual_code_margin(streams(model, x), *books, r["scales"], r["semantic_code_dim"])
        if margin > 1e-3:
            break
    else:
        raise RuntimeError("no input with code margins above 1e-3")
    with torch.no_grad():
        quant, _, codes = model.encode(x)
        semantic_tokens, reconstruction = model.decode_code(codes)
        _, reconstruction_latent = model.decode(quant)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert not state.pop("quantize.codebook_used").any()
    outputs = dict(
        images=images, codes=codes, reconstruction=reconstruction, semantic_tokens=semantic_tokens,
        reconstruction_latent=reconstruction_latent, quantized=quant,
    )  # fmt: skip
    meta = {
        "reduced": r,
        "args": {"teacher": "clipb_224", "codebook_size": r["codebook_size"], "enhanced_decoder": True},
        "code_margin": margin,
        "tokenflow_commit": args.commit,
        "official_full_parameters": full_counts,
    }
    print({k: f"{v / 1e6:.2f}M" for k, v in full_counts.items()}, "margin", margin)
    save(args.out, "tokenflow_model", outputs, {k: v.half() for k, v in state.items()}, meta)


if __name__ == "__main__":
    main()
