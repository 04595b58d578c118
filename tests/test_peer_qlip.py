"""The ``qlip-b16-256`` peer: a QLIP folder converted through ``polytok convert qlip`` computes the official
function (fixture ``qlip_model``, made by scripts/parity/make_qlip_fixture.py from NVlabs/QLIP at reduced
width in two layouts, norms and biases perturbed), and the folder's variants and faults are handled as
the issue asks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from polytok.cli import main
from polytok.hub import load_tokenizer
from polytok.peers import describe_peers, list_peers
from polytok.peers.qlip import QlipTokenizer
from polytok.peers.qlip.convert import convert_qlip
from polytok.registry import list_models
from test_parity_official import ATOL, load_fixture

VARIANTS = ("eva", "plain")


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("qlip_model")


def write_folder(root, fixture, variant="eva", *, drop=(), change=None, config=None, weights="safetensors"):
    """A QLIP Hugging Face folder as ``QLIPModel.save_pretrained`` writes it, from the fixture (``drop``:
    keys left out, ``change``: key -> tensor, ``config``: top-level config overrides)."""
    _, official, meta = fixture
    root.mkdir(parents=True, exist_ok=True)
    data = {**meta[variant]["config"], "architectures": ["QLIPModel"], **(config or {})}
    (root / "config.json").write_text(json.dumps(data))
    (root / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
            }
        )
    )
    prefix = f"{variant}."
    state = {k.removeprefix(prefix): v for k, v in official.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if k not in drop}
    state.update(change or {})
    if weights == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    else:
        torch.save(state, root / "pytorch_model.bin")
    return root


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    root = tmp_path_factory.mktemp("qlip")
    models = {}
    for variant in VARIANTS:
        folder = write_folder(root / variant, fixture, variant)
        assert main(["convert", "qlip", str(folder), str(root / f"out-{variant}")]) == 0
        models[variant] = load_tokenizer(root / f"out-{variant}")
    return models


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_model_computes_the_official_function(fixture, converted, variant):
    tensors, _, meta = fixture
    t = {k.removeprefix(f"{variant}."): v for k, v in tensors.items() if k.startswith(f"{variant}.")}
    assert meta[variant]["code_margin"] > 1e-3  # every bit input clears 0 by 1e-3 in float64: any CPU agrees
    tok = converted[variant]
    assert isinstance(tok, QlipTokenizer) and tok.code_shape == ()
    codes = tok.encode(t["images"])
    assert codes.dtype == torch.int64 and torch.equal(codes, t["codes"])  # QLIP's bit order
    pixels = tok.pixels(tok.code_vectors(codes))  # QLIP's normalised pixel space, unclamped
    torch.testing.assert_close(pixels, t["reconstruction"], atol=ATOL, rtol=0)
    expected = (t["reconstruction"] * tok.pixel_std + tok.pixel_mean).clamp(0, 1)
    torch.testing.assert_close(tok.decode(codes), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(tok.image_features(t["images"]), t["image_embedding"], atol=ATOL, rtol=0)
    torch.testing.assert_close(tok.encode_text(t["text_ids"]), t["text_embedding"], atol=ATOL, rtol=0)


def test_bits_follow_qlips_order(converted, fixture):
    """Index bit 2^(D-1-j) is channel j's sign: the first channel is the most significant bit."""
    tensors, _, _ = fixture
    tok = converted["eva"]
    bits = tok.config.quantizer.bits
    h = tok.features(tensors["eva.images"]).reshape(-1, bits)
    weights = 2 ** torch.arange(bits - 1, -1, -1)
    assert torch.equal(((h > 0).long() * weights).sum(-1), tok.encode(tensors["eva.images"]).reshape(-1))
    vectors = tok.code_vectors(tok.encode(tensors["eva.images"]))
    assert torch.equal(vectors.reshape(-1, bits) > 0, h > 0)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(()))  # BSQ: codes on the unit sphere


def test_parameter_counts_match_the_official_model_at_the_published_size(fixture):
    _, _, meta = fixture
    with torch.device("meta"):
        tok = QlipTokenizer.from_preset("qlip-b16-256")
    assert tok.parameter_counts() == meta["official_full_parameters"]
    card = next(row for row in describe_peers() if row["name"] == "qlip-b16-256")
    assert card["parameters"].startswith(f"{meta['official_full_parameters']['total'] / 1e6:.1f}M")
    assert tok.grid == (16, 16) and tok.codebook_size == 2**28


def test_a_pickled_folder_converts_weights_only(fixture, tmp_path):
    tensors, _, _ = fixture
    folder = write_folder(tmp_path / "bin", fixture, weights="bin")
    assert torch.equal(convert_qlip(folder).encode(tensors["eva.images"]), tensors["eva.codes"])


@pytest.mark.parametrize(
    "key",
    [
        "vision_model.encoder.layers.1.self_attn.inner_attn_ln.bias",
        "vision_decoder.conv_out.weight",
        "text_model.encoder.layers.0.mlp.w3.weight",
        "vision_model.quant_embed_post.c_fc.bias",
    ],
)
def test_a_missing_key_is_named_by_its_official_name(fixture, tmp_path, capsys, key):
    _, official, _ = fixture
    if f"eva.{key}" not in official:  # the text tower is CLIP's (fc1 / fc2), not SwiGLU
        key = "text_model.encoder.layers.0.mlp.fc2.weight"
    folder = write_folder(tmp_path / "f", fixture, drop=[key])
    assert main(["convert", "qlip", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polytok: error:") and key in err and "\n" not in err


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"vision_config": {"quantizer": "none"}}, "bsq"),
        ({"text_projection_bias": None}, "text_projection_bias"),
        ({"decoder_config": {"patch_size": 4, "image_size": 32}}, "patch_size"),
    ],
)
def test_folders_polytok_cannot_convert_are_refused_in_one_line(fixture, tmp_path, capsys, config, message):
    _, _, meta = fixture
    base = meta["eva"]["config"]
    merged = {k: ({**base[k], **v} if isinstance(v, dict) else v) for k, v in config.items()}
    folder = write_folder(tmp_path / "f", fixture, config=merged)
    assert main(["convert", "qlip", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polytok: error:") and message in err and "\n" not in err


def test_an_unexpected_key_is_refused(fixture, tmp_path, capsys):
    folder = write_folder(tmp_path / "f", fixture, change={"vision_model.extra.weight": torch.zeros(2)})
    assert main(["convert", "qlip", str(folder), str(tmp_path / "out")]) == 2
    assert "vision_model.extra.weight" in capsys.readouterr().err


def test_save_load_round_trip_registry_and_api(converted, fixture, tmp_path):
    tensors, _, _ = fixture
    tok = converted["eva"]
    images = tensors["eva.images"]
    codes = tok.encode(images)
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert isinstance(again, QlipTokenizer) and torch.equal(again.encode(images), codes)
    assert torch.equal(again.decode(codes), tok.decode(codes))
    assert "qlip-b16-256" in list_peers() and "qlip-b16-256" in {
        e.name for e in list_models(kind="tokenizer")
    }
    assert tok.code_embedding(codes).shape == (2, 12)


def test_bad_inputs_are_refused_with_the_reason(converted):
    tok = converted["eva"]
    with pytest.raises(ValueError, match="32x32 images"):
        tok.encode(torch.rand(1, 3, 64, 64))
    codes = tok.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(codes + 2**12)
    with pytest.raises(ValueError, match="image_features"):
        tok.semantic_features(codes)
    with pytest.raises(ValueError, match="pass token ids"):
        tok.encode_text(["a cat"])  # the reduced tower does not embed CLIP's BPE vocabulary
    with pytest.raises(ValueError, match="shape"):
        tok.decode(codes[:, :2])


def test_the_published_size_tokenizes_captions_with_clips_bpe():
    with torch.device("meta"):
        tok = QlipTokenizer.from_preset("qlip-b16-256")
    ids = tok.text_tokenizer(["a photo of a cat"])
    assert ids.shape == (1, 77) and int(ids[0, 0]) == 49406 and 49407 in ids[0].tolist()
