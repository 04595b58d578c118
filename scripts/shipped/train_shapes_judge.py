"""Train the ``shapes`` judge shipped in the package and print its accuracy on real held-out images.

python scripts/shipped/train_shapes_judge.py  # writes src/polytok/eval/shapes/shapes-judge.safetensors
python scripts/shipped/train_shapes_judge.py --out /tmp/j.safetensors --steps 500
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from polytok.data.shapes import ShapesDataset
from polytok.eval.shapes.judge import (
    JUDGED_ATTRIBUTES,
    WEIGHTS_PATH,
    JudgeRecipe,
    render_batch,
    save_shapes_judge,
    train_shapes_judge,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(WEIGHTS_PATH), help="weights file to write")
    for field in dataclasses.fields(JudgeRecipe):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default
        )
    parser.add_argument("--eval-images", type=int, default=1000, help="held-out images to measure on")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    recipe = JudgeRecipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(JudgeRecipe)})
    judge = train_shapes_judge(recipe, log=print)
    save_shapes_judge(judge, recipe, args.out)
    for split in ("val", "heldout"):
        images, labels = render_batch(
            ShapesDataset(split, 64, length=args.eval_images, seed=1), list(range(args.eval_images))
        )
        readings = judge.read(images)
        accuracy = {
            name: round(float((readings[name] == labels[name]).float().mean()), 4)
            for name in JUDGED_ATTRIBUTES
        }
        print(f"{split}: {accuracy}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
