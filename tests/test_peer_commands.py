"""The commands on a saved peer folder (small random peers): reconstruct, encode, decode and eval run
(eval with the figures each peer's branches allow, and no others); what a peer does not support
(``--depth`` on multi-scale codes) is refused in one line that names what the peer lacks, never with a
traceback."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from polytok.cli import main
from polytok.hub import load_tokenizer
from polytok.peers import peer_name

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


PIXEL = ("PSNR", "SSIM", "PSNR[JPEG, equal bits]", "PSNR[bicubic, equal bits]", "attr[shape]", "attr[all]")
# per peer: figures that must be there, figures that must not, and why
FIGURES = {
    "vila-u": (("zero-shot top-1", "zero-shot top-5", "linear probe top-1", "code probe top-1"), ()),
    "qlip-b16-256": (
        ("zero-shot top-1 [image features]", "linear probe top-1 [image features]", "code probe top-1"),
        ("zero-shot top-1", "linear probe top-1"),  # its embedding does not read the codes
    ),
    "tokenflow-256": (("linear probe top-1", "code probe top-1"), ("zero-shot top-1",)),  # no text tower
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_eval_runs_on_a_peer_folder_with_the_figures_its_branches_allow(name, folders, tmp_path, capsys):
    report = tmp_path / "report.html"
    data = ["--data", "shapes", "--split", "heldout", "--max-images", "8", "--image-size", "32"]
    args = [*data, "--zero-shot-task", "object", "--no-semantic-fidelity", "--report", str(report)]
    assert main(["eval", str(folders[name]), *args]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert report.is_file()
    (summary,) = json.loads(report.with_suffix(".json").read_text())
    metrics, skipped, protocol = summary["metrics"], summary["skipped"], summary["protocol"]
    present, absent = FIGURES[name]
    assert set(present) | set(PIXEL) <= set(metrics) and not set(absent) & set(metrics)
    assert 3 < metrics["PSNR"]["value"] < 60 and -1 <= metrics["SSIM"]["value"] <= 1
    for metric in (*present, *PIXEL[1:]):
        if metric.startswith(("SSIM", "attr", "zero-shot", "linear", "code")):
            assert 0 <= metrics[metric]["value"] <= 1, metric
        assert math.isfinite(metrics[metric]["value"])
    codebook = summary["codebook"]
    assert 0 < codebook["summary"]["usage"] <= 1 and codebook["summary"]["perplexity"] >= 1
    assert protocol["num_images"] == 8
    if name == "vila-u":  # residual levels: pixel and code-probe curves at every prefix, semantics at 4
        assert sorted(summary["depth_curves"]["PSNR"]) == ["1", "2", "3", "4"]
        assert sorted(summary["depth_curves"]["code probe top-1"]) == ["1", "2", "3", "4"]
        assert sorted(summary["depth_curves"]["zero-shot top-1"]) == ["4"]
        assert "all 4 residual levels" in skipped["semantics at other depths"]
        assert len(codebook["per_level"]["usage"]) == 4 and codebook["codebook_size"] == 64
    elif name == "qlip-b16-256":  # 2^28 codes: counted as 4 groups of 7 bits; embedding from the images
        assert protocol["codebook_size"] == 2**28 and codebook["codebook_size"] == 2**7
        assert len(codebook["per_codebook"]["usage"][0]) == 4
        assert "4 groups of 7 bits" in protocol["codebook_usage_counts"]
        assert protocol["semantic_input"] == "image features"
        assert metrics["zero-shot top-1 [image features]"]["protocol"]["semantic_input"] == "image features"
        assert summary["depth_curves"] == {}
    else:  # one multi-scale sequence, measured whole, one codebook over every scale's tokens
        assert protocol["code_layout"].startswith("(B, 85): one sequence over the scales [1, 2, 4, 8]")
        assert codebook["num_tokens_per_codebook"] == 8 * 85 and codebook["codebook_size"] == 64
        assert skipped["zero-shot"] == "skipped: TokenFlow has no text tower"
        assert summary["depth_curves"] == {}
