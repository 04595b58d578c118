"""``polytok convert``: official checkpoints (rebuilt here, in the official file layout, from the parity
fixtures' official state dicts) converted and compared with the official outputs."""

from __future__ import annotations

import argparse
import copy
import fractions
import json

import pytest
import torch
import torch.nn.functional as F

from polytok.cli import main
from polytok.convert.checkpoint import UntrustedCheckpointError, read_checkpoint
from polytok.models.tokenizer import Tokenizer
from test_parity_official import ATOL, load_fixture


def unitok_target_config(arch: dict, args: dict) -> dict:
    block = {"width": arch["width"], "depth": arch["depth"], "heads": arch["heads"], "mlp": "geglu"}
    projection = {"kind": "attention", "heads": arch["width"] // args["vocab_width"]}
    return {
        "name": "unitok-reduced",
        "image_size": args["img_size"],
        "encoder": {"kind": "hybrid_vit", **block, "stem_width": arch["stem_width"],
                    "stage_widths": arch["stage_widths"], "stage_depths": arch["stage_depths"]},
        "projection": projection,
        "post_projection": projection,
        "quantizer": {"kind": "mcq", "dim": args["vocab_width"], "num_codebooks": args["num_codebooks"],
                      "codebook_size": args["vocab_size"] // args["num_codebooks"], "normalize": True},
        "pixel_decoder": {"kind": "vit", **block,
                          "up_widths": arch["up_widths"], "up_depths": arch["up_depths"]},
        "semantic": {"kind": "contrastive", "embed_dim": args["embed_dim"], "text_tower": {
            "kind": "transformer", "width": args["text_width"], "depth": args["text_layers"],
            "heads": args["text_heads"], "context_length": args["text_context_length"], "vocab": "bytes"}},
    }


@pytest.fixture(scope="module")
def unitok_files(tmp_path_factory):
    """The fixture's official UniTok, saved as UniTok's main.py saves it; plus a matching target config."""
    tensors, official, meta = load_fixture("unitok_model")
    args = dict(meta["args"], dtype=torch.float32)  # main.py stores the dtype object itself
    root = tmp_path_factory.mktemp("unitok")
    checkpoint = {"args": args, "epoch": 1, "iter": 0,
                  "trainer": {"config": {"grad_clip": 10.0}, "unitok": official}}
    torch.save(checkpoint, root / "ckpt-last.pth")
    (root / "config.json").write_text(json.dumps(unitok_target_config(meta["arch"], meta["args"])))
    return root, tensors, checkpoint


def run_cli(capsys, system, checkpoint, out, config=None):
    argv = ["convert", system, str(checkpoint), str(out)] + (["--config", str(config)] if config else [])
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unitok_checkpoint_converts_to_the_official_function(unitok_files, tmp_path, capsys):
    root, tensors, _ = unitok_files
    out = tmp_path / "converted"
    code, stdout, err = run_cli(capsys, "unitok", root / "ckpt-last.pth", out, root / "config.json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["converted"] == str(out)
    tok = Tokenizer.from_pretrained(out).eval()
    images = (tensors["images"] + 1) / 2  # UniTok reads [-1, 1]; polytok [0, 1]
    codes = tok.encode(images)  # (B, h, w, codebooks)
    b, h, w, g = codes.shape
    assert torch.equal(codes.reshape(b, h * w, g).transpose(1, 2), tensors["codes"])
    official_image = tensors["reconstruction"]  # idx_to_img: clamped to [-1, 1]
    torch.testing.assert_close(tok.decode(codes) * 2 - 1, official_image, atol=2 * ATOL, rtol=0)
    torch.testing.assert_close(
        tok.semantic_features(codes), F.normalize(tensors["image_embedding"], dim=-1), atol=ATOL, rtol=0
    )
    with torch.no_grad():
        ids = tensors["text_ids"]
        feats = tok.text_tower.token_features(ids)
        text = tok.text_tower.text_projection(feats[torch.arange(len(ids)), ids.argmax(dim=-1)])
    torch.testing.assert_close(text, tensors["text_embedding"], atol=ATOL, rtol=0)


def test_unitok_checkpoint_of_another_model_names_the_argument(unitok_files, tmp_path, capsys):
    root, _, checkpoint = unitok_files
    other = copy.copy(checkpoint)
    other["args"] = dict(checkpoint["args"], vocab_width=32)
    torch.save(other, tmp_path / "other.pth")
    code, _, err = run_cli(capsys, "unitok", tmp_path / "other.pth", tmp_path / "o", root / "config.json")
    assert code == 2 and err.startswith("polytok: error:") and "vocab_width=32" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_unitok_checkpoint_missing_a_key_names_it(unitok_files, tmp_path, capsys):
    root, _, checkpoint = unitok_files
    state = dict(checkpoint["trainer"]["unitok"])
    del state["post_quant_proj.mlp.norm.weight"]
    broken = dict(checkpoint, trainer={"unitok": state})
    torch.save(broken, tmp_path / "broken.pth")
    code, _, err = run_cli(capsys, "unitok", tmp_path / "broken.pth", tmp_path / "o", root / "config.json")
    assert code == 2 and "missing key 'post_quant_proj.mlp.norm.weight'" in err


def test_unitok_l_refuses_a_reduced_checkpoint(unitok_files, tmp_path, capsys):
    root, _, _ = unitok_files
    code, _, err = run_cli(capsys, "unitok", root / "ckpt-last.pth", tmp_path / "o")
    assert code == 2 and "vocab_width=16" in err and "quantizer.dim=64" in err


def test_checkpoints_needing_arbitrary_unpickling_need_explicit_trust(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"args": {"scale": fractions.Fraction(1, 3)}, "w": torch.ones(2)}, path)
    with pytest.raises(UntrustedCheckpointError, match=r"fractions\.Fraction"):
        read_checkpoint(path)
    assert read_checkpoint(path, trusted=True)["args"]["scale"] == fractions.Fraction(1, 3)


def test_argparse_namespace_args_load_without_trust(tmp_path):
    path = tmp_path / "evotok.pt"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(codebook_size=8)}, path)
    assert read_checkpoint(path)["args"].codebook_size == 8


def test_cli_refuses_an_untrusted_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "odd.pth"
    torch.save({"args": {"scale": fractions.Fraction(1, 3)}}, path)
    code, _, err = run_cli(capsys, "unitok", path, tmp_path / "o")
    assert code == 2 and "--trust-checkpoint" in err and len(err.strip().splitlines()) == 1
