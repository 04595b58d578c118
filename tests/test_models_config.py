"""Typed configs, the preset registry, checkpoint files and the text side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import polytok
from polytok import Tokenizer, list_presets
from polytok.config import ConfigError
from polytok.models import registry
from polytok.models.config import TextTowerConfig, TokenizerConfig
from polytok.models.registry import get_preset_config, get_preset_dict, register_preset
from polytok.models.text import ByteTextTokenizer, ClipBPETextTokenizer, TextTransformer

# A minute tokenizer in the user-config schema (what a YAML file would hold): fast to build and run.
MINI = {
    "name": "mini",
    "image_size": 32,
    "encoder": {"kind": "vit", "patch_size": 8, "width": 32, "depth": 1, "heads": 2, "mlp": "mlp"},
    "projection": {"kind": "tanh_mlp"},
    "post_projection": {"kind": "identity"},
    "quantizer": {"kind": "rvq", "dim": 8, "levels": 3, "codebook_size": 16, "update": "ema"},
    "pixel_depth": 2,
    "pixel_decoder": {"kind": "cnn", "ch": 8, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "norm_groups": 4},
    "semantic": {
        "kind": "distill",
        "decoder_width": 16,
        "decoder_depth": 1,
        "decoder_heads": 2,
        "feature_dim": 12,
        "teacher": None,
    },
}


@pytest.fixture
def clean_registry():
    before = dict(registry._PRESETS)
    yield
    registry._PRESETS.clear()
    registry._PRESETS.update(before)


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match=r"quantizer\.codebok_size \(did you mean codebook_size\?\)"):
        TokenizerConfig.from_dict({**MINI, "quantizer": {**MINI["quantizer"], "codebok_size": 8}})
    with pytest.raises(ConfigError, match="pixle_depth"):
        TokenizerConfig.from_dict({**MINI, "pixle_depth": 1})
    with pytest.raises(ConfigError, match=r"semantic\.text_tower\.widht"):
        TokenizerConfig.from_dict({**MINI, "semantic": {**MINI["semantic"], "text_tower": {"widht": 3}}})


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("quantizer", "levels", "3"),
        ("quantizer", "levels", True),  # a bool is not an int
        ("quantizer", "normalize", 1),
        ("quantizer", "update", "sgd"),
        ("quantizer", "ema_warmup", "official"),
        ("encoder", "stage_widths", [8, "x"]),
        ("pixel_decoder", "ch_mult", 4),
    ],
)
def test_wrong_types_are_named(section, key, value):
    with pytest.raises(ConfigError, match=rf"config key {section}\.{key}"):
        TokenizerConfig.from_dict({**MINI, section: {**MINI[section], key: value}})


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="pixel_depth"):
        TokenizerConfig.from_dict({**MINI, "pixel_depth": 4})
    with pytest.raises(ConfigError, match=r"quantizer.levels"):
        TokenizerConfig.from_dict({**MINI, "quantizer": {**MINI["quantizer"], "kind": "mcq"}})
    with pytest.raises(ConfigError, match=r"quantizer.ema_min_cluster_size"):
        TokenizerConfig.from_dict({**MINI, "quantizer": {**MINI["quantizer"], "ema_min_cluster_size": -1.0}})
    with pytest.raises(ValueError, match="stride"):  # decoder x8 vs encoder stride 16
        Tokenizer.from_config(MINI, encoder={"patch_size": 16})


def test_configs_written_before_the_ema_options_keep_their_ema_step(tmp_path):
    """Checkpoint configs written before ema_warmup / ema_min_cluster_size existed load with the step they
    were trained with (codes frozen during a warm-up, no cluster-size floor)."""
    shipped = Path(polytok.__file__).parent / "weights" / "evotok-tiny" / "config.json"
    data = json.loads(shipped.read_text())
    for key in ("ema_warmup", "ema_min_cluster_size"):
        data["quantizer"].pop(key, None)
    old = tmp_path / "config.json"
    old.write_text(json.dumps(data))
    q = TokenizerConfig.from_file(old).quantizer
    assert (q.ema_warmup, q.ema_min_cluster_size) == ("frozen", 0.0)


def test_config_round_trips_through_dict_json_yaml(tmp_path):
    cfg = TokenizerConfig.from_dict(MINI)
    assert TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(MINI))
    (tmp_path / "c.json").write_text(json.dumps(MINI))
    assert (
        TokenizerConfig.from_file(tmp_path / "c.yaml")
        == cfg
        == TokenizerConfig.from_file(tmp_path / "c.json")
    )
    (tmp_path / "c.txt").write_text("{}")
    with pytest.raises(ConfigError, match=r"\.json, \.yaml"):
        TokenizerConfig.from_file(tmp_path / "c.txt")
    with pytest.raises(FileNotFoundError, match=r"nope.yaml"):
        TokenizerConfig.from_file(tmp_path / "nope.yaml")


def test_every_preset_config_parses_and_round_trips():
    for name in list_presets():
        cfg = get_preset_config(name)
        assert cfg.name == name
        assert TokenizerConfig.from_dict(cfg.to_dict()) == cfg


def test_user_yaml_preset_works_end_to_end(tmp_path, clean_registry):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(MINI))
    tok = Tokenizer.from_config(path).eval()
    x = torch.rand(2, 3, 32, 48)
    codes = tok.encode(x)
    assert codes.shape == (2, 4, 6, 3)
    assert tok.decode(codes).shape == x.shape
    register_preset("my-mini", TokenizerConfig.from_file(path))
    assert "my-mini" in list_presets()
    assert Tokenizer.from_preset("my-mini", pixel_depth=1).pixel_depth == 1
    with pytest.raises(ValueError, match="already registered"):
        register_preset("my-mini", MINI)
    register_preset("my-mini", {**MINI, "pixel_depth": 3}, overwrite=True)
    assert get_preset_config("my-mini").pixel_depth == 3
    with pytest.raises(ConfigError, match=r"quantizer\.bogus"):
        register_preset("broken", {**MINI, "quantizer": {"bogus": 1}})
    with pytest.raises(KeyError, match="unknown preset 'nope'"):
        get_preset_dict("nope")


def test_overrides_merge_and_reject_typos():
    dotted = {"quantizer.levels": 2}
    tok = Tokenizer.from_config(MINI, pixel_depth=1, quantizer={"codebook_size": 8}, **dotted)
    assert tok.code_shape == (2,) and tok.codebook_size == 8 and tok.pixel_depth == 1
    with pytest.raises(ConfigError, match=r"quantizer\.levles \(did you mean levels\?\)"):
        Tokenizer.from_config(MINI, quantizer={"levles": 2})
    with pytest.raises(ConfigError, match=r"quantizer__levels"):  # dotted keys only, no second syntax
        Tokenizer.from_config(MINI, quantizer__levels=2)


def test_a_config_must_name_its_sections_and_their_kinds(tmp_path):
    sections = r"encoder, quantizer, pixel_decoder, semantic"
    missing = rf"missing required config key\(s\): {sections}$"
    with pytest.raises(ConfigError, match=rf"^TokenizerConfig: {missing}"):
        TokenizerConfig.from_dict({})
    partial = {**MINI, "quantizer": {"dim": 8}}
    del partial["semantic"]
    with pytest.raises(ConfigError, match=r"missing required config key\(s\): quantizer\.kind, semantic$"):
        TokenizerConfig.from_dict(partial)
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"empty\.json: .*{missing}"):
        Tokenizer.from_config(tmp_path / "empty.json")
    assert TokenizerConfig().quantizer.kind == "mcq"  # code builds the dataclass from its defaults


def test_a_checkpoint_whose_config_is_empty_is_refused_at_load(tmp_path):
    torch.manual_seed(0)
    ck = Tokenizer.from_config(MINI).save_pretrained(tmp_path / "ck")
    (ck / "config.json").write_text("{}")
    (ck / "manifest.json").unlink()  # as a directory saved without checksums: the config check itself
    missing = r"config\.json: .*missing required config key\(s\): encoder,"
    with pytest.raises(ConfigError, match=missing) as info:
        Tokenizer.from_pretrained(ck)
    assert "\n" not in str(info.value) and "missing keys" not in str(info.value)


# -- checkpoint files ------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    tok = Tokenizer.from_config(MINI).eval()
    tok.save_pretrained(tmp_path / "ck")
    return tok, tmp_path / "ck"


def test_checkpoint_files_and_missing_pieces(saved, tmp_path):
    _, ck = saved
    assert json.loads((ck / "config.json").read_text()) == TokenizerConfig.from_dict(MINI).to_dict()
    with pytest.raises(FileNotFoundError, match="checkpoint directory not found"):
        Tokenizer.from_pretrained(tmp_path / "absent")
    (ck / "model.safetensors").rename(ck / "moved")
    with pytest.raises(FileNotFoundError, match=r"model.safetensors"):
        Tokenizer.from_pretrained(ck)
    (ck / "moved").rename(ck / "model.safetensors")
    (ck / "config.json").rename(ck / "c")
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        Tokenizer.from_pretrained(ck)


def test_half_written_files_are_reported(saved):
    _, ck = saved
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors has .*truncated"):  # caught by the manifest
        Tokenizer.from_pretrained(ck)
    (ck / "manifest.json").unlink()  # without one, the reader itself refuses the file
    with (
        pytest.warns(UserWarning, match="not verified"),
        pytest.raises(ValueError, match="truncated or corrupt"),
    ):
        Tokenizer.from_pretrained(ck)
    (ck / "config.json").write_text('{"name": "mini", "encoder": {')
    with pytest.warns(UserWarning, match="not verified"), pytest.raises(ValueError, match="not valid JSON"):
        Tokenizer.from_pretrained(ck)


def test_missing_unexpected_and_misshaped_tensors_are_named(saved):
    from safetensors.torch import load_file, save_file

    _, ck = saved
    (ck / "manifest.json").unlink()  # weights edited by hand: no checksums to check against
    state = load_file(str(ck / "model.safetensors"))
    state["extra.weight"] = torch.zeros(1)
    dropped = state.pop("pixel_decoder.cnn.conv_out.bias")
    save_file(state, str(ck / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"missing keys: pixel_decoder\.cnn\.conv_out\.bias.*unexpected keys: extra"
    ):
        Tokenizer.from_pretrained(ck)
    del state["extra.weight"]
    state["pixel_decoder.cnn.conv_out.bias"] = torch.zeros(dropped.numel() + 1)
    save_file(state, str(ck / "model.safetensors"))
    with pytest.raises(ValueError, match=r"conv_out.bias' has shape"):
        Tokenizer.from_pretrained(ck)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickles_only_with_weights_only(saved, capsys):
    tok, ck = saved
    (ck / "model.safetensors").unlink()
    (ck / "manifest.json").unlink()  # a directory written by other tools: no manifest
    torch.save({"x": _Evil()}, ck / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        Tokenizer.from_pretrained(ck)
    assert "unpickled code ran" not in capsys.readouterr().out
    torch.save(tok.checkpoint_state_dict(), ck / "pytorch_model.bin")  # plain tensors load fine
    tok2 = Tokenizer.from_pretrained(ck).eval()
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(tok2.encode(x), tok.encode(x))


# -- text side -------------------------------------------------------------------------------------


def test_clip_bpe_tokenizer_matches_open_clip():
    open_clip = pytest.importorskip("open_clip")
    texts = ["a photo of a cat", "Two DOGS, playing!", ""]
    ours = ClipBPETextTokenizer(77)(texts)
    assert torch.equal(ours, open_clip.tokenize(texts, context_length=77).long())
    assert ours.shape == (3, 77) and int(ours[0, 0]) == 49406


def test_byte_tokenizer():
    tok = ByteTextTokenizer(8)
    ids = tok(["hé", "a long caption"])
    assert ids[0, :5].tolist() == [1, ord("h") + 3, 0xC3 + 3, 0xA9 + 3, 2] and ids[0, 5:].eq(0).all()
    assert ids[1, -1] == 2 and bytes(int(i) - 3 for i in ids[1, 1:-1]).decode() == "a long"
    with pytest.raises(TypeError, match="list of strings"):
        tok([1, 2])
    with pytest.raises(ValueError, match="empty"):
        tok([])


def test_text_transformer_pools_at_end_token():
    torch.manual_seed(0)
    cfg = TextTowerConfig(width=32, depth=2, heads=2, context_length=12, vocab="bytes")
    tower = TextTransformer(cfg, embed_dim=16)
    ids = tower.tokenizer(["cat", "dog"])
    out = tower(ids)
    assert out.shape == (2, 16)
    changed = ids.clone()
    changed[:, 6:] = 7  # after the end token: invisible to it under causal attention
    torch.testing.assert_close(tower(changed), out)
    changed[0, 1] = 50  # inside the caption: changes the embedding
    assert not torch.allclose(tower(changed)[0], out[0])
    torch.testing.assert_close(tower.encode(["cat"]).norm(dim=-1), torch.ones(1))
    with pytest.raises(ValueError, match="end-of-text"):
        tower(torch.full((1, 12), 5, dtype=torch.long))


# -- transformers SigLIP encoders (tiny configs, real loading code) --------------------------------

TINY_SIGLIP = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "patch_size": 8,
    "num_patches": 16,
}


@pytest.mark.parametrize("kind", ["siglip2", "siglip"])
def test_siglip_encoder_from_local_weights_and_as_teacher(kind, tmp_path):
    import transformers

    model_cls = transformers.Siglip2VisionModel if kind == "siglip2" else transformers.SiglipVisionModel
    config_cls = transformers.Siglip2VisionConfig if kind == "siglip2" else transformers.SiglipVisionConfig
    extra = {} if kind == "siglip2" else {"image_size": 32}
    torch.manual_seed(0)
    ref = model_cls(config_cls(**TINY_SIGLIP, **extra, vision_use_head=False)).eval()
    ref.save_pretrained(tmp_path / "w")
    cfg = {
        **MINI,
        "encoder": {
            "kind": kind,
            "hf_config": {**TINY_SIGLIP, **extra},
            "weights": str(tmp_path / "w"),
            "feature_layer": -2,
            "freeze_last_blocks": 1,
        },
        "semantic": {**MINI["semantic"], "teacher": "encoder", "feature_dim": 32},
    }
    tok = Tokenizer.from_config(cfg).eval()
    x = torch.rand(2, 3, 32, 32)
    tokens, grid = tok.encoder((x - 0.5) / 0.5)
    with torch.no_grad():
        if kind == "siglip2":  # patches from transformers' own image processor, an independent patchify
            proc = transformers.Siglip2ImageProcessor(
                patch_size=8, max_num_patches=16, do_resize=False, do_rescale=False, do_normalize=False
            )
            inputs = proc(
                images=list((x - 0.5) / 0.5), return_tensors="pt", input_data_format="channels_first"
            )
            want = ref(**inputs, output_hidden_states=True).hidden_states[-2]
        else:
            want = ref(pixel_values=(x - 0.5) / 0.5, output_hidden_states=True).hidden_states[-2]
    assert grid == (4, 4) and tokens.shape == (2, 16, 32)
    torch.testing.assert_close(tokens, want)
    for name, p in tok.encoder.named_parameters():  # same weights as the saved directory
        assert torch.equal(p, dict(ref.named_parameters())[name.removeprefix("model.")])
    last = list(getattr(tok.encoder.model, "vision_model", tok.encoder.model).encoder.layers)[-1]
    assert not any(p.requires_grad for p in last.parameters())
    out = tok(x)
    # the frozen teacher is the pretrained encoder itself: untrained, its features equal the encoder's
    torch.testing.assert_close(out.teacher_features, tokens)
    assert tok.decode(tok.encode(x)).shape == x.shape
    tok.save_pretrained(tmp_path / "ck")
    tok2 = Tokenizer.from_pretrained(tmp_path / "ck").eval()
    assert torch.equal(tok2.encode(x), tok.encode(x))
