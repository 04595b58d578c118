"""Captions re-ranked by the generator: the image -> text direction proposes, text -> image decides.

A greedy caption is written word by word, so each word is chosen under the language prior the captioner
learnt from training captions. On ``shapes`` that prior never saw a held-out (shape, colour) pair, and
after the colour word it names a shape seen in that colour, whatever the image shows. The same model's
text -> image direction composes the two words (its likelihood picks the held-out images' shape as
often as the seen ones'). Re-ranking reads the captioner's parse, rewrites one attribute with each of its
values and keeps the caption under which the image's tokens are most likely:

    score(caption) = bits(image | caption) + caption_weight * bits(caption | image)

``caption_weight`` 0 is a generative classifier with a uniform prior over the attribute's values; 1 is
the joint likelihood of both directions (noisy-channel re-ranking), which brings the captioner's prior
back. Attributes are re-ranked one after another, each given the others as chosen so far.

    from polytok.eval.unified.rerank import rerank_captions
    parsed = rerank_captions(model, codes, parsed, ("shape",))   # codes (B, h, w, *code_shape)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from polytok.data.shapes import TASK_CLASSES, caption_for
from polytok.eval.shapes.captions import CAPTION_ATTRIBUTES
from polytok.eval.unified.likelihood import image_bits

Parse = dict[str, int]


def check_rerank(
    attributes: Sequence[str],
    caption_weight: float = 0.0,
    name: str = "rerank",
    weight_name: str = "caption_weight",
) -> None:
    """Refuse, before any work, attributes a caption does not state (``object`` included: no caption
    word names it) and a negative weight; ``name`` / ``weight_name``: the caller's parameters."""
    bad = [a for a in attributes if a not in CAPTION_ATTRIBUTES]
    if bad:
        raise ValueError(f"{name} must be among {list(CAPTION_ATTRIBUTES)}, got {bad}")
    if not math.isfinite(caption_weight) or caption_weight < 0:
        raise ValueError(f"{weight_name} must be a finite number >= 0, got {caption_weight}")


@torch.no_grad()
def caption_bits(model: Any, codes: Tensor, captions: Sequence[str], batch_size: int = 16) -> Tensor:
    """-log2 p(caption | image) of each caption, teacher forced (up to and including <eos>): codes
    (B, h, w, *code_shape) and B captions -> (B,) float64 bits."""
    from polytok.unified.sequence import IGNORE

    if len(codes) != len(captions) or not len(codes):
        raise ValueError(
            f"need as many captions as images (at least one), got {len(captions)} and {len(codes)}"
        )
    fmt, text = model.format, model.text_tokenizer
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(codes), batch_size):
            chunk = fmt.layout.to_levels(codes[start : start + batch_size])
            items = [
                fmt.image_to_text(image, text.encode(c))
                for c, image in zip(captions[start : start + batch_size], chunk)
            ]
            batch = fmt.collate(items).to(model.device)
            hidden, _ = model.run_backbone(
                model.embed_sequence(batch), batch.attention_mask, batch.position_ids
            )
            predicted = batch.text_targets != IGNORE  # (b, T): the caption's tokens and <eos>
            logits = model.text_logits(hidden[predicted]).double()
            nats = F.cross_entropy(logits, batch.text_targets[predicted], reduction="none")
            rows = predicted.nonzero()[:, 0]
            per_row = torch.zeros(len(items), dtype=torch.float64, device=nats.device)
            out.append(per_row.index_add_(0, rows, nats).cpu() / math.log(2))
    finally:
        model.train(was_training)
    return torch.cat(out)


def rerank_attribute(
    model: Any,
    codes: Tensor,
    parsed: Sequence[Parse | None],
    attribute: str,
    *,
    caption_weight: float = 0.0,
    batch_size: int = 16,
) -> list[Parse | None]:
    """Each parse with ``attribute`` set to the value of lowest score (module docstring); codes
    (B, h, w, *code_shape), B parses (None: a caption outside the grammar, left as it is)."""
    check_rerank([attribute], caption_weight)
    if len(codes) != len(parsed):
        raise ValueError(f"need one parse per image, got {len(parsed)} and {len(codes)}")
    rows = [i for i, p in enumerate(parsed) if p is not None]
    out = [None if p is None else dict(p) for p in parsed]
    if not rows:
        return out
    chosen = codes[rows]
    scores = []
    for value in range(len(TASK_CLASSES[attribute])):
        captions = [caption_for({**parsed[i], attribute: value}) for i in rows]
        score = image_bits(model, chosen, captions, batch_size)
        if caption_weight:
            score = score + caption_weight * caption_bits(model, chosen, captions, batch_size)
        scores.append(score)
    best = torch.stack(scores, dim=1).argmin(dim=1)  # (rows,)
    for row, value in zip(rows, best.tolist()):
        out[row][attribute] = int(value)
    return out


def rerank_captions(
    model: Any,
    codes: Tensor,
    parsed: Sequence[Mapping[str, int] | None],
    attributes: Sequence[str] = ("shape",),
    *,
    caption_weight: float = 0.0,
    batch_size: int = 16,
) -> list[Parse | None]:
    """:func:`rerank_attribute` for each of ``attributes`` in turn; returns the new parses (the
    captions are ``caption_for(parse)``)."""
    current: list[Parse | None] = [None if p is None else dict(p) for p in parsed]
    for attribute in attributes:
        current = rerank_attribute(
            model, codes, current, attribute, caption_weight=caption_weight, batch_size=batch_size
        )
    return current
