"""Text side of the contrastive branch: string tokenizers and text towers."""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.models.config import TextTowerConfig
from polytok.nn import Transformer


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a string or a list of strings")
    if len(texts) == 0:
        raise ValueError("texts is empty")
    return list(texts)


class ByteTextTokenizer:
    """UTF-8 bytes as tokens (ids 3..258), with 0 = pad, 1 = start, 2 = end; fixed context length.
    Needs no vocabulary file; meant for small presets."""

    pad_id, sot_id, eot_id = 0, 1, 2
    vocab_size = 259

    def __init__(self, context_length: int) -> None:
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3, got {context_length}")
        self.context_length = context_length

    def __call__(self, texts: Sequence[str]) -> Tensor:
        """list of B strings -> (B, context_length) int64; long texts are truncated before the end token."""
        texts = _check_texts(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [b + 3 for b in text.encode("utf-8")][: self.context_length - 2]
            row = [self.sot_id, *ids, self.eot_id]
            out[i, : len(row)] = torch.tensor(row)
        return out


class ClipBPETextTokenizer:
    """CLIP's byte-pair encoding (49,408 tokens) through the vocabulary bundled with ``open_clip_torch``."""

    def __init__(self, context_length: int) -> None:
        try:
            from open_clip.tokenizer import SimpleTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the 'clip_bpe' text vocabulary needs open_clip_torch "
                "(pip install open_clip_torch); or set semantic.text_tower.vocab to 'bytes'"
            ) from exc
        self._tok = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length
        self.vocab_size = len(self._tok.encoder)
        self.eot_id = self._tok.eot_token_id
        self.sot_id = self._tok.sot_token_id
        self.pad_id = 0

    def __call__(self, texts: Sequence[str]) -> Tensor:
        return self._tok(_check_texts(texts), context_length=self.context_length).long()


CLIP_BPE_VOCAB_SIZE = 49408


def build_text_tokenizer(vocab: str, context_length: int) -> ByteTextTokenizer | ClipBPETextTokenizer:
    if vocab == "bytes":
        return ByteTextTokenizer(context_length)
    if vocab == "clip_bpe":
        return ClipBPETextTokenizer(context_length)
    raise ValueError(f"unknown text vocabulary {vocab!r}; expected 'clip_bpe' or 'bytes'")


class TextTransformer(nn.Module):
    """CLIP-style text tower: token + learned position embeddings, causal pre-norm transformer (GELU MLP),
    final LayerNorm, features at the end-of-text token, Linear projection (no bias).

    Strings are tokenized by the configured vocabulary (built on first use). ``forward`` takes token ids
    (B, context_length) and returns (B, embed_dim) unnormalised; ``encode`` takes strings and normalises.
    """

    def __init__(self, cfg: TextTowerConfig, embed_dim: int) -> None:
        super().__init__()
        self.vocab, self.context_length = cfg.vocab, cfg.context_length
        vocab_size = CLIP_BPE_VOCAB_SIZE if cfg.vocab == "clip_bpe" else ByteTextTokenizer.vocab_size
        self.eot_id = CLIP_BPE_VOCAB_SIZE - 1 if cfg.vocab == "clip_bpe" else ByteTextTokenizer.eot_id
        self.token_embedding = nn.Embedding(vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        # LayerNorm epsilon 1e-5 throughout, as in CLIP's text tower.
        self.transformer = Transformer(
            cfg.width, cfg.depth, cfg.heads, mlp="mlp", mlp_ratio=cfg.mlp_ratio, causal=True, norm_eps=1e-5
        )
        self.ln_final = nn.LayerNorm(cfg.width)
        self.text_projection = nn.Linear(cfg.width, embed_dim, bias=False)

    @functools.cached_property
    def tokenizer(self) -> ByteTextTokenizer | ClipBPETextTokenizer:
        return build_text_tokenizer(self.vocab, self.context_length)

    def token_features(self, ids: Tensor) -> Tensor:
        """(B, context_length) int64 ids -> (B, context_length, width) after the final LayerNorm."""
        if ids.dim() != 2 or ids.shape[1] != self.context_length or ids.dtype != torch.long:
            raise ValueError(
                f"expected int64 token ids (B, {self.context_length}), got {tuple(ids.shape)} {ids.dtype}"
            )
        x = self.token_embedding(ids) + self.positional_embedding
        return self.ln_final(self.transformer(x))

    def forward(self, ids: Tensor) -> Tensor:
        x = self.token_features(ids)
        # The end token is the only one that has seen the whole caption (causal attention).
        is_eot = ids == self.eot_id
        if not bool(is_eot.any(dim=1).all()):
            raise ValueError("every caption must contain the end-of-text token")
        pos = is_eot.int().argmax(dim=1)
        return self.text_projection(x[torch.arange(x.shape[0], device=x.device), pos])

    def encode(self, texts: Sequence[str]) -> Tensor:
        """list of B strings -> (B, embed_dim) L2-normalised."""
        ids = self.tokenizer(texts).to(self.token_embedding.weight.device)
        return F.normalize(self(ids), dim=-1)


class PretrainedTextTower(nn.Module):
    """A pretrained sentence encoder from :mod:`polytok.pretrained` followed by a trainable Linear to the
    shared embedding width. With ``freeze`` the encoder runs in eval mode without gradients."""

    def __init__(self, cfg: TextTowerConfig, embed_dim: int) -> None:
        super().__init__()
        try:
            from polytok.pretrained import load_pretrained
        except ImportError as exc:
            raise ImportError(
                f"text tower {cfg.kind!r} needs polytok.pretrained; or set "
                "semantic.text_tower.kind to 'transformer'"
            ) from exc
        self.kind, self.frozen = cfg.kind, cfg.freeze
        if torch.empty(0).device.type == "meta":
            raise ValueError(
                f"the pretrained text tower {cfg.kind!r} loads real weights and cannot be built on "
                "the meta device; set semantic.text_tower.kind to 'transformer' to count parameters"
            )
        self.encoder = load_pretrained(cfg.kind, freeze=cfg.freeze)
        out_dim = _probe_text_width(self.encoder)
        if cfg.freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        self.projection = nn.Linear(out_dim, embed_dim)
        self._feature_cache: OrderedDict[str, Tensor] = OrderedDict()  # frozen towers: text -> features

    def train(self, mode: bool = True) -> PretrainedTextTower:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()
        return self

    def encode(self, texts: Sequence[str]) -> Tensor:
        texts = _check_texts(texts)
        if self.frozen:
            feats = self._frozen_features(texts)
        else:
            feats = self.encoder.encode(texts)
        feats = feats.to(self.projection.weight.device, self.projection.weight.dtype)
        return F.normalize(self.projection(feats), dim=-1)

    def _frozen_features(self, texts: list[str]) -> Tensor:
        """The frozen encoder's features (B, C), each distinct text encoded once: captions repeat across
        steps (a caption set of a few thousand, hard negatives x5), and a frozen encoder in eval mode
        gives the same features every time."""
        cache = self._feature_cache
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            with torch.no_grad():
                new = self.encoder.encode(missing).detach()
            for text, feat in zip(missing, new, strict=True):
                cache[text] = feat
            while len(cache) > _TEXT_CACHE_SIZE:
                cache.popitem(last=False)
        for text in texts:
            cache.move_to_end(text)
        return torch.stack([cache[t] for t in texts])


_TEXT_CACHE_SIZE = 65536  # distinct texts kept per tower (384 floats each for MiniLM: ~100 MB at most)


def _probe_text_width(encoder: nn.Module) -> int:
    for name in ("embedding_dim", "output_dim", "hidden_size", "dim"):
        value = getattr(encoder, name, None)
        if isinstance(value, int):
            return value
    with torch.no_grad():
        return int(encoder.encode(["a"]).shape[-1])


def build_text_tower(cfg: TextTowerConfig, embed_dim: int) -> nn.Module:
    if cfg.kind == "transformer":
        return TextTransformer(cfg, embed_dim)
    return PretrainedTextTower(cfg, embed_dim)
