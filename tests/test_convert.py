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
from polytok.convert.cli import convert_checkpoint
from polytok.models.tokenizer import Tokenizer
from test_parity_official import ATOL, load_fixture


def unitok_target_config(arch: dict, args: dict) -> dict:
    block = {"width": arch["width"], "depth": arch["depth"], "heads": arch["heads"], "mlp": "geglu"}
    projection = {"kind": "attention", "heads": arch["width"] // args["vocab_width"]}
    return {
        "name": "unitok-reduced",
        "image_size": args["img_size"],
        "encoder": {
            "kind": "hybrid_vit",
            **block,
            "stem_width": arch["stem_width"],
            "stage_widths": arch["stage_widths"],
            "stage_depths": arch["stage_depths"],
        },
        "projection": projection,
        "post_projection": projection,
        "quantizer": {
            "kind": "mcq",
            "dim": args["vocab_width"],
            "num_codebooks": args["num_codebooks"],
            "codebook_size": args["vocab_size"] // args["num_codebooks"],
            "normalize": True,
        },
        "pixel_decoder": {
            "kind": "vit",
            **block,
            "up_widths": arch["up_widths"],
            "up_depths": arch["up_depths"],
        },
        "semantic": {
            "kind": "contrastive",
            "embed_dim": args["embed_dim"],
            "text_tower": {
                "kind": "transformer",
                "width": args["text_width"],
                "depth": args["text_layers"],
                "heads": args["text_heads"],
                "context_length": args["text_context_length"],
                "vocab": "bytes",
            },
        },
    }


@pytest.fixture(scope="module")
def unitok_files(tmp_path_factory):
    """The fixture's official UniTok, saved as UniTok's main.py saves it; plus a matching target config."""
    tensors, official, meta = load_fixture("unitok_model")
    args = dict(meta["args"], dtype=torch.float32)  # main.py stores the dtype object itself
    root = tmp_path_factory.mktemp("unitok")
    checkpoint = {
        "args": args,
        "epoch": 1,
        "iter": 0,
        "trainer": {"config": {"grad_clip": 10.0}, "unitok": official},
    }
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


def evotok_target_config(arch: dict, args: dict) -> dict:
    siglip = arch["siglip"]
    return {
        "name": "evotok-reduced",
        "image_size": args["image_size"],
        "encoder": {"kind": "siglip", "hf_config": siglip, "feature_layer": -2, "freeze_last_blocks": 1},
        "projection": {"kind": "tanh_mlp", "hidden": siglip["hidden_size"]},
        "post_projection": {"kind": "identity"},
        "quantizer": {
            "kind": "rvq",
            "dim": args["codebook_embed_dim"],
            "levels": args["vqkd_depth"],
            "codebook_size": args["codebook_size"],
            "update": "ema",
            "decay": 0.99,
            "ema_warmup_steps": args["vq_warmup"],
            "ema_warmup": "counts_only",
            "ema_min_cluster_size": 1.0,
            "dead_code_threshold": 1.0,
            "beta": 1.0,
        },
        "pixel_depth": args["vqgan_depth"],
        "pixel_decoder": {
            "kind": "cnn",
            "z_channels": arch["z_channels"],
            "ch": arch["ch"],
            "ch_mult": arch["ch_mult"],
            "num_res_blocks": arch["num_res_blocks"],
        },
        "semantic": {
            "kind": "distill",
            "decoder_width": siglip["hidden_size"],
            "decoder_depth": arch["decoder_depth"],
            "decoder_heads": arch["decoder_heads"],
            "decoder_layout": "beit",
            "feature_dim": siglip["hidden_size"],
            "teacher": None,
        },
    }


@pytest.fixture(scope="module")
def evotok_files(tmp_path_factory):
    """The fixture's official EvoTok, saved as its rq_train.py save_ckpt saves it."""
    tensors, official, meta = load_fixture("evotok_model")
    state = dict(official)
    state["quantize.codebook_used"] = torch.zeros(131072, meta["args"]["vqkd_depth"])  # left out of the file
    root = tmp_path_factory.mktemp("evotok")
    checkpoint = {
        "model": state,
        "optimizer": {},
        "discriminator": {},
        "optimizer_disc": {},
        "steps": 0,
        "args": argparse.Namespace(**meta["args"]),
    }
    torch.save(checkpoint, root / "0500000.pt")
    (root / "config.json").write_text(json.dumps(evotok_target_config(meta["arch"], meta["args"])))
    return root, tensors, checkpoint


def check_evotok_outputs(tok: Tokenizer, tensors: dict) -> None:
    codes = tok.encode((tensors["images"] + 1) / 2)  # (B, h, w, levels)
    assert torch.equal(codes, tensors["codes"])
    official_pixels = tensors["reconstruction"].clamp(-1, 1)  # from the first vqgan_depth levels
    torch.testing.assert_close(tok.decode(codes) * 2 - 1, official_pixels, atol=2 * ATOL, rtol=0)
    torch.testing.assert_close(tok.semantic_tokens(codes), tensors["semantic_tokens"], atol=ATOL, rtol=0)


def test_evotok_checkpoint_converts_to_the_official_function(evotok_files, tmp_path, capsys):
    root, tensors, _ = evotok_files
    out = tmp_path / "converted"
    code, _, err = run_cli(capsys, "evotok", root / "0500000.pt", out, root / "config.json")
    assert code == 0, err  # an argparse.Namespace in 'args' needs no trust
    check_evotok_outputs(Tokenizer.from_pretrained(out).eval(), tensors)


def test_evotok_siglip_keys_of_either_transformers_layout(evotok_files, tmp_path):
    """The fixture holds transformers 4.x keys (`vision_model.` level); 5.x files have none."""
    root, tensors, checkpoint = evotok_files
    assert any(k.startswith("encoder_vqkd.vision_model.") for k in checkpoint["model"])
    flat = {k.replace(".vision_model.", ".", 1): v for k, v in checkpoint["model"].items()}
    torch.save(dict(checkpoint, model=flat), tmp_path / "v5.pt")
    out = convert_checkpoint("evotok", tmp_path / "v5.pt", tmp_path / "out", config=root / "config.json")
    check_evotok_outputs(Tokenizer.from_pretrained(out).eval(), tensors)


def test_evotok_prefers_the_ema_weights(evotok_files, tmp_path):
    root, tensors, checkpoint = evotok_files
    scrambled = {k: v * 0.5 if v.is_floating_point() else v for k, v in checkpoint["model"].items()}
    torch.save(dict(checkpoint, model=scrambled, ema=checkpoint["model"]), tmp_path / "ema.pt")
    out = convert_checkpoint("evotok", tmp_path / "ema.pt", tmp_path / "out", config=root / "config.json")
    check_evotok_outputs(Tokenizer.from_pretrained(out).eval(), tensors)


def test_evotok_args_are_read_not_assumed(evotok_files, tmp_path, capsys):
    root, _, checkpoint = evotok_files
    args = argparse.Namespace(**dict(vars(checkpoint["args"]), vqgan_depth=1))  # the parser's default
    torch.save(dict(checkpoint, args=args), tmp_path / "depth1.pt")
    code, _, err = run_cli(capsys, "evotok", tmp_path / "depth1.pt", tmp_path / "o", root / "config.json")
    assert code == 2 and "vqgan_depth=1" in err and "pixel_depth=2" in err


def test_evotok_checkpoint_missing_a_key_names_it(evotok_files, tmp_path, capsys):
    root, _, checkpoint = evotok_files
    state = {k: v for k, v in checkpoint["model"].items() if k != "post_quant_conv.weight"}
    torch.save(dict(checkpoint, model=state), tmp_path / "broken.pt")
    code, _, err = run_cli(capsys, "evotok", tmp_path / "broken.pt", tmp_path / "o", root / "config.json")
    assert code == 2 and "missing key 'post_quant_conv.weight'" in err


def test_a_checkpoint_of_the_other_system_is_named(unitok_files, evotok_files, tmp_path, capsys):
    unitok_root, evotok_root = unitok_files[0], evotok_files[0]
    code, _, err = run_cli(capsys, "unitok", evotok_root / "0500000.pt", tmp_path / "o")
    assert code == 2 and "looks like an EvoTok checkpoint" in err
    code, _, err = run_cli(capsys, "evotok", unitok_root / "ckpt-last.pth", tmp_path / "o")
    assert code == 2 and "polytok convert unitok" in err


def test_a_file_that_is_not_a_whole_checkpoint_is_named_as_such(unitok_files, tmp_path, capsys):
    root = unitok_files[0]
    data = (root / "ckpt-last.pth").read_bytes()
    cases = {
        "empty.pth": (b"", "empty"),
        "truncated.pth": (data[: len(data) // 2], "truncated"),
        "notes.pth": (b"these are my training notes, not weights\n", "not a torch checkpoint"),
    }
    for name, (content, said) in cases.items():
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli(capsys, "unitok", tmp_path / name, tmp_path / "o", root / "config.json")
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, (name, err)
        assert "--trust-checkpoint" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "system, key",
    [
        ("unitok", "encoder.blocks.0.attn.qkv.weight"),  # moved by prefix: the ViT blocks
        ("unitok", "encoder.patch_embed.backbone.stages.1.0.shortcut.expand.weight"),  # its bias stays
        ("evotok", "encoder_vqkd.vision_model.encoder.layers.0.mlp.fc1.weight"),  # SigLIP, by prefix
        ("evotok", "decoder.conv_blocks.1.res.0.nin_shortcut.weight"),
    ],
)
def test_a_missing_key_is_named_as_the_official_file_names_it(
    unitok_files, evotok_files, tmp_path, capsys, system, key
):
    root, _, checkpoint = unitok_files if system == "unitok" else evotok_files
    if system == "unitok":
        state = {k: v for k, v in checkpoint["trainer"]["unitok"].items() if k != key}
        broken = dict(checkpoint, trainer={"unitok": state})
    else:
        broken = dict(checkpoint, model={k: v for k, v in checkpoint["model"].items() if k != key})
    torch.save(broken, tmp_path / "broken.pt")
    code, _, err = run_cli(capsys, system, tmp_path / "broken.pt", tmp_path / "o", root / "config.json")
    assert code == 2 and f"missing key {key!r}" in err, err


def test_out_holding_another_tokenizer_is_replaced_only_when_asked(unitok_files, tmp_path, capsys):
    from polytok.hub import load_tokenizer

    root = unitok_files[0]
    out = tmp_path / "out"
    load_tokenizer("evotok-tiny").save_pretrained(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "unitok", root / "ckpt-last.pth", out, root / "config.json")
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    argv = ["convert", "unitok", str(root / "ckpt-last.pth"), str(out), "--config", str(root / "config.json")]
    assert main([*argv, "--overwrite"]) == 0
    assert Tokenizer.from_pretrained(out).config.name == "unitok-reduced"


def test_convert_on_a_full_disk_leaves_no_partial_folder(unitok_files, tmp_path, capsys):
    from disk_helpers import files_under, full_disk

    root = unitok_files[0]
    with full_disk(room=4096):  # the config fits, the weights do not
        code, _, err = run_cli(capsys, "unitok", root / "ckpt-last.pth", tmp_path / "o", root / "config.json")
    assert code == 2 and "File too large" in err and len(err.strip().splitlines()) == 1, err
    assert files_under(tmp_path) == [] and list(tmp_path.iterdir()) == []  # no staging folder left
