"""What an attribute score must beat: chance, and models that know only one attribute.

For a task that needs several attributes right at once (the (shape, colour) pair of a generated image
or of a zero-shot class, or every attribute of a caption), chance is far too easy a baseline: a model
that knows the colour perfectly and nothing about the shape already names the pair 1 time in 6 on the
42 ``shapes`` pairs. :func:`single_attribute_baselines` gives, for each attribute a of the task, the
accuracy of a model that names a right and guesses the others uniformly among the candidate
combinations that agree with it. Everything is counted from the dataset's class lists, never typed in.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from polytok.data.shapes import COLOURS, SHAPES, TASK_CLASSES

PAIR = ("shape", "colour")


def chance(attributes: Sequence[str]) -> float:
    """Accuracy of a uniform guess of every attribute in ``attributes`` at once."""
    value = 1.0
    for name in attributes:
        if name not in TASK_CLASSES:
            raise ValueError(f"unknown shapes attribute {name!r}: expected one of {tuple(TASK_CLASSES)}")
        value /= len(TASK_CLASSES[name])
    return value


def all_combinations(attributes: Sequence[str]) -> list[dict[str, int]]:
    """Every combination of the attributes' classes, as attribute -> class index."""
    ranges = [range(len(TASK_CLASSES[name])) for name in attributes]
    return [dict(zip(attributes, values)) for values in itertools.product(*ranges)]


def single_attribute_baselines(
    truths: Sequence[Mapping[str, int]],
    attributes: Sequence[str],
    candidates: Sequence[Mapping[str, int]] | None = None,
    top_k: int = 1,
) -> dict[str, float]:
    """``{"<a> only": accuracy}`` for each attribute a of a joint task over ``attributes``.

    A model that knows only a ranks the ``candidates`` (default: every combination of the attributes'
    classes) that agree with the truth on a first, in random order; its top-``top_k`` holds the truth
    with probability min(k, n) / n for n such candidates. The figure is the mean of that over
    ``truths`` (the evaluated items).
    """
    if len(attributes) < 2:
        raise ValueError(f"a single-attribute baseline needs a joint task of 2+ attributes, got {attributes}")
    if not truths:
        raise ValueError("no items to compute baselines over")
    candidates = list(candidates) if candidates is not None else all_combinations(attributes)
    baselines = {}
    for known in attributes:
        agreeing = {}
        for candidate in candidates:
            agreeing[candidate[known]] = agreeing.get(candidate[known], 0) + 1
        total = 0.0
        for truth in truths:
            count = agreeing.get(truth[known], 0)
            total += min(top_k, count) / count if count else 0.0
        baselines[f"{known} only"] = total / len(truths)
    return baselines


def object_class_attributes(name: str) -> dict[str, int] | None:
    """``"red circle"`` -> ``{"shape": 0, "colour": 0}``; None for a name that is not a shapes object."""
    colour, _, shape = name.partition(" ")
    if colour not in COLOURS or shape not in SHAPES:
        return None
    return {"shape": SHAPES.index(shape), "colour": tuple(COLOURS).index(colour)}


def zero_shot_baselines(class_names: Sequence[str], top_k: int = 1) -> dict[str, float]:
    """Baselines of zero-shot top-k over ``class_names``: chance (k / classes) and, when the classes are
    (colour, shape) pairs of ``shapes``, the shape-only and colour-only models among those classes."""
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty")
    baselines = {"chance": min(top_k, len(names)) / len(names)}
    pairs = [object_class_attributes(name) for name in names]
    if all(pair is not None for pair in pairs):
        # every class is a candidate and equally likely to be the truth
        baselines.update(single_attribute_baselines(pairs, PAIR, pairs, top_k))  # type: ignore[arg-type]
    return baselines
