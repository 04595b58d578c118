"""Reconstruction and LPIPS losses against hand computations and real weight files on disk."""

from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.models import vgg as tv_vgg

from polytok.losses import LossOutput, LPIPSLoss, ReconstructionLoss, l1_loss, l2_loss, vgg16_weights_path


def _elements(x: torch.Tensor) -> list[float]:
    return [float(v) for v in x.flatten().tolist()]


def test_l1_l2_match_explicit_sums():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.rand(2, 3, 4, 5, generator=gen), torch.rand(2, 3, 4, 5, generator=gen)
    pairs = list(zip(_elements(pred), _elements(target)))
    expected_l1 = sum(abs(p - t) for p, t in pairs) / len(pairs)
    expected_l2 = sum((p - t) ** 2 for p, t in pairs) / len(pairs)
    assert float(l1_loss(pred, target)) == pytest.approx(expected_l1, rel=1e-6)
    assert float(l2_loss(pred, target)) == pytest.approx(expected_l2, rel=1e-6)


def test_reconstruction_loss_weights_and_terms():
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(2, 3, 8, 8, generator=gen, requires_grad=True)
    target = torch.rand(2, 3, 8, 8, generator=gen)
    pairs = list(zip(_elements(pred), _elements(target)))
    l1 = sum(abs(p - t) for p, t in pairs) / len(pairs)
    l2 = sum((p - t) ** 2 for p, t in pairs) / len(pairs)
    max_err = max(abs(p - t) for p, t in pairs)

    def perceptual(a, b):  # any scalar function of the pair: here the largest absolute error
        return (a - b).abs().amax()

    loss = ReconstructionLoss(l1_weight=0.2, l2_weight=1.0, perceptual=perceptual, perceptual_weight=0.5)
    out = loss(pred, target)
    assert isinstance(out, LossOutput)
    assert out.loss.item() == pytest.approx(0.2 * l1 + 1.0 * l2 + 0.5 * max_err, rel=1e-5)
    assert float(out.terms["l1"]) == pytest.approx(l1, rel=1e-5)
    assert float(out.terms["l2"]) == pytest.approx(l2, rel=1e-5)
    assert float(out.terms["perceptual"]) == pytest.approx(max_err, rel=1e-5)
    assert all(not t.requires_grad for t in out.terms.values())
    out.loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_reconstruction_presets_and_zero_weights_skip_terms():
    pred, target = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2) * 0.5
    unitok = ReconstructionLoss.unitok()(pred, target)
    assert float(unitok.loss) == pytest.approx(0.2 * 0.5 + 0.25)
    evotok = ReconstructionLoss.evotok()(pred, target)
    assert "l1" not in evotok.terms and float(evotok.loss) == pytest.approx(0.25)


def test_reconstruction_rejects_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        ReconstructionLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
    with pytest.raises(ValueError, match="l1_weight"):
        ReconstructionLoss(l1_weight=-1.0)
    with pytest.raises(TypeError, match="float"):
        l1_loss(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


# --- LPIPS -------------------------------------------------------------------------------------------------


def test_lpips_missing_weights_in_empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected_dir = tmp_path / "hub" / "checkpoints"
    with pytest.raises(FileNotFoundError) as info:
        LPIPSLoss()
    message = str(info.value)
    assert "vgg16-397923af.pth" in message
    assert str(expected_dir / "vgg16-397923af.pth") in message
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pth"):
        LPIPSLoss(vgg_weights_path=tmp_path / "nowhere.pth")


def test_lpips_loads_vgg_backbone_from_torch_hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    # A torchvision-layout VGG16 feature stack, saved where torchvision would cache its checkpoint.
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"])
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    checkpoint_dir = tmp_path / "hub" / "checkpoints"
    checkpoint_dir.mkdir(parents=True)
    torch.save(state, checkpoint_dir / "vgg16-397923af.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert vgg16_weights_path() == checkpoint_dir / "vgg16-397923af.pth"

    loss = LPIPSLoss()
    convs = [m for m in loss.model.net.modules() if isinstance(m, torch.nn.Conv2d)]
    expected = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(expected) == 13
    for got, want in zip(convs, expected):
        assert torch.equal(got.weight, want.weight) and torch.equal(got.bias, want.bias)
    assert not any(p.requires_grad for p in loss.parameters())
    # Same file given explicitly, from outside the cache.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    explicit = LPIPSLoss(vgg_weights_path=checkpoint_dir / "vgg16-397923af.pth")
    assert torch.equal(explicit.model.net.slice5._modules["28"].weight, expected[-1].weight)


@pytest.fixture(scope="module")
def random_lpips() -> LPIPSLoss:
    return LPIPSLoss(allow_random_backbone=True)


def test_lpips_random_backbone_wiring(random_lpips):
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)
    assert random_lpips.random_backbone
    assert float(random_lpips(x, x).loss) == 0.0
    out = random_lpips(x, y)
    assert float(out.loss) > 0 and float(out.terms["lpips"]) == float(out.loss)
    per_image = random_lpips.distance(x, y)
    assert per_image.shape == (2,) and bool((per_image > 0).all())
    # The wrapper maps [0, 1] to lpips' [-1, 1]: same as calling lpips on 2x - 1, not on raw x.
    with torch.no_grad():
        mapped = random_lpips.model(x * 2 - 1, y * 2 - 1).flatten()
        unmapped = random_lpips.model(x, y).flatten()
    torch.testing.assert_close(per_image, mapped)
    assert not torch.allclose(per_image, unmapped)


def test_lpips_gradient_and_mode(random_lpips):
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    y = torch.rand(1, 3, 32, 32)
    random_lpips.train()
    assert not random_lpips.model.training  # the metric network stays in eval mode
    random_lpips(x, y).loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_lpips_rejects_bad_input(random_lpips):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        random_lpips(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="shapes differ"):
        random_lpips(torch.rand(1, 3, 32, 32), torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        random_lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32) * 2 - 1)


@pytest.mark.parametrize("l1, l2", list(itertools.product([0.0, 0.3], [0.0, 2.0])))
def test_reconstruction_with_lpips_term(random_lpips, l1, l2):
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(1, 3, 32, 32, generator=gen), torch.rand(1, 3, 32, 32, generator=gen)
    out = ReconstructionLoss(l1, l2, perceptual=random_lpips, perceptual_weight=0.7)(x, y)
    expected = l1 * float(l1_loss(x, y)) + l2 * float(l2_loss(x, y)) + 0.7 * float(random_lpips(x, y).loss)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
    assert "perceptual/lpips" in out.terms


def test_pixel_weights_scale_each_pixel_as_a_naive_loop_does():
    gen = torch.Generator().manual_seed(3)
    pred, target = torch.rand(2, 3, 5, 4, generator=gen), torch.rand(2, 3, 5, 4, generator=gen)
    weight = torch.rand(2, 1, 5, 4, generator=gen) * 4
    l1 = l2 = 0.0
    for b, c, y, x in itertools.product(range(2), range(3), range(5), range(4)):
        diff = float(pred[b, c, y, x]) - float(target[b, c, y, x])
        l1 += float(weight[b, 0, y, x]) * abs(diff)
        l2 += float(weight[b, 0, y, x]) * diff * diff
    assert l1_loss(pred, target, weight).item() == pytest.approx(l1 / pred.numel(), rel=1e-5)
    assert l2_loss(pred, target, weight).item() == pytest.approx(l2 / pred.numel(), rel=1e-5)
    loss = ReconstructionLoss(l1_weight=0.2, l2_weight=1.0)
    weighted = loss(pred, target, weight)
    assert weighted.loss.item() == pytest.approx(0.2 * l1 / pred.numel() + l2 / pred.numel(), rel=1e-5)
    # all-ones weights are the unweighted loss
    unweighted = loss(pred, target).loss.item()
    assert loss(pred, target, torch.ones(2, 1, 5, 4)).loss.item() == pytest.approx(unweighted)


def test_pixel_weights_of_the_wrong_shape_are_refused():
    pred = torch.rand(2, 3, 4, 4)
    for bad in (torch.ones(2, 2, 4, 4), torch.ones(1, 1, 4, 4), torch.ones(2, 1, 4, 5), torch.ones(2, 4, 4)):
        with pytest.raises(ValueError, match="pixel weights"):
            l2_loss(pred, pred, bad)


def test_object_pixel_weight_blends_background_and_object_weights():
    from polytok.losses import object_pixel_weight

    mask = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3)
    assert object_pixel_weight(mask, 5.0).flatten().tolist() == [1.0, 2.0, 5.0]
    assert torch.equal(object_pixel_weight(mask, 1.0), torch.ones_like(mask))
    with pytest.raises(ValueError, match="object_weight"):
        object_pixel_weight(mask, -1.0)
