"""Sampling: images from captions (with classifier-free guidance) and captions from images.

Both loops run the backbone with its KV cache (``use_cache=True``) or recompute the whole sequence at
every step (``use_cache=False``, the reference the cache is checked and measured against). Randomness
comes from one CPU generator seeded by ``seed``, one uniform draw per sampled token of each sample, so
a result depends on the seed only, not on the cache, the device or the batch's guidance rows.

Guidance batches conditional and unconditional rows together and is applied to the logits at every
depth step: ``cond + (scale - 1) * (cond - uncond)``, which is exactly ``cond`` at scale 1. The
unconditional prompt is the text -> image prompt of the empty caption, the path caption dropout trains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from polytok.unified.model import UnifiedModel


@dataclass(frozen=True)
class SamplingOptions:
    """temperature 0 = greedy (argmax); top_k 0 = off; top_p 1 = off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """(R, V) logits with everything outside the top-k and the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``; the most
    likely token is always kept.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(logits: Tensor, options: SamplingOptions, uniforms: Tensor | None) -> Tensor:
    """(R, V) logits -> (R,) ids: argmax when greedy, else inverse-CDF sampling with ``uniforms`` (R,)."""
    if options.greedy:
        return logits.argmax(dim=-1)
    assert uniforms is not None
    logits = filter_logits(logits.double() / options.temperature, options.top_k, options.top_p)
    probs = logits.softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    target = uniforms.to(cdf.device, cdf.dtype)[:, None] * cdf[:, -1:]
    ids = torch.searchsorted(cdf, target, right=True)[:, 0]
    # a token of probability 0 is never found (its cdf equals its predecessor's), except past the end:
    # rounding can put the target there; fall back to the last token with probability > 0
    if bool((ids == cdf.shape[-1]).any()):
        last = (probs > 0).long().cumsum(dim=-1).argmax(dim=-1)
        ids = torch.minimum(ids, last)
    return ids


def check_guidance_scale(scale: float, name: str = "guidance_scale") -> None:
    """Refuse a guidance scale that is not a finite number (nan or inf logits give a flat image)."""
    if not math.isfinite(scale):
        raise ValueError(f"{name} must be a finite number (1: no guidance), got {scale}")


def check_prompt_lengths(model: UnifiedModel, captions: Sequence[str], what: str = "prompt") -> None:
    """Refuse a caption longer than the model reads (``max_caption_tokens``): cut, two prompts that differ
    only past the limit would give the same images."""
    limit = model.config.max_caption_tokens
    for i, caption in enumerate(captions, start=1):
        count = len(model.text_tokenizer.encode(caption))
        if count > limit:
            raise ValueError(
                f"{what} {i} is {count} text tokens long; this model reads at most {limit} tokens of a "
                f"prompt (max_caption_tokens) and would ignore the rest: shorten it"
            )


class _Draws:
    """One uniform per sample and sampled token, from a seeded CPU generator."""

    def __init__(self, seed: int, options: SamplingOptions) -> None:
        self.options = options
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, rows: int) -> Tensor | None:
        return (
            None if self.options.greedy else torch.rand(rows, generator=self.generator, dtype=torch.float64)
        )


def _left_pad(
    prompts: Sequence[Sequence[int]], pad: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Prompts -> (ids (R, P), attention mask (R, P), position ids (R, P)), left-padded."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        if p:
            ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            mask[row, width - len(p) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


class _Stepper:
    """Feeds new input embeddings to the backbone, with its KV cache or by recomputing everything."""

    def __init__(self, model: UnifiedModel, embeds: Tensor, mask: Tensor, positions: Tensor, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.embeds, self.mask, self.positions = embeds, mask, positions
        hidden, self.cache = model.run_backbone(embeds, mask, positions, None, use_cache)
        self.last = hidden[:, -1]

    def feed(self, new: Tensor) -> Tensor:
        """(R, 1, hidden) next inputs -> (R, hidden) last hidden state."""
        ones = self.mask.new_ones(self.mask.shape[0], 1)
        self.mask = torch.cat([self.mask, ones], dim=1)
        step_pos = self.positions[:, -1:] + 1
        self.positions = torch.cat([self.positions, step_pos], dim=1)
        if self.use_cache:
            hidden, self.cache = self.model.run_backbone(new, self.mask, step_pos, self.cache, True)
        else:
            self.embeds = torch.cat([self.embeds, new], dim=1)
            hidden, _ = self.model.run_backbone(self.embeds, self.mask, self.positions)
        self.last = hidden[:, -1]
        return self.last


def _guided(logits: Tensor, batch: int, scale: float) -> Tensor:
    if logits.shape[0] == batch:
        return logits
    cond, uncond = logits[:batch], logits[batch:]
    return cond + (scale - 1.0) * (cond - uncond)


def _sample_position(
    model: UnifiedModel,
    h: Tensor,
    batch: int,
    scale: float,
    options: SamplingOptions,
    draws: _Draws,
    use_cache: bool,
) -> Tensor:
    """Depth-head sampling of one position: h (R, hidden) -> sub-codes (B, S); guidance at every step."""
    head = model.depth_head
    copies = h.shape[0] // batch
    codes = torch.zeros(h.shape[0], head.depth, dtype=torch.long, device=h.device)
    by_copy = codes.view(copies, batch, head.depth)  # guidance rows repeat the conditional rows' codes
    cache = head.new_cache()
    for s in range(head.depth):
        logits = head.step(h, codes[:, :s], cache) if use_cache else head(h, codes[:, :s])[:, -1]
        by_copy[:, :, s] = choose_tokens(_guided(logits, batch, scale), options, draws(batch)).to(h.device)
    return codes[:batch]


@torch.no_grad()
def sample_image_codes(
    model: UnifiedModel,
    prompts: Sequence[Sequence[int]],
    *,
    uncond_prompts: Sequence[Sequence[int]] | None = None,
    guidance_scale: float = 1.0,
    options: SamplingOptions | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> Tensor:
    """Image codes for B prompt id lists (each ending with <boi>) -> (B, N, pixel_levels, C).

    With ``uncond_prompts`` (B of them) the unconditional rows run in the same batch and guidance with
    ``guidance_scale`` is applied; without, the samples are conditional.
    """
    options = options or SamplingOptions()
    batch = len(prompts)
    if batch == 0:
        raise ValueError("no prompts to sample from")
    rows = list(prompts)
    if uncond_prompts is not None:
        if len(uncond_prompts) != batch:
            raise ValueError(f"got {batch} prompts but {len(uncond_prompts)} unconditional prompts")
        rows += list(uncond_prompts)
    layout = model.layout
    ids, mask, positions = _left_pad(rows, model.special.pad, model.device)
    stepper = _Stepper(model, model.embed_t2i_prompt(ids), mask, positions, use_cache)
    draws = _Draws(seed, options)
    shape = (layout.pixel_levels, layout.codebooks)
    out = []
    for i in range(layout.num_positions):
        codes = _sample_position(model, stepper.last, batch, guidance_scale, options, draws, use_cache)
        out.append(codes)
        if i + 1 < layout.num_positions:
            step = codes.repeat(len(rows) // batch, 1).view(len(rows), 1, *shape)
            stepper.feed(model.embed_image_step(step, i))
    return torch.stack(out, dim=1).view(batch, layout.num_positions, *shape)


@torch.no_grad()
def generate_image_codes(
    model: UnifiedModel,
    captions: Sequence[str],
    *,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
) -> Tensor:
    """Captions -> tokenizer codes (B, h, w, *code_shape) of the pixel prefix, ready for ``decode``.

    ``guidance_scale`` 1 samples conditionally (no unconditional rows are run).
    """
    if isinstance(captions, str):
        raise ValueError("captions must be a list of strings, got one string")
    check_guidance_scale(guidance_scale)
    check_prompt_lengths(model, captions, "caption")
    fmt, text = model.format, model.text_tokenizer
    prompts = [fmt.t2i_prompt(text.encode(c)) for c in captions]
    uncond = [fmt.unconditional_prompt()] * len(prompts) if guidance_scale != 1.0 else None
    codes = sample_image_codes(
        model,
        prompts,
        uncond_prompts=uncond,
        guidance_scale=guidance_scale,
        options=SamplingOptions(temperature, top_k, top_p),
        seed=seed,
        use_cache=use_cache,
    )
    return model.layout.from_levels(codes)


@torch.no_grad()
def generate_images(model: UnifiedModel, tokenizer: Any, captions: Sequence[str], **kwargs: Any) -> Tensor:
    """Captions -> images (B, 3, H, W) in [0, 1], decoded by the tokenizer the model was trained on.

    Keywords as :func:`generate_image_codes`. Another tokenizer is refused before any sampling.
    """
    model.check_tokenizer(tokenizer)  # once: hashing the tokenizer's weights is not free
    codes = generate_image_codes(model, captions, **kwargs)
    return tokenizer.decode(codes.to(tokenizer.device))


@torch.no_grad()
def sample_caption_ids(
    model: UnifiedModel,
    codes: Tensor,
    *,
    max_new_tokens: int = 32,
    options: SamplingOptions | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> list[list[int]]:
    """Tokenizer codes (B, h, w, *code_shape) -> B caption id lists (text tokens, without <eos>)."""
    options = options or SamplingOptions(temperature=0.0)
    fmt, special = model.format, model.special
    images = model.layout.to_levels(codes)
    batch = fmt.collate([fmt.i2t_prompt(image) for image in images]).to(model.device)
    stepper = _Stepper(
        model, model.embed_sequence(batch), batch.attention_mask, batch.position_ids, use_cache
    )
    draws = _Draws(seed, options)
    vocab = model.text_logits(stepper.last[:1]).shape[-1]
    allowed = torch.zeros(vocab, dtype=torch.bool, device=model.device)
    allowed[: special.pad] = True  # text tokens, then <eos>; never another special token
    allowed[special.eos] = True
    b = images.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=model.device)
    out: list[list[int]] = [[] for _ in range(b)]
    for step in range(max_new_tokens):
        logits = model.text_logits(stepper.last).masked_fill(~allowed, float("-inf"))
        ids = choose_tokens(logits, options, draws(b)).to(model.device)
        ids = torch.where(done, torch.full_like(ids, special.eos), ids)
        for row in (~done & (ids != special.eos)).nonzero().flatten().tolist():
            out[row].append(int(ids[row]))
        done |= ids == special.eos
        if bool(done.all()) or step + 1 == max_new_tokens:
            break
        stepper.feed(model.embed_text(ids[:, None]))
    return out


@torch.no_grad()
def generate_captions(
    model: UnifiedModel,
    codes: Tensor,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    use_cache: bool = True,
) -> list[str]:
    """Tokenizer codes (B, h, w, *code_shape) -> B captions; temperature 0 is greedy."""
    ids = sample_caption_ids(
        model,
        codes,
        max_new_tokens=max_new_tokens,
        options=SamplingOptions(temperature, top_k, top_p),
        seed=seed,
        use_cache=use_cache,
    )
    return [model.text_tokenizer.decode(row) for row in ids]
