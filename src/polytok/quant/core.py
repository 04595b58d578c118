"""The one quantization engine behind every public quantizer.

Every quantizer in polytok is a stack of L residual levels, each level made of C codebooks that split
the channel dim (multi-codebook). Plain VQ is L = C = 1, UniTok's MCQ is L = 1, EvoTok's RVQ is C = 1,
and the combination has both. The public classes only choose L and C and how indices are shaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.quant.codebook import Codebook, EmaWarmup, UpdateMode
from polytok.quant.distributed import all_reduce_sum_, world_and_rank
from polytok.quant.gradients import entropy_loss, rotation_trick, straight_through


def check_latent(z: Tensor, dim: int) -> None:
    """A quantizer's input must be a float tensor (B, N, dim): TypeError for another type or dtype,
    ValueError for another shape."""
    if not isinstance(z, Tensor) or not z.is_floating_point():
        raise TypeError(
            f"expected a float tensor (B, N, {dim}), got "
            f"{type(z).__name__ if not isinstance(z, Tensor) else z.dtype}"
        )
    if z.dim() != 3:
        raise ValueError(f"expected input of shape (B, N, {dim}), got {tuple(z.shape)}")
    if z.shape[-1] != dim:
        raise ValueError(f"expected last dim {dim}, got input of shape {tuple(z.shape)}")


INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)


def check_index_dtype(indices: Tensor) -> None:
    """TypeError unless ``indices`` is a tensor of one of :data:`INDEX_DTYPES`."""
    if not isinstance(indices, Tensor) or indices.dtype not in INDEX_DTYPES:
        raise TypeError(
            f"indices must be an integer tensor, got "
            f"{indices.dtype if isinstance(indices, Tensor) else type(indices).__name__}"
        )


def check_index_range(indices: Tensor, codebook_size: int) -> None:
    """ValueError unless every index lies in [0, codebook_size)."""
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= codebook_size):
        raise ValueError(
            f"indices out of range [0, {codebook_size}): min {int(indices.min())}, max {int(indices.max())}"
        )


@dataclass
class QuantizerOutput:
    """What every quantizer returns.

    Attributes:
        quantized: (B, N, D) quantized vectors, value of the codes, gradient to the input (STE or rotation).
        indices: int64 codes; (B, N) VQ, (B, N, C) MCQ, (B, N, L) residual, (B, N, L, C) residual MCQ.
            Residual levels skipped by quantize-dropout hold -1, and so do (training only) positions whose
            input could not be searched (NaN, Inf or beyond ``magnitude_limit``; their vectors are NaN).
        loss: scalar codebook + commitment (+ entropy) loss, already weighted.
        stats: detached statistics of this call (training: per level x codebook ``usage`` and
            ``perplexity`` of this rank's batch, ``skipped_update``; ``restarts`` when updates are applied
            in forward; the losses).
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


# Row counts cross ranks as (n // 2^22, n % 2^22) in the float32 payload: each part exact.
_ROW_SPLIT = 1 << 22
_FP32_MAX = torch.finfo(torch.float32).max


def _mean_square(a: Tensor, b: Tensor) -> Tensor:
    """``F.mse_loss``, but 0 (still attached to the graph) for empty inputs instead of NaN."""
    return F.mse_loss(a, b) if a.numel() else (a - b).sum()


def _stored_codes(book: Codebook) -> Tensor:
    """The codes a search will see, without a graph (a projected codebook computes them)."""
    return book.codes().detach() if book.projected else book.embed.detach()


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
        Other keywords go to every ``Codebook`` (decay, eps, ema_warmup_steps, ema_warmup,
        ema_min_cluster_size, kmeans_init, kmeans_iters, dead_code_threshold, init_std, seed, and
        projected: SimVQ codes, a frozen random basis behind a learned linear map).

    Codebook updates (EMA, k-means init, dead-code restarts, counters) are applied at the end of each
    training forward unless ``defer_codebook_updates`` is set (the Trainer sets it through
    ``polytok.quant.CodebookUpdates``); then forwards only record them and ``commit_codebook_updates()``
    applies them once per optimiser step, or ``discard_codebook_updates()`` drops them.
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
        ema_warmup: EmaWarmup = "frozen",
        ema_min_cluster_size: float = 0.0,
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
        projected: bool = False,
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
                ema_warmup=ema_warmup,
                ema_min_cluster_size=ema_min_cluster_size,
                kmeans_init=kmeans_init,
                kmeans_iters=kmeans_iters,
                dead_code_threshold=dead_code_threshold,
                init_std=init_std,
                sync_distributed=sync_distributed,
                seed=seed * 131 + level,
                projected=projected,
            )

        self.codebooks = nn.ModuleList([make(0)] if shared_codebook else [make(i) for i in range(levels)])
        self.register_buffer("_dropout_steps", torch.zeros((), dtype=torch.long))
        self.kmeans_init = kmeans_init
        # |values| of inputs and codes up to this keep every fp32 score and residual finite: a dot
        # product of d terms, L levels of residuals (sqrt(FP32_MAX / 8) ~ 6.5e18, divided by sqrt(d (L+1))).
        self.magnitude_limit = math.sqrt(_FP32_MAX / (8 * codebook_dim * (levels + 1)))
        # See polytok.quant.updates: False applies codebook updates at the end of every training forward;
        # True (set by the Trainer) only records them until commit_codebook_updates / discard_...
        self.defer_codebook_updates = False
        self._reset_pending()

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
        check_latent(z, self.dim)
        if not self.training:
            _check_finite("quantizer input", z)

    def _unsearchable_rows(self, x: Tensor) -> tuple[Tensor, bool]:
        """Rows of ``x`` (M, C, d) that cannot be searched: (M, C) bool, and whether there is any.

        A row is unsearchable when it holds NaN or Inf, or values so large that fp32 distances overflow
        (the search would then see NaN scores and return no valid code). Codes beyond the same limit
        mean a corrupt quantizer state: a ValueError in every mode. One host sync for both checks.
        """
        limit = self.magnitude_limit
        inf = float("inf")
        bad = ~(torch.linalg.vector_norm(x.detach(), inf, dim=-1) <= limit)  # NaN compares False: caught
        books = list(self.codebooks)
        codes_bad = torch.stack([~(torch.linalg.vector_norm(_stored_codes(b), inf) <= limit) for b in books])
        any_bad, any_codes_bad = torch.stack([bad.any(), codes_bad.any()]).tolist()
        if any_codes_bad:
            raise ValueError(
                f"codebook {int(codes_bad.float().argmax())} holds NaN, Inf or values beyond "
                f"{limit:.3g} in magnitude: the quantizer state is corrupt"
            )
        return bad, bool(any_bad)

    def _describe_unsearchable(self, x: Tensor) -> str:
        x = x.detach()
        if not torch.isfinite(x).all():
            return "quantizer input contains NaN or Inf values (after the input projection)"
        return (
            f"quantizer input has values up to {float(x.abs().max()):.3g} in magnitude; beyond "
            f"{self.magnitude_limit:.3g} fp32 distances overflow"
        )

    def _check_indices(self, indices: Tensor) -> Tensor:
        check_index_dtype(indices)
        full = self._from_public(indices.long())
        levels, books = full.shape[-2], full.shape[-1]
        if books != self.num_codebooks or not 1 <= levels <= self.num_levels:
            raise ValueError(
                f"indices of shape {tuple(indices.shape)} do not fit code shape {self.code_shape} "
                f"(a prefix of 1..{self.num_levels} levels is allowed)"
            )
        check_index_range(full, self.codebook_size)
        return full

    # -- forward ----------------------------------------------------------------------------------

    def _step_depth(self) -> int:
        """Number of levels quantized in the current step (all unless quantize-dropout fires).

        Seeded by a counter that advances with every applied codebook update, so it is identical on every
        rank (same codebook collectives) and for every micro-batch of one optimiser step.
        """
        if self.quantize_dropout <= 0 or self.num_levels == 1:
            return self.num_levels
        g = torch.Generator().manual_seed(self.seed * 7_777 + int(self._dropout_steps))
        if float(torch.rand((), generator=g, device="cpu")) >= self.quantize_dropout:
            return self.num_levels
        return int(torch.randint(1, self.num_levels + 1, (), generator=g, device="cpu"))

    def _needs_kmeans_init(self, depth: int) -> bool:
        """Whether a codebook of the first ``depth`` levels awaits k-means init (same on every rank)."""
        if not self.kmeans_init:
            return False
        flags = torch.stack([self.codebook_for_level(level).initialized for level in range(depth)])
        return not bool(flags.all())

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D) -> :class:`QuantizerOutput`. Distances always in fp32.

        Eval mode: a ValueError for input that is not finite (or too large to search). Training mode: such
        rows get NaN vectors and index -1, the loss is NaN, ``stats["skipped_update"]`` is 1 and the
        codebook update of the step is skipped on every rank (the trainer skips the step for its NaN loss).
        """
        self._check_input(z)
        b, n, _ = z.shape
        out_dtype = z.dtype
        device_type = z.device.type
        z_in = self.project_in(z)
        with torch.autocast(device_type=device_type, enabled=False):
            x = z_in.float().reshape(b * n, self.num_codebooks, self.codebook_dim)  # (M, C, d)
            bad, any_bad = self._unsearchable_rows(x)
            if any_bad and not self.training:
                raise ValueError(self._describe_unsearchable(x))
            if self.normalize:
                x = F.normalize(x, dim=-1)
            # The search and the losses see finite rows only; the output marks the bad ones afterwards.
            clean = x.masked_fill(bad.unsqueeze(-1), 0.0) if any_bad else x
            training = self.training
            depth = self._step_depth() if training else self.num_levels
            if training and self._needs_kmeans_init(depth):
                if self.defer_codebook_updates:
                    if not any_bad:  # initialised when the step is committed, from all its micro-batches
                        self._init_inputs.append(clean.detach())
                elif self._finite_on_every_rank(any_bad):
                    self._init_levels(clean.detach(), depth)
            residual = clean
            cumulative: list[Tensor] = []
            all_idx: list[Tensor] = []
            level_counts: list[Tensor] = []
            commit = x.new_zeros(())
            codebook_loss = x.new_zeros(())
            ent = x.new_zeros(())
            total = torch.zeros_like(clean)
            for level in range(depth):
                book = self.codebook_for_level(level)
                idx = book.search(residual)  # (M, C)
                q = book.lookup(idx)  # (M, C, d)
                commit = commit + _mean_square(residual, q.detach())
                if self.update == "grad":
                    codebook_loss = codebook_loss + _mean_square(q, residual.detach())
                if training and self.entropy_weight > 0 and residual.shape[0] > 0:
                    ent = ent + entropy_loss(self._similarity(residual, book) / self.entropy_temperature)
                if training:
                    level_counts.append(book.count(idx))
                    if not any_bad:
                        book.record(level, residual.detach(), idx, level_counts[-1])
                total = total + q.detach()  # codes learn from their own loss only, as in VQ-VAE
                cumulative.append(total)
                all_idx.append(idx)
                residual = residual - q.detach()
            # EvoTok averages the commitment over all cumulative prefixes: |z - sum_{l<=k} q_l|^2 equals
            # the level-k residual error, so the per-level mean is exactly that average.
            loss = (self.beta * commit + codebook_loss) / depth + self.entropy_weight * ent / depth
            stats: dict[str, Tensor] = {}
            if any_bad:
                loss = loss + float("nan")  # never a finite loss for a step that cannot be kept
                cumulative = [t.masked_fill(bad.unsqueeze(-1), float("nan")) for t in cumulative]
            if training:
                stats.update(self._finish_training_call(level_counts, any_bad))
            indices = torch.stack(all_idx, dim=1)  # (M, depth, C)
            if any_bad:
                indices = indices.masked_fill(bad.unsqueeze(1), -1)
            if depth < self.num_levels:
                pad = indices.new_full((b * n, self.num_levels - depth, self.num_codebooks), -1)
                indices = torch.cat([indices, pad], dim=1)
            stats["commitment"] = (commit / depth).detach()
            if self.update == "grad":
                stats["codebook_loss"] = (codebook_loss / depth).detach()

        inner = self.num_codebooks * self.codebook_dim

        def pass_gradient(q_total: Tensor) -> Tensor:
            if not (torch.is_grad_enabled() and x.requires_grad):
                q_out = q_total  # nothing to pass a gradient to: return the codes exactly
            elif self.use_rotation_trick:
                q_out = rotation_trick(x, q_total)
            else:
                q_out = straight_through(x, q_total)
            return self.project_out(q_out.reshape(b, n, inner).to(z_in.dtype)).to(out_dtype)

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

    def _finish_training_call(self, level_counts: list[Tensor], any_bad: bool) -> dict[str, Tensor]:
        """Statistics of this call, and the codebook update when it is not deferred."""
        self._pending_calls += 1
        self._pending_bad = self._pending_bad or any_bad
        # Always the same keys (ranks average their logs key by key); NaN for a call that cannot count.
        counts = torch.stack(level_counts)  # (levels, C, K) of this call on this rank
        probs = counts / counts.sum(-1, keepdim=True).clamp(min=1)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
        stats = {"usage": (counts > 0).float().mean(-1), "perplexity": entropy.exp()}
        if any_bad:
            stats = {key: torch.full_like(value, float("nan")) for key, value in stats.items()}
        if self.defer_codebook_updates:
            stats["skipped_update"] = torch.tensor(float(any_bad), device=counts.device)
        else:
            applied = self.commit_codebook_updates()
            stats["restarts"] = applied["restarts"]
            stats["skipped_update"] = applied["skipped"]
        return stats

    # -- codebook updates -------------------------------------------------------------------------

    def _finite_on_every_rank(self, any_bad: bool) -> bool:
        flag = torch.tensor([float(any_bad)], device=self.codebooks[0].embed.device)
        return float(all_reduce_sum_(flag, self.sync_distributed)) == 0.0

    @torch.no_grad()
    def _init_levels(self, x: Tensor, depth: int) -> list[tuple[int, Tensor, Tensor]]:
        """K-means-initialise the waiting codebooks of the first ``depth`` levels (collective).

        Level by level, each from the residual the initialised levels before it leave, as a forward pass
        would see it. Returns every level's (level, residual (M, C, d), indices (M, C)).
        """
        residual = x
        levels = []
        for level in range(depth):
            book = self.codebook_for_level(level)
            book.kmeans_initialize(residual)
            idx = book.search(residual)
            levels.append((level, residual, idx))
            residual = residual - book.lookup(idx)
        return levels

    @torch.no_grad()
    def commit_codebook_updates(self) -> dict[str, Tensor]:
        """Apply the codebook statistics recorded since the last commit, summed over ranks.

        Collective: call it on every rank, for the same steps (the trainer calls it after each kept
        optimiser step). The pending statistics of all codebooks travel in one all-reduce (k-means
        initialisation and dead-code restarts add their own, identically on every rank). Nothing is
        applied when some rank recorded a non-finite input or no rank recorded anything.

        Returns:
            ``restarts``: codes restarted; ``skipped``: 1.0 when nothing was applied.
        """
        books = list(self.codebooks)
        device = books[0].embed.device
        with torch.autocast(device_type=device.type, enabled=False):
            depth = self._step_depth()
            if self._needs_kmeans_init(depth):
                header = torch.tensor([float(self._pending_bad), float(self._pending_calls)], device=device)
                all_reduce_sum_(header, self.sync_distributed)
                bad, calls = header.tolist()
                if bad > 0 or calls == 0:
                    return self._skip_commit()
                # Initialise from every micro-batch of the step, then redo the step's statistics with the
                # new codes: the same state as when the codes had been initialised before the step.
                x = (
                    torch.cat(self._init_inputs)
                    if self._init_inputs
                    else torch.zeros(0, self.num_codebooks, self.codebook_dim, device=device)
                )
                for book in books:
                    book.discard_pending()
                for level, residual, idx in self._init_levels(x, depth):
                    self.codebook_for_level(level).record(level, residual, idx)
            world, rank = world_and_rank(self.sync_distributed)
            rows = torch.zeros(len(books), world, 2, device=device)
            for i, book in enumerate(books):
                rows[i, rank, 0], rows[i, rank, 1] = divmod(book.pending_rows, _ROW_SPLIT)
            header = torch.tensor([float(self._pending_bad), float(self._pending_calls)], device=device)
            payloads = [book.pending_payload(device) for book in books]
            packed = torch.cat([header.double(), rows.reshape(-1).double(), *payloads])
            all_reduce_sum_(packed, self.sync_distributed)
            bad, calls = packed[:2].tolist()
            if bad > 0 or calls == 0:
                return self._skip_commit()
            split = packed[2 : 2 + rows.numel()].view_as(rows).round().long().cpu()
            per_rank = (split[..., 0] * _ROW_SPLIT + split[..., 1]).tolist()  # (books, world) exact ints
            start, restarts, applied = 2 + rows.numel(), 0, False
            for book, counts in zip(books, per_rank):
                payload = packed[start : start + book.payload_size()]
                start += book.payload_size()
                if sum(counts) == 0:  # not reached this step (quantize-dropout) or empty everywhere
                    book.discard_pending()
                    continue
                restarts += book.apply_pending(payload, (sum(counts[:rank]), sum(counts)))
                applied = True
            self._reset_pending()
            if applied:
                self._dropout_steps += 1
        return {
            "restarts": torch.tensor(float(restarts), device=device),
            "skipped": torch.tensor(0.0 if applied else 1.0, device=device),
        }

    def discard_codebook_updates(self) -> None:
        """Forget the statistics recorded since the last commit (a skipped step); no collective."""
        for book in self.codebooks:
            book.discard_pending()
        self._reset_pending()

    def _skip_commit(self) -> dict[str, Tensor]:
        self.discard_codebook_updates()
        device = self.codebooks[0].embed.device
        return {"restarts": torch.tensor(0.0, device=device), "skipped": torch.tensor(1.0, device=device)}

    def _reset_pending(self) -> None:
        self._pending_calls = 0
        self._pending_bad = False
        self._init_inputs = []

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
