"""Does a reconstruction keep what the image shows? Measured with a pretrained EfficientNet-Lite.

- Semantic agreement: the ImageNet classifier's top-1 class on the reconstruction equals the one on the
  original (``top1_agreement``, a fraction), and the mean KL(p_original || p_reconstruction) of the two
  class distributions (nats). Needs no labels.
- rFD (EfficientNet-Lite0): the Frechet distance between the pooled 1280-d features of originals and of
  reconstructions. A Frechet distance in a different feature space from Inception-v3, so it is not rFID
  and its values are not comparable with published rFID figures; its protocol travels with it.

Every statistic streams over batches (sums only), and the torchmetrics states sync across DDP ranks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torchmetrics import Metric

from polytok.eval.metrics.frechet import FeatureMoments
from polytok.eval.result import MetricResult
from polytok.pretrained import EfficientNetLite, load_pretrained, pretrained_entry
from polytok.pretrained.efficientnet_lite import EfficientNetLiteOutput

# Display names of the networks, as they appear in the metric's label.
_DISPLAY = {
    "efficientnet-lite0": "EfficientNet-Lite0",
    "efficientnet-lite1": "EfficientNet-Lite1",
    "efficientnet-lite2": "EfficientNet-Lite2",
}


def _load_network(network: str | EfficientNetLite, weights_path: str | Path | None) -> EfficientNetLite:
    if isinstance(network, str):
        if network not in _DISPLAY:
            raise ValueError(f"network must be one of {', '.join(_DISPLAY)}, got {network!r}")
        return load_pretrained(network, weights_path=weights_path)
    if not isinstance(network, EfficientNetLite):
        raise TypeError(
            f"network must be a registry name or an EfficientNetLite, got {type(network).__name__}"
        )
    return network


def _check_pair(originals: Tensor, reconstructions: Tensor) -> None:
    if originals.shape != reconstructions.shape:
        raise ValueError(
            "originals and reconstructions shapes differ: "
            f"{tuple(originals.shape)} vs {tuple(reconstructions.shape)}"
        )


def rfd_label(network_name: str) -> str:
    """``"rFD (EfficientNet-Lite0)"`` for ``"efficientnet-lite0"``."""
    return f"rFD ({_DISPLAY[network_name]})"


class SemanticAgreement(Metric):
    """Streaming top-1 agreement and mean KL(p_orig || p_recon) from classifier logits.

    ``update(original_logits, reconstruction_logits)`` with (B, K) logits; ``compute()`` returns
    ``{"top1_agreement": Tensor, "kl_divergence": Tensor}`` (float64 scalars).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("agreeing", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("kl_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, original_logits: Tensor, reconstruction_logits: Tensor) -> None:
        if original_logits.dim() != 2 or original_logits.shape != reconstruction_logits.shape:
            raise ValueError(
                f"logits must both be (B, K), got {tuple(original_logits.shape)} and "
                f"{tuple(reconstruction_logits.shape)}"
            )
        log_p = torch.log_softmax(original_logits.detach().double(), dim=-1)
        log_q = torch.log_softmax(reconstruction_logits.detach().double(), dim=-1)
        self.kl_sum += (log_p.exp() * (log_p - log_q)).sum()
        self.agreeing += (original_logits.argmax(-1) == reconstruction_logits.argmax(-1)).sum()
        self.count += original_logits.shape[0]

    def compute(self) -> dict[str, Tensor]:
        if int(self.count) == 0:
            raise RuntimeError("SemanticAgreement.compute() called before any update()")
        return {
            "top1_agreement": self.agreeing.double() / self.count,
            "kl_divergence": self.kl_sum / self.count,
        }


def frechet_distance(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> Tensor:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)) for (D,) means and (D, D) covariances.

    tr((S_a S_b)^(1/2)) is computed as the sum of square roots of the eigenvalues of the symmetric
    S_a^(1/2) S_b S_a^(1/2) (same spectrum as S_a S_b): symmetric eigensolvers only, several times
    faster than a general eigen- or Schur decomposition at D = 1280 and stable for singular covariances.
    """
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root


class FrechetStatistics:
    """Streaming float64 feature sums of two sets (``real`` = originals, else reconstructions).

    ``update(features (B, D), real)``; ``compute()`` -> the Frechet distance (float64 scalar). Only sums
    are kept (D + D*D + 1 numbers per set, as :class:`FeatureMoments`, which sync across DDP ranks).
    ``reference``: the originals' moments shared with other statistics (one per depth) and filled by
    their owner; ``update(..., real=True)`` is then refused.
    """

    def __init__(self, num_features: int, reference: FeatureMoments | None = None) -> None:
        self.num_features = int(num_features)
        if reference is not None and reference.num_features != self.num_features:
            raise ValueError(
                f"reference moments have {reference.num_features} features, expected {self.num_features}"
            )
        self.shares_reference = reference is not None
        self.real = reference if reference is not None else FeatureMoments(self.num_features)
        self.fake = FeatureMoments(self.num_features)

    def update(self, features: Tensor, real: bool) -> None:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be (B, {self.num_features}), got {tuple(features.shape)}")
        if real and self.shares_reference:
            raise ValueError("the reference moments are shared: update them through their owner")
        (self.real if real else self.fake).update(features)

    @property
    def real_count(self) -> int:
        return self.real.num_samples

    @property
    def fake_count(self) -> int:
        return self.fake.num_samples

    @staticmethod
    def _mean_cov(moments: FeatureMoments) -> tuple[Tensor, Tensor]:
        n = moments.count.double()
        mean = moments.total / n
        cov = (moments.outer - n * torch.outer(mean, mean)) / (n - 1)
        return mean, cov

    def compute(self) -> Tensor:
        if self.real_count < 2 or self.fake_count < 2:
            raise RuntimeError(
                f"a Frechet distance needs at least 2 samples per set, got {self.real_count} and "
                f"{self.fake_count}"
            )
        with self.real.sync_context(), self.fake.sync_context():
            return frechet_distance(*self._mean_cov(self.real), *self._mean_cov(self.fake))

    def reset(self) -> None:
        if not self.shares_reference:
            self.real.reset()
        self.fake.reset()


class EfficientNetFrechetDistance:
    """rFD: Frechet distance between EfficientNet-Lite pooled features of originals and reconstructions.

    Args:
        network: ``"efficientnet-lite0"`` (default), ``-lite1``, ``-lite2`` or a loaded network to share.
        size: resolution the images are resized to (bilinear, antialiased); default the network's own.
        weights_path: explicit weights file when ``network`` is a name.
        reference: the originals' moments, shared (e.g. across depths) and filled by their owner; then
            ``update_features`` takes only the reconstructions' features.

    ``update(originals, reconstructions)`` with (B, 3, H, W) in [0, 1]; ``compute()`` -> MetricResult whose
    protocol holds the label (``"rFD (EfficientNet-Lite0)"``) and how it was measured.

    The covariances have rank at most N - 1: below 1281 images they are singular and the figure is
    biased (it falls as N grows), so compare figures only at the same image count (10k+ for reports).

    Example::

        rfd = EfficientNetFrechetDistance()
        for originals in loader:
            rfd.update(originals, tokenizer.decode(tokenizer.encode(originals)))
        result = rfd.compute()          # result.value, result.protocol["protocol"]
    """

    def __init__(
        self,
        network: str | EfficientNetLite = "efficientnet-lite0",
        size: int | None = None,
        weights_path: str | Path | None = None,
        reference: FeatureMoments | None = None,
    ) -> None:
        self.net = _load_network(network, weights_path)
        self.size = int(size) if size is not None else self.net.default_size
        self.label = rfd_label(self.net.name)
        self._metric = FrechetStatistics(self.net.embedding_dim, reference=reference)

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 1280) pooled features at ``size``."""
        return self.net(images.float(), size=self.size).embedding

    def update(self, originals: Tensor, reconstructions: Tensor) -> None:
        _check_pair(originals, reconstructions)
        self.update_features(self.features(originals), self.features(reconstructions))

    def update_features(self, original_features: Tensor | None, reconstruction_features: Tensor) -> None:
        """Add precomputed pooled features (B, 1280) of originals and reconstructions; with a shared
        ``reference`` the originals' are already in it, so ``original_features`` must be ``None``."""
        dim = self.net.embedding_dim
        pairs = [("reconstruction", reconstruction_features)]
        if original_features is not None:
            pairs.insert(0, ("original", original_features))
        elif not self._metric.shares_reference:
            raise ValueError("original_features are required unless the reference moments are shared")
        for name, feats in pairs:
            if feats.dim() != 2 or feats.shape[1] != dim:
                raise ValueError(f"{name} features must be (B, {dim}), got {tuple(feats.shape)}")
        if original_features is not None:
            self._metric.update(original_features, real=True)
        self._metric.update(reconstruction_features, real=False)

    @property
    def num_images(self) -> int:
        return self._metric.real_count

    def protocol(self) -> str:
        entry = pretrained_entry(self.net.name)
        return (
            f"{self.label}: Frechet distance between {self.net.embedding_dim}-d global-average-pooled head "
            f"features of {entry.description} (weights: {entry.weights_package}); images float in [0, 1] "
            f"resized to {self.size}x{self.size} (bilinear, antialiased), normalised (mean 0.5, std 0.5); "
            f"{self.num_images} originals vs {self._metric.fake_count} reconstructions; "
            "float64 mean and covariance. Not rFID (no Inception-v3)."
        )

    def compute(self) -> MetricResult:
        if self.num_images < 2:
            raise RuntimeError(f"{self.label} needs at least 2 image pairs, got {self.num_images}")
        value = float(self._metric.compute())
        return MetricResult(
            value,
            {
                "metric": self.label,
                "protocol": self.protocol(),
                "feature_network": self.net.name,
                "feature": f"pooled {self.net.embedding_dim}-d",
                "image_size": self.size,
                "num_images": self.num_images,
            },
        )

    def reset(self) -> None:
        self._metric.reset()


class SemanticFidelity:
    """Semantic agreement and rFD from one classifier pass per image, streaming over batches.

    ``update(originals, reconstructions)`` with (B, 3, H, W) in [0, 1]; ``compute()`` returns
    ``{"top1_agreement", "kl_divergence", "rfd"}`` as MetricResults (``"rfd"`` only with ``frechet=True``
    and at least 2 images).

    Example::

        fidelity = SemanticFidelity("efficientnet-lite0")
        fidelity.update(originals, reconstructions)
        results = fidelity.compute()
        results["top1_agreement"].value, results["rfd"].protocol["metric"]   # 'rFD (EfficientNet-Lite0)'
    """

    def __init__(
        self,
        network: str | EfficientNetLite = "efficientnet-lite0",
        size: int | None = None,
        frechet: bool = True,
        weights_path: str | Path | None = None,
        reference: FeatureMoments | None = None,
    ) -> None:
        self.net = _load_network(network, weights_path)
        self.size = int(size) if size is not None else self.net.default_size
        self.agreement = SemanticAgreement()
        self.frechet = (
            EfficientNetFrechetDistance(self.net, size=self.size, reference=reference) if frechet else None
        )

    @torch.no_grad()
    def classify(self, images: Tensor) -> EfficientNetLiteOutput:
        """(B, 3, H, W) in [0, 1] -> the network's output at ``size`` (``.logits``, ``.embedding``)."""
        return self.net(images.float(), size=self.size)

    @torch.no_grad()
    def update(self, originals: Tensor, reconstructions: Tensor) -> None:
        _check_pair(originals, reconstructions)
        self.update_outputs(self.classify(originals), self.classify(reconstructions))

    def update_outputs(
        self,
        original: EfficientNetLiteOutput,
        reconstruction: EfficientNetLiteOutput,
        *,
        reference_filled: bool = False,
    ) -> None:
        """Add the network outputs (from ``classify``) of originals and their reconstructions;
        ``reference_filled``: the originals' embeddings are already in the shared reference moments."""
        if self.frechet is not None:  # first: it refuses a shared reference before anything is added
            originals = None if reference_filled else original.embedding
            self.frechet.update_features(originals, reconstruction.embedding)
        self.agreement.update(original.logits, reconstruction.logits)

    def compute(self) -> dict[str, MetricResult]:
        count = int(self.agreement.count)
        if count == 0:
            raise RuntimeError("SemanticFidelity.compute() called before any update()")
        values = self.agreement.compute()
        name = _DISPLAY[self.net.name]
        shared = {"classifier": f"{name} (ImageNet-1k)", "image_size": self.size, "num_images": count}
        results = {
            "top1_agreement": MetricResult(
                float(values["top1_agreement"]),
                {
                    "metric": f"top-1 agreement ({name})",
                    **shared,
                    "definition": "fraction of images whose reconstruction gets the original's top-1 class",
                },
            ),
            "kl_divergence": MetricResult(
                float(values["kl_divergence"]),
                {
                    "metric": f"KL(p_orig || p_recon) ({name})",
                    **shared,
                    "definition": "mean KL divergence (nats) of the class distributions, original first",
                },
            ),
        }
        if self.frechet is not None and self.frechet.num_images >= 2:
            results["rfd"] = self.frechet.compute()
        return results

    def reset(self) -> None:
        self.agreement.reset()
        if self.frechet is not None:
            self.frechet.reset()
