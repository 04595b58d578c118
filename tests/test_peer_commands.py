"""The commands on a saved peer folder (small random peers): reconstruct, encode and decode run; what a
peer does not support yet (``polytok eval``, ``--depth`` on multi-scale codes) is refused in one line
that names what the peer lacks, never with a traceback."""

from __future__ import annotations

import io

import pytest
import torch

from polytok.cli import main
from polytok.hub import load_tokenizer
from polytok.peers import NOT_EVALUATED, check_evaluable, peer_name

SMALL = {
    "vila-u": {
        "siglip": {
            "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": 32, "patch_size": 16},
            "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                            "num_attention_heads": 4, "vocab_size": 64, "max_position_embeddings": 16},
        },
        "quantizer": {"dim": 32, "codebook_size": 64},
        "decoder": {"z_channels": 16, "ch": 16, "ch_mult": [1, 1, 1, 1, 1], "num_res_blocks": 0},
    },
    "qlip-b16-256": {
        "image_size": 32,
        "encoder": {"width": 32, "mlp_width": 64, "layers": 1, "heads": 2},
        "decoder": {"width": 32, "mlp_width": 64, "layers": 1, "heads": 2},
        "text": {"width": 16, "mlp_width": 32, "layers": 1, "heads": 2},
    },
    "tokenflow-256": {
        "image_size": 32,
        "clip": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
                 "num_attention_heads": 1, "image_size": 24, "patch_size": 4},
        "quantizer": {"codebook_size": 64, "scales": [1, 2, 4, 8]},
        "encoder": {"z_channels": 16, "ch": 16, "ch_mult": [1, 1, 2], "num_res_blocks": 1},
        "decoder": {"z_channels": 16, "ch": 16, "ch_mult": [1, 1, 2], "num_res_blocks": 1},
        "semantic_decoder": {"width": 48, "depth": 1, "heads": 4, "out_dim": 32, "grid": 6},
    },
}  # fmt: skip


def spiece() -> bytes:
    import sentencepiece

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a photo of a cat", "a red circle on a blue square"] * 50), model_writer=buf,
        vocab_size=40, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    return buf.getvalue()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from polytok.peers import peer_class

    root = tmp_path_factory.mktemp("peers")
    out = {}
    for name, small in SMALL.items():
        torch.manual_seed(0)
        extra = {"text_tokenizer": spiece()} if name == "vila-u" else {}
        tok = peer_class(name).from_preset(name, **small, **extra)
        out[name] = tok.save_pretrained(root / name)
    return out


@pytest.mark.parametrize("name", sorted(SMALL))
def test_reconstruct_encode_and_decode_run_on_a_peer_folder(name, folders, tmp_path, capsys):
    folder = str(folders[name])
    assert peer_name(load_tokenizer(folder)) == name
    size = ["--image-size", "32"]
    shapes = ["shapes", "--split", "heldout", "--max-images", "2"]
    assert main(["encode", folder, *shapes, *size, "--out", str(tmp_path / "tokens")]) == 0
    assert main(["decode", folder, str(tmp_path / "tokens"), "--out-dir", str(tmp_path / "dec")]) == 0
    assert len(list((tmp_path / "dec").glob("*.png"))) == 2
    image = next((tmp_path / "dec").glob("*.png"))
    assert main(["reconstruct", folder, str(image), *size, "--out-dir", str(tmp_path / "rec")]) == 0
    assert "psnr_db" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(SMALL))
def test_eval_refuses_a_peer_in_one_line_naming_what_it_lacks(name, folders, capsys):
    args = ["eval", str(folders[name]), "--data", "shapes", "--split", "heldout", "--max-images", "2"]
    assert main([*args, "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"polytok: error: the tokenizer evaluation does not take the peer '{name}' yet")
    assert NOT_EVALUATED[name] in err


def test_depth_on_multi_scale_codes_is_refused_in_one_line(folders, tmp_path, capsys):
    folder = str(folders["tokenflow-256"])
    image = tmp_path / "image.png"
    from polytok.image_io import save_images

    save_images(torch.rand(1, 3, 32, 32), [image])
    assert main(["reconstruct", folder, str(image), "--image-size", "32", "--depth", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "polytok: error: --depth applies to residual tokenizers; tokenflow-256 has no residual levels (its "
        "codes are 85 tokens over scales [1, 2, 4, 8])"
    )


def test_only_peers_are_refused_by_the_evaluation():
    from polytok import Tokenizer

    with torch.device("meta"):
        check_evaluable(Tokenizer.from_preset("llamagen-vq16"))  # a Tokenizer preset: evaluated
    check_evaluable(object())  # anything else duck-typed: left to the evaluation
