"""The Tokenizer: encoder -> projection -> quantizer -> pixel decoder (prefix) / semantic branch (full).

    image [0, 1] -> normalise -> encoder -> projection -> z (B, N, D) -> quantizer -> codes
    codes[:pixel_depth] -> post-projection -> pixel decoder -> image
    codes[all]          -> semantic branch (CLIP head against a text tower, or a distilled ViT decoder)

Checkpoints (``save_pretrained``) hold ``config.json``, ``model.safetensors`` and ``manifest.json`` (their
checksums, verified on load); the folder format is :mod:`polytok.models.saving`. Frozen third-party
networks (a distillation teacher, a frozen pretrained text encoder) are not stored: they are rebuilt from
their package or weights path when first needed, which keeps checkpoints small and licences separate.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polytok.config import ConfigError, load_file, merge
from polytok.models.config import ProjectionConfig, QuantizerConfig, TokenizerConfig
from polytok.models.decoders import (
    BeitSemanticDecoder,
    CNNPixelDecoder,
    SemanticDecoder,
    ViTPixelDecoder,
)
from polytok.models.encoders import HFSiglipEncoder, build_encoder
from polytok.models.heads import ClipHead, pooled_embedding
from polytok.models.inputs import images_to_tensor
from polytok.models.levels import code_prefix
from polytok.models.teacher import FrozenTeacher
from polytok.models.text import PretrainedTextTower, build_text_tower
from polytok.nn import AttentionProjection, LinearProjection, TanhMlpProjection
from polytok.nn.patch_pca import PatchPCA
from polytok.quant import MultiCodebookQuantizer, QuantizerOutput, ResidualQuantizer, VectorQuantizer


@dataclass
class TokenizerOutput:
    """Training-facing output of ``Tokenizer.forward``.

    Attributes:
        reconstruction: (B, 3, H, W) image from the first ``pixel_depth`` levels, [0, 1] scale, not clamped.
        quant: the quantizer's output (``loss``, ``stats``, ``indices``, ``quantized``, ``prefix(k)``).
        codes: (B, h, w, *code_shape) int64 codes.
        grid: (h, w) token grid.
        pixel_depth: residual levels the reconstruction used.
        semantic_embedding: (B, E) L2-normalised image embedding from the full code (None without a branch).
        semantic_tokens: (B, N, C) per-token semantic features (distillation: the semantic decoder output).
        teacher_features: (B, N, C) frozen teacher features on the token grid (distillation), else None.
        text_embedding: (B_text, E) L2-normalised text embedding when texts were given.
        negative_text_embedding: (B, K, E) embeddings of each image's hard negative texts when given
            (rows padded to the longest list), with ``negative_mask`` (B, K) bool marking the real ones.
        logit_scale: scalar exp(log scale), clamped at the configured maximum (contrastive).
    """

    reconstruction: Tensor
    quant: QuantizerOutput
    codes: Tensor
    grid: tuple[int, int]
    pixel_depth: int
    semantic_embedding: Tensor | None = None
    semantic_tokens: Tensor | None = None
    teacher_features: Tensor | None = None
    text_embedding: Tensor | None = None
    negative_text_embedding: Tensor | None = None
    negative_mask: Tensor | None = None
    logit_scale: Tensor | None = None


def build_projection(cfg: ProjectionConfig, in_dim: int, out_dim: int) -> nn.Module:
    if cfg.kind == "attention":
        return AttentionProjection(
            in_dim,
            out_dim,
            cfg.heads,
            cfg.mlp_ratio,
            widening_attention=cfg.widening_attention,
            mlp_norm=cfg.mlp_norm,
        )
    if cfg.kind == "linear":
        return LinearProjection(in_dim, out_dim)
    if cfg.kind == "tanh_mlp":
        return TanhMlpProjection(in_dim, out_dim, cfg.hidden)
    if in_dim != out_dim:
        raise ValueError(f"projection kind 'identity' needs equal widths, got {in_dim} -> {out_dim}")
    return nn.Identity()


def _normalised_chunk(cfg: QuantizerConfig) -> int | None:
    """Channels the quantizer normalises together (None: it does not normalise)."""
    if not cfg.normalize:
        return None
    if cfg.codebook_dim is not None:
        raise ValueError(
            "linear_path cannot chart a normalised quantizer with codebook_dim (its codes live in a "
            "projected space); leave codebook_dim unset or use unnormalised codes"
        )
    return cfg.dim // cfg.num_codebooks


def build_quantizer(cfg: QuantizerConfig) -> VectorQuantizer | MultiCodebookQuantizer | ResidualQuantizer:
    common: dict[str, Any] = dict(
        codebook_dim=cfg.codebook_dim,
        normalize=cfg.normalize,
        update=cfg.update,
        beta=cfg.beta,
        decay=cfg.decay,
        ema_warmup_steps=cfg.ema_warmup_steps,
        ema_warmup=cfg.ema_warmup,
        ema_min_cluster_size=cfg.ema_min_cluster_size,
        kmeans_init=cfg.kmeans_init,
        dead_code_threshold=cfg.dead_code_threshold,
        entropy_weight=cfg.entropy_weight,
        entropy_temperature=cfg.entropy_temperature,
        rotation_trick=cfg.rotation_trick,
    )
    if cfg.kind == "vq":
        return VectorQuantizer(cfg.dim, cfg.codebook_size, **common)
    if cfg.kind == "mcq":
        return MultiCodebookQuantizer(cfg.dim, cfg.num_codebooks, cfg.codebook_size, **common)
    return ResidualQuantizer(
        cfg.dim,
        cfg.levels,
        cfg.codebook_size,
        num_codebooks=cfg.num_codebooks,
        shared_codebook=cfg.shared_codebook,
        quantize_dropout=cfg.quantize_dropout,
        **common,
    )


class _EncoderAsTeacher(nn.Module):
    """A pretrained image encoder used as a frozen teacher: images [0, 1] -> (B, N, C) tokens."""

    def __init__(self, encoder: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder((images - self.mean) / self.std)[0]


def _zero_last_layer(decoder: nn.Module) -> None:
    """Zero the weight (and bias) of ``decoder``'s output layer, so its output starts at 0."""
    weight = decoder.last_layer()
    for module in decoder.modules():
        if getattr(module, "weight", None) is weight:
            nn.init.zeros_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
            return
    raise ValueError("the pixel decoder's last layer was not found among its modules")


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    """Temporarily put ``module`` in eval mode (no codebook updates while encoding)."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class Tokenizer(nn.Module):
    """A unified discrete image tokenizer built from a :class:`TokenizerConfig`.

    Args:
        config: a TokenizerConfig or a dict in the config-file schema.
        load_backbone_weights: load pretrained encoder weights named in the config (``encoder.weights``);
            False builds the same architecture randomly initialised (checkpoint loading, counting).
        teacher: a frozen module to distil onto instead of ``semantic.teacher`` (see ``set_teacher``).

    Example:
        >>> import torch
        >>> tok = Tokenizer.from_preset("evotok-tiny").eval()
        >>> codes = tok.encode(torch.rand(2, 3, 64, 64))
        >>> tuple(codes.shape)  # (B, h, w, levels)
        (2, 16, 16, 8)
        >>> tuple(tok.decode(codes).shape)  # in [0, 1], from the first pixel_depth levels
        (2, 3, 64, 64)
    """

    def __init__(
        self,
        config: TokenizerConfig | dict[str, Any],
        *,
        load_backbone_weights: bool = True,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        cfg = config if isinstance(config, TokenizerConfig) else TokenizerConfig.from_dict(config)
        self.config = cfg
        q = cfg.quantizer
        mean, std = cfg.encoder.mean, cfg.encoder.std
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.encoder = build_encoder(cfg.encoder, load_backbone_weights)
        self.stride = self.encoder.stride
        self.projection = build_projection(cfg.projection, self.encoder.width, q.dim)
        self.quantizer = build_quantizer(q)
        self.num_levels = self.quantizer.num_levels
        self.linear_path: PatchPCA | None = None
        self.linear_channels = q.dim - cfg.semantic_channels  # the latent channels the linear path fills
        if cfg.linear_path:
            self.linear_path = PatchPCA(self.stride, self.linear_channels, chunk=_normalised_chunk(q))
            if cfg.linear_path_gates:
                # weights of (encoder path, pixel decoder) beside the linear codec: small, so training
                # starts from the codec and the networks grow in as they learn what it misses
                self.linear_path_gates = nn.Parameter(torch.full((2,), float(cfg.linear_path_gate_init)))
            else:
                # no gates: the encoder path reaches the linear channels through a map that starts at 0
                self.linear_path_in = nn.Linear(q.dim, self.linear_channels)
                nn.init.zeros_(self.linear_path_in.weight)
                nn.init.zeros_(self.linear_path_in.bias)
        self.pixel_depth = cfg.pixel_depth or self.num_levels
        code_width = cfg.pixel_decoder.width if cfg.pixel_decoder.kind == "vit" else q.dim
        self.post_projection = build_projection(cfg.post_projection, q.dim, code_width)
        if cfg.pixel_decoder.kind == "vit":
            self.pixel_decoder: ViTPixelDecoder | CNNPixelDecoder = ViTPixelDecoder(
                cfg.pixel_decoder, cfg.pixel_decoder.pos_embed, patch_size=self.stride
            )
        else:
            self.pixel_decoder = CNNPixelDecoder(cfg.pixel_decoder, code_width)
        if cfg.linear_path and not cfg.linear_path_gates:
            _zero_last_layer(self.pixel_decoder)  # the reconstruction starts as the linear path's, exactly
        if self.pixel_decoder.factor != self.stride:
            raise ValueError(
                f"pixel decoder upsamples x{self.pixel_decoder.factor} but the encoder stride is "
                f"{self.stride}; adjust pixel_decoder.up_widths / ch_mult"
            )
        s = cfg.semantic
        self.semantic_kind = s.kind
        self.clip_head: ClipHead | None = None
        self.text_tower: nn.Module | None = None
        self.semantic_decoder: BeitSemanticDecoder | SemanticDecoder | None = None
        self.teacher: FrozenTeacher | None = None
        if s.kind == "contrastive":
            self.clip_head = ClipHead(q.dim if s.head_input == "codes" else code_width, s.embed_dim)
            self.text_tower = build_text_tower(s.text_tower, s.embed_dim)
            # Shape (1,), not a 0-d scalar: FSDP cannot shard 0-d parameters.
            self.log_logit_scale = nn.Parameter(torch.full((1,), math.log(s.logit_scale_init)))
        elif s.kind == "distill":
            if s.decoder_layout == "beit":
                grid = (cfg.image_size // self.stride, cfg.image_size // self.stride)
                self.semantic_decoder = BeitSemanticDecoder(
                    q.dim, s.decoder_width, s.decoder_depth, s.decoder_heads, s.feature_dim, grid
                )
            else:
                self.semantic_decoder = SemanticDecoder(
                    q.dim, s.decoder_width, s.decoder_depth, s.decoder_heads, s.feature_dim
                )
        if teacher is not None:
            self.set_teacher(teacher)

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config: TokenizerConfig | dict[str, Any] | str | os.PathLike,
        *,
        load_backbone_weights: bool = True,
        teacher: nn.Module | None = None,
        **overrides: Any,
    ) -> Tokenizer:
        """Build from a TokenizerConfig, a dict, or a ``.json`` / ``.yaml`` file; ``overrides`` are config
        keys (``pixel_depth=2``, ``quantizer={"levels": 8}``, or dotted: ``**{"quantizer.levels": 8}``)."""
        if isinstance(config, (str, os.PathLike)):
            data = load_file(config)
        elif isinstance(config, TokenizerConfig):
            data = config.to_dict()
        elif isinstance(config, dict):
            data = config
        else:
            raise TypeError(
                f"config must be a TokenizerConfig, dict or file path, got {type(config).__name__}"
            )
        try:
            cfg = TokenizerConfig.from_dict(merge(data, overrides))
        except ConfigError as err:
            if isinstance(config, (str, os.PathLike)):
                raise ConfigError(f"{config}: {err}") from err
            raise
        return cls(cfg, load_backbone_weights=load_backbone_weights, teacher=teacher)

    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        load_backbone_weights: bool = True,
        teacher: nn.Module | None = None,
        **overrides: Any,
    ) -> Tokenizer:
        """Build the registered preset ``name`` (see ``polytok.list_presets()``), with config overrides."""
        from polytok.models.registry import get_preset_dict

        return cls.from_config(
            get_preset_dict(name), load_backbone_weights=load_backbone_weights, teacher=teacher, **overrides
        )

    # -- shapes and parts -------------------------------------------------------------------------

    @property
    def code_shape(self) -> tuple[int, ...]:
        """Trailing shape of one position's codes: (C,) MCQ, (L,) RVQ, (L, C) residual MCQ, () VQ."""
        return tuple(self.quantizer.code_shape)

    @property
    def codebook_size(self) -> int:
        return int(self.quantizer.codebook_size)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def logit_scale(self) -> Tensor:
        """exp of the learnable log scale, clamped at ``semantic.logit_scale_max`` (CLIP)."""
        if self.semantic_kind != "contrastive":
            raise ValueError("logit_scale exists only for the contrastive semantic branch")
        return self.log_logit_scale.clamp(max=math.log(self.config.semantic.logit_scale_max)).exp().squeeze(0)

    def last_decoder_layer(self) -> Tensor:
        """Weight of the pixel decoder's output conv (for the adaptive GAN weight)."""
        return self.pixel_decoder.last_layer()

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part (works on the meta device). Frozen third-party teachers are excluded."""
        parts = {
            "encoder": self.encoder,
            "projection": self.projection,
            "quantizer": self.quantizer,
            "post_projection": self.post_projection,
            "pixel_decoder": self.pixel_decoder,
        }
        if self.clip_head is not None:
            parts["semantic_head"] = self.clip_head
        if self.semantic_decoder is not None:
            parts["semantic_decoder"] = self.semantic_decoder
        if self.text_tower is not None:
            parts["text_tower"] = self.text_tower
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
        counts["total"] = sum(counts.values()) + (1 if self.semantic_kind == "contrastive" else 0)
        return counts

    # -- teacher ----------------------------------------------------------------------------------

    def set_teacher(
        self,
        net: nn.Module,
        *,
        feature_index: int | None = None,
        feature_stride: int | None = 16,
        input_transform: Any = None,
        input_size: int | None = None,
    ) -> None:
        """Distil onto ``net`` (frozen here). ``net(images in [0, 1])`` may return a (B, C, h, w) map,
        (B, N, C) tokens or an object with ``feature_maps`` (then ``feature_index`` picks one).
        ``input_size`` (default: ``semantic.teacher_input_size``) fixes the teacher's input side."""
        if self.semantic_kind != "distill":
            raise ValueError("a teacher is used only by the 'distill' semantic branch")
        index = self.config.semantic.teacher_feature_index if feature_index is None else feature_index
        size = self.config.semantic.teacher_input_size if input_size is None else input_size
        self.teacher = FrozenTeacher(
            net,
            feature_index=index,
            feature_stride=feature_stride,
            input_transform=input_transform,
            input_size=size,
        ).to(self.device)

    def load_teacher(self) -> FrozenTeacher | None:
        """Build the configured frozen teacher now (otherwise on first use); call before wrapping in DDP."""
        name = self.config.semantic.teacher
        if self.teacher is not None or name is None:
            return self.teacher
        if name == "encoder":
            enc_cfg = self.config.encoder
            if enc_cfg.weights is None or enc_cfg.kind not in ("siglip", "siglip2"):
                raise ValueError(
                    "semantic.teacher 'encoder' needs a pretrained transformers encoder "
                    "(encoder.kind siglip/siglip2 with encoder.weights set)"
                )
            net: nn.Module = _EncoderAsTeacher(
                HFSiglipEncoder(enc_cfg, load_weights=True), enc_cfg.mean, enc_cfg.std
            )
            self.teacher = FrozenTeacher(net, feature_stride=None).to(self.device)
        else:
            try:
                from polytok.pretrained import load_pretrained
            except ImportError as exc:
                raise ImportError(
                    f"teacher {name!r} needs polytok.pretrained; or pass a module with Tokenizer.set_teacher"
                ) from exc
            self.set_teacher(load_pretrained(name))
        return self.teacher

    def teacher_features(self, images: Tensor, grid: tuple[int, int]) -> Tensor | None:
        """(B, h*w, C) frozen teacher features of images in [0, 1], or None without a teacher."""
        teacher = self.load_teacher()
        if teacher is None:
            return None
        feats = teacher(images, grid)
        if feats.shape[-1] != self.config.semantic.feature_dim:
            raise ValueError(
                f"teacher features have {feats.shape[-1]} channels but semantic.feature_dim is "
                f"{self.config.semantic.feature_dim}"
            )
        return feats

    # -- core pieces ------------------------------------------------------------------------------

    def _prepare(self, images: Any) -> Tensor:
        x = images_to_tensor(images, self.stride)
        dtype = self.pixel_mean.dtype
        return x.to(self.device, dtype)

    def _latent(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        tokens, grid = self.encoder((x - self.pixel_mean) / self.pixel_std)
        z = self.projection(tokens)
        if not self._linear_path_on():
            return z, grid
        k = self.linear_channels
        if self.config.linear_path_gates:
            linear = self.linear_path.encode(x) + self.linear_path_gates[0] * z[..., :k]
        else:
            linear = self.linear_path.encode(x) + self.linear_path_in(z)
        if k == z.shape[-1]:
            return linear, grid
        return torch.cat([linear, z[..., k:]], dim=-1), grid  # the semantic channels: the network's alone

    def _linear_path_on(self) -> bool:
        """The linear path acts once fitted; before (an untrained tokenizer) the networks act alone."""
        return self.linear_path is not None and bool(self.linear_path.fitted)

    def _pixels(self, code_vectors: Tensor, grid: tuple[int, int]) -> Tensor:
        """Code vectors (B, N, D) -> image (B, 3, H, W) on the [0, 1] scale (unclamped)."""
        return self._reconstruct(
            self.pixel_decoder(self.post_projection(code_vectors), grid), code_vectors, grid
        )

    def _reconstruct(self, decoded: Tensor, code_vectors: Tensor, grid: tuple[int, int]) -> Tensor:
        """The pixel decoder's output ([-1, 1] scale) plus the linear path's decoding -> [0, 1] scale."""
        if not self._linear_path_on():
            return (decoded + 1) / 2
        linear = self.linear_path.decode(code_vectors[..., : self.linear_channels], grid)
        if self.config.linear_path_gates:
            return linear + self.linear_path_gates[1] * decoded / 2
        return linear + decoded / 2

    def _semantic(
        self, code_vectors: Tensor, grid: tuple[int, int], post_projected: Tensor | None = None
    ) -> tuple[Tensor | None, Tensor | None]:
        """Full code vectors (B, N, D) -> (embedding (B, E), per-token features or None)."""
        if self.clip_head is not None:
            if self.config.semantic.head_input == "codes":
                return self.clip_head(code_vectors), None
            tokens = post_projected if post_projected is not None else self.post_projection(code_vectors)
            return self.clip_head(tokens), None
        if self.semantic_decoder is not None:
            feats = self.semantic_decoder(code_vectors, grid)
            return pooled_embedding(feats), feats
        return None, None

    def _depth_of(self, quant: QuantizerOutput) -> int:
        """Levels actually quantized this step (quantize-dropout marks skipped levels with -1)."""
        if self.num_levels == 1:
            return 1
        idx = quant.indices if len(self.code_shape) == 1 else quant.indices[..., 0]
        return int((idx[0, 0] >= 0).sum())

    # -- training forward -------------------------------------------------------------------------

    def forward(
        self,
        images: Any,
        texts: Sequence[str] | None = None,
        negative_texts: Sequence[Sequence[str]] | None = None,
    ) -> TokenizerOutput:
        """Full pass for training: reconstruction from the pixel prefix, semantics from the full code.
        ``negative_texts``: per image, texts it must not match (hard negatives; contrastive presets)."""
        x = self._prepare(images)
        if self.training and self.linear_path is not None and not bool(self.linear_path.fitted):
            # on the first training batch, before the quantizer's, so a k-means init clusters its latents
            self.linear_path.fit(x)
        z, grid = self._latent(x)
        quant = self.quantizer(z)
        depth = min(self.pixel_depth, self._depth_of(quant))
        pixel_code = quant.quantized if depth == self._depth_of(quant) else quant.prefix(depth)
        pixel_tokens = self.post_projection(pixel_code)
        recon = self._reconstruct(self.pixel_decoder(pixel_tokens, grid), pixel_code, grid)
        shared = pixel_tokens if pixel_code is quant.quantized else None
        embedding, sem_tokens = self._semantic(quant.quantized, grid, shared)
        out = TokenizerOutput(
            reconstruction=recon,
            quant=quant,
            codes=self._codes_to_grid(quant.indices, grid),
            grid=grid,
            pixel_depth=depth,
            semantic_embedding=embedding,
            semantic_tokens=sem_tokens,
        )
        if self.semantic_kind == "distill":
            out.teacher_features = self.teacher_features(x, grid)
        if self.semantic_kind == "contrastive":
            out.logit_scale = self.logit_scale
            if texts is not None:
                out.text_embedding = self.encode_text(texts)
            if negative_texts is not None:
                out.negative_text_embedding, out.negative_mask = self._encode_negatives(negative_texts)
        return out

    def _encode_negatives(self, negative_texts: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        """Per-image lists of texts -> ((B, K, E) embeddings, (B, K) mask), K the longest list (>= 1)."""
        counts = [len(t) for t in negative_texts]
        k = max(1, *counts) if counts else 1
        flat = [text for texts in negative_texts for text in texts]
        dim = self.config.semantic.embed_dim
        padded = torch.zeros(len(counts), k, dim, device=self.device)
        mask = torch.zeros(len(counts), k, dtype=torch.bool, device=self.device)
        if flat:
            embedded = self.encode_text(flat)
            padded = padded.to(embedded.dtype)
            rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
            cols = torch.cat([torch.arange(c) for c in counts])
            padded = padded.index_put((rows, cols), embedded)
            mask[rows, cols] = True
        return padded, mask

    # -- public encode / decode -------------------------------------------------------------------

    def _codes_to_grid(self, indices: Tensor, grid: tuple[int, int]) -> Tensor:
        return indices.reshape(indices.shape[0], grid[0], grid[1], *indices.shape[2:])

    @torch.no_grad()
    def encode(self, images: Any) -> Tensor:
        """Images -> codes, int64 (B, h, w, *code_shape) with h = H / stride, w = W / stride.

        ``images``: float (B, 3, H, W) in [0, 1], a PIL image, a uint8 array (H, W, 3) or a list of these.
        Never changes the codebooks (runs the quantizer in eval mode).
        """
        x = self._prepare(images)
        z, grid = self._latent(x)
        with _eval(self.quantizer):
            indices = self.quantizer(z).indices
        return self._codes_to_grid(indices, grid)

    def _flatten_codes(self, codes: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """(B, h, w, *code_shape) -> ((B, h*w, *code_shape), (h, w)), checked."""
        if not isinstance(codes, Tensor):
            raise TypeError(f"codes must be an integer tensor, got {type(codes).__name__}")
        if codes.is_floating_point() or codes.dtype == torch.bool or codes.is_complex():
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        want = 3 + len(self.code_shape)
        if codes.dim() != want:
            raise ValueError(
                f"codes must have shape (B, h, w{''.join(', ' + str(c) for c in self.code_shape)}) "
                f"({want} dims), got {tuple(codes.shape)}"
            )
        if codes.shape[0] == 0 or codes.shape[1] == 0 or codes.shape[2] == 0:
            raise ValueError(f"codes are empty: {tuple(codes.shape)}")
        self._check_code_axes(tuple(codes.shape[3:]))
        b, h, w = codes.shape[:3]
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes out of range [0, {self.codebook_size}): min {int(codes.min())}, "
                f"max {int(codes.max())}"
            )
        return codes.reshape(b, h * w, *codes.shape[3:]).long().to(self.device), (h, w)

    def _check_code_axes(self, given: tuple[int, ...]) -> None:
        """Trailing code axes: all codebooks, and 1..num_levels residual levels (a prefix is allowed)."""
        expected = self.code_shape
        if self.num_levels == 1:
            ok, what = given == expected, f"{expected[0]} codebooks" if expected else "no code axis"
        else:
            levels_ok = 1 <= given[0] <= self.num_levels
            ok = levels_ok and given[1:] == expected[1:]
            what = f"1 to {self.num_levels} levels" + (f" x {expected[1]} codebooks" if expected[1:] else "")
        if not ok:
            raise ValueError(
                f"codes (B, h, w, *code_shape) must end in code shape {expected} ({what}); got "
                f"{given}" + (" (a prefix of levels is codes[..., :k, :])" if len(expected) == 2 else "")
            )

    def _levels_given(self, codes: Tensor) -> int:
        return 1 if self.num_levels == 1 else int(codes.shape[3])  # the level axis follows (B, h, w)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w, *code_shape) -> images (B, 3, h*stride, w*stride) in [0, 1].

        Residual presets decode from the first ``pixel_depth`` levels; a shorter prefix
        (``codes[..., :k]`` or ``codes[..., :k, :]``) decodes a coarser image from k levels.
        """
        flat, grid = self._flatten_codes(codes)
        k = min(self._levels_given(codes), self.pixel_depth)
        vectors = self.quantizer.indices_to_codes(code_prefix(flat, k, self.code_shape, self.num_levels))
        return self._pixels(vectors, grid).clamp(0.0, 1.0)

    @torch.no_grad()
    def code_embedding(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w, *code_shape) -> (B, D): the code vectors (sum of the given levels) averaged over
        positions. Any tokenizer has one, with or without a semantic branch: a neutral probe of what the
        tokens themselves carry."""
        flat, _ = self._flatten_codes(codes)
        return self.quantizer.indices_to_codes(flat).mean(dim=1)

    @torch.no_grad()
    def semantic_features(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w, *code_shape) -> (B, E) L2-normalised semantic embedding (all given levels).

        Contrastive presets: UniTok's CLIP image embedding. Distillation presets: the mean of
        :meth:`semantic_tokens`, normalised; EvoTok itself defines no pooled embedding (its MLLM reads
        the per-token features), this one is polytok's addition for retrieval and zero-shot probes.
        """
        if self.semantic_kind == "none":
            raise ValueError("this tokenizer has no semantic branch (semantic.kind is 'none')")
        flat, grid = self._flatten_codes(codes)
        vectors = self.quantizer.indices_to_codes(flat)
        embedding, _ = self._semantic(vectors, grid)
        assert embedding is not None
        return embedding

    @torch.no_grad()
    def semantic_tokens(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w, *code_shape) -> (B, h * w, feature_dim) per-token semantic features from all
        given levels: the semantic decoder's output, the features EvoTok's MLLM reads.

        Only distillation presets (``semantic.kind`` "distill") have per-token semantics; a contrastive
        preset's semantics is the pooled embedding of :meth:`semantic_features`.
        """
        if self.semantic_decoder is None:
            raise ValueError(
                f"preset {self.config.name!r} has no per-token semantic features (semantic.kind is "
                f"{self.semantic_kind!r}; only 'distill' has them); use semantic_features for an embedding"
            )
        flat, grid = self._flatten_codes(codes)
        return self.semantic_decoder(self.quantizer.indices_to_codes(flat), grid)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """list of B strings -> (B, E) L2-normalised text embedding (contrastive presets)."""
        if self.text_tower is None:
            raise ValueError(
                f"preset {self.config.name!r} has no text tower (semantic.kind is {self.semantic_kind!r})"
            )
        return self.text_tower.encode(texts)

    # -- checkpoints ------------------------------------------------------------------------------

    def frozen_state_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen third-party modules that are rebuilt instead of stored (by
        ``save_pretrained``, the training engine's checkpoints and its weight EMA)."""
        prefixes = ["teacher."]
        if isinstance(self.text_tower, PretrainedTextTower) and self.text_tower.frozen:
            prefixes.append("text_tower.encoder.")
        return tuple(prefixes)

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """The tensors ``save_pretrained`` stores (everything except rebuilt frozen modules)."""
        skip = self.frozen_state_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``manifest.json`` (their sizes and sha256)
        into ``directory``, replacing what is there.

        The files are written into ``<directory>.tmp-<unique>``, fsync'ed and the directory is renamed
        whole (see ``polytok.storage``): a crash at any moment leaves the old or the new checkpoint
        complete, and the next save removes the partial leftovers. A directory holding other files than a
        saved tokenizer's is refused (ValueError) rather than replaced.
        """
        from polytok.models.saving import save_tokenizer_state

        return save_tokenizer_state(self.config, self.checkpoint_state_dict(), directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        *,
        teacher: nn.Module | None = None,
        map_location: str | torch.device = "cpu",
    ) -> Tokenizer:
        """Load a directory written by ``save_pretrained``.

        Weights come from ``model.safetensors``; a pickled ``pytorch_model.bin`` is read only with
        ``torch.load(weights_only=True)``. Missing or unexpected tensors raise ValueError naming them.
        The files are checked against the sizes and sha256 in ``manifest.json`` first
        (``polytok.storage.ChecksumError``, a ValueError, on a mismatch); a directory without a manifest
        (written before polytok stored checksums) loads unverified, with a warning. The model is moved to
        ``map_location``.
        """
        from polytok.models.saving import read_tokenizer_folder

        config, state, root = read_tokenizer_folder(directory)
        tok = cls(config, load_backbone_weights=False, teacher=teacher)
        tok.load_checkpoint_state(state, source=str(root))
        return tok.to(map_location)

    def load_checkpoint_state(self, state: dict[str, Tensor], source: str = "state dict") -> None:
        """Load tensors stored by ``save_pretrained``; every stored tensor must match by name and shape."""
        expected = self.checkpoint_state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(
                    f"missing keys: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")
                )
            if unexpected:
                parts.append(
                    f"unexpected keys: {', '.join(unexpected[:20])}"
                    + (" ..." if len(unexpected) > 20 else "")
                )
            raise ValueError(f"checkpoint {source} does not match the config: " + "; ".join(parts))
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ValueError(
                    f"checkpoint {source}: tensor {k!r} has shape {tuple(state[k].shape)}, "
                    f"expected {tuple(v.shape)}"
                )
        self.load_state_dict(state, strict=False)
