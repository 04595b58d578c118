"""The one quantization engine behind every public quantizer.

Every quantizer in polytok is a stack of L residual levels, each level made of C codebooks that split
the channel dim (multi-codebook). Plain VQ is L = C = 1, UniTok's MCQ is L = 1, EvoTok's RVQ is C = 1,
and the combination has both. The public classes only choose L and C and how indices are shaped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.quant.codebook import Codebook, UpdateMode
from polytok.quant.distributed import all_reduce_sum_
from polytok.quant.gradients import entropy_loss, rotation_trick, straight_through


@dataclass
class QuantizerOutput:
    """What every quantizer returns.

    Attributes:
        quantized: (B, N, D) quantized vectors, value of the codes, gradient to the input (STE or rotation).
        indices: int64 codes; (B, N) VQ, (B, N, C) MCQ, (B, N, L) residual, (B, N, L, C) residual MCQ.
            Residual levels skipped by quantize-dropout hold -1.
        loss: scalar codebook + commitment (+ entropy) loss, already weighted.
        stats: detached statistics of this step (per level x codebook usage and perplexity, losses).
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)
    _prefix_fn: Callable[[int], Tensor] | None = field(default=None, repr=False)

    def prefix(self, depth: int) -> Tensor:
        """(B, N, D) quantized vector of the first ``depth`` residual levels, gradient to the input."""
        if self._prefix_fn is None:
            raise RuntimeError("this output carries no prefixes")
        return self._prefix_fn(depth)


def _check_finite(name: str, t: Tensor) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf values")


class LevelledQuantizer(nn.Module):
    """L residual levels x C codebooks on a (B, N, D) latent. Use the public subclasses.

    Args:
        dim: D, the channel dim of the input.
        codebook_size: K codes per codebook.
        levels: L residual levels (1 = no residual).
        num_codebooks: C codebooks per level, each taking D' / C channels of the (projected) latent.
        codebook_dim: per-codebook dim d; when C * d != D the latent is projected in (D -> C*d) and out.
        normalize: cosine codes (single-level only).
        update: "grad" or "ema" codebook learning.
        beta: commitment weight: loss = beta * |sg(q) - z|^2 (+ |q - sg(z)|^2 when update == "grad").
        entropy_weight, entropy_temperature: optional entropy loss on soft assignments.
        rotation_trick: pass gradients with the rotation trick instead of the straight-through estimator.
        shared_codebook: one codebook for all residual levels (RQ-VAE style).
        quantize_dropout: probability, per training step, of quantizing only a random prefix of levels.
        sync_distributed: keep codebooks identical across ranks when torch.distributed is initialised.
        Other keywords go to every ``Codebook`` (decay, eps, ema_warmup_steps, kmeans_init, kmeans_iters,
        dead_code_threshold, init_std, seed).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        levels: int = 1,
        num_codebooks: int = 1,
        codebook_dim: int | None = None,
        normalize: bool = False,
        update: UpdateMode = "grad",
        beta: float = 0.25,
        decay: float = 0.99,
        eps: float = 1e-5,
        ema_warmup_steps: int = 0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        entropy_weight: float = 0.0,
        entropy_temperature: float = 0.01,
        rotation_trick: bool = False,
        shared_codebook: bool = False,
        quantize_dropout: float = 0.0,
        init_std: float = 1.0,
        sync_distributed: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if levels < 1 or num_codebooks < 1:
            raise ValueError(f"levels and num_codebooks must be >= 1, got {levels} and {num_codebooks}")
        if codebook_dim is None:
            if dim % num_codebooks:
                raise ValueError(
                    f"dim {dim} is not divisible by num_codebooks {num_codebooks}; "
                    "set codebook_dim to project the latent"
                )
            codebook_dim = dim // num_codebooks
        if normalize and levels > 1:
            raise ValueError(
                "normalize=True (cosine codes) is defined for single-level quantizers only: "
                "residuals of unit vectors are not unit vectors"
            )
        if not 0.0 <= quantize_dropout <= 1.0:
            raise ValueError(f"quantize_dropout must be in [0, 1], got {quantize_dropout}")
        self.dim, self.codebook_size = dim, codebook_size
        self.num_levels, self.num_codebooks, self.codebook_dim = levels, num_codebooks, codebook_dim
        self.normalize, self.update, self.beta = normalize, update, beta
        self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
        self.use_rotation_trick, self.quantize_dropout = rotation_trick, quantize_dropout
        self.shared_codebook, self.sync_distributed, self.seed = shared_codebook, sync_distributed, seed
        inner = num_codebooks * codebook_dim
        self.project_in: nn.Module = nn.Linear(dim, inner) if inner != dim else nn.Identity()
        self.project_out: nn.Module = nn.Linear(inner, dim) if inner != dim else nn.Identity()

        def make(level: int) -> Codebook:
            return Codebook(
                num_codebooks,
                codebook_size,
                codebook_dim,
                normalize=normalize,
                update=update,
                decay=decay,
                eps=eps,
                ema_warmup_steps=ema_warmup_steps,
                kmeans_init=kmeans_init,
                kmeans_iters=kmeans_iters,
                dead_code_threshold=dead_code_threshold,
                init_std=init_std,
                sync_distributed=sync_distributed,
                seed=seed * 131 + level,
            )

        self.codebooks = nn.ModuleList([make(0)] if shared_codebook else [make(i) for i in range(levels)])
        self.register_buffer("_dropout_steps", torch.zeros((), dtype=torch.long))

    # -- shapes -----------------------------------------------------------------------------------

    @property
    def full_code_shape(self) -> tuple[int, int]:
        return (self.num_levels, self.num_codebooks)

    @property
    def code_shape(self) -> tuple[int, ...]:
        """Trailing shape of the indices of one position: () VQ, (C,) MCQ, (L,) RVQ, (L, C) both."""
        return self._squeeze_shape(self.full_code_shape)

    def _squeeze_shape(self, shape: tuple[int, int]) -> tuple[int, ...]:
        return tuple(s for s, keep in zip(shape, self._kept_axes()) if keep)

    def _kept_axes(self) -> tuple[bool, bool]:
        """Whether the level axis and the codebook axis appear in public index shapes."""
        return (True, True)

    def _to_public(self, indices: Tensor) -> Tensor:
        """(..., L, C) -> public shape."""
        keep_level, keep_book = self._kept_axes()
        if not keep_book:
            indices = indices.squeeze(-1)
        if not keep_level:
            indices = indices.squeeze(-2 if keep_book else -1)
        return indices

    def _from_public(self, indices: Tensor) -> Tensor:
        """Public shape -> (..., L', C), validating it. L' <= L (a prefix of the levels)."""
        keep_level, keep_book = self._kept_axes()
        if not keep_level:
            indices = indices.unsqueeze(-1 if not keep_book else -2)
        if not keep_book:
            indices = indices.unsqueeze(-1)
        return indices

    def codebook_for_level(self, level: int) -> Codebook:
        return self.codebooks[0 if self.shared_codebook else level]

    # -- input checks -----------------------------------------------------------------------------

    def _check_input(self, z: Tensor) -> None:
        if not isinstance(z, Tensor) or not z.is_floating_point():
            raise TypeError(
                f"expected a float tensor (B, N, {self.dim}), got "
                f"{type(z).__name__ if not isinstance(z, Tensor) else z.dtype}"
            )
        if z.dim() != 3:
            raise ValueError(f"expected input of shape (B, N, {self.dim}), got {tuple(z.shape)}")
        if z.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got input of shape {tuple(z.shape)}")
        if not self.training:
            _check_finite("quantizer input", z)

    def _update_allowed(self, z: Tensor) -> bool:
        """Training only: whether every rank's input is finite (one scalar all-reduce when distributed).

        A non-finite latent in training is not an error: its loss is non-finite and the trainer skips the
        step, so the codebooks must skip it too, on every rank alike or the collectives would not match.
        """
        bad = (~torch.isfinite(z).all()).float().reshape(1)
        return float(all_reduce_sum_(bad, self.sync_distributed)) == 0.0

    def _check_indices(self, indices: Tensor) -> Tensor:
        if not isinstance(indices, Tensor) or indices.dtype not in (
            torch.int64,
            torch.int32,
            torch.int16,
            torch.uint8,
            torch.int8,
        ):
            raise TypeError(
                f"indices must be an integer tensor, got "
                f"{indices.dtype if isinstance(indices, Tensor) else type(indices).__name__}"
            )
        full = self._from_public(indices.long())
        levels, books = full.shape[-2], full.shape[-1]
        if books != self.num_codebooks or not 1 <= levels <= self.num_levels:
            raise ValueError(
                f"indices of shape {tuple(indices.shape)} do not fit code shape {self.code_shape} "
                f"(a prefix of 1..{self.num_levels} levels is allowed)"
            )
        if full.numel() and (int(full.min()) < 0 or int(full.max()) >= self.codebook_size):
            raise ValueError(
                f"indices out of range [0, {self.codebook_size}): min {int(full.min())}, "
                f"max {int(full.max())}"
            )
        return full

    # -- forward ----------------------------------------------------------------------------------

    def _dropout_depth(self) -> int:
        """Number of levels to quantize this step (all unless quantize-dropout fires)."""
        if not self.training or self.quantize_dropout <= 0 or self.num_levels == 1:
            return self.num_levels
        # Seeded by a step counter that is identical on every rank, so all ranks drop the same levels
        # and enter the same codebook collectives.
        g = torch.Generator().manual_seed(self.seed * 7_777 + int(self._dropout_steps))
        self._dropout_steps += 1
        if float(torch.rand((), generator=g, device="cpu")) >= self.quantize_dropout:
            return self.num_levels
        return int(torch.randint(1, self.num_levels + 1, (), generator=g, device="cpu"))

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D) -> :class:`QuantizerOutput`. Distances always in fp32."""
        self._check_input(z)
        b, n, _ = z.shape
        out_dtype = z.dtype
        device_type = z.device.type
        z_in = self.project_in(z)
        with torch.autocast(device_type=device_type, enabled=False):
            x = z_in.float().reshape(b * n, self.num_codebooks, self.codebook_dim)  # (M, C, d)
            if self.normalize:
                x = F.normalize(x, dim=-1)
            depth = self._dropout_depth()
            update = self.training and self._update_allowed(x)
            residual = x
            cumulative: list[Tensor] = []
            all_idx: list[Tensor] = []
            matched: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
            commit = x.new_zeros(())
            codebook_loss = x.new_zeros(())
            ent = x.new_zeros(())
            total = torch.zeros_like(x)
            for level in range(depth):
                book = self.codebook_for_level(level)
                if update:
                    book.maybe_kmeans_init(residual)
                idx = book.search(residual)  # (M, C)
                q = book.lookup(idx)  # (M, C, d)
                commit = commit + F.mse_loss(residual, q.detach())
                if self.update == "grad":
                    codebook_loss = codebook_loss + F.mse_loss(q, residual.detach())
                if self.training and self.entropy_weight > 0:
                    ent = ent + entropy_loss(self._similarity(residual, book) / self.entropy_temperature)
                if update:
                    inputs, chosen = matched.setdefault(id(book), ([], []))
                    inputs.append(residual.detach())
                    chosen.append(idx)
                total = total + q.detach()  # codes learn from their own loss only, as in VQ-VAE
                cumulative.append(total)
                all_idx.append(idx)
                residual = residual - q.detach()
            # EvoTok averages the commitment over all cumulative prefixes: |z - sum_{l<=k} q_l|^2 equals
            # the level-k residual error, so the per-level mean is exactly that average.
            loss = (self.beta * commit + codebook_loss) / depth + self.entropy_weight * ent / depth
            stats = self._update_codebooks(matched) if update else {}
            if self.training:
                stats["skipped_update"] = torch.tensor(0.0 if update else 1.0, device=x.device)
            indices = torch.stack(all_idx, dim=1)  # (M, depth, C)
            if depth < self.num_levels:
                pad = indices.new_full((b * n, self.num_levels - depth, self.num_codebooks), -1)
                indices = torch.cat([indices, pad], dim=1)
            stats["commitment"] = (commit / depth).detach()
            if self.update == "grad":
                stats["codebook_loss"] = (codebook_loss / depth).detach()

        def pass_gradient(q_total: Tensor) -> Tensor:
            if not (torch.is_grad_enabled() and x.requires_grad):
                q_out = q_total  # nothing to pass a gradient to: return the codes exactly
            elif self.use_rotation_trick:
                q_out = rotation_trick(x, q_total)
            else:
                q_out = straight_through(x, q_total)
            return self.project_out(q_out.reshape(b, n, -1).to(z_in.dtype)).to(out_dtype)

        def prefix(k: int) -> Tensor:
            if not 1 <= k <= depth:
                raise ValueError(f"prefix depth must be in [1, {depth}], got {k}")
            return pass_gradient(cumulative[k - 1])

        quantized = pass_gradient(cumulative[-1])
        indices = self._to_public(indices.view(b, n, self.num_levels, self.num_codebooks))
        return QuantizerOutput(
            quantized=quantized, indices=indices, loss=loss, stats=stats, _prefix_fn=prefix
        )

    def _similarity(self, x: Tensor, book: Codebook) -> Tensor:
        """(M, C, K) negative squared distances (or cosines) for the entropy loss."""
        codes = book.codes()  # (C, K, d)
        dots = torch.einsum("mcd,ckd->mck", x, codes)
        if self.normalize:
            return dots
        return 2 * dots - codes.pow(2).sum(-1) - x.pow(2).sum(-1, keepdim=True)

    def _update_codebooks(self, matched: dict[int, tuple[list[Tensor], list[Tensor]]]) -> dict[str, Tensor]:
        usage, perplexity, restarts = [], [], []
        for level in range(self.num_levels if not self.shared_codebook else 1):
            book = self.codebooks[level]
            if id(book) not in matched:  # level dropped this step: no update (same on every rank)
                continue
            s = book.update(*matched[id(book)])
            usage.append(s["usage"])
            perplexity.append(s["perplexity"])
            restarts.append(s["restarts"])
        return {
            "usage": torch.stack(usage),  # (levels updated, C)
            "perplexity": torch.stack(perplexity),
            "restarts": torch.stack(restarts).sum(),
        }

    # -- codes from indices -----------------------------------------------------------------------

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Vectors from indices: (B, N, *code_shape) -> (B, N, D); a prefix of levels sums those levels.

        In eval mode this reproduces ``forward(z).quantized`` exactly. Also accepts any leading shape.
        """
        full = self._check_indices(indices)  # (..., L', C)
        lead = full.shape[:-2]
        total = None
        for level in range(full.shape[-2]):
            q = self.codebook_for_level(level).lookup(full[..., level, :])  # (..., C, d)
            total = q if total is None else total + q
        assert total is not None
        flat = total.reshape(*lead, self.num_codebooks * self.codebook_dim)
        param = next(iter(self.project_out.parameters()), None)
        if param is not None:
            flat = flat.to(param.dtype)
        return self.project_out(flat)

    @torch.no_grad()
    def codebook_usage(self) -> dict[str, Tensor]:
        """EMA usage per level x codebook: ``usage`` fraction and ``perplexity``, each (L, C)."""
        per_level = [self.codebook_for_level(i).usage() for i in range(self.num_levels)]
        return {key: torch.stack([u[key] for u in per_level]) for key in ("usage", "perplexity")}
