"""PSNR / SSIM against scikit-image on real photographs; LPIPS weight handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from polytok.eval import LPIPS, PSNR, SSIM, build_lpips_vgg, psnr_per_image, ssim_per_image
from polytok.eval.metrics.weights import VGG16_FILENAME
from test_eval_photos import perturb, photo_crops


def skimage_reference(preds: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    psnr, ssim = [], []
    for p, t in zip(preds.numpy(), target.numpy()):
        p_hwc, t_hwc = p.transpose(1, 2, 0), t.transpose(1, 2, 0)
        psnr.append(peak_signal_noise_ratio(t_hwc, p_hwc, data_range=1.0))
        ssim.append(
            structural_similarity(
                t_hwc,
                p_hwc,
                channel_axis=2,
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
        )
    return np.array(psnr), np.array(ssim)


@pytest.mark.parametrize("size", [32, 57])
def test_psnr_ssim_match_scikit_image(size: int) -> None:
    target, _ = photo_crops(14, size=size)
    preds = perturb(target, 0.08)
    ref_psnr, ref_ssim = skimage_reference(preds, target)

    np.testing.assert_allclose(psnr_per_image(preds, target).numpy(), ref_psnr, rtol=1e-9)
    np.testing.assert_allclose(ssim_per_image(preds, target).numpy(), ref_ssim, atol=1e-7)

    psnr, ssim = PSNR(), SSIM()
    for start in range(0, 14, 5):  # streaming mean over uneven batches
        psnr.update(preds[start : start + 5], target[start : start + 5])
        ssim.update(preds[start : start + 5], target[start : start + 5])
    assert psnr.compute().value == pytest.approx(ref_psnr.mean(), rel=1e-9)
    assert ssim.compute().value == pytest.approx(ref_ssim.mean(), abs=1e-7)
    assert psnr.compute().std == pytest.approx(ref_psnr.std(), rel=1e-6)
    assert ssim.compute().protocol["data_range"] == 1.0
    assert ssim.compute().protocol["num_images"] == 14


def test_float32_inputs_agree_with_float64_reference() -> None:
    target, _ = photo_crops(4, size=40)
    preds = perturb(target, 0.05)
    ref_psnr, ref_ssim = skimage_reference(preds.float().double(), target.float().double())
    np.testing.assert_allclose(ssim_per_image(preds.float(), target.float()).numpy(), ref_ssim, atol=1e-6)
    np.testing.assert_allclose(psnr_per_image(preds.float(), target.float()).numpy(), ref_psnr, rtol=1e-6)


def test_identical_images_give_infinite_psnr_and_unit_ssim() -> None:
    target, _ = photo_crops(2, size=32)
    assert torch.isinf(psnr_per_image(target, target)).all()
    assert torch.allclose(ssim_per_image(target, target), torch.ones(2, dtype=torch.float64))


def test_pixel_metrics_reject_bad_input() -> None:
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_per_image(x, torch.rand(2, 3, 32, 31))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ssim_per_image(x * 255, x)
    with pytest.raises(TypeError, match="float"):
        psnr_per_image((x * 255).to(torch.uint8), x)
    with pytest.raises(ValueError, match="11x11"):
        ssim_per_image(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="no images"):
        PSNR().compute()


def test_lpips_missing_backbone_names_file_and_place(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        LPIPS()
    assert VGG16_FILENAME in str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / VGG16_FILENAME) in str(err.value)


def test_lpips_loads_backbone_from_a_torchvision_state_dict(tmp_path, monkeypatch) -> None:
    # A torchvision VGG16 state dict on disk (untrained values: this checks the loading, not a figure).
    import torchvision

    torch.manual_seed(0)
    state = torchvision.models.vgg16().state_dict()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / VGG16_FILENAME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    model = build_lpips_vgg()
    assert torch.equal(model.net.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(model.net.slice5, "28").bias, state["features.28.bias"])
    metric = LPIPS(model=model)
    target, _ = photo_crops(3, size=32)
    values = metric.update(target.float(), target.float())
    assert torch.allclose(values, torch.zeros(3, dtype=torch.float64), atol=1e-6)
    metric.update(perturb(target, 0.2).float(), target.float())
    assert metric.compute().value > 0
    assert metric.compute().protocol["num_images"] == 6

    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"features\.0"):
        build_lpips_vgg(tmp_path / "bad.pth")
