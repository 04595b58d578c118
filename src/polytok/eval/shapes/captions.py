"""Reading a caption back into ``shapes`` attributes, by the dataset's own grammar.

The grammar is :func:`polytok.data.shapes.caption_for` itself: every caption it can write (3 counts x 2
sizes x 7 colours x 6 shapes x 5 positions x 4 backgrounds = 5040) is generated once and looked up, so
the parser can never drift from the captions the models are trained on. A caption the grammar cannot
write (a wrong plural, a missing word, an unknown colour) does not parse: :func:`parse_caption` returns
None, and a scorer counts it wrong for every attribute.
"""

from __future__ import annotations

import functools
import itertools

from polytok.data.shapes import TASK_CLASSES, caption_for

# the attributes a caption states, in the order caption_for reads them
CAPTION_ATTRIBUTES = ("shape", "colour", "size", "position", "count", "background")


def normalise_caption(text: str) -> str:
    """Lower case, single spaces, no trailing full stop: the decoder's spacing is not the model's error."""
    return " ".join(str(text).lower().split()).rstrip(".").strip()


@functools.cache
def _grammar() -> dict[str, tuple[int, ...]]:
    table: dict[str, tuple[int, ...]] = {}
    ranges = [range(len(TASK_CLASSES[name])) for name in CAPTION_ATTRIBUTES]
    for values in itertools.product(*ranges):
        caption = caption_for(dict(zip(CAPTION_ATTRIBUTES, values)))
        key = normalise_caption(caption)
        if key in table:  # the grammar is ambiguous: a parser of it could not exist
            raise RuntimeError(f"two attribute sets share the caption {caption!r}")
        table[key] = values
    return table


def parse_caption(text: str) -> dict[str, int] | None:
    """``"two small red triangles at the top on a striped background"`` -> attribute indices
    ``{"shape": 2, "colour": 0, "size": 0, "position": 2, "count": 1, "background": 1}``; None when the
    text is not a caption of the ``shapes`` grammar."""
    values = _grammar().get(normalise_caption(text))
    return None if values is None else dict(zip(CAPTION_ATTRIBUTES, values))
