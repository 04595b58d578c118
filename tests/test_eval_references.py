"""Codec references at the tokenizer's bits: JPEG at the highest quality that fits, bicubic at the largest
square that fits, and the pixel bits of each layout."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from polytok.data import build_dataloader, build_dataset
from polytok.eval import EvalOptions, evaluate_tokenizer
from polytok.eval.families.references import bicubic_at_bits, jpeg_at_bits, pixel_bits_per_image
from polytok.hub import load_tokenizer


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    crop = Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.BICUBIC)
    return torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.mark.parametrize(
    ("name", "bits"),
    # positions x codes the pixel decoder reads x bits per code, by hand
    [("unitok-tiny", 256 * 8 * 9), ("evotok-tiny", 256 * 4 * 10), ("polytok-tiny", 256 * 2 * 8 * 8)],
)
def test_pixel_bits_of_each_layout(name, bits) -> None:
    assert pixel_bits_per_image(load_tokenizer(name), 64, 64) == bits


@pytest.mark.parametrize("budget", [2_000, 12_000, 20_000, 30_000])
def test_jpeg_takes_the_highest_quality_that_fits(photo, budget) -> None:
    decoded, bits = jpeg_at_bits(photo, budget)
    pil = Image.fromarray((photo * 255).round().byte().permute(1, 2, 0).numpy())
    sizes = {}
    for quality in range(1, 96):  # brute force over every quality
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        sizes[quality] = buffer.getvalue()
    fitting = [q for q, data in sizes.items() if len(data) * 8 <= budget]
    best = max(fitting, default=1)  # nothing fits: quality 1, its bits over the budget and reported
    assert bits == len(sizes[best]) * 8
    assert bits <= budget if fitting else bits > budget
    expected = np.asarray(Image.open(io.BytesIO(sizes[best])).convert("RGB"), dtype=np.float32) / 255
    assert torch.equal(decoded, torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize("budget", [6_144, 18_432, 10_240])
def test_bicubic_takes_the_largest_square_that_fits(photo, budget) -> None:
    decoded, bits = bicubic_at_bits(photo, budget)
    side = round((bits / 24) ** 0.5)
    assert side * side * 24 == bits <= budget < (side + 1) ** 2 * 24
    assert decoded.shape == photo.shape
    # more bits, closer to the original
    assert (bicubic_at_bits(photo, budget * 4)[0] - photo).abs().mean() < (decoded - photo).abs().mean()


def test_references_are_reported_beside_the_tokenizer() -> None:
    tok = load_tokenizer("evotok-tiny")
    loader = build_dataloader(build_dataset("photos", split="val", image_size=64), batch_size=8)
    report = evaluate_tokenizer(tok, loader, EvalOptions(max_images=8, lpips=False, fid=False))
    jpeg, bicubic = report.metrics["PSNR[JPEG, equal bits]"], report.metrics["PSNR[bicubic, equal bits]"]
    for figure in (jpeg, bicubic):
        assert figure.protocol["budget_bits_per_image"] == 10_240 and figure.protocol["decoded_levels"] == 4
        assert figure.protocol["mean_bits_per_image"] <= 10_240
    assert "SSIM[JPEG, equal bits]" in report.metrics
    off = evaluate_tokenizer(
        tok, loader, EvalOptions(max_images=8, lpips=False, fid=False, codec_references=False)
    )
    assert not any("equal bits" in name for name in off.metrics)
