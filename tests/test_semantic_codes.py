"""Semantics that reach the codes: the tokenizer's ungated linear path and its semantic channels (the
latent channels the encoder network fills alone), and the gradient of the semantic loss into the encoder."""

from __future__ import annotations

import pytest
import torch

from polytok.config import ConfigError
from polytok.models import Tokenizer
from polytok.recipes.tokenizer_objective import LossConfig, build_objective
from polytok.train.objective import StepContext

CAPTIONS = [f"a photo of {n} {c} shapes" for n in ("one", "two") for c in ("red", "blue", "green", "grey")]


def _semantic_gradient_norms(tok: Tokenizer) -> dict[str, float]:
    """Gradient norms per part of the semantic loss alone (weight 1), after the first-batch initialisation."""
    tok.train()
    tok.load_teacher()
    objective = build_objective(tok, LossConfig(l1=0, l2=0, perceptual="none", quantizer=0, semantic=1.0), 10)
    images = torch.rand(8, 3, 64, 64)
    with torch.no_grad():
        tok(images)  # the first training batch: linear path fitted, codebooks k-means-initialised
    ctx = StepContext(
        step=1, max_steps=10, micro_step=0, accum_steps=1, world_size=1, discriminator=None, last_layer=None
    )
    loss, _ = objective.generator_loss(tok, {"image": images, "caption": CAPTIONS}, ctx)
    tok.zero_grad(set_to_none=True)
    loss.backward()

    def norm(module: torch.nn.Module) -> float:
        grads = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        return float(torch.stack(grads).norm()) if grads else 0.0

    return {"encoder": norm(tok.encoder), "projection": norm(tok.projection)}


@pytest.mark.parametrize("preset", ["unitok-tiny", "evotok-tiny"])
@pytest.mark.parametrize("channels", [0, 8])
def test_without_gates_training_starts_from_the_linear_code_exactly(
    preset: str, channels: int, tmp_path
) -> None:
    torch.manual_seed(0)
    tok = Tokenizer.from_preset(preset, linear_path_gates=False, semantic_channels=channels).train()
    assert not hasattr(tok, "linear_path_gates")
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        out = tok(images)
        z, grid = tok._latent(tok._prepare(images))
        k = tok.linear_channels
        assert k == 32 - channels and z.shape[-1] == 32
        # the linear channels are the principal components, the network adds nothing yet
        torch.testing.assert_close(z[..., :k], tok.linear_path.encode(tok._prepare(images)))
        pixel_code = (
            out.quant.prefix(out.pixel_depth) if out.pixel_depth < tok.num_levels else out.quant.quantized
        )
        # and the reconstruction is the linear decoding of the pixel code's linear channels
        torch.testing.assert_close(out.reconstruction, tok.linear_path.decode(pixel_code[..., :k], grid))
    tok.eval()
    tok.save_pretrained(tmp_path / "tok")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok").eval()
    codes = tok.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))


@pytest.mark.parametrize("preset", ["unitok-tiny", "evotok-tiny"])
def test_semantic_loss_reaches_the_encoder_through_its_own_channels(preset: str) -> None:
    torch.manual_seed(0)
    without_own = Tokenizer.from_preset(preset, linear_path_gates=True, semantic_channels=0)
    gated = _semantic_gradient_norms(without_own)
    # the scalar gate starts at 0: without channels of its own the encoder gets no semantic gradient at all
    assert gated["encoder"] == 0.0 and gated["projection"] == 0.0
    torch.manual_seed(0)
    own_channels = Tokenizer.from_preset(preset, linear_path_gates=False, semantic_channels=8)
    own = _semantic_gradient_norms(own_channels)
    assert own["encoder"] > 0.05 and own["projection"] > 0.05


def test_unitok_tiny_as_preset_sends_the_semantic_loss_to_its_encoder() -> None:
    """The preset itself: gates for the pixel channels, 8 channels of the encoder's own."""
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("unitok-tiny")
    assert tok.config.semantic_channels == 8 and tok.config.semantic.head_input == "codes"
    norms = _semantic_gradient_norms(tok)
    assert norms["encoder"] > 0.05 and norms["projection"] > 0.05


def test_semantic_channels_are_checked() -> None:
    with pytest.raises(ConfigError, match="semantic_channels"):
        Tokenizer.from_preset("unitok-tiny", linear_path=False, semantic_channels=8)
    with pytest.raises(ConfigError, match="semantic_channels"):
        Tokenizer.from_preset("unitok-tiny", semantic_channels=32)
    with pytest.raises(ConfigError, match="whole codebooks"):
        Tokenizer.from_preset("unitok-tiny", quantizer={"normalize": True}, semantic_channels=6)


def test_a_clip_head_on_the_codes_pools_the_code_vectors_themselves() -> None:
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("unitok-tiny", semantic={"head_input": "codes"}).eval()
    assert tok.clip_head.norm.normalized_shape == (32,)  # the code width, not the decoder's
    images = torch.rand(2, 3, 64, 64)
    codes = tok.encode(images)
    vectors = tok.quantizer.indices_to_codes(codes.flatten(1, 2))
    torch.testing.assert_close(tok.semantic_features(codes), tok.clip_head(vectors))
    # the head is a LayerNorm and a linear map of the position-averaged code vectors
    with torch.no_grad():
        pooled = tok.code_embedding(codes)
        expected = torch.nn.functional.normalize(tok.clip_head.proj(tok.clip_head.norm(pooled)), dim=-1)
    torch.testing.assert_close(tok.semantic_features(codes), expected)
