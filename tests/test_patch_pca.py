"""The linear patch codec: patches, its principal components against numpy, the gnomonic chart under
normalisation, a fit over two real gloo ranks, and the tokenizer's linear path."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from polytok.models.tokenizer import Tokenizer
from polytok.nn.patch_pca import PatchPCA, image_to_patches, patches_to_image


def spectral_images(n: int = 64, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Images whose 4 x 4 x 3 patches have a known, well separated covariance spectrum (no near-ties,
    so the leading subspace is the same on any CPU)."""
    g = torch.Generator().manual_seed(seed)
    width = 48
    q, _ = torch.linalg.qr(torch.randn(width, width, generator=g, dtype=torch.float64))
    stds = torch.tensor([2.0**-i for i in range(width)], dtype=torch.float64) * 0.2  # ratios of 2
    patches = torch.randn(n * (size // 4) ** 2, width, generator=g, dtype=torch.float64) * stds @ q.T + 0.5
    return patches_to_image(patches.reshape(n, -1, width), (size // 4, size // 4), 4)


def test_patches_match_unfold_and_round_trip() -> None:
    x = torch.rand(2, 3, 8, 12)
    patches, grid = image_to_patches(x, 4)
    reference = torch.nn.functional.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, N, C*p*p)
    assert grid == (2, 3)
    assert torch.equal(patches, reference)
    assert torch.equal(patches_to_image(patches, grid, 4), x)


def test_fit_finds_numpy_principal_subspace_and_its_residual() -> None:
    images = spectral_images()
    pca = PatchPCA(patch_size=4, dim=6).double()
    pca.fit(images)
    flat = image_to_patches(images, 4)[0].reshape(-1, 48).numpy()
    centred = flat - flat.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    expected = vt[:6].T @ vt[:6]
    got = (pca.basis.T @ pca.basis).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-8)  # the projector: free of signs and order
    recon = pca.decode(pca.encode(images), (4, 4))
    residual = ((recon - images) ** 2).sum().item() / flat.shape[0]
    np.testing.assert_allclose(residual, (singular[6:] ** 2).sum() / flat.shape[0], rtol=1e-8)


def test_gnomonic_chart_survives_normalisation_exactly() -> None:
    images = spectral_images()
    plain, charted = PatchPCA(4, dim=6).double(), PatchPCA(4, dim=8, chunk=4).double()
    plain.fit(images)
    charted.fit(images)
    assert charted.components == 6
    z = charted.encode(images)
    unit = torch.nn.functional.normalize(z.reshape(*z.shape[:2], 2, 4), dim=-1).reshape(z.shape)
    # what a cosine quantizer keeps (directions only) still decodes to the plain 6-component PCA
    torch.testing.assert_close(charted.decode(unit, (4, 4)), plain.decode(plain.encode(images), (4, 4)))


def test_chart_decoding_stays_bounded_far_from_the_chart() -> None:
    charted = PatchPCA(4, dim=8, chunk=4).double()
    charted.fit(spectral_images())
    far = torch.nn.functional.normalize(torch.randn(1, 16, 2, 4, dtype=torch.float64), dim=-1)
    far[..., -1] = -far[..., -1].abs()  # every direction on the far side of the sphere
    patches = image_to_patches(charted.decode(far.reshape(1, 16, 8), (4, 4)), 4)[0]
    coefficients = (patches - charted.mean) @ charted.basis.T
    bound = 10 * charted.chart_scale.repeat_interleave(3) * 3**0.5
    assert (coefficients.abs() <= bound + 1e-9).all()


def test_bad_chunks_and_widths_are_refused() -> None:
    with pytest.raises(ValueError, match="chunk"):
        PatchPCA(4, dim=10, chunk=4)
    with pytest.raises(ValueError, match="components"):
        PatchPCA(2, dim=16)  # 12-value patches cannot give 16 components


def _fit_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images = spectral_images()
        half = images.shape[0] // world
        pca = PatchPCA(4, dim=6).double()
        pca.fit(images[rank * half : (rank + 1) * half])
        torch.save(pca.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_fit_what_one_process_fits_on_the_whole_batch(tmp_path) -> None:
    single = PatchPCA(4, dim=6).double()
    single.fit(spectral_images())
    mp.spawn(_fit_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(state["mean"], single.mean)
        torch.testing.assert_close(state["basis"].T @ state["basis"], single.basis.T @ single.basis)


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("unitok-tiny", {}), ("unitok-tiny", {"quantizer": {"normalize": True}}), ("evotok-tiny", {})],
    ids=["plain-mcq", "cosine-mcq-through-the-chart", "rvq"],
)
def test_tokenizer_starts_from_the_linear_codec_and_fits_once(preset: str, overrides: dict, tmp_path) -> None:
    torch.manual_seed(0)
    tok = Tokenizer.from_preset(preset, linear_path_gate_init=0.0, **overrides)
    assert tok.linear_path is not None and not bool(tok.linear_path.fitted)
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        tok.encode(images)  # inference never fits, even in training mode
        assert not bool(tok.linear_path.fitted)
        out = tok(images)
        assert bool(tok.linear_path.fitted)
        basis = tok.linear_path.basis.clone()
        # gates at zero: the reconstruction is the linear decoding of the pixel code's linear channels
        # (unitok-tiny's last 8 are the encoder's own), nothing else
        x = tok._prepare(images)
        _, grid = tok._latent(x)
        pixel_code = (
            out.quant.prefix(out.pixel_depth) if out.pixel_depth < tok.num_levels else out.quant.quantized
        )
        linear_code = pixel_code[..., : tok.linear_channels]
        torch.testing.assert_close(out.reconstruction, tok.linear_path.decode(linear_code, grid))
        tok(torch.rand(4, 3, 64, 64))
    assert torch.equal(tok.linear_path.basis, basis)  # fitted once, on the first batch
    tok.eval()
    tok.save_pretrained(tmp_path / "tok")
    loaded = Tokenizer.from_pretrained(tmp_path / "tok").eval()
    codes = tok.encode(images)
    assert torch.equal(loaded.encode(images), codes)
    assert torch.equal(loaded.decode(codes), tok.decode(codes))


def test_gates_start_where_the_config_says_and_let_the_networks_learn() -> None:
    torch.manual_seed(0)
    tok = Tokenizer.from_preset("evotok-tiny", linear_path_gate_init=0.01)
    torch.testing.assert_close(tok.linear_path_gates.detach(), torch.full((2,), 0.01))
    tok.train()
    out = tok(torch.rand(4, 3, 64, 64))
    out.reconstruction.square().mean().backward()
    # a nonzero gate passes gradient to the encoder and the pixel decoder (a zero gate passes none)
    assert tok.encoder.patch.weight.grad.abs().sum() > 0
    assert tok.pixel_decoder.last_layer().grad.abs().sum() > 0


def test_linear_path_refuses_cosine_codes_in_a_projected_space() -> None:
    with pytest.raises(ValueError, match="codebook_dim"):
        Tokenizer.from_preset("unitok-tiny", quantizer={"normalize": True, "codebook_dim": 2})
