"""Semantic fidelity (top-1 agreement, KL) and rFD (EfficientNet-Lite0) against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.special import log_softmax, rel_entr
from skimage import data
from skimage.filters import gaussian

from polytok.eval.metrics.frechet import FeatureMoments
from polytok.eval.metrics.semantic_fidelity import (
    EfficientNetFrechetDistance,
    FrechetStatistics,
    SemanticAgreement,
    SemanticFidelity,
)
from polytok.pretrained import load_pretrained

SIZE = 128  # network resolution in these tests (keeps them fast); the default is the network's own
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "cat", "immunohistochemistry")


def photo_crops(per_photo: int = 4, size: int = SIZE) -> torch.Tensor:
    """Real photographs, several square crops each: (len(PHOTOS) * per_photo, 3, size, size) in [0, 1]."""
    rng = np.random.default_rng(0)
    crops = []
    for name in PHOTOS:
        image = torch.from_numpy(getattr(data, name)()[..., :3].copy()).permute(2, 0, 1).float() / 255
        h, w = image.shape[1:]
        for _ in range(per_photo):
            side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = image[:, top : top + side, left : left + side][None]
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(crops).clamp(0, 1)


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    arrays = [gaussian(x.permute(1, 2, 0).numpy(), sigma=sigma, channel_axis=-1) for x in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()


@pytest.fixture(scope="module")
def net():
    return load_pretrained("efficientnet-lite0")


@pytest.fixture(scope="module")
def originals() -> torch.Tensor:
    return photo_crops()


@pytest.fixture(scope="module")
def reconstructions(originals) -> torch.Tensor:
    return blurred(originals, 1.5)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root).real)


def test_agreement_and_kl_match_a_naive_loop(net, originals, reconstructions) -> None:
    fidelity = SemanticFidelity(net, size=SIZE, frechet=False)
    for start in range(0, len(originals), 7):  # uneven batches: the statistics stream
        fidelity.update(originals[start : start + 7], reconstructions[start : start + 7])
    results = fidelity.compute()
    assert "rfd" not in results
    with torch.no_grad():
        lo = net(originals, size=SIZE).logits.double().numpy()
        lr = net(reconstructions, size=SIZE).logits.double().numpy()
    agree = np.mean([np.argmax(lo[i]) == np.argmax(lr[i]) for i in range(len(lo))])
    kl = np.mean(
        [rel_entr(np.exp(log_softmax(lo[i])), np.exp(log_softmax(lr[i]))).sum() for i in range(len(lo))]
    )
    assert results["top1_agreement"].value == pytest.approx(agree, abs=1e-12)
    assert results["kl_divergence"].value == pytest.approx(kl, rel=1e-6)
    assert 0 < agree < 1 and kl > 0  # the blur changes some decisions: the figures are informative
    assert results["top1_agreement"].protocol["num_images"] == len(originals)


def test_stronger_distortion_lowers_fidelity(net, originals) -> None:
    figures = []
    for sigma in (0.7, 3.0):
        fidelity = SemanticFidelity(net, size=SIZE, frechet=False)
        fidelity.update(originals, blurred(originals, sigma))
        figures.append(fidelity.compute())
    assert figures[1]["kl_divergence"].value > figures[0]["kl_divergence"].value
    assert figures[1]["top1_agreement"].value < figures[0]["top1_agreement"].value


def test_identical_images_are_perfectly_faithful(net, originals) -> None:
    fidelity = SemanticFidelity(net, size=SIZE)
    fidelity.update(originals, originals.clone())
    results = fidelity.compute()
    assert results["top1_agreement"].value == 1.0
    assert abs(results["kl_divergence"].value) < 1e-12
    # Far below the blurred set's distance (about 400 here) and the features' total variance (about 800).
    assert abs(results["rfd"].value) < 1e-2


@pytest.fixture(scope="module")
def pooled_features(net, originals, reconstructions) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        a = net(originals, size=SIZE).embedding.double().numpy()
        b = net(reconstructions, size=SIZE).embedding.double().numpy()
    return a, b


def scipy_frechet_few_samples(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance via an N x N matrix: with centred data X_a, S_a = X_a^T X_a / (n - 1), and the
    non-zero eigenvalues of S_a S_b are those of X_a S_b X_a^T / (n - 1); scipy's sqrtm of that."""
    centred = a - a.mean(0)
    cov_b = np.cov(b, rowvar=False)
    small = centred @ cov_b @ centred.T / (len(a) - 1)
    trace_root = np.trace(scipy.linalg.sqrtm(small)).real
    cov_a_trace = (centred**2).sum() / (len(a) - 1)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + cov_a_trace + np.trace(cov_b) - 2 * trace_root)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # N < D: singular matrices
def test_rfd_matches_scipy_sqrtm(net, originals, reconstructions, pooled_features) -> None:
    rfd = EfficientNetFrechetDistance(net, size=SIZE)
    for start in range(0, len(originals), 10):
        rfd.update(originals[start : start + 10], reconstructions[start : start + 10])
    expected = scipy_frechet_few_samples(*pooled_features)
    assert expected > 0
    assert rfd.compute().value == pytest.approx(expected, rel=1e-3)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
def test_rfd_matches_scipy_sqrtm_full_matrices(net, pooled_features) -> None:
    # The textbook formula on the 1280 x 1280 covariances (about 20 s of scipy on 2 cores).
    rfd = EfficientNetFrechetDistance(net, size=SIZE)
    rfd.update_features(*(torch.from_numpy(f) for f in pooled_features))
    assert rfd.compute().value == pytest.approx(scipy_frechet(*pooled_features), rel=1e-3)


def test_frechet_distance_full_rank_against_scipy() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 0.5
    stats = FrechetStatistics(16)
    stats.update(torch.from_numpy(a[:150]), real=True)
    stats.update(torch.from_numpy(b), real=False)
    stats.update(torch.from_numpy(a[150:]), real=True)
    assert stats.compute().item() == pytest.approx(scipy_frechet(a, b), rel=1e-8)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        stats.update(torch.zeros(2, 3), real=True)


def test_rfd_label_and_protocol(net, originals, reconstructions) -> None:
    fidelity = SemanticFidelity(net)  # the network's own resolution: 224 px for Lite0
    fidelity.update(originals[:4], reconstructions[:4])
    rfd = fidelity.compute()["rfd"]
    assert rfd.protocol["metric"] == "rFD (EfficientNet-Lite0)"
    text = rfd.protocol["protocol"]
    assert text.startswith("rFD (EfficientNet-Lite0): ")
    assert "224x224" in text and "4 originals vs 4 reconstructions" in text and "1280-d" in text
    assert "rFID" not in rfd.protocol["metric"]
    assert rfd.protocol["num_images"] == 4 and rfd.protocol["image_size"] == 224


def test_semantic_agreement_metric_on_logits() -> None:
    metric = SemanticAgreement()
    p = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    q = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    metric.update(p, q)
    values = metric.compute()
    logp, logq = torch.log_softmax(p.double(), -1), torch.log_softmax(q.double(), -1)
    assert values["top1_agreement"].item() == 0.5
    torch.testing.assert_close(values["kl_divergence"], (logp.exp() * (logp - logq)).sum(-1).mean())


def test_bad_inputs(net, originals) -> None:
    fidelity = SemanticFidelity(net, size=SIZE)
    with pytest.raises(RuntimeError, match="before any update"):
        fidelity.compute()
    with pytest.raises(ValueError, match="shapes differ"):
        fidelity.update(originals[:2], originals[:3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fidelity.update(originals[:2], originals[:2] * 3)
    rfd = EfficientNetFrechetDistance(net, size=SIZE)
    with pytest.raises(ValueError, match=r"\(B, 1280\)"):
        rfd.update_features(torch.zeros(2, 64), torch.zeros(2, 64))
    with pytest.raises(RuntimeError, match="at least 2 image pairs"):
        rfd.compute()
    with pytest.raises(ValueError, match="network must be one of"):
        SemanticFidelity("minilm-l6")


def test_depths_share_the_originals_statistics(net, originals, reconstructions) -> None:
    """Two 'depths' measured against one shared set of original features (the originals classified once
    per batch) give exactly the figures of two self-contained SemanticFidelity objects."""
    reference = FeatureMoments(net.embedding_dim)
    recon_sets = (reconstructions, blurred(originals, 3.0))
    shared = [SemanticFidelity(net, size=SIZE, reference=reference) for _ in recon_sets]
    own = [SemanticFidelity(net, size=SIZE) for _ in recon_sets]
    for start in range(0, len(originals), 8):
        batch = originals[start : start + 8]
        classified = shared[0].classify(batch)
        reference.update(classified.embedding)
        for recons, a, b in zip(recon_sets, shared, own):
            a.update_outputs(classified, a.classify(recons[start : start + 8]), reference_filled=True)
            b.update(batch, recons[start : start + 8])
    for a, b in zip(shared, own):
        ra, rb = a.compute(), b.compute()
        assert {k: r.value for k, r in ra.items()} == {k: r.value for k, r in rb.items()}
        assert ra["rfd"].protocol == rb["rfd"].protocol
    assert ra["rfd"].value > shared[0].compute()["rfd"].value  # the stronger blur is further away
    with pytest.raises(ValueError, match="shared"):
        shared[0].update(originals[:2], reconstructions[:2])
    with pytest.raises(ValueError, match="original_features are required"):
        own[0].frechet.update_features(None, torch.zeros(2, 1280))
