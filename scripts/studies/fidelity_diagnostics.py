"""Where do the shapes go? Diagnostics behind section 6 of docs/study.md, on held-out ``shapes`` images.

    python scripts/studies/fidelity_diagnostics.py references  # the judge on degraded originals
    python scripts/studies/fidelity_diagnostics.py latents unitok-tiny  # codes against unquantized latents
    python scripts/studies/fidelity_diagnostics.py linear  # linear codec of the token grid
    python scripts/studies/fidelity_diagnostics.py finetune unitok-tiny --parts decoder --steps 200
    python scripts/studies/fidelity_diagnostics.py finetune unitok-tiny --parts autoencoder --steps 300 \\
        --set loss.l2=10 loss.l1=2                                         # dotted overrides of its config

``references``: the shapes judge (shape, all attributes) and PSNR on the originals after Gaussian blurs,
bicubic down-and-ups (the codec reference of ``polytok eval``) and token-cell means (each cell of a
stride x stride grid replaced by its mean colour): how much geometry each degradation leaves.
``latents``: a shipped tokenizer's reconstruction from its codes against its decoder on the encoder's
unquantized latents (normalised per codebook where the
codebooks are cosine ones): is the quantizer what loses the shapes? ``linear``: the best linear code of the
stride-4 token grid, the principal components of 4 x 4 patches (fitted on ``--fit-images`` training
``shapes`` images): with k components per token unquantized, then 32 components quantized by residual
k-means codebooks of 1024 entries, level by level (10 bits per token each): what a token of a few dozen
bits can keep with no training at all. ``finetune``: continues training a
shipped tokenizer from its weights with only some parts trainable (``decoder``: post-projection and pixel
decoder; ``autoencoder``: encoder, projections, quantizer and pixel decoder), its shipped config's losses
with the semantic term off (and the given overrides), constant lr after a short warm-up; the judge and
PSNR every ``--every`` steps: does more training of that part bring the shapes back?

Every line printed is one JSON record.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from polytok.data.shapes import ShapesDataset
from polytok.eval.families.attributes import cell_means
from polytok.eval.families.references import bicubic_at_bits
from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES, load_shapes_judge, render_batch
from polytok.eval.shapes.scores import ALL, accuracy, correct_flags
from polytok.hub import load_tokenizer
from polytok.nn.patch_pca import PatchPCA
from polytok.quant import ResidualQuantizer

PARTS = {
    "decoder": ("post_projection", "pixel_decoder"),
    "autoencoder": ("encoder", "projection", "quantizer", "post_projection", "pixel_decoder"),
}


def heldout(images: int, size: int = 64) -> tuple[Tensor, dict[str, Tensor]]:
    dataset = ShapesDataset("heldout", image_size=size, length=images)
    return render_batch(dataset, list(range(images)))


def scores(judge, originals: Tensor, labels: dict[str, Tensor], images: Tensor) -> dict[str, float | None]:
    """Judge's shape and all-attribute accuracy of ``images``, and their PSNR (dB) against the originals
    from the squared error pooled over all images (``polytok eval`` averages per-image PSNRs instead,
    which reads higher on images of very different difficulty)."""
    readings = judge.read(images.clamp(0, 1))
    flags = [
        correct_flags(
            {name: readings[name][i] for name in JUDGED_ATTRIBUTES},
            {name: labels[name][i] for name in JUDGED_ATTRIBUTES},
            JUDGED_ATTRIBUTES,
        )
        for i in range(len(images))
    ]
    right = accuracy(flags)
    mse = F.mse_loss(images.clamp(0, 1).double(), originals.double()).item()
    return {
        "shape": round(right["shape"], 4),
        "all": round(right[ALL], 4),
        "psnr_pooled": round(-10 * math.log10(mse), 2) if mse > 0 else None,
    }


def bicubic_down_up(images: Tensor, factor: int) -> Tensor:
    """(B, 3, S, S) -> the codec reference of ``polytok eval`` at the bits of an (S / factor)-px image."""
    side = images.shape[-1] // factor
    return torch.stack([bicubic_at_bits(image, side * side * 24)[0] for image in images])


def references(args: argparse.Namespace) -> None:
    judge = load_shapes_judge()
    x, labels = heldout(args.images)
    degradations: dict[str, Callable[[Tensor], Tensor]] = {"original": lambda t: t}
    for sigma in (0.5, 1.0, 1.5):
        degradations[f"blur sigma {sigma}"] = lambda t, s=sigma: gaussian_blur(t, 9, s)
    for factor in (2, 4):
        degradations[f"bicubic down-up x{factor}"] = lambda t, f=factor: bicubic_down_up(t, f)
        degradations[f"token-cell means {factor} x {factor}"] = lambda t, f=factor: cell_means(t, f)
    with torch.inference_mode():
        for name, degrade in degradations.items():
            figures = scores(judge, x, labels, degrade(x))
            print(json.dumps({"reference": name, "images": args.images, **figures}))


def unquantized_latents(tokenizer, z: Tensor) -> Tensor:
    """(B, N, D) encoder latents as the decoder's input without quantization: per-codebook unit vectors
    for cosine codebooks, the latents themselves otherwise."""
    cfg = tokenizer.config.quantizer
    if not cfg.normalize:
        return z
    b, n, d = z.shape
    return F.normalize(z.reshape(b, n, cfg.num_codebooks, -1), dim=-1).reshape(b, n, d)


def latents(args: argparse.Namespace) -> None:
    judge, tokenizer = load_shapes_judge(), load_tokenizer(args.tokenizer).eval()
    x, labels = heldout(args.images)
    with torch.inference_mode():
        codes = tokenizer.decode(tokenizer.encode(x))
        z, grid = tokenizer._latent(tokenizer._prepare(x))
        continuous = tokenizer._pixels(unquantized_latents(tokenizer, z), grid)
    for name, images in (("codes", codes), ("unquantized latents", continuous)):
        record = {"tokenizer": args.tokenizer, "decoded_from": name, "images": args.images}
        print(json.dumps({**record, **scores(judge, x, labels, images)}))


def linear(args: argparse.Namespace) -> None:
    judge, (x, labels) = load_shapes_judge(), heldout(args.images)
    fit_set = ShapesDataset("train", image_size=64, length=args.fit_images)
    fit_images, _ = render_batch(fit_set, list(range(args.fit_images)))
    grid = (x.shape[-2] // args.stride, x.shape[-1] // args.stride)
    record = {"reference": "linear patch codec", "stride": args.stride, "images": args.images}
    with torch.inference_mode():
        for k in args.components:
            pca = PatchPCA(args.stride, k)
            pca.fit(fit_images)
            figures = scores(judge, x, labels, pca.decode(pca.encode(x), grid))
            print(json.dumps({**record, "components": k, "quantized": False, **figures}))
    pca = PatchPCA(args.stride, args.quantized_components)
    pca.fit(fit_images)
    torch.manual_seed(args.seed)
    rvq = ResidualQuantizer(
        args.quantized_components, args.levels, 1024, kmeans_init=True, kmeans_iters=15, update="ema"
    )
    coefficients = pca.encode(fit_images).reshape(1, -1, args.quantized_components)
    sample = coefficients[:, torch.randperm(coefficients.shape[1])[: args.kmeans_rows]]
    with torch.no_grad():
        rvq.train()(sample)  # k-means initialises every level on the sample, level by level
    rvq.eval()
    with torch.inference_mode():
        quant = rvq(pca.encode(x))
        for depth in range(1, args.levels + 1):
            figures = scores(judge, x, labels, pca.decode(quant.prefix(depth), grid))
            extra = {"components": args.quantized_components, "quantized": True, "bits_per_token": 10 * depth}
            print(json.dumps({**record, **extra, **figures}))


def finetune(args: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader

    from polytok.data import collate
    from polytok.recipes.sections import build_training_dataset
    from polytok.recipes.tokenizer_objective import TokenizerObjective
    from polytok.recipes.tokenizer_run import load_run_config
    from polytok.registry import CONFIG_DIR

    torch.manual_seed(args.seed)
    judge, tokenizer = load_shapes_judge(), load_tokenizer(args.tokenizer)
    config = load_run_config(CONFIG_DIR / f"{args.tokenizer}.yaml", args.overrides)
    loss = dataclasses.replace(config.loss, semantic=0.0, caption_choice=0.0)  # the semantic branch is frozen
    tokenizer.requires_grad_(False)
    for part in PARTS[args.parts]:
        getattr(tokenizer, part).requires_grad_(True)
    objective = TokenizerObjective(tokenizer, loss, args.steps)
    params = [p for p in tokenizer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    data = DataLoader(
        build_training_dataset(config.data), batch_size=config.train.batch_size, shuffle=True,
        collate_fn=collate, drop_last=True,
    )  # fmt: skip
    x, labels = heldout(args.images)
    start = time.perf_counter()
    header = {"tokenizer": args.tokenizer, "parts": args.parts, "overrides": args.overrides, "lr": args.lr}

    def report(step: int) -> None:
        tokenizer.eval()
        with torch.inference_mode():
            y = tokenizer.decode(tokenizer.encode(x))
        figures = {"step": step, "seconds": round(time.perf_counter() - start), **scores(judge, x, labels, y)}
        print(json.dumps({**header, **figures}), flush=True)

    def train_mode() -> None:
        tokenizer.train()
        if "quantizer" not in PARTS[args.parts]:
            tokenizer.quantizer.eval()  # frozen codebooks: no restarts or EMA updates either

    report(0)
    step = 0
    train_mode()
    while step < args.steps:
        for batch in data:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
            total, _ = objective.generator_loss(tokenizer, batch, None)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, config.train.grad_clip or 10.0)
            optimizer.step()
            step += 1
            if step % args.every == 0 or step == args.steps:
                report(step)
                train_mode()
            if step >= args.steps:
                break


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--images", type=int, default=256, help="held-out shapes images measured")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("references")
    sub.add_parser("latents").add_argument("tokenizer")
    lin = sub.add_parser("linear")
    lin.add_argument("--stride", type=int, default=4)
    lin.add_argument("--components", type=int, nargs="+", default=[8, 12, 16, 24, 32])
    lin.add_argument("--quantized-components", type=int, default=32)
    lin.add_argument("--levels", type=int, default=8)
    lin.add_argument("--fit-images", type=int, default=2000, help="training shapes images for the fit")
    lin.add_argument("--kmeans-rows", type=int, default=150_000, help="patches the codebooks are fitted on")
    lin.add_argument("--seed", type=int, default=0)
    tune = sub.add_parser("finetune")
    tune.add_argument("tokenizer")
    tune.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides of the tokenizer's shipped config, e.g. loss.l2=10",
    )
    tune.add_argument("--parts", choices=sorted(PARTS), default="decoder")
    tune.add_argument("--steps", type=int, default=200)
    tune.add_argument("--every", type=int, default=100)
    tune.add_argument("--lr", type=float, default=3e-4)
    tune.add_argument("--warmup", type=int, default=20)
    tune.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    commands = {"references": references, "latents": latents, "linear": linear, "finetune": finetune}
    commands[args.command](args)


if __name__ == "__main__":
    main()
