"""``evaluate_tokenizer``: the metric families over a dataloader, at every residual depth.

Per batch the images are encoded once and every family sees the originals once (``prepare``). Then,
for each depth ``k``, pixel families measure the image decoded from the first ``min(k, pixel_depth)``
levels (the levels the pixel decoder actually reads) and code families the first ``k`` levels of the
code. Everything streams; only a few sample images and the (B, E) features for the probes are kept.
With ``progress`` a bar on stderr counts the images and names the family running; its final line gives
each family's seconds (also in the report's ``timing``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from polytok.eval.capabilities import TokenizerCapabilities, capabilities_of
from polytok.eval.families import DepthBatch, DepthResult, MetricFamily, RealBatch, build_families
from polytok.eval.families.base import family_label
from polytok.eval.metrics.checks import check_images
from polytok.eval.metrics.codebook import CodebookUsage
from polytok.eval.options import EvalOptions, Toggle, ZeroShotSpec
from polytok.eval.progress import StageTimes, progress_bar
from polytok.eval.result import MetricResult
from polytok.eval.tokenizer_report import EvalReport
from polytok.models.levels import code_prefix

__all__ = ["DepthPlan", "EvalOptions", "Toggle", "ZeroShotSpec", "code_prefix", "evaluate_tokenizer"]


def _first(value: Any, count: int) -> Any:
    """The entries of the first ``count`` images of a batch field (tensors, lists, dicts of them)."""
    if isinstance(value, dict):
        return {k: _first(v, count) for k, v in value.items()}
    if isinstance(value, (torch.Tensor, list, tuple)):
        return value[:count]
    return value


def code_levels(tokenizer: Any) -> int:
    """Code levels of a tokenizer: its full depth (1 unless its codes are residual levels)."""
    return capabilities_of(tokenizer).num_levels


@dataclass(frozen=True)
class DepthPlan:
    """Which levels are measured. ``depths``: code depths (code families); ``decoded``: levels decoded
    to pixels, ``min(depth, pixel_depth)`` for each depth (pixel families)."""

    num_levels: int
    code_shape: tuple[int, ...]
    codebook_size: int
    pixel_depth: int
    depths: list[int]
    decoded: list[int]

    @classmethod
    def of(cls, tokenizer: Any, depths: Sequence[int] | None) -> DepthPlan:
        """The plan for ``tokenizer`` (or its :class:`TokenizerCapabilities`) and the depths asked for."""
        caps = tokenizer if isinstance(tokenizer, TokenizerCapabilities) else capabilities_of(tokenizer)
        num_levels = caps.num_levels
        chosen = sorted(set(depths)) if depths is not None else list(range(1, num_levels + 1))
        if not chosen:
            raise ValueError("depths is empty")
        for depth in chosen:
            if not 1 <= depth <= num_levels:
                raise ValueError(
                    f"depth {depth} outside [1, {num_levels}] for a tokenizer with {num_levels} levels"
                )
        decoded = sorted({min(depth, caps.pixel_depth) for depth in chosen})
        return cls(num_levels, caps.code_shape, caps.codebook_size, caps.pixel_depth, chosen, decoded)

    @property
    def levels(self) -> list[int]:
        """Every level count measured by some family, ascending."""
        return sorted(set(self.depths) | set(self.decoded))

    def deepest(self, result: DepthResult) -> int:
        return self.decoded[-1] if result.reads == "pixels" else self.depths[-1]

    def protocol(self) -> dict[str, Any]:
        return {
            "code_shape": list(self.code_shape),
            "codebook_size": self.codebook_size,
            "num_levels": self.num_levels,
            "pixel_depth": self.pixel_depth,
            "depths": list(self.depths),
            "decoded_depths": list(self.decoded),
        }


def evaluate_tokenizer(
    tokenizer: Any,
    dataloader: Iterable[dict[str, Any]],
    options: EvalOptions | None = None,
    *,
    name: str | None = None,
    protocol: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    families: Sequence[MetricFamily] = (),
    progress: bool | None = None,
    **option_fields: Any,
) -> EvalReport:
    """Evaluate a tokenizer on batches ``{"image": (B, 3, H, W) in [0, 1], "label": (B,), ...}``.

    Args:
        options: what to measure (:class:`EvalOptions`); or give its fields as keywords
            (``max_images=1000, linear_probe_features=True, ...``).
        name: the report's name (default: the tokenizer's class name).
        protocol: dataset description reported with every figure (dataset, split, resize/crop, ...).
        device: where the tokenizer's outputs and the metric networks run.
        families: further :class:`MetricFamily` objects, run after the ones ``options`` ask for.
        progress: a bar on stderr (True), none (False), or one only when stderr is a terminal (None).

    Pixel figures carry ``decoded_levels`` (levels the pixel decoder read), code figures
    ``code_levels``; the headline figures are each kind's deepest.

    Example::

        report = evaluate_tokenizer(tok, loader, max_images=1000, protocol={"dataset": "imagenet val"})
        write_report(report, "report.html")
    """
    if options is None:
        options = EvalOptions(**option_fields)
    elif option_fields:
        raise TypeError(f"give either options or option keywords, not both: {sorted(option_fields)}")
    caps = capabilities_of(tokenizer)
    plan = DepthPlan.of(caps, options.depths)
    skipped: dict[str, str] = {}
    families = [*build_families(caps, options, device, skipped), *families]
    odd = [type(f).__name__ for f in families if f.reads not in ("pixels", "codes")]
    if odd:
        raise ValueError(f"a metric family reads 'pixels' or 'codes'; {odd} read neither")
    label = name or type(tokenizer).__name__
    bar = progress_bar(_expected_images(dataloader, options.max_images), f"eval {label}", progress)
    times = StageTimes(bar)
    start = time.perf_counter()
    try:
        stream = _stream(caps, dataloader, plan, families, options, device, times)
        elapsed = time.perf_counter() - start
        data_protocol = _data_protocol(protocol, stream)
        curves, metrics = _figures(families, plan, data_protocol, skipped, times)
        compute_seconds = time.perf_counter() - start - elapsed
        bar.set_postfix_str(times.summary(), refresh=True)
    finally:
        bar.close()
    return EvalReport(
        name=label,
        metrics=metrics,
        depth_curves=curves if len(plan.levels) > 1 else {},
        depths=plan.levels,
        codebook=stream.usage.compute(),
        samples={
            "original": torch.cat(stream.originals) if stream.originals else torch.empty(0),
            "reconstructions": {
                d: torch.cat(v) if v else torch.empty(0) for d, v in stream.reconstructions.items()
            },
        },
        skipped=skipped,
        protocol={**data_protocol, **plan.protocol(), **caps.protocol(), **options.protocol()},
        timing={
            "seconds": elapsed,
            "images_per_second": stream.seen / elapsed if elapsed > 0 else float("inf"),
            "compute_seconds": compute_seconds,
            **{f"seconds[{part}]": seconds for part, seconds in times.seconds.items()},
        },
    )


def _expected_images(dataloader: Any, max_images: int | None) -> int | None:
    """Images the pass will see, for the bar's total (None when the loader cannot say)."""
    try:
        available = len(dataloader.dataset)
    except (AttributeError, TypeError):
        return max_images
    return available if max_images is None else min(available, max_images)


def _data_protocol(protocol: dict[str, Any] | None, stream: _Stream) -> dict[str, Any]:
    return {
        "reference_set": "the same originals, before encoding",
        **(protocol or {}),
        "num_images": stream.seen,
        "image_size": f"{stream.image_size[0]}x{stream.image_size[1]}",
    }


@dataclass
class _Stream:
    """What the pass over the data leaves besides the families' state."""

    usage: CodebookUsage
    originals: list[torch.Tensor]
    reconstructions: dict[int, list[torch.Tensor]]
    seen: int = 0
    image_size: tuple[int, ...] = ()


def _stream(
    caps: TokenizerCapabilities,
    dataloader: Iterable[dict[str, Any]],
    plan: DepthPlan,
    families: Sequence[MetricFamily],
    options: EvalOptions,
    device: str | torch.device | None,
    times: StageTimes,
) -> _Stream:
    """One pass: encode each batch once, let every family see the originals, then each depth."""
    pixel_families = [f for f in families if f.reads == "pixels"]
    code_families = [f for f in families if f.reads == "codes"]
    tokenizer = caps.tokenizer
    usage = CodebookUsage(
        caps.usage_codebook_size or plan.codebook_size,
        plan.code_shape if caps.usage_shape is None else caps.usage_shape,
        residual=plan.num_levels > 1,
        spatial_dims=caps.position_dims,
    )
    out = _Stream(usage, [], {d: [] for d in plan.decoded})
    max_images = options.max_images
    was_training = getattr(tokenizer, "training", False)
    if hasattr(tokenizer, "eval"):
        tokenizer.eval()
    try:
        with torch.no_grad():
            for batch in dataloader:
                if max_images is not None and out.seen >= max_images:
                    break
                images = batch["image"]
                labels = batch.get("label")
                if max_images is not None:
                    images = images[: max_images - out.seen]
                    labels = labels[: max_images - out.seen] if labels is not None else None
                check_images(images, "batch['image']")
                out.image_size = tuple(images.shape[-2:])
                if device is not None:
                    images = images.to(device)
                with times.part("encode"):
                    codes = tokenizer.encode(images)
                usage.update(codes if caps.usage_codes is None else caps.usage_codes(codes))
                fields = {
                    k: _first(v, images.shape[0]) for k, v in batch.items() if k not in ("image", "label")
                }
                real = RealBatch(images, labels, codes, out.seen, fields)
                for family in families:
                    with times.part(family_label(family)):
                        family.prepare(real)
                keep = max(0, min(options.num_samples - out.seen, images.shape[0]))
                if keep:
                    out.originals.append(images[:keep].float().cpu())
                for levels in plan.levels:
                    prefix = code_prefix(codes, levels, plan.code_shape, plan.num_levels)
                    if levels in out.reconstructions:
                        with times.part("decode"):
                            recon = tokenizer.decode(prefix)
                        check_images(recon, f"decode(codes of depth {levels})")
                        for family in pixel_families:
                            with times.part(family_label(family)):
                                family.measure(real, DepthBatch(levels, prefix, recon))
                        if keep:
                            out.reconstructions[levels].append(recon[:keep].float().cpu())
                    if levels in plan.depths:
                        for family in code_families:
                            with times.part(family_label(family)):
                                family.measure(real, DepthBatch(levels, prefix))
                out.seen += images.shape[0]
                times.bar.update(images.shape[0])
    finally:
        if was_training and hasattr(tokenizer, "train"):
            tokenizer.train()
    if out.seen == 0:
        raise ValueError("the dataloader yielded no images")
    return out


def _figures(
    families: Sequence[MetricFamily],
    plan: DepthPlan,
    data_protocol: dict[str, Any],
    skipped: dict[str, str],
    times: StageTimes,
) -> tuple[dict[str, dict[int, MetricResult]], dict[str, MetricResult]]:
    """Depth curves ``{metric: {levels: figure}}`` and headline figures (each kind's deepest level), every
    figure's protocol completed with the data protocol and its level count; adds the families' skips."""
    curves: dict[str, dict[int, MetricResult]] = {}
    headline: dict[str, MetricResult] = {}
    for family in families:
        with times.part(family_label(family)):
            results = family.compute()  # the probes fit their classifiers here
        for result in results:
            for metric, figure in result.figures.items():
                record = {**data_protocol, **figure.protocol, result.level_field: result.levels}
                curves.setdefault(metric, {})[result.levels] = MetricResult(figure.value, record, figure.std)
                if result.levels == plan.deepest(result):
                    headline[metric] = curves[metric][result.levels]
        skipped.update(family.skipped)
    return curves, {metric: headline[metric] for metric in curves if metric in headline}
