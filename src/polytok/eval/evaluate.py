"""``evaluate_tokenizer``: the whole metric stack over a dataloader, at every residual depth.

Per batch the images are encoded once; for each evaluated depth ``k`` the prefix of the first ``k``
residual levels is decoded (pixels: PSNR, SSIM, LPIPS, Frechet distances against the originals) and
turned into semantic features (zero-shot accuracy, linear probe). Everything streams; only a few sample
images and the (B, E) semantic features for the probe are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from polytok.eval._checks import check_images
from polytok.eval.codebook import CodebookUsage
from polytok.eval.features import FeatureSpace, InceptionFeatures
from polytok.eval.frechet import FrechetDistance
from polytok.eval.linear_probe import FeatureBank, linear_probe
from polytok.eval.perceptual import LPIPS, build_lpips_vgg
from polytok.eval.pixel import PSNR, SSIM
from polytok.eval.report_data import EvalReport
from polytok.eval.result import MetricResult
from polytok.eval.zero_shot import DEFAULT_TEMPLATES, ZeroShotClassifier, check_templates

Toggle = bool | Literal["auto"]


@dataclass
class ZeroShotSpec:
    """Class names (indexed by the batches' ``label``) and prompt templates with one ``{}``."""

    class_names: Sequence[str]
    templates: Sequence[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))


def code_prefix(codes: torch.Tensor, depth: int, code_shape: Sequence[int], num_levels: int) -> torch.Tensor:
    """The codes of the first ``depth`` residual levels: (B, h, w, L) -> (B, h, w, depth),
    (B, h, w, L, C) -> (B, h, w, depth, C); non-residual codes are returned whole (depth must be 1)."""
    if not 1 <= depth <= num_levels:
        raise ValueError(f"depth must lie in [1, {num_levels}], got {depth}")
    if num_levels == 1:
        return codes
    if len(code_shape) == 1:
        return codes[..., :depth]
    if len(code_shape) == 2:
        return codes[..., :depth, :]
    raise ValueError(f"a residual tokenizer must have code_shape (L,) or (L, C), got {tuple(code_shape)}")


def alternate_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified, deterministic halves: within each class, images alternate between train and test.
    Returns the (train, test) index tensors."""
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        rank[members] = torch.arange(members.numel())
    return (rank % 2 == 0).nonzero().flatten(), (rank % 2 == 1).nonzero().flatten()


def _optional(toggle: Toggle, metric: str, build: Callable[[], Any], skipped: dict[str, str]) -> Any:
    """Build an optional metric; with ``"auto"`` a missing weights file skips it with the reason."""
    if toggle is False:
        return None
    try:
        return build()
    except FileNotFoundError as err:
        if toggle is True:
            raise
        skipped[metric] = f"skipped: {err}"
        return None


def _zero_shot_per_depth(
    tokenizer: Any, spec: ZeroShotSpec, depths: Sequence[int], skipped: dict[str, str]
) -> dict[int, ZeroShotClassifier]:
    """One classifier per depth sharing the class embeddings; skipped when there is no text tower."""
    if not hasattr(tokenizer, "encode_text"):
        skipped["zero-shot"] = "skipped: the tokenizer has no encode_text()"
        return {}
    check_templates(spec.class_names, spec.templates)
    try:
        first = ZeroShotClassifier(tokenizer.encode_text, spec.class_names, spec.templates)
    except ValueError as err:  # e.g. a preset without a text tower says so
        skipped["zero-shot"] = f"skipped: {err}"
        return {}
    classifiers = {depths[0]: first}
    for depth in depths[1:]:
        classifiers[depth] = ZeroShotClassifier(
            tokenizer.encode_text, spec.class_names, spec.templates, class_embeddings=first.class_embeddings
        )
    return classifiers


def evaluate_tokenizer(
    tokenizer: Any,
    dataloader: Iterable[dict[str, Any]],
    *,
    depths: Sequence[int] | None = None,
    zero_shot: ZeroShotSpec | dict[str, Any] | None = None,
    linear_probe_features: bool = False,
    max_images: int | None = None,
    fid: Toggle = "auto",
    inception_weights_path: str | Path | None = None,
    lpips: Toggle = "auto",
    vgg_weights_path: str | Path | None = None,
    feature_spaces: Sequence[FeatureSpace] = (),
    num_samples: int = 6,
    name: str | None = None,
    protocol: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    semantic_fidelity: bool = False,
    semantic_fidelity_size: int | None = None,
) -> EvalReport:
    """Evaluate a tokenizer on batches ``{"image": (B, 3, H, W) in [0, 1], "label": (B,), ...}``.

    Args:
        depths: residual depths to decode (default: every level 1..L; non-residual tokenizers: [1]).
        zero_shot: class names and templates for zero-shot accuracy from ``tokenizer.semantic_features``
            and ``tokenizer.encode_text``.
        linear_probe_features: fit a logistic-regression probe on semantic features (within each
            class, alternate images train and test it).
        max_images: stop after this many images.
        fid / lpips: ``True`` (required: a missing weights file raises), ``False``, or ``"auto"``
            (computed when the weights are on disk, otherwise reported as skipped with the reason).
        feature_spaces: extra feature spaces for Frechet distances (reported as ``rFD[name]``).
        protocol: dataset description reported with every figure (dataset, split, resize/crop, ...).
        semantic_fidelity: per depth, top-1 agreement and KL divergence of a frozen ImageNet
            EfficientNet-Lite0 between originals and reconstructions, and "rFD (EfficientNet-Lite0)"
            (needs the ``pretrained`` extra); ``semantic_fidelity_size`` is its input size (default 224).

    Example::

        report = evaluate_tokenizer(tok, loader, max_images=1000, protocol={"dataset": "imagenet val"})
        write_report(report, "report.html")
    """
    num_levels = int(getattr(tokenizer.quantizer, "num_levels", 1))
    code_shape = tuple(int(s) for s in tokenizer.quantizer.code_shape)
    codebook_size = int(tokenizer.quantizer.codebook_size)
    depths = sorted(set(depths)) if depths is not None else list(range(1, num_levels + 1))
    for depth in depths:
        if not 1 <= depth <= num_levels:
            raise ValueError(
                f"depth {depth} outside [1, {num_levels}] for a tokenizer with {num_levels} levels"
            )
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    if isinstance(zero_shot, dict):
        zero_shot = ZeroShotSpec(**zero_shot)

    skipped: dict[str, str] = {}
    base_protocol = {"reference_set": "the same originals, before encoding", **(protocol or {})}
    spaces: dict[str, FeatureSpace] = {}
    inception = _optional(
        fid, "rFID", lambda: InceptionFeatures("2048", weights_path=inception_weights_path), skipped
    )
    if inception is not None:
        spaces["rFID"] = inception
    for space in feature_spaces:
        spaces[f"rFD[{space.name}]"] = space
    if device is not None:
        for space in spaces.values():
            space.to(device)
    lpips_model = _optional(lpips, "LPIPS", lambda: build_lpips_vgg(vgg_weights_path), skipped)
    if lpips_model is not None and device is not None:
        lpips_model = lpips_model.to(device)
    lpips_metrics = {d: LPIPS(model=lpips_model) for d in depths} if lpips_model is not None else {}

    fidelity: dict[int, Any] = {}
    if semantic_fidelity:
        from polytok.eval.semantic_fidelity import SemanticFidelity
        from polytok.pretrained import load_pretrained

        classifier = load_pretrained("efficientnet-lite0")  # one network shared by every depth
        if device is not None:
            classifier = classifier.to(device)
        fidelity = {d: SemanticFidelity(classifier, size=semantic_fidelity_size) for d in depths}

    psnr = {d: PSNR() for d in depths}
    ssim = {d: SSIM() for d in depths}
    frechet = {d: {key: FrechetDistance(space) for key, space in spaces.items()} for d in depths}
    usage = CodebookUsage(codebook_size, code_shape, residual=num_levels > 1)

    semantic = zero_shot is not None or linear_probe_features
    zero_shot_metrics: dict[int, ZeroShotClassifier] = {}
    banks: dict[int, FeatureBank] = {}
    if semantic and not hasattr(tokenizer, "semantic_features"):
        skipped["semantics"] = "skipped: the tokenizer has no semantic_features()"
        semantic = False
    if semantic and zero_shot is not None:
        zero_shot_metrics = _zero_shot_per_depth(tokenizer, zero_shot, depths, skipped)
    if semantic and linear_probe_features:
        banks = {d: FeatureBank() for d in depths}
    # The code probe reads the pooled code vectors, so it also runs without a semantic branch.
    code_banks: dict[int, FeatureBank] = {}
    if linear_probe_features and hasattr(tokenizer, "code_embedding"):
        code_banks = {d: FeatureBank() for d in depths}

    samples: dict[str, Any] = {"original": [], "reconstructions": {d: [] for d in depths}}
    seen = 0
    image_size: tuple[int, int] | None = None
    start = time.perf_counter()
    was_training = getattr(tokenizer, "training", False)
    if hasattr(tokenizer, "eval"):
        tokenizer.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                if max_images is not None and seen >= max_images:
                    break
                images = batch["image"]
                labels = batch.get("label")
                if max_images is not None:
                    images = images[: max_images - seen]
                    labels = labels[: max_images - seen] if labels is not None else None
                check_images(images, "batch['image']")
                image_size = tuple(images.shape[-2:])
                if device is not None:
                    images = images.to(device)
                codes = tokenizer.encode(images)
                usage.update(codes)
                real_features = {key: space(images) for key, space in spaces.items()}
                keep = max(0, min(num_samples - seen, images.shape[0]))
                if keep:
                    samples["original"].append(images[:keep].float().cpu())
                for depth in depths:
                    prefix = code_prefix(codes, depth, code_shape, num_levels)
                    recon = tokenizer.decode(prefix)
                    check_images(recon, f"decode(codes of depth {depth})")
                    recon_cpu, images_cpu = recon.float().cpu(), images.float().cpu()
                    psnr[depth].update(recon_cpu, images_cpu)
                    ssim[depth].update(recon_cpu, images_cpu)
                    if depth in lpips_metrics:
                        lpips_metrics[depth].update(recon, images)
                    if depth in fidelity:
                        fidelity[depth].update(images, recon)
                    for key, space in spaces.items():
                        frechet[depth][key].update_features(real_features[key], real=True)
                        frechet[depth][key].update_features(space(recon), real=False)
                    if keep:
                        samples["reconstructions"][depth].append(recon_cpu[:keep])
                    if depth in code_banks and labels is not None:
                        code_banks[depth].update(tokenizer.code_embedding(prefix), labels)
                    if semantic and labels is not None:
                        try:
                            embedding = tokenizer.semantic_features(prefix)
                        except ValueError as err:
                            if seen:  # it worked before: a genuine failure
                                raise
                            skipped["semantics"] = f"skipped: {err}"
                            semantic, zero_shot_metrics, banks = False, {}, {}
                            continue
                        if depth in zero_shot_metrics:
                            zero_shot_metrics[depth].update(embedding, labels)
                        if depth in banks:
                            banks[depth].update(embedding, labels)
                seen += images.shape[0]
    finally:
        if was_training and hasattr(tokenizer, "train"):
            tokenizer.train()
    elapsed = time.perf_counter() - start
    if seen == 0:
        raise ValueError("the dataloader yielded no images")
    if semantic and zero_shot_metrics and not zero_shot_metrics[depths[0]].count:
        skipped["zero-shot"] = "skipped: batches carry no 'label'"
        zero_shot_metrics = {}

    data_protocol = {
        **base_protocol,
        "num_images": seen,
        "image_size": f"{image_size[0]}x{image_size[1]}" if image_size else None,
    }
    curves: dict[str, dict[int, MetricResult]] = {}

    def add(metric: str, depth: int, result: MetricResult) -> None:
        protocol_ = {**data_protocol, **result.protocol, "decoded_levels": depth}
        curves.setdefault(metric, {})[depth] = MetricResult(result.value, protocol_, result.std)

    for depth in depths:
        add("PSNR", depth, psnr[depth].compute())
        add("SSIM", depth, ssim[depth].compute())
        if depth in lpips_metrics:
            add("LPIPS", depth, lpips_metrics[depth].compute())
        if depth in fidelity:
            results = fidelity[depth].compute()
            add("semantic top-1 agreement", depth, results["top1_agreement"])
            add("semantic KL", depth, results["kl_divergence"])
            if "rfd" in results and seen >= 2:
                add("rFD (EfficientNet-Lite0)", depth, results["rfd"])
        for key in spaces:
            if seen >= 2:
                add(key, depth, frechet[depth][key].compute())
            else:
                skipped[key] = "skipped: a Frechet distance needs at least 2 images"
        if depth in zero_shot_metrics:
            results = zero_shot_metrics[depth].compute()
            add("zero-shot top-1", depth, results["top1"])
            add("zero-shot top-5", depth, results["top5"])
        for metric, bank_of, features_name in (
            ("linear probe top-1", banks, "semantic features of the code"),
            ("code probe top-1", code_banks, "code vectors averaged over positions"),
        ):
            if depth not in bank_of:
                continue
            if len(bank_of[depth]) == 0:
                skipped[metric] = "skipped: batches carry no 'label'"
                continue
            features, labels_all = bank_of[depth].tensors()
            train, test = alternate_split(labels_all)
            try:
                probe = linear_probe(
                    features[train],
                    labels_all[train],
                    features[test],
                    labels_all[test],
                    protocol={
                        "split": "per class, alternate images train / test the probe",
                        "features": features_name,
                    },
                )
                add(metric, depth, probe["top1"])
            except ValueError as err:
                skipped[metric] = f"skipped: {err}"

    compute_seconds = time.perf_counter() - start - elapsed
    deepest = depths[-1]
    metrics = {name_: curve[deepest] for name_, curve in curves.items() if deepest in curve}
    report = EvalReport(
        name=name or type(tokenizer).__name__,
        metrics=metrics,
        depth_curves=curves if len(depths) > 1 else {},
        depths=list(depths),
        codebook=usage.compute(),
        samples={
            "original": torch.cat(samples["original"]) if samples["original"] else torch.empty(0),
            "reconstructions": {
                d: torch.cat(v) if v else torch.empty(0) for d, v in samples["reconstructions"].items()
            },
        },
        skipped=skipped,
        protocol={
            **data_protocol,
            "code_shape": list(code_shape),
            "codebook_size": codebook_size,
            "num_levels": num_levels,
            "depths": list(depths),
        },
        timing={
            "seconds": elapsed,
            "images_per_second": seen / elapsed if elapsed > 0 else float("inf"),
            "compute_seconds": compute_seconds,
        },
    )
    return report
