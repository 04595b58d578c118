"""Parity with the official UniTok and EvoTok code, through fixtures built from it.

The fixtures (tests/fixtures/parity, made by scripts/parity/make_parity_fixtures.py from the official
repositories) hold seeded official modules at reduced width, with LayerNorm weights and all biases
perturbed, their inputs and their outputs. Each test converts the official state dict with
polytok.convert, loads it strictly into the polytok module and compares the outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from polytok.convert.evotok import map_semantic_decoder
from polytok.convert.state import StateMapper
from polytok.convert.unitok import map_attention_projection, map_text_tower
from polytok.models.config import TextTowerConfig
from polytok.models.decoders import BeitSemanticDecoder
from polytok.models.text import TextTransformer
from polytok.nn import AttentionProjection
from polytok.quant import Codebook

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
ATOL = 1e-5


def load_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """-> (tensors, official state dict, constructor config)."""
    tensors, official = {}, {}
    with safe_open(str(FIXTURES / f"{name}.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["config"])
        for key in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
            if key.startswith("official."):
                official[key.removeprefix("official.")] = f.get_tensor(key)
            else:
                tensors[key] = f.get_tensor(key)
    return tensors, official, meta


def convert(official: dict[str, torch.Tensor], mapping, *args) -> dict[str, torch.Tensor]:
    mapper = StateMapper({f"src.{k}": v for k, v in official.items()}, "fixture")
    mapping(mapper, "src", "dst", *args)
    return {k.removeprefix("dst."): v for k, v in mapper.finish().items()}


def _is_norm_weight(key: str) -> bool:
    *_, owner, leaf = ["", *key.split(".")]
    return leaf == "weight" and ("norm" in owner or owner.startswith("ln_"))


def test_fixtures_perturb_every_norm_and_bias():
    """LayerNorm weight 1 and bias 0 would hide a missing or doubled LayerNorm: no fixture may have them."""
    paths = sorted(FIXTURES.glob("*.safetensors"))
    assert paths
    for path in paths:
        _, official, meta = load_fixture(path.stem)
        if meta.get("kind") == "codebook_update":  # a codebook's statistics: no layers to perturb
            continue
        assert any(_is_norm_weight(k) for k in official), path.name
        for key, value in official.items():
            if key.endswith("bias") and "zero_k_bias" not in key:
                assert value.abs().min() > 0, (path.name, key)
            if _is_norm_weight(key):
                assert (value - 1).abs().max() > 0.05, (path.name, key)


@pytest.mark.parametrize("name", ["unitok_quant_proj", "unitok_post_quant_proj"])
def test_unitok_attention_projection_matches_official(name):
    tensors, official, cfg = load_fixture(name)
    module = AttentionProjection(cfg["in_dim"], cfg["out_dim"], cfg["heads"], cfg["mlp_ratio"]).eval()
    module.load_state_dict(convert(official, map_attention_projection), strict=True)
    with torch.no_grad():
        out = module(tensors["input"])
    torch.testing.assert_close(out, tensors["output"], atol=ATOL, rtol=0)


def test_unitok_text_tower_matches_open_clip():
    tensors, official, cfg = load_fixture("unitok_text_tower")
    text_cfg = TextTowerConfig(
        kind="transformer",
        width=cfg["width"],
        depth=cfg["layers"],
        heads=cfg["heads"],
        context_length=cfg["context_length"],
        vocab="bytes",
    )
    assert cfg["vocab_size"] == 259  # the byte vocabulary's size
    tower = TextTransformer(text_cfg, cfg["output_dim"]).eval()
    tower.load_state_dict(convert(official, map_text_tower, cfg["layers"]), strict=True)
    with torch.no_grad():
        tokens = tower.token_features(tensors["input"])
        rows = torch.arange(tokens.shape[0])
        pooled = tower.text_projection(tokens[rows, tensors["pooled_index"]])
    torch.testing.assert_close(tokens, tensors["tokens"], atol=ATOL, rtol=0)
    torch.testing.assert_close(pooled, tensors["pooled"], atol=ATOL, rtol=0)


def test_evotok_semantic_decoder_matches_official():
    tensors, official, cfg = load_fixture("evotok_semantic_decoder")
    assert cfg["width"] % cfg["heads"]  # heads of width // heads channels do not fill the width
    grid = (cfg["grid"], cfg["grid"])
    decoder = BeitSemanticDecoder(
        cfg["code_dim"], cfg["width"], cfg["depth"], cfg["heads"], cfg["out_dim"], grid
    ).eval()
    mapper = StateMapper(official, "fixture")
    map_semantic_decoder(mapper, "decoder_vqkd", "decode_task_layer", "dst", cfg["depth"])
    decoder.load_state_dict({k.removeprefix("dst."): v for k, v in mapper.finish().items()}, strict=True)
    tokens = tensors["input"].flatten(2).transpose(1, 2)  # the code map as (B, N, code_dim)
    with torch.no_grad():
        out = decoder(tokens, grid)
    torch.testing.assert_close(out, tensors["output"], atol=ATOL, rtol=0)


def test_beit_semantic_decoder_resizes_its_learned_positions_for_another_grid():
    torch.manual_seed(0)
    decoder = BeitSemanticDecoder(8, 24, 1, 5, 16, grid=(4, 4)).eval()
    assert decoder.positions((4, 4)) is decoder.pos_embed
    wide = decoder.positions((4, 8))
    assert wide.shape == (1, 1 + 32, 24)
    torch.testing.assert_close(wide[:, 0], decoder.pos_embed[:, 0])  # the class token's position is kept
    with torch.no_grad():
        assert decoder(torch.randn(2, 32, 8), (4, 8)).shape == (2, 32, 16)


def test_evotok_ema_update_matches_official_inside_and_after_the_warmup():
    """EvoTok's EMA step, several steps inside and after its warm-up, from the state of its checkpoint
    (mapped as polytok.convert maps it). During the warm-up the cluster sizes move and the codes used
    more than once per step shrink; normalised cluster sizes below 1 count as 1. Everything in float64;
    the inputs lie near the codes of the moment, so no assignment is near a tie."""
    tensors, official, cfg = load_fixture("evotok_ema_update")
    k, d, warmup = cfg["codebook_size"], cfg["dim"], cfg["vq_warmup"]
    book = Codebook(
        1,
        k,
        d,
        update="ema",
        decay=cfg["decay"],
        eps=cfg["eps"],
        ema_warmup_steps=warmup,
        ema_warmup="counts_only",
        ema_min_cluster_size=1.0,
    ).double()
    book.embed.copy_(official["weight"][:-1].unsqueeze(0))  # last row: padding index
    book.cluster_size.copy_(official["cluster_size_ema"].unsqueeze(0))
    book.usage_ema.copy_(official["cluster_size_ema"].unsqueeze(0))
    book.embed_sum.copy_(official["embed_ema"].unsqueeze(0))
    book.steps.fill_(int(official["step"]))
    assert cfg["code_margin"] > 1e-3
    moved = []
    for step, x in enumerate(tensors["inputs"]):
        rows = x.unsqueeze(1)  # (M, G = 1, d)
        before = book.embed.clone()
        indices = book.search(rows)
        assert torch.equal(indices[:, 0], tensors["codes"][step]), step
        book.record(0, rows, indices)
        book.apply_pending(book.pending_payload(x.device), (0, x.shape[0]))
        for name, got in (
            ("weight", book.embed),
            ("cluster_size", book.cluster_size),
            ("embed_sum", book.embed_sum),
        ):
            torch.testing.assert_close(
                got[0],
                tensors[name][step],
                rtol=1e-12,
                atol=1e-12,
                msg=lambda m, name=name, step=step: f"{name} after step {step}: {m}",
            )
        moved.append(not torch.equal(book.embed, before))
    assert int(book.steps) == len(tensors["inputs"])
    assert moved[0] and warmup < len(moved)  # the codes move inside the warm-up, and steps follow it
