"""EfficientNet-Lite feature perceptual loss on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from skimage.filters import gaussian

from polytok.losses.feature_perceptual import EfficientNetPerceptualLoss
from polytok.pretrained import load_pretrained

SIZE = 128


def photo(name: str, size: int = SIZE) -> torch.Tensor:
    image = getattr(data, name)()
    side = min(image.shape[:2])
    x = torch.from_numpy(image[:side, :side].copy()).permute(2, 0, 1).float() / 255
    return F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True)[0].clamp(0, 1)


@pytest.fixture(scope="module")
def net():
    return load_pretrained("efficientnet-lite0")


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.stack([photo("chelsea"), photo("coffee"), photo("astronaut")])


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    arrays = [gaussian(x.permute(1, 2, 0).numpy(), sigma=sigma, channel_axis=-1) for x in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


def test_zero_for_identical_images(net, photos) -> None:
    loss = EfficientNetPerceptualLoss(net)
    out = loss(photos, photos.clone())
    assert out.loss.item() == 0.0
    assert set(out.terms) == {"effnet_perceptual", *(f"effnet_perceptual/layer{i}" for i in range(5))}


@pytest.mark.parametrize("distortion", ["blur", "noise"])
def test_grows_with_distortion_strength(net, photos, distortion: str) -> None:
    loss = EfficientNetPerceptualLoss(net)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(photos.shape, generator=generator)
    values = []
    for strength in (0.5, 1.0, 2.0, 4.0):
        if distortion == "blur":
            distorted = blurred(photos, sigma=strength)
        else:
            distorted = (photos + 0.04 * strength * noise).clamp(0, 1)
        values.append(loss.distance(distorted, photos))
    stacked = torch.stack(values)  # (strengths, B)
    assert (stacked > 0).all()
    assert (stacked[1:] > stacked[:-1]).all(), stacked


def test_gradients_reach_the_reconstruction_only(net, photos) -> None:
    loss = EfficientNetPerceptualLoss(net, layers=(1, 3))
    reconstruction = blurred(photos, 1.5).requires_grad_(True)
    loss(reconstruction, photos).loss.backward()
    grad = reconstruction.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())


def test_one_layer_equals_hand_computation(net, photos) -> None:
    distorted = blurred(photos, 2.0)
    loss = EfficientNetPerceptualLoss(net, layers=(2,), layer_weights=(0.7,))
    with torch.no_grad():
        a = net(distorted).feature_maps[2].double().numpy()
        b = net(photos).feature_maps[2].double().numpy()
    a = a / (np.sqrt((a**2).sum(axis=1, keepdims=True)) + 1e-10)
    b = b / (np.sqrt((b**2).sum(axis=1, keepdims=True)) + 1e-10)
    expected = 0.7 * ((a - b) ** 2).sum(axis=1).mean(axis=(1, 2))
    np.testing.assert_allclose(loss.distance(distorted, photos).detach().numpy(), expected, rtol=1e-4)


def test_layer_weights_sum_the_layers(net, photos) -> None:
    distorted = blurred(photos, 1.0)
    per_layer = EfficientNetPerceptualLoss(net).layer_distances(distorted, photos)
    weighted = EfficientNetPerceptualLoss(net, layers=(0, 4), layer_weights=(2.0, 0.5), weight=3.0)
    expected = 3.0 * (2.0 * per_layer[:, 0] + 0.5 * per_layer[:, 4]).mean()
    torch.testing.assert_close(weighted(distorted, photos).loss, expected, rtol=1e-5, atol=1e-7)


def test_size_and_out_of_range_reconstruction(net, photos) -> None:
    loss = EfficientNetPerceptualLoss(net, size=96)
    overshoot = (photos * 1.2 - 0.1).detach()  # raw decoder output may leave [0, 1]
    assert loss(overshoot, photos).loss.item() > 0


def test_bad_arguments(net, photos) -> None:
    loss = EfficientNetPerceptualLoss(net)
    with pytest.raises(ValueError, match="shapes differ"):
        loss(photos[:, :, :64], photos)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(photos, photos * 2)
    with pytest.raises(ValueError, match="layers must be distinct"):
        EfficientNetPerceptualLoss(net, layers=(0, 5))
    with pytest.raises(ValueError, match="layer_weights has 1 entries"):
        EfficientNetPerceptualLoss(net, layers=(0, 1), layer_weights=(1.0,))
    with pytest.raises(ValueError, match="must be frozen"):
        EfficientNetPerceptualLoss(load_pretrained("efficientnet-lite0", freeze=False))
