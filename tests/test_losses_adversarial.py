"""GAN losses, adaptive weight, schedule, discriminators and DiffAugment against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from polytok.losses import (
    AdversarialLoss,
    DinoDiscriminator,
    PatchGANDiscriminator,
    TimmViTTokens,
    adaptive_gan_weight,
    build_dino_backbone,
    hinge_d_loss,
    hinge_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
)
from polytok.losses.diffaug import DiffAugment, cutout, parse_policy, random_color, translate


def _values(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.flatten().tolist()]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# --- the loss functions ---------------------------------------------------------------------------------


def test_hinge_losses_match_hand_computation():
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.randn(3, 1, 4, 4, generator=gen) * 2, torch.randn(3, 1, 4, 4, generator=gen) * 2
    expected_d = 0.5 * (
        _mean([max(0.0, 1 - r) for r in _values(real)]) + _mean([max(0.0, 1 + f) for f in _values(fake)])
    )
    assert float(hinge_d_loss(real, fake)) == pytest.approx(expected_d, rel=1e-6)
    assert float(hinge_g_loss(fake)) == pytest.approx(-_mean(_values(fake)), rel=1e-6)


def test_vanilla_bce_losses_match_hand_computation():
    gen = torch.Generator().manual_seed(1)
    real, fake = torch.randn(10, generator=gen) * 3, torch.randn(10, generator=gen) * 3
    real_term = _mean([-math.log(_sigmoid(r)) for r in _values(real)])
    fake_term = _mean([-math.log(1 - _sigmoid(f)) for f in _values(fake)])
    assert float(non_saturating_d_loss(real, fake)) == pytest.approx(0.5 * (real_term + fake_term), rel=1e-5)
    g_expected = _mean([-math.log(_sigmoid(f)) for f in _values(fake)])
    assert float(non_saturating_g_loss(fake)) == pytest.approx(g_expected, rel=1e-5)
    # Matches torch's own BCE with labels real=1, fake=0 (independent formula).
    bce = nn.functional.binary_cross_entropy_with_logits
    reference = 0.5 * (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake)))
    torch.testing.assert_close(non_saturating_d_loss(real, fake), reference)


@pytest.mark.parametrize("kind", ["hinge", "non_saturating"])
def test_argument_order_good_discriminator_scores_lower(kind):
    """A discriminator scoring real high and fake low must get the lower discriminator loss."""
    high, low = torch.full((4, 1, 3, 3), 2.0), torch.full((4, 1, 3, 3), -2.0)
    adv = AdversarialLoss(kind, adaptive=False)
    good = adv.discriminator_loss(high, low, step=0).loss
    bad = adv.discriminator_loss(low, high, step=0).loss
    assert float(good) < float(bad)
    # The generator is happier when its fakes are scored as real.
    assert float(adv.generator_loss(high, step=0).loss) < float(adv.generator_loss(low, step=0).loss)


# --- adaptive weight and schedule ----------------------------------------------------------------------


class _TinyDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 4)
        self.last = nn.Linear(4, 3, bias=False)

    def forward(self, z):
        hidden = torch.tanh(self.body(z))
        return hidden, self.last(hidden)


def _hand_adaptive(hidden, out, target, critic, rec_scale=1.0):
    """Gradients of rec = mean((out - t)^2) and g = -mean(out @ v) w.r.t. the last weight, by formula."""
    batch, outputs = out.shape
    h = hidden.detach()
    rec_grad = rec_scale * (2.0 / (batch * outputs)) * (out.detach() - target).t() @ h  # (3, 4)
    gan_grad = -(1.0 / batch) * critic[:, None] * h.sum(dim=0)[None, :]  # (3, 4)
    return float(rec_grad.norm()), float(gan_grad.norm())


@pytest.mark.parametrize("critic_scale", [1.0, 1e4])
def test_adaptive_weight_matches_hand_computation(critic_scale):
    torch.manual_seed(0)
    decoder = _TinyDecoder()
    z, target = torch.randn(5, 2), torch.randn(5, 3)
    critic = torch.tensor([0.5, -1.0, 2.0]) * critic_scale  # a fixed linear "discriminator"
    hidden, out = decoder(z)
    rec = ((out - target) ** 2).mean()
    logits_fake = out @ critic
    rec_norm, gan_norm = _hand_adaptive(hidden, out, target, critic)
    expected = min(max(rec_norm / (gan_norm + 1e-4), 0.015), 1e4)
    if critic_scale > 1:
        assert expected == 0.015  # this case exercises the lower clamp

    adv = AdversarialLoss("hinge", weight=0.4, adaptive=True, adaptive_min=0.015, adaptive_max=1e4)
    result = adv.generator_loss(
        logits_fake, step=0, reconstruction_loss=rec, last_layer_weight=decoder.last.weight
    )
    assert float(result.terms["adaptive_weight"]) == pytest.approx(expected, rel=1e-4)
    g_value = -float(logits_fake.detach().mean())
    assert float(result.terms["g_loss"]) == pytest.approx(g_value, rel=1e-5)
    assert result.loss.item() == pytest.approx(0.4 * expected * g_value, rel=1e-4)
    # The factor is a constant: the GAN gradient on the decoder is 0.4 * w * d g / d W.
    decoder.zero_grad()
    result.loss.backward()
    gan_grad_norm = float(decoder.last.weight.grad.norm())
    assert gan_grad_norm == pytest.approx(0.4 * expected * gan_norm, rel=1e-4)


def test_adaptive_weight_upper_clamp_and_requirements():
    w = nn.Parameter(torch.ones(2, 2))
    x = torch.ones(1, 2)
    rec = (x @ w).sum() * 1e9
    gan = (x @ w).sum() * 1e-9
    assert float(adaptive_gan_weight(rec, gan, w, 0.015, 1e4)) == 1e4
    with pytest.raises(ValueError, match="require grad"):
        adaptive_gan_weight(rec, gan, torch.ones(2, 2))
    adv = AdversarialLoss(adaptive=True)
    with pytest.raises(ValueError, match="last_layer_weight"):
        adv.generator_loss(x @ w, step=0)


def test_schedule_start_step_and_warmup():
    adv = AdversarialLoss("hinge", weight=0.5, adaptive=False, start_step=10, warmup_steps=4)
    assert [adv.schedule(s) for s in (0, 9, 10, 11, 12, 13, 14, 100)] == [0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    assert not adv.active(9) and adv.active(10)
    fake = torch.full((2, 5), -0.8)
    # Before the start both terms are zero and need no discriminator call.
    before = adv.generator_loss(None, step=3)
    assert float(before.loss) == 0.0 and float(adv.discriminator_loss(None, None, step=3).loss) == 0.0
    assert adv.generator_loss(fake, step=11).loss.item() == pytest.approx(0.5 * 0.5 * 0.8)
    assert adv.discriminator_loss(fake.neg(), fake, step=11).loss.item() == pytest.approx(
        0.5 * 0.5 * (0.2 + 0.2)
    )
    with pytest.raises(ValueError, match="logits_fake is required"):
        adv.generator_loss(None, step=20)
    assert AdversarialLoss.unitok(total_steps=1000).start_step == 375
    evotok = AdversarialLoss.evotok()
    assert (evotok.start_step, evotok.weight, evotok.adaptive) == (20_000, 0.5, False)
    with pytest.raises(ValueError, match="loss_type"):
        AdversarialLoss("wgan")


# --- discriminators ----------------------------------------------------------------------------------


def _patchgan_parameter_count(in_ch: int, ndf: int, n_layers: int) -> int:
    total = in_ch * ndf * 16 + ndf  # first conv with bias
    channels = ndf
    for k in range(1, n_layers + 1):
        out = ndf * min(2**k, 8)
        total += channels * out * 16 + 2 * out  # conv without bias + norm scale and shift
        channels = out
    return total + channels * 16 + 1


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("n_layers, side", [(2, 32), (3, 64)])
def test_patchgan_shapes_parameters_and_gradients(norm, n_layers, side):
    disc = PatchGANDiscriminator(ndf=8, n_layers=n_layers, norm=norm)
    assert sum(p.numel() for p in disc.parameters()) == _patchgan_parameter_count(3, 8, n_layers)
    images = torch.rand(2, 3, side, side, requires_grad=True)
    logits = disc(images)
    # n_layers stride-2 4x4 convs (pad 1) halve the side, then two stride-1 4x4 convs each remove 1.
    expected_side = side // 2**n_layers - 2
    assert logits.shape == (2, 1, expected_side, expected_side)
    logits.mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    norms = [m for m in disc.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert norms and all(isinstance(m, nn.BatchNorm2d if norm == "batch" else nn.GroupNorm) for m in norms)


def test_patchgan_rejects_bad_config_and_input():
    with pytest.raises(ValueError, match="norm"):
        PatchGANDiscriminator(norm="instance")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PatchGANDiscriminator(ndf=8)(torch.rand(2, 1, 32, 32))


class _PatchTokens(nn.Module):
    """A small frozen network returning two layers of tokens, standing in for a pretrained ViT."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 8, 8)
        self.mix = nn.Linear(16, 24)

    def forward(self, images):
        first = self.embed(images).flatten(2).transpose(1, 2)  # (B, N, 16)
        return [first, self.mix(first)]  # second "layer" (B, N, 24)


def test_dino_discriminator_with_plugged_backbone():
    torch.manual_seed(0)
    backbone = _PatchTokens()
    disc = DinoDiscriminator(backbone=backbone, image_size=32, kernel_size=3)
    assert disc.feature_dims == (16, 24)
    assert not any(p.requires_grad for p in backbone.parameters())
    trainable = disc.trainable_parameters()
    assert trainable and all(p.requires_grad for p in trainable)
    assert {id(p) for p in trainable}.isdisjoint(id(p) for p in backbone.parameters())
    images = torch.rand(4, 3, 48, 48, requires_grad=True)  # resized to 32: 4 x 4 tokens per layer
    logits = disc(images)
    assert logits.shape == (4, 16 + 16)
    logits.mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # through the frozen backbone
    assert all(p.grad is None for p in backbone.parameters())
    disc.train()
    assert not backbone.training
    # Augmentation is on by default and can be switched off per call.
    with torch.no_grad():
        torch.manual_seed(1)
        augmented = disc(images)
        plain_a, plain_b = disc(images, augment=False), disc(images, augment=False)
    torch.testing.assert_close(plain_a, plain_b)
    assert not torch.allclose(augmented, plain_a)


def test_dino_discriminator_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        DinoDiscriminator()
    assert str(tmp_path / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth") in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"dino_deitsmall16_pretrain\.pth"):
        DinoDiscriminator(model_name="vit_small_patch16_224.dino")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        DinoDiscriminator(weights_path=tmp_path / "absent.safetensors")
    with pytest.raises(ValueError, match="unknown DINO backbone"):
        DinoDiscriminator(model_name="vit_huge")


@pytest.mark.parametrize(
    "model_name, filename, saved_size",
    [
        ("vit_small_patch16_224.dino", "dino_deitsmall16_pretrain.pth", 224),
        ("vit_small_patch14_dinov2", "w.safetensors", 518),
    ],
)
def test_dino_backbone_loads_a_real_checkpoint_file(tmp_path, model_name, filename, saved_size):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = timm.create_model(model_name, pretrained=False, img_size=saved_size, num_classes=0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / filename
    save_file(state, str(path)) if filename.endswith(".safetensors") else torch.save(state, path)

    # Loaded at a smaller input size: position embeddings are resampled, every block weight is the file's.
    tokens = build_dino_backbone(model_name, weights_path=path, image_size=112, layers=(2, 5))
    loaded = tokens.model.state_dict()
    for key, value in state.items():
        if key != "pos_embed":
            assert torch.equal(loaded[key], value), key
    assert not any(p.requires_grad for p in tokens.parameters())

    # Tokens match timm's own intermediate outputs (patch tokens + class token).
    images = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        ours = tokens(images)
        normalised = (images - tokens.mean) / tokens.std
        patches, prefixes = zip(
            *tokens.model.forward_intermediates(
                normalised,
                indices=[2, 5],
                norm=False,
                output_fmt="NLC",
                intermediates_only=True,
                return_prefix_tokens=True,
            )
        )
    grid = (112 // tokens.model.patch_embed.patch_size[0]) ** 2
    assert len(ours) == 3 and ours[0].shape == (2, grid, 384)
    for got, patch, prefix in zip(ours[1:], patches, prefixes):
        torch.testing.assert_close(got, patch + prefix[:, :1], atol=1e-5, rtol=1e-5)

    disc = DinoDiscriminator(backbone=tokens, image_size=112)
    assert disc(torch.rand(2, 3, 64, 64)).shape == (2, 3 * grid)


def test_timm_tokens_rejects_bad_layers():
    import timm

    model = timm.create_model("vit_small_patch16_224.dino", pretrained=False, img_size=32, depth=3)
    with pytest.raises(ValueError, match="out of range"):
        TimmViTTokens(model, layers=(1, 5))


# --- DiffAugment -------------------------------------------------------------------------------------


def test_translate_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 6, generator=gen)
    shift_y, shift_x = torch.tensor([1, -2, 0]), torch.tensor([-1, 3, 0])
    got = translate(x, shift_y, shift_x)
    expected = torch.zeros_like(x)
    for b in range(3):
        for i in range(5):
            for j in range(6):
                si, sj = i - int(shift_y[b]), j - int(shift_x[b])
                if 0 <= si < 5 and 0 <= sj < 6:
                    expected[b, :, i, j] = x[b, :, si, sj]
    torch.testing.assert_close(got, expected)


def test_cutout_matches_naive_loop():
    x = torch.randn(2, 3, 6, 6) + 5
    top, left = torch.tensor([-1, 3]), torch.tensor([2, 4])
    got = cutout(x, top, left, 3, 3)
    expected = x.clone()
    for b in range(2):
        for i in range(6):
            for j in range(6):
                if int(top[b]) <= i < int(top[b]) + 3 and int(left[b]) <= j < int(left[b]) + 3:
                    expected[b, :, i, j] = 0
    torch.testing.assert_close(got, expected)
    assert int((got[0, 0] == 0).sum()) == 2 * 3 and int((got[1, 0] == 0).sum()) == 3 * 2  # clipped holes


def test_random_color_matches_formula():
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    got = random_color(x, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    brightness, saturation, contrast = (torch.rand(2, 1, 1, 1, generator=gen) for _ in range(3))
    y = x + brightness - 0.5
    y = (y - y.mean(1, keepdim=True)) * saturation * 2 + y.mean(1, keepdim=True)
    y = (y - y.mean((1, 2, 3), keepdim=True)) * (contrast + 0.5) + y.mean((1, 2, 3), keepdim=True)
    torch.testing.assert_close(got, y)


def test_diffaugment_policy_and_gradient():
    assert parse_policy("color, cutout") == ("color", "cutout")
    assert parse_policy(None) == () and parse_policy("") == ()
    with pytest.raises(ValueError, match="blur"):
        parse_policy("color,blur")
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    out = DiffAugment()(x * 2 - 1, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.testing.assert_close(DiffAugment("")(x), x)
