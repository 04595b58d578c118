"""The ``vila-u`` peer: VILA-U's vision tower converted through ``polytok convert vila-u`` computes the
official function (fixture ``vila_u_model``, made by scripts/parity/make_vila_u_fixture.py from
mit-han-lab/vila-u at reduced width, norms and biases perturbed), and the folder's variants and faults
are handled as the issue asks."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from polytok.cli import main
from polytok.hub import load_tokenizer
from polytok.peers import describe_peers, list_peers
from polytok.peers.vila_u import VilaUTokenizer
from polytok.peers.vila_u.convert import convert_vila_u
from polytok.registry import list_models
from test_parity_official import ATOL, load_fixture


def tiny_config() -> dict:
    """The fixture's reduced tower as a polytok config (the same widths, random weights)."""
    _, _, meta = load_fixture("vila_u_model")
    rq, dd = meta["rqvaesiglip"], meta["rqvaesiglip"]["ddconfig"]
    return {
        "siglip": meta["siglip"],
        "quantizer": {"dim": rq["embed_dim"], "levels": rq["code_shape"][2], "codebook_size": rq["n_embed"]},
        "decoder": {k: dd[k] for k in ("z_channels", "ch", "ch_mult", "num_res_blocks")},
    }


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("vila_u_model")


def write_folder(root, fixture, *, drop=(), change=None, rq=None, spiece=True):
    """VILA-U's vision_tower/ folder as it saves it, from the fixture (``drop``: keys left out,
    ``change``: key -> tensor, ``rq``: config overrides); its SigLIP config in a sibling folder named
    by ``pretrained_model`` relative to the folder."""
    tensors, official, meta = fixture
    root.mkdir(parents=True, exist_ok=True)
    (root / "siglip").mkdir(exist_ok=True)
    (root / "siglip" / "config.json").write_text(json.dumps(meta["siglip"]))
    config = {
        "architectures": ["RQVAESIGLIPTransformer"],
        "model_type": "rqvaesigliptransformer_model",
        "hidden_size": meta["siglip"]["vision_config"]["hidden_size"],
        "rqvaesiglip": {**meta["rqvaesiglip"], "pretrained_model": "siglip", **(rq or {})},
        "rqtransformer": {"embed_dim": 8},
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "crop_size": {"height": 16}})
    )
    state = {k: v for k, v in official.items() if k not in drop}
    state.update(change or {})
    state["rqtransformer.head.weight"] = torch.zeros(2, 2)  # the LLM's depth head: not the tokenizer's
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    if spiece:
        (root / "spiece.model").write_bytes(tensors["spiece_model"].numpy().tobytes())
        (root / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    return root


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    root = tmp_path_factory.mktemp("vila_u")
    folder = write_folder(root / "vision_tower", fixture)
    assert main(["convert", "vila-u", str(folder), str(root / "out")]) == 0
    return load_tokenizer(root / "out")


def test_converted_tower_computes_the_official_function(fixture, converted):
    tensors, _, meta = fixture
    assert meta["code_margin"] > 1e-3  # no code is near a tie: equal codes hold on any CPU
    tok = converted
    assert isinstance(tok, VilaUTokenizer) and tok.code_shape == (4,)
    codes = tok.encode(tensors["images"])
    assert codes.dtype == torch.int64 and torch.equal(codes, tensors["codes"])
    pixels = tok.pixels(tok.code_vectors(codes))  # VILA-U's [-1, 1] scale, unclamped
    torch.testing.assert_close(pixels, tensors["reconstruction"], atol=ATOL, rtol=0)
    expected = ((tensors["reconstruction"] + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(tok.decode(codes), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(tok.semantic_features(codes), tensors["image_embedding"], atol=ATOL, rtol=0)
    ids = tok.text_tokenizer(meta["captions"])
    assert torch.equal(ids, tensors["text_ids"])  # SigLIP's tokenizer as VILA-U's environment runs it
    torch.testing.assert_close(
        tok.encode_text(meta["captions"]), tensors["text_embedding"], atol=ATOL, rtol=0
    )


def test_parameter_counts_match_the_official_model_at_the_published_size(fixture):
    _, _, meta = fixture
    with torch.device("meta"):
        tok = VilaUTokenizer.from_preset("vila-u")
    assert tok.parameter_counts() == meta["official_full_parameters"]
    card = next(row for row in describe_peers() if row["name"] == "vila-u")  # peers sorted by name
    assert card["parameters"].startswith(f"{meta['official_full_parameters']['total'] / 1e6:.1f}M")


def test_a_shared_codebook_stored_once_or_under_every_level_converts_alike(fixture, tmp_path):
    tensors, official, _ = fixture
    first = [k for k in official if k.startswith("rqvaesiglip.quantizer.codebooks.0.")]
    copies = [k.replace("codebooks.0.", f"codebooks.{i}.") for k in first for i in (0, 1, 2)]
    folder = write_folder(tmp_path / "a", fixture, drop=copies)  # only codebooks.3 stored
    assert main(["convert", "vila-u", str(folder), str(tmp_path / "out")]) == 0
    assert torch.equal(load_tokenizer(tmp_path / "out").encode(tensors["images"]), tensors["codes"])
    key = "rqvaesiglip.quantizer.codebooks.2.weight"
    folder = write_folder(tmp_path / "b", fixture, change={key: official[key] + 1})
    with pytest.raises(ValueError, match=r"codebooks\.0\.weight' and .*codebooks\.2\.weight' differ"):
        convert_vila_u(folder)


def test_the_padding_row_is_never_a_code(fixture, tmp_path):
    """VILA-U's codebooks end in a padding row that its search skips: even a padding row equal to an
    input vector is not chosen."""
    tensors, official, _ = fixture
    ref = convert_vila_u(write_folder(tmp_path / "ref", fixture))
    key = "rqvaesiglip.quantizer.codebooks.0.weight"
    weight = official[key].clone()
    weight[-1] = ref.features(tensors["images"])[0, 0]  # the first position's own feature vector
    shared = {key.replace("codebooks.0.", f"codebooks.{i}."): weight.clone() for i in range(4)}  # one module
    folder = write_folder(tmp_path / "pad", fixture, change=shared)
    codes = convert_vila_u(folder).encode(tensors["images"])
    assert torch.equal(codes, tensors["codes"]) and int(codes.max()) < ref.codebook_size


@pytest.mark.parametrize(
    "key",
    [
        "rqvaesiglip.decoder.up.0.block.1.conv2.weight",
        "rqvaesiglip.siglip_model.vision_model.post_layernorm.bias",
    ],
)
def test_a_missing_key_is_named_by_its_official_name(fixture, tmp_path, capsys, key):
    folder = write_folder(tmp_path / "f", fixture, drop=[key])
    assert main(["convert", "vila-u", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polytok: error:") and key in err and "\n" not in err


def test_the_text_tokenizer_comes_from_the_folder_or_the_flag(fixture, tmp_path, capsys):
    tensors, _, meta = fixture
    folder = write_folder(tmp_path / "f", fixture, spiece=False)
    assert main(["convert", "vila-u", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "spiece.model" in err and "--text-tokenizer" in err
    model = tmp_path / "sp" / "spiece.model"
    model.parent.mkdir()
    model.write_bytes(tensors["spiece_model"].numpy().tobytes())
    assert (
        main(["convert", "vila-u", str(folder), str(tmp_path / "out"), "--text-tokenizer", str(model)]) == 0
    )
    tok = load_tokenizer(tmp_path / "out")
    assert torch.equal(tok.text_tokenizer(meta["captions"]), tensors["text_ids"])


@pytest.mark.parametrize(
    ("rq", "message"),
    [
        ({"pretrained_model": "google/siglip-nowhere"}, "google/siglip-nowhere"),
        ({"decoder_latent_shape": [2, 2]}, "decoder_latent_shape"),
        ({"code_shape": [2, 2, 4]}, "latent_shape"),
    ],
)
def test_folders_polytok_cannot_convert_are_refused_in_one_line(fixture, tmp_path, capsys, rq, message):
    folder = write_folder(tmp_path / "f", fixture, rq=rq)
    assert main(["convert", "vila-u", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polytok: error:") and message in err and "\n" not in err


def test_save_load_round_trip_and_registry(tmp_path):
    torch.manual_seed(0)
    tok = VilaUTokenizer(tiny_config()).eval()
    images = torch.rand(2, 3, 16, 16)
    codes = tok.encode(images)
    assert codes.shape == (2, 4, 4, 4)
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert isinstance(again, VilaUTokenizer) and torch.equal(again.encode(images), codes)
    assert again.decode(codes[..., :2]).shape == (2, 3, 16, 16)  # a prefix of the levels decodes
    assert "vila-u" in list_peers() and "vila-u" in {e.name for e in list_models(kind="tokenizer")}


def test_bad_inputs_are_refused_with_the_reason():
    tok = VilaUTokenizer(tiny_config()).eval()
    with pytest.raises(ValueError, match="16x16 images"):
        tok.encode(torch.rand(1, 3, 32, 32))
    codes = tok.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(codes + 64)
    with pytest.raises(ValueError, match="4 levels"):
        tok.semantic_features(codes[..., :2])
    with pytest.raises(ValueError, match="no text tokenizer"):
        tok.encode_text(["a cat"])
