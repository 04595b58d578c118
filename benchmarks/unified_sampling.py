"""Speed of the unified model: image sampling with the KV caches against full recomputation, and training.

    python benchmarks/unified_sampling.py [--tokenizers unitok-tiny evotok-tiny polytok-tiny]
                                          [--preset small] [--batch-size 4] [--guidance 3.0] [--threads 2]
                                          [--train-preset tiny] [--train-batch 8] [--train-steps 3]

Both sampling paths sample the same captions with the same seed in one run, side by side, and the table
says whether they produced the same codes. The model is randomly initialised (speed does not depend on
the weights); each tokenizer's full grid is generated (16 x 16 = 256 positions for the tiny presets), with
classifier-free guidance, so every step runs 2 x batch rows. The recomputation path reruns the backbone
over the whole sequence and the depth head over the position's sub-codes at every step.

Training throughput: tokens/s of full training steps (forward, backward, AdamW step) of the
``--train-preset`` model on mixed batches (half text -> image, half image -> text, full grids, random
codes), counting every real token of the batch, image positions and text tokens alike.

``--quick`` runs a 3 x 3 grid on the tiny preset in float64 and one training step (a smoke test of the
script and of the equality).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from polytok.unified import UnifiedModel, generate_image_codes, train_text_tokenizer, unified_preset

CAPTIONS = [
    "a red circle on a white background",
    "a small blue square",
    "a large green triangle",
    "two yellow stars in the corner",
    "a photo of a cat on a sofa",
    "a purple hexagon",
    "an orange ring",
    "a grey cross on black",
]


def measure(name: str, args: argparse.Namespace) -> dict[str, object]:
    from polytok.hub import load_tokenizer

    tokenizer = load_tokenizer(name, allow_untrained=True)
    text = train_text_tokenizer(CAPTIONS * 4, vocab_size=320)
    torch.manual_seed(0)
    grid = (3, 3) if args.quick else None
    model = UnifiedModel.from_tokenizer(tokenizer, text, unified_preset(args.preset), grid=grid).eval()
    model = model.to(torch.float64 if args.quick else torch.float32)
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.batch_size)]
    kwargs = dict(guidance_scale=args.guidance, temperature=1.0, top_k=0, top_p=1.0, seed=0)
    generate_image_codes(model, captions[:1], **{**kwargs, "use_cache": True})  # warm-up
    times, codes = {}, {}
    for use_cache in (True, False):
        start = time.perf_counter()
        codes[use_cache] = generate_image_codes(model, captions, use_cache=use_cache, **kwargs)
        times[use_cache] = time.perf_counter() - start
    layout = model.layout
    return {
        "tokenizer": name,
        "positions": layout.num_positions,
        "sub-codes / position": layout.generation_depth,
        "batch": args.batch_size,
        "cached img/s": args.batch_size / times[True],
        "recomputed img/s": args.batch_size / times[False],
        "speed-up": times[False] / times[True],
        "tokens equal": bool(torch.equal(codes[True], codes[False])),
        **measure_training(tokenizer, text, args),
    }


def measure_training(tokenizer, text, args: argparse.Namespace) -> dict[str, float]:
    """Tokens/s of training steps (forward + backward + AdamW) on mixed batches of random codes."""
    torch.manual_seed(0)
    grid = (3, 3) if args.quick else None
    model = UnifiedModel.from_tokenizer(tokenizer, text, unified_preset(args.train_preset), grid=grid).train()
    layout = model.layout
    b = args.train_batch
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, layout.codebook_size, (b, *layout.grid, *layout.code_shape), generator=g)
    captions = text.encode_batch([CAPTIONS[i % len(CAPTIONS)] for i in range(b)])
    tasks = ["t2i" if i % 2 == 0 else "i2t" for i in range(b)]
    batch = model.format.training_batch(codes, captions, tasks, caption_dropout=0.1, generator=g)
    tokens = int(batch.attention_mask.sum())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        optimizer.step()

    train_step()  # warm-up (allocates the optimizer state)
    start = time.perf_counter()
    for _ in range(args.train_steps):
        train_step()
    elapsed = time.perf_counter() - start
    return {"train tokens / step": tokens, "train tokens/s": tokens * args.train_steps / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizers", nargs="+", default=["unitok-tiny", "evotok-tiny", "polytok-tiny"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-preset", default="tiny", help="the model whose training is timed")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 x 3 grid, tiny preset, float64")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.batch_size, args.tokenizers = "tiny", 2, args.tokenizers[:1]
        args.train_batch, args.train_steps = 2, 1
    torch.set_num_threads(args.threads)
    rows = [measure(name, args) for name in args.tokenizers]
    setting = f"preset {args.preset}, batch {args.batch_size}, cfg {args.guidance}, {args.threads} threads"
    print(
        f"| tokenizer ({setting}) | positions x sub-codes | KV cache img/s | recomputation img/s | speed-up "
        "| same codes |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        same = "yes" if r["tokens equal"] else "no"
        print(
            f"| {r['tokenizer']} | {r['positions']} x {r['sub-codes / position']} | "
            f"{r['cached img/s']:.3f} | {r['recomputed img/s']:.3f} | **{r['speed-up']:.1f}x** | {same} |"
        )
    print()
    print(
        f"| tokenizer (training: preset {args.train_preset}, batch {args.train_batch}, AdamW) "
        "| tokens / step | train tokens/s |"
    )
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['tokenizer']} | {r['train tokens / step']} | {r['train tokens/s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
