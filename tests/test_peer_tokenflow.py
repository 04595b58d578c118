"""The ``tokenflow-256`` peer: TokenFlow's tokenizer converted through ``polytok convert tokenflow`` computes
the official function (fixture ``tokenflow_model``, made by scripts/parity/make_tokenflow_fixture.py from
ByteFlow-AI/TokenFlow at reduced width, norms and biases perturbed, positions resized 3 x 3 -> 4 x 4 as
the released model resizes 14 x 14 -> 16 x 16), and its checkpoints' variants and faults are handled."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from polytok.cli import main
from polytok.hub import load_tokenizer
from polytok.peers import describe_peers, list_peers
from polytok.peers.tokenflow import TokenFlowTokenizer
from polytok.peers.tokenflow.config import SCALES_256
from polytok.quant import MultiScaleDualQuantizer
from polytok.registry import list_models
from test_parity_official import ATOL, load_fixture

USAGE_RECORD = 131072  # quantize.codebook_used: zeros, left out of the fixture


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("tokenflow_model")


def official_state(fixture) -> dict[str, torch.Tensor]:
    _, official, _ = fixture
    state = {k: v.float() for k, v in official.items()}
    state["quantize.codebook_used"] = torch.zeros(USAGE_RECORD)
    return state


def reduced_overrides(fixture) -> dict:
    """What the reduced network's tensors do not say: its grid and scales (TokenFlow's code fixes them)."""
    _, _, meta = fixture
    r = meta["reduced"]
    return {"image_size": r["image_size"], "quantizer": {"scales": r["scales"]}}


def write_checkpoint(path, fixture, *, entry="model", drop=(), args=None, extra=None):
    """A checkpoint as TokenFlow's training script saves it: the state under ``entry`` and ``args`` an
    argparse.Namespace."""
    _, _, meta = fixture
    state = {k: v for k, v in official_state(fixture).items() if k not in drop}
    r = meta["reduced"]
    defaults = {
        "teacher": "clipb_224",
        "codebook_size": r["codebook_size"],
        "codebook_embed_dim": r["codebook_embed_dim"],
        "semantic_code_dim": r["semantic_code_dim"],
        "enhanced_decoder": True,
    }
    ckpt = {entry: state, "args": argparse.Namespace(**{**defaults, **(args or {})}), **(extra or {})}
    torch.save(ckpt, path)
    return path


def convert(tmp_path, fixture, ckpt, name="out"):
    cfg = tmp_path / "reduced.json"
    cfg.write_text(json.dumps(reduced_overrides(fixture)))
    return main(["convert", "tokenflow", str(ckpt), str(tmp_path / name), "--config", str(cfg)])


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenflow")
    assert convert(root, fixture, write_checkpoint(root / "ckpt.pt", fixture)) == 0
    return load_tokenizer(root / "out")


def test_converted_tokenizer_computes_the_official_function(fixture, converted):
    tensors, _, meta = fixture
    assert meta["code_margin"] > 1e-3  # no code pair is near a tie at any scale: equal codes on any CPU
    tok = converted
    assert isinstance(tok, TokenFlowTokenizer) and tok.scales == [1, 2, 4] and tok.num_tokens == 21
    codes = tok.encode(tensors["images"])
    assert codes.dtype == torch.int64 and torch.equal(codes, tensors["codes"])  # 42 of 42
    vectors = tok.code_vectors(codes)  # TokenFlow's decode_code sums the same code pairs
    assert torch.allclose(vectors.permute(0, 3, 1, 2), tensors["quantized"], atol=ATOL, rtol=0)
    with torch.no_grad():
        recon = tok.pixels(vectors)
        semantic = tok.semantic_decode(vectors)
    assert (recon - tensors["reconstruction"]).abs().max() < ATOL
    assert (recon - tensors["reconstruction_latent"]).abs().max() < ATOL  # decode of encode's own map
    assert (semantic - tensors["semantic_tokens"]).abs().max() < ATOL
    assert torch.equal(tok.decode(codes), ((recon + 1) / 2).clamp(0, 1))
    assert torch.equal(tok.semantic_tokens(codes), semantic)
    emb = tok.semantic_features(codes)
    assert emb.shape == (2, semantic.shape[-1]) and torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_parameter_counts_match_the_official_model_at_the_published_size(fixture):
    _, _, meta = fixture
    with torch.device("meta"):
        full = TokenFlowTokenizer.from_preset("tokenflow-256")
    assert full.parameter_counts() == meta["official_full_parameters"]  # part by part, 376,569,643 in all
    assert full.num_tokens == 817 and full.scales == SCALES_256 and full.codebook_size == 32768


@pytest.mark.parametrize("entry", ["ema", "state_dict"])
def test_the_state_comes_from_ema_else_model_else_state_dict(fixture, tmp_path, converted, entry):
    tensors, _, _ = fixture
    extra = {"model": {"encoder.conv_in.weight": torch.zeros(1)}} if entry == "ema" else None
    ckpt = write_checkpoint(tmp_path / "c.pt", fixture, entry=entry, extra=extra)
    assert convert(tmp_path, fixture, ckpt) == 0
    assert torch.equal(load_tokenizer(tmp_path / "out").encode(tensors["images"]), tensors["codes"])


@pytest.mark.parametrize(
    "key",
    [
        "encoder_vqkd.transformer.resblocks.1.attn.in_proj_weight",
        "decoder.conv_blocks.1.res.2.conv2.bias",
        "quantize.embedding_vqgan.weight",
        "decoder_vqkd.blocks.0.attn.q_bias",
    ],
)
def test_a_missing_key_is_named_by_its_official_name(fixture, tmp_path, capsys, key):
    assert convert(tmp_path, fixture, write_checkpoint(tmp_path / "c.pt", fixture, drop=[key])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polytok: error:") and key in err and "\n" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"teacher": "siglip_384"}, "siglip_384"),
        ({"codebook_size": 32768}, "codebook_size=32768"),
    ],
)
def test_checkpoints_polytok_cannot_convert_are_refused_in_one_line(fixture, tmp_path, capsys, args, message):
    assert convert(tmp_path, fixture, write_checkpoint(tmp_path / "c.pt", fixture, args=args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polytok: error:") and message in err and "\n" not in err


class _Payload:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_pickle_payload_is_refused_without_trust(fixture, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "c.pt", fixture, extra={"note": _Payload()})
    assert convert(tmp_path, fixture, ckpt) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("polytok: error:") and "weights_only" in err and "\n" not in err
    assert "this ran" not in capsys.readouterr().out


def test_save_load_round_trip_prefixes_and_registry(fixture, converted, tmp_path):
    tensors, _, _ = fixture
    tok = converted
    codes = tok.encode(tensors["images"])
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(tmp_path / "t")
    assert isinstance(again, TokenFlowTokenizer) and torch.equal(again.encode(tensors["images"]), codes)
    maps = tok.split_codes(codes)
    assert [tuple(m.shape) for m in maps] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    coarse = tok.decode(codes[:, :5])  # the first two scales
    assert coarse.shape == tensors["images"].shape and not torch.equal(coarse, tok.decode(codes))
    assert "tokenflow-256" in list_peers() and "tokenflow-256" in {
        e.name for e in list_models(kind="tokenizer")
    }
    row = next(r for r in describe_peers() if r["name"] == "tokenflow-256")
    assert row["official"]["rFID"] == 1.37 and row["resolution"] == 256


def test_bad_inputs_are_refused_with_the_reason(converted):
    tok = converted
    with pytest.raises(ValueError, match="8x8 images"):
        tok.encode(torch.rand(1, 3, 16, 16))
    codes = tok.encode(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(codes + 64)
    with pytest.raises(ValueError, match="one of"):
        tok.decode(codes[:, :7])  # not a prefix of whole scales
    with pytest.raises(TypeError, match="integer"):
        tok.decode(codes.float())


def test_multi_scale_dual_quantizer_codes_from_indices_and_gradients():
    torch.manual_seed(0)
    q = MultiScaleDualQuantizer(16, 4, 128, scales=(1, 2, 4), normalize=True)
    s = torch.randn(2, 4, 4, 16, requires_grad=True)
    p = torch.randn(2, 4, 4, 4, requires_grad=True)
    out = q(s, p)
    (out.loss + out.quantized.square().sum()).backward()
    assert s.grad.abs().sum() > 0 and p.grad.abs().sum() > 0
    assert q.codebooks[0].embed.grad is not None  # codebooks learn by gradient by default
    assert out.stats["usage"].shape == (3, 2, 1)  # per scale, semantic and pixel
    q.eval()
    with torch.no_grad():
        ev = q(s, p)
    assert torch.equal(q.indices_to_codes(ev.indices), ev.quantized)
    assert torch.equal(q.indices_to_codes(ev.indices[:, :5]), ev.prefix(2))
    # each stream and codebook is L2-normalised: a scale's codes are unit vectors per stream
    first = q.indices_to_codes(ev.indices[:, :1])
    assert torch.allclose(first[..., :16].norm(dim=-1), torch.ones(2, 4, 4), atol=1e-5)
