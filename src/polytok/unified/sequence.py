"""One sequence format for both directions, with its loss targets.

    text -> image:  <bos> <t2i> caption... <boi> img_0 ... img_{N-1}
    image -> text:  <bos> <i2t> <boi> img_0 ... img_{N-1} <eoi> caption... <eos>

Text positions take token embeddings and are predicted by the LM head; image positions take the
embedding of their codes and are predicted, position by position, by the depth head. The loss is on the
target part only: the image (its pixel prefix) for text -> image, the caption and <eos> for image -> text.
A dropped caption is the empty caption, which is also the unconditional prompt of guidance. Sequences
are left-padded, so that prompts of different lengths end together at generation time; position ids
count the real tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from polytok.unified.layout import CodeLayout

Task = Literal["t2i", "i2t"]
IGNORE = -100
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<t2i>", "<i2t>")


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens, placed after the text tokenizer's vocabulary."""

    pad: int
    bos: int
    eos: int
    boi: int
    eoi: int
    t2i: int
    i2t: int

    @classmethod
    def after(cls, text_vocab_size: int) -> SpecialTokens:
        return cls(*(text_vocab_size + i for i in range(len(SPECIAL_TOKENS))))

    @property
    def vocab_size(self) -> int:
        """Text vocabulary plus special tokens: the backbone's vocabulary size."""
        return self.pad + len(SPECIAL_TOKENS)


@dataclass
class SequenceItem:
    """One sequence before batching: ``prefix`` ids, the image, ``suffix`` ids."""

    task: Task
    prefix: list[int]
    codes: Tensor  # (N, L', C): the levels the input embedding reads
    suffix: list[int]


@dataclass
class SequenceBatch:
    """A left-padded batch; T = the longest sequence.

    Attributes:
        token_ids: (B, T) text and special ids; image positions and padding hold <pad>.
        attention_mask: (B, T) 1 on real tokens.
        position_ids: (B, T) 0.. over the real tokens of each row.
        image_start: (B,) index of img_0 in each row.
        image_codes: (B, N, L, C) codes of each row's image (levels >= input_levels[b] are zero).
        input_levels: (B,) levels of its image each row reads.
        text_targets: (B, T) the next token where the LM head is trained, else -100.
        image_target: (B,) True for text -> image rows (their pixel prefix is the target).
        object_cover: (B, N) fraction of each image position's grid cell covered by objects, or None
            where the data gives no object masks (read by ``object_loss_weight``).
    """

    token_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    image_start: Tensor
    image_codes: Tensor
    input_levels: Tensor
    text_targets: Tensor
    image_target: Tensor
    object_cover: Tensor | None = None

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(**{k: None if v is None else v.to(device) for k, v in vars(self).items()})


class SequenceFormat:
    """Builds sequences and batches for a code layout and a set of special tokens.

    Args:
        layout: the tokenizer's code layout.
        special: special token ids.
        understanding_levels: levels the image -> text direction reads (None: all).
        max_caption_tokens: captions are cut to this many tokens.
    """

    def __init__(
        self,
        layout: CodeLayout,
        special: SpecialTokens,
        understanding_levels: int | None = None,
        max_caption_tokens: int = 64,
    ) -> None:
        self.layout, self.special, self.max_caption_tokens = layout, special, max_caption_tokens
        self.understanding_levels = understanding_levels or layout.levels
        if not 1 <= self.understanding_levels <= layout.levels:
            raise ValueError(
                f"understanding_levels must be in [1, {layout.levels}], got {understanding_levels}"
            )

    # -- single sequences -------------------------------------------------------------------------

    def _caption(self, caption_ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in caption_ids][: self.max_caption_tokens]
        if any(not 0 <= i < self.special.pad for i in ids):
            raise ValueError(f"caption token ids must be text tokens in [0, {self.special.pad})")
        return ids

    def _levels(self, codes: Tensor, levels: int) -> Tensor:
        if (
            codes.dim() != 3
            or codes.shape[0] != self.layout.num_positions
            or codes.shape[2] != self.layout.codebooks
        ):
            raise ValueError(
                f"an image's codes must be (N={self.layout.num_positions}, L, C={self.layout.codebooks}), "
                f"got {tuple(codes.shape)}"
            )
        if codes.shape[1] < levels:
            raise ValueError(f"this direction reads {levels} levels but the codes have {codes.shape[1]}")
        return codes[:, :levels]

    def t2i_prompt(self, caption_ids: Sequence[int]) -> list[int]:
        """The text -> image sequence up to <boi>; the empty caption is the unconditional prompt."""
        s = self.special
        return [s.bos, s.t2i, *self._caption(caption_ids), s.boi]

    def unconditional_prompt(self) -> list[int]:
        return self.t2i_prompt([])

    def text_to_image(self, caption_ids: Sequence[int], codes: Tensor) -> SequenceItem:
        """``codes`` (N, L', C) with L' >= pixel levels; the pixel prefix is read and predicted."""
        return SequenceItem(
            "t2i", self.t2i_prompt(caption_ids), self._levels(codes, self.layout.pixel_levels), []
        )

    def image_to_text(self, codes: Tensor, caption_ids: Sequence[int]) -> SequenceItem:
        s = self.special
        image = self._levels(codes, self.understanding_levels)
        return SequenceItem("i2t", [s.bos, s.i2t, s.boi], image, [s.eoi, *self._caption(caption_ids), s.eos])

    def i2t_prompt(self, codes: Tensor) -> SequenceItem:
        """The image -> text sequence up to <eoi>, from which the caption is generated."""
        s = self.special
        return SequenceItem(
            "i2t", [s.bos, s.i2t, s.boi], self._levels(codes, self.understanding_levels), [s.eoi]
        )

    # -- batches ----------------------------------------------------------------------------------

    def collate(self, items: Sequence[SequenceItem]) -> SequenceBatch:
        """Left-pad ``items`` into one :class:`SequenceBatch`."""
        if not items:
            raise ValueError("cannot collate an empty list of sequences")
        n = self.layout.num_positions
        lengths = [len(it.prefix) + n + len(it.suffix) for it in items]
        b, t = len(items), max(lengths)
        pad = self.special.pad
        token_ids = torch.full((b, t), pad, dtype=torch.long)
        mask = torch.zeros(b, t, dtype=torch.long)
        targets = torch.full((b, t), IGNORE, dtype=torch.long)
        codes = torch.zeros(b, n, self.layout.levels, self.layout.codebooks, dtype=torch.long)
        image_start = torch.zeros(b, dtype=torch.long)
        levels = torch.zeros(b, dtype=torch.long)
        for row, (it, length) in enumerate(zip(items, lengths)):
            start = t - length
            mask[row, start:] = 1
            p = start + len(it.prefix)
            token_ids[row, start:p] = torch.tensor(it.prefix, dtype=torch.long)
            image_start[row] = p
            codes[row, :, : it.codes.shape[1]] = it.codes
            levels[row] = it.codes.shape[1]
            q = p + n
            if it.suffix:
                token_ids[row, q:] = torch.tensor(it.suffix, dtype=torch.long)
                if it.task == "i2t":  # each suffix token after <eoi> is predicted from the one before
                    targets[row, q : t - 1] = torch.tensor(it.suffix[1:], dtype=torch.long)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        return SequenceBatch(
            token_ids=token_ids,
            attention_mask=mask,
            position_ids=positions,
            image_start=image_start,
            image_codes=codes,
            input_levels=levels,
            text_targets=targets,
            image_target=torch.tensor([it.task == "t2i" for it in items]),
        )

    def training_batch(
        self,
        codes: Tensor,
        caption_ids: Sequence[Sequence[int]],
        tasks: Sequence[Task],
        *,
        caption_dropout: float = 0.0,
        generator: torch.Generator | None = None,
        object_cover: Tensor | None = None,
    ) -> SequenceBatch:
        """A mixed batch: ``codes`` (B, h, w, *code_shape), B captions as token ids, a task per sample.

        Text -> image samples train on the empty caption with probability ``caption_dropout`` (drawn from
        ``generator``, one draw per sample). ``object_cover`` (B, h, w): each grid cell's coverage by
        objects, kept as the batch's (B, N) ``object_cover``.
        """
        full = self.layout.to_levels(codes)
        if not len(caption_ids) == len(tasks) == full.shape[0]:
            raise ValueError(
                f"got {full.shape[0]} images, {len(caption_ids)} captions and {len(tasks)} tasks; "
                "one each per sample"
            )
        drops = torch.rand(len(tasks), generator=generator) < caption_dropout
        items = []
        for image, caption, task, drop in zip(full, caption_ids, tasks, drops.tolist()):
            if task == "t2i":
                items.append(self.text_to_image([] if drop else caption, image))
            elif task == "i2t":
                items.append(self.image_to_text(image, caption))
            else:
                raise ValueError(f"unknown task {task!r}; expected 't2i' or 'i2t'")
        batch = self.collate(items)
        if object_cover is not None:
            want = (full.shape[0], *self.layout.grid)
            if tuple(object_cover.shape) != want:
                raise ValueError(f"object_cover must be (B, h, w) = {want}, got {tuple(object_cover.shape)}")
            batch.object_cover = object_cover.reshape(want[0], -1).float()  # raster order, as the codes
        return batch
