"""Generation and understanding of a unified model on the built-in ``shapes`` world.

    from polytok.eval import evaluate_unified
    report = evaluate_unified(model, tokenizer, samples_per_prompt=4, guidance_scale=3.0, seed=0)
    print(report.format_tables()); report.to_dict()

What is measured (figure names in :mod:`polytok.eval.unified.report`):

1. Text to image: ``samples_per_prompt`` samples of each prompt of the suite (:func:`prompt_suite`;
   prompt i is sampled in one call of N rows with seed ``seed + i``), decoded by the image tokenizer
   and read by the shapes judge; accuracy per attribute, all at once, and shape-and-colour, for seen
   and held-out pairs apart. Beside each: the judge on real images of the same prompts' attributes and
   on the tokenizer's reconstructions of those images from their pixel prefix (the ceiling of any
   generator on these tokens), chance, and the single-attribute models of the joint figures.
2. ``gFD (EfficientNet-Lite0)``: Frechet distance, in the pooled features of the frozen ImageNet
   EfficientNet-Lite0, between all samples and as many real images of the same attributes.
3. Bits per image token: the model's own image loss (teacher-forced, the training loss) on images of a
   split given their captions, in bits per sub-code and per image.
4. Likelihood choice: for the same images, which value of an attribute (colour, shape) the model's
   likelihood prefers when the caption names each in turn (:mod:`polytok.eval.unified.likelihood`): the
   generator's conditioning without sampling or judge.
5. Captioning: greedy captions of ``val`` (seen pairs) and ``heldout`` images, parsed by the dataset's
   grammar (:func:`polytok.eval.shapes.captions.parse_caption`); accuracy per attribute, all six, pair; and
   the same captions with the shape re-ranked by the generator's likelihood
   (:mod:`polytok.eval.unified.rerank`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from polytok.data.shapes import TASK_CLASSES
from polytok.eval.options import SEMANTIC_FIDELITY_SIZE, Toggle
from polytok.eval.result import MetricResult
from polytok.eval.shapes.baselines import PAIR, all_combinations, chance, single_attribute_baselines
from polytok.eval.shapes.captions import CAPTION_ATTRIBUTES, parse_caption
from polytok.eval.shapes.prompts import PROMPT_SUITE_VERSION, ShapesPrompt, prompt_suite
from polytok.eval.shapes.scores import ALL, PAIR_SCORE, accuracy, correct_flags
from polytok.eval.unified.likelihood import likelihood_figures
from polytok.eval.unified.report import CaptionedImage, PromptSamples, UnifiedReport

GFD_LABEL = "gFD (EfficientNet-Lite0)"
GROUPS = ("seen", "heldout")
CAPTION_SPLITS = ("val", "heldout")  # val: unseen images of seen pairs; heldout: held-out pairs


def _as_uint8(images: Tensor) -> Tensor:
    return (images.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def _rows(readings: Mapping[str, Tensor]) -> list[dict[str, int]]:
    """The judge's {attribute: (B,)} -> B dicts attribute -> class index."""
    names = list(readings)
    count = len(readings[names[0]]) if names else 0
    return [{name: int(readings[name][i]) for name in names} for i in range(count)]


def image_side(model: Any, tokenizer: Any) -> int:
    """Side (px) of the model's square images: grid x the tokenizer's stride."""
    h, w = model.layout.grid
    if h != w:
        raise ValueError(f"the shapes evaluation draws square images; this model's grid is {h} x {w}")
    return h * int(tokenizer.stride)


def pixel_prefix_reconstruction(model: Any, tokenizer: Any, images: Tensor) -> Tensor:
    """Images (B, 3, S, S) -> decoded from the pixel prefix of their codes (what generation predicts)."""
    codes = encode_alone(tokenizer, images)
    levels = model.layout.to_levels(codes)[:, :, : model.layout.pixel_levels]
    return model.decode_images(model.layout.from_levels(levels), tokenizer).float().cpu().clamp(0, 1)


def encode_alone(tokenizer: Any, images: Tensor) -> Tensor:
    """Images (B, 3, S, S) -> codes (B, h, w, *code_shape) on the CPU, each image encoded alone (as
    training encodes them): no code depends on which images share a batch."""
    return torch.cat([tokenizer.encode(image[None].to(tokenizer.device)).cpu() for image in images])


def _group(prompt: ShapesPrompt) -> str:
    return "heldout" if prompt.heldout else "seen"


def _t2i_figures(
    samples: Sequence[PromptSamples],
    real: Mapping[int, list[dict[str, bool]]],
    recon: Mapping[int, list[dict[str, bool]]],
    attributes: Sequence[str],
    protocol: dict[str, Any],
) -> dict[str, MetricResult]:
    figures = {}
    for group in GROUPS:
        chosen = [s for s in samples if _group(s.prompt) == group]
        if not chosen:
            continue
        flags = [f for s in chosen for f in s.correct]
        ceiling_real = accuracy([f for s in chosen for f in real[s.prompt.index]])
        ceiling_recon = accuracy([f for s in chosen for f in recon[s.prompt.index]])
        truths = [s.prompt.attributes for s in chosen]
        for score, value in accuracy(flags).items():
            joint = list(attributes) if score == ALL else list(PAIR) if score == PAIR_SCORE else [score]
            baselines: dict[str, float] = {"chance": chance(joint)}
            if score == PAIR_SCORE:  # one known attribute of five barely moves chance: pair only
                baselines.update(single_attribute_baselines(truths, joint, all_combinations(joint)))
            baselines["judge on real images"] = ceiling_real[score]
            baselines["judge on reconstructions"] = ceiling_recon[score]
            figures[f"t2i[{group}] attr[{score}]"] = MetricResult(
                value,
                {
                    **protocol,
                    "group": group,
                    "group_prompts": len(chosen),
                    "num_images": len(flags),
                    "baselines": baselines,
                },
            )
    return figures


def _gfd_space(size: int) -> Any:
    from polytok.eval.metrics.features import ModuleFeatures
    from polytok.pretrained import load_pretrained

    net = load_pretrained("efficientnet-lite0")  # normalises its input itself
    return ModuleFeatures(net, name="efficientnet-lite0", size=size, select=lambda out: out.embedding)


@torch.no_grad()
def text_to_image(
    model: Any,
    tokenizer: Any,
    judge: Any,
    prompts: Sequence[ShapesPrompt],
    *,
    samples_per_prompt: int,
    sampling: Mapping[str, Any],
    seed: int,
    gfd_space: Any = None,
    progress: bool = True,
) -> tuple[list[PromptSamples], dict[str, MetricResult]]:
    """Samples of every prompt, judged; the t2i figures and (with ``gfd_space``) the gFD."""
    from tqdm.auto import tqdm

    from polytok.data.shapes import ShapesDataset
    from polytok.eval.metrics.frechet import FrechetDistance
    from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES
    from polytok.unified.sampling import generate_image_codes

    side = image_side(model, tokenizer)
    renderer = ShapesDataset("train", image_size=side)  # render() draws any attributes, held-out too
    frechet = None
    if gfd_space is not None:
        frechet = FrechetDistance(gfd_space, protocol={"metric": GFD_LABEL})
    samples, real_flags, recon_flags = [], {}, {}
    for prompt in tqdm(prompts, desc="text -> image", disable=not progress):
        call_seed = seed + prompt.index
        codes = generate_image_codes(model, [prompt.caption] * samples_per_prompt, seed=call_seed, **sampling)
        images = model.decode_images(codes, tokenizer).float().cpu().clamp(0, 1)
        readings = _rows(judge.read(images))
        truth = prompt.attributes
        # real images of the prompt's attributes: the judge's and the tokens' ceilings, gFD's reference
        real = torch.stack(
            [
                renderer.render(truth, np.random.default_rng([seed, prompt.index, j]))
                for j in range(samples_per_prompt)
            ]
        )
        recon = pixel_prefix_reconstruction(model, tokenizer, real)
        real_flags[prompt.index] = [
            correct_flags(r, truth, JUDGED_ATTRIBUTES) for r in _rows(judge.read(real))
        ]
        recon_flags[prompt.index] = [
            correct_flags(r, truth, JUDGED_ATTRIBUTES) for r in _rows(judge.read(recon))
        ]
        if frechet is not None:
            frechet.update(real, real=True)
            frechet.update(images, real=False)
        samples.append(
            PromptSamples(
                prompt,
                call_seed,
                _as_uint8(images),
                readings,
                [correct_flags(r, truth, JUDGED_ATTRIBUTES) for r in readings],
            )
        )
    protocol = {
        "judge": "polytok shapes judge (trained on the shapes train split)",
        "truth": "the prompt's attributes",
        "image_size": side,
        "real_images": "shapes drawn from each prompt's attributes, seeds (seed, prompt index, j)",
        "reconstructions": "the real images encoded and decoded from the pixel prefix of their codes",
    }
    figures = _t2i_figures(samples, real_flags, recon_flags, JUDGED_ATTRIBUTES, protocol)
    if frechet is not None and frechet.num_real >= 2:
        result = frechet.compute()
        result.protocol.update(
            image_size=side,
            network_input_size=gfd_space.size[0],
            samples="every sample of every prompt",
            reference="as many real shapes images of the same prompts' attributes",
            note="Frechet distance in EfficientNet-Lite0 features: not gFID (no Inception-v3); below 1281 "
            "images per set the covariances are singular and the figure falls as images are added, so "
            "compare figures at equal image counts only",
        )
        figures[GFD_LABEL] = result
    return samples, figures


def split_images(split: str, side: int, count: int, seed: int) -> list[dict[str, Any]]:
    """The first ``count`` items of the ``shapes`` split the evaluation measures (its images at ``side``
    px, drawn with ``seed``), as ``ShapesDataset`` gives them."""
    from polytok.data.shapes import ShapesDataset

    data = ShapesDataset(split, image_size=side, length=count, seed=seed)
    return [data[i] for i in range(count)]


@torch.no_grad()
def bits_per_image_token(
    model: Any, codes: Tensor, captions: Sequence[str], batch_size: int = 16
) -> tuple[float, float, int]:
    """Mean -log2 p(image tokens | caption) over codes (B, h, w, *code_shape): (bits per sub-code, bits
    per image, sub-codes per image), from :func:`polytok.eval.unified.likelihood.image_bits`."""
    from polytok.eval.unified.likelihood import image_bits

    per_image_tokens = model.layout.num_positions * model.layout.generation_depth
    per_image = float(image_bits(model, codes, captions, batch_size).mean())
    return per_image / per_image_tokens, per_image, per_image_tokens


@torch.no_grad()
def caption_images(
    model: Any,
    tokenizer: Any,
    items: Sequence[dict[str, Any]],
    split: str,
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    rerank: Sequence[str] = (),
    rerank_caption_weight: float = 0.0,
    progress: bool = True,
) -> list[CaptionedImage]:
    """Greedy captions of ``shapes`` items (``image``, ``attributes``), parsed and scored; with
    ``rerank`` (attribute names) each is also re-ranked by the generator
    (:func:`polytok.eval.unified.rerank.rerank_captions`, ``rerank_caption_weight`` its
    ``caption_weight``) and scored again."""
    from tqdm.auto import tqdm

    from polytok.eval.unified.rerank import rerank_captions
    from polytok.unified.sampling import generate_captions

    out = []
    starts = range(0, len(items), batch_size)
    for start in tqdm(starts, desc=f"caption {split}", disable=not progress):
        chunk = items[start : start + batch_size]
        images = torch.stack([item["image"] for item in chunk])
        codes = encode_alone(tokenizer, images).to(model.device)
        texts = generate_captions(model, codes, max_new_tokens=max_new_tokens)
        parses = [parse_caption(caption) for caption in texts]
        reranked = (
            rerank_captions(
                model, codes, parses, rerank, caption_weight=rerank_caption_weight, batch_size=batch_size
            )
            if rerank
            else [None] * len(parses)
        )
        for i, (item, caption, parsed, better) in enumerate(zip(chunk, texts, parses, reranked)):
            truth = {name: int(item["attributes"][name]) for name in CAPTION_ATTRIBUTES}
            out.append(
                CaptionedImage(
                    split,
                    start + i,
                    _as_uint8(item["image"]),
                    truth,
                    caption,
                    parsed,
                    correct_flags(parsed, truth, CAPTION_ATTRIBUTES),
                    better,
                    correct_flags(better, truth, CAPTION_ATTRIBUTES) if rerank else None,
                )
            )
    return out


def _joint_attributes(score: str) -> list[str]:
    """The attributes a caption score needs right: all six, the pair, or one."""
    return list(CAPTION_ATTRIBUTES) if score == ALL else list(PAIR) if score == PAIR_SCORE else [score]


def _caption_figures(
    captioned: Sequence[CaptionedImage],
    split: str,
    rerank: Sequence[str] = (),
    rerank_caption_weight: float = 0.0,
) -> dict[str, MetricResult]:
    protocol = {
        "split": split,
        "num_images": len(captioned),
        "decoding": "greedy",
        "parser": "the shapes caption grammar (polytok.data.shapes.caption_for); unparsed = all wrong",
    }
    truths = [c.attributes for c in captioned]
    kinds = [("caption", protocol, [c.correct for c in captioned])]
    if rerank:
        decoding = (
            f"greedy, then {', '.join(rerank)} re-ranked in turn by bits(image | caption) + "
            f"{rerank_caption_weight:g} x bits(caption | image) (polytok.eval.unified.rerank)"
        )
        flags = [c.reranked_correct or {} for c in captioned]
        kinds.append(("caption reranked", {**protocol, "decoding": decoding}, flags))
    figures = {}
    for prefix, kind_protocol, flags in kinds:
        for score, value in accuracy(flags).items():
            joint = _joint_attributes(score)
            baselines = {"chance": chance(joint)}
            if score == PAIR_SCORE:
                baselines.update(single_attribute_baselines(truths, joint))
            figures[f"{prefix}[{split}] attr[{score}]"] = MetricResult(
                value, {**kind_protocol, "baselines": baselines}
            )
        if prefix == "caption":
            unparsed = sum(c.parsed is None for c in captioned)
            figures[f"caption[{split}] unparsed"] = MetricResult(
                float(unparsed), {**protocol, "unit": "captions"}
            )
    return figures


def evaluate_unified(
    model: Any,
    tokenizer: Any,
    *,
    name: str = "unified",
    prompts: Sequence[ShapesPrompt] | None = None,
    samples_per_prompt: int = 4,
    guidance_scale: float = 3.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    caption_images_per_split: int = 32,
    bits_images_per_split: int = 32,
    caption_splits: Sequence[str] = CAPTION_SPLITS,
    bits_token_sets: Sequence[str | os.PathLike] = (),
    likelihood_attributes: Sequence[str] = ("colour", "shape"),
    caption_rerank: Sequence[str] = ("shape",),
    caption_rerank_weight: float = 0.0,
    data_seed: int = 0,
    gfd: Toggle = "auto",
    gfd_size: int = SEMANTIC_FIDELITY_SIZE,
    batch_size: int = 16,
    judge: Any = None,
    progress: bool = True,
) -> UnifiedReport:
    """Text-to-image, gFD, bits per image token and captioning of ``model`` on ``shapes``.

    Args:
        model: a :class:`polytok.unified.UnifiedModel`; ``tokenizer``: the image tokenizer it was
            trained on (another is refused).
        prompts: default :func:`prompt_suite` (42 prompts, one per pair; ``prompt_suite(k)`` for k each).
        samples_per_prompt, guidance_scale, temperature, top_k, top_p, seed: the sampling settings,
            recorded in every figure; prompt i is sampled with seed ``seed + i``.
        caption_images_per_split / bits_images_per_split: images of the ``val`` and of the ``heldout``
            split (``shapes`` seed ``data_seed``) captioned / scored for bits (0: skipped);
            ``caption_splits``: which of the two (``("heldout",)``: the held-out pairs only).
        bits_token_sets: token sets (``polytok encode`` directories, of this tokenizer at the model's
            image size) whose first ``bits_images_per_split`` samples (all with 0) are also scored.
        likelihood_attributes: attributes read by the model's likelihood on the bits images
            (:mod:`polytok.eval.unified.likelihood`: which value's caption gives the image the fewest
            bits); () skips it.
        caption_rerank: attributes of each greedy caption re-ranked by the generator, in turn, and
            scored again as ``caption reranked[split]`` (:mod:`polytok.eval.unified.rerank`; () skips
            it); ``caption_rerank_weight``: the weight of the caption's own bits in that score (0: the
            image's bits alone, a uniform prior over the attribute's values).
        gfd: ``True`` (the EfficientNet-Lite0 weights must load), ``False``, ``"auto"`` (skipped with
            the reason when they do not); ``gfd_size``: the network's input size.
        judge: a loaded shapes judge (default: the shipped one).

    Returns a :class:`UnifiedReport`; the same arguments give the same figures.
    """
    from polytok.eval.shapes.judge import load_shapes_judge
    from polytok.eval.unified.rerank import check_rerank
    from polytok.unified.sampling import SamplingOptions, check_guidance_scale

    SamplingOptions(temperature, top_k, top_p)  # bad settings refused before anything is loaded
    check_guidance_scale(guidance_scale)
    if gfd is not False and gfd_size < 32:
        raise ValueError(f"gfd_size must be at least 32 (pixels), got {gfd_size}")
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    if caption_images_per_split < 0 or bits_images_per_split < 0:
        raise ValueError("caption_images_per_split and bits_images_per_split must be >= 0")
    bad = [a for a in likelihood_attributes if a not in TASK_CLASSES]
    if bad:
        raise ValueError(f"likelihood_attributes must be among {sorted(TASK_CLASSES)}, got {bad}")
    check_rerank(caption_rerank, caption_rerank_weight, "caption_rerank", "caption_rerank_weight")
    unknown = [split for split in caption_splits if split not in CAPTION_SPLITS]
    if unknown:
        raise ValueError(f"caption_splits must be among {CAPTION_SPLITS}, got {unknown}")
    model.check_tokenizer(tokenizer)
    from polytok.tokensets.shards import check_identity, read_manifest

    for path in bits_token_sets:  # a missing, damaged or foreign set refused now, not after the work
        check_identity(read_manifest(path)["identity"], tokenizer, path)
    side = image_side(model, tokenizer)
    prompts = list(prompt_suite() if prompts is None else prompts)
    judge = judge if judge is not None else load_shapes_judge()
    sampling = dict(guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p)
    protocol = {
        "model": name,
        "tokenizer": (model.tokenizer_id or {}).get("name"),
        "dataset": "shapes",
        "image_size": side,
        "prompt_suite": PROMPT_SUITE_VERSION,
        "num_prompts": len(prompts),
        "num_heldout_prompts": sum(p.heldout for p in prompts),
        "samples_per_prompt": samples_per_prompt,
        **sampling,
        "seed": seed,
        "seeding": "prompt i: one sampling call of samples_per_prompt rows with seed + i",
        "data_seed": data_seed,
    }
    report = UnifiedReport(name, protocol)
    skipped = report.skipped
    space = None
    if gfd is not False:
        try:
            space = _gfd_space(gfd_size)
        except (FileNotFoundError, ImportError) as err:
            if gfd is True:
                raise
            skipped[GFD_LABEL] = f"skipped: {err}"
    if prompts:
        report.samples, figures = text_to_image(
            model,
            tokenizer,
            judge,
            prompts,
            samples_per_prompt=samples_per_prompt,
            sampling=sampling,
            seed=seed,
            gfd_space=space,
            progress=progress,
        )
        figures = {k: MetricResult(v.value, {**protocol, **v.protocol}, v.std) for k, v in figures.items()}
        report.metrics.update(figures)
        if space is not None and GFD_LABEL not in figures:
            skipped[GFD_LABEL] = "skipped: a Frechet distance needs at least 2 images"
    for split in caption_splits:
        count = max(caption_images_per_split, bits_images_per_split)
        if not count:
            break
        items = split_images(split, side, count, data_seed)
        if bits_images_per_split:
            chosen = items[:bits_images_per_split]
            codes = encode_alone(tokenizer, torch.stack([it["image"] for it in chosen]))
            captions = [it["caption"] for it in chosen]
            source = {"split": split, "source": f"shapes {split} images 0..{len(chosen) - 1}, encoded"}
            report.metrics.update(
                _bits_figures(model, codes, captions, split, {**protocol, **source}, batch_size)
            )
            if likelihood_attributes:
                truths = [it["attributes"] for it in chosen]
                report.metrics.update(
                    likelihood_figures(
                        model, codes, truths, split, likelihood_attributes, {**protocol, **source}, batch_size
                    )
                )
        if caption_images_per_split:
            captioned = caption_images(
                model, tokenizer, items[:caption_images_per_split], split, batch_size=batch_size,
                rerank=caption_rerank, rerank_caption_weight=caption_rerank_weight, progress=progress,
            )  # fmt: skip
            report.captions.extend(captioned)
            figures = _caption_figures(captioned, split, caption_rerank, caption_rerank_weight)
            for key, value in figures.items():
                report.metrics[key] = MetricResult(value.value, {**protocol, **value.protocol})
    for path in bits_token_sets:
        report.metrics.update(
            _token_set_bits(model, tokenizer, path, bits_images_per_split or None, protocol, batch_size)
        )
    return report


def _bits_figures(
    model: Any,
    codes: Tensor,
    captions: Sequence[str],
    label: str,
    protocol: dict[str, Any],
    batch_size: int = 16,
) -> dict[str, MetricResult]:
    """``bits/image token[label]`` and ``bits/image[label]`` of codes (B, h, w, *code_shape)."""
    per_token, per_image, tokens = bits_per_image_token(model, codes, captions, batch_size)
    uniform = math.log2(model.layout.codebook_size)
    bits_protocol = {
        **protocol,
        "num_images": len(codes),
        "image_tokens_per_image": tokens,
        "definition": "mean -log2 p(pixel-prefix sub-code | caption, earlier sub-codes), teacher forced "
        "(the model's image loss)",
    }
    return {
        f"bits/image token[{label}]": MetricResult(
            per_token, {**bits_protocol, "baselines": {"uniform": uniform}}
        ),
        f"bits/image[{label}]": MetricResult(
            per_image, {**bits_protocol, "baselines": {"uniform": uniform * tokens}}
        ),
    }


def _token_set_bits(
    model: Any,
    tokenizer: Any,
    path: str | os.PathLike,
    limit: int | None,
    protocol: dict[str, Any],
    batch_size: int = 16,
) -> dict[str, MetricResult]:
    """Bits per image token on a token set written by ``polytok encode`` with this model's tokenizer."""
    from polytok.tokensets.shards import load_token_shards

    rows = load_token_shards(path, tokenizer=tokenizer, limit=limit)  # another tokenizer is refused
    codes = rows["codes"]
    if not len(codes):
        raise ValueError(f"token set {path} holds no samples")
    if tuple(codes.shape[1:3]) != model.layout.grid:
        raise ValueError(
            f"token set {path} holds a {codes.shape[1]} x {codes.shape[2]} grid of codes; this model reads "
            f"{model.layout.grid[0]} x {model.layout.grid[1]}: encode at the model's image size"
        )
    label = f"set {Path(path).name}"
    source = {"source": f"token set {path}, its first {len(codes)} samples"}
    return _bits_figures(model, codes, rows["captions"], label, {**protocol, **source}, batch_size)
