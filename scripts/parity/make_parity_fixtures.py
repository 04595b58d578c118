"""Build the parity fixtures under tests/fixtures/parity from the official UniTok and EvoTok code.

Usage (the official repositories checked out anywhere; their code is imported from there, never copied):

    python scripts/make_parity_fixtures.py --unitok /path/to/UniTok --evotok /path/to/EvoTok

Each official module is built at reduced width with seeded weights; every LayerNorm weight and every bias
is perturbed away from its default (LayerNorm weight 1 and bias 0 would make a second LayerNorm a no-op
and hide a missing one). The inputs, the official state dict (keys prefixed ``official.``) and the
official outputs are written as one small safetensors file per module, with the constructor arguments in
the file's metadata. tests/test_parity_official.py converts those state dicts with polytok.convert and
compares the outputs. ``evotok_ema_update`` holds EvoTok's codebook statistics instead: its state before,
its inputs and its state after every step of EMA updates across the warm-up.

The official code needs a few packages polytok does not (UniTok: ``pytz``, ``typed-argument-parser``);
install them anywhere on PYTHONPATH, e.g. ``pip install --target /tmp/offpkgs pytz typed-argument-parser``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

OUT_DEFAULT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "parity"


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
        save(
            out,
            name,
            {"input": x, "output": y},
            module.state_dict(),
            {"in_dim": in_dim, "out_dim": out_dim, "heads": heads, "mlp_ratio": 2.0},
        )

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
    save(
        out,
        "unitok_text_tower",
        {"input": ids, "tokens": tokens, "pooled": pooled, "pooled_index": ids.argmax(dim=-1)},
        tower.state_dict(),
        cfg,
    )


def _code_margin(features: Tensor, codebook: Tensor, cosine: bool) -> float:
    """Smallest gap between the best and second-best code over all vectors (float64): a fixture whose
    codes could flip with float rounding is redrawn."""
    f, c = features.detach().double(), codebook.detach().double()
    if cosine:
        score = F.normalize(f, dim=-1) @ F.normalize(c, dim=-1).T
    else:
        score = -torch.cdist(f, c).square()
    top = score.topk(2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).min())


def residual_code_margin(features: Tensor, codebooks: list[Tensor]) -> float:
    """The smallest :func:`_code_margin` over residual levels (float64, L2): each level's codes (K, d)
    against what the levels before it left of ``features`` (N, d)."""
    residual, margin = features.detach().double(), float("inf")
    for book in codebooks:
        codes = book.detach().double()
        margin = min(margin, _code_margin(residual, codes, cosine=False))
        residual = residual - codes[torch.cdist(residual, codes).argmin(-1)]
    return margin


UNITOK_REDUCED_ARGS = {
    "model": "vitamin_reduced",
    "img_size": 64,
    "num_query": 0,
    "vocab_size": 64,
    "vocab_width": 16,
    "num_codebooks": 4,
    "vocab_norm": True,
    "vq_beta": 0.25,
    "quant_proj": "attn",
    "embed_dim": 24,
    "text_width": 32,
    "text_heads": 4,
    "text_layers": 2,
    "text_vocab_size": 259,
    "text_context_length": 16,
    "dtype": "torch.float32",
}
UNITOK_REDUCED_ARCH = {
    "width": 64,
    "depth": 2,
    "heads": 4,
    "stem_width": 16,
    "stage_widths": [16, 32],
    "stage_depths": [1, 2],
    "up_widths": [16, 8],
    "up_depths": [2, 1],
}


def build_official_unitok(root: Path, args: dict, arch: dict, seed: int) -> nn.Module:
    """The official ``UniTok`` for ``args`` (its training arguments) and ``arch`` (the ViTamin widths that
    its ``args.model`` name stands for), seeded, norms and biases perturbed, in eval mode."""
    sys.path.insert(0, str(root))
    try:
        from models import vitamin
        from models.quant import VectorQuantizerM
        from models.unitok import UniTok
        from models.vqvae import AttnProjection
        from open_clip.model import _build_text_tower
    finally:
        sys.path.remove(str(root))

    def hybrid_vit() -> nn.Module:
        # UniTok's timm.create_model(args.model, ...) with ViTamin-L's recipe at reduced width.
        backbone = vitamin.MbConvStages(
            cfg=vitamin.VitCfg(
                embed_dim=(*arch["stage_widths"], arch["width"]),
                depths=(*arch["stage_depths"], 1),
                stem_width=arch["stem_width"],
                conv_cfg=vitamin.VitConvCfg(norm_layer="layernorm2d", norm_eps=1e-6),
                head_type="1d",
            )
        )
        return vitamin._create_vision_transformer_hybrid(
            "vitamin_large",
            backbone=backbone,
            embed_dim=arch["width"],
            depth=arch["depth"],
            num_heads=arch["heads"],
            mlp_layer=vitamin.GeGluMlp,
            mlp_ratio=2.0,
            class_token=False,
            global_pool="",
            patch_size=1,
            fc_norm=False,
            drop_rate=0.0,
            num_classes=0,
            pos_embed="none",
            reg_tokens=0,
            img_size=args["img_size"],
            drop_path_rate=0.0,
        )

    torch.manual_seed(seed)
    # UniTok.__init__ and ViTaminDecoder.__init__ take the architecture from a timm model name with
    # hard-coded widths; the same submodules are assembled here at reduced width, and the official
    # forward methods run on them.
    model = UniTok.__new__(UniTok)
    nn.Module.__init__(model)
    model.num_query = 0
    model.encoder = hybrid_vit()
    model.encoder.pos_embed = nn.Parameter(torch.zeros(1, 1, arch["width"]), requires_grad=False)
    heads = arch["width"] // args["vocab_width"]
    model.quant_proj = AttnProjection(arch["width"], args["vocab_width"], heads)
    model.quantizer = VectorQuantizerM(
        vocab_size=args["vocab_size"],
        vocab_width=args["vocab_width"],
        beta=args["vq_beta"],
        num_codebooks=args["num_codebooks"],
    )
    model.post_quant_proj = AttnProjection(args["vocab_width"], arch["width"], heads)
    decoder = vitamin.ViTaminDecoder.__new__(vitamin.ViTaminDecoder)
    nn.Module.__init__(decoder)
    trunk = hybrid_vit()
    decoder.num_query, decoder.grad_ckpt = 0, False
    decoder.blocks, decoder.norm_pre, decoder.norm = trunk.blocks, trunk.norm_pre, trunk.norm
    (w1, w2), (d1, d2) = arch["up_widths"], arch["up_depths"]
    decoder.up_conv1 = vitamin.Upsample2d(arch["width"], w1)
    decoder.up_conv2 = nn.Sequential(
        *[vitamin.InvMbConvLNBlock(in_chs=w1, out_chs=w1, stride=2 if d == 0 else 1) for d in range(d1)]
    )
    decoder.up_conv3 = nn.Sequential(
        *[
            vitamin.InvMbConvLNBlock(in_chs=w1 if d == 0 else w2, out_chs=w2, stride=2 if d == 0 else 1)
            for d in range(d2)
        ]
    )
    decoder.up_conv4 = vitamin.InvStem(in_chs=w2, out_chs=3)
    model.decoder = decoder
    text_cfg = {
        "width": args["text_width"],
        "heads": args["text_heads"],
        "layers": args["text_layers"],
        "vocab_size": args["text_vocab_size"],
        "context_length": args["text_context_length"],
    }
    model.text_encoder = _build_text_tower(args["embed_dim"], text_cfg)
    model.fc_norm = nn.LayerNorm(arch["width"], eps=1e-6)
    model.projection = nn.Linear(arch["width"], args["embed_dim"])
    model.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
    model.eval()
    perturb(model, seed + 100)
    with torch.no_grad():
        for book in model.quantizer.codebooks:  # UniTok's vocab_init is a narrow uniform draw
            book.codebook.weight.uniform_(-1.0, 1.0)
    return model


def unitok_full_fixture(root: Path, out: Path) -> None:
    """A whole UniTok model at reduced width, saved as the state dict ``trainer.unitok`` of a checkpoint
    plus the ``args`` naming its architecture; outputs of its own inference methods."""
    args, arch = UNITOK_REDUCED_ARGS, UNITOK_REDUCED_ARCH
    model = build_official_unitok(root, args, arch, seed=7)
    gen = torch.Generator().manual_seed(8)
    for _attempt in range(20):
        images = torch.rand(2, 3, args["img_size"], args["img_size"], generator=gen) * 2 - 1
        with torch.no_grad():
            feats = model.quant_proj(model.encoder(images))
        chunks = feats.reshape(-1, args["num_codebooks"], args["vocab_width"] // args["num_codebooks"])
        margin = min(
            _code_margin(chunks[:, i], book.codebook.weight, cosine=True)
            for i, book in enumerate(model.quantizer.codebooks)
        )
        if margin > 1e-3:
            break
    else:
        raise RuntimeError("no input with code margins above 1e-3")
    ids = torch.zeros(2, args["text_context_length"], dtype=torch.long)
    ids[0, :6] = torch.randint(3, 259, (6,), generator=gen)
    ids[1, :] = torch.randint(3, 259, (args["text_context_length"],), generator=gen)
    with torch.no_grad():
        codes = model.img_to_idx(images)
        reconstruction = model.idx_to_img(codes)
        image_embedding = model.encode_image(images)
        text_embedding = model.encode_text(ids)
    state = model.state_dict()
    meta = {"args": args, "arch": arch, "code_margin": margin}
    save(
        out,
        "unitok_model",
        {
            "images": images,
            "codes": codes,
            "reconstruction": reconstruction,
            "image_embedding": image_embedding,
            "text_ids": ids,
            "text_embedding": text_embedding,
        },
        state,
        meta,
    )


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

    # Semantic decoder: EvoTok builds decoder_vqkd with the encoder's width (1024), 12 heads (so heads of
    # 85 channels and an inner width of 1020), depth 3, patch size 1 on the code map, then
    # decode_task_layer. Here width 48 with 5 heads keeps the inner width (45) off the width.
    code_dim, grid, width, heads, depth, out_dim = 8, 4, 48, 5, 2, 40
    torch.manual_seed(5)
    semantic = nn.Module()
    semantic.decoder_vqkd = vqkd.VisionTransformer(
        img_size=grid,
        patch_size=1,
        in_chans=code_dim,
        num_classes=0,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        norm_layer="LayerNorm",
        init_values=0.0,
        use_abs_pos_emb=True,
        use_mean_pooling=True,
    )
    semantic.decode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, out_dim))
    semantic.eval()
    perturb(semantic, 105)
    x = torch.randn(2, code_dim, grid, grid)
    with torch.no_grad():
        y = semantic.decode_task_layer(semantic.decoder_vqkd(x, return_patch_tokens=True))
    save(
        out,
        "evotok_semantic_decoder",
        {"input": x, "output": y},
        semantic.state_dict(),
        {
            "code_dim": code_dim,
            "grid": grid,
            "width": width,
            "heads": heads,
            "depth": depth,
            "out_dim": out_dim,
        },
    )


EVOTOK_REDUCED_ARGS = {
    "vq_model": "EvoTok",
    "teacher": "siglip_reduced",
    "image_size": 16,
    "codebook_size": 16,
    "codebook_embed_dim": 8,
    "vqgan_depth": 2,
    "vqkd_depth": 4,
    "vq_warmup": 2000,
    "restart_unused_codes": True,
    "dropout_p": 0.0,
}
EVOTOK_REDUCED_ARCH = {
    "siglip": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "patch_size": 4,
        "image_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
    "decoder_heads": 3,
    "decoder_depth": 2,
    "z_channels": 16,
    "ch": 32,
    "ch_mult": [1, 1, 2],
    "num_res_blocks": 1,
}


def build_official_evotok(root: Path, args: dict, arch: dict, seed: int) -> nn.Module:
    """The official ``EvoTok`` for ``args`` and ``arch`` (the widths its ``--teacher`` stands for), with a
    randomly initialised SigLIP tower, seeded, norms and biases perturbed, in eval mode."""
    import transformers
    import transformers.modeling_utils as hf_modeling

    # EvoTok's model file imports two helpers that transformers 5 dropped (used only by its device and
    # dtype properties): put equivalents back so that it imports under either major version.
    if not hasattr(hf_modeling, "get_parameter_device"):
        hf_modeling.get_parameter_device = lambda module: next(module.parameters()).device
        hf_modeling.get_parameter_dtype = lambda module: next(module.parameters()).dtype
    sys.path.insert(0, str(root / "evotok"))
    try:
        from tokenizer.quantizer.shared_rq_quantizer import SharedResidualQuantizer
        from tokenizer.vq_model.evotok import EvoTok
        from tokenizer.vq_model.pixel_model import Decoder
        from tokenizer.vq_model.vqkd_model import ScalingLayerForSigLip, VisionTransformer
    finally:
        sys.path.remove(str(root / "evotok"))

    siglip = arch["siglip"]
    width, code_dim = siglip["hidden_size"], args["codebook_embed_dim"]
    grid = args["image_size"] // siglip["patch_size"]
    torch.manual_seed(seed)
    # EvoTok.__init__ downloads SigLIP2 and fixes the widths; its submodules are built here at reduced
    # width exactly as __init__ wires them, and the official encode / decode run on them.
    model = EvoTok.__new__(EvoTok)
    nn.Module.__init__(model)
    model.teacher = "siglip_256"  # selects EvoTok's SigLIP code path in encode / decode
    model.decoder = Decoder(
        ch_mult=arch["ch_mult"],
        z_channels=arch["z_channels"],
        ch=arch["ch"],
        num_res_blocks=arch["num_res_blocks"],
    )
    model.post_quant_conv = nn.Conv2d(code_dim, arch["z_channels"], 1)
    model.encoder_vqkd = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**siglip))
    model.decoder_vqkd = VisionTransformer(
        img_size=grid,
        patch_size=1,
        in_chans=code_dim,
        num_classes=0,
        embed_dim=width,
        depth=arch["decoder_depth"],
        num_heads=arch["decoder_heads"],
        mlp_ratio=4.0,
        qkv_bias=True,
        norm_layer="LayerNorm",
        init_values=0.0,
        use_abs_pos_emb=True,
        use_mean_pooling=True,
    )
    model.encode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, code_dim))
    model.decode_task_layer = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
    model.scaling_layer = ScalingLayerForSigLip()
    model.quantize = SharedResidualQuantizer(
        args["codebook_size"],
        code_dim,
        code_depth=(args["vqgan_depth"], args["vqkd_depth"]),
        restart_unused_codes=True,
        vq_warmup=args["vq_warmup"],
    )
    model.eval()
    perturb(model, seed + 100)
    return model


def evotok_full_fixture(root: Path, out: Path) -> None:
    """A whole EvoTok model at reduced width, saved as the ``model`` state dict of its training checkpoint
    plus the ``args`` naming its architecture; outputs of its own encode and decode."""
    args, arch = EVOTOK_REDUCED_ARGS, EVOTOK_REDUCED_ARCH
    model = build_official_evotok(root, args, arch, seed=9)
    code_dim = args["codebook_embed_dim"]
    gen = torch.Generator().manual_seed(10)
    for _attempt in range(50):
        images = torch.rand(2, 3, args["image_size"], args["image_size"], generator=gen) * 2 - 1
        with torch.no_grad():
            x = model.scaling_layer(images)
            hidden = model.encoder_vqkd(x, output_hidden_states=True).hidden_states[-2]
            feats = model.encode_task_layer(hidden)
        books = [book.weight[:-1] for book in model.quantize.codebooks]  # last row: padding index
        margin = residual_code_margin(feats.reshape(-1, code_dim), books)
        if margin > 1e-3:
            break
    else:
        raise RuntimeError("no input with code margins above 1e-3")
    state = {k: v.clone() for k, v in model.state_dict().items()}  # before encode touches usage buffers
    # The usage record is 131072 x depth zeros at construction (2 MB here): left out of the file, the
    # tests put the same zeros back.
    assert not state.pop("quantize.codebook_used").any()
    with torch.no_grad():
        quant, _, info = model.encode(images)
        semantic, pixels = model.decode(quant)
    meta = {"args": args, "arch": arch, "code_margin": margin}
    save(
        out,
        "evotok_model",
        {"images": images, "codes": info[2], "reconstruction": pixels, "semantic_tokens": semantic},
        state,
        meta,
    )


# Per step, how many input rows each code is given: codes used several times per step (their cluster
# sizes grow past 1 within the warm-up, so their codes move), once, now and then, and never.
# 10 rows every step.
EMA_UPDATE_USES = [
    [4, 2, 1, 0, 3, 0],
    [4, 2, 0, 1, 3, 0],
    [4, 2, 1, 0, 3, 0],
    [4, 1, 1, 1, 3, 0],
    [4, 3, 0, 0, 3, 0],
    [4, 2, 1, 0, 3, 0],
    [4, 2, 0, 1, 3, 0],
]
EMA_UPDATE_ARGS = {"codebook_size": 6, "dim": 3, "decay": 0.7, "eps": 1e-5, "vq_warmup": 3}


def evotok_ema_update_fixture(root: Path, out: Path) -> None:
    """EvoTok's EMA codebook update (``VQEmbedding`` in float64, restarts off: they draw random vectors)
    over steps inside and after its warm-up. Each step's inputs lie near the codes of the moment (0.05
    noise), so every assignment has a wide margin; the state after every step is saved. Decay 0.7 rather
    than 0.99 lets cluster sizes pass 1 within a few steps."""
    quantizer = _load_file_module(
        root / "evotok" / "tokenizer" / "quantizer" / "shared_rq_quantizer.py", "evotok_shared_rq_quantizer"
    )
    a = EMA_UPDATE_ARGS
    for seed in range(50):
        gen = torch.Generator().manual_seed(300 + seed)
        book = quantizer.VQEmbedding(
            a["codebook_size"],
            a["dim"],
            ema=True,
            decay=a["decay"],
            restart_unused_codes=False,
            eps=a["eps"],
            vq_warmup=a["vq_warmup"],
        )
        book = book.double().train()
        with torch.no_grad():
            shape = (a["codebook_size"], a["dim"])
            book.weight[:-1] = torch.randn(shape, generator=gen, dtype=torch.float64) * 3
            book.embed_ema.copy_(book.weight[:-1])
        initial = {k: v.clone() for k, v in book.state_dict().items()}
        record: dict[str, list[Tensor]] = {
            "inputs": [],
            "codes": [],
            "weight": [],
            "cluster_size": [],
            "embed_sum": [],
        }
        margin = float("inf")
        for uses in EMA_UPDATE_USES:
            codes = book.weight[:-1].detach().clone()
            owner = torch.repeat_interleave(torch.arange(len(uses)), torch.tensor(uses))
            x = codes[owner] + 0.05 * torch.randn(len(owner), a["dim"], generator=gen, dtype=torch.float64)
            margin = min(margin, _code_margin(x, codes, cosine=False))
            with torch.no_grad():
                _, idx, _ = book(x)
            record["inputs"].append(x)
            record["codes"].append(idx)
            record["weight"].append(book.weight[:-1].detach().clone())
            record["cluster_size"].append(book.cluster_size_ema.clone())
            record["embed_sum"].append(book.embed_ema.clone())
        moved_in_warmup = not torch.equal(record["weight"][a["vq_warmup"] - 1], initial["weight"][:-1])
        if margin > 1e-2 and moved_in_warmup:
            break
    else:
        raise RuntimeError("no seed with code margins above 1e-2 whose codes move during the warm-up")
    tensors = {k: torch.stack(v) for k, v in record.items()}
    meta = {"kind": "codebook_update", **a, "uses": EMA_UPDATE_USES, "code_margin": margin}
    save(out, "evotok_ema_update", tensors, initial, meta)


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
        unitok_full_fixture(args.unitok.resolve(), args.out)
    if args.evotok:
        evotok_fixtures(args.evotok.resolve(), args.out)
        evotok_full_fixture(args.evotok.resolve(), args.out)
        evotok_ema_update_fixture(args.evotok.resolve(), args.out)


if __name__ == "__main__":
    main()
