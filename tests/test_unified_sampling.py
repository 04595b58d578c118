"""Sampling images and captions: KV cache = full recomputation, guidance, seeds, top-k / top-p, decoding."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from polytok.unified import (
    SamplingOptions,
    TokenizerMismatchError,
    choose_tokens,
    filter_logits,
    generate_captions,
    generate_image_codes,
    generate_images,
    sample_caption_ids,
    sample_image_codes,
)
from unified_helpers import CAPTIONS, LAYOUTS, random_codes, text_tokenizer, tiny_model, tokenizer

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "unified_sampling.py"
SAMPLED = {"temperature": 1.0, "top_k": 40, "top_p": 0.9}


def _prompts(model, captions):
    return [model.format.t2i_prompt(model.text_tokenizer.encode(c)) for c in captions]


# -- KV cache against full recomputation ------------------------------------------------------------


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_image_sampling_with_cache_equals_recomputation(name, mode) -> None:
    extra = {"image_positions": "learned_2d"} if name == "evotok-tiny" else {}
    model = tiny_model(name, **extra)
    kwargs = {"temperature": 0.0} if mode == "greedy" else {**SAMPLED, "guidance_scale": 2.5}
    captions = [CAPTIONS[0], CAPTIONS[2]]  # different lengths: left padding is exercised
    cached = generate_image_codes(model, captions, seed=5, **kwargs)
    recomputed = generate_image_codes(model, captions, seed=5, use_cache=False, **kwargs)
    assert cached.shape[:3] == (2, 3, 3)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("image_positions", ["none", "learned_2d"])
def test_cached_backbone_states_equal_recomputation(image_positions) -> None:
    """Every hidden state the sampler reads agrees between the KV cache and recomputation (left-padded rows
    with guidance rows), far below the gaps between logits."""
    from polytok.unified.sampling import _left_pad, _Stepper

    model = tiny_model("evotok-tiny", image_positions=image_positions)
    layout = model.layout
    prompts = [*_prompts(model, [CAPTIONS[2], CAPTIONS[0]]), model.format.unconditional_prompt()]
    ids, mask, pos = _left_pad(prompts, model.special.pad, model.device)
    steppers = [
        _Stepper(model, model.embed_t2i_prompt(ids), mask, pos, use_cache) for use_cache in (True, False)
    ]
    codes = layout.to_levels(random_codes(model, 3))[:, :, : layout.pixel_levels]
    for i in range(layout.num_positions):
        torch.testing.assert_close(steppers[0].last, steppers[1].last, rtol=0, atol=1e-10)
        for stepper in steppers:
            stepper.feed(model.embed_image_step(codes[:, i : i + 1], i))


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_caption_sampling_with_cache_equals_recomputation(mode) -> None:
    model = tiny_model("polytok-tiny")
    options = SamplingOptions(temperature=0.0) if mode == "greedy" else SamplingOptions(**SAMPLED)
    codes = random_codes(model, 3)
    cached = sample_caption_ids(model, codes, max_new_tokens=12, options=options, seed=2)
    recomputed = sample_caption_ids(model, codes, max_new_tokens=12, options=options, seed=2, use_cache=False)
    assert cached == recomputed
    assert all(len(row) > 0 for row in cached)
    assert all(0 <= t < model.special.pad for row in cached for t in row)  # text tokens only


def test_generated_codes_have_the_pixel_prefix_shape() -> None:
    for name in LAYOUTS:
        model = tiny_model(name)
        layout = model.layout
        codes = generate_image_codes(model, [CAPTIONS[1]], seed=0)
        shape = list(layout.code_shape)
        if layout.level_axis:
            shape[0] = layout.pixel_levels
        assert codes.shape == (1, 3, 3, *shape)
        assert int(codes.min()) >= 0 and int(codes.max()) < layout.codebook_size


def test_greedy_batch_equals_each_prompt_alone() -> None:
    """Left padding, position ids and masks keep the rows of a batch independent."""
    model = tiny_model("evotok-tiny")
    captions = [CAPTIONS[2], CAPTIONS[0], ""]
    together = generate_image_codes(model, captions, temperature=0.0)
    for row, caption in enumerate(captions):
        assert torch.equal(generate_image_codes(model, [caption], temperature=0.0)[0], together[row])


# -- guidance ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unitok-tiny", "polytok-tiny"])
def test_guidance_scale_one_equals_conditional_sampling(name) -> None:
    model = tiny_model(name)
    prompts = _prompts(model, [CAPTIONS[0], CAPTIONS[3]])
    uncond = [model.format.unconditional_prompt()] * 2
    options = SamplingOptions(**SAMPLED)
    conditional = sample_image_codes(model, prompts, options=options, seed=7)
    batched = sample_image_codes(
        model, prompts, uncond_prompts=uncond, guidance_scale=1.0, options=options, seed=7
    )
    assert torch.equal(batched, conditional)
    guided = sample_image_codes(
        model, prompts, uncond_prompts=uncond, guidance_scale=4.0, options=options, seed=7
    )
    assert not torch.equal(guided, conditional)  # the unconditional rows do act at other scales


def test_unconditional_prompt_is_the_dropped_caption_path() -> None:
    model = tiny_model("polytok-tiny")
    fmt = model.format
    assert fmt.unconditional_prompt() == fmt.t2i_prompt([])
    # the prompt of a training sequence whose caption was dropped
    batch = fmt.training_batch(
        random_codes(model, 1), [model.text_tokenizer.encode(CAPTIONS[4])], ["t2i"], caption_dropout=1.0
    )
    assert batch.token_ids[0, : int(batch.image_start[0])].tolist() == fmt.unconditional_prompt()
    # guidance on the empty caption: conditional and unconditional rows agree, so any scale gives the
    # conditional sample; a caption makes them differ
    empty_1 = generate_image_codes(model, [""], guidance_scale=1.0, seed=3, **SAMPLED)
    assert torch.equal(generate_image_codes(model, [""], guidance_scale=5.0, seed=3, **SAMPLED), empty_1)
    caption_1 = generate_image_codes(model, [CAPTIONS[2]], guidance_scale=1.0, seed=3, **SAMPLED)
    assert not torch.equal(
        generate_image_codes(model, [CAPTIONS[2]], guidance_scale=5.0, seed=3, **SAMPLED), caption_1
    )


def test_guidance_is_applied_at_every_depth_step() -> None:
    """The guided logits of each sub-code are cond + (s - 1)(cond - uncond), step by step."""
    from polytok.unified.sampling import _guided

    cond, uncond = torch.randn(2, 7, dtype=torch.float64), torch.randn(2, 7, dtype=torch.float64)
    torch.testing.assert_close(_guided(torch.cat([cond, uncond]), 2, 3.0), 3 * cond - 2 * uncond)
    assert torch.equal(_guided(torch.cat([cond, uncond]), 2, 1.0), cond)
    # greedy guided sampling picks, at every depth step, the argmax of the guided logits computed here
    # from separate conditional and unconditional passes
    model = tiny_model("unitok-tiny")
    prompt, uncond = _prompts(model, [CAPTIONS[1]])[0], model.format.unconditional_prompt()
    greedy = SamplingOptions(temperature=0.0)
    codes = sample_image_codes(model, [prompt], uncond_prompts=[uncond], guidance_scale=6.0, options=greedy)
    first = codes[0, 0].reshape(1, -1)  # the sub-codes of position 0

    def last_state(ids):
        n = len(ids)
        embeds = model.embed_text(torch.tensor([ids]))
        return model.run_backbone(embeds, torch.ones(1, n, dtype=torch.long), torch.arange(n)[None])[0][:, -1]

    h_cond, h_uncond = last_state(prompt), last_state(uncond)
    head = model.depth_head
    only_first_guided = []
    with torch.no_grad():
        for s in range(head.depth):
            cond = head(h_cond, first[:, :s])[:, -1]
            guided = cond + 5.0 * (cond - head(h_uncond, first[:, :s])[:, -1])
            assert int(first[0, s]) == int(guided.argmax())
            only_first_guided.append(int((guided if s == 0 else cond).argmax()))
    assert only_first_guided != first[0].tolist()  # guiding step 0 alone would have given other codes


# -- seeds and filters ------------------------------------------------------------------------------


def test_sampling_is_seeded() -> None:
    model = tiny_model("vq")
    a = generate_image_codes(model, [CAPTIONS[0]], seed=11, **SAMPLED)
    assert torch.equal(generate_image_codes(model, [CAPTIONS[0]], seed=11, **SAMPLED), a)
    assert not torch.equal(generate_image_codes(model, [CAPTIONS[0]], seed=12, **SAMPLED), a)
    codes = random_codes(model, 2)
    texts = generate_captions(model, codes, temperature=1.0, seed=4, max_new_tokens=10)
    assert generate_captions(model, codes, temperature=1.0, seed=4, max_new_tokens=10) == texts


def test_filter_logits_against_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g, dtype=torch.float64)
    kept = filter_logits(logits, top_k=7).isfinite()
    for row in range(6):
        assert set(kept[row].nonzero().flatten().tolist()) == set(logits[row].topk(7).indices.tolist())
    for p in (0.3, 0.75, 0.99):
        kept = filter_logits(logits, top_p=p).isfinite()
        for row in range(6):
            probs = logits[row].softmax(-1)
            order = probs.argsort(descending=True).tolist()
            n = next(i + 1 for i in range(50) if probs[order[: i + 1]].sum() >= p)  # smallest nucleus
            assert set(kept[row].nonzero().flatten().tolist()) == set(order[:n])
    both = filter_logits(logits, top_k=3, top_p=0.999).isfinite()
    assert (both.sum(-1) <= 3).all()


def test_inverse_cdf_sampling_follows_the_probabilities() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -30.0]], dtype=torch.float64)
    probs = logits.softmax(-1)[0]
    n = 20_000
    uniforms = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # evenly spread draws
    ids = choose_tokens(logits.expand(n, -1), SamplingOptions(temperature=1.0), uniforms)
    counts = torch.bincount(ids, minlength=5).double() / n
    torch.testing.assert_close(counts, probs, rtol=0, atol=2.0 / n)
    top2 = choose_tokens(logits.expand(n, -1), SamplingOptions(top_k=2), uniforms)
    assert set(top2.tolist()) == {0, 3}
    greedy = choose_tokens(logits, SamplingOptions(temperature=0.0), None)
    assert greedy.tolist() == [0]
    for options in (SamplingOptions(top_k=1), SamplingOptions(top_p=1e-6)):
        assert set(choose_tokens(logits.expand(100, -1), options, uniforms[:: n // 100]).tolist()) == {0}
    with pytest.raises(ValueError):
        SamplingOptions(top_p=0.0)


def test_a_draw_at_the_very_end_falls_back_to_the_last_possible_token() -> None:
    """A target at the total probability (what rounding can give) is past every token: the last token
    of probability > 0 is chosen, never a filtered-out one or an index past the vocabulary."""
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -30.0], [0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    end = torch.ones(2, dtype=torch.float64)
    assert choose_tokens(logits, SamplingOptions(), end).tolist() == [4, 4]
    assert choose_tokens(logits, SamplingOptions(top_k=2), end).tolist() == [3, 4]  # row 1: a tie of 4
    inside = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert choose_tokens(logits, SamplingOptions(top_k=1), inside).tolist() == [0, 1]


# -- decoding and captions --------------------------------------------------------------------------


def test_generate_images_decodes_with_the_recorded_tokenizer_only() -> None:
    model = tiny_model("polytok-tiny")
    images = generate_images(model, tokenizer("polytok-tiny"), [CAPTIONS[0], CAPTIONS[1]], seed=0)
    assert images.shape == (2, 3, 12, 12) and float(images.min()) >= 0 and float(images.max()) <= 1
    with pytest.raises(TokenizerMismatchError):
        generate_images(model, tokenizer("unitok-tiny"), [CAPTIONS[0]])


def test_generate_images_hashes_the_tokenizer_weights_once() -> None:
    """The identity check reads every tokenizer weight; generating checks it once, and decodes the very
    codes generate_image_codes samples."""
    model = tiny_model("evotok-tiny")
    tok = copy.deepcopy(tokenizer("evotok-tiny"))  # the shared instance stays unpatched
    reads = []
    state_dict = tok.checkpoint_state_dict

    def counted():
        reads.append(1)
        return state_dict()

    tok.checkpoint_state_dict = counted
    images = generate_images(model, tok, [CAPTIONS[0]], seed=3)
    assert len(reads) == 1
    codes = generate_image_codes(model, [CAPTIONS[0]], seed=3)
    torch.testing.assert_close(images, tok.decode(codes), rtol=0, atol=0)


def test_greedy_captions_are_text() -> None:
    model = tiny_model("unitok-tiny")
    codes = random_codes(model, 2)
    texts = generate_captions(model, codes, max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    ids = sample_caption_ids(model, codes, max_new_tokens=6)
    assert texts == [text_tokenizer().decode(row) for row in ids]
    with pytest.raises(ValueError, match="codes must have shape"):
        generate_captions(model, codes[:, :2])


# -- the benchmark ----------------------------------------------------------------------------------


def test_sampling_benchmark_runs_and_both_paths_agree(tmp_path) -> None:
    out = tmp_path / "rows.json"
    subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--tokenizers",
            "evotok-tiny",
            "--threads",
            "1",
            "--json",
            str(out),
        ],
        check=True,
        timeout=600,
    )
    rows = json.loads(out.read_text())
    assert rows and all(r["tokens equal"] for r in rows)
    assert all(r["cached img/s"] > 0 and r["recomputed img/s"] > 0 for r in rows)
    # training throughput in the same run: a t2i and an i2t row of a 3 x 3 grid, 9 image positions each
    assert all(r["train tokens / step"] > 2 * 9 and r["train tokens/s"] > 0 for r in rows)
