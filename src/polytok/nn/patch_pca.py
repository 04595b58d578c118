"""A linear patch codec: each token's pixel patch <-> its leading principal components.

A stride-``p`` tokenizer sees an image as ``p x p x 3`` patches. The principal components of those
patches are the best linear code of a given width (PCA), and a handful of them already keep what an
image is made of: at stride 4, 24 components per patch keep the shapes of the built-in ``shapes`` images
(docs/study.md, section 6.2). A network learns such sub-patch geometry only after long training, so the
tokenizer's ``linear_path`` adds this codec beside its encoder and pixel decoder and lets the networks
learn what it misses.

Normalised (cosine) codebooks keep only the direction of each chunk of the latent. For them every chunk of
``chunk`` channels carries ``chunk - 1`` components and a constant: the components are then the ratios of
the direction's entries to its last one (a gnomonic chart of the sphere), which survive the
normalisation exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytok.quant.distributed import all_reduce_sum_


def image_to_patches(images: Tensor, patch_size: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, C, H, W) -> ((B, h * w, C * p * p), (h, w)), patches in raster order, channels major."""
    b, c, h, w = images.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * p * p), (gh, gw)


def patches_to_image(patches: Tensor, grid: tuple[int, int], patch_size: int, channels: int = 3) -> Tensor:
    """Inverse of :func:`image_to_patches`: (B, h * w, C * p * p) -> (B, C, h * p, w * p)."""
    b = patches.shape[0]
    (gh, gw), p = grid, patch_size
    x = patches.reshape(b, gh, gw, channels, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, gh * p, gw * p)


class PatchPCA(nn.Module):
    """Patches of side ``patch_size`` <-> ``dim`` channels of principal-component coefficients.

    ``chunk``: None for plain coefficients (``dim`` components); the chunk width of a normalised codebook
    for the gnomonic chart (``dim / chunk * (chunk - 1)`` components). Fitted once by :meth:`fit` (the
    tokenizer calls it on its first training batch); the basis is then a buffer, saved with the weights.

    >>> pca = PatchPCA(patch_size=4, dim=8)
    >>> images = torch.rand(2, 3, 16, 16)
    >>> pca.fit(images)
    >>> pca.encode(images).shape
    torch.Size([2, 16, 8])
    >>> pca.decode(pca.encode(images), (4, 4)).shape
    torch.Size([2, 3, 16, 16])
    """

    def __init__(self, patch_size: int, dim: int, chunk: int | None = None, channels: int = 3) -> None:
        super().__init__()
        if chunk is not None and (chunk < 2 or dim % chunk):
            raise ValueError(f"chunk must be >= 2 and divide dim, got dim={dim}, chunk={chunk}")
        self.patch_size, self.dim, self.chunk, self.channels = patch_size, dim, chunk, channels
        width = channels * patch_size * patch_size
        self.components = dim if chunk is None else dim // chunk * (chunk - 1)
        if self.components > width:
            raise ValueError(f"{self.components} components asked of {width}-value patches")
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("basis", torch.zeros(self.components, width))
        # per chunk: the constant entry of the chart (the RMS of its components, so directions spread)
        self.register_buffer("chart_scale", torch.ones(dim // chunk if chunk else 1))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, images: Tensor, sync_distributed: bool = True) -> None:
        """Principal components of the patches of ``images`` (B, C, H, W), over all ranks under DDP."""
        patches, _ = image_to_patches(images.detach().double(), self.patch_size)
        flat = patches.reshape(-1, patches.shape[-1])
        width = flat.shape[1]
        stats = torch.cat([flat.new_tensor([flat.shape[0]]), flat.sum(0), (flat.T @ flat).flatten()])
        all_reduce_sum_(stats, sync_distributed)
        count, total, outer = stats[0], stats[1 : 1 + width], stats[1 + width :].reshape(width, width)
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        order = torch.argsort(eigenvalues, descending=True)[: self.components]
        basis = eigenvectors[:, order].T
        # a fixed sign per component (its largest entry positive), so refits agree
        signs = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
        basis = basis * signs
        self.mean.copy_(mean.float())
        self.basis.copy_(basis.float())
        if self.chunk is not None:
            variances = eigenvalues[order].clamp(min=0).reshape(-1, self.chunk - 1)
            self.chart_scale.copy_(variances.mean(1).sqrt().clamp(min=1e-4).float())
        self.fitted.fill_(True)

    def encode(self, images: Tensor) -> Tensor:
        """(B, C, H, W) on the [0, 1] scale -> (B, N, dim)."""
        patches, _ = image_to_patches(images, self.patch_size)
        coefficients = (patches - self.mean) @ self.basis.T
        if self.chunk is None:
            return coefficients
        b, n, _ = coefficients.shape
        per_chunk = coefficients.reshape(b, n, -1, self.chunk - 1)
        constant = self.chart_scale.view(1, 1, -1, 1).expand(b, n, -1, 1).to(coefficients.dtype)
        return torch.cat([per_chunk, constant], dim=-1).reshape(b, n, self.dim)

    def decode(self, vectors: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, N, dim) -> (B, C, h * p, w * p) on the [0, 1] scale (unclamped)."""
        if self.chunk is None:
            coefficients = vectors
        else:
            b, n, _ = vectors.shape
            per_chunk = vectors.reshape(b, n, -1, self.chunk)
            # a direction's last entry is positive near the chart; the clamp bounds each component at 10x
            # its chunk's scale (about 10 standard deviations) where a code falls far from it
            last = per_chunk[..., -1:].clamp(min=0.1 * per_chunk.norm(dim=-1, keepdim=True))
            scale = self.chart_scale.view(1, 1, -1, 1).to(vectors.dtype)
            coefficients = (per_chunk[..., :-1] / last * scale).reshape(b, n, self.components)
        patches = coefficients @ self.basis + self.mean
        return patches_to_image(patches, grid, self.patch_size, self.channels)
