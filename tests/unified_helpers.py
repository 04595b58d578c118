"""Tokenizers of every code layout and tiny unified models on them, shared by the unified-model tests.

Layouts: () a small VQ config, (C,) unitok-tiny, (L,) evotok-tiny (pixels from 4 of 8 levels), (L, C)
polytok-tiny (pixels from 2 of 4 levels). Models are float64 so that recomputation and the KV cache
agree far below any gap between logits (no near-tie can flip a token on another CPU).
"""

from __future__ import annotations

import functools

import torch

from polytok import Tokenizer
from polytok.unified import TextTokenizer, UnifiedConfig, UnifiedModel, train_text_tokenizer

LAYOUTS = ("vq", "unitok-tiny", "evotok-tiny", "polytok-tiny")
CAPTIONS = [
    "a red circle",
    "a small blue square",
    "a large green triangle on a white background",
    "two yellow stars",
    "a photo of a cat",
]


@functools.cache
def tokenizer(name: str) -> Tokenizer:
    torch.manual_seed(0)
    if name == "vq":
        tok = Tokenizer.from_preset(
            "evotok-tiny", quantizer={"kind": "vq", "codebook_size": 64, "levels": 1}, pixel_depth=None
        )
    else:
        tok = Tokenizer.from_preset(name)
    return tok.eval()


@functools.cache
def text_tokenizer() -> TextTokenizer:
    return train_text_tokenizer(CAPTIONS * 4, vocab_size=300)


def tiny_config(**overrides) -> UnifiedConfig:
    backbone = {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
    }
    base = dict(backbone=backbone, depth_width=32, depth_layers=2, depth_heads=4, caption_dropout=0.0)
    return UnifiedConfig(**{**base, **overrides})


def tiny_model(layout: str, grid: tuple[int, int] = (3, 3), seed: int = 0, **overrides) -> UnifiedModel:
    torch.manual_seed(seed)
    model = UnifiedModel.from_tokenizer(
        tokenizer(layout), text_tokenizer(), tiny_config(**overrides), grid=grid
    )
    return model.double().eval()


def random_codes(model: UnifiedModel, batch: int, seed: int = 0) -> torch.Tensor:
    """Full tokenizer codes (B, h, w, *code_shape) for ``model``'s layout."""
    layout = model.layout
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, layout.codebook_size, (batch, *layout.grid, *layout.code_shape), generator=g)
