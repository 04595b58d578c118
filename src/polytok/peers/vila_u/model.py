"""VILA-U's unified vision tower on polytok's engine (see :mod:`polytok.peers.vila_u.config`).

The SigLIP towers are ``transformers``' ``SiglipModel`` built from the config (no hub access), the
residual quantizer is :class:`polytok.quant.ResidualQuantizer` and the pixel decoder
:class:`polytok.nn.VQGANDecoder`. Where VILA-U's decoder casts to bf16 after each upsampling, polytok
computes in the model's dtype (float32 is the reference).

Folder format (``save_pretrained``): ``config.json`` (``"peer": "vila-u"`` and the config),
``model.safetensors``, ``spiece.model`` (SigLIP's SentencePiece model, when the tower has its text
tokenizer) and ``manifest.json`` (their sizes and sha256, checked on load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.models.inputs import images_of_size
from polytok.models.tokenizer import Tokenizer, _eval
from polytok.nn import VQGANDecoder
from polytok.peers.vila_u.config import VilaUConfig
from polytok.peers.vila_u.text import SPIECE_NAME, SiglipTextTokenizer
from polytok.quant import ResidualQuantizer

PEER_NAME = "vila-u"


def build_siglip(siglip: dict[str, Any]) -> nn.Module:
    """``transformers.SiglipModel`` (vision tower with its pooling head, text tower, logit scale and bias)
    from a config dict, randomly initialised."""
    import transformers

    vision = dict(siglip.get("vision_config") or {})
    vision["vision_use_head"] = True  # VILA-U's image embedding ends in the pooling head
    cfg = transformers.SiglipConfig(text_config=dict(siglip.get("text_config") or {}), vision_config=vision)
    return transformers.SiglipModel(cfg)


def _inner(model: nn.Module, name: str) -> nn.Module:
    """A SigLIP tower's transformer (embeddings, encoder, final norm, head), in transformers 4's nested
    layout (``vision_model.vision_model``) or 5's flat one."""
    tower = getattr(model, name)
    return getattr(tower, name, tower)


def _run_layer(layer: nn.Module, hidden: Tensor) -> Tensor:
    out = layer(hidden, None)  # no mask: every patch is real
    return out[0] if isinstance(out, tuple) else out  # a tuple in transformers 4


class VilaUTokenizer(nn.Module):
    """VILA-U's vision tower: codes (B, 16, 16, 4) from SigLIP-L/16-256's second-to-last layer by residual
    VQ, images back from the summed code vectors, a SigLIP image embedding from the codes and SigLIP text
    embeddings.

    Args:
        config: a :class:`VilaUConfig` or a dict in its schema.
        text_tokenizer: SigLIP's SentencePiece model (its bytes, or a path to ``spiece.model`` or a folder
            holding it), needed by :meth:`encode_text` for captions; None: only token ids are accepted.
    """

    peer = PEER_NAME
    # The published tower (docs/peers.md; parameters counted against the official modules in
    # tests/test_peer_vila_u.py; ImageNet 256 figures of the VILA-U paper, arXiv 2409.04429)
    CARD: dict[str, Any] = {  # noqa: RUF012 (a read-only description)
        "family": "VILA-U (unified: pixels + SigLIP text alignment)",
        "resolution": 256,
        "tokens_per_image": "16 x 16 positions x 4 residual codes (1024 codes)",
        "bits_per_token": "14 per code, 56 per position",
        "quantizer": "residual VQ, depth 4, 16384 x 1024-d, EMA",
        "parameters": "711.6M (vision 316.0M, codebook 16.8M, decoder 42.7M, text 336.2M)",
        "official": {
            "rFID": 1.80,
            "zero_shot_top1": 73.3,
            "source": "VILA-U paper (arXiv 2409.04429), 256 px tower",
        },
    }

    def __init__(
        self, config: VilaUConfig | dict[str, Any], *, text_tokenizer: bytes | str | os.PathLike | None = None
    ) -> None:
        super().__init__()
        cfg = config if isinstance(config, VilaUConfig) else VilaUConfig.from_dict(config)
        self.config = cfg
        self.register_buffer("pixel_mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        self.siglip = build_siglip(cfg.siglip)
        q, d = cfg.quantizer, cfg.decoder
        self.quantizer = ResidualQuantizer(
            q.dim,
            q.levels,
            q.codebook_size,
            shared_codebook=q.shared_codebook,
            update="ema",
            decay=q.decay,
            dead_code_threshold=1.0,  # VILA-U restarts codes whose EMA count falls below 1
        )
        self.post_quant_conv = nn.Conv2d(q.dim, d.z_channels, 1)
        self.decoder = VQGANDecoder(d.z_channels, d.ch, d.ch_mult, d.num_res_blocks, attn_lowest=d.attention)
        self.stride = cfg.patch_size
        if self.decoder.factor != self.stride:
            raise ValueError(
                f"the decoder upsamples x{self.decoder.factor} (decoder.ch_mult) but SigLIP's patches are "
                f"{self.stride} px"
            )
        self.grid = (cfg.image_size // self.stride,) * 2
        self.num_levels = self.pixel_depth = q.levels
        self.code_shape: tuple[int, ...] = (q.levels,)  # one code per residual level
        self.codebook_size = q.codebook_size
        self.text_tokenizer: SiglipTextTokenizer | None = None
        if text_tokenizer is not None:
            self.set_text_tokenizer(text_tokenizer)

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str = PEER_NAME, **overrides: Any) -> VilaUTokenizer:
        """The published tower (randomly initialised) with config overrides (nested dicts or dotted keys);
        ``text_tokenizer=`` passes through."""
        from polytok.config import merge

        if name != PEER_NAME:
            raise KeyError(f"unknown VILA-U preset {name!r}; there is {PEER_NAME!r}")
        text_tokenizer = overrides.pop("text_tokenizer", None)
        data = merge(VilaUConfig().to_dict(), overrides)
        return cls(VilaUConfig.from_dict(data), text_tokenizer=text_tokenizer)

    def set_text_tokenizer(self, source: bytes | str | os.PathLike) -> None:
        """Attach SigLIP's SentencePiece model (bytes, a file or a folder holding ``spiece.model``)."""
        cfg = self.config
        if isinstance(source, (bytes, bytearray)):
            tok = SiglipTextTokenizer(bytes(source), cfg.context_length, cfg.do_lower_case)
        else:
            tok = SiglipTextTokenizer.from_file(source, cfg.context_length, cfg.do_lower_case)
        vocab = int(cfg.text_config["vocab_size"])
        if tok.vocab_size > vocab:
            raise ValueError(
                f"the SentencePiece model has {tok.vocab_size} pieces but SigLIP's text tower embeds {vocab}"
            )
        self.text_tokenizer = tok

    # -- shapes and parts -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def vision(self) -> nn.Module:
        return _inner(self.siglip, "vision_model")

    @property
    def text(self) -> nn.Module:
        return _inner(self.siglip, "text_model")

    @property
    def logit_scale(self) -> Tensor:
        """SigLIP's exp(logit scale) (sigmoid loss: logits = scale * cos + bias)."""
        return self.siglip.logit_scale.exp().squeeze(0)

    @property
    def logit_bias(self) -> Tensor:
        return self.siglip.logit_bias.squeeze(0)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (works on the meta device), as VILA-U's modules hold them."""
        parts = {
            "vision_tower": self.vision,
            "quantizer": self.quantizer,
            "pixel_decoder": nn.ModuleList([self.post_quant_conv, self.decoder]),
            "text_tower": self.text,
        }
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        # VILA-U's codebooks are (frozen) parameters of K + 1 rows, the last the padding index (never
        # chosen); polytok's EMA codebooks are buffers of K rows
        counts["quantizer"] += sum(
            (book.codebook_size + 1) * book.dim * book.groups for book in self.quantizer.codebooks
        )
        counts["total"] = sum(counts.values()) + 2  # logit scale and bias
        return counts

    # -- core pieces ------------------------------------------------------------------------------

    def _prepare(self, images: Any) -> Tensor:
        x = images_of_size(images, self.stride, self.config.image_size, "VILA-U's tower (SigLIP)")
        return x.to(self.device, self.pixel_mean.dtype)

    def features(self, images: Any) -> Tensor:
        """Images [0, 1] -> (B, N, width): SigLIP's second-to-last layer, what VILA-U quantizes."""
        x = self._prepare(images)
        vision = self.vision
        hidden = vision.embeddings((x - self.pixel_mean) / self.pixel_std)
        for layer in vision.encoder.layers[:-1]:
            hidden = _run_layer(layer, hidden)
        return hidden

    def _flatten_codes(self, codes: Tensor, *, prefix: bool) -> Tensor:
        """(B, h, w, k) codes -> (B, h * w, k), checked (k = all levels, or 1..levels when ``prefix``)."""
        if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        if codes.dim() != 4 or codes.shape[1:3] != self.grid:
            raise ValueError(
                f"codes must have shape (B, {self.grid[0]}, {self.grid[1]}, {self.num_levels}), "
                f"got {tuple(codes.shape)}"
            )
        levels = codes.shape[3]
        if not (1 <= levels <= self.num_levels if prefix else levels == self.num_levels):
            want = f"1 to {self.num_levels}" if prefix else str(self.num_levels)
            raise ValueError(f"codes must hold {want} levels on their last axis, got {levels}")
        if codes.numel() == 0 or codes.shape[0] == 0:
            raise ValueError(f"codes are empty: {tuple(codes.shape)}")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(f"codes out of range [0, {self.codebook_size}): min {lo}, max {hi}")
        return codes.reshape(codes.shape[0], -1, levels).long().to(self.device)

    def code_vectors(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w, k) -> (B, h * w, width): the sum of the code vectors of the k levels given."""
        return self.quantizer.indices_to_codes(self._flatten_codes(codes, prefix=True))

    def pixels(self, vectors: Tensor) -> Tensor:
        """Code vectors (B, N, width) -> the decoder's image (B, 3, H, W) on VILA-U's [-1, 1] scale,
        unclamped."""
        b, _, c = vectors.shape
        fmap = vectors.transpose(1, 2).reshape(b, c, *self.grid)
        return self.decoder(self.post_quant_conv(fmap))

    def image_embedding(self, vectors: Tensor) -> Tensor:
        """Code vectors (B, N, width) -> (B, E) L2-normalised: SigLIP's last block, post-layernorm and
        pooling head on the quantized features (how VILA-U aligns its codes with text)."""
        vision = self.vision
        hidden = _run_layer(vision.encoder.layers[-1], vectors)
        return F.normalize(vision.head(vision.post_layernorm(hidden)), dim=-1)

    # -- public API -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Any) -> Tensor:
        """Images (float (B, 3, 256, 256) in [0, 1], PIL images or uint8 arrays) -> int64 codes
        (B, 16, 16, 4). Never changes the codebooks."""
        feats = self.features(images)
        with _eval(self.quantizer):  # no statistics change while encoding
            indices = self.quantizer(feats).indices
        return indices.reshape(indices.shape[0], *self.grid, self.num_levels)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, 16, 16, k) -> images (B, 3, 256, 256) in [0, 1]; fewer levels (``codes[..., :k]``)
        decode the coarser image of their partial sum."""
        return ((self.pixels(self.code_vectors(codes)) + 1) / 2).clamp(0.0, 1.0)

    @torch.no_grad()
    def semantic_features(self, codes: Tensor) -> Tensor:
        """Codes (B, 16, 16, 4) -> (B, E) L2-normalised image embedding from all levels (see
        :meth:`image_embedding`); compare with :meth:`encode_text`."""
        return self.image_embedding(self.quantizer.indices_to_codes(self._flatten_codes(codes, prefix=False)))

    @torch.no_grad()
    def code_embedding(self, codes: Tensor) -> Tensor:
        """Codes -> (B, width): the summed code vectors averaged over positions (a neutral probe)."""
        return self.code_vectors(codes).mean(dim=1)

    def eval_capabilities(self) -> Any:
        """What ``polytok eval`` reads: residual levels (pixel figures and code probe at every prefix); the
        image embedding, hence zero-shot and the semantic probe, at all levels only."""
        from polytok.eval.capabilities import TokenizerCapabilities

        return TokenizerCapabilities(
            tokenizer=self, codebook_size=self.codebook_size, code_shape=self.code_shape,
            num_levels=self.num_levels, pixel_depth=self.pixel_depth, stride=self.stride,
            semantic_embedding=lambda images, codes: self.semantic_features(codes),
            semantic_levels=(self.num_levels,),
            semantic_reason=f"VILA-U's image embedding is defined from all {self.num_levels} residual levels",
            encode_text=self.encode_text, code_embedding=self.code_embedding,
        )  # fmt: skip

    @torch.no_grad()
    def encode_text(self, texts: Any) -> Tensor:
        """Captions (a list of strings; or int64 ids (B, context) from SigLIP's tokenizer) -> (B, E)
        L2-normalised SigLIP text embeddings."""
        if isinstance(texts, Tensor):
            ids = texts
            if ids.dim() != 2 or ids.is_floating_point():
                raise ValueError(f"token ids must be an int64 tensor (B, context), got {tuple(ids.shape)}")
        else:
            if self.text_tokenizer is None:
                raise ValueError(
                    f"this VILA-U tower has no text tokenizer: attach SigLIP's {SPIECE_NAME} with "
                    "set_text_tokenizer(path), or pass token ids"
                )
            ids = self.text_tokenizer(texts)
        pooled = self.text(input_ids=ids.to(self.device)).pooler_output
        return F.normalize(pooled, dim=-1)

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        return dict(self.state_dict())

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``spiece.model`` (with a text tokenizer) and
        ``manifest.json`` into ``directory`` atomically (see :func:`polytok.storage.save_folder`)."""
        from polytok.peers.folder import save_peer_folder

        tok = self.text_tokenizer
        files = {SPIECE_NAME: tok.model_bytes} if tok is not None else {}
        return save_peer_folder(
            directory, PEER_NAME, self.config.to_dict(), self.checkpoint_state_dict(), what="VILA-U tower",
            files=files, known={SPIECE_NAME},
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> VilaUTokenizer:
        """Load a folder written by :meth:`save_pretrained` (files checked against its manifest)."""
        from polytok.peers.folder import open_peer_folder

        root, data, state = open_peer_folder(directory, PEER_NAME, "VILA-U tower")
        spiece = root / SPIECE_NAME
        tok = cls(VilaUConfig.from_dict(data), text_tokenizer=spiece if spiece.is_file() else None)
        tok.load_checkpoint_state(state, str(root))
        return tok.to(map_location).eval()

    # every tensor by name and shape; missing or unexpected names raise ValueError naming them
    load_checkpoint_state = Tokenizer.load_checkpoint_state
