"""Inception Score from streaming per-split statistics.

Image ``i`` (in arrival order) belongs to split ``i % splits``; per split only the count, the sum of
class probabilities and the sum of ``p log p`` are kept, which is all the score needs:
``KL = E[sum p log p] - sum p_mean log p_mean`` and ``IS = exp(KL)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from polytok.eval.metrics.features import FeatureSpace, InceptionFeatures
from polytok.eval.result import MetricResult


class InceptionScore:
    """Streaming Inception Score: ``update(images)`` then ``compute() -> MetricResult(mean, std=...)``.

    ``classifier`` maps images (B, 3, H, W) in [0, 1] to logits (B, K); ``InceptionScore.inception()``
    uses the standard Inception-v3 (TF 2015-12-05) unbiased logits.
    """

    def __init__(
        self, classifier: FeatureSpace, splits: int = 10, protocol: dict[str, Any] | None = None
    ) -> None:
        if splits < 1:
            raise ValueError(f"splits must be >= 1, got {splits}")
        self.classifier = classifier
        self.splits = splits
        self._protocol = dict(protocol or {})
        self.reset()

    @classmethod
    def inception(
        cls, weights_path: str | Path | None = None, splits: int = 10, protocol: dict[str, Any] | None = None
    ) -> InceptionScore:
        return cls(InceptionFeatures("logits_unbiased", weights_path=weights_path), splits, protocol)

    def reset(self) -> None:
        self._count = torch.zeros(self.splits, dtype=torch.float64)
        self._prob_sum: torch.Tensor | None = None
        self._neg_entropy_sum = torch.zeros(self.splits, dtype=torch.float64)
        self._seen = 0

    def update(self, images: torch.Tensor) -> None:
        self.update_logits(self.classifier(images))

    def update_logits(self, logits: torch.Tensor) -> None:
        """Add classifier logits (B, K)."""
        if logits.dim() != 2:
            raise ValueError(f"logits must have shape (B, K), got {tuple(logits.shape)}")
        logits = logits.detach().to("cpu", torch.float64)
        log_p = logits.log_softmax(dim=1)
        p = log_p.exp()
        split = (torch.arange(logits.shape[0]) + self._seen) % self.splits
        if self._prob_sum is None:
            self._prob_sum = torch.zeros(self.splits, logits.shape[1], dtype=torch.float64)
        self._prob_sum.index_add_(0, split, p)
        self._neg_entropy_sum.index_add_(0, split, (p * log_p).sum(dim=1))
        self._count.index_add_(0, split, torch.ones(logits.shape[0], dtype=torch.float64))
        self._seen += logits.shape[0]

    def compute(self) -> MetricResult:
        if self._prob_sum is None or (self._count == 0).any():
            raise RuntimeError(f"Inception Score needs at least {self.splits} images (one per split)")
        mean_p = self._prob_sum / self._count[:, None]
        cross = torch.where(mean_p > 0, mean_p * mean_p.log(), torch.zeros_like(mean_p)).sum(dim=1)
        scores = (self._neg_entropy_sum / self._count - cross).exp()
        std = float(scores.std()) if self.splits > 1 else 0.0
        protocol = {
            **self.classifier.protocol,
            "num_images": self._seen,
            "splits": self.splits,
            "split_assignment": "image i -> split i mod splits",
            **self._protocol,
        }
        return MetricResult(float(scores.mean()), protocol, std=std)
