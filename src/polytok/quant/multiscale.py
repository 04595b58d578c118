"""Multi-scale residual quantization (VAR, Tian et al. 2024): one token map per scale, coarse to fine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.quant.core import LevelledQuantizer, QuantizerOutput, _mean_square, check_index_range
from polytok.quant.dual import DualCodebookQuantizer, DualQuantizerOutput
from polytok.quant.gradients import straight_through

VAR_SCALES = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def phi_schedule(num_scales: int, phi_count: int) -> list[int]:
    """Which of ``phi_count`` shared convolutions serves each scale (VAR's partial sharing).

    Scale k sits at t = k / (S - 1) in [0, 1]; the convolutions sit at evenly spread ticks (for 4 of
    them 1/12, 1/3 + 1/12, ..., 11/12 — VAR's spacing — otherwise the centres of phi_count equal bins),
    and a scale takes the nearest tick (the first on a tie).
    """
    if phi_count <= 0:
        return [-1] * num_scales
    lo = 1 / (3 * phi_count) if phi_count == 4 else 1 / (2 * phi_count)
    ticks = torch.linspace(lo, 1 - lo, phi_count, dtype=torch.float64)
    where = [k / (num_scales - 1) if num_scales > 1 else 0.0 for k in range(num_scales)]
    return [int((ticks - t).abs().argmin()) for t in where]


def _scale_sizes(scales: Sequence[int | tuple[int, int]]) -> list[tuple[int, int]]:
    """Scales as (h, w) pairs (an int is a square), checked."""
    sizes = [(int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1])) for s in scales]
    if not sizes or min(min(s) for s in sizes) < 1:
        raise ValueError(f"scales must be a non-empty list of positive sizes, got {list(scales)}")
    return sizes


def _offsets(sizes: list[tuple[int, int]]) -> list[int]:
    """Where each scale's tokens start in the flat indices, and their total: [0, h0 w0, ...]."""
    out = [0]
    for h, w in sizes:
        out.append(out[-1] + h * w)
    return out


def _split_flat(indices: Tensor, sizes: list[tuple[int, int]], offsets: list[int]) -> list[Tensor]:
    """Flat (B, offsets[K]) indices -> K maps (B, h_k, w_k)."""
    k = offsets.index(indices.shape[-1])
    return [indices[:, offsets[i] : offsets[i + 1]].reshape(-1, *sizes[i]) for i in range(k)]


def _check_flat_indices(indices: Tensor, offsets: list[int], codebook_size: int) -> Tensor:
    """Integer (B, L) indices, L the tokens of a prefix of the scales, in range -> int64."""
    if not isinstance(indices, Tensor) or indices.is_floating_point() or indices.dtype == torch.bool:
        raise TypeError(
            f"indices must be an integer tensor, got "
            f"{indices.dtype if isinstance(indices, Tensor) else type(indices).__name__}"
        )
    if indices.dim() != 2 or indices.shape[1] not in offsets[1:]:
        raise ValueError(
            f"indices of shape {tuple(indices.shape)}: expected (B, L) with L the tokens of the first "
            f"K scales, one of {offsets[1:]}"
        )
    indices = indices.long()
    check_index_range(indices, codebook_size)
    return indices


class _FlatScales:
    """The flat index layout both multi-scale quantizers share: ``scales`` (h, w) coarse to fine and
    ``_offsets``, where each scale's tokens start (set by the subclass)."""

    scales: list[tuple[int, int]]
    _offsets: list[int]

    @property
    def num_tokens(self) -> int:
        """sum_k h_k w_k, the length of the flat indices."""
        return self._offsets[-1]

    @property
    def code_shape(self) -> tuple[int, ...]:
        return ()

    def split_indices(self, indices: Tensor) -> list[Tensor]:
        """Flat (B, sum_{k<K} h_k w_k) indices -> list of K (B, h_k, w_k) maps."""
        return _split_flat(indices, self.scales, self._offsets)


class MultiScaleResidualQuantizer(_FlatScales, LevelledQuantizer):
    """Residual quantization of a (B, H, W, D) map over a schedule of token-map sizes, coarse to fine.

    For scales k = 0..S-1 of sizes (h_k, w_k), the last one (H, W), with f the input map and r = f:
        r_k   = area-downsample(r, (h_k, w_k))          (the full map itself at the last scale)
        i_k   = nearest code of every position of r_k    (one codebook shared by all scales)
        c_k   = bicubic-upsample(codes[i_k], (H, W))      (not resampled at the last scale)
        c_k   = (1 - ratio) c_k + ratio * phi_k(c_k)      phi_k a 3x3 convolution, D -> D
        f_hat = f_hat + c_k;   r = r - c_k
    ``phi_count`` convolutions are shared across scales by position in the schedule (VAR: 4 for 10 scales,
    ratio 0.5; see ``phi_schedule``); ``phi_count=0`` or ``phi_ratio=0`` uses no convolution.

    Loss (VAR's): the mean over scales of ``beta * |f - sg(f_hat_k)|^2 + |f_hat_k - sg(f)|^2``, f_hat_k the
    reconstruction after scale k; the second term trains the codebook (``update="grad"``) and the phi
    convolutions (also with ``update="ema"``, where the codes are buffers). ``quantized`` passes the
    gradient straight through to the input.

    Input: (B, H, W, dim), channels last like the (B, N, D) latents of the other quantizers, (H, W) the
    last scale. Indices: one flat (B, sum_k h_k w_k) int64 tensor, the scales concatenated coarse to fine,
    each row-major (VAR's token order); ``split_indices`` gives the list of (B, h_k, w_k) maps.
    ``indices_to_codes`` takes the first K scales' indices (B, sum_{k<K} h_k w_k) and returns their
    (B, H, W, dim) reconstruction; ``out.prefix(K)`` is the same from the forward pass. A scale is an int
    (square) or an (h, w) pair; default VAR's (1, 2, 3, 4, 5, 6, 8, 10, 13, 16) for a 16 x 16 map.

    A NaN / Inf / too large value spreads to its whole image through the resampling: in training the
    image is marked (NaN vectors, index -1 at every scale) and the step reported skipped; in eval a
    ValueError. Training ``stats`` hold per-scale ``usage`` and ``perplexity`` (S, 1);
    ``codebook_usage()`` the shared codebook's, (1, 1). Other keywords as ``LevelledQuantizer``
    (update, beta, decay, dead_code_threshold, codebook_dim, projected, ...).

    Example:
        >>> q = MultiScaleResidualQuantizer(dim=32, codebook_size=4096)
        >>> out = q(torch.randn(2, 16, 16, 32))
        >>> out.indices.shape, [m.shape[1:] for m in q.split_indices(out.indices)][-1]
        (torch.Size([2, 680]), torch.Size([16, 16]))
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        scales: Sequence[int | tuple[int, int]] = VAR_SCALES,
        *,
        phi_count: int = 4,
        phi_ratio: float = 0.5,
        **kwargs: Any,
    ) -> None:
        unsupported = {"levels", "num_codebooks", "shared_codebook", "quantize_dropout", "kmeans_init"}
        unsupported |= {"normalize", "rotation_trick", "entropy_weight"}
        for key in unsupported & kwargs.keys():
            raise TypeError(f"MultiScaleResidualQuantizer does not take {key!r}")
        sizes = _scale_sizes(scales)
        super().__init__(dim, codebook_size, levels=len(sizes), shared_codebook=True, **kwargs)
        self.scales = sizes
        self.phi_ratio = abs(phi_ratio)
        d = self.codebook_dim
        count = phi_count if self.phi_ratio > 0 else 0
        self.phis = nn.ModuleList([nn.Conv2d(d, d, 3, padding=1) for _ in range(count)])
        self._phi_of_scale = phi_schedule(len(sizes), count)
        self._offsets = _offsets(sizes)  # scale k: [offsets[k], offsets[k + 1])

    # -- the per-scale steps, shared by forward and indices_to_codes ------------------------------

    def _contribution(self, k: int, codes: Tensor) -> Tensor:
        """(B, d, h_k, w_k) codes of scale k -> (B, d, H, W) what they add to the reconstruction."""
        if k < len(self.scales) - 1:
            codes = F.interpolate(codes, size=self.scales[-1], mode="bicubic")
        phi = self._phi_of_scale[k]
        if phi < 0:
            return codes
        return codes * (1 - self.phi_ratio) + self.phis[phi](codes) * self.phi_ratio

    def _check_map(self, z: Tensor) -> None:
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise TypeError(
                f"expected a float tensor (B, H, W, {self.dim}), got "
                f"{type(z).__name__ if not isinstance(z, Tensor) else z.dtype}"
            )
        if z.dim() != 4 or z.shape[-1] != self.dim or tuple(z.shape[1:3]) != self.scales[-1]:
            raise ValueError(
                f"expected input of shape (B, {self.scales[-1][0]}, {self.scales[-1][1]}, {self.dim}) "
                f"(channels last, the last scale), got {tuple(z.shape)}"
            )

    def forward(self, z: Tensor) -> QuantizerOutput:  # type: ignore[override]
        """Quantize ``z`` (B, H, W, dim) -> :class:`QuantizerOutput` with indices (B, sum_k h_k w_k)."""
        self._check_map(z)
        b, height, width, _ = z.shape
        d, num_scales = self.codebook_dim, len(self.scales)
        out_dtype = z.dtype
        z_in = self.project_in(z)
        book = self.codebooks[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            f = z_in.float()  # (B, H, W, d)
            bad, any_bad = self._unsearchable_rows(f.reshape(-1, 1, d))
            if any_bad and not self.training:
                raise ValueError(self._describe_unsearchable(f))
            bad_images = bad.view(b, height * width).any(-1)  # resampling spreads a bad value
            clean = f.masked_fill(bad_images.view(b, 1, 1, 1), 0.0) if any_bad else f
            target = clean.permute(0, 3, 1, 2)  # (B, d, H, W)
            rest = target.detach()
            f_hat = torch.zeros_like(rest)
            commit, codebook_loss = f.new_zeros(()), f.new_zeros(())
            cumulative: list[Tensor] = []
            all_idx: list[Tensor] = []
            level_counts: list[Tensor] = []
            for k, (h, w) in enumerate(self.scales):
                small = F.interpolate(rest, size=(h, w), mode="area") if k < num_scales - 1 else rest
                rows = small.permute(0, 2, 3, 1).reshape(b * h * w, 1, d)
                idx = book.search(rows)  # (b h w, 1)
                codes = book.lookup(idx).view(b, h, w, d).permute(0, 3, 1, 2)
                step = self._contribution(k, codes)
                f_hat = f_hat + step
                rest = rest - step.detach()
                commit = commit + _mean_square(target, f_hat.detach())
                codebook_loss = codebook_loss + _mean_square(f_hat, target.detach())
                if self.training:
                    level_counts.append(book.count(idx))
                    if not any_bad:
                        book.record(k, rows, idx, level_counts[-1])
                cumulative.append(f_hat.detach())
                all_idx.append(idx.view(b, h * w))
            loss = (self.beta * commit + codebook_loss) / num_scales
            stats = {"commitment": (commit / num_scales).detach()}
            stats["codebook_loss"] = (codebook_loss / num_scales).detach()
            if self.training:
                stats.update(self._finish_training_call(level_counts, any_bad))
            indices = torch.cat(all_idx, 1)
            if any_bad:
                loss = loss + float("nan")
                indices = indices.masked_fill(bad_images.unsqueeze(-1), -1)
                nan = bad_images.view(b, 1, 1, 1)
                cumulative = [t.masked_fill(nan, float("nan")) for t in cumulative]

        def pass_gradient(total: Tensor) -> Tensor:
            total = total.permute(0, 2, 3, 1)  # (B, H, W, d)
            if torch.is_grad_enabled() and clean.requires_grad:
                total = straight_through(clean, total)
            return self.project_out(total.to(z_in.dtype)).to(out_dtype)

        def prefix(k: int) -> Tensor:
            if not 1 <= k <= num_scales:
                raise ValueError(f"prefix depth must be in [1, {num_scales}], got {k}")
            return pass_gradient(cumulative[k - 1])

        return QuantizerOutput(
            quantized=pass_gradient(cumulative[-1]),
            indices=indices,
            loss=loss,
            stats=stats,
            _prefix_fn=prefix,
        )

    def _check_indices(self, indices: Tensor) -> Tensor:
        return _check_flat_indices(indices, self._offsets, self.codebook_size)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(B, sum_{k<K} h_k w_k) -> (B, H, W, dim) reconstruction of the first K scales; in eval mode
        ``forward(z).quantized`` exactly when all scales are given (``prefix(K)`` for K of them)."""
        maps = self.split_indices(self._check_indices(indices))
        book = self.codebooks[0]
        height, width = self.scales[-1]
        b, d = indices.shape[0], self.codebook_dim
        total = torch.zeros(b, d, height, width, device=indices.device)
        for k, idx in enumerate(maps):
            h, w = self.scales[k]
            codes = book.lookup(idx.reshape(b * h * w, 1)).view(b, h, w, d).permute(0, 3, 1, 2)
            total = total + self._contribution(k, codes)
        flat = total.permute(0, 2, 3, 1)
        param = next(iter(self.project_out.parameters()), None)
        if param is not None:
            flat = flat.to(param.dtype)
        return self.project_out(flat)

    @torch.no_grad()
    def codebook_usage(self) -> dict[str, Tensor]:
        """EMA usage of the one codebook all scales share: ``usage`` and ``perplexity``, each (1, 1)."""
        return {key: value.unsqueeze(0) for key, value in self.codebooks[0].usage().items()}


class MultiScaleDualQuantizer(_FlatScales, nn.Module):
    """TokenFlow's quantizer: multi-scale residual quantization (VAR's schedule, no phi convolution) whose
    every scale is a :class:`DualCodebookQuantizer` (a semantic and a pixel codebook, one shared index).

    The two streams travel side by side as one (B, D, H, W) map, D = Ds + Dp, semantic first. With r the
    map and f_hat = 0, for each scale k of size (h_k, w_k), the last one (H, W):
        r_k   = area-downsample(r, (h_k, w_k))                 (the map itself at the last scale)
        i_k   = the dual quantizer's shared index of every position of r_k (each stream L2-normalised
                with ``normalize``, as TokenFlow's l2-normalised codes)
        c_k   = bicubic-upsample((S[i_k], P[i_k]), (H, W))      (not resampled at the last scale)
        f_hat = f_hat + c_k;   r = r - sg(c_k)
    The residual keeps its gradient path to the input (each scale's straight-through codes pass it back
    through the normalisation and the resampling), as TokenFlow's ``encode`` does.

    ``forward(semantic, pixel)`` takes (B, H, W, Ds) and (B, H, W, Dp) maps (channels last) and returns a
    :class:`DualQuantizerOutput` whose ``quantized`` is (B, H, W, Ds + Dp); indices are one flat
    (B, sum_k h_k w_k) int64 tensor, scales concatenated coarse to fine, each row-major (TokenFlow's and
    VAR's order). ``indices_to_codes`` of the first K scales' indices returns their (B, H, W, Ds + Dp)
    sum (TokenFlow's ``decode_code``); ``out.prefix(K)`` is the same from the forward pass.

    Loss: the mean over scales of the dual quantizer's loss. Training ``stats``: each key of the dual
    quantizer's per-call statistics stacked over scales (S, ...). Other keywords go to the dual quantizer
    (``semantic_weight``, ``pixel_weight``, ``update``, ``beta``, ...).

    Example:
        >>> q = MultiScaleDualQuantizer(32, 8, 1024, scales=(1, 2, 4), normalize=True)
        >>> out = q(torch.randn(2, 4, 4, 32), torch.randn(2, 4, 4, 8))
        >>> out.indices.shape, out.quantized.shape
        (torch.Size([2, 21]), torch.Size([2, 4, 4, 40]))
    """

    def __init__(
        self,
        semantic_dim: int,
        pixel_dim: int,
        codebook_size: int,
        scales: Sequence[int | tuple[int, int]] = VAR_SCALES,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.scales = _scale_sizes(scales)
        self._offsets = _offsets(self.scales)
        self.dual = DualCodebookQuantizer(semantic_dim, pixel_dim, codebook_size, **kwargs)
        self.semantic_dim, self.pixel_dim = semantic_dim, pixel_dim
        self.dim, self.codebook_size = semantic_dim + pixel_dim, codebook_size

    @property
    def codebooks(self) -> nn.ModuleList:
        """The semantic and the pixel codebook (the dual quantizer's)."""
        return self.dual.codebooks

    def _up(self, k: int, codes: Tensor) -> Tensor:
        """(B, D, h_k, w_k) -> (B, D, H, W): bicubic to the last scale (nothing to do at the last)."""
        if k < len(self.scales) - 1:
            return F.interpolate(codes, size=self.scales[-1], mode="bicubic")
        return codes

    def forward(self, semantic: Tensor, pixel: Tensor) -> DualQuantizerOutput:  # type: ignore[override]
        """Quantize ``semantic`` (B, H, W, Ds) and ``pixel`` (B, H, W, Dp) -> :class:`DualQuantizerOutput`
        with ``quantized`` (B, H, W, Ds + Dp) and indices (B, sum_k h_k w_k)."""
        for name, t, d in (("semantic", semantic, self.semantic_dim), ("pixel", pixel, self.pixel_dim)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(f"expected a float tensor {name} (B, H, W, {d})")
            if t.dim() != 4 or tuple(t.shape[1:3]) != self.scales[-1] or t.shape[-1] != d:
                raise ValueError(
                    f"expected {name} of shape (B, {self.scales[-1][0]}, {self.scales[-1][1]}, {d}) "
                    f"(channels last, the last scale), got {tuple(t.shape)}"
                )
        if semantic.shape[0] != pixel.shape[0]:
            raise ValueError(f"semantic {tuple(semantic.shape)} and pixel {tuple(pixel.shape)} differ in B")
        b, ds, num_scales = semantic.shape[0], self.semantic_dim, len(self.scales)
        out_dtype = torch.promote_types(semantic.dtype, pixel.dtype)
        with torch.autocast(device_type=semantic.device.type, enabled=False):
            rest = torch.cat([semantic.float(), pixel.float()], -1).permute(0, 3, 1, 2)  # (B, D, H, W)
            f_hat = torch.zeros_like(rest)
            cumulative: list[Tensor] = []
            all_idx: list[Tensor] = []
            losses: list[Tensor] = []
            per_scale: list[dict[str, Tensor]] = []
            for k, (h, w) in enumerate(self.scales):
                small = F.interpolate(rest, size=(h, w), mode="area") if k < num_scales - 1 else rest
                rows = small.permute(0, 2, 3, 1).reshape(b, h * w, self.dim)
                out = self.dual(rows[..., :ds], rows[..., ds:])
                codes = out.quantized.reshape(b, h, w, self.dim).permute(0, 3, 1, 2)
                step = self._up(k, codes)
                f_hat = f_hat + step
                rest = rest - step.detach()
                cumulative.append(f_hat)
                all_idx.append(out.indices)
                losses.append(out.loss)
                per_scale.append(out.stats)
            stats = {key: torch.stack([s[key] for s in per_scale]) for key in per_scale[0]}
            indices = torch.cat(all_idx, 1)
            if bool((indices < 0).any()):  # a bad value spreads to its image through the resampling
                indices = indices.masked_fill((indices < 0).any(-1, keepdim=True), -1)

        def prefix(k: int) -> Tensor:
            if not 1 <= k <= num_scales:
                raise ValueError(f"prefix depth must be in [1, {num_scales}], got {k}")
            return cumulative[k - 1].permute(0, 2, 3, 1).to(out_dtype)

        return DualQuantizerOutput(
            quantized=prefix(num_scales),
            indices=indices,
            loss=torch.stack(losses).mean(),
            stats=stats,
            semantic_dim=self.semantic_dim,
            _prefix_fn=prefix,
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(B, sum_{k<K} h_k w_k) -> (B, H, W, Ds + Dp): the first K scales' codes, each upsampled to the
        last scale, summed; in eval mode ``forward(...).quantized`` exactly when all scales are given."""
        maps = self.split_indices(_check_flat_indices(indices, self._offsets, self.codebook_size))
        total: Tensor | None = None
        for k, idx in enumerate(maps):
            b, h, w = idx.shape
            codes = self.dual.indices_to_codes(idx.reshape(b, h * w))
            step = self._up(k, codes.reshape(b, h, w, self.dim).permute(0, 3, 1, 2))
            total = step if total is None else total + step
        assert total is not None
        return total.permute(0, 2, 3, 1)

    @torch.no_grad()
    def codebook_usage(self) -> dict[str, Tensor]:
        """The dual quantizer's EMA usage: ``usage`` and ``perplexity``, (2, 1), semantic then pixel."""
        return self.dual.codebook_usage()

    def commit_codebook_updates(self) -> dict[str, Tensor]:
        return self.dual.commit_codebook_updates()

    def discard_codebook_updates(self) -> None:
        self.dual.discard_codebook_updates()
