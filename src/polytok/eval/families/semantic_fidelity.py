"""Semantic agreement, KL and rFD of a frozen ImageNet EfficientNet-Lite0 between the originals and
each decoded depth. The network sees each original once per batch; its pooled features go into one
set of statistics shared by every depth."""

from __future__ import annotations

from typing import Any

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch, at_depth
from polytok.eval.metrics.frechet import FeatureMoments
from polytok.eval.options import EvalOptions


class SemanticFidelityFamily:
    """``classifier``: a loaded EfficientNet-Lite; ``size``: its input resolution (px)."""

    reads = "pixels"
    label = "semantic fidelity"  # named in progress lines

    def __init__(self, classifier: Any, size: int) -> None:
        from polytok.eval.metrics.semantic_fidelity import SemanticFidelity, rfd_label

        self.classifier, self.size = classifier, size
        self._classify = SemanticFidelity(classifier, size=size, frechet=False).classify
        self.rfd_label = rfd_label(classifier.name)
        self.reference = FeatureMoments(classifier.embedding_dim)
        self.per_depth: dict[int, Any] = {}
        self.skipped: dict[str, str] = {}
        self._originals: Any = None

    def _make(self) -> Any:
        from polytok.eval.metrics.semantic_fidelity import SemanticFidelity

        return SemanticFidelity(self.classifier, size=self.size, reference=self.reference)

    def prepare(self, batch: RealBatch) -> None:
        self._originals = self._classify(batch.images)
        self.reference.update(self._originals.embedding)

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        assert depth.reconstruction is not None
        fidelity = at_depth(self.per_depth, depth.levels, self._make)
        fidelity.update_outputs(
            self._originals, fidelity.classify(depth.reconstruction), reference_filled=True
        )

    def compute(self) -> list[DepthResult]:
        results = []
        for levels in sorted(self.per_depth):
            values = self.per_depth[levels].compute()
            figures = {
                "semantic top-1 agreement": values["top1_agreement"],
                "semantic KL": values["kl_divergence"],
            }
            if "rfd" in values:
                figures[self.rfd_label] = values["rfd"]
            results.append(DepthResult(levels, "pixels", figures))
        return results


def build(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> SemanticFidelityFamily | None:
    if not options.semantic_fidelity:
        return None
    from polytok.pretrained import load_pretrained

    classifier = load_pretrained("efficientnet-lite0")
    if device is not None:
        classifier = classifier.to(device)
    return SemanticFidelityFamily(classifier, options.semantic_fidelity_size)
