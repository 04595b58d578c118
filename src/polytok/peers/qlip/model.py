"""QLIP on polytok's engine (see :mod:`polytok.peers.qlip.config`): :class:`QlipTokenizer`.

The quantizer is :class:`polytok.quant.BinarySphericalQuantizer` (``LookupFreeQuantizer`` with codes
±1 when the config's codes are not spherical): bit j of a position is [h_j > 0], its index has the first
channel as the most significant bit, as QLIP's. The image embedding is QLIP's: the encoder's class token
through a LayerNorm and a Linear, L2-normalised, computed from the image (the codes do not carry it).

Folder format (``save_pretrained``): ``config.json`` (``"peer": "qlip-b16-256"``, the name of every QLIP
size, and the config with its own ``name``), ``model.safetensors`` and ``manifest.json`` (sizes and
sha256, checked on load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.models.inputs import images_of_size
from polytok.models.text import CLIP_BPE_VOCAB_SIZE, ClipBPETextTokenizer
from polytok.models.tokenizer import Tokenizer, _eval
from polytok.peers.qlip.blocks import QlipTower
from polytok.peers.qlip.config import QlipConfig
from polytok.quant import BinarySphericalQuantizer, LookupFreeQuantizer

PEER_NAME = "qlip-b16-256"
# QLIP's published sizes: name -> config overrides of the B-16-256 layout (EVA02-CLIP towers)
SIZES: dict[str, dict[str, Any]] = {
    "qlip-b16-256": {},
    "qlip-b8-256": {"patch_size": 8},
}


def _mlp(width_in: int, hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, hidden), nn.GELU(), nn.Linear(hidden, width_out))


class QlipTokenizer(nn.Module):
    """QLIP: one 28-bit code per 16 x 16 patch by binary spherical quantization of a ViT's patch tokens,
    images back through a ViT decoder, a CLIP image embedding from the class token and a CLIP text tower.

    Args:
        config: a :class:`QlipConfig` or a dict in its schema.
    """

    peer = PEER_NAME
    # The published QLIP-B-16-256 (docs/peers.md; parameters counted against the official modules in
    # tests/test_peer_qlip.py; figures of QLIP's README model zoo, ImageNet-1k val)
    CARD: dict[str, Any] = {  # noqa: RUF012 (a read-only description)
        "family": "QLIP (unified: pixels + CLIP text alignment, BSQ)",
        "resolution": 256,
        "tokens_per_image": "16 x 16 (256 codes)",
        "bits_per_token": 28,
        "quantizer": "BSQ, 28 bits (codes ±1/sqrt(28), first channel the most significant bit)",
        "parameters": "239.4M (encoder 85.9M, bottleneck 1.2M, decoder 88.5M, text 63.2M, projections 0.7M)",
        "official": {
            "rFID": 3.21,
            "zero_shot_top1": 74.3,
            "source": "QLIP README model zoo (NVlabs/QLIP), ImageNet-1k val, 256 px",
        },
    }

    def __init__(self, config: QlipConfig | dict[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, QlipConfig) else QlipConfig.from_dict(config)
        self.config = cfg
        enc, dec, txt, q = cfg.encoder, cfg.decoder, cfg.text, cfg.quantizer
        self.register_buffer("pixel_mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        grid, patches = cfg.grid, cfg.grid**2
        # encoder: patches + a class token, learned positions, blocks (rotary on the patches only)
        self.patch_embed = nn.Conv2d(3, enc.width, cfg.patch_size, stride=cfg.patch_size)
        self.class_token = nn.Parameter(torch.zeros(enc.width))
        self.encoder_positions = nn.Parameter(torch.zeros(patches + 1, enc.width))
        self.encoder = QlipTower(enc, grid=grid, skip=1)
        self.class_norm = nn.LayerNorm(enc.width, eps=enc.norm_eps)
        self.visual_projection = nn.Linear(enc.width, cfg.embed_dim, bias=cfg.vision_projection_bias)
        # bottleneck
        mlp = q.embed == "mlp"
        self.quant_in: nn.Module = _mlp(enc.width, enc.width, q.bits) if mlp else nn.Identity()
        self.quant_out: nn.Module = _mlp(q.bits, dec.width, dec.width) if mlp else nn.Identity()
        if not mlp and dec.width != q.bits:
            raise ValueError(
                f"decoder.width ({dec.width}) must equal quantizer.bits without an embedding MLP"
            )
        options = dict(
            group_size=q.group_size, temperature=1.0 / q.inv_temperature, beta=q.beta,
            entropy_weight=q.gamma0 / q.inv_temperature, diversity=q.gamma1 / q.gamma0 if q.gamma0 else 0.0,
        )  # fmt: skip
        self.quantizer = (
            BinarySphericalQuantizer(q.bits, **options)
            if q.spherical
            else LookupFreeQuantizer(q.bits, **options)
        )
        # decoder: learned positions, blocks (rotary on every token), norm, Linear + tanh, Linear to patches
        self.decoder_positions = nn.Parameter(torch.zeros(1, patches, dec.width))
        self.decoder = QlipTower(dec, grid=grid)
        self.decoder_norm = nn.LayerNorm(dec.width, eps=dec.norm_eps)
        self.decoder_hidden = nn.Linear(dec.width, dec.mlp_width)
        self.to_pixels = nn.Linear(dec.mlp_width, 3 * cfg.patch_size**2)
        # text tower
        self.token_embedding = nn.Embedding(cfg.vocab_size, txt.width)
        self.text_positions = nn.Parameter(torch.zeros(cfg.context_length, txt.width))
        self.text = QlipTower(txt, causal=True)
        self.text_norm = nn.LayerNorm(txt.width, eps=txt.norm_eps)
        self.text_projection = nn.Linear(txt.width, cfg.embed_dim, bias=cfg.text_projection_bias)
        self.logit_scale_log = nn.Parameter(torch.tensor(2.6592))  # log(1 / 0.07), CLIP's start
        for p in (self.class_token, self.encoder_positions, self.decoder_positions, self.text_positions):
            nn.init.normal_(p, std=0.02)

        self.stride = cfg.patch_size
        self.grid = (grid, grid)
        self.code_shape: tuple[int, ...] = ()  # one code per patch
        self.num_levels = self.pixel_depth = 1  # no residual levels
        self.codebook_size = 2**q.bits
        self._text_tokenizer: ClipBPETextTokenizer | None = None

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str = PEER_NAME, **overrides: Any) -> QlipTokenizer:
        """A published size (randomly initialised; ``SIZES``) with config overrides (nested dicts or dotted
        keys)."""
        from polytok.config import merge

        if name not in SIZES:
            raise KeyError(f"unknown QLIP preset {name!r}; there are {', '.join(SIZES)}")
        data = merge(QlipConfig(name=name).to_dict(), SIZES[name])
        return cls(QlipConfig.from_dict(merge(data, overrides)))

    # -- shapes and parts -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def logit_scale(self) -> Tensor:
        """CLIP's exp(logit scale): logits = scale * image_emb @ text_emb.T."""
        return self.logit_scale_log.exp()

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (works on the meta device), as QLIP's modules hold them."""
        parts: dict[str, list[nn.Module | nn.Parameter]] = {
            "encoder": [
                self.patch_embed,
                self.class_token,
                self.encoder_positions,
                self.encoder,
                self.class_norm,
            ],
            "bottleneck": [self.quant_in, self.quant_out],
            "decoder": [
                self.decoder_positions,
                self.decoder,
                self.decoder_norm,
                self.decoder_hidden,
                self.to_pixels,
            ],
            "text_tower": [self.token_embedding, self.text_positions, self.text, self.text_norm],
            "projections": [self.visual_projection, self.text_projection, self.logit_scale_log],
        }

        def count(item: nn.Module | nn.Parameter) -> int:
            return (
                item.numel() if isinstance(item, nn.Parameter) else sum(p.numel() for p in item.parameters())
            )

        counts = {name: sum(count(i) for i in items) for name, items in parts.items()}
        counts["total"] = sum(counts.values())
        return counts

    # -- core pieces ------------------------------------------------------------------------------

    def _prepare(self, images: Any) -> Tensor:
        x = images_of_size(images, self.stride, self.config.image_size, "QLIP")
        return ((x.to(self.device, self.pixel_mean.dtype)) - self.pixel_mean) / self.pixel_std

    def _encoder_tokens(self, images: Any) -> Tensor:
        """Images [0, 1] -> (B, 1 + N, width): the encoder's last layer, class token first."""
        x = self._prepare(images)
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.class_token.expand(patches.shape[0], 1, -1)
        return self.encoder(torch.cat([cls, patches], dim=1) + self.encoder_positions)

    def features(self, images: Any) -> Tensor:
        """Images [0, 1] -> (B, N, bits): the bottleneck's input, whose signs are the bits (before QLIP's L2
        normalisation, which keeps the signs)."""
        return self.quant_in(self._encoder_tokens(images)[:, 1:])

    def _flatten_codes(self, codes: Tensor) -> Tensor:
        """(B, h, w) codes -> (B, h * w), checked."""
        if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        if codes.dim() != 3 or tuple(codes.shape[1:]) != self.grid or codes.shape[0] == 0:
            raise ValueError(
                f"codes must have shape (B, {self.grid[0]}, {self.grid[1]}), got {tuple(codes.shape)}"
            )
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(f"codes out of range [0, 2^{self.config.quantizer.bits}): min {lo}, max {hi}")
        return codes.reshape(codes.shape[0], -1).long().to(self.device)

    def code_vectors(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> (B, h * w, bits): ±1/sqrt(bits) per bit (±1 for non-spherical codes)."""
        return self.quantizer.indices_to_codes(self._flatten_codes(codes)).to(self.pixel_mean.dtype)

    def pixels(self, vectors: Tensor) -> Tensor:
        """Code vectors (B, N, bits) -> the decoder's image (B, 3, H, W) in QLIP's normalised pixel space
        ((x - mean) / std), unclamped."""
        hidden = self.decoder(self.quant_out(vectors) + self.decoder_positions)
        patches = self.to_pixels(torch.tanh(self.decoder_hidden(self.decoder_norm(hidden))))
        (h, w), p = self.grid, self.stride
        b = patches.shape[0]
        return patches.view(b, h, w, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, h * p, w * p)

    # -- public API -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Any) -> Tensor:
        """Images (float (B, 3, S, S) in [0, 1], PIL images or uint8 arrays) -> int64 codes (B, S/p, S/p)
        in [0, 2^bits), QLIP's bit order. Never changes the usage statistics."""
        feats = self.features(images)
        with _eval(self.quantizer):  # no statistics change while encoding
            indices = self.quantizer(feats).indices
        return indices.reshape(indices.shape[0], *self.grid)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) -> images (B, 3, S, S) in [0, 1] (QLIP's output un-normalised, clamped)."""
        return (self.pixels(self.code_vectors(codes)) * self.pixel_std + self.pixel_mean).clamp(0.0, 1.0)

    @torch.no_grad()
    def image_features(self, images: Any) -> Tensor:
        """Images -> (B, embed_dim) L2-normalised: QLIP's image embedding, the encoder's unquantised class
        token through its LayerNorm and projection (``QLIPModel.get_image_features``, normalised)."""
        cls = self._encoder_tokens(images)[:, 0]
        return F.normalize(self.visual_projection(self.class_norm(cls)), dim=-1)

    def semantic_features(self, codes: Tensor) -> Tensor:
        """QLIP's image embedding is not a function of the codes: refused, naming :meth:`image_features`."""
        raise ValueError(
            "QLIP's image embedding comes from the encoder's unquantised class token, not from the codes: "
            "use image_features(images)"
        )

    @torch.no_grad()
    def code_embedding(self, codes: Tensor) -> Tensor:
        """Codes -> (B, bits): the code vectors averaged over positions (a neutral probe)."""
        return self.code_vectors(codes).mean(dim=1)

    def eval_capabilities(self) -> Any:
        """What ``polytok eval`` reads: one code per patch; codebook usage per group of bits (2^28 codes
        are too many to count; BSQ factorises its entropy over the same groups); the image embedding is
        :meth:`image_features` of the images, so its zero-shot and probe figures are labelled
        ``[image features]``: they do not measure the codes."""
        from polytok.eval.capabilities import TokenizerCapabilities

        bits, group = self.config.quantizer.bits, self.config.quantizer.group_size
        group = group if bits > 16 and bits % group == 0 else bits  # up to 16 bits: the codes whole
        groups = bits // group
        shifts = torch.arange(groups - 1, -1, -1) * group  # the first group the most significant bits

        def bit_groups(codes: Tensor) -> Tensor:
            return (codes[..., None] >> shifts.to(codes.device)) & (2**group - 1)

        note = f"each code's {bits} bits as {groups} groups of {group} bits, the first the most significant"
        return TokenizerCapabilities(
            tokenizer=self, codebook_size=self.codebook_size, stride=self.stride,
            usage_codes=bit_groups if groups > 1 else None, usage_shape=(groups,) if groups > 1 else None,
            usage_codebook_size=2**group, usage_note=note if groups > 1 else None,
            semantic_embedding=lambda images, codes: self.image_features(images),
            semantic_input="image features",
            encode_text=self.encode_text, code_embedding=self.code_embedding,
        )  # fmt: skip

    @property
    def text_tokenizer(self) -> ClipBPETextTokenizer:
        """CLIP's BPE (open_clip's bundled vocabulary, the one QLIP's ``CLIPTokenizer`` files hold)."""
        cfg = self.config
        if cfg.vocab_size != CLIP_BPE_VOCAB_SIZE or cfg.eos_token_id != CLIP_BPE_VOCAB_SIZE - 1:
            raise ValueError(
                f"this QLIP text tower embeds {cfg.vocab_size} tokens (end token {cfg.eos_token_id}), not "
                "CLIP's BPE vocabulary: pass token ids to encode_text"
            )
        if self._text_tokenizer is None:
            self._text_tokenizer = ClipBPETextTokenizer(cfg.context_length)
        return self._text_tokenizer

    @torch.no_grad()
    def encode_text(self, texts: Any) -> Tensor:
        """Captions (a list of strings, or int64 ids (B, L <= context_length)) -> (B, embed_dim)
        L2-normalised text embeddings; pooled at the first end token (at the largest id when the end
        token is 2, as QLIP's text model does)."""
        if isinstance(texts, Tensor):
            ids = texts
            if (
                ids.dim() != 2
                or ids.is_floating_point()
                or not 0 < ids.shape[1] <= self.config.context_length
            ):
                raise ValueError(
                    f"token ids must be an int64 tensor (B, L <= {self.config.context_length}), got "
                    f"{tuple(ids.shape)} {ids.dtype}"
                )
        else:
            ids = self.text_tokenizer(texts)
        ids = ids.long().to(self.device)
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"token ids out of range [0, {self.config.vocab_size})")
        x = self.token_embedding(ids) + self.text_positions[: ids.shape[1]]
        x = self.text_norm(self.text(x))
        eos = self.config.eos_token_id
        pos = ids.argmax(dim=1) if eos == 2 else (ids == eos).int().argmax(dim=1)
        pooled = x[torch.arange(x.shape[0], device=x.device), pos]
        return F.normalize(self.text_projection(pooled), dim=-1)

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        return dict(self.state_dict())

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``manifest.json`` into ``directory`` atomically
        (see :func:`polytok.storage.save_folder`)."""
        from polytok.peers.folder import save_peer_folder

        state = self.checkpoint_state_dict()
        return save_peer_folder(directory, PEER_NAME, self.config.to_dict(), state, what="QLIP model")

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> QlipTokenizer:
        """Load a folder written by :meth:`save_pretrained` (files checked against its manifest)."""
        from polytok.peers.folder import open_peer_folder

        root, data, state = open_peer_folder(directory, PEER_NAME, "QLIP model")
        model = cls(QlipConfig.from_dict(data))
        model.load_checkpoint_state(state, str(root))
        return model.to(map_location).eval()

    # every tensor by name and shape; missing or unexpected names raise ValueError naming them
    load_checkpoint_state = Tokenizer.load_checkpoint_state
