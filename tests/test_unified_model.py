"""The unified model: code layouts, shapes, causality of the depth head and the backbone, loss targets,
checkpoints and the recorded tokenizer."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import polytok
from polytok.unified import (
    CodeLayout,
    TokenizerMismatchError,
    UnifiedConfig,
    UnifiedModel,
    sample_image_codes,
)
from polytok.unified.sequence import IGNORE
from unified_helpers import (
    CAPTIONS,
    LAYOUTS,
    random_codes,
    text_tokenizer,
    tiny_config,
    tiny_model,
    tokenizer,
)

EXPECTED = {  # code_shape, (levels, codebooks), pixel levels, codebook size
    "vq": ((), (1, 1), 1, 64),
    "unitok-tiny": ((8,), (1, 8), 1, 512),
    "evotok-tiny": ((8,), (8, 1), 4, 1024),
    "polytok-tiny": ((4, 8), (4, 8), 2, 256),
}


def _batch(model, tasks, seed=0, captions=None):
    codes = random_codes(model, len(tasks), seed)
    captions = captions or CAPTIONS[: len(tasks)]
    return model.format.training_batch(codes, text_tokenizer().encode_batch(captions), tasks)


# -- layout -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYOUTS)
def test_layout_of_every_tokenizer_round_trips_its_codes(name) -> None:
    tok = tokenizer(name)
    layout = CodeLayout.from_tokenizer(tok)
    shape, (levels, books), pixel, size = EXPECTED[name]
    assert layout.code_shape == tuple(tok.code_shape) == shape
    assert (layout.levels, layout.codebooks, layout.pixel_levels, layout.codebook_size) == (
        levels,
        books,
        pixel,
        size,
    )
    assert layout.grid == (16, 16) and layout.generation_depth == pixel * books
    small = CodeLayout.from_tokenizer(tok, grid=(3, 3))
    codes = tok.encode(torch.rand(2, 3, 12, 12))  # (2, 3, 3, *code_shape)
    full = small.to_levels(codes)
    assert full.shape == (2, 9, levels, books)
    assert torch.equal(small.from_levels(full), codes)
    assert CodeLayout.from_dict(small.to_dict()) == small


def test_layout_rejects_wrong_codes() -> None:
    layout = CodeLayout.from_tokenizer(tokenizer("polytok-tiny"), grid=(3, 3))
    good = torch.zeros(1, 3, 3, 4, 8, dtype=torch.long)
    assert layout.to_levels(good[..., :2, :]).shape == (1, 9, 2, 8)  # a prefix of levels is fine
    for bad in (good[..., :4], good[:, :2], good.float(), good + 256, good[..., 0, :]):
        with pytest.raises(ValueError):
            layout.to_levels(bad)


# -- shapes and causality ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("embedding", ["learned", "codebook"])
def test_shapes_for_every_layout(name, embedding) -> None:
    model = tiny_model(name, input_embedding=embedding, depth_embedding=embedding)
    batch = _batch(model, ["t2i", "i2t", "t2i"])
    layout = model.layout
    logits = model.image_logits(batch)
    assert logits.shape == (2, 9, layout.generation_depth, layout.codebook_size)
    out = model(batch)
    assert torch.isfinite(out.loss) and out.image_loss > 0 and out.text_loss > 0
    assert out.image_targets == 2 * 9 * layout.generation_depth
    # the i2t row reads every level, the t2i rows the pixel prefix
    assert batch.input_levels.tolist() == [layout.pixel_levels, layout.levels, layout.pixel_levels]


@pytest.mark.parametrize("embedding", ["learned", "codebook"])
def test_input_embedding_reads_exactly_the_levels_asked(embedding) -> None:
    model = tiny_model("evotok-tiny", input_embedding=embedding)
    full = model.layout.to_levels(random_codes(model, 2))  # (2, 9, 8, 1)
    for k in (1, 4, 8):
        base = model.embed_image(full, k)
        later, earlier = full.clone(), full.clone()
        later[:, :, k:] = (later[:, :, k:] + 1) % model.layout.codebook_size
        earlier[:, :, k - 1] = (earlier[:, :, k - 1] + 1) % model.layout.codebook_size
        torch.testing.assert_close(model.embed_image(later, k), base, rtol=0, atol=0)
        assert (model.embed_image(earlier, k) - base).abs().min() > 0
    # per-row levels: a row reading 2 levels equals that row embedded alone with 2
    mixed = model.embed_image(full, torch.tensor([2, 8]))
    torch.testing.assert_close(mixed[0], model.embed_image(full[:1], 2)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(mixed[1], model.embed_image(full[1:], 8)[0], rtol=0, atol=1e-12)
    if embedding == "codebook":  # the projector reads the tokenizer's partial reconstruction
        quant = tokenizer("evotok-tiny").quantizer
        partial = sum(
            quant.codebook_for_level(level).lookup(full[:, :, level]).double() for level in range(3)
        )
        partial = partial.flatten(-2)  # (2, 9, d): levels 0..2 summed, in float64
        torch.testing.assert_close(model.embed_image(full, 3), model.image_embed.projector(partial))


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("conditioning", ["running_sum", "previous"])
def test_depth_head_is_causal_over_sub_codes(name, conditioning) -> None:
    model = tiny_model(name, depth_conditioning=conditioning, depth_embedding="codebook")
    head = model.depth_head
    s = head.depth
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, model.backbone.config.hidden_size, generator=g, dtype=torch.float64)
    codes = torch.randint(0, model.layout.codebook_size, (5, s - 1), generator=g)
    base = head(h, codes)
    assert base.shape == (5, s, model.layout.codebook_size)
    for j in range(1, s):  # logits of sub-code j read sub-codes < j only
        changed = codes.clone()
        changed[:, j - 1 :] = (changed[:, j - 1 :] + 1) % model.layout.codebook_size
        out = head(h, changed)
        torch.testing.assert_close(out[:, :j], base[:, :j], rtol=0, atol=1e-12)
        assert (out[:, j] - base[:, j]).abs().max() > 1e-6  # ... and do read sub-code j - 1
    if s == 1:  # a single sub-code reads the backbone state only
        assert (head(h + 1, codes) - base).abs().max() > 1e-6


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"depth_conditioning": "previous"},
        {"depth_embedding": "codebook", "shared_classifier": True},
    ],
)
def test_depth_head_step_with_cache_equals_full_pass(name, variant) -> None:
    """Each cached step (one new sub-code against the stored keys, values and running sums) gives the
    logits of the full pass over the position's sub-codes, in float64."""
    model = tiny_model(name, **variant)
    head = model.depth_head
    g = torch.Generator().manual_seed(2)
    h = torch.randn(4, model.backbone.config.hidden_size, generator=g, dtype=torch.float64)
    codes = torch.randint(0, model.layout.codebook_size, (4, head.depth - 1), generator=g)
    full = head(h, codes)
    cache = head.new_cache()
    steps = torch.stack([head.step(h, codes[:, :s], cache) for s in range(head.depth)], dim=1)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["evotok-tiny", "polytok-tiny"])
def test_running_sum_reads_the_partial_reconstruction(name) -> None:
    """Step (l, c) of the depth head reads W (sum of the code vectors of levels < l, plus sub-code (l, c-1)
    in its codebook's channels), computed here independently by the tokenizer's quantizer."""
    model = tiny_model(name, depth_embedding="codebook")
    layout, quant = model.layout, tokenizer(name).quantizer
    s, books = layout.generation_depth, layout.codebooks
    g = torch.Generator().manual_seed(3)
    codes = torch.randint(0, layout.codebook_size, (6, s), generator=g)
    got = model.depth_head.conditioning_inputs(codes[:, : s - 1])
    weight = model.depth_head.sub_embed.proj.weight.float()
    levels = codes.view(6, layout.pixel_levels, books)
    for t in range(1, s):
        level, book = divmod(t, books)
        partial = torch.zeros(6, layout.codebooks * layout.code_dim)
        if level:
            partial += quant.indices_to_codes(levels[:, :level] if books > 1 else levels[:, :level, 0])
        if book:
            prev = quant.codebook_for_level(level).lookup(levels[:, level])  # (6, C, d)
            partial.view(6, books, -1)[:, book - 1] += prev[:, book - 1]
        torch.testing.assert_close(got[:, t - 1].float(), partial @ weight.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", LAYOUTS)
def test_backbone_is_causal_over_positions(name) -> None:
    model = tiny_model(name)
    batch = _batch(model, ["t2i", "t2i"])
    base = model.image_logits(batch)
    layout = model.layout
    for p in (1, 4, 8):  # change every code at positions >= p
        changed = copy.deepcopy(batch)
        codes = changed.image_codes[:, p:, : layout.pixel_levels]
        changed.image_codes[:, p:, : layout.pixel_levels] = (codes + 1) % layout.codebook_size
        out = model.image_logits(changed)
        torch.testing.assert_close(out[:, :p], base[:, :p], rtol=0, atol=1e-12)
        torch.testing.assert_close(out[:, p, :, :][:, 0], base[:, p, 0], rtol=0, atol=1e-12)
        if p + 1 < layout.num_positions:
            assert (out[:, p + 1] - base[:, p + 1]).abs().max() > 1e-6


@pytest.mark.parametrize("task", ["t2i", "i2t"])
def test_grid_cells_are_added_to_the_token_that_predicts_them(task) -> None:
    """With image_positions learned_2d, the input before image position i (``<boi>`` for i = 0) gains row
    r(i) + column c(i) of a (3, 4) grid, and no other input changes."""
    plain = tiny_model("unitok-tiny", grid=(3, 4))
    model = tiny_model("unitok-tiny", grid=(3, 4), image_positions="learned_2d")
    model.load_state_dict(plain.state_dict(), strict=False)  # same weights but the cell tables
    rows = torch.randn(3, model.backbone.config.hidden_size, dtype=torch.float64)
    cols = torch.randn(4, model.backbone.config.hidden_size, dtype=torch.float64)
    model.image_positions.rows.weight.data.copy_(rows)
    model.image_positions.cols.weight.data.copy_(cols)
    batch = _batch(model, [task, task])
    added = model.embed_sequence(batch) - plain.embed_sequence(batch)
    for b in range(2):
        start = int(batch.image_start[b])
        for t in range(added.shape[1]):
            i = t - start + 1  # the image position predicted from token t
            expected = rows[i // 4] + cols[i % 4] if 0 <= i < 12 else torch.zeros_like(rows[0])
            torch.testing.assert_close(added[b, t], expected, rtol=0, atol=1e-12)


def test_retired_options_load_at_their_inert_value_only() -> None:
    """Options removed as not shown to help: a saved config holding one at the value that changed
    nothing loads; any other value is refused naming the option; a new config does not take them."""
    from polytok.unified.config import RETIRED

    base = UnifiedConfig().to_dict()
    for name, inert in RETIRED.items():
        assert UnifiedConfig.from_saved({**base, name: inert}) == UnifiedConfig()
        changed = (not inert) if isinstance(inert, bool) else 0.5
        with pytest.raises(ValueError, match=name):
            UnifiedConfig.from_saved({**base, name: changed})
        with pytest.raises(TypeError):
            UnifiedConfig(**{name: inert})


def test_object_loss_weight_is_a_weighted_mean_over_object_cells() -> None:
    """object_loss_weight w: the image loss is sum(ce * (1 + (w - 1) * cover)) / sum(weights) over every
    position and sub-code of the text -> image rows (against per-sub-code cross-entropies of the model's
    own teacher-forced logits, in float64); w = 1, or a batch without cover, gives the plain mean."""
    weighted = tiny_model("polytok-tiny", grid=(4, 4), object_loss_weight=6.0).eval()
    plain = tiny_model("polytok-tiny", grid=(4, 4)).eval()
    plain.load_state_dict(weighted.state_dict())
    codes = random_codes(weighted, 3, seed=5)
    ids = text_tokenizer().encode_batch(CAPTIONS[:3])
    cover = torch.zeros(3, 4, 4)
    cover[0, 1:3, 1:3] = 1.0
    cover[1, 0, :] = torch.tensor([0.25, 0.5, 0.75, 1.0])
    cover[2, 3, 3] = 0.5  # an i2t row: its cover is not read
    batch = weighted.format.training_batch(codes, ids, ["t2i", "t2i", "i2t"], object_cover=cover)
    assert batch.object_cover.shape == (3, 16)
    with torch.no_grad():
        logits = weighted.image_logits(batch).double()  # (2, N, S, K)
        targets = weighted.format.layout.to_levels(codes)[:2, :, : weighted.layout.pixel_levels]
        ce = -logits.log_softmax(-1).gather(-1, targets.reshape(2, 16, -1, 1)).squeeze(-1)  # (2, N, S)
        w = 1.0 + 5.0 * cover[:2].reshape(2, 16, 1).double()
        want = float((ce * w).sum() / (w.expand_as(ce)).sum())
        assert abs(float(weighted(batch).image_loss) - want) < 1e-5
        assert abs(want - float(ce.mean())) > 1e-3  # the weights change the loss
        assert abs(float(plain(batch).image_loss) - float(ce.mean())) < 1e-5
        batch.object_cover = None
        assert abs(float(weighted(batch).image_loss) - float(ce.mean())) < 1e-5
    with pytest.raises(ValueError, match="object_cover must be"):
        weighted.format.training_batch(codes, ids, ["t2i"] * 3, object_cover=cover[:, :2])
    with pytest.raises(ValueError, match="object_loss_weight"):
        UnifiedConfig(object_loss_weight=0.0)


# -- loss targets -----------------------------------------------------------------------------------


def test_no_loss_on_the_conditioning_part() -> None:
    model = tiny_model("polytok-tiny")
    n, s = model.layout.num_positions, model.layout.generation_depth
    t2i = _batch(model, ["t2i", "t2i"])
    assert (t2i.text_targets == IGNORE).all()  # the caption of text -> image is never a target
    i2t = _batch(model, ["i2t", "i2t"])
    assert not i2t.image_target.any()
    out_t2i, out_i2t = model(t2i), model(i2t)
    assert out_t2i.text_targets == 0 and out_t2i.image_targets == 2 * n * s
    captions = text_tokenizer().encode_batch(CAPTIONS[:2])
    assert out_i2t.image_targets == 0 and out_i2t.text_targets == sum(len(c) + 1 for c in captions)
    # the LM head does not touch text -> image losses; the depth head does not touch image -> text ones
    with torch.no_grad():
        model.backbone.get_output_embeddings().weight.mul_(3.0)
    assert torch.equal(model(t2i).loss, out_t2i.loss) and model(i2t).loss != out_i2t.loss
    lm_changed = model(i2t).loss
    with torch.no_grad():
        for p in model.depth_head.parameters():
            p.add_(0.5)
    assert torch.equal(model(i2t).loss, lm_changed) and model(t2i).loss != out_t2i.loss


def test_text_targets_are_the_caption_and_eos() -> None:
    model = tiny_model("unitok-tiny")
    batch = _batch(model, ["i2t", "t2i"], captions=[CAPTIONS[2], CAPTIONS[0]])
    caption = text_tokenizer().encode(CAPTIONS[2])
    row = batch.text_targets[0]
    assert row[row != IGNORE].tolist() == [*caption, model.special.eos]
    # each target is the next input token
    ids = batch.token_ids[0]
    sel = (row != IGNORE).nonzero().flatten()
    assert torch.equal(ids[sel + 1], row[sel])
    assert ids[sel[0]] == model.special.eoi


def test_mixed_batch_trains_both_directions() -> None:
    model = tiny_model("evotok-tiny")
    batch = _batch(model, ["t2i", "i2t", "i2t", "t2i"])
    assert batch.image_target.tolist() == [True, False, False, True]
    out = model(batch)
    assert out.image_targets > 0 and out.text_targets > 0
    out.loss.backward()
    lm_grad = model.backbone.get_output_embeddings().weight.grad
    head_grad = model.depth_head.input_proj.weight.grad
    assert lm_grad is not None and lm_grad.abs().sum() > 0
    assert head_grad is not None and head_grad.abs().sum() > 0
    expected = model.config.image_loss_weight * out.image_loss + model.config.text_loss_weight * out.text_loss
    assert torch.equal(out.loss, expected)


@pytest.mark.parametrize("image_positions", ["none", "learned_2d"])
def test_teacher_forced_loss_equals_the_sampler_likelihood(image_positions) -> None:
    """The training forward and the step-by-step sampling path give the same image log-likelihood."""
    from polytok.unified.sampling import _left_pad, _Stepper

    model = tiny_model("polytok-tiny", grid=(3, 4), image_positions=image_positions)
    if model.image_positions is not None:  # trained-looking cells: a zero-ish table would hide a shift
        torch.nn.init.normal_(model.image_positions.rows.weight, std=1.0)
        torch.nn.init.normal_(model.image_positions.cols.weight, std=1.0)
    layout, fmt = model.layout, model.format
    caption = text_tokenizer().encode(CAPTIONS[3])
    image = layout.to_levels(random_codes(model, 1))[0]
    logits = model.image_logits(fmt.collate([fmt.text_to_image(caption, image)]))[0]  # (N, S, K)
    target = image[:, : layout.pixel_levels].reshape(layout.num_positions, -1)
    ids, mask, pos = _left_pad([fmt.t2i_prompt(caption)], model.special.pad, model.device)
    stepper = _Stepper(model, model.embed_t2i_prompt(ids), mask, pos, use_cache=True)
    for i in range(layout.num_positions):
        cache = model.depth_head.new_cache()
        for s in range(layout.generation_depth):
            step = model.depth_head.step(stepper.last, target[i : i + 1, :s], cache)
            torch.testing.assert_close(step[0], logits[i, s], rtol=0, atol=1e-10)
        codes = target[i].view(1, 1, layout.pixel_levels, layout.codebooks)
        stepper.feed(model.embed_image_step(codes, i))


def test_caption_dropout_trains_the_unconditional_prompt() -> None:
    model = tiny_model("unitok-tiny")
    codes = random_codes(model, 8)
    captions = text_tokenizer().encode_batch([CAPTIONS[1]] * 8)
    uncond = model.format.unconditional_prompt()

    def prompts(batch):
        return [
            batch.token_ids[r, batch.attention_mask[r].bool()][
                : int(batch.attention_mask[r].sum()) - model.layout.num_positions
            ].tolist()
            for r in range(len(batch.token_ids))
        ]

    fmt = model.format
    assert all(
        p == uncond for p in prompts(fmt.training_batch(codes, captions, ["t2i"] * 8, caption_dropout=1.0))
    )
    kept = prompts(fmt.training_batch(codes, captions, ["t2i"] * 8, caption_dropout=0.0))
    assert all(p == fmt.t2i_prompt(captions[0]) != uncond for p in kept)
    g = torch.Generator().manual_seed(0)
    mixed = prompts(fmt.training_batch(codes, captions, ["t2i"] * 8, caption_dropout=0.5, generator=g))
    assert 0 < sum(p == uncond for p in mixed) < 8


# -- backbones and configuration --------------------------------------------------------------------


def test_qwen2_backbone_and_frozen_layers() -> None:
    backbone = {**tiny_config().backbone, "model_type": "qwen2"}
    model = tiny_model("evotok-tiny", backbone=backbone, backbone_trainable=False)
    assert type(model.backbone).__name__ == "Qwen2ForCausalLM"
    model(_batch(model, ["t2i", "i2t"])).loss.backward()
    layer = next(model.backbone.base_model.layers[0].parameters())
    assert not layer.requires_grad and layer.grad is None
    assert model.backbone.get_input_embeddings().weight.grad is not None  # the new special tokens learn
    assert model.depth_head.input_proj.weight.grad is not None


def test_pretrained_backbone_by_local_path(tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    keys = {**tiny_config().backbone, "vocab_size": 40}  # fewer rows than text + special tokens
    torch.manual_seed(5)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**keys))
    llm.save_pretrained(tmp_path / "llm")
    model = tiny_model("unitok-tiny", backbone=str(tmp_path / "llm"))
    assert model.backbone.get_input_embeddings().num_embeddings == model.special.vocab_size
    saved = llm.state_dict()
    for name, value in model.backbone.state_dict().items():
        if "embed_tokens" in name or "lm_head" in name:  # the old rows are kept, new rows added
            assert torch.equal(value[:40].float(), saved[name].float())
        else:
            assert torch.equal(value.float(), saved[name].float()), name
    out = model(_batch(model, ["t2i", "i2t"]))
    assert torch.isfinite(out.loss)


def test_bad_configuration_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="input_embedding"):
        UnifiedConfig(input_embedding="table")
    with pytest.raises(ValueError, match="model_type"):
        UnifiedConfig(backbone={"hidden_size": 32})
    with pytest.raises(ValueError, match="caption_dropout"):
        UnifiedConfig(caption_dropout=1.5)
    with pytest.raises(ValueError, match="not a transformers model"):
        tiny_model("vq", backbone={"model_type": "no-such-model"})
    with pytest.raises(FileNotFoundError, match="backbone path"):
        tiny_model("vq", backbone="/nonexistent/llm")
    model = tiny_model("vq")
    with pytest.raises(ValueError, match="task"):
        model.format.training_batch(random_codes(model, 1), [[1]], ["caption"])


def test_sequences_must_fit_the_backbone() -> None:
    backbone = {**tiny_config().backbone, "max_position_embeddings": 32}
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_model("vq", backbone=backbone, max_caption_tokens=20)


# The layers above the unified model drive it; nothing of the tokenizer side below it may import it.
# Its evaluation drives it too (imported lazily: `import polytok.eval` must not load it, checked below).
ABOVE = {
    "cli.py",
    "demo.py",
    "recipes/train.py",
    "recipes/unified_run.py",
    "recipes/unified_objective.py",
    "recipes/unified_sample.py",
    "recipes/unified_evaluation.py",
    "eval/html/unified.py",
}
ABOVE_PACKAGES = {"eval/unified"}


def test_nothing_below_the_package_imports_it() -> None:
    root = Path(polytok.__file__).parent
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        above = relative.as_posix() in ABOVE or relative.parent.as_posix() in ABOVE_PACKAGES
        if relative.parts[0] != "unified" and not above:
            assert "polytok.unified" not in path.read_text(), path
    code = (
        "import sys, polytok, polytok.models, polytok.quant, polytok.eval, polytok.data, polytok.train; "
        "import polytok.recipes.tokenizer_run, polytok.hub, polytok.tokensets.npz; "
        "assert not [m for m in sys.modules if m.startswith('polytok.unified')], sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# -- checkpoints and the recorded tokenizer ---------------------------------------------------------


@pytest.mark.parametrize(
    ("embedding", "image_positions"), [("learned", "none"), ("codebook", "none"), ("learned", "learned_2d")]
)
def test_save_and_load_give_the_same_model(tmp_path, embedding, image_positions) -> None:
    model = tiny_model(
        "polytok-tiny",
        input_embedding=embedding,
        depth_embedding=embedding,
        image_positions=image_positions,
    )
    batch = _batch(model, ["t2i", "i2t"])
    model.save_pretrained(tmp_path / "m")
    assert not list((tmp_path / "m").glob("*.tmp"))
    loaded = UnifiedModel.from_pretrained(tmp_path / "m").double().eval()
    assert loaded.config == model.config and loaded.layout == model.layout
    assert loaded.tokenizer_id == model.tokenizer_id
    assert loaded.text_tokenizer.encode(CAPTIONS[2]) == model.text_tokenizer.encode(CAPTIONS[2])
    assert torch.equal(loaded(batch).loss, model(batch).loss)
    prompt = [model.format.t2i_prompt(model.text_tokenizer.encode(CAPTIONS[0]))]
    assert torch.equal(sample_image_codes(loaded, prompt, seed=3), sample_image_codes(model, prompt, seed=3))


@pytest.mark.parametrize(("name", "levels"), [("evotok-tiny", 1), ("polytok-tiny", 1), ("evotok-tiny", 3)])
def test_generation_levels_predict_and_decode_a_shorter_pixel_prefix(tmp_path, name, levels) -> None:
    """generation_levels k: text -> image predicts, samples and decodes the first k levels (the image is
    the tokenizer's own decoding of that prefix), captioning still reads every level, and the choice
    survives save / load; more levels than the tokenizer decodes is refused."""
    model = tiny_model(name, grid=(4, 4), generation_levels=levels)
    full = tiny_model(name, grid=(4, 4))
    books = model.layout.codebooks
    assert model.layout.pixel_levels == levels and model.layout.generation_depth == levels * books
    assert full.layout.pixel_levels > levels and model.format.understanding_levels == full.layout.levels
    batch = _batch(model, ["t2i", "i2t"])
    assert model(batch).image_targets == model.layout.num_positions * levels * books
    assert int(batch.input_levels[0]) == levels and int(batch.input_levels[1]) == model.layout.levels
    prompt = [model.format.t2i_prompt(model.text_tokenizer.encode(CAPTIONS[0]))]
    codes = sample_image_codes(model, prompt, seed=3)
    assert codes.shape == (1, 16, levels, books)
    tok = tokenizer(name)
    prefix = model.layout.from_levels(codes)
    torch.testing.assert_close(model.decode_images(prefix, tok), tok.decode(prefix), rtol=0, atol=0)
    model.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    assert loaded.layout == model.layout and loaded.config.generation_levels == levels
    with pytest.raises(ValueError, match="generation_levels must be in"):
        tiny_model(name, grid=(4, 4), generation_levels=full.layout.pixel_levels + 1)
    with pytest.raises(ValueError, match="generation_levels"):
        UnifiedConfig(generation_levels=0)


def test_decoding_refuses_another_tokenizer(tmp_path) -> None:
    model = tiny_model("evotok-tiny")
    tok = tokenizer("evotok-tiny")
    codes = random_codes(model, 1)[..., : model.layout.pixel_levels]
    images = model.decode_images(codes, tok)
    assert images.shape == (1, 3, 12, 12)
    other_weights = copy.deepcopy(tok)
    with torch.no_grad():
        next(other_weights.pixel_decoder.parameters()).add_(1e-3)
    for other in (other_weights, tokenizer("polytok-tiny")):
        with pytest.raises(TokenizerMismatchError, match="trained on tokenizer"):
            model.decode_images(codes, other)
    model.save_pretrained(tmp_path / "m")
    loaded = UnifiedModel.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.decode_images(codes, tok), images)
    with pytest.raises(TokenizerMismatchError):
        loaded.decode_images(codes, other_weights)


def test_the_recorded_config_is_what_differs_from_the_defaults() -> None:
    """The identity's config hash covers the chosen fields only, so a field added later (at its default)
    keeps earlier models valid; models recorded over the whole config (earlier versions) still match; a
    changed value does not."""
    import hashlib
    import json

    from polytok.config import without_defaults
    from polytok.unified import tokenizer_identity
    from polytok.unified.model import check_identity

    tok = tokenizer("evotok-tiny")
    ident = tokenizer_identity(tok)
    chosen = json.dumps(without_defaults(tok.config), sort_keys=True).encode()
    assert ident["config_sha256"] == hashlib.sha256(chosen).hexdigest()
    assert "linear_path_gate_init" not in without_defaults(tok.config)  # at its default: not hashed
    full = json.dumps(tok.config.to_dict(), sort_keys=True).encode()
    earlier = {"name": ident["name"], "weights_sha256": ident["weights_sha256"]}  # the record's old shape
    check_identity({**earlier, "config_sha256": hashlib.sha256(full).hexdigest()}, tok)
    check_identity({**earlier, "config_sha256": ident["config_sha256"]}, tok)
    changed = copy.deepcopy(tok)
    changed.config.linear_path_gate_init = 0.5
    with pytest.raises(TokenizerMismatchError, match="different config"):
        check_identity(ident, changed)
    with pytest.raises(TokenizerMismatchError, match="different config"):
        check_identity({**earlier, "config_sha256": hashlib.sha256(full).hexdigest()}, changed)


def test_half_written_checkpoint_is_refused(tmp_path) -> None:
    model = tiny_model("vq")
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated"):  # its size differs from the manifest's
        UnifiedModel.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"unified\.json"):
        UnifiedModel.from_pretrained(tmp_path)
