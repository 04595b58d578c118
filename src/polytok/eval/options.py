"""What an evaluation measures: one options record, written into every report's protocol.

``SEMANTIC_FIDELITY_SIZE`` is the one input size of the semantic-fidelity classifier used by the
library, ``polytok eval``, the demo and the study script; the figures it gives depend on it, so the
report records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from polytok.eval.metrics.features import FeatureSpace
from polytok.eval.metrics.zero_shot import DEFAULT_TEMPLATES

Toggle = bool | Literal["auto"]

# Input size (px) of the frozen EfficientNet-Lite0 for semantic agreement, KL and rFD. The built-in
# images are 64 px, so any size upsamples them; the network's own 224 px would cost about 3x as much.
SEMANTIC_FIDELITY_SIZE = 128


@dataclass
class ZeroShotSpec:
    """Class names (indexed by the batches' ``label``) and prompt templates with one ``{}``."""

    class_names: Sequence[str]
    templates: Sequence[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))


@dataclass(frozen=True)
class EvalOptions:
    """The metric families to run and their settings.

    Attributes:
        depths: residual depths to measure (default: every level 1..L; non-residual tokenizers: [1]).
            Pixel metrics are measured at the levels the pixel decoder actually reads, ``min(depth,
            pixel_depth)``; semantic metrics at the depths themselves.
        max_images: stop after this many images.
        zero_shot: class names and templates for zero-shot accuracy (``semantic_features`` +
            ``encode_text``); a dict is turned into a :class:`ZeroShotSpec`.
        linear_probe_features: logistic-regression probes on the semantic features and on the pooled
            code vectors (within each class, alternate images train and test them).
        fid / lpips: ``True`` (required: a missing weights file raises), ``False``, or ``"auto"``
            (computed when the weights are on disk, otherwise reported as skipped with the reason).
        feature_spaces: extra feature spaces for Frechet distances (reported as ``rFD[name]``).
        semantic_fidelity: top-1 agreement, KL divergence and rFD of a frozen ImageNet
            EfficientNet-Lite0 between originals and reconstructions (``pretrained`` extra), with the
            network's input resized to ``semantic_fidelity_size``.
        num_samples: originals (and their reconstructions per depth) kept for the report.
        attribute_fidelity: on built-in ``shapes`` images, the shapes judge's accuracy per attribute
            (shape, colour, count, size, position, and all at once) on each decoded depth, reported as
            ``attr[name]`` with the judge's accuracy on the originals in the protocol. ``"auto"``: when
            the batches carry shapes attributes; ``True``: an error if they do not.
        codec_references: PSNR and SSIM of JPEG (Pillow) and of a bicubic down-and-up at the
            tokenizer's pixel bits per image, reported beside its own at the deepest decoded depth.
    """

    depths: Sequence[int] | None = None
    max_images: int | None = None
    zero_shot: ZeroShotSpec | None = None
    linear_probe_features: bool = False
    fid: Toggle = "auto"
    inception_weights_path: str | Path | None = None
    lpips: Toggle = "auto"
    vgg_weights_path: str | Path | None = None
    feature_spaces: Sequence[FeatureSpace] = ()
    semantic_fidelity: bool = False
    semantic_fidelity_size: int = SEMANTIC_FIDELITY_SIZE
    num_samples: int = 6
    attribute_fidelity: Toggle = "auto"
    codec_references: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.zero_shot, dict):
            object.__setattr__(self, "zero_shot", ZeroShotSpec(**self.zero_shot))
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {self.max_images}")
        if self.semantic_fidelity_size < 1:
            raise ValueError(f"semantic_fidelity_size must be >= 1 px, got {self.semantic_fidelity_size}")
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def protocol(self) -> dict[str, Any]:
        """The settings that change figures, for the report's protocol."""
        record: dict[str, Any] = {}
        if self.semantic_fidelity:
            record["semantic_fidelity_size"] = self.semantic_fidelity_size
        return record
