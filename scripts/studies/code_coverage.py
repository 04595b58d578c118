"""Which codes of held-out images a tokenizer's training images never use, per level.

A captioner that fails on held-out (shape, colour) pairs could be reading codes it never saw in training
(their embeddings untrained). This prints, for each level of the tokenizer's codes, the fraction of the
held-out and ``val`` images' positions whose code does not occur at that level anywhere in the ``train``
images' codes, one JSON line per (split, level):

python scripts/studies/code_coverage.py --tokenizer evotok-tiny --train-images 2048 --images 128 \
    --image-size 64
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import Tensor

from polytok.eval.unified.evaluate import encode_alone, split_images
from polytok.hub import load_tokenizer
from polytok.unified.layout import CodeLayout


def unseen_fraction(train_levels: Tensor, other_levels: Tensor) -> list[float]:
    """Per level, the share of ``other_levels`` positions whose code never occurs in ``train_levels``.

    Both are (B, N, L, C) codes split into levels (:meth:`CodeLayout.to_levels`); a (level, codebook)
    slot's code counts as seen where the same codebook of the same level used it.
    """
    out = []
    for level in range(train_levels.shape[2]):
        unseen = torch.zeros(other_levels.shape[:2] + other_levels.shape[3:], dtype=torch.bool)
        for book in range(train_levels.shape[3]):
            seen = torch.unique(train_levels[:, :, level, book])
            unseen[..., book] = ~torch.isin(other_levels[:, :, level, book], seen)
        out.append(float(unseen.double().mean()))
    return out


def encode_split(tokenizer, split: str, count: int, image_size: int, seed: int) -> Tensor:
    """The codes (count, h, w, *code_shape) of a ``shapes`` split's first images, each encoded alone, as
    the unified model's training and evaluation encode them."""
    items = split_images(split, image_size, count, seed)
    with torch.no_grad():
        return encode_alone(tokenizer, torch.stack([it["image"] for it in items]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", default="evotok-tiny", help="shipped name or save_pretrained folder")
    parser.add_argument("--train-images", type=int, default=2048)
    parser.add_argument("--images", type=int, default=128, help="images of each of val and heldout")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="the shapes seed (the evaluation's is 0)")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer).eval()
    train = encode_split(tokenizer, "train", args.train_images, args.image_size, args.seed)
    layout = CodeLayout.from_tokenizer(tokenizer, grid=tuple(train.shape[1:3]))
    train_levels = layout.to_levels(train)
    for split in ("val", "heldout"):
        other = layout.to_levels(encode_split(tokenizer, split, args.images, args.image_size, args.seed))
        for level, fraction in enumerate(unseen_fraction(train_levels, other)):
            print(
                json.dumps(
                    {
                        "split": split,
                        "level": level,
                        "unseen_fraction": fraction,
                        "train_images": args.train_images,
                        "images": args.images,
                    }
                )
            )


if __name__ == "__main__":
    main()
