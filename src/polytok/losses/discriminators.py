"""Discriminators for the adversarial loss.

- :class:`PatchGANDiscriminator`: the convolutional N-layer PatchGAN of pix2pix / VQGAN (EvoTok).
- :class:`DinoDiscriminator`: small trainable heads on several layers' tokens of a frozen, pretrained
  self-supervised ViT-S (UniTok, after StyleGAN-T / VAR), with DiffAugment on real and fake alike.

Both take images (B, 3, H, W) in [0, 1] and return raw logits (higher = judged real).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from polytok.losses.diffaug import DiffAugment
from polytok.losses.weights import (
    hf_hub_cached_file,
    load_state_dict_file,
    resolve_weights,
    torch_hub_checkpoint,
)

NORMS = ("batch", "group")


def _group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    # 32 groups as usual, fewer when the width does not divide (tiny test configs).
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=eps)


def _check_images(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")


class PatchGANDiscriminator(nn.Module):
    """N-layer PatchGAN: 4x4 convs, stride 2 for the first ``n_layers``, LeakyReLU(0.2), one logit per patch.

    Args:
        in_channels: image channels.
        ndf: width of the first layer; layer k has ``ndf * min(2**k, 8)`` channels.
        n_layers: number of stride-2 layers (3 gives 70x70 receptive fields).
        norm: "batch" (original) or "group" (independent of batch size and rank count).
        diffaug: optional DiffAugment policy applied inside forward (None: no augmentation).

    Call: ``disc(images)`` with (B, 3, H, W) in [0, 1] -> logits (B, 1, H', W').
    """

    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        diffaug: str | None = None,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if n_layers < 1 or ndf < 1:
            raise ValueError(f"n_layers and ndf must be >= 1, got n_layers={n_layers}, ndf={ndf}")
        self.in_channels = in_channels

        def norm_layer(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if norm == "batch" else _group_norm(channels)

        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        channels = ndf
        for k in range(1, n_layers + 1):
            out_channels = ndf * min(2**k, 8)
            stride = 2 if k < n_layers else 1  # the last widening conv keeps the resolution
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride, 1, bias=False),
                norm_layer(out_channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.augment = DiffAugment(diffaug)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The DCGAN initialisation used by pix2pix and VQGAN: N(0, 0.02) convs, N(1, 0.02) norm scales."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor, augment: bool = True) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(images.shape)}"
            )
        x = images * 2 - 1
        if augment:
            x = self.augment(x)
        return self.main(x)


class LocalBatchNorm1d(nn.Module):
    """Batch norm over (virtual batch of samples, tokens) per channel, with no running statistics.

    Statistics are taken in groups of ``virtual_batch`` samples, so they do not depend on the rank count
    and train and eval behave the same (as in StyleGAN-T's discriminator heads). Input (B, C, N).
    """

    def __init__(self, channels: int, virtual_batch: int = 8, eps: float = 1e-6) -> None:
        super().__init__()
        self.virtual_batch = virtual_batch
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, tokens = x.shape
        groups = math.ceil(batch / self.virtual_batch)
        if batch % groups:
            groups = 1  # uneven split: one group holding the whole batch
        grouped = x.float().reshape(groups, -1, channels, tokens)
        mean = grouped.mean(dim=(1, 3), keepdim=True)
        var = grouped.var(dim=(1, 3), keepdim=True, unbiased=False)
        normed = ((grouped - mean) * torch.rsqrt(var + self.eps)).reshape(batch, channels, tokens)
        return (normed * self.weight[None, :, None] + self.bias[None, :, None]).to(x.dtype)


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return (self.fn(x) + x) / math.sqrt(2)  # keeps the variance of the sum near the input's


def _token_block(channels: int, kernel_size: int, norm: str, use_spectral_norm: bool) -> nn.Sequential:
    conv: nn.Module = nn.Conv1d(
        channels, channels, kernel_size, padding=kernel_size // 2, padding_mode="circular"
    )
    if use_spectral_norm:
        conv = spectral_norm(conv)
    norm_layer = LocalBatchNorm1d(channels) if norm == "batch" else _group_norm(channels, eps=1e-6)
    return nn.Sequential(conv, norm_layer, nn.LeakyReLU(0.2, inplace=True))


class TokenHead(nn.Module):
    """Per-token logits from one layer's tokens: 1x1 block, residual k-wide block, 1x1 classifier.

    Input (B, N, C) tokens -> logits (B, N).
    """

    def __init__(
        self, channels: int, kernel_size: int = 9, norm: str = "batch", use_spectral_norm: bool = True
    ):
        super().__init__()
        self.body = nn.Sequential(
            _token_block(channels, 1, norm, use_spectral_norm),
            _Residual(_token_block(channels, kernel_size, norm, use_spectral_norm)),
        )
        classifier = nn.Conv1d(channels, 1, 1)
        self.classifier = spectral_norm(classifier) if use_spectral_norm else classifier

    def forward(self, tokens: Tensor) -> Tensor:
        return self.classifier(self.body(tokens.transpose(1, 2))).squeeze(1)


@dataclass(frozen=True)
class _ViTWeights:
    hf_repo: str  # timm's Hugging Face repository (model.safetensors)
    hub_file: str  # the authors' checkpoint name in the torch hub cache
    url: str


# The frozen ViT-S backbones the DINO discriminator knows how to load.
DINO_BACKBONES: dict[str, _ViTWeights] = {
    "vit_small_patch14_dinov2": _ViTWeights(
        "timm/vit_small_patch14_dinov2.lvd142m",
        "dinov2_vits14_pretrain.pth",
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
    ),
    "vit_small_patch16_224.dino": _ViTWeights(
        "timm/vit_small_patch16_224.dino",
        "dino_deitsmall16_pretrain.pth",
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
    ),
}


def dino_weights_path(model_name: str, path: str | Path | None = None) -> Path:
    """Locate a ViT-S checkpoint: ``path``; else the HF hub cache (timm's file); else the torch hub cache."""
    if model_name not in DINO_BACKBONES:
        raise ValueError(f"unknown DINO backbone {model_name!r}; choose from {sorted(DINO_BACKBONES)}")
    info = DINO_BACKBONES[model_name]
    return resolve_weights(
        f"{model_name} backbone of the DINO discriminator",
        path,
        [hf_hub_cached_file(info.hf_repo, "model.safetensors"), torch_hub_checkpoint(info.hub_file)],
        f"The authors' checkpoint is {info.url}; timm's is model.safetensors of hf.co/{info.hf_repo}.",
    )


class TimmViTTokens(nn.Module):
    """Frozen timm ViT that returns the tokens of several layers, each (B, N, C).

    The class token is added to every patch token (it carries global context into each per-token
    logit). Index -1 stands for the patch embedding (with positions) before the first block.

    Args:
        model: a timm ``VisionTransformer`` with one prefix (class) token.
        layers: block indices whose outputs are returned, in order.
        include_embedding: also return the embedding tokens first.
        mean, std: input normalisation applied to images in [0, 1] (ImageNet statistics by default).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int] = (2, 5, 8, 11),
        include_embedding: bool = True,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        depth = len(model.blocks)
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"layer indices {bad} out of range for a ViT with {depth} blocks")
        if getattr(model, "num_prefix_tokens", 1) != 1:
            raise ValueError("TimmViTTokens expects exactly one prefix (class) token")
        self.model = model.eval().requires_grad_(False)
        self.layers = tuple(layers)
        self.include_embedding = include_embedding
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> TimmViTTokens:
        super().train(mode)
        self.model.eval()  # frozen: no dropout / drop-path whatever the caller does
        return self

    @staticmethod
    def _merge_class_token(x: Tensor) -> Tensor:
        return x[:, 1:] + x[:, :1]

    def forward(self, images: Tensor) -> list[Tensor]:
        model = self.model
        x = model.patch_embed((images - self.mean) / self.std)
        x = model._pos_embed(x)
        x = model.norm_pre(model.patch_drop(x))
        outputs = [self._merge_class_token(x)] if self.include_embedding else []
        last = max(self.layers)
        for index, block in enumerate(model.blocks):
            x = block(x)
            if index in self.layers:
                outputs.append(self._merge_class_token(x))
            if index == last:
                break
        return outputs


def build_dino_backbone(
    model_name: str = "vit_small_patch14_dinov2",
    weights_path: str | Path | None = None,
    image_size: int = 224,
    layers: Sequence[int] = (2, 5, 8, 11),
) -> TimmViTTokens:
    """A frozen pretrained ViT-S (timm architecture, weights from a local file or cache) returning tokens.

    Raises:
        FileNotFoundError: the checkpoint is in none of the looked-at places (the message lists them).
    """
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    path = dino_weights_path(model_name, weights_path)
    model = timm.create_model(model_name, pretrained=False, img_size=image_size, num_classes=0)
    state = load_state_dict_file(path)
    state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
    # timm's filter converts the authors' layouts and resamples position embeddings to image_size.
    state = checkpoint_filter_fn(state, model)
    model.load_state_dict(state, strict=True)
    cfg = model.pretrained_cfg
    return TimmViTTokens(
        model, layers, mean=cfg.get("mean", (0.485, 0.456, 0.406)), std=cfg.get("std", (0.229, 0.224, 0.225))
    )


def _as_token_list(features: Tensor | Sequence[Tensor]) -> list[Tensor]:
    items = [features] if isinstance(features, Tensor) else list(features)
    tokens = []
    for item in items:
        if item.dim() == 4:  # (B, C, h, w) map -> (B, h*w, C) tokens
            item = item.flatten(2).transpose(1, 2)
        if item.dim() != 3:
            raise ValueError(
                f"backbone features must be (B, N, C) tokens or (B, C, h, w) maps, got {tuple(item.shape)}"
            )
        tokens.append(item)
    return tokens


class DinoDiscriminator(nn.Module):
    """Trainable token heads on a frozen pretrained ViT, as UniTok's discriminator.

    Images are mapped to [-1, 1], augmented with DiffAugment, mapped back to [0, 1], resized to
    ``image_size`` and fed to the frozen backbone; each returned layer gets its own :class:`TokenHead`.
    Gradients flow through the frozen backbone to the images (the generator needs them).

    Args:
        backbone: any frozen module ``images (B, 3, S, S) in [0, 1] -> tokens (B, N, C)`` or a list of them
            (one per layer); (B, C, h, w) maps are accepted too. Default: :func:`build_dino_backbone`.
        model_name, weights_path, layers: passed to :func:`build_dino_backbone` when ``backbone`` is None.
        image_size: side the images are resized to before the backbone.
        kernel_size: width of the residual token convolution (9 in StyleGAN-T / UniTok).
        norm: "batch" (local batch norm over virtual batches of 8) or "group".
        use_spectral_norm: spectral normalisation of the head convolutions.
        diffaug: DiffAugment policy (None or "" disables it).

    Call: ``disc(images, augment=True)`` with (B, 3, H, W) in [0, 1] -> logits (B, total tokens of all heads).
    """

    def __init__(
        self,
        backbone: nn.Module | None = None,
        model_name: str = "vit_small_patch14_dinov2",
        weights_path: str | Path | None = None,
        layers: Sequence[int] = (2, 5, 8, 11),
        image_size: int = 224,
        kernel_size: int = 9,
        norm: str = "batch",
        use_spectral_norm: bool = True,
        diffaug: str | None = "color,translation,cutout",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if backbone is None:
            backbone = build_dino_backbone(model_name, weights_path, image_size, layers)
        self.backbone = backbone.eval().requires_grad_(False)
        self.image_size = image_size
        self.augment = DiffAugment(diffaug)
        with torch.no_grad():
            probe = torch.zeros(1, 3, image_size, image_size, device=_module_device(backbone))
            dims = [t.shape[-1] for t in _as_token_list(self.backbone(probe))]
        self.feature_dims = tuple(dims)
        self.heads = nn.ModuleList(TokenHead(c, kernel_size, norm, use_spectral_norm) for c in dims)

    def train(self, mode: bool = True) -> DinoDiscriminator:
        super().train(mode)
        self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The heads' parameters (the backbone is frozen): what the discriminator optimiser should get."""
        return [p for p in self.parameters() if p.requires_grad]

    def _resize(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        if (height, width) == (self.image_size, self.image_size):
            return x
        mode = "area" if height > self.image_size and width > self.image_size else "bicubic"
        return F.interpolate(x, size=(self.image_size, self.image_size), mode=mode)

    def forward(self, images: Tensor, augment: bool = True) -> Tensor:
        _check_images(images)
        x = images * 2 - 1
        if augment:
            x = self.augment(x)
        x = self._resize((x + 1) / 2)
        features = _as_token_list(self.backbone(x))
        if len(features) != len(self.heads):
            raise ValueError(
                f"the backbone returned {len(features)} feature sets, expected {len(self.heads)}"
            )
        return torch.cat([head(tokens.float()) for head, tokens in zip(self.heads, features)], dim=1)


def _module_device(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")
