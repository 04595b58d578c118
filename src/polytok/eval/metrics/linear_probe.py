"""Linear probe on frozen features: multinomial logistic regression (scikit-learn, L-BFGS).

Features are standardised with the training set's mean and std; the L2 strength ``C`` is chosen on a
held-out fifth of the training set from a small grid unless given, then the probe is refit on all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from polytok.eval.result import MetricResult

DEFAULT_C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


def _as_numpy(x: torch.Tensor | np.ndarray, name: str, dims: int) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != dims:
        raise ValueError(f"{name} must have {dims} dims, got shape {arr.shape}")
    return arr


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=max_iter).fit(x, y)


def linear_probe(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    c: float | None = None,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    max_iter: int = 1000,
    seed: int = 0,
    protocol: dict[str, Any] | None = None,
) -> dict[str, MetricResult]:
    """Fit on (N, E) train features, report top-1 accuracy on (M, E) test features.

    Returns ``{"top1": MetricResult, "train_top1": MetricResult}``.
    """
    x_tr = _as_numpy(train_features, "train_features", 2).astype(np.float64)
    y_tr = _as_numpy(train_labels, "train_labels", 1).astype(np.int64)
    x_te = _as_numpy(test_features, "test_features", 2).astype(np.float64)
    y_te = _as_numpy(test_labels, "test_labels", 1).astype(np.int64)
    if x_tr.shape[0] != y_tr.shape[0] or x_te.shape[0] != y_te.shape[0]:
        raise ValueError("features and labels differ in length")
    if x_tr.shape[1] != x_te.shape[1]:
        raise ValueError(f"train and test feature dims differ: {x_tr.shape[1]} vs {x_te.shape[1]}")
    if x_tr.shape[0] == 0 or x_te.shape[0] == 0:
        raise ValueError(f"the probe needs train and test images, got {x_tr.shape[0]} and {x_te.shape[0]}")
    if len(np.unique(y_tr)) < 2:
        raise ValueError("the probe's training set needs at least two classes")

    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0) + 1e-8
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std

    c_given = c is not None
    if c is None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(x_tr.shape[0])
        n_val = max(1, x_tr.shape[0] // 5)
        val, fit = order[:n_val], order[n_val:]
        best = (-1.0, c_grid[0])
        for candidate in c_grid:
            if len(np.unique(y_tr[fit])) < 2:
                break
            score = float(_fit(x_tr[fit], y_tr[fit], candidate, max_iter).score(x_tr[val], y_tr[val]))
            if score > best[0]:
                best = (score, candidate)
        c = best[1]
    model = _fit(x_tr, y_tr, c, max_iter)
    info = {
        "probe": "logistic regression (scikit-learn, L-BFGS, L2), standardised features",
        "C": c,
        "C_selection": "given" if c_given else f"held-out 20% of train over {list(c_grid)}",
        "num_train": int(x_tr.shape[0]),
        "num_test": int(x_te.shape[0]),
        "feature_dim": int(x_tr.shape[1]),
        **(protocol or {}),
    }
    return {
        "top1": MetricResult(float(model.score(x_te, y_te)), info),
        "train_top1": MetricResult(float(model.score(x_tr, y_tr)), info),
    }


class FeatureBank:
    """Collects (B, E) features and labels batch by batch (features only, never images)."""

    def __init__(self) -> None:
        self._features: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
            raise ValueError(
                "expected features (B, E) and labels (B,), "
                f"got {tuple(features.shape)}, {tuple(labels.shape)}"
            )
        self._features.append(features.detach().float().cpu())
        self._labels.append(labels.detach().cpu().long())

    def __len__(self) -> int:
        return sum(f.shape[0] for f in self._features)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._features:
            raise RuntimeError("no features were added")
        return torch.cat(self._features), torch.cat(self._labels)


def alternate_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, deterministic halves: within each class, images alternate between train and test.
    Returns the (train, test) index tensors."""
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        rank[members] = torch.arange(members.numel())
    return (rank % 2 == 0).nonzero().flatten(), (rank % 2 == 1).nonzero().flatten()


def probe_top1(bank: FeatureBank, features_name: str) -> MetricResult | str:
    """Probe top-1 of the features in ``bank``, split by :func:`alternate_split`; or why it cannot be
    fitted (``"skipped: ..."``)."""
    if len(bank) == 0:
        return "skipped: batches carry no 'label'"
    features, labels = bank.tensors()
    train, test = alternate_split(labels)
    try:
        probe = linear_probe(
            features[train],
            labels[train],
            features[test],
            labels[test],
            protocol={
                "split": "per class, alternate images train / test the probe",
                "features": features_name,
            },
        )
    except ValueError as err:
        return f"skipped: {err}"
    return probe["top1"]
