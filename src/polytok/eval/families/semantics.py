"""Zero-shot accuracy and a linear probe on the tokenizer's semantic embedding of each code prefix
(:attr:`TokenizerCapabilities.semantic_embedding`: ``tokenizer.semantic_features(codes)`` for a polytok
``Tokenizer``), computed once per batch and depth for both, at the depths where it is defined. An
embedding that does not read the codes (QLIP's, from the images) is measured too, its figures named with
what it reads (``"zero-shot top-1 [image features]"``): it says nothing of the tokens.

The zero-shot figures carry their baselines in ``protocol["baselines"]``: chance and, for the (colour,
shape) classes of ``shapes``, the models that know only the shape or only the colour
(:func:`polytok.eval.shapes.baselines.zero_shot_baselines`)."""

from __future__ import annotations

from typing import Any

import torch

from polytok.eval.capabilities import TokenizerCapabilities
from polytok.eval.families.base import DepthBatch, DepthResult, RealBatch, at_depth
from polytok.eval.metrics.linear_probe import FeatureBank, probe_top1
from polytok.eval.metrics.zero_shot import ZeroShotClassifier, check_templates
from polytok.eval.options import EvalOptions, ZeroShotSpec
from polytok.eval.result import MetricResult
from polytok.eval.shapes.baselines import zero_shot_baselines


class SemanticFeatures:
    """``class_embeddings`` (K, E): the zero-shot classes (None: no zero-shot); ``probe``: fit a probe."""

    reads = "codes"
    label = "semantic features"  # named in progress lines

    def __init__(
        self,
        caps: TokenizerCapabilities,
        zero_shot: ZeroShotSpec | None,
        class_embeddings: torch.Tensor | None,
        probe: bool,
    ) -> None:
        self.caps = caps
        # figures of an embedding that does not read the codes are named with what it reads
        self.suffix, self.input_protocol, self.features_name = "", {}, "semantic features of the code"
        if caps.semantic_input != "codes":
            self.suffix = f" [{caps.semantic_input}]"
            self.input_protocol = {"semantic_input": caps.semantic_input}
            self.features_name = f"{caps.semantic_input}, not the code"
        self.zero_shot = zero_shot if class_embeddings is not None else None
        self.class_embeddings = class_embeddings
        self.probe = probe
        self.active = True
        self.skipped: dict[str, str] = {}
        self.classifiers: dict[int, ZeroShotClassifier] = {}
        self.banks: dict[int, FeatureBank] = {}

    def prepare(self, batch: RealBatch) -> None:
        pass

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        if not self.active or batch.labels is None:
            return
        if not self.caps.semantic_at(depth.levels):
            shown = ", ".join(str(n) for n in self.caps.semantic_levels or ())
            self.skipped[f"semantics at other depths{self.suffix}"] = (
                f"skipped: measured at {shown} code levels only ({self.caps.semantic_reason})"
            )
            return
        embed = self.caps.semantic_embedding
        assert embed is not None
        embedding = embed(batch.images, depth.codes)  # an error here is a bug: raised
        if self.zero_shot is not None:
            if depth.levels not in self.classifiers:
                self.classifiers[depth.levels] = ZeroShotClassifier(
                    self.caps.encode_text,
                    self.zero_shot.class_names,
                    self.zero_shot.templates,
                    class_embeddings=self.class_embeddings,
                )
            self.classifiers[depth.levels].update(embedding, batch.labels)
        if self.probe:
            at_depth(self.banks, depth.levels, FeatureBank).update(embedding, batch.labels)

    def compute(self) -> list[DepthResult]:
        if not self.active:
            return []
        if self.zero_shot is not None and not self.classifiers:
            self.skipped[f"zero-shot{self.suffix}"] = "skipped: batches carry no 'label'"
        if self.probe and not self.banks:
            self.skipped[f"linear probe top-1{self.suffix}"] = "skipped: batches carry no 'label'"
        results = []
        for levels in sorted(set(self.classifiers) | set(self.banks)):
            figures = {}
            if levels in self.classifiers:
                accuracy = self.classifiers[levels].compute()
                for k in (1, 5):
                    result = accuracy[f"top{k}"]
                    baselines = zero_shot_baselines(self.zero_shot.class_names, top_k=k)
                    protocol = {**result.protocol, **self.input_protocol, "baselines": baselines}
                    figures[f"zero-shot top-{k}{self.suffix}"] = MetricResult(
                        result.value, protocol, result.std
                    )
            if levels in self.banks:
                outcome = probe_top1(self.banks[levels], self.features_name)
                if isinstance(outcome, str):
                    self.skipped[f"linear probe top-1{self.suffix}"] = outcome
                else:
                    figures[f"linear probe top-1{self.suffix}"] = outcome
            results.append(DepthResult(levels, "codes", figures))
        return results


def _class_embeddings(
    caps: TokenizerCapabilities, spec: ZeroShotSpec, skipped: dict[str, str]
) -> torch.Tensor | None:
    """The zero-shot class embeddings, shared by every depth; None (with the reason) without a text tower."""
    if caps.encode_text is None:
        skipped["zero-shot"] = f"skipped: {caps.text_reason or 'the tokenizer has no encode_text()'}"
        return None
    check_templates(spec.class_names, spec.templates)
    try:
        return ZeroShotClassifier(caps.encode_text, spec.class_names, spec.templates).class_embeddings
    except ValueError as err:  # e.g. a preset without a text tower says so
        skipped["zero-shot"] = f"skipped: {err}"
        return None


def build(
    caps: TokenizerCapabilities, options: EvalOptions, device: Any, skipped: dict[str, str]
) -> SemanticFeatures | None:
    if options.zero_shot is None and not options.linear_probe_features:
        return None
    if caps.semantic_embedding is None:
        skipped["semantics"] = f"skipped: {caps.semantic_reason or 'the tokenizer has no semantic branch'}"
        return None
    embeddings = None
    if options.zero_shot is not None:
        embeddings = _class_embeddings(caps, options.zero_shot, skipped)
    return SemanticFeatures(caps, options.zero_shot, embeddings, options.linear_probe_features)
