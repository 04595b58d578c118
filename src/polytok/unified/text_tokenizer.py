"""Text tokens for the unified model: a ``tokenizers`` tokenizer loaded by path or trained on captions.

Whatever its origin, the tokenizer is held as a ``tokenizers.Tokenizer`` and saved with the model as one
JSON file, so a saved model never depends on the place its text tokenizer was first loaded from. Its own
special tokens (``[CLS]``, ``<|endoftext|>``, ...) are never added: the unified model has its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

FILE_NAME = "text_tokenizer.json"


class TextTokenizer:
    """Text <-> token ids in [0, vocab_size).

    Example:
        >>> tok = train_text_tokenizer(["a red circle", "a blue square"], vocab_size=300)
        >>> ids = tok.encode("a red square")
        >>> tok.decode(ids)
        'a red square'
    """

    def __init__(self, backend) -> None:
        from tokenizers import Tokenizer as Backend

        # a private copy without the padding / truncation a tokenizer file may carry (BERT's pads to 128)
        self.backend = Backend.from_str(backend.to_str())
        self.backend.no_padding()
        self.backend.no_truncation()

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """One text -> its token ids (no special tokens)."""
        if not isinstance(text, str):
            raise ValueError(f"a caption must be a str, got {type(text).__name__}")
        return list(self.backend.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=True))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``text_tokenizer.json`` into ``directory`` (atomically)."""
        from polytok.storage import atomic_write_text

        return atomic_write_text(Path(directory) / FILE_NAME, self.backend.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        """From a ``tokenizers`` JSON file, a folder holding ``text_tokenizer.json`` or ``tokenizer.json``,
        or a ``transformers`` tokenizer folder (a fast tokenizer, read offline)."""
        from tokenizers import Tokenizer as Backend

        p = Path(path)
        if p.is_file():
            return cls(Backend.from_file(str(p)))
        if not p.is_dir():
            raise FileNotFoundError(f"no text tokenizer at {p}: expected a tokenizer JSON file or a folder")
        for name in (FILE_NAME, "tokenizer.json"):
            if (p / name).is_file():
                return cls(Backend.from_file(str(p / name)))
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{p} holds no tokenizer that transformers can read: {exc}") from exc
        backend = getattr(hf, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"the tokenizer in {p} is not a fast (tokenizers-backed) tokenizer")
        return cls(backend)


def train_text_tokenizer(captions: Iterable[str], vocab_size: int = 512) -> TextTokenizer:
    """A byte-level BPE tokenizer trained on ``captions`` (any text encodes; nothing is unknown)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(
            f"a byte-level vocabulary needs vocab_size >= 257 (256 bytes + merges), got {vocab_size}"
        )
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator((str(c) for c in captions), trainer=trainer)
    return TextTokenizer(backend)
