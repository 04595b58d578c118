"""``llamagen-vq16``: LlamaGen's VQ-16 tokenizer (and Janus' generation tokenizer, the same network).

The official checkpoints are rebuilt here, in the layouts LlamaGen and Janus release, from the parity
fixture ``llamagen_model`` (LlamaGen's official ``VQModel`` at reduced width, norms and biases perturbed;
made by scripts/parity/make_llamagen_fixture.py), converted with ``polytok convert llamagen`` and compared
with the official codes and images.
"""

from __future__ import annotations

import argparse
import copy
import fractions
import json

import pytest
import torch
from safetensors.torch import save_file

from polytok import Tokenizer
from polytok.cli import main
from polytok.convert.cli import convert_checkpoint
from polytok.convert.llamagen import read_llamagen_source
from polytok.nn import VQGANEncoder
from test_parity_official import ATOL, load_fixture

# LlamaGen's VQ_16() counted with its own code (sum of parameter sizes; the usage record is a buffer).
OFFICIAL_VQ16_PARAMETERS = 71_883_403
JANUS_PREFIX = "gen_vision_model."


def reduced_config(args: dict, arch: dict) -> dict:
    """The llamagen-vq16 preset at the fixture's widths."""
    cnn = {"ch": arch["ch"], "ch_mult": arch["ch_mult"], "num_res_blocks": arch["num_res_blocks"]}
    return {
        "name": "llamagen-reduced",
        "image_size": args["image_size"],
        "encoder": {"kind": "cnn", "width": arch["z_channels"], **cnn},
        "projection": {"kind": "linear"},
        "post_projection": {"kind": "identity"},
        "quantizer": {
            "kind": "vq",
            "dim": args["codebook_embed_dim"],
            "codebook_size": args["codebook_size"],
            "normalize": True,
        },
        "pixel_decoder": {"kind": "cnn", "z_channels": arch["z_channels"], **cnn},
        "semantic": {"kind": "none"},
    }


@pytest.fixture(scope="module")
def llamagen(tmp_path_factory):
    """(folder, fixture tensors, official state dict in float32 with its usage record, args); the folder
    holds the released checkpoint layout ``{"model": state}`` and the reduced target config."""
    tensors, official, meta = load_fixture("llamagen_model")
    state = {k: v.float() for k, v in official.items()}  # stored as float16 values: exact in float32
    state["quantize.codebook_used"] = torch.zeros(65536)  # left out of the fixture file
    root = tmp_path_factory.mktemp("llamagen")
    torch.save({"model": state}, root / "vq_ds16_c2i.pt")
    (root / "config.json").write_text(json.dumps(reduced_config(meta["args"], meta["arch"])))
    return root, tensors, state, meta["args"]


def run_cli(capsys, source, out, config=None, *extra):
    argv = ["convert", "llamagen", str(source), str(out), *extra]
    code = main(argv + (["--config", str(config)] if config else []))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def decoder_output(tok: Tokenizer, codes: torch.Tensor) -> torch.Tensor:
    """The pixel decoder's output on the [-1, 1] scale, unclamped (LlamaGen's ``decode_code``)."""
    with torch.no_grad():
        vectors = tok.quantizer.indices_to_codes(codes.reshape(codes.shape[0], -1))
        return tok.pixel_decoder(tok.post_projection(vectors), tuple(codes.shape[1:3]))


def check_outputs(tok: Tokenizer, tensors: dict) -> None:
    """Codes 100% equal; images within 1e-5 of LlamaGen's.

    Both sides round in float32 (here: official 2.5e-6 and polytok 5e-6 from a float64 evaluation, whose
    sums run in another order on another CPU), so the float32 images are held to 2e-5 and the converted
    weights, evaluated in float64, to 1e-5 of the official float32 output: only the official rounding
    remains there, the same on any CPU."""
    images = (tensors["images"] + 1) / 2  # LlamaGen reads [-1, 1]; polytok [0, 1]
    codes = tok.encode(images)
    assert codes.dtype == torch.int64 and torch.equal(codes, tensors["codes"])
    official = tensors["reconstruction"]
    torch.testing.assert_close(decoder_output(tok, codes), official, atol=2 * ATOL, rtol=0)
    torch.testing.assert_close(tok.decode(codes) * 2 - 1, official.clamp(-1, 1), atol=2 * ATOL, rtol=0)
    exact = decoder_output(copy.deepcopy(tok).double(), codes)
    torch.testing.assert_close(exact, official.double(), atol=ATOL, rtol=0)


def test_codes_of_the_fixture_have_margins():
    """The fixture's inputs were drawn so that every position's best code wins by a cosine margin."""
    _, _, meta = load_fixture("llamagen_model")
    assert meta["code_margin"] > 1e-3 and meta["janus_checked"]


def test_llamagen_checkpoint_converts_to_the_official_function(llamagen, tmp_path, capsys):
    root, tensors, _, _ = llamagen
    out = tmp_path / "converted"
    code, stdout, err = run_cli(capsys, root / "vq_ds16_c2i.pt", out, root / "config.json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1]) == {"converted": str(out), "system": "llamagen"}
    tok = Tokenizer.from_pretrained(out).eval()
    check_outputs(tok, tensors)
    codes = tok.encode((tensors["images"] + 1) / 2)
    assert tok.code_shape == () and codes.shape == (2, 8, 8)
    assert tok.code_embedding(codes).shape == (2, 8)
    with pytest.raises(ValueError, match="no semantic branch"):
        tok.semantic_features(codes)


def test_a_training_checkpoint_prefers_ema_and_checks_its_args(llamagen, tmp_path, capsys):
    """vq_train.py saves model, optimizer, discriminator, steps, args (a Namespace) and ema when enabled."""
    root, tensors, state, args = llamagen
    scrambled = {k: v * 0.5 for k, v in state.items()}
    checkpoint = {
        "model": scrambled,
        "ema": state,
        "optimizer": {},
        "discriminator": {},
        "optimizer_disc": {},
        "steps": 1000,
        "args": argparse.Namespace(**args),
    }
    torch.save(checkpoint, tmp_path / "0001000.pt")
    cfg = root / "config.json"
    out = convert_checkpoint("llamagen", tmp_path / "0001000.pt", tmp_path / "out", config=cfg)
    check_outputs(Tokenizer.from_pretrained(out).eval(), tensors)
    other = dict(checkpoint, args=argparse.Namespace(**dict(args, codebook_size=512)))
    torch.save(other, tmp_path / "other.pt")
    code, _, err = run_cli(capsys, tmp_path / "other.pt", tmp_path / "o", root / "config.json")
    assert code == 2 and err.startswith("polytok: error:") and "codebook_size=512" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    vq8 = dict(checkpoint, args=argparse.Namespace(**dict(args, vq_model="VQ-8")))
    torch.save(vq8, tmp_path / "vq8.pt")
    code, _, err = run_cli(capsys, tmp_path / "vq8.pt", tmp_path / "o", root / "config.json")
    assert code == 2 and "ch_mult=[1, 2, 2, 4]" in err


def janus_state(state: dict) -> dict:
    """The whole Janus model's flat state dict: the VQ model under its prefix among other parts."""
    full = {f"{JANUS_PREFIX}{k}": v for k, v in state.items()}
    full["language_model.model.embed_tokens.weight"] = torch.randn(10, 4)
    full["gen_head.output_mlp_projector.weight"] = torch.randn(3, 4)
    full["gen_embed.weight"] = torch.randn(256, 4)
    return full


def test_janus_generation_tokenizer_converts_from_its_model_files(llamagen, tmp_path):
    root, tensors, state, _ = llamagen
    full = janus_state(state)
    cfg = root / "config.json"
    torch.save(full, tmp_path / "pytorch_model.bin")
    out = convert_checkpoint("llamagen", tmp_path / "pytorch_model.bin", tmp_path / "a", config=cfg)
    check_outputs(Tokenizer.from_pretrained(out).eval(), tensors)
    # safetensors, one file or shards with their index (the VQ model split over two shards)
    folder = tmp_path / "janus"
    folder.mkdir()
    names = sorted(full)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: full[k].contiguous() for k in keys}, str(folder / shard))
    weight_map = {k: shard for shard, keys in halves.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = convert_checkpoint("llamagen", folder, tmp_path / "b", config=cfg)
    check_outputs(Tokenizer.from_pretrained(out).eval(), tensors)
    prefix, picked, args, _ = read_llamagen_source(folder)
    assert prefix == JANUS_PREFIX and args is None and all(k.startswith(JANUS_PREFIX) for k in picked)
    # pickled shards with their index (Janus-Pro-7B's layout); the second in torch's legacy format,
    # which is read whole (no memory map)
    bins = tmp_path / "janus-bin"
    bins.mkdir()
    shard_names = {
        "pytorch_model-00001-of-00002.bin": names[::2],
        "pytorch_model-00002-of-00002.bin": names[1::2],
    }
    for i, (shard, keys) in enumerate(shard_names.items()):
        torch.save({k: full[k] for k in keys}, bins / shard, _use_new_zipfile_serialization=i == 0)
    weight_map = {k: shard for shard, keys in shard_names.items() for k in keys}
    (bins / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = convert_checkpoint("llamagen", bins, tmp_path / "c", config=cfg)
    check_outputs(Tokenizer.from_pretrained(out).eval(), tensors)


def test_janus_bfloat16_weights_convert_to_a_float32_tokenizer(llamagen, tmp_path):
    root, _, state, _ = llamagen
    half = {k: v.bfloat16() for k, v in janus_state(state).items()}
    save_file(half, str(tmp_path / "model.safetensors"))
    cfg = root / "config.json"
    out = convert_checkpoint("llamagen", tmp_path / "model.safetensors", tmp_path / "o", config=cfg)
    tok = Tokenizer.from_pretrained(out)
    embed = tok.checkpoint_state_dict()["quantizer.codebooks.0.embed"]
    assert embed.dtype == torch.float32
    assert torch.equal(embed[0], half[f"{JANUS_PREFIX}quantize.embedding.weight"].float())


@pytest.mark.parametrize(
    "key",
    [
        "encoder.conv_blocks.1.res.0.nin_shortcut.weight",
        "encoder.conv_blocks.0.downsample.conv.bias",
        "encoder.mid.1.q.weight",
        "decoder.conv_blocks.0.attn.0.proj_out.bias",
        "post_quant_conv.weight",
    ],
)
def test_a_missing_key_is_named_as_the_official_file_names_it(llamagen, tmp_path, capsys, key):
    root, _, state, _ = llamagen
    torch.save({"model": {k: v for k, v in state.items() if k != key}}, tmp_path / "broken.pt")
    code, _, err = run_cli(capsys, tmp_path / "broken.pt", tmp_path / "o", root / "config.json")
    assert code == 2 and f"missing key {key!r}" in err and len(err.strip().splitlines()) == 1, err
    full = {k: v for k, v in janus_state(state).items() if k != JANUS_PREFIX + key}
    torch.save(full, tmp_path / "janus.bin")
    code, _, err = run_cli(capsys, tmp_path / "janus.bin", tmp_path / "o", root / "config.json")
    assert code == 2 and f"missing key {JANUS_PREFIX + key!r}" in err, err


def test_an_unexpected_key_is_named(llamagen, tmp_path, capsys):
    root, _, state, _ = llamagen
    torch.save({"model": dict(state, **{"encoder.extra.weight": torch.ones(1)})}, tmp_path / "x.pt")
    code, _, err = run_cli(capsys, tmp_path / "x.pt", tmp_path / "o", root / "config.json")
    assert code == 2 and "unexpected key(s) 'encoder.extra.weight'" in err


def test_the_full_preset_refuses_a_reduced_checkpoint_naming_the_codebook(llamagen, tmp_path, capsys):
    root, _, _, _ = llamagen
    code, _, err = run_cli(capsys, root / "vq_ds16_c2i.pt", tmp_path / "o")
    assert code == 2 and "quant_conv.weight has shape (8, 16, 1, 1)" in err, err
    assert not (tmp_path / "o").exists()


def test_files_of_other_systems_and_payloads_are_refused_in_one_line(llamagen, tmp_path, capsys):
    root, _, state, _ = llamagen
    torch.save({"model": {"quantize.codebooks.0.weight": torch.ones(3, 2)}}, tmp_path / "evotok.pt")
    torch.save({"args": {}, "trainer": {"unitok": {}}}, tmp_path / "unitok.pth")
    # any object a weights-only unpickler does not know (a payload could run code when unpickled)
    torch.save({"model": state, "extra": fractions.Fraction(1, 3)}, tmp_path / "payload.pt")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 16)
    cases = {
        "evotok.pt": "no LlamaGen VQ model",
        "unitok.pth": "polytok convert unitok",
        "payload.pt": "--trust-checkpoint",
        "broken.safetensors": "not a readable safetensors file",
        "absent.pt": "not found",
    }
    for name, said in cases.items():
        code, _, err = run_cli(capsys, tmp_path / name, tmp_path / "o", root / "config.json")
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (name, err)
        assert err.startswith("polytok: error:") and not (tmp_path / "o").exists()
    empty = tmp_path / "folder"
    empty.mkdir()
    code, _, err = run_cli(capsys, empty, tmp_path / "o", root / "config.json")
    assert code == 2 and "pytorch_model.bin" in err


def test_a_target_without_llamagen_layout_is_refused(llamagen, tmp_path, capsys):
    root, _, _, _ = llamagen
    cfg = json.loads((root / "config.json").read_text())
    cfg["projection"] = {"kind": "tanh_mlp"}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, root / "vq_ds16_c2i.pt", tmp_path / "o", tmp_path / "c.json")
    assert code == 2 and "LlamaGen's layout" in err


def test_llamagen_vq16_preset_is_the_published_network():
    with torch.device("meta"):
        tok = Tokenizer.from_preset("llamagen-vq16")
    counts = tok.parameter_counts()
    assert counts["total"] == OFFICIAL_VQ16_PARAMETERS
    # post_quant_conv is the pixel decoder's first layer in polytok; quant_conv is the projection
    assert counts["projection"] == 256 * 8 + 8 and counts["quantizer"] == 16384 * 8
    assert tok.stride == 16 and tok.code_shape == () and tok.codebook_size == 16384
    assert tok.config.quantizer.normalize and tok.config.semantic.kind == "none"
    enc = tok.encoder.cnn
    assert [len(level) for level in enc.levels] == [3, 3, 3, 3, 4]  # 2 res (+ down), 2 x (res, attn)
    assert enc.conv_out.out_channels == 256 and tok.pixel_decoder.post_quant_conv.in_channels == 8


def test_vqgan_encoder_pads_like_vqgan_and_downsamples_by_its_factor():
    torch.manual_seed(0)
    enc = VQGANEncoder(4, (32, 64, 64), num_res_blocks=1).eval()
    assert enc.factor == 4
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 24, 40)).shape == (1, 4, 6, 10)
    down = enc.levels[0][-1]
    x = torch.zeros(1, 32, 4, 4)
    x[..., 3, 3] = 1.0  # the last row and column feed only the last output (asymmetric padding)
    with torch.no_grad():
        y = down(x) - down(torch.zeros_like(x))
    assert y[..., :1, :].abs().max() == 0 and y[..., 1, 1].abs().max() > 0


def test_cnn_encoder_config_is_checked():
    from polytok.config import ConfigError

    with pytest.raises(ConfigError, match=r"encoder\.ch_mult"):
        Tokenizer.from_preset("llamagen-vq16", encoder={"ch_mult": []})
    with pytest.raises(ConfigError, match=r"encoder\.num_res_blocks"):
        Tokenizer.from_preset("llamagen-vq16", encoder={"num_res_blocks": 0})
    with pytest.raises(ValueError, match="encoder stride is 8"):  # encoder and decoder must mirror
        Tokenizer.from_preset("llamagen-vq16", encoder={"ch": 32, "ch_mult": [1, 2, 2, 4]})
