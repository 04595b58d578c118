"""One entry point each way for token sets: ``encode_token_set`` writes either format (chosen by the
output name), ``open_token_set`` reads either, with the same codes as the tokenizer gives and the same
refusal of a set another tokenizer made."""

from __future__ import annotations

import pytest
import torch

from polytok import Tokenizer
from polytok.hub import load_tokenizer
from polytok.models.identity import TokenizerMismatchError
from polytok.tokensets import encode_format, encode_token_set, is_token_set, open_token_set, token_set_format
from polytok.tokensets.npz import dataset_for_encoding


def test_format_by_name_and_by_request(monkeypatch) -> None:
    assert token_set_format("a/tokens.npz") == "npz" and token_set_format("a/tokens") == "wds"
    assert token_set_format("a/tokens.npz", "wds") == "wds"
    with pytest.raises(ValueError, match="auto, npz or wds"):
        token_set_format("a", "tar")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert encode_format("tokens") == "wds"
    with pytest.raises(ValueError, match="torchrun"):
        encode_format("tokens.npz")


def test_both_formats_hold_the_tokenizers_codes_and_refuse_another_tokenizer(tmp_path) -> None:
    tok = load_tokenizer("evotok-tiny").eval()
    dataset = torch.utils.data.Subset(dataset_for_encoding("shapes", split="val", image_size=64), range(5))
    expected = tok.encode(torch.stack([dataset[i]["image"] for i in range(5)]))
    other = Tokenizer.from_preset("evotok-tiny").eval()  # same layout, other weights
    for name in ("set.npz", "set"):
        out = tmp_path / name
        assert not is_token_set(out)
        report = encode_token_set(tok, dataset, out, shard_size=2, batch_size=2)
        assert report is not None and report["samples"] == 5
        assert is_token_set(out)
        tokens = open_token_set(out, tokenizer=tok)
        assert torch.equal(tokens["codes"], expected), name
        assert len(tokens["captions"]) == 5 and all(tokens["captions"])
        assert torch.equal(open_token_set(out, limit=3)["codes"], expected[:3])
        with pytest.raises(TokenizerMismatchError, match="another tokenizer"):
            open_token_set(out, tokenizer=other)
