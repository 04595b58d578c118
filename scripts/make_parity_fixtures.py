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


if __name__ == "__main__":
    main()
