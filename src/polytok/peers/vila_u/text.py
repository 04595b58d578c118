"""SigLIP's text tokenizer on its SentencePiece model, without transformers' tokenizer classes.

SigLIP's tokenizer (as VILA-U ships it in ``rqvaesiglip/siglip/tokenization_siglip.py``): the caption is
lower-cased, its ASCII punctuation removed and its runs of white space collapsed; the SentencePiece pieces
follow with ``</s>`` appended (a caption longer than the context keeps its first ``context - 1`` pieces);
the row is padded to the context (64) with ``</s>``, which is also the pad token, so the text tower's
pooled last position reads ``</s>``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from polytok.models.text import _check_texts as check_texts

SPIECE_NAME = "spiece.model"
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def find_spiece(path: str | Path) -> Path:
    """``path`` itself (a SentencePiece model file) or ``path/spiece.model``; FileNotFoundError otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / SPIECE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"SigLIP's SentencePiece model not found: {path} (put {SPIECE_NAME} from the SigLIP checkpoint "
            "there, or name it with --text-tokenizer)"
        )
    return path


class SiglipTextTokenizer:
    """Captions -> (B, context_length) int64 ids for SigLIP's text tower.

    Args:
        model: the SentencePiece model's bytes (the ``spiece.model`` file).
        context_length: ids per caption (SigLIP: 64, its position table).
        do_lower_case: lower-case captions first (SigLIP's tokenizer does).
    """

    def __init__(self, model: bytes, context_length: int, do_lower_case: bool = True) -> None:
        try:
            import sentencepiece
        except ImportError as exc:  # pragma: no cover - a dependency of polytok
            raise ImportError(
                "SigLIP's text tokenizer needs sentencepiece (pip install sentencepiece)"
            ) from exc
        if context_length < 2:
            raise ValueError(f"context_length must be >= 2, got {context_length}")
        self.model_bytes = bytes(model)
        self.processor = sentencepiece.SentencePieceProcessor(model_proto=self.model_bytes)
        self.context_length, self.do_lower_case = context_length, do_lower_case
        self.eos_id = self.processor.piece_to_id("</s>")
        if self.processor.id_to_piece(self.eos_id) != "</s>":
            raise ValueError("the SentencePiece model has no '</s>' piece: not SigLIP's tokenizer")
        self.pad_id = self.eos_id
        self.vocab_size = self.processor.get_piece_size()

    @classmethod
    def from_file(
        cls, path: str | Path, context_length: int, do_lower_case: bool = True
    ) -> SiglipTextTokenizer:
        return cls(find_spiece(path).read_bytes(), context_length, do_lower_case)

    def canonical(self, text: str) -> str:
        """The caption as SigLIP's tokenizer sees it before SentencePiece."""
        if self.do_lower_case:
            text = text.lower()
        return re.sub(r"\s+", " ", text.translate(_PUNCTUATION)).strip()

    def __call__(self, texts: Sequence[str]) -> Tensor:
        texts = check_texts(texts)
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            pieces = self.processor.encode(self.canonical(text))[: self.context_length - 1]
            ids = [*pieces, self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
