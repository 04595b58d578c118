"""Frechet distances (rFID and any other feature space) of each decoded depth against the originals,
whose statistics are accumulated once and shared by every depth."""

from __future__ import annotations

from typing import Any

import torch

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch, load_optional
from polytok.eval.metrics.features import FeatureSpace, InceptionFeatures
from polytok.eval.metrics.frechet import FeatureMoments, FrechetDistance
from polytok.eval.options import EvalOptions


class FrechetFamily:
    """``spaces``: metric name (``"rFID"``, ``"rFD[name]"``) -> feature space."""

    reads = "pixels"
    label = "Frechet features"  # named in progress lines

    def __init__(self, spaces: dict[str, FeatureSpace]) -> None:
        self.spaces = spaces
        self.skipped: dict[str, str] = {}
        self.references = {key: FeatureMoments(space.num_features) for key, space in spaces.items()}
        self.distances: dict[int, dict[str, FrechetDistance]] = {}

    def prepare(self, batch: RealBatch) -> None:
        for key, space in self.spaces.items():
            self.references[key].update(space(batch.images).detach().to("cpu", torch.float64))

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        assert depth.reconstruction is not None
        if depth.levels not in self.distances:
            self.distances[depth.levels] = {
                key: FrechetDistance(space, reference=self.references[key])
                for key, space in self.spaces.items()
            }
        for key, space in self.spaces.items():
            self.distances[depth.levels][key].update_features(space(depth.reconstruction), real=False)

    def compute(self) -> list[DepthResult]:
        results = []
        for levels in sorted(self.distances):
            figures = {}
            for key, distance in self.distances[levels].items():
                if distance.num_real >= 2:
                    figures[key] = distance.compute()
                else:
                    self.skipped[key] = "skipped: a Frechet distance needs at least 2 images"
            results.append(DepthResult(levels, "pixels", figures))
        return results


def build(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> FrechetFamily | None:
    spaces: dict[str, FeatureSpace] = {}
    inception = load_optional(
        options.fid,
        "rFID",
        lambda: InceptionFeatures("2048", weights_path=options.inception_weights_path),
        skipped,
    )
    if inception is not None:
        spaces["rFID"] = inception
    for space in options.feature_spaces:
        spaces[f"rFD[{space.name}]"] = space
    if not spaces:
        return None
    if device is not None:
        for space in spaces.values():
            space.to(device)
    return FrechetFamily(spaces)
