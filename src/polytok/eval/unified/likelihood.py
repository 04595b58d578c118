"""The text -> image direction read as a classifier: which caption makes an image most likely?

For a ``shapes`` image, its caption is rewritten with every value of one attribute (the rest unchanged)
and the model's teacher-forced bits of the image's pixel prefix are computed under each caption; the value
of fewest bits is the model's choice. Where sampled images read by the judge need the generator to draw
a whole coherent object, this needs no sampling and no judge: it asks whether the generator's
distribution over image tokens follows the words, the first thing generation needs. Each choice also has
a margin (bits under the best wrong value minus bits under the true one; > 0: right), so a figure can be
stated as "right by at least m bits", which float rounding on another machine cannot change.

    from polytok.eval.unified.likelihood import likelihood_choice
    result = likelihood_choice(model, codes, attributes, "colour")   # codes (B, h, w, *code_shape)
    result.accuracy, result.margins                                  # margins (B,) float64, in bits
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from polytok.data.shapes import TASK_CLASSES, caption_for
from polytok.eval.result import MetricResult


def t2i_batches(
    model: Any, codes: Tensor, captions: Sequence[str], batch_size: int = 16
) -> Iterator[tuple[Tensor, Any]]:
    """Codes (B, h, w, *code_shape) with their B captions as text -> image batches: (codes of the chunk
    in levels (b, N, L, C), its :class:`~polytok.unified.sequence.SequenceBatch` on the model's device)."""
    from polytok.unified.sequence import SequenceBatch

    if len(codes) != len(captions) or not len(codes):
        raise ValueError(
            f"need as many captions as images (at least one), got {len(captions)} and {len(codes)}"
        )
    fmt, text = model.format, model.text_tokenizer
    for start in range(0, len(codes), batch_size):
        chunk = fmt.layout.to_levels(codes[start : start + batch_size])
        items = [
            fmt.text_to_image(text.encode(c), image)
            for c, image in zip(captions[start : start + batch_size], chunk)
        ]
        yield chunk, SequenceBatch(**vars(fmt.collate(items))).to(model.device)


@torch.no_grad()
def image_bits(model: Any, codes: Tensor, captions: Sequence[str], batch_size: int = 16) -> Tensor:
    """-log2 p(pixel prefix | caption) of each image, teacher forced: codes (B, h, w, *code_shape) and B
    captions -> (B,) float64 bits per image."""
    layout = model.layout
    was_training = model.training
    model.eval()
    out = []
    try:
        for chunk, batch in t2i_batches(model, codes, captions, batch_size):
            logits = model.image_logits(batch).double()  # (R, N, S, K)
            targets = chunk[:, :, : layout.pixel_levels].reshape(len(chunk), layout.num_positions, -1)
            nats = F.cross_entropy(
                logits.flatten(0, 2), targets.to(logits.device).flatten(), reduction="none"
            ).view(len(chunk), -1)
            out.append(nats.sum(dim=1).cpu() / math.log(2))
    finally:
        model.train(was_training)
    return torch.cat(out)


@dataclass
class LikelihoodChoice:
    """Choices of one attribute: ``chosen`` (B,) value indices, ``truth`` (B,), ``margins`` (B,) bits by
    which the true value beat the best wrong one (negative: it lost), ``gains`` (B,) bits the true value
    saves against the mean of the wrong ones (how much the model uses the word at all, even where it
    does not yet win), ``values`` the attribute's names."""

    attribute: str
    chosen: Tensor
    truth: Tensor
    margins: Tensor
    gains: Tensor
    values: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        return float((self.chosen == self.truth).double().mean())

    def decisive(self, bits: float) -> float:
        """The fraction of images whose true value won by at least ``bits`` bits."""
        return float((self.margins >= bits).double().mean())

    @property
    def chance(self) -> float:
        return 1.0 / len(self.values)


def likelihood_choice(
    model: Any,
    codes: Tensor,
    attributes: Sequence[Mapping[str, int]],
    attribute: str,
    batch_size: int = 16,
) -> LikelihoodChoice:
    """For each image (codes (B, h, w, *code_shape), its ``shapes`` attribute indices), the value of
    ``attribute`` whose caption gives the image the fewest bits."""
    if attribute not in TASK_CLASSES:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {sorted(TASK_CLASSES)}")
    values = TASK_CLASSES[attribute]
    bits = torch.stack(
        [
            image_bits(model, codes, [caption_for({**a, attribute: v}) for a in attributes], batch_size)
            for v in range(len(values))
        ],
        dim=1,
    )  # (B, values)
    truth = torch.tensor([int(a[attribute]) for a in attributes])
    own = bits.gather(1, truth[:, None])[:, 0]
    others = bits.scatter(1, truth[:, None], math.inf).min(dim=1).values
    wrong_mean = (bits.sum(dim=1) - own) / (len(values) - 1)
    return LikelihoodChoice(
        attribute, bits.argmin(dim=1), truth, others - own, wrong_mean - own, tuple(values)
    )


DECISIVE_BITS = 1.0  # a margin no float rounding reaches: sums of a few thousand float32 log-probabilities


def likelihood_figures(
    model: Any,
    codes: Tensor,
    attributes: Sequence[Mapping[str, int]],
    split: str,
    chosen_attributes: Sequence[str],
    protocol: Mapping[str, Any],
    batch_size: int = 16,
) -> dict[str, MetricResult]:
    """``t2i likelihood[split] attr[a]`` for each attribute ``a``: the fraction of images whose caption
    value the model's likelihood picks, against chance; the fraction right by >= ``DECISIVE_BITS`` bits
    and the median margin in the protocol."""
    figures = {}
    for attribute in chosen_attributes:
        result = likelihood_choice(model, codes, attributes, attribute, batch_size)
        figures[f"t2i likelihood[{split}] attr[{attribute}]"] = MetricResult(
            result.accuracy,
            {
                **protocol,
                "num_images": len(codes),
                "definition": f"argmin over the {len(result.values)} values of {attribute} of -log2 "
                "p(pixel prefix | the image's caption with that value), teacher forced",
                f"right by >= {DECISIVE_BITS:g} bit": result.decisive(DECISIVE_BITS),
                "median margin (bits)": float(result.margins.median()),
                "mean gain over the wrong values (bits)": float(result.gains.mean()),
                "baselines": {"chance": result.chance},
            },
        )
    return figures
