"""scripts/studies/semantic_channels.py: the bounds it compares and one short run of its bench."""

from __future__ import annotations

import pytest
import torch

from polytok.models.tokenizer import Tokenizer
from script_helpers import load_script


def test_bounds_touch_the_semantic_channels_only() -> None:
    study = load_script("semantic_channels")
    tok = Tokenizer.from_preset("unitok-tiny", semantic_channels=8, semantic={"head_input": "codes"}).train()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        tok(images)  # fits the linear path
        raw, _ = tok._latent(images)
        latents = {b: study.bounded_latent(tok, images, b) for b in ("raw", "tanh", "norm")}
    k = tok.linear_channels
    assert k == 24 and torch.equal(latents["raw"], raw)
    for latent in latents.values():
        assert torch.equal(latent[..., :k], raw[..., :k])
    torch.testing.assert_close(latents["tanh"][..., k:], torch.tanh(raw[..., k:]))
    norms = latents["norm"][..., k:].unflatten(-1, (2, 4)).norm(dim=-1)  # 2 codebooks of 4 channels
    torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("objective", ["clip", "choice"])
def test_bench_runs_and_probes(objective: str) -> None:
    study = load_script("semantic_channels")
    records = study.run(objective, quantize=True, steps=2, every=1, probe_images=(48, 16))
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert 0.0 <= r["val"] <= 1.0 and 0.0 <= r["heldout"] <= 1.0
        assert r["val"] * 16 == round(r["val"] * 16)  # a share of the 16 val images
        assert torch.isfinite(torch.tensor(r["loss"]))


def test_whitened_caption_features_are_centred_and_part_shape_words() -> None:
    """Whitening over a caption set centres it, and two captions that differ in the shape word only move
    apart relative to the set's spread (the point of whitening)."""
    study = load_script("semantic_channels")
    captions = study.shapes_captions()
    assert len(captions) == 6 * 7 * 2 * 5 * 3 * 4 == len(set(captions))
    subset = captions[:: len(captions) // 600][:600]  # more captions than feature dimensions (384)
    pair = [
        "a small red circle on the left on a plain background",
        "a small red square on the left on a plain background",
    ]
    tok = Tokenizer.from_preset("unitok-tiny")
    before = tok.text_tower._frozen_features
    study.whiten_caption_features(tok, subset)
    after = tok.text_tower._frozen_features
    assert float(after(subset).mean(0).abs().max()) < 1e-3

    def relative_gap(features_of) -> float:
        f, spread = features_of(pair), torch.cdist(features_of(subset), features_of(subset)).mean()
        return float((f[0] - f[1]).norm() / spread)

    assert relative_gap(after) > 1.1 * relative_gap(before)  # measured: 0.80 against 0.63


def test_bench_learning_rate_and_model_overrides_reach_the_run() -> None:
    """At a rate of 0 nothing the probe reads moves between steps; a model override is the model's
    config (a typo is the config layer's error)."""
    from polytok.config import ConfigError

    study = load_script("semantic_channels")
    records = study.run("choice", quantize=True, steps=2, every=1, probe_images=(48, 16), lr=0.0)
    assert (records[0]["val"], records[0]["heldout"]) == (records[1]["val"], records[1]["heldout"])
    with pytest.raises(ConfigError, match=r"encoder\.no_such_key"):
        study.run("ce", steps=1, probe_images=(48, 16), model_overrides=("encoder.no_such_key=1",))
