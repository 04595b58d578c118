"""Zero-shot classification from image and text embeddings (CLIP protocol).

Each class's text embedding is the mean over prompt templates of the L2-normalised embeddings of
``template.format(class_name)``, normalised again; an image is assigned the class of highest cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from polytok.eval.result import MetricResult

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)


def check_templates(class_names: Sequence[str], templates: Sequence[str]) -> None:
    """Raise ``ValueError`` unless there are class names and every template has one ``{}`` slot."""
    if not class_names:
        raise ValueError("class_names is empty")
    if not templates:
        raise ValueError("templates is empty")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"template {template!r} has no '{{}}' placeholder for the class name")


def build_class_embeddings(
    encode_text: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """(num_classes, E) unit-norm class embeddings: mean over templates of the normalised prompts."""
    check_templates(class_names, templates)
    prompts = [template.format(name) for name in class_names for template in templates]
    with torch.no_grad():
        text = encode_text(prompts)
    if text.dim() != 2 or text.shape[0] != len(prompts):
        raise ValueError(f"encode_text returned shape {tuple(text.shape)}; expected ({len(prompts)}, E)")
    text = F.normalize(text.float(), dim=-1).reshape(len(class_names), len(templates), -1)
    return F.normalize(text.mean(dim=1), dim=-1)


def zero_shot_logits(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B, num_classes) between normalised image (B, E) and class (K, E) embeddings."""
    if image_embeddings.dim() != 2 or image_embeddings.shape[1] != class_embeddings.shape[1]:
        raise ValueError(
            f"image embeddings must have shape (B, {class_embeddings.shape[1]}), "
            f"got {tuple(image_embeddings.shape)}"
        )
    return F.normalize(image_embeddings.float(), dim=-1) @ class_embeddings.to(image_embeddings.device).T


class TopKAccuracy:
    """Streaming top-k accuracies from logits (B, K) and labels (B,)."""

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self._correct = dict.fromkeys(self.ks, 0)
        self._count = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= logits.shape[1]):
            raise ValueError(f"labels must lie in [0, {logits.shape[1]}), got max {int(labels.max())}")
        ranked = logits.topk(min(max(self.ks), logits.shape[1]), dim=1).indices.cpu()
        hits = ranked == labels.cpu()[:, None]
        for k in self.ks:
            self._correct[k] += int(hits[:, :k].any(dim=1).sum())
        self._count += labels.shape[0]

    def compute(self) -> dict[int, float]:
        if self._count == 0:
            raise RuntimeError("no samples were added")
        return {k: self._correct[k] / self._count for k in self.ks}

    @property
    def count(self) -> int:
        return self._count


class ZeroShotClassifier:
    """Zero-shot top-1 / top-5 accuracy, streaming over image embeddings.

    Example::

        zs = ZeroShotClassifier(tok.encode_text, ["cat", "dog"], ["a photo of a {}."])
        zs.update(tok.semantic_features(codes), labels)
        zs.compute()["top1"].value
    """

    def __init__(
        self,
        encode_text: Callable[[list[str]], torch.Tensor],
        class_names: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        protocol: dict[str, Any] | None = None,
        class_embeddings: torch.Tensor | None = None,
    ) -> None:
        """``class_embeddings`` (num_classes, E), when given, are used as they are (no text encoding)."""
        self.class_names = list(class_names)
        self.templates = list(templates)
        if class_embeddings is None:
            class_embeddings = build_class_embeddings(encode_text, self.class_names, self.templates)
        elif class_embeddings.shape[0] != len(self.class_names):
            raise ValueError(
                f"class_embeddings has {class_embeddings.shape[0]} rows for {len(self.class_names)} classes"
            )
        self.class_embeddings = class_embeddings
        self._protocol = dict(protocol or {})
        self._acc = TopKAccuracy((1, 5))

    def reset(self) -> None:
        self._acc.reset()

    @property
    def count(self) -> int:
        return self._acc.count

    def update(self, image_embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        self._acc.update(zero_shot_logits(image_embeddings.detach(), self.class_embeddings), labels)

    def compute(self) -> dict[str, MetricResult]:
        acc = self._acc.compute()
        protocol = {
            "num_images": self._acc.count,
            "num_classes": len(self.class_names),
            "num_templates": len(self.templates),
            "class_embedding": "mean over templates of L2-normalised text embeddings, renormalised",
            "similarity": "cosine",
            **self._protocol,
        }
        return {"top1": MetricResult(acc[1], protocol), "top5": MetricResult(acc[5], protocol)}
