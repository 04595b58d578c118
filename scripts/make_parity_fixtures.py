"""Build the parity fixtures under tests/fixtures/parity from the official UniTok and EvoTok code.

Usage (the official repositories checked out anywhere; their code is imported from there, never copied):

    python scripts/make_parity_fixtures.py --unitok /path/to/UniTok --evotok /path/to/EvoTok

Each official module is built at reduced width with seeded weights; every LayerNorm weight and every bias
is perturbed away from its default (LayerNorm weight 1 and bias 0 would make a second LayerNorm a no-op
and hide a missing one). The inputs, the official state dict (keys prefixed ``official.``) and the
official outputs are written as one small safetensors file per module, with the constructor arguments in
the file's metadata. tests/test_parity_official.py converts those state dicts with polytok.convert and
compares the outputs.

The official code needs a few packages polytok does not (UniTok: ``pytz``, ``typed-argument-parser``);
install them anywhere on PYTHONPATH, e.g. ``pip install --target /tmp/offpkgs pytz typed-argument-parser``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

OUT_DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity"


def perturb(module: nn.Module, seed: int, scale: float = 0.3) -> None:
    """Move every LayerNorm/GroupNorm weight off 1 and every bias (q_bias, v_bias included) off 0."""
    gen = torch.Generator().manual_seed(seed)
    norm_weights = {
        id(m.weight)
        for m in module.modules()
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None
    }
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen) * scale
            if id(param) in norm_weights:
                param.copy_(1.0 + noise)
            elif name.endswith("bias"):
                param.copy_(noise)


def save(out: Path, name: str, tensors: dict[str, Tensor], state: dict[str, Tensor], meta: dict) -> None:
    payload = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    payload.update({f"official.{k}": v.detach().contiguous().clone() for k, v in state.items()})
    path = out / f"{name}.safetensors"
    save_file(payload, str(path), metadata={"config": json.dumps(meta)})
    print(f"{path.name}: {path.stat().st_size} bytes")


def unitok_fixtures(root: Path, out: Path) -> None:
    sys.path.insert(0, str(root))
    try:
        from models.vqvae import AttnProjection
        from open_clip.transformer import TextTransformer
    finally:
        sys.path.remove(str(root))

    # Quant projection (narrowing: heads averaged) and post-quant projection (widening: heads concatenated),
    # at a quarter of UniTok-L's 1024 <-> 64 with its head count (width // code width).
    for name, in_dim, out_dim, heads, seed in (
        ("unitok_quant_proj", 64, 16, 4, 1),
        ("unitok_post_quant_proj", 16, 64, 4, 2),
    ):
        torch.manual_seed(seed)
        module = AttnProjection(in_dim, out_dim, heads).eval()
        perturb(module, seed + 100)
        x = torch.randn(2, 10, in_dim)
        with torch.no_grad():
            y = module(x)
        save(out, name, {"input": x, "output": y}, module.state_dict(),
             {"in_dim": in_dim, "out_dim": out_dim, "heads": heads, "mlp_ratio": 2.0})

    # Text tower (open_clip) at width 32; the byte vocabulary's 259 ids keep the embedding small.
    torch.manual_seed(3)
    cfg = {"context_length": 16, "vocab_size": 259, "width": 32, "heads": 4, "layers": 2, "output_dim": 24}
    tower = TextTransformer(**cfg, output_tokens=True).eval()
    perturb(tower, 103)
    ids = torch.zeros(3, cfg["context_length"], dtype=torch.long)
    gen = torch.Generator().manual_seed(4)
    for row, length in enumerate((5, 11, 16)):
        ids[row, :length] = torch.randint(3, cfg["vocab_size"], (length,), generator=gen)
    with torch.no_grad():
        pooled, tokens = tower(ids)
    save(out, "unitok_text_tower", {"input": ids, "tokens": tokens, "pooled": pooled,
                                    "pooled_index": ids.argmax(dim=-1)}, tower.state_dict(), cfg)


def _load_file_module(path: Path, name: str):
    """Import one official source file by path (EvoTok's package __init__ pulls in its whole model)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evotok_fixtures(root: Path, out: Path) -> None:
    vq_model = root / "evotok" / "tokenizer" / "vq_model"
    vqkd = _load_file_module(vq_model / "vqkd_model.py", "evotok_vqkd_model")
    pixel = _load_file_module(vq_model / "pixel_model.py", "evotok_pixel_model")

    # Semantic decoder: EvoTok builds decoder_vqkd with the encoder's width (1024), 12 heads (so heads of
    # 85 channels and an inner width of 1020), depth 3, patch size 1 on the code map, then
    # decode_task_layer. Here width 48 with 5 heads keeps the inner width (45) off the width.
    code_dim, grid, width, heads, depth, out_dim = 8, 4, 48, 5, 2, 40
    torch.manual_seed(5)
    semantic = nn.Module()
    semantic.decoder_vqkd = vqkd.VisionTransformer(
        img_size=grid, patch_size=1, in_chans=code_dim, num_classes=0, embed_dim=width, depth=depth,
        num_heads=heads, mlp_ratio=4.0, qkv_bias=True, norm_layer="LayerNorm", init_values=0.0,
        use_abs_pos_emb=True, use_mean_pooling=True,
    )
    semantic.decode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out_dim))
    semantic.eval()
    perturb(semantic, 105)
    x = torch.randn(2, code_dim, grid, grid)
    with torch.no_grad():
        y = semantic.decode_task_layer(semantic.decoder_vqkd(x, return_patch_tokens=True))
    save(out, "evotok_semantic_decoder", {"input": x, "output": y}, semantic.state_dict(),
         {"code_dim": code_dim, "grid": grid, "width": width, "heads": heads, "depth": depth,
          "out_dim": out_dim})

    # Pixel decoder: post_quant_conv (code width -> z_channels, 1 x 1) then the VQGAN decoder; EvoTok
    # uses 32 -> 256, ch 128, ch_mult (1, 1, 2, 2, 4), 2 residual blocks per level.
    cfg = {"code_dim": 8, "z_channels": 16, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1}
    torch.manual_seed(6)
    decoder = nn.Module()
    decoder.post_quant_conv = nn.Conv2d(cfg["code_dim"], cfg["z_channels"], 1)
    decoder.decoder = pixel.Decoder(
        z_channels=cfg["z_channels"], ch=cfg["ch"], ch_mult=cfg["ch_mult"],
        num_res_blocks=cfg["num_res_blocks"],
    )
    decoder.eval()
    perturb(decoder, 106)
    x = torch.randn(2, cfg["code_dim"], 4, 4)
    with torch.no_grad():
        y = decoder.decoder(decoder.post_quant_conv(x))
    save(out, "evotok_pixel_decoder", {"input": x, "output": y}, decoder.state_dict(), cfg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unitok", type=Path, help="checkout of github.com/FoundationVision/UniTok")
    parser.add_argument("--evotok", type=Path, help="checkout of github.com/VisionXLab/EvoTok")
    parser.add_argument("--out", type=Path, default=OUT_DEFAULT)
    args = parser.parse_args(argv)
    if not args.unitok and not args.evotok:
        parser.error("give --unitok and/or --evotok")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.unitok:
        unitok_fixtures(args.unitok.resolve(), args.out)
    if args.evotok:
        evotok_fixtures(args.evotok.resolve(), args.out)


if __name__ == "__main__":
    main()
