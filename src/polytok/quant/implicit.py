"""The shared machinery of quantizers whose codebook is implicit (FSQ, LFQ, BSQ): no learned codes.

Their code is a fixed function of the input (rounding, signs), so the module owns no codebook; what it
does own is the usage statistics that tell whether all codes are used, and the interface of the other
quantizers: ``forward(z) -> QuantizerOutput``, ``indices_to_codes``, ``codebook_usage``, deferred and
rank-synchronised statistics (``defer_codebook_updates`` / ``commit_codebook_updates`` /
``discard_codebook_updates``, see :mod:`polytok.quant.updates`), and the bad-input contract (eval: one
ValueError; training: a reported skip that changes no buffer).

The codes of one position are split into G groups of K codes each (FSQ: one group of prod(levels)
codes; LFQ / BSQ: G groups of 2^g codes), and usage is counted per group, so a 36-bit LFQ counts two
tables of 2^18 (or smaller) entries, never one of 2^36.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from polytok.quant.core import QuantizerOutput, check_index_dtype, check_index_range, check_latent
from polytok.quant.distributed import all_reduce_sum_, is_distributed

_FP32_MAX = torch.finfo(torch.float32).max


class ImplicitQuantizer(nn.Module):
    """Base of the quantizers without learned codes. Use the public subclasses.

    Subclasses implement ``_quantize`` (the codes of clean float32 rows) and ``_codes_from_indices``.

    Args:
        dim: D, the channel dim of the input (B, N, D).
        groups: G, the groups whose usage is counted separately.
        group_codes: K, the codes of one group.
        decay: EMA decay of the usage counters.
        sync_distributed: sum usage counts over ranks when torch.distributed is initialised.
    """

    def __init__(
        self, dim: int, groups: int, group_codes: int, *, decay: float = 0.99, sync_distributed: bool = True
    ) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.dim, self.groups, self.group_codes = dim, groups, group_codes
        self.decay, self.sync_distributed = decay, sync_distributed
        self.register_buffer("usage_ema", torch.zeros(groups, group_codes))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # Inputs up to this magnitude keep every fp32 square and sum of the losses finite.
        self.magnitude_limit = math.sqrt(_FP32_MAX / (8 * dim))
        self.defer_codebook_updates = False
        self._reset_pending()

    # -- to implement -----------------------------------------------------------------------------

    def _quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Quantize clean rows ``x`` (M, D) float32.

        Returns:
            q: (M, D) codes carrying the gradient to ``x`` (whatever estimator the family uses), or None
                when no gradient is asked for (``_wants_grad``).
            codes: (M, D) the same codes without a graph (what ``indices_to_codes`` returns).
            indices: (M,) int64 public index of each row.
            group_indices: (M, G) int64 index of each row within each group (for the usage counts).
            loss: scalar loss, already weighted (0 for a family without one).
            stats: detached scalar loss terms, unweighted.
        """
        raise NotImplementedError

    @staticmethod
    def _wants_grad(x: Tensor) -> bool:
        """Whether the output must carry a gradient to ``x`` (else the codes are returned as they are)."""
        return torch.is_grad_enabled() and x.requires_grad

    def _codes_from_indices(self, indices: Tensor) -> Tensor:
        """(...,) int64 indices in range -> (..., D) float32 codes, bit-identical to ``_quantize``."""
        raise NotImplementedError

    @property
    def codebook_size(self) -> int:
        raise NotImplementedError

    # -- input checks -----------------------------------------------------------------------------

    def _check_input(self, z: Tensor) -> None:
        check_latent(z, self.dim)

    def _bad_rows(self, x: Tensor) -> tuple[Tensor | None, bool]:
        """(M,) rows holding NaN, Inf or values beyond ``magnitude_limit`` (None when there is none), and
        whether there is any. A clean batch costs one reduction and one host sync."""
        x = x.detach()
        if not x.numel() or bool(x.abs().amax() <= self.magnitude_limit):  # NaN compares False
            return None, False
        return ~(torch.linalg.vector_norm(x, float("inf"), dim=-1) <= self.magnitude_limit), True

    def _describe_bad(self, x: Tensor) -> str:
        x = x.detach()
        if not torch.isfinite(x).all():
            return "quantizer input contains NaN or Inf values"
        return (
            f"quantizer input has values up to {float(x.abs().max()):.3g} in magnitude; beyond "
            f"{self.magnitude_limit:.3g} fp32 losses overflow"
        )

    def _check_indices(self, indices: Tensor) -> Tensor:
        check_index_dtype(indices)
        indices = indices.long()
        check_index_range(indices, self.codebook_size)
        return indices

    # -- forward ----------------------------------------------------------------------------------

    def _project_in(self, z: Tensor) -> Tensor:
        return z

    def _project_out(self, q: Tensor) -> Tensor:
        return q

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize ``z`` (B, N, D) -> :class:`QuantizerOutput` with indices (B, N). Codes in fp32.

        Eval mode: a ValueError for input that is not finite (or beyond ``magnitude_limit``). Training
        mode: such rows get NaN vectors and index -1, the loss is NaN, ``stats["skipped_update"]`` is 1 and
        no statistic is recorded on any rank.
        """
        self._check_input(z)
        b, n, _ = z.shape
        out_dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            x = self._project_in(z).float()
            x = x.reshape(b * n, x.shape[-1])
            bad, any_bad = self._bad_rows(x)
            if any_bad and not self.training:
                raise ValueError(self._describe_bad(x))
            clean = x.masked_fill(bad.unsqueeze(-1), 0.0) if bad is not None else x
            q, codes, indices, group_indices, loss, stats = self._quantize(clean)
            if bad is not None:
                loss = loss + float("nan")  # never a finite loss for a step that cannot be kept
                nan_rows = bad.unsqueeze(-1)
                codes = codes.masked_fill(nan_rows, float("nan"))
                q = q.masked_fill(nan_rows, float("nan")) if q is not None else None
                indices = indices.masked_fill(bad, -1)
            if self.training:
                stats.update(self._finish_training_call(self._count(group_indices), any_bad, b * n))
            # Without a graph the output is the codes themselves (bit-identical to indices_to_codes).
            out = q if q is not None else codes
        quantized = self._project_out(out.reshape(b, n, out.shape[-1])).to(out_dtype)
        return QuantizerOutput(quantized=quantized, indices=indices.view(b, n), loss=loss, stats=stats)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Vectors from indices: (B, N) -> (B, N, D) (any leading shape). In eval mode this reproduces
        ``forward(z).quantized`` exactly."""
        codes = self._codes_from_indices(self._check_indices(indices))
        return self._project_out(codes)

    # -- usage statistics -------------------------------------------------------------------------

    @torch.no_grad()
    def _count(self, group_indices: Tensor) -> Tensor:
        """(G, K) float32 counts of ``group_indices`` (M, G); ``index_add_``, never a one-hot."""
        g, k = self.groups, self.group_codes
        flat = group_indices.reshape(-1)
        if g > 1:
            flat = (group_indices + torch.arange(g, device=group_indices.device) * k).reshape(-1)
        counts = torch.zeros(g * k, device=group_indices.device)
        counts.index_add_(0, flat, torch.ones(flat.shape, device=group_indices.device))
        return counts.view(g, k)

    def _finish_training_call(self, counts: Tensor, any_bad: bool, rows: int) -> dict[str, Tensor]:
        """Statistics of this call (this rank), and the usage update unless deferred."""
        self._pending_calls += 1
        self._pending_bad = self._pending_bad or any_bad
        if not any_bad:
            self._pending_counts = counts if self._pending_counts is None else self._pending_counts + counts
            self._pending_rows += rows
        probs = counts / max(rows, 1)  # every group counts each of the call's rows once
        entropy = torch.special.entr(probs).sum(-1)
        stats = {"usage": counts.count_nonzero(-1) / self.group_codes, "perplexity": entropy.exp()}
        if any_bad:
            stats = {key: torch.full_like(value, float("nan")) for key, value in stats.items()}
        if self.defer_codebook_updates:
            stats["skipped_update"] = torch.tensor(float(any_bad or rows == 0), device=counts.device)
        else:
            stats["skipped_update"] = self.commit_codebook_updates()["skipped"]
        return stats

    @torch.no_grad()
    def commit_codebook_updates(self) -> dict[str, Tensor]:
        """Fold the usage counts recorded since the last commit, summed over ranks, into ``usage_ema``.

        Collective (one all-reduce): call it on every rank for the same steps. Nothing changes when some
        rank recorded a bad input or no rank recorded a row. Returns ``restarts`` (always 0: no codes to
        restart) and ``skipped`` (1.0 when nothing was applied).
        """
        device = self.usage_ema.device
        counts = self._pending_counts
        if counts is None:
            counts = torch.zeros(self.groups, self.group_codes, device=device)
        if is_distributed(self.sync_distributed):
            header = torch.tensor([float(self._pending_bad), float(self._pending_rows)], device=device)
            packed = torch.cat([header.double(), counts.reshape(-1).double()])
            all_reduce_sum_(packed, self.sync_distributed)
            bad, rows = packed[:2].tolist()
            counts = packed[2:].view(self.groups, self.group_codes)
        else:  # one process: nothing to sum, no host round trip
            bad, rows = float(self._pending_bad), float(self._pending_rows)
        skipped = bad > 0 or rows == 0
        if not skipped:
            self.usage_ema.lerp_(counts.to(self.usage_ema.dtype), 1 - self.decay)
            self.steps += 1
        self._reset_pending()
        return {
            "restarts": torch.tensor(0.0, device=device),
            "skipped": torch.tensor(float(skipped), device=device),
        }

    def discard_codebook_updates(self) -> None:
        """Forget the counts recorded since the last commit (a skipped step); no collective."""
        self._reset_pending()

    def _reset_pending(self) -> None:
        self._pending_counts: Tensor | None = None
        self._pending_rows = 0
        self._pending_calls = 0
        self._pending_bad = False

    @torch.no_grad()
    def codebook_usage(self) -> dict[str, Tensor]:
        """EMA usage per group, each (G,): ``usage`` (fraction of the group's codes used in about the last
        1 / (1 - decay) steps) and ``perplexity`` (exp of the entropy of the EMA counts)."""
        active = self.usage_ema > (1 - self.decay) * math.exp(-1)
        probs = self.usage_ema / self.usage_ema.sum(-1, keepdim=True).clamp(min=1e-12)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
        return {"usage": active.float().mean(-1), "perplexity": entropy.exp()}
