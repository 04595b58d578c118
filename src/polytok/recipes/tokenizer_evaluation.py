"""Evaluate one or more tokenizers on a dataset and write the HTML report (``polytok eval``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from polytok.eval import (
    SEMANTIC_FIDELITY_SIZE,
    EvalOptions,
    EvalReport,
    ZeroShotSpec,
    evaluate_tokenizer,
    write_report,
)
from polytok.storage import atomic_write_text


def zero_shot_spec(dataset: Any, task: str | None) -> ZeroShotSpec | None:
    """Class names and prompt templates of a built-in dataset task (shapes: ``shape``, ``colour``, ...)."""
    if task is None or not hasattr(dataset, "class_names"):
        return None
    templates = getattr(dataset, "prompt_templates", None)
    if isinstance(templates, dict):
        templates = templates.get(task)
    spec = ZeroShotSpec(class_names=list(dataset.class_names(task)))
    if templates:
        spec.templates = list(templates)
    return spec


def evaluate_many(
    tokenizers: Sequence[Any],
    names: Sequence[str],
    *,
    data: str = "photos",
    split: str = "val",
    image_size: int = 64,
    max_images: int = 512,
    zero_shot_task: str | None = None,
    batch_size: int = 32,
    semantic_fidelity: bool = True,
    semantic_fidelity_size: int | None = None,
    linear_probe: bool = True,
    depth_curves: bool = True,
    dataset_options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> list[EvalReport]:
    """One :class:`EvalReport` per tokenizer on the same images, with the protocol written in each.

    ``progress``: one bar per tokenizer on stderr (True), none (False), only on a terminal (None).

    ``semantic_fidelity_size``: the classifier's input size; None means the library's
    ``SEMANTIC_FIDELITY_SIZE`` (recorded in each report's protocol either way).

    ``depth_curves``: measure every level 1..L (True) or only the full depth (False: the same headline
    figures without the per-level curves, at a fraction of the cost for deep residual tokenizers).
    """
    from polytok.data import build_dataloader, build_dataset
    from polytok.eval.evaluate import code_levels

    options = dict(dataset_options or {})
    if zero_shot_task is not None:
        options.setdefault("label_task", zero_shot_task)
    dataset = build_dataset(data, split=split, image_size=image_size, **options)
    spec = zero_shot_spec(dataset, zero_shot_task)
    protocol = {
        "dataset": data,
        "split": split,
        "resize": f"{image_size} px (built-in crops or short-side resize + centre crop)",
        "max_images": max_images,
    }
    options = EvalOptions(
        zero_shot=spec,
        linear_probe_features=linear_probe,
        max_images=max_images,
        semantic_fidelity=semantic_fidelity,
        semantic_fidelity_size=(
            SEMANTIC_FIDELITY_SIZE if semantic_fidelity_size is None else semantic_fidelity_size
        ),
    )
    reports = []
    for tok, name in zip(tokenizers, names):
        loader = build_dataloader(dataset, batch_size=batch_size, shuffle=False)
        tok_options = options if depth_curves else replace(options, depths=[code_levels(tok)])
        reports.append(
            evaluate_tokenizer(tok, loader, tok_options, name=name, protocol=protocol, progress=progress)
        )
    return reports


def evaluate_to_report(
    tokenizers: Sequence[Any],
    names: Sequence[str],
    *,
    report: str | Path,
    title: str = "polytok evaluation",
    progress: bool | None = None,
    **kwargs: Any,
) -> list[EvalReport]:
    """:func:`evaluate_many`, then the HTML report at ``report`` and a JSON summary beside it (both
    checked writable before the work: :func:`polytok.storage.check_writable`)."""
    from polytok.storage import check_writable

    if Path(report).suffix == ".json":
        raise ValueError(f"report {report} would be replaced by its JSON summary: give it an .html name")
    check_writable(report, "report")
    check_writable(Path(report).with_suffix(".json"), "summary")
    reports = evaluate_many(tokenizers, names, progress=progress, **kwargs)
    path = write_report(reports, report, title=title, progress=progress)
    summary = path.with_suffix(".json")
    atomic_write_text(summary, json.dumps([r.to_dict() for r in reports], indent=1, default=str))
    for r in reports:
        print(json.dumps({"tokenizer": r.name, **{k: round(v.value, 4) for k, v in r.metrics.items()}}))
    print(json.dumps({"report": str(path), "summary": str(summary)}))
    return reports


# -- the built-in protocol: what the demo and the studies report ------------------------------------------


PHOTOS_EVAL = "held-out photo crops: PSNR, SSIM, codebook use, codec references, semantic fidelity, rFD"
SHAPES_EVAL = "held-out shape/colour pairs: zero-shot (1/42), linear probes, attribute judge, references"


def evaluate_photos(tokenizers: dict[str, Any], max_images: int, progress: bool | None = None) -> list:
    """Reports on held-out photo crops (with semantic fidelity), named ``<name> | photos val``."""
    return evaluate_many(
        list(tokenizers.values()),
        [f"{n} | photos val" for n in tokenizers],
        data="photos",
        split="val",
        max_images=max_images,
        zero_shot_task=None,
        progress=progress,
    )


def evaluate_shapes(tokenizers: dict[str, Any], max_images: int, progress: bool | None = None) -> list:
    """Reports on held-out shape combinations (zero-shot classification of the (colour, shape) pair among
    all 42, chance 1/42), named ``<name> | shapes held-out``."""
    return evaluate_many(
        list(tokenizers.values()),
        [f"{n} | shapes held-out" for n in tokenizers],
        data="shapes",
        split="heldout",
        max_images=max_images,
        zero_shot_task="object",
        semantic_fidelity=False,
        progress=progress,
    )


def evaluate_on_builtin(
    tokenizers: dict[str, Any], max_images: int, progress: bool | None = None
) -> tuple[list, list]:
    """:func:`evaluate_photos` and :func:`evaluate_shapes`, one report per tokenizer each."""
    photos = evaluate_photos(tokenizers, max_images, progress)
    return photos, evaluate_shapes(tokenizers, max_images, progress)
