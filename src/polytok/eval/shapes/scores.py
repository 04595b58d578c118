"""Attribute accuracy of readings (a judge's, or a parsed caption's) against the intended attributes.

A reading of None (a caption that did not parse) is wrong for every attribute. Besides each attribute:
``all`` (every scored attribute right at once) and ``pair`` (shape and colour both right, the
compositional part of a prompt).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

ALL = "all"
PAIR_SCORE = "pair"


def correct_flags(
    reading: Mapping[str, int] | None, truth: Mapping[str, int], attributes: Sequence[str]
) -> dict[str, bool]:
    """``{attribute: right, "all": every one right, "pair": shape and colour right}`` for one item."""
    flags = {name: reading is not None and int(reading[name]) == int(truth[name]) for name in attributes}
    flags[ALL] = all(flags[name] for name in attributes)
    if "shape" in attributes and "colour" in attributes:
        flags[PAIR_SCORE] = flags["shape"] and flags["colour"]
    return flags


def accuracy(flags: Sequence[Mapping[str, bool]]) -> dict[str, float]:
    """Mean of each flag over items (the keys of the first item)."""
    if not flags:
        raise ValueError("no items to score")
    return {name: sum(bool(f[name]) for f in flags) / len(flags) for name in flags[0]}
