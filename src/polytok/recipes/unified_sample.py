"""Images from prompts and captions from image files with a trained unified model (``polytok generate``,
``polytok caption``); each yields one record per image, the JSON line the command prints."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from polytok.unified.model import UnifiedModel
from polytok.unified.sampling import (
    check_guidance_scale,
    check_prompt_lengths,
    generate_captions,
    generate_image_codes,
)


def fresh_names(out_dir: Path, names: Sequence[str]) -> list[Path]:
    """``names`` in ``out_dir``, or, when any of them is taken, all with the first suffix ``-2``, ``-3``
    ... that takes none: a run never overwrites an earlier run's files."""
    out_dir = Path(out_dir)
    run = 1
    while True:
        suffix = "" if run == 1 else f"-{run}"
        paths = [out_dir / f"{Path(n).stem}{suffix}{Path(n).suffix}" for n in names]
        if not any(p.exists() for p in paths):
            return paths
        run += 1


def generate_files(
    model: UnifiedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    out_dir: str | Path,
    *,
    num_samples: int = 1,
    seed: int = 0,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 8,
) -> Iterator[dict[str, Any]]:
    """``num_samples`` PNG files per prompt in ``out_dir`` (``<prompt>_<sample>.png``, both 0-based; when
    ``out_dir`` already holds one of these names, every file gets the first free suffix ``-2``, ``-3``
    ...: an earlier run's images are kept). Every prompt must fit the model's caption length, checked
    with the other arguments before any image is sampled.

    The samples of one prompt are drawn in batches of ``batch_size``, batch j with seed ``seed + j``: the
    same arguments give the same files. Yields ``{"prompt", "sample", "path"}`` per image.
    """
    from polytok.image_io import save_images

    if not prompts:
        raise ValueError("no prompt given")
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    from polytok.unified.sampling import SamplingOptions

    SamplingOptions(temperature, top_k, top_p)
    check_guidance_scale(guidance_scale)
    check_prompt_lengths(model, prompts)
    model.check_tokenizer(tokenizer)
    names = fresh_names(
        Path(out_dir), [f"{p:03d}_{i:03d}.png" for p in range(len(prompts)) for i in range(num_samples)]
    )
    for p, prompt in enumerate(prompts):
        for j, start in enumerate(range(0, num_samples, batch_size)):
            count = min(batch_size, num_samples - start)
            codes = generate_image_codes(
                model,
                [prompt] * count,
                guidance_scale=guidance_scale,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                seed=seed + j,
            )
            chosen = names[p * num_samples + start : p * num_samples + start + count]
            paths = save_images(model.decode_images(codes, tokenizer), chosen)
            for i, path in enumerate(paths):
                yield {"prompt": prompt, "sample": start + i, "path": str(path)}


def caption_files(
    model: UnifiedModel,
    tokenizer: Any,
    images: Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    rerank: Sequence[str] = (),
) -> Iterator[dict[str, str | None]]:
    """Captions of image files, read at the model's resolution (grid x tokenizer stride); greedy by default.

    Yields ``{"image", "caption"}`` per image; with ``rerank`` (``shapes`` attribute names) also
    ``"reranked"``: the caption with those attributes re-ranked by the model's text -> image likelihood
    (:mod:`polytok.eval.unified.rerank`), None for a caption outside the ``shapes`` grammar.
    """
    from polytok.data.shapes import caption_for
    from polytok.eval.shapes.captions import parse_caption
    from polytok.eval.unified.rerank import check_rerank, rerank_captions
    from polytok.image_io import load_images

    check_rerank(rerank)
    model.check_tokenizer(tokenizer)
    h, w = model.layout.grid
    if h != w:
        raise ValueError(f"captioning reads square images; this model's grid is {h} x {w}")
    size = h * tokenizer.stride
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        codes = tokenizer.encode(load_images(chunk, size).to(tokenizer.device))
        captions = generate_captions(
            model,
            codes.to(model.device),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        if not rerank:
            for image, caption in zip(chunk, captions):
                yield {"image": image, "caption": caption}
            continue
        parses = rerank_captions(model, codes.to(model.device), [parse_caption(c) for c in captions], rerank)
        for image, caption, parse in zip(chunk, captions, parses):
            better = None if parse is None else caption_for(parse)
            yield {"image": image, "caption": caption, "reranked": better}
