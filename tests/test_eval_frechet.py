"""Frechet distance (vs an independent scipy computation), Inception Score, and weight discovery."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from polytok.eval import FeatureMoments, FrechetDistance, InceptionFeatures, InceptionScore, ModuleFeatures
from polytok.eval.metrics.weights import INCEPTION_FILENAME
from test_eval_photos import perturb, photo_crops


def small_backbone(out_dim: int = 12, seed: int = 0) -> nn.Module:
    """A fixed (seeded) conv network: a non-Inception feature space with few dims so that the
    covariance of a few dozen images is full rank."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(16, out_dim, 3, stride=2, padding=1),
        nn.ReLU(),
    )


class _GivenFeatures(nn.Module):
    """Hands torchmetrics' FID features computed beforehand."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.mark.parametrize("noise", [0.05, 0.15])
def test_frechet_matches_scipy_on_real_photos(noise: float) -> None:
    real, _ = photo_crops(60, size=40)
    fake = perturb(real, noise)
    space = ModuleFeatures(small_backbone(), name="small-conv", mean=0.5, std=0.25)
    fd = FrechetDistance(space, protocol={"dataset": "skimage crops"})
    for start in range(0, 60, 7):  # uneven batches: the statistics must stream
        fd.update(real[start : start + 7].float(), real=True)
        fd.update(fake[start : start + 7].float(), real=False)
    result = fd.compute()

    with torch.no_grad():
        feats_real = space(real.float()).double().numpy()
        feats_fake = space(fake.float()).double().numpy()
    expected = scipy_frechet(feats_real, feats_fake)
    # The perturbation must move the distribution well beyond rounding noise for the check to mean much.
    assert expected > 1e-3 * np.trace(np.cov(feats_real, rowvar=False))
    assert result.value == pytest.approx(expected, rel=1e-3)
    # ... and torchmetrics' own FID (its own streaming state, general eigensolver) on the same features.
    reference = FrechetInceptionDistance(feature=_GivenFeatures(12))
    reference.update(torch.from_numpy(feats_real), real=True)
    reference.update(torch.from_numpy(feats_fake), real=False)
    assert result.value == pytest.approx(float(reference.compute()), rel=1e-6)
    assert result.protocol["feature_network"] == "small-conv"
    assert result.protocol["num_reference_images"] == 60
    assert result.protocol["num_compared_images"] == 60
    assert result.protocol["dataset"] == "skimage crops"


def test_frechet_grows_with_perturbation_and_vanishes_for_identical_sets() -> None:
    real, _ = photo_crops(48, size=40)
    space = ModuleFeatures(small_backbone(), name="small-conv", size=32)
    values = []
    for noise in (0.0, 0.05, 0.2):
        fd = FrechetDistance(space)
        fd.update(real.float(), real=True)
        fd.update(real.float() if noise == 0 else perturb(real, noise).float(), real=False)
        values.append(fd.compute().value)
    assert abs(values[0]) < 1e-6
    assert values[0] < values[1] < values[2]


def test_frechet_in_a_pretrained_network_feature_space() -> None:
    from polytok.pretrained.efficientnet_lite import build_efficientnet_lite

    try:
        net = build_efficientnet_lite("efficientnet-lite0")
    except FileNotFoundError as err:
        pytest.skip(f"EfficientNet-Lite0 weights are not installed: {err}")
    space = ModuleFeatures(net, name="efficientnet-lite0", size=224, select=lambda out: out.embedding)
    assert space.num_features == 1280
    real, _ = photo_crops(12, size=96)
    results = []
    for noise in (0.0, 0.15):  # each 1280-d distance takes seconds on a CPU: two suffice
        fd = FrechetDistance(space)
        fd.update(real.float(), real=True)
        fd.update(real.float() if noise == 0 else perturb(real, noise).float(), real=False)
        results.append(fd.compute())
    assert results[1].value > 0
    assert abs(results[0].value) < 1e-3 * results[1].value
    assert results[1].protocol["feature_network"] == "efficientnet-lite0"
    assert results[1].protocol["feature_dim"] == 1280


def test_depths_share_the_reference_statistics() -> None:
    """Distances against one shared set of original statistics equal distances that each keep their own,
    and the shared set is filled only by its owner."""
    real, _ = photo_crops(24, size=32, seed=3)
    space = ModuleFeatures(small_backbone(), name="small-conv")
    reference = FeatureMoments(space.num_features)
    shared = [FrechetDistance(space, reference=reference) for _ in range(3)]
    own = [FrechetDistance(space) for _ in range(3)]
    for start in range(0, 24, 8):
        batch = real[start : start + 8].float()
        reference.update(space(batch))
        for noise, (a, b) in enumerate(zip(shared, own), start=1):
            fake = perturb(batch, 0.05 * noise, seed=start)
            a.update(fake, real=False)
            b.update(batch, real=True)
            b.update(fake, real=False)
    for a, b in zip(shared, own):
        assert a.real is reference and a.num_real == 24
        assert a.compute().value == b.compute().value
    with pytest.raises(ValueError, match="shared"):
        shared[0].update(real[:2].float(), real=True)
    with pytest.raises(ValueError, match="expected 12"):
        FrechetDistance(space, reference=FeatureMoments(5))


def test_frechet_rejects_bad_input() -> None:
    fd = FrechetDistance(None, num_features=4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        fd.update_features(torch.zeros(3, 5), real=True)
    with pytest.raises(RuntimeError, match="at least 2"):
        fd.compute()
    space = ModuleFeatures(small_backbone(), name="small-conv", size=32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FrechetDistance(space).update(torch.full((2, 3, 32, 32), 2.0), real=True)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        FrechetDistance(space).update(torch.rand(2, 1, 32, 32), real=True)


def test_inception_weights_missing_names_file_and_place(tmp_path) -> None:
    # A real, empty TORCH_HOME in a fresh interpreter: the error must say which file and where.
    code = textwrap.dedent(
        """
        from polytok.eval import FrechetDistance
        try:
            FrechetDistance.inception()
        except FileNotFoundError as err:
            print("MESSAGE:", err)
        else:
            print("NO ERROR")
        """
    )
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch_home")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "MESSAGE:" in out.stdout, out.stdout + out.stderr
    expected_path = tmp_path / "torch_home" / "hub" / "checkpoints" / INCEPTION_FILENAME
    assert INCEPTION_FILENAME in out.stdout
    assert str(expected_path) in out.stdout

    with pytest.raises(FileNotFoundError, match="given path"):
        InceptionFeatures(weights_path=tmp_path / "nowhere.pth")


@pytest.fixture(scope="module")
def inception_like_weights(tmp_path_factory) -> str:
    """A state-dict file with the Inception-v3 layout but untrained values: exercises the loading path
    from a real file on disk (the figure it gives means nothing, it is never reported)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # Build the network without any weights file (its constructor insists on loading one).
    original_load, original_apply = torch.load, FeatureExtractorInceptionV3.load_state_dict
    torch.load = lambda *args, **kwargs: {}
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state, *args, **kwargs: None
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    finally:
        torch.load, FeatureExtractorInceptionV3.load_state_dict = original_load, original_apply
    path = tmp_path_factory.mktemp("weights") / INCEPTION_FILENAME
    torch.save(net.state_dict(), path)
    return str(path)


def test_inception_features_load_from_hub_cache_layout(inception_like_weights, tmp_path, monkeypatch) -> None:
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    os.link(inception_like_weights, checkpoints / INCEPTION_FILENAME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    space = InceptionFeatures("2048")
    stored = torch.load(inception_like_weights, weights_only=True)
    assert torch.equal(space.net.Conv2d_1a_3x3.conv.weight, stored["Conv2d_1a_3x3.conv.weight"])
    images, _ = photo_crops(3, size=64)
    feats = space(images.float())
    assert feats.shape == (3, 2048)
    assert torch.isfinite(feats).all()
    assert space.protocol["feature_layer"] == "pool3"
    assert "299" in space.protocol["network_input"]


def test_inception_features_refuse_pickled_objects(tmp_path) -> None:
    path = tmp_path / INCEPTION_FILENAME
    torch.save({"weights": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(ValueError, match="plain tensor state dict"):
        InceptionFeatures(weights_path=path)


class _Logits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = small_backbone(12)
        torch.manual_seed(3)
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3))) * 3


def test_inception_score_matches_torchmetrics_and_per_split_reference() -> None:
    from torchmetrics.image.inception import InceptionScore as TMInceptionScore

    images, _ = photo_crops(40, size=32)
    images = images.float()
    classifier = ModuleFeatures(_Logits(), name="small-classifier")

    ours = InceptionScore(classifier, splits=1)
    for start in range(0, 40, 9):
        ours.update(images[start : start + 9])
    with pytest.warns(UserWarning):
        reference = TMInceptionScore(feature=classifier, splits=1)
    reference.update(images)
    assert ours.compute().value == pytest.approx(float(reference.compute()[0]), rel=1e-5)

    # Several splits: image i belongs to split i % splits.
    ours3 = InceptionScore(classifier, splits=3)
    for start in range(0, 40, 9):
        ours3.update(images[start : start + 9])
    with torch.no_grad():
        p = classifier(images).double().softmax(dim=1).numpy()
    scores = []
    for s in range(3):
        part = p[s::3]
        marginal = part.mean(axis=0)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(marginal)), axis=1))))
    result = ours3.compute()
    assert result.value == pytest.approx(np.mean(scores), rel=1e-6)
    assert result.std == pytest.approx(np.std(scores, ddof=1), rel=1e-5)
    assert result.protocol["splits"] == 3 and result.protocol["num_images"] == 40
