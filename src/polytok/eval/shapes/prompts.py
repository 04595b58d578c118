"""A fixed, versioned suite of text-to-image prompts on the built-in ``shapes`` world.

Every (shape, colour) pair of ``shapes`` gets ``prompts_per_pair`` prompts (one by default: 42 prompts,
small enough to sample on a CPU); count, size, position and background are drawn from a generator
seeded by (suite seed, pair, prompt), so the suite is the same on every machine. Each prompt is the
dataset's own caption of its attributes (:func:`polytok.data.shapes.caption_for`), so a model trained on
``shapes`` captions is asked in exactly the grammar it was trained on, and each carries those
attributes as the truth a generated image is judged against. Prompts of the six held-out pairs
(:data:`polytok.data.shapes.HELDOUT_PAIRS`, never in a training caption) are marked ``heldout``.

    suite = prompt_suite()                       # 42 prompts, PROMPT_SUITE_VERSION
    suite[0].caption, suite[0].attributes, suite[0].heldout
    more = prompt_suite(prompts_per_pair=4)      # 168 prompts; the first of each pair is unchanged

Change anything that changes a prompt, and bump :data:`PROMPT_SUITE_VERSION`: every figure measured on
the suite records it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from polytok.data.shapes import (
    COLOURS,
    HELDOUT_PAIRS,
    SHAPES,
    caption_for,
    draw_scene_attributes,
)

PROMPT_SUITE_VERSION = "shapes-prompts/1"
_SUITE_SEED = 20261202  # part of the suite's definition: changing it changes every prompt


@dataclass(frozen=True)
class ShapesPrompt:
    """One prompt: ``caption`` (the dataset's caption of ``attributes``), ``attributes`` as class indices
    of ``shapes`` (shape, colour, size, position, count, background) and whether its (shape, colour)
    pair is held out of training."""

    index: int
    caption: str
    attributes: dict[str, int] = field(hash=False)
    heldout: bool

    @property
    def pair(self) -> tuple[str, str]:
        """(shape, colour) names."""
        return SHAPES[self.attributes["shape"]], tuple(COLOURS)[self.attributes["colour"]]

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "caption": self.caption,
            "attributes": dict(self.attributes),
            "heldout": self.heldout,
        }


def prompt_suite(prompts_per_pair: int = 1, heldout_pairs=HELDOUT_PAIRS) -> list[ShapesPrompt]:
    """The suite: ``prompts_per_pair`` prompts for each of the 42 (shape, colour) pairs, shape-major.

    Prompt k of a pair is the same whatever ``prompts_per_pair`` is (k < prompts_per_pair), so a larger
    suite extends the default one.
    """
    if int(prompts_per_pair) < 1:
        raise ValueError(f"prompts_per_pair must be >= 1, got {prompts_per_pair}")
    held = {(SHAPES.index(s), tuple(COLOURS).index(c)) for s, c in heldout_pairs}
    prompts: list[ShapesPrompt] = []
    for shape in range(len(SHAPES)):
        for colour in range(len(COLOURS)):
            for k in range(int(prompts_per_pair)):
                rng = np.random.default_rng([_SUITE_SEED, shape, colour, k])
                attributes = draw_scene_attributes(shape, colour, rng)
                prompts.append(
                    ShapesPrompt(len(prompts), caption_for(attributes), attributes, (shape, colour) in held)
                )
    return prompts
