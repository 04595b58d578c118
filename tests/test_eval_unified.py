"""The unified model's evaluation on ``shapes``: the prompt suite, the caption parser, the scores and
baselines against naive counts, and an end-to-end run of a tiny unified model trained here."""

from __future__ import annotations

import base64
import copy
import dataclasses
import html
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polytok.cli import main
from polytok.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    COUNTS,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    TASK_CLASSES,
    ShapesDataset,
    caption_for,
)
from polytok.eval import PROMPT_SUITE_VERSION, evaluate_unified, parse_caption, prompt_suite
from polytok.eval.html.unified import render_unified_section
from polytok.eval.shapes.baselines import chance, single_attribute_baselines, zero_shot_baselines
from polytok.eval.shapes.captions import CAPTION_ATTRIBUTES
from polytok.eval.shapes.judge import JUDGED_ATTRIBUTES, load_shapes_judge
from polytok.eval.shapes.scores import accuracy, correct_flags
from polytok.unified import UnifiedModel, train_text_tokenizer
from unified_helpers import tiny_config, tokenizer

# -- the caption parser --------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "heldout"])
def test_every_dataset_caption_parses_back_to_its_attributes(split) -> None:
    seen = set()
    for seed in range(4):
        data = ShapesDataset(split, image_size=16, length=150, seed=seed)
        for i in range(len(data)):
            item = data[i]
            assert parse_caption(item["caption"]) == item["attributes"], item["caption"]
            seen.add(item["caption"])
    assert len(seen) > 300  # many distinct captions, not one repeated


def test_parser_reads_a_hand_written_caption() -> None:
    # the dataset's own example: "two small red triangles at the top on a striped background"
    expected = {
        "shape": SHAPES.index("triangle"),
        "colour": list(COLOURS).index("red"),
        "size": SIZES.index("small"),
        "position": POSITIONS.index("at the top"),
        "count": COUNTS.index("two objects"),
        "background": BACKGROUNDS.index("striped"),
    }
    assert parse_caption("two small red triangles at the top on a striped background") == expected
    assert parse_caption("  Two small red  triangles at the top on a striped background. ") == expected
    one = parse_caption("a large cyan star in the centre on a noisy background")
    assert one == {"shape": 3, "colour": 6, "size": 1, "position": 4, "count": 0, "background": 2}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a large cyan stars on the centre on a striped background",  # singular word, plural noun
        "two large red star in the centre on a striped background",  # plural word, singular noun
        "two small red triangles at the top",  # no background
        "two small magenta triangles at the top on a striped background",  # unknown colour
        "two small red triangles at the top on a striped background and a dog",
        "four small red triangles at the top on a striped background",
        "small red triangles",
    ],
)
def test_malformed_captions_do_not_parse(text) -> None:
    assert parse_caption(text) is None


# -- the prompt suite ----------------------------------------------------------------------------------


def test_prompt_suite_covers_every_pair_in_the_dataset_grammar() -> None:
    suite = prompt_suite()
    assert len(suite) == len(SHAPES) * len(COLOURS)
    assert sorted(p.pair for p in suite) == sorted((s, c) for s in SHAPES for c in COLOURS)
    assert {p.pair for p in suite if p.heldout} == set(HELDOUT_PAIRS)
    assert [p.index for p in suite] == list(range(len(suite)))
    for prompt in suite:
        assert prompt.caption == caption_for(prompt.attributes)
        assert parse_caption(prompt.caption) == prompt.attributes
    for name in ("count", "size", "position", "background"):  # varied, not one fixed value
        assert len({p.attributes[name] for p in suite}) == len(TASK_CLASSES[name])
    assert PROMPT_SUITE_VERSION.startswith("shapes-prompts/")


def test_prompt_suite_is_deterministic_and_extends() -> None:
    assert [p.to_dict() for p in prompt_suite()] == [p.to_dict() for p in prompt_suite()]
    base, larger = prompt_suite(), prompt_suite(prompts_per_pair=3)
    assert len(larger) == 3 * len(base)
    assert [p.caption for p in larger[::3]] == [p.caption for p in base]
    assert len({p.caption for p in larger}) > len(base)
    with pytest.raises(ValueError, match="prompts_per_pair"):
        prompt_suite(0)


# -- scores and baselines ------------------------------------------------------------------------------


def test_scores_against_hand_made_readings() -> None:
    attributes = ("shape", "colour", "count")
    truths = [
        {"shape": 0, "colour": 1, "count": 2},
        {"shape": 3, "colour": 3, "count": 0},
        {"shape": 5, "colour": 6, "count": 1},
        {"shape": 2, "colour": 0, "count": 0},
    ]
    readings = [
        {"shape": 0, "colour": 1, "count": 2},  # all right
        {"shape": 3, "colour": 2, "count": 0},  # colour wrong
        None,  # unparsed: wrong everywhere
        {"shape": 1, "colour": 0, "count": 1},  # only the colour right
    ]
    scores = accuracy([correct_flags(r, t, attributes) for r, t in zip(readings, truths)])
    expected = {}
    for name in attributes:
        expected[name] = sum(r is not None and r[name] == t[name] for r, t in zip(readings, truths)) / 4
    expected["all"] = sum(r == t for r, t in zip(readings, truths)) / 4
    expected["pair"] = (
        sum(
            r is not None and r["shape"] == t["shape"] and r["colour"] == t["colour"]
            for r, t in zip(readings, truths)
        )
        / 4
    )
    assert scores == expected
    assert scores == {"shape": 0.5, "colour": 0.5, "count": 0.5, "all": 0.25, "pair": 0.25}


def _brute_force_pair_baseline(items, known: str, k: int = 1) -> float:
    """Mean over items of the chance that the truth is among k picks, without replacement, from the
    object classes of the dataset that share the item's ``known`` name."""
    total = 0.0
    for item in items:
        truth_name = (SHAPES if known == "shape" else list(COLOURS))[item["attributes"][known]]
        agreeing = 0
        for object_name in TASK_CLASSES["object"]:
            colour_name, shape_name = object_name.split(" ")
            agreeing += (shape_name if known == "shape" else colour_name) == truth_name
        total += min(k, agreeing) / agreeing
    return total / len(items)


@pytest.mark.parametrize("split", ["heldout", "val"])
def test_pair_baselines_against_a_brute_force_count(split) -> None:
    data = ShapesDataset(split, image_size=16, length=60, seed=3)
    items = [data[i] for i in range(len(data))]
    baselines = single_attribute_baselines([it["attributes"] for it in items], ("shape", "colour"))
    assert baselines["shape only"] == pytest.approx(_brute_force_pair_baseline(items, "shape"))
    assert baselines["colour only"] == pytest.approx(_brute_force_pair_baseline(items, "colour"))
    # knowing the colour beats knowing the shape: there are more colours than shapes to guess among
    assert baselines["colour only"] > baselines["shape only"] > chance(("shape", "colour"))
    zero_shot = zero_shot_baselines(TASK_CLASSES["object"])
    assert zero_shot["chance"] == pytest.approx(1 / len(TASK_CLASSES["object"]))
    assert zero_shot["shape only"] == pytest.approx(baselines["shape only"])
    assert zero_shot["colour only"] == pytest.approx(baselines["colour only"])
    assert zero_shot_baselines(SHAPES) == {"chance": 1 / len(SHAPES)}  # one attribute: chance only
    every_class = [
        {"attributes": {"shape": i // len(COLOURS), "colour": i % len(COLOURS)}} for i in range(42)
    ]
    top5 = zero_shot_baselines(TASK_CLASSES["object"], top_k=5)
    assert top5["chance"] == pytest.approx(5 / len(TASK_CLASSES["object"]))
    assert top5["shape only"] == pytest.approx(_brute_force_pair_baseline(every_class, "shape", k=5))
    assert top5["colour only"] == pytest.approx(_brute_force_pair_baseline(every_class, "colour", k=5))


def test_chance_is_the_product_of_the_class_counts() -> None:
    expected = 1.0
    for name in JUDGED_ATTRIBUTES:
        expected /= len(TASK_CLASSES[name])
    assert chance(JUDGED_ATTRIBUTES) == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown shapes attribute"):
        chance(["shade"])


def test_zero_shot_figure_carries_its_single_attribute_baselines() -> None:
    from polytok.hub import load_tokenizer
    from polytok.recipes.tokenizer_evaluation import evaluate_many

    (report,) = evaluate_many(
        [load_tokenizer("unitok-tiny")], ["unitok-tiny"], data="shapes", split="heldout", max_images=8,
        zero_shot_task="object", semantic_fidelity=False, linear_probe=False, batch_size=8,
    )  # fmt: skip
    baselines = report.metrics["zero-shot top-1"].protocol["baselines"]
    assert baselines == zero_shot_baselines(TASK_CLASSES["object"])
    top5 = report.metrics["zero-shot top-5"].protocol["baselines"]
    assert (
        top5 == zero_shot_baselines(TASK_CLASSES["object"], top_k=5) and top5["chance"] > baselines["chance"]
    )
    assert baselines["colour only"] > baselines["shape only"] > baselines["chance"]


# -- end to end with a tiny unified model ----------------------------------------------------------------

SIDE = 16  # a 4 x 4 grid of evotok-tiny codes


@pytest.fixture(scope="module")
def trained():
    """evotok-tiny (untrained preset) and a tiny unified model trained 6 steps on shapes captions."""
    data = ShapesDataset("train", image_size=SIDE, length=64, seed=0)
    items = [data[i] for i in range(16)]
    text = train_text_tokenizer([data[i]["caption"] for i in range(64)], vocab_size=300)
    tok = tokenizer("evotok-tiny")
    torch.manual_seed(0)
    model = UnifiedModel.from_tokenizer(tok, text, tiny_config(), grid=(4, 4)).double()
    codes = tok.encode(torch.stack([it["image"] for it in items]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    captions = text.encode_batch([it["caption"] for it in items])
    losses = []
    for _ in range(6):
        out = model(model.format.training_batch(codes, captions, ["t2i", "i2t"] * 8))
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0]
    return model.eval(), tok


def _run(model, tok, seed=0, gfd=False):
    suite = prompt_suite()
    prompts = [suite[0], suite[1], suite[8], suite[9]]  # red circle (held out), green circle, ...
    return evaluate_unified(
        model, tok, prompts=prompts, samples_per_prompt=2, guidance_scale=2.0, temperature=0.9, top_k=50,
        top_p=0.95, seed=seed, caption_images_per_split=3, bits_images_per_split=3, gfd=gfd, progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(trained):
    return _run(*trained, gfd=True)


def test_end_to_end_structure_and_protocol(trained, report) -> None:
    model = trained[0]
    assert [s.prompt.heldout for s in report.samples] == [True, False, True, False]
    for sample in report.samples:
        assert sample.images.dtype == torch.uint8 and sample.images.shape == (2, 3, SIDE, SIDE)
        assert len(sample.readings) == len(sample.correct) == 2
        for reading, flags in zip(sample.readings, sample.correct):
            for name in JUDGED_ATTRIBUTES:
                assert flags[name] == (reading[name] == sample.prompt.attributes[name])
            assert flags["all"] == all(flags[name] for name in JUDGED_ATTRIBUTES)
            assert flags["pair"] == (flags["shape"] and flags["colour"])
    # every t2i figure equals a naive count over the kept readings
    for group, heldout in (("seen", False), ("heldout", True)):
        readings = [
            (r, s.prompt.attributes)
            for s in report.samples
            if s.prompt.heldout == heldout
            for r in s.readings
        ]
        for name in JUDGED_ATTRIBUTES:
            naive = sum(r[name] == t[name] for r, t in readings) / len(readings)
            assert report.metrics[f"t2i[{group}] attr[{name}]"].value == naive
        pair = sum(r["shape"] == t["shape"] and r["colour"] == t["colour"] for r, t in readings)
        figure = report.metrics[f"t2i[{group}] attr[pair]"]
        assert figure.value == pair / len(readings)
        protocol = figure.protocol
        for key, value in (
            ("guidance_scale", 2.0), ("temperature", 0.9), ("top_k", 50), ("top_p", 0.95),
            ("samples_per_prompt", 2), ("seed", 0), ("prompt_suite", PROMPT_SUITE_VERSION),
        ):  # fmt: skip
            assert protocol[key] == value, key
        assert protocol["num_images"] == 4 and protocol["group"] == group
        baselines = protocol["baselines"]
        items = [{"attributes": s.prompt.attributes} for s in report.samples if s.prompt.heldout == heldout]
        assert baselines["shape only"] == pytest.approx(_brute_force_pair_baseline(items, "shape"))
        assert baselines["colour only"] == pytest.approx(_brute_force_pair_baseline(items, "colour"))
        # the judge's ceiling on real images: redrawn here from the documented seeds and read again
        renderer, judge = ShapesDataset("train", image_size=SIDE), load_shapes_judge()
        right = 0
        for sample in (s for s in report.samples if s.prompt.heldout == heldout):
            truth = sample.prompt.attributes
            for j in range(2):
                image = renderer.render(truth, np.random.default_rng([0, sample.prompt.index, j]))
                reading = judge.read(image[None])
                right += (
                    int(reading["shape"][0]) == truth["shape"]
                    and int(reading["colour"][0]) == truth["colour"]
                )
        assert baselines["judge on real images"] == pytest.approx(right / 4)
        assert {
            "chance",
            "shape only",
            "colour only",
            "judge on real images",
            "judge on reconstructions",
        } <= set(baselines)
    gfd = report.metrics["gFD (EfficientNet-Lite0)"]
    assert gfd.protocol["num_reference_images"] == gfd.protocol["num_compared_images"] == 8
    assert gfd.protocol["network_input_size"] == 128 and gfd.protocol["image_size"] == SIDE
    assert math.isfinite(gfd.value) and gfd.value >= 0
    # bits: the model's own image loss, in bits
    tokens = report.metrics["bits/image token[heldout]"]
    per_image = report.metrics["bits/image[heldout]"]
    assert tokens.protocol["image_tokens_per_image"] == 16 * model.layout.generation_depth
    assert per_image.value == pytest.approx(tokens.value * tokens.protocol["image_tokens_per_image"])
    assert 0 < tokens.value < 2 * math.log2(model.layout.codebook_size)
    # captions: parsed by the grammar, unparsed counted and wrong everywhere
    assert [c.split for c in report.captions] == ["val"] * 3 + ["heldout"] * 3
    for split in ("val", "heldout"):
        captioned = [c for c in report.captions if c.split == split]
        assert report.metrics[f"caption[{split}] unparsed"].value == sum(c.parsed is None for c in captioned)
        for c in captioned:
            assert c.image.dtype == torch.uint8 and c.image.shape == (3, SIDE, SIDE)
            assert c.parsed == parse_caption(c.caption)
            if c.parsed is None:
                assert not any(c.correct.values())
        naive = sum(c.parsed is not None and c.parsed == c.attributes for c in captioned) / 3
        assert report.metrics[f"caption[{split}] attr[all]"].value == naive
    summary = json.loads(json.dumps(report.to_dict()))
    assert set(summary["metrics"]) == set(report.metrics)
    assert not any("gFID" in key for key in summary["metrics"])  # labelled by its feature network
    assert summary["protocol"]["prompt_suite"] == PROMPT_SUITE_VERSION
    assert "t2i[heldout] attr[pair]" in report.format_tables()


def loss_bits(model, codes, caption: str) -> float:
    """Reference bits of one image under one caption: the model's own training loss (the mean image
    cross-entropy of a text -> image row) times its targets, in bits."""
    from polytok.eval.unified.likelihood import t2i_batches

    model.eval()
    ((_, batch),) = t2i_batches(model, codes, [caption])
    with torch.no_grad():
        out = model(batch)
    return float(out.image_loss) * out.image_targets / math.log(2)


def test_bits_per_image_token_is_the_models_own_loss(trained) -> None:
    from polytok.eval.unified.evaluate import bits_per_image_token

    model, tok = trained
    data = ShapesDataset("val", image_size=SIDE, length=2, seed=1)
    codes = tok.encode(torch.stack([data[i]["image"] for i in range(2)]))
    captions = [data[i]["caption"] for i in range(2)]
    per_token, per_image, tokens = bits_per_image_token(model, codes, captions, batch_size=1)
    reference = [loss_bits(model, codes[i : i + 1], captions[i]) for i in range(2)]
    assert tokens == model.layout.num_positions * model.layout.generation_depth
    assert per_image == pytest.approx(sum(reference) / 2, rel=1e-5)  # float32 loss against float64 sums
    assert per_token == pytest.approx(per_image / tokens, rel=1e-12)


def test_likelihood_choice_against_per_image_bits(trained, report) -> None:
    """The choice of each value against a naive reference: every (image, value) scored alone through the
    model's own mean image loss (loss_bits), argmin and margins recomputed by hand."""
    from polytok.eval.unified.likelihood import likelihood_choice

    model, tok = trained
    data = ShapesDataset("val", image_size=SIDE, length=3, seed=0)
    items = [data[i] for i in range(3)]
    codes = tok.encode(torch.stack([it["image"] for it in items]))
    truths = [it["attributes"] for it in items]
    for attribute, values in (("colour", 7), ("shape", 6)):
        result = likelihood_choice(model, codes, truths, attribute, batch_size=2)
        for b, item in enumerate(items):
            bits = []
            for v in range(values):
                caption = caption_for({**item["attributes"], attribute: v})
                bits.append(loss_bits(model, codes[b : b + 1], caption))
            truth = item["attributes"][attribute]
            best_wrong = min(x for v, x in enumerate(bits) if v != truth)
            assert int(result.truth[b]) == truth
            # the reference's loss is a float32 mean (relative rounding ~1e-7 of a few hundred bits)
            assert result.margins[b].item() == pytest.approx(best_wrong - bits[truth], abs=1e-3)
            wrong_mean = (sum(bits) - bits[truth]) / (values - 1)
            assert result.gains[b].item() == pytest.approx(wrong_mean - bits[truth], abs=1e-3)
            gaps = sorted(bits)
            if gaps[1] - gaps[0] > 1e-2:  # a clear winner: the same choice whatever the rounding
                assert int(result.chosen[b]) == int(np.argmin(bits))
        assert result.accuracy == float((result.chosen == result.truth).double().mean())
        assert result.decisive(-math.inf) == 1.0 and result.chance == pytest.approx(1 / values)
    # the figures of the evaluation: on its bits images, with chance and the decisive fraction
    figure = report.metrics["t2i likelihood[heldout] attr[colour]"]
    assert figure.protocol["num_images"] == 3 and figure.protocol["baselines"] == {"chance": 1 / 7}
    assert 0.0 <= figure.protocol["right by >= 1 bit"] <= figure.value + 1e-12 <= 1.0 + 1e-12
    assert "mean gain over the wrong values (bits)" in figure.protocol
    assert "t2i likelihood[val] attr[shape]" in report.metrics
    with pytest.raises(ValueError, match="likelihood_attributes"):
        evaluate_unified(model, tok, likelihood_attributes=("hue",), progress=False)


def test_end_to_end_is_deterministic(trained) -> None:
    model, tok = trained
    first, second = _run(model, tok, seed=5), _run(model, tok, seed=5)
    assert first.to_dict() == second.to_dict()
    for a, b in zip(first.samples, second.samples):
        assert torch.equal(a.images, b.images)
    other = _run(model, tok, seed=6)
    assert any(not torch.equal(a.images, b.images) for a, b in zip(first.samples, other.samples))


def test_bad_settings_are_refused(trained) -> None:
    model, tok = trained
    with pytest.raises(ValueError, match="samples_per_prompt"):
        evaluate_unified(model, tok, samples_per_prompt=0, progress=False)
    with pytest.raises(ValueError, match="grid"):
        evaluate_unified(
            UnifiedModel.from_tokenizer(tok, model.text_tokenizer, tiny_config(), grid=(4, 2)),
            tok,
            progress=False,
        )


# -- HTML section and the command line -------------------------------------------------------------------


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.open_sections = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        self.open_sections += tag == "section"

    def handle_endtag(self, tag) -> None:
        self.open_sections -= tag == "section"


def test_html_section_renders_samples_readings_and_captions(report) -> None:
    fragment = render_unified_section(report)
    parser = _Images()
    parser.feed(fragment)
    assert parser.open_sections == 0 and fragment.startswith("<section")
    assert len(parser.sources) == 4 * 2 + len(report.captions)  # every sample and every captioned image
    for source in parser.sources:
        assert source.startswith("data:image/png;base64,")  # self-contained
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.size == (SIDE, SIDE)
    first = report.samples[0]
    assert html.escape(first.prompt.caption) in fragment and "held-out pair" in fragment
    shape_read = TASK_CLASSES["shape"][first.readings[0]["shape"]]
    assert shape_read in fragment
    for captioned in report.captions:
        assert html.escape(captioned.caption) in fragment
    # a re-ranked caption is shown under the greedy one (a tiny model's captions may not parse: set by hand)
    item = report.captions[0]
    truth = dict(item.attributes)
    flags = correct_flags(truth, truth, list(truth))
    forced = dataclasses.replace(item, reranked=truth, reranked_correct=flags)
    shown = render_unified_section(dataclasses.replace(report, captions=[forced]))
    assert f"<i>re-ranked:</i> {html.escape(caption_for(truth))}" in shown
    assert "t2i[heldout] attr[pair]" in fragment and "colour only" in fragment


def test_cli_evaluates_a_saved_unified_model(trained, tmp_path, capsys) -> None:
    model, tok = trained
    folder = tmp_path / "model"
    copy.deepcopy(model).float().save_pretrained(folder)
    tok.save_pretrained(folder / "image_tokenizer")
    tokens = tmp_path / "tokens"  # the first 2 held-out images as a token set, each encoded alone
    encode = ["encode", str(folder / "image_tokenizer"), "shapes", "--split", "heldout", "--image-size"]
    encode += [str(SIDE), "--max-images", "2", "--batch-size", "1", "--out", str(tokens)]
    assert main(encode) == 0
    capsys.readouterr()
    args = ["eval", str(folder), "--max-prompts", "2", "--samples-per-prompt", "1", "--caption-images", "2"]
    args += ["--bits-images", "2", "--no-gfd", "--report", str(tmp_path / "out" / "unified.html")]
    assert main([*args, "--bits-token-set", str(tokens)]) == 0
    out = capsys.readouterr().out
    assert "t2i[heldout] attr[pair]" in out and "colour only" in out and "caption[val] unparsed" in out
    assert "caption reranked[heldout] attr[shape]" in out  # re-ranking the shape is on by default
    paths = json.loads(out.strip().splitlines()[-1])
    summary = json.loads(Path(paths["summary"]).read_text())
    assert summary["protocol"]["num_prompts"] == 2 and summary["protocol"]["samples_per_prompt"] == 1
    assert summary["protocol"]["prompt_suite"] == PROMPT_SUITE_VERSION
    assert summary["skipped"] == {} and "gFD (EfficientNet-Lite0)" not in summary["metrics"]
    assert Path(paths["report"]).read_text().count("<img") == 2 + 4
    # the same images and captions read from the token set give the same bits
    from_set = summary["metrics"]["bits/image token[set tokens]"]
    assert from_set["value"] == summary["metrics"]["bits/image token[heldout]"]["value"]
    assert from_set["protocol"]["num_images"] == 2
    assert main(["eval", str(folder), "--temperature", "-1", "--report", str(tmp_path / "x.html")]) == 2
    assert "polytok: error: temperature must be >= 0" in capsys.readouterr().err
    assert main(["eval", str(folder), "--caption-rerank", "hue", "--report", str(tmp_path / "x.html")]) == 2
    assert "polytok: error: caption_rerank must be among" in capsys.readouterr().err


# -- captions re-ranked by the generator -----------------------------------------------------------------


def test_caption_bits_are_the_model_s_own_caption_loss(trained) -> None:
    """caption_bits against the training loss of the same image -> text rows (its mean over the caption
    tokens, times their count; the loss is taken in float32, hence the tolerance)."""
    from polytok.eval.unified.rerank import caption_bits

    model, tok = trained
    data = ShapesDataset("val", image_size=SIDE, length=3, seed=0)
    items = [data[i] for i in range(3)]
    codes = tok.encode(torch.stack([it["image"] for it in items]))
    captions = [it["caption"] for it in items]
    bits = caption_bits(model, codes, captions, batch_size=2)
    assert bits.dtype == torch.float64 and bits.shape == (3,)
    fmt, text = model.format, model.text_tokenizer
    for b, caption in enumerate(captions):
        row = fmt.collate(
            [fmt.image_to_text(fmt.layout.to_levels(codes[b : b + 1])[0], text.encode(caption))]
        )
        with torch.no_grad():
            out = model(row)
        assert bits[b].item() == pytest.approx(
            float(out.text_loss) * out.text_targets / math.log(2), rel=1e-6
        )
    with pytest.raises(ValueError, match="as many captions"):
        caption_bits(model, codes, captions[:2])


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_reranked_captions_take_the_value_of_lowest_score(trained, report, weight) -> None:
    """Each re-ranked shape against a naive reference: every candidate caption scored alone (image bits
    through the model's mean image loss, caption bits through caption_bits), the chosen one of lowest score
    up to rounding; the other attributes kept; an unparsed caption left alone."""
    from polytok.eval.unified.rerank import caption_bits, rerank_captions

    model, tok = trained
    data = ShapesDataset("heldout", image_size=SIDE, length=3, seed=0)
    items = [data[i] for i in range(3)]
    codes = tok.encode(torch.stack([it["image"] for it in items]))
    first, last = ({k: it["attributes"][k] for k in CAPTION_ATTRIBUTES} for it in (items[0], items[2]))
    parses = [first, None, {**last, "shape": 0}]  # the last one's shape word wrong on purpose
    out = rerank_captions(model, codes, parses, ("shape",), caption_weight=weight, batch_size=2)
    assert out[1] is None and parses[0] is not out[0]
    for b in (0, 2):
        scores = []
        for v in range(len(SHAPES)):
            caption = caption_for({**parses[b], "shape": v})
            image = loss_bits(model, codes[b : b + 1], caption)
            scores.append(image + weight * float(caption_bits(model, codes[b : b + 1], [caption])[0]))
        assert scores[out[b]["shape"]] <= min(scores) + 1e-3  # the reference's loss is a float32 mean
        assert {k: v for k, v in out[b].items() if k != "shape"} == {
            k: v for k, v in parses[b].items() if k != "shape"
        }
    # the evaluation's figures: greedy and re-ranked side by side, each image's flags from its parse
    for split in ("val", "heldout"):
        captioned = [c for c in report.captions if c.split == split]
        for c in captioned:
            assert (c.reranked is None) == (c.parsed is None)
            assert c.reranked_correct == correct_flags(c.reranked, c.attributes, list(c.attributes))
        figure = report.metrics[f"caption reranked[{split}] attr[shape]"]
        assert figure.value == sum(c.reranked_correct["shape"] for c in captioned) / len(captioned)
        assert "re-ranked" in figure.protocol["decoding"] and figure.protocol["baselines"]["chance"] == 1 / 6
    with pytest.raises(ValueError, match="caption_rerank"):
        evaluate_unified(model, tok, caption_rerank=("hue",), progress=False)
    with pytest.raises(ValueError, match="caption_weight"):
        rerank_captions(model, codes, parses, ("shape",), caption_weight=-1.0)
    with pytest.raises(ValueError, match="rerank must be among"):  # a task, not a word of the caption
        rerank_captions(model, codes, parses, ("object",))
    with pytest.raises(ValueError, match="caption_rerank_weight"):
        evaluate_unified(model, tok, caption_rerank_weight=-1.0, progress=False)
