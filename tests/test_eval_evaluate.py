"""evaluate_tokenizer on a residual patch tokenizer with a known depth behaviour, and on the presets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from polytok.eval import (
    CodebookUsage,
    ModuleFeatures,
    ZeroShotSpec,
    code_prefix,
    evaluate_tokenizer,
    psnr_per_image,
    write_report,
)
from test_eval_frechet import small_backbone
from test_eval_photos import PHOTOS, photo_crops

PATCH = 4


def patchify(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H/4, W/4, 48)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, h // PATCH, w // PATCH, c * PATCH * PATCH)


def unpatchify(vectors: torch.Tensor) -> torch.Tensor:
    b, gh, gw, _ = vectors.shape
    x = vectors.reshape(b, gh, gw, 3, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 3, gh * PATCH, gw * PATCH)


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                centres[j] = members.mean(dim=0)
    return centres


class PatchResidualTokenizer:
    """Residual quantization of 4x4 pixel patches with k-means codebooks fitted level by level on the
    residuals: on its training images each extra level lowers the error, so PSNR must rise with depth.
    Semantic features: the normalised mean decoded patch; text: the mean feature of the named photo."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, levels: int = 3, k: int = 24) -> None:
        residual = patchify(images.float()).reshape(-1, 3 * PATCH * PATCH)
        self.codebooks = []
        for level in range(levels):
            codebook = kmeans(residual, k, iters=8, seed=level)
            residual = residual - codebook[torch.cdist(residual, codebook).argmin(dim=1)]
            self.codebooks.append(codebook)
        self.quantizer = SimpleNamespace(code_shape=(levels,), num_levels=levels, codebook_size=k)
        features = self.semantic_features(self.encode(images.float()))
        self.class_features = {
            PHOTOS[c]: F.normalize(features[labels == c].mean(dim=0), dim=0) for c in labels.unique().tolist()
        }

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        residual = patchify(images.float())
        codes = []
        for codebook in self.codebooks:
            flat = residual.reshape(-1, codebook.shape[1])
            idx = torch.cdist(flat, codebook).argmin(dim=1)
            residual = residual - codebook[idx].reshape(residual.shape)
            codes.append(idx.reshape(residual.shape[:-1]))
        return torch.stack(codes, dim=-1)  # (B, h, w, L)

    def _vectors(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(self.codebooks[level][codes[..., level]] for level in range(codes.shape[-1]))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return unpatchify(self._vectors(codes)).clamp(0, 1)

    def semantic_features(self, codes: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._vectors(codes).mean(dim=(1, 2)), dim=-1)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([self.class_features[p.split()[-1].rstrip(".")] for p in prompts])


def batches(images: torch.Tensor, labels: torch.Tensor, size: int):
    for start in range(0, len(images), size):
        yield {
            "image": images[start : start + size].float(),
            "label": labels[start : start + size],
            "caption": [f"a crop of {PHOTOS[int(i)]}" for i in labels[start : start + size]],
        }


@pytest.fixture(scope="module")
def patch_setup():
    images, labels = photo_crops(36, size=32, seed=4)
    return images, labels, PatchResidualTokenizer(images, labels)


def test_depth_curves_of_a_residual_tokenizer(patch_setup, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no Inception / VGG weights here: auto-skipped
    images, labels, tok = patch_setup
    space = ModuleFeatures(small_backbone(), name="small-conv")
    report = evaluate_tokenizer(
        tok,
        batches(images, labels, 10),
        zero_shot=ZeroShotSpec(list(PHOTOS), ["a photo of {}."]),
        linear_probe_features=True,
        feature_spaces=[space],
        max_images=30,
        name="patch-rvq",
        protocol={"dataset": "skimage crops", "preprocessing": "random 32x32 crops"},
    )
    assert report.depths == [1, 2, 3]
    psnr = [report.depth_curves["PSNR"][d].value for d in (1, 2, 3)]
    ssim = [report.depth_curves["SSIM"][d].value for d in (1, 2, 3)]
    fd = [report.depth_curves["rFD[small-conv]"][d].value for d in (1, 2, 3)]
    assert psnr[0] < psnr[1] < psnr[2]
    assert ssim[0] < ssim[1] < ssim[2]
    assert fd[2] < fd[0]

    # Headline figures are the deepest depth, recomputed here independently of the accumulators.
    first30 = images[:30].float()
    expected_psnr = psnr_per_image(tok.decode(tok.encode(first30)), first30).mean().item()
    assert report.metrics["PSNR"].value == pytest.approx(expected_psnr, rel=1e-9)
    assert report.metrics["PSNR"].protocol["num_images"] == 30
    assert report.metrics["PSNR"].protocol["dataset"] == "skimage crops"
    assert report.metrics["PSNR"].protocol["decoded_levels"] == 3
    assert report.metrics["rFD[small-conv]"].protocol["feature_network"] == "small-conv"

    # Codebook counts equal a direct count over the same codes.
    usage = CodebookUsage(24, (3,), residual=True)
    usage.update(tok.encode(first30))
    assert torch.equal(report.codebook.counts, usage.compute().counts)

    # Semantics: zero-shot against photo prototypes and the probe both beat chance (1/6) clearly.
    assert report.metrics["zero-shot top-1"].value > 0.5
    assert report.metrics["linear probe top-1"].value > 0.4
    assert set(report.depth_curves["zero-shot top-1"]) == {1, 2, 3}

    # Missing third-party weights: skipped with the file named, never a random network.
    assert "weights-inception-2015-12-05" in report.skipped["rFID"]
    assert "vgg16-397923af.pth" in report.skipped["LPIPS"]
    assert "rFID" not in report.metrics and "LPIPS" not in report.metrics

    assert report.samples["original"].shape == (6, 3, 32, 32)
    assert set(report.samples["reconstructions"]) == {1, 2, 3}
    assert report.timing["images_per_second"] > 0
    data = report.to_dict()
    assert data["metrics"]["PSNR"]["protocol"]["decoded_levels"] == 3
    assert write_report(report, tmp_path / "r.html").stat().st_size > 10_000


def test_required_weights_raise_and_bad_depths(patch_setup, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images, labels, tok = patch_setup
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05"):
        evaluate_tokenizer(tok, batches(images, labels, 8), fid=True, lpips=False)
    with pytest.raises(ValueError, match="depth 4"):
        evaluate_tokenizer(tok, batches(images, labels, 8), depths=[1, 4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate_tokenizer(tok, [{"image": images[:2].float() * 3, "label": labels[:2]}], fid=False)


def test_code_prefix_shapes() -> None:
    codes = torch.arange(2 * 3 * 3 * 4 * 2).reshape(2, 3, 3, 4, 2)
    assert torch.equal(code_prefix(codes, 2, (4, 2), 4), codes[..., :2, :])
    assert torch.equal(code_prefix(codes[..., 0], 3, (4,), 4), codes[..., :3, 0])
    assert torch.equal(code_prefix(codes[..., 0, :], 1, (2,), 1), codes[..., 0, :])
    with pytest.raises(ValueError, match="depth"):
        code_prefix(codes, 5, (4, 2), 4)


try:
    import polytok.models  # noqa: F401

    MODELS_IMPORT_ERROR = None
except ImportError as err:
    MODELS_IMPORT_ERROR = f"polytok.models is not importable: {err}"


@pytest.mark.skipif(MODELS_IMPORT_ERROR is not None, reason=str(MODELS_IMPORT_ERROR))
def test_evaluate_presets_and_compare(tmp_path, monkeypatch) -> None:
    from polytok import Tokenizer

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images, labels = photo_crops(6, size=64, seed=5)
    labels = labels % 2  # two classes of three images: the probe gets train and test images of each
    reports = []
    for preset in ("evotok-tiny", "polytok-tiny"):
        torch.manual_seed(0)
        tok = Tokenizer.from_preset(preset)
        report = evaluate_tokenizer(
            tok,
            batches(images, labels, 3),
            zero_shot={"class_names": list(PHOTOS), "templates": ["a photo of a {}.", "a crop of a {}."]},
            linear_probe_features=preset == "evotok-tiny",
            name=preset,
            num_samples=3,
        )
        levels = list(range(1, tok.num_levels + 1))
        assert tok.num_levels > 1 and report.depths == levels
        assert set(report.depth_curves["PSNR"]) == set(levels)
        assert report.codebook.counts.shape[:2] == tuple(tok.quantizer.codebook_usage()["usage"].shape)
        assert report.codebook.num_tokens == 6 * (64 // tok.stride) ** 2
        assert set(report.samples["reconstructions"]) == set(levels)
        assert report.samples["reconstructions"][levels[-1]].shape == (3, 3, 64, 64)
        assert ("linear probe top-1" in report.depth_curves) == (preset == "evotok-tiny")
        assert ("code probe top-1" in report.depth_curves) == (preset == "evotok-tiny")
        reports.append(report)
    evo, poly = reports
    assert "text tower" in evo.skipped["zero-shot"]  # the distillation preset has no text encoder
    assert 0.0 <= poly.metrics["zero-shot top-1"].value <= poly.metrics["zero-shot top-5"].value <= 1.0
    html = write_report(reports, tmp_path / "compare.html").read_text()
    assert html.count("<section") == 2 and 'id="comparison"' in html
