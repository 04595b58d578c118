"""Image encoders: normalised images (B, 3, H, W) -> tokens (B, h * w, width) on a stride-s grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from polytok.models.config import EncoderConfig
from polytok.nn import HybridConvStem, Transformer, VQGANEncoder, sincos_2d
from polytok.nn.efficient_stem import EfficientLiteStem


class ImageEncoder(nn.Module):
    """Common interface: ``forward(x) -> (tokens (B, N, width), (h, w))``; ``stride`` and ``width``."""

    stride: int
    width: int


class HybridViTEncoder(ImageEncoder):
    """ViTamin-style encoder: conv stem (MBConv stages) to stride 16, then transformer blocks.

    ``stem: efficientnet-lite0`` puts EfficientNet-Lite0's pretrained front end in the stem's place
    (:class:`~polytok.nn.efficient_stem.EfficientLiteStem`, stride 4).
    No position embedding: the convolutional stem already encodes position. ViTamin-L: stem 160,
    stages (160, 320) x (2, 4), 31 blocks of width 1024, 16 heads, GeGLU ratio 2.
    """

    def __init__(self, cfg: EncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        self.stem: HybridConvStem | EfficientLiteStem
        if cfg.stem == "efficientnet-lite0":
            self.stem = EfficientLiteStem(cfg.width)
            if load_weights:
                self.stem.load_pretrained()
        else:
            self.stem = HybridConvStem(cfg.stem_width, cfg.stage_widths, cfg.stage_depths, cfg.width)
        self.transformer = Transformer(cfg.width, cfg.depth, cfg.heads, mlp=cfg.mlp, mlp_ratio=cfg.mlp_ratio)
        self.transformer.grad_checkpointing = cfg.grad_checkpointing
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.stride, self.width = self.stem.stride, cfg.width

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        fmap = self.stem(x)  # (B, width, h, w)
        h, w = fmap.shape[-2:]
        tokens = self.transformer(fmap.flatten(2).transpose(1, 2))
        return self.norm(tokens), (h, w)


class ViTEncoder(ImageEncoder):
    """Plain ViT: non-overlapping patch embedding, fixed 2-D sin-cos positions, transformer blocks."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.transformer = Transformer(cfg.width, cfg.depth, cfg.heads, mlp=cfg.mlp, mlp_ratio=cfg.mlp_ratio)
        self.transformer.grad_checkpointing = cfg.grad_checkpointing
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.stride, self.width = cfg.patch_size, cfg.width

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        fmap = self.patch(x)
        h, w = fmap.shape[-2:]
        tokens = fmap.flatten(2).transpose(1, 2)
        tokens = tokens + sincos_2d(h, w, self.width, device=x.device, dtype=tokens.dtype)
        return self.norm(self.transformer(tokens)), (h, w)


class CNNEncoder(ImageEncoder):
    """LlamaGen's VQGAN-style CNN (:class:`polytok.nn.VQGANEncoder`): no tokens until its last map, read
    position by position. ``width`` is its output channels (LlamaGen: 256, before ``quant_conv``)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.cnn = VQGANEncoder(cfg.width, widths, cfg.num_res_blocks, norm_groups=cfg.norm_groups)
        self.stride, self.width = self.cnn.factor, cfg.width

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        fmap = self.cnn(x)
        h, w = fmap.shape[-2:]
        return fmap.flatten(2).transpose(1, 2), (h, w)


# SigLIP2-L/16 at 256 px (google/siglip2-large-patch16-256), vision tower only.
SIGLIP2_LARGE_256 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 16,
    "num_patches": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}


# The same tower in SigLIP's layout (convolutional patch embedding, learned positions for a fixed
# 16 x 16 grid): the layout the SigLIP2-256 checkpoint is saved in and EvoTok builds.
SIGLIP_LARGE_256 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 16,
    "image_size": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}


def load_hf_vision_model(
    kind: str, hf_config: dict[str, Any] | None, weights: str | None, load_weights: bool = True
) -> nn.Module:
    """A ``transformers`` SigLIP / SigLIP2 vision tower, random or from local weights.

    ``weights`` is a local directory (``config.json`` + safetensors, vision-only or the full
    image-text checkpoint) or a Hugging Face id present in the local cache. Nothing is downloaded.
    """
    import transformers

    if kind == "siglip2":
        model_cls, config_cls = transformers.Siglip2VisionModel, transformers.Siglip2VisionConfig
    elif kind == "siglip":
        model_cls, config_cls = transformers.SiglipVisionModel, transformers.SiglipVisionConfig
    else:
        raise ValueError(f"unknown transformers vision kind {kind!r}")
    options = dict(hf_config or {})
    options["vision_use_head"] = False  # pooled head unused: tokens only
    if weights is None or not load_weights:
        return model_cls(config_cls(**options))
    directory = resolve_weights_dir(weights, kind)
    return model_cls.from_pretrained(str(directory), vision_use_head=False)


def resolve_weights_dir(weights: str, kind: str) -> Path:
    """A local model directory for ``weights`` (a path, or a Hugging Face id found in the local cache)."""
    path = Path(weights).expanduser()
    looks_local = path.is_absolute() or weights.startswith((".", "~")) or weights.count("/") != 1
    if not path.exists() and not looks_local:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(weights, local_files_only=True))
        except Exception as exc:
            raise FileNotFoundError(
                f"{kind} weights {weights!r} not found: not a local directory and not in the Hugging Face "
                "cache (~/.cache/huggingface/hub). Download the checkpoint elsewhere and set encoder.weights "
                "to its directory."
            ) from exc
    if not path.is_dir():
        raise FileNotFoundError(
            f"{kind} weights directory not found: {path} (expected config.json + "
            "model.safetensors; not in the Hugging Face cache either)"
        )
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} has no config.json; expected a transformers model directory "
            "(config.json + model.safetensors)"
        )
    return path


class HFSiglipEncoder(ImageEncoder):
    """SigLIP(2) vision tower from ``transformers``; tokens from hidden state ``feature_layer``."""

    def __init__(self, cfg: EncoderConfig, load_weights: bool = True) -> None:
        super().__init__()
        self.kind = cfg.kind
        self.model = load_hf_vision_model(cfg.kind, cfg.hf_config, cfg.weights, load_weights)
        vc = self.model.config
        self.stride, self.width = int(vc.patch_size), int(vc.hidden_size)
        self.feature_layer = cfg.feature_layer
        inner = self.inner
        layers = inner.encoder.layers
        # Blocks run for the feature layer (hidden state k is the output of block k; 0: the embeddings).
        self.blocks_needed = cfg.feature_layer % (len(layers) + 1)
        for layer in list(layers)[len(layers) - cfg.freeze_last_blocks :] if cfg.freeze_last_blocks else []:
            layer.requires_grad_(False)
        if cfg.feature_layer != -1:  # post-layernorm only applies to the last layer's output
            inner.post_layernorm.requires_grad_(False)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        b, c, hh, ww = x.shape
        p = self.stride
        h, w = hh // p, ww // p
        if self.kind == "siglip2":
            # Siglip2 takes flattened patches (channels last inside a patch) with their grid shape.
            patches = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, p * p * c)
            shapes = torch.tensor([[h, w]] * b, device=x.device, dtype=torch.long)
            mask = torch.ones(b, h * w, device=x.device, dtype=torch.long)
            out = self.model(
                pixel_values=patches,
                spatial_shapes=shapes,
                pixel_attention_mask=mask,
                output_hidden_states=True,
            )
        elif self.feature_layer != -1:
            return self._hidden_state(x), (h, w)
        else:
            out = self.model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        if self.feature_layer == -1:
            return out.last_hidden_state, (h, w)
        return out.hidden_states[self.feature_layer], (h, w)

    @property
    def inner(self) -> nn.Module:
        """The vision transformer (embeddings, encoder, post_layernorm): the model itself, or its
        ``vision_model`` in the older transformers layout."""
        return getattr(self.model, "vision_model", self.model)

    def _hidden_state(self, x: Tensor) -> Tensor:
        """SigLIP's hidden state ``feature_layer`` without running the blocks after it (EvoTok reads the
        second to last: its last block and the final LayerNorm would be computed for nothing).
        (B, 3, H, W) -> (B, N, width)."""
        hidden = self.inner.embeddings(x, interpolate_pos_encoding=True)
        for layer in self.inner.encoder.layers[: self.blocks_needed]:
            out = layer(hidden, None)  # no mask: every patch is real
            hidden = out[0] if isinstance(out, tuple) else out  # a tuple in transformers 4
        return hidden


def build_encoder(cfg: EncoderConfig, load_weights: bool = True) -> ImageEncoder:
    if cfg.kind == "hybrid_vit":
        return HybridViTEncoder(cfg, load_weights)
    if cfg.kind == "vit":
        return ViTEncoder(cfg)
    if cfg.kind == "cnn":
        return CNNEncoder(cfg)
    return HFSiglipEncoder(cfg, load_weights)
