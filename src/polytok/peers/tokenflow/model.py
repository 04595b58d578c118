"""TokenFlow's tokenizer on polytok's engine (see :mod:`polytok.peers.tokenflow.config`).

The semantic encoder is ``transformers``' ``CLIPVisionModel`` built from the config (OpenAI's ViT-B/16 has
the same function; its fused attention projection is split into q / k / v on conversion), run token by
token so that its positions are resized as TokenFlow's CLIP port resizes them (DINO's interpolation). The
quantizer is :class:`polytok.quant.MultiScaleDualQuantizer`, the CNNs :class:`polytok.nn.VQGANEncoder` /
:class:`polytok.nn.VQGANDecoder`, the semantic decoder :class:`polytok.models.decoders.BeitSemanticDecoder`.

Codes are a layout of their own: one flat int64 tensor (B, 817) per image, the scales 1 x 1, 2 x 2,
4 x 4, ..., 16 x 16 concatenated coarse to fine, each row-major (TokenFlow's and VAR's token order); a
prefix of whole scales decodes too. Each code indexes a pair (semantic code, pixel code).

Folder format (``save_pretrained``): ``config.json`` (``"peer": "tokenflow-256"`` and the config),
``model.safetensors`` and ``manifest.json`` (sizes and sha256, checked on load).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.models.config import PixelDecoderConfig
from polytok.models.decoders import BeitSemanticDecoder, CNNPixelDecoder
from polytok.models.inputs import images_of_size
from polytok.models.tokenizer import Tokenizer, _eval
from polytok.nn import TanhMlpProjection, VQGANEncoder, resize_position_map
from polytok.peers.tokenflow.config import TokenFlowConfig
from polytok.quant import MultiScaleDualQuantizer

PEER_NAME = "tokenflow-256"
WHAT = "TokenFlow tokenizer"
DINO_OFFSET = 0.1  # the positions' resize factor is (grid + 0.1) / table grid, as TokenFlow's CLIP port


def build_clip_vision(clip: dict[str, Any]) -> nn.Module:
    """``transformers.CLIPVisionModel`` from a config dict, randomly initialised, no hub access."""
    import transformers

    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**clip))


def _run_layer(layer: nn.Module, hidden: Tensor) -> Tensor:
    out = layer(hidden, None)  # no mask: every patch is real
    return out[0] if isinstance(out, tuple) else out  # a tuple in transformers 4


class TokenFlowTokenizer(nn.Module):
    """TokenFlow (ByteFlow-AI/TokenFlow, CVPR 2025): codes (B, 817) from CLIP ViT-B/16 semantics and VQGAN
    pixels quantized together, scale by scale, over one dual codebook; images and CLIP-space semantic
    tokens back from the codes.

    Args:
        config: a :class:`TokenFlowConfig` or a dict in its schema.
    """

    peer = PEER_NAME
    # The released tokenizer (docs/peers.md; parameters counted against the official modules in
    # tests/test_peer_tokenflow.py; the rFID is TokenFlow's README / paper figure, ImageNet 256).
    CARD: dict[str, Any] = {  # noqa: RUF012 (a read-only description)
        "family": "TokenFlow (unified: dual codebook, CLIP-distilled semantics + pixels)",
        "resolution": 256,
        "tokens_per_image": "817 (scales 1, 2, 4, 6, 8, 10, 12, 14, 16)",
        "bits_per_token": "15 (one index for a semantic and a pixel code)",
        "quantizer": "multi-scale residual, dual codebook 32768 x (32 + 8)-d, shared index, cosine",
        "parameters": "376.6M (CLIP encoder 86.4M, pixel encoder 29.3M, codebooks 1.3M, semantic decoder "
        "22.4M, pixel decoder 237.1M)",
        "official": {
            "rFID": 1.37,
            "zero_shot_top1": None,
            "source": "TokenFlow paper (arXiv 2412.03069), ImageNet 256",
        },
    }

    def __init__(self, config: TokenFlowConfig | dict[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, TokenFlowConfig) else TokenFlowConfig.from_dict(config)
        self.config = cfg
        q, e, d, s = cfg.quantizer, cfg.encoder, cfg.decoder, cfg.semantic_decoder
        width = int(cfg.clip["hidden_size"])
        self.clip = build_clip_vision(cfg.clip)
        self.semantic_projection = TanhMlpProjection(width, q.semantic_dim, hidden=width)
        self.encoder = VQGANEncoder(e.z_channels, [e.ch * m for m in e.ch_mult], e.num_res_blocks)
        self.quant_conv = nn.Conv2d(e.z_channels, q.pixel_dim, 1)
        self.quantizer = MultiScaleDualQuantizer(
            q.semantic_dim, q.pixel_dim, q.codebook_size, q.scales, normalize=True, beta=q.beta
        )
        pixel = PixelDecoderConfig(
            kind="cnn",
            ch=d.ch,
            ch_mult=list(d.ch_mult),
            num_res_blocks=d.num_res_blocks,
            z_channels=d.z_channels,
        )
        self.pixel_decoder = CNNPixelDecoder(pixel, q.pixel_dim)  # post_quant_conv, then the VQGAN CNN
        self.semantic_decoder = BeitSemanticDecoder(
            q.semantic_dim, s.width, s.depth, s.heads, s.out_dim, (s.grid, s.grid), resize_offset=DINO_OFFSET
        )
        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)
        self.stride = cfg.patch_size
        self.grid = (cfg.grid, cfg.grid)
        self.scales = list(q.scales)
        self.num_tokens = cfg.num_tokens
        self.code_shape: tuple[int, ...] = ()  # one flat index per token of every scale
        self.codebook_size = q.codebook_size

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str = PEER_NAME, **overrides: Any) -> TokenFlowTokenizer:
        """The released tokenizer's network (randomly initialised) with config overrides (nested dicts
        or dotted keys)."""
        from polytok.config import merge

        if name != PEER_NAME:
            raise KeyError(f"unknown TokenFlow preset {name!r}; there is {PEER_NAME!r}")
        return cls(TokenFlowConfig.from_dict(merge(TokenFlowConfig().to_dict(), overrides)))

    # -- shapes and parts -------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self._device_probe.device

    @property
    def vision(self) -> nn.Module:
        """The CLIP vision transformer (transformers 4 nests it under ``vision_model``, 5 does not)."""
        return getattr(self.clip, "vision_model", self.clip)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (works on the meta device), as TokenFlow's modules hold them."""
        parts = {
            "clip_encoder": nn.ModuleList([self.vision, self.semantic_projection]),
            "pixel_encoder": nn.ModuleList([self.encoder, self.quant_conv]),
            "codebooks": self.quantizer,
            "semantic_decoder": self.semantic_decoder,
            "pixel_decoder": self.pixel_decoder,
        }
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        # BEiT's attention has q and v biases only: polytok's qkv bias holds k's zeros too
        counts["semantic_decoder"] -= sum(
            block.attn.inner for block in self.semantic_decoder.transformer.blocks
        )
        counts["total"] = sum(counts.values())
        return counts

    # -- core pieces ------------------------------------------------------------------------------

    def _prepare(self, images: Any) -> Tensor:
        why = f"its scales end at {self.grid[0]} x {self.grid[1]} tokens"
        x = images_of_size(images, self.stride, self.config.image_size, self.config.name, why)
        return x.to(self.device, self._device_probe.dtype) * 2 - 1  # TokenFlow's [-1, 1] input

    def clip_positions(self) -> Tensor:
        """(1 + h * w, width) CLIP positions for the token grid: the table as it is, or its patch part
        resized by DINO's interpolation (TokenFlow's ``interpolate_pos_encoding``)."""
        table = self.vision.embeddings.position_embedding.weight
        side = int(self.config.clip["image_size"]) // self.stride
        if (side, side) == self.grid:
            return table
        patches = resize_position_map(table[1:], (side, side), self.grid, offset=DINO_OFFSET)
        return torch.cat([table[:1], patches])

    def semantic_stream(self, x: Tensor) -> Tensor:
        """[-1, 1] images -> (B, h, w, semantic_dim): CLIP's patch tokens after ln_post, then
        Linear-Tanh-Linear."""
        vision = self.vision
        patches = vision.embeddings.patch_embedding(x).flatten(2).transpose(1, 2)
        cls = vision.embeddings.class_embedding.expand(x.shape[0], 1, -1)
        hidden = torch.cat([cls.to(patches.dtype), patches], 1) + self.clip_positions().to(patches.dtype)
        hidden = vision.pre_layrnorm(hidden)
        for layer in vision.encoder.layers:
            hidden = _run_layer(layer, hidden)
        tokens = self.semantic_projection(vision.post_layernorm(hidden)[:, 1:])
        return tokens.reshape(x.shape[0], *self.grid, -1)

    def pixel_stream(self, x: Tensor) -> Tensor:
        """[-1, 1] images -> (B, h, w, pixel_dim): the VQGAN encoder and ``quant_conv``."""
        return self.quant_conv(self.encoder(x)).permute(0, 2, 3, 1)

    def quantize(self, images: Any):
        """Images -> the quantizer's :class:`~polytok.quant.DualQuantizerOutput` (quantized map
        (B, h, w, Ds + Dp), indices (B, 817)), in the quantizer's current mode."""
        x = self._prepare(images)
        return self.quantizer(self.semantic_stream(x), self.pixel_stream(x))

    def _check_codes(self, codes: Tensor) -> Tensor:
        if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        lengths = self.quantizer._offsets[1:]
        if codes.dim() != 2 or codes.shape[1] not in lengths or codes.shape[0] == 0:
            raise ValueError(
                f"codes must have shape (B, L), L the tokens of the first K scales {self.scales}: one of "
                f"{lengths} ({self.num_tokens} for all), got {tuple(codes.shape)}"
            )
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            raise ValueError(f"codes out of range [0, {self.codebook_size}): min {lo}, max {hi}")
        return codes.long().to(self.device)

    def split_codes(self, codes: Tensor) -> list[Tensor]:
        """(B, L) codes -> one (B, s, s) map per scale they hold, coarse to fine."""
        return self.quantizer.split_indices(self._check_codes(codes))

    def code_vectors(self, codes: Tensor) -> Tensor:
        """Codes (B, L) -> (B, h, w, Ds + Dp): the scales' code pairs upsampled and summed, semantic
        channels first (TokenFlow's quantized map, what its multimodal LLM reads)."""
        return self.quantizer.indices_to_codes(self._check_codes(codes))

    def pixels(self, vectors: Tensor) -> Tensor:
        """Code vectors (B, h, w, Ds + Dp) -> the pixel decoder's image on TokenFlow's [-1, 1] scale,
        unclamped."""
        b, h, w, _ = vectors.shape
        pixel = vectors[..., self.config.quantizer.semantic_dim :].reshape(b, h * w, -1)
        return self.pixel_decoder(pixel, (h, w))

    def semantic_decode(self, vectors: Tensor) -> Tensor:
        """Code vectors (B, h, w, Ds + Dp) -> (B, h * w, out_dim): ``decoder_vqkd`` and
        ``decode_task_layer`` on the semantic channels (trained onto CLIP's projected patch tokens)."""
        b, h, w, _ = vectors.shape
        sem = vectors[..., : self.config.quantizer.semantic_dim].reshape(b, h * w, -1)
        return self.semantic_decoder(sem, (h, w))

    # -- public API -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: Any) -> Tensor:
        """Images (float (B, 3, 256, 256) in [0, 1], PIL images or uint8 arrays) -> int64 codes (B, 817).
        Never changes the codebooks."""
        with _eval(self.quantizer):  # no statistics change while encoding
            return self.quantize(images).indices

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, L) -> images (B, 3, 256, 256) in [0, 1]; the first K scales' codes (L = 1, 5, 21, ...)
        decode the coarser image of their sum."""
        return ((self.pixels(self.code_vectors(codes)) + 1) / 2).clamp(0.0, 1.0)

    @torch.no_grad()
    def semantic_tokens(self, codes: Tensor) -> Tensor:
        """Codes (B, L) -> (B, h * w, 512): the semantic decoder's CLIP-space tokens."""
        return self.semantic_decode(self.code_vectors(codes))

    @torch.no_grad()
    def semantic_features(self, codes: Tensor) -> Tensor:
        """Codes (B, 817) -> (B, 512) L2-normalised mean of :meth:`semantic_tokens` (polytok's probe:
        TokenFlow defines no pooled image embedding and has no text tower)."""
        return F.normalize(self.semantic_tokens(codes).mean(dim=1), dim=-1)

    @torch.no_grad()
    def code_embedding(self, codes: Tensor) -> Tensor:
        """Codes -> (B, Ds + Dp): the summed code vectors averaged over positions (a neutral probe)."""
        return self.code_vectors(codes).mean(dim=(1, 2))

    def eval_capabilities(self) -> Any:
        """What ``polytok eval`` reads: codes (B, num_tokens), one sequence over the scales, measured
        whole (no residual levels); one codebook shared by every scale, counted over all their tokens; the
        semantic probe on :meth:`semantic_features`; no text tower, so no zero-shot."""
        from polytok.eval.capabilities import TokenizerCapabilities

        return TokenizerCapabilities(
            tokenizer=self, codebook_size=self.codebook_size, position_dims=1, stride=self.stride,
            usage_note=f"the tokens of all scales together (one codebook shared by the scales {self.scales})",
            semantic_embedding=lambda images, codes: self.semantic_features(codes),
            text_reason="TokenFlow has no text tower", code_embedding=self.code_embedding,
            layout=f"(B, {self.num_tokens}): one sequence over the scales {self.scales}, coarse to fine",
        )  # fmt: skip

    # -- checkpoints ------------------------------------------------------------------------------

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        return dict(self.state_dict())

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``manifest.json`` into ``directory``
        atomically (see :mod:`polytok.peers.folder`)."""
        from polytok.peers.folder import save_peer_folder

        state = self.checkpoint_state_dict()
        return save_peer_folder(directory, PEER_NAME, self.config.to_dict(), state, what=WHAT)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> TokenFlowTokenizer:
        """Load a folder written by :meth:`save_pretrained` (files checked against its manifest)."""
        from polytok.peers.folder import open_peer_folder

        root, data, state = open_peer_folder(directory, PEER_NAME, WHAT)
        tok = cls(TokenFlowConfig.from_dict(data))
        tok.load_checkpoint_state(state, str(root))
        return tok.to(map_location).eval()

    # every tensor by name and shape; missing or unexpected names raise ValueError naming them
    load_checkpoint_state = Tokenizer.load_checkpoint_state
