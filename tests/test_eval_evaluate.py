"""evaluate_tokenizer on a residual patch tokenizer with a known depth behaviour, and on the presets."""

from __future__ import annotations

import gc
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from polytok.eval import (
    SEMANTIC_FIDELITY_SIZE,
    CodebookUsage,
    DepthBatch,
    DepthResult,
    FeatureSpace,
    MetricResult,
    ModuleFeatures,
    RealBatch,
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
        decoded = list(range(1, tok.pixel_depth + 1))  # the pixel decoder reads the first pixel_depth
        assert tok.num_levels > tok.pixel_depth and report.depths == levels
        assert sorted(report.depth_curves["PSNR"]) == decoded
        if preset == "evotok-tiny":
            assert sorted(report.depth_curves["code probe top-1"]) == levels
        assert report.codebook.counts.shape[:2] == tuple(tok.quantizer.codebook_usage()["usage"].shape)
        assert report.codebook.num_tokens == 6 * (64 // tok.stride) ** 2
        assert sorted(report.samples["reconstructions"]) == decoded
        assert report.samples["reconstructions"][decoded[-1]].shape == (3, 3, 64, 64)
        assert ("linear probe top-1" in report.depth_curves) == (preset == "evotok-tiny")
        assert ("code probe top-1" in report.depth_curves) == (preset == "evotok-tiny")
        reports.append(report)
    evo, poly = reports
    assert "text tower" in evo.skipped["zero-shot"]  # the distillation preset has no text encoder
    assert 0.0 <= poly.metrics["zero-shot top-1"].value <= poly.metrics["zero-shot top-5"].value <= 1.0
    html = write_report(reports, tmp_path / "compare.html").read_text()
    assert html.count('<details class="tokenizer"') == 2 and 'class="comparison"' in html


class PixelPrefixTokenizer(PatchResidualTokenizer):
    """A residual tokenizer whose pixel decoder reads only the first ``pixel_depth`` levels (as EvoTok's
    does); semantic features read every given level."""

    def __init__(self, images, labels, levels: int, pixel_depth: int) -> None:
        super().__init__(images, labels, levels=levels, k=16)
        self.pixel_depth = pixel_depth

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return super().decode(codes[..., : self.pixel_depth])


PIXEL_METRICS = ("PSNR", "SSIM", "rFD[small-conv]")
CODE_METRICS = ("zero-shot top-1", "zero-shot top-5", "linear probe top-1")


def test_pixel_rows_only_for_the_decoded_levels(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images, labels = photo_crops(24, size=32, seed=7)
    tok = PixelPrefixTokenizer(images, labels, levels=8, pixel_depth=4)
    report = evaluate_tokenizer(
        tok,
        batches(images, labels, 8),
        zero_shot=ZeroShotSpec(list(PHOTOS), ["a photo of {}."]),
        linear_probe_features=True,
        feature_spaces=[ModuleFeatures(small_backbone(), name="small-conv")],
        num_samples=2,
    )
    for metric in PIXEL_METRICS:
        curve = report.depth_curves[metric]
        assert sorted(curve) == [1, 2, 3, 4], metric
        assert all(result.protocol["decoded_levels"] == d for d, result in curve.items()), metric
        assert report.metrics[metric].protocol["decoded_levels"] == 4
        assert report.metrics[metric].value == curve[4].value
    for metric in CODE_METRICS:
        curve = report.depth_curves[metric]
        assert sorted(curve) == list(range(1, 9)), metric
        assert all(result.protocol["code_levels"] == d for d, result in curve.items()), metric
        assert "decoded_levels" not in curve[8].protocol
        assert report.metrics[metric].protocol["code_levels"] == 8
    # The figures at 4 decoded levels are those of the full reconstruction, measured independently.
    expected = psnr_per_image(tok.decode(tok.encode(images.float())), images.float()).mean().item()
    assert report.metrics["PSNR"].value == pytest.approx(expected, rel=1e-9)
    assert sorted(report.samples["reconstructions"]) == [1, 2, 3, 4]
    assert report.depths == list(range(1, 9))
    assert report.protocol["pixel_depth"] == 4 and report.protocol["num_levels"] == 8
    assert report.protocol["decoded_depths"] == [1, 2, 3, 4]

    # Requested depths past the pixel prefix are measured in pixels once, at the prefix.
    deep = evaluate_tokenizer(tok, batches(images, labels, 8), depths=[6, 8], linear_probe_features=True)
    assert sorted(deep.depth_curves["PSNR"]) == [4]
    assert sorted(deep.depth_curves["linear probe top-1"]) == [6, 8]
    assert deep.metrics["PSNR"].value == report.metrics["PSNR"].value


class _LiveMatrices(FeatureSpace):
    """A feature space that, whenever it runs, counts the live float64 (D, D) tensors of each size in
    ``dims``: the feature statistics the evaluation holds at that moment."""

    name = "counting-conv"

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.inner = ModuleFeatures(small_backbone(out_dim=dims[0]), name="counting-conv")
        self.num_features = dims[0]
        self.dims = dims
        self.peak = dict.fromkeys(dims, 0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        counts = dict.fromkeys(self.dims, 0)
        gc.collect()  # count only what is reachable
        for obj in gc.get_objects():
            square = isinstance(obj, torch.Tensor) and obj.dim() == 2 and obj.shape[0] == obj.shape[1]
            if square and obj.dtype == torch.float64 and obj.shape[0] in counts:
                counts[obj.shape[0]] += 1
        self.peak = {d: max(self.peak[d], counts[d]) for d in self.dims}
        return self.inner(images)


def test_real_statistics_are_held_once_for_all_depths(tmp_path, monkeypatch) -> None:
    """Each extra depth adds only the reconstructions' statistics (one (D, D) set), never another copy
    of the originals' (Frechet in a 37-d space; rFD in EfficientNet-Lite0's 1280-d space)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images, labels = photo_crops(12, size=32, seed=8)
    tok = PatchResidualTokenizer(images, labels, levels=3, k=16)
    peaks = {}
    for depths in ([3], [1, 2, 3]):
        space = _LiveMatrices((37, 1280))
        gc.collect()
        evaluate_tokenizer(
            tok,
            batches(images, labels, 6),
            depths=depths,
            feature_spaces=[space],
            semantic_fidelity=True,
            semantic_fidelity_size=64,
        )
        peaks[len(depths)] = space.peak
    for dim in (37, 1280):
        one, three = peaks[1][dim], peaks[3][dim]
        assert one > 0 and one % 2 == 0, (dim, one)  # real + reconstructed statistics, same layout
        assert three == 2 * one, (dim, one, three)  # (1 real + 3 reconstructed) sets, not 3 + 3


def test_semantic_fidelity_size_is_one_default_recorded_in_the_protocol(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images, labels = photo_crops(4, size=32, seed=9)
    tok = PatchResidualTokenizer(images, labels, levels=2, k=8)
    report = evaluate_tokenizer(tok, batches(images, labels, 4), semantic_fidelity=True)
    assert report.protocol["semantic_fidelity_size"] == SEMANTIC_FIDELITY_SIZE
    assert report.metrics["semantic top-1 agreement"].protocol["image_size"] == SEMANTIC_FIDELITY_SIZE
    plain = evaluate_tokenizer(tok, batches(images, labels, 4))
    assert "semantic_fidelity_size" not in plain.protocol  # recorded only when the figures exist


def test_cli_eval_uses_the_library_fidelity_size(tmp_path, monkeypatch) -> None:
    import json

    from polytok.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    report = tmp_path / "report.html"
    argv = ["eval", "evotok-tiny", "--max-images", "4", "--batch-size", "4", "--report", str(report)]
    assert main(argv) == 0
    (summary,) = json.loads(report.with_suffix(".json").read_text())
    assert summary["protocol"]["semantic_fidelity_size"] == SEMANTIC_FIDELITY_SIZE
    agreement = summary["metrics"]["semantic top-1 agreement"]["protocol"]
    assert agreement["image_size"] == SEMANTIC_FIDELITY_SIZE
    assert agreement["decoded_levels"] == summary["protocol"]["pixel_depth"] == 4


class CaptionedError:
    """A metric family written outside the library: mean absolute pixel error per decoded depth, counted
    only over images whose caption names one photo (reads ``fields["caption"]``)."""

    reads = "pixels"

    def __init__(self, photo: str) -> None:
        self.photo = photo
        self.skipped: dict[str, str] = {}
        self.prepared = 0
        self.sums: dict[int, list[float]] = {}

    def prepare(self, batch: RealBatch) -> None:
        self.prepared += batch.images.shape[0]
        self.mask = torch.tensor([c.endswith(self.photo) for c in batch.fields["caption"]])

    def measure(self, batch: RealBatch, depth: DepthBatch) -> None:
        error = (depth.reconstruction - batch.images).abs().flatten(1).mean(1)[self.mask]
        total = self.sums.setdefault(depth.levels, [0.0, 0])
        total[0] += float(error.sum())
        total[1] += int(self.mask.sum())

    def compute(self) -> list[DepthResult]:
        return [
            DepthResult(
                levels, "pixels", {f"MAE[{self.photo}]": MetricResult(total / count, {"images": count})}
            )
            for levels, (total, count) in sorted(self.sums.items())
        ]


def test_a_metric_family_plugs_in(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images, labels = photo_crops(18, size=32, seed=10)
    tok = PixelPrefixTokenizer(images, labels, levels=4, pixel_depth=2)
    family = CaptionedError("coffee")
    report = evaluate_tokenizer(tok, batches(images, labels, 5), max_images=14, families=[family], fid=False)
    assert family.prepared == 14  # each original once, not once per depth
    curve = report.depth_curves["MAE[coffee]"]
    assert sorted(curve) == [1, 2] and curve[2].protocol["decoded_levels"] == 2
    coffee = [i for i in range(14) if PHOTOS[int(labels[i])] == "coffee"]
    x = images[coffee].float()
    expected = (tok.decode(tok.encode(x)) - x).abs().flatten(1).mean(1).mean().item()
    assert report.metrics["MAE[coffee]"].value == pytest.approx(expected, rel=1e-6)
    assert report.metrics["MAE[coffee]"].protocol["images"] == len(coffee) > 0


class _NoSemanticBranch(PatchResidualTokenizer):
    """Declares no semantic branch, as a polytok preset with ``semantic.kind: none`` does."""

    semantic_kind = "none"

    def semantic_features(self, codes: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "class_features"):  # still being fitted
            return super().semantic_features(codes)
        raise ValueError("this tokenizer has no semantic branch (semantic.kind is 'none')")


class _BrokenSemantics(PatchResidualTokenizer):
    """Has a semantic branch whose features fail from the first batch on: a bug to surface."""

    semantic_kind = "contrastive"

    def semantic_features(self, codes: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "class_features"):  # still being fitted
            return super().semantic_features(codes)
        raise ValueError("mat1 and mat2 shapes cannot be multiplied (8x48 and 37x16)")


def test_semantics_are_skipped_only_without_a_semantic_branch(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    images, labels = photo_crops(8, size=32, seed=3)
    options = dict(linear_probe_features=True, feature_spaces=[], num_samples=0, semantic_fidelity=False)
    report = evaluate_tokenizer(
        _NoSemanticBranch(images, labels, levels=1, k=4), batches(images, labels, 8), **options
    )
    assert "no semantic branch" in report.skipped["semantics"]
    with pytest.raises(ValueError, match="cannot be multiplied"):
        evaluate_tokenizer(
            _BrokenSemantics(images, labels, levels=1, k=4), batches(images, labels, 8), **options
        )
