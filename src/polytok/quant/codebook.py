"""A group of codebooks and everything that keeps them healthy.

``Codebook`` holds G independent codebooks of K codes of d dims (G = 1 for plain VQ, G = C for
multi-codebook quantization) and owns: the nearest-code search, code lookup, learning by gradient or by
EMA k-means, k-means initialisation from the first batch, dead-code restart and usage statistics. All
statistics are per-code counts built with ``index_add_`` (never a one-hot matrix) and are summed over
ranks when distributed, so every rank keeps an identical codebook. Training statistics are recorded
first and applied (or discarded) later, once per optimiser step; see ``polytok.quant.updates``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.quant.distributed import all_reduce_sum_, global_row_offsets, sample_global_rows
from polytok.quant.search import nearest_codes

UpdateMode = Literal["grad", "ema"]
EmaWarmup = Literal["frozen", "counts_only"]


@dataclass
class _Pending:
    """What one rank recorded for one codebook since its last update."""

    counts: Tensor  # (G, K) float32
    sums: Tensor | None  # (G * K, d) float64 (see _local_sums), EMA codebooks only
    rows: dict[int, list[Tensor]] = field(default_factory=dict)  # source -> (M_i, G, d) restart candidates
    num_rows: int = 0

    @staticmethod
    def empty(book: Codebook, device: torch.device) -> _Pending:
        g, k, d = book.groups, book.codebook_size, book.dim
        ema = book.update_mode == "ema"
        sums = torch.zeros(g * k, d, dtype=torch.float64, device=device) if ema else None
        return _Pending(torch.zeros(g, k, device=device), sums)


class Codebook(nn.Module):
    """G codebooks of ``codebook_size`` codes of ``dim`` dims.

    Args:
        groups: number of independent codebooks G.
        codebook_size: codes per codebook K.
        dim: code dimension d.
        normalize: cosine codes (codes and matched vectors are L2-normalised).
        update: "grad" (codes are a Parameter trained by the codebook loss) or "ema" (EMA k-means; codes
            are a buffer).
        decay: EMA decay for the k-means statistics and the usage counters.
        eps: Laplace smoothing of the EMA cluster sizes.
        ema_warmup_steps: applied updates (optimiser steps under the Trainer) before the EMA vector sums
            start to move; what happens until then is ``ema_warmup``.
        ema_warmup: "frozen": codes and EMA statistics stay as initialised during the warm-up (the encoder
            adapts under the commitment loss alone) and the statistics restart from the codes when it
            ends. "counts_only" (EvoTok): the cluster sizes are averaged from the first step while the
            vector sums are held, and the codes are recomputed every step as sum / cluster size, so a
            code assigned more than about once per step shrinks toward the origin; nothing restarts when
            the warm-up ends.
        ema_min_cluster_size: normalised EMA cluster sizes below this count as this (EvoTok: 1, so a
            rarely used code is never divided by a near-zero count); 0 leaves them as smoothed.
        kmeans_init: initialise from the first training batch with k-means (``kmeans_iters`` Lloyd steps).
        dead_code_threshold: a code whose (bias-corrected) EMA assignment count per step falls below this
            is restarted from a random input vector of the current step (0 disables restarts). The step's
            matched vectors are then held until the update is applied.
        init_std: standard deviation of the random initial codes (before normalisation if cosine).
        projected: SimVQ (Zhu et al. 2024) codes: ``embed`` is a frozen random basis (a buffer) and the
            codes are its image under a learned per-group affine map, code_k = W embed_k + b (W: (d, d),
            initialised like ``nn.Linear``). The codebook loss then trains W and b, which move every code
            at once, so no code is left behind unused. Needs ``update="grad"``; k-means init and dead-code
            restarts (which write codes directly) are not available. SimVQ draws the basis with
            std d^-0.5 (``init_std``).
        sync_distributed: sum statistics over ranks when torch.distributed is initialised.
        seed: seed of the generator that draws restart / k-means samples identically on every rank.
    """

    def __init__(
        self,
        groups: int,
        codebook_size: int,
        dim: int,
        *,
        normalize: bool = False,
        update: UpdateMode = "grad",
        decay: float = 0.99,
        eps: float = 1e-5,
        ema_warmup_steps: int = 0,
        ema_warmup: EmaWarmup = "frozen",
        ema_min_cluster_size: float = 0.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        init_std: float = 1.0,
        sync_distributed: bool = True,
        seed: int = 0,
        projected: bool = False,
    ) -> None:
        super().__init__()
        if projected and (update != "grad" or kmeans_init or dead_code_threshold > 0):
            raise ValueError(
                "projected (SimVQ) codes are learned through their linear map: they need update='grad' "
                "and support neither kmeans_init nor dead_code_threshold"
            )
        if update not in ("grad", "ema"):
            raise ValueError(f"update must be 'grad' or 'ema', got {update!r}")
        if ema_warmup not in ("frozen", "counts_only"):
            raise ValueError(f"ema_warmup must be 'frozen' or 'counts_only', got {ema_warmup!r}")
        if not ema_min_cluster_size >= 0.0:
            raise ValueError(f"ema_min_cluster_size must be >= 0, got {ema_min_cluster_size}")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        if groups < 1 or codebook_size < 1 or dim < 1:
            raise ValueError(
                f"groups, codebook_size and dim must be positive, got {groups}, {codebook_size}, {dim}"
            )
        self.groups, self.codebook_size, self.dim = groups, codebook_size, dim
        self.normalize, self.update_mode = normalize, update
        self.decay, self.eps = decay, eps
        self.ema_warmup_steps, self.kmeans_iters = ema_warmup_steps, kmeans_iters
        self.ema_warmup, self.ema_min_cluster_size = ema_warmup, ema_min_cluster_size
        self.kmeans_init, self.dead_code_threshold = kmeans_init, dead_code_threshold
        self.sync_distributed, self.seed = sync_distributed, seed
        self.projected = projected

        init = torch.randn(groups, codebook_size, dim) * init_std
        if normalize and not projected:
            init = F.normalize(init, dim=-1)
        if projected:
            self.register_buffer("embed", init)  # the frozen basis
            bound = 1 / math.sqrt(dim)  # nn.Linear's default initialisation, per group
            self.proj_weight = nn.Parameter(torch.empty(groups, dim, dim).uniform_(-bound, bound))
            self.proj_bias = nn.Parameter(torch.empty(groups, dim).uniform_(-bound, bound))
        elif update == "grad":
            self.embed = nn.Parameter(init)
        else:
            self.register_buffer("embed", init)
            # cluster_size = 1 and embed_sum = embed keep embed == embed_sum / cluster_size from the start,
            # so an unused code stays where it is instead of being divided by a near-zero count.
            self.register_buffer("cluster_size", torch.ones(groups, codebook_size))
            self.register_buffer("embed_sum", init.clone())
        self.register_buffer("usage_ema", torch.zeros(groups, codebook_size))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # Statistics recorded since the last update: a plain attribute, so never saved, loaded or
        # broadcast with the buffers (DDP broadcasts buffers at every forward).
        self._pending: _Pending | None = None

    # -- lookup and search ------------------------------------------------------------------------

    def codes(self) -> Tensor:
        """(G, K, d) current codes (unit-norm when cosine; the projected basis when ``projected``)."""
        embed = self._embed_full()
        if self.projected:
            embed = torch.baddbmm(self.proj_bias.unsqueeze(1), embed, self.proj_weight.transpose(1, 2))
        return F.normalize(embed, dim=-1) if self.normalize else embed

    def _embed_full(self) -> Tensor:
        """``embed`` as one tensor. FSDP keeps a "grad" codebook sharded outside forward (when updates are
        applied): then every rank gathers it (collective; every rank applies the same updates)."""
        return self.embed.full_tensor() if hasattr(self.embed, "full_tensor") else self.embed

    def _set_codes(self, new: Tensor) -> None:
        """Write (G, K, d) codes, identical on every rank, into ``embed`` (each rank its shard under FSDP)."""
        target = self.embed.data
        if hasattr(target, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            new = distribute_tensor(new.to(target.device), target.device_mesh, target.placements)
        target.copy_(new)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for indices ``(..., G)`` -> ``(..., G, d)``; differentiable w.r.t. the codes."""
        offsets = torch.arange(self.groups, device=indices.device) * self.codebook_size
        flat = self.codes().reshape(self.groups * self.codebook_size, self.dim)
        return F.embedding(indices + offsets, flat)

    def search(self, x: Tensor) -> Tensor:
        """Nearest codes of ``x`` (M, G, d) -> (M, G) int64 (fp32 search)."""
        idx = nearest_codes(x.transpose(0, 1), self.codes().detach(), cosine=self.normalize)
        return idx.transpose(0, 1)

    # -- training-time updates --------------------------------------------------------------------
    #
    # A training step first *records* what this rank matched (``record``: counts, EMA sums and, for
    # dead-code restarts, the matched vectors; no collective), possibly over several micro-batches, then
    # the owning quantizer either *applies* the rank-summed statistics (``apply_pending``) or throws them
    # away (``discard_pending``). Nothing in the state dict changes until then.

    def _generator(self, salt: int) -> torch.Generator:
        # Same seed on every rank (steps is identical everywhere), different for each step and purpose.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps) * 7_919 + salt)

    def _flat_indices(self, indices: Tensor) -> Tensor:
        """(M, G) indices -> (M * G,) rows of the (G * K) stacked codebooks."""
        return (indices + torch.arange(self.groups, device=indices.device) * self.codebook_size).reshape(-1)

    @torch.no_grad()
    def count(self, indices: Tensor) -> Tensor:
        """(G, K) float32 assignment counts of ``indices`` (M, G) on this rank.

        ``index_add_`` rather than ``bincount``: an index out of range is an error, never an allocation
        sized by the index.
        """
        flat = self._flat_indices(indices)
        counts = torch.zeros(self.groups * self.codebook_size, device=indices.device)
        counts.index_add_(0, flat, torch.ones(flat.shape, device=indices.device))
        return counts.view(self.groups, self.codebook_size)

    def _local_sums(self, x: Tensor, indices: Tensor) -> Tensor:
        """(G * K, d) float64 sums of the vectors ``x`` (M, G, d) assigned ``indices`` (M, G).

        float64 holds a sum of float32 vectors exactly unless their magnitudes span about 2^25, so the
        statistics do not depend on the order of the rows: one batch, its micro-batches and its ranks'
        shares give the same codebooks on any machine."""
        sums = torch.zeros(self.groups * self.codebook_size, self.dim, dtype=torch.float64, device=x.device)
        return sums.index_add_(0, self._flat_indices(indices), x.reshape(-1, self.dim).double())

    def _global_counts_and_sums(self, x: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        """Per-code counts (G, K) and vector sums (G, K, d) summed over ranks (one collective)."""
        g, k, d = self.groups, self.codebook_size, self.dim
        counts = self.count(indices).view(g * k, 1).double()
        packed = torch.cat([counts, self._local_sums(x, indices)], dim=-1)
        all_reduce_sum_(packed, self.sync_distributed)
        return packed[:, 0].reshape(g, k), packed[:, 1:].reshape(g, k, d)

    @torch.no_grad()
    def kmeans_initialize(self, x: Tensor) -> None:
        """K-means initialisation from ``x`` (M, G, d), the rows of every rank (collective).

        A no-op once initialised, and while the batch of all ranks is empty.
        """
        if bool(self.initialized):
            return
        data = x.detach().float().transpose(0, 1)  # (G, M, d)
        if self.normalize:
            data = F.normalize(data, dim=-1)
        offsets = global_row_offsets(data.shape[1], data.device, self.sync_distributed)
        if offsets[1] == 0:
            return
        centroids = sample_global_rows(
            data, self.codebook_size, self._generator(1), self.sync_distributed, offsets=offsets
        )
        for _ in range(self.kmeans_iters):
            assign = nearest_codes(data, centroids, cosine=self.normalize)
            counts, sums = self._global_counts_and_sums(data.transpose(0, 1), assign.transpose(0, 1))
            means = (sums / counts.clamp(min=1).unsqueeze(-1)).float()
            if self.normalize:
                means = F.normalize(means, dim=-1)
            centroids = torch.where((counts > 0).unsqueeze(-1), means, centroids)
        self._set_codes(centroids)
        if self.update_mode == "ema":
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(centroids)
        self.initialized.fill_(True)

    @torch.no_grad()
    def record(self, source: int, x: Tensor, indices: Tensor, counts: Tensor | None = None) -> None:
        """Add vectors this codebook matched to the pending statistics of this rank (no collective).

        Args:
            source: which use of the codebook the rows come from (the residual level). Restart candidates
                are ordered by source, then by call, so k calls equal one call on their concatenation.
            x: (M, G, d) matched vectors (normalised if cosine).
            indices: (M, G) chosen codes.
            counts: ``count(indices)`` when the caller has it already.
        """
        if self._pending is None:
            self._pending = _Pending.empty(self, x.device)
        pending = self._pending
        pending.counts += self.count(indices) if counts is None else counts
        if pending.sums is not None:
            pending.sums.index_add_(0, self._flat_indices(indices), x.reshape(-1, self.dim).double())
        if self.dead_code_threshold > 0:
            pending.rows.setdefault(source, []).append(x.detach().float())
        pending.num_rows += x.shape[0]

    @property
    def pending_rows(self) -> int:
        """Rows recorded on this rank since the last apply / discard."""
        return 0 if self._pending is None else self._pending.num_rows

    def payload_size(self) -> int:
        g, k, d = self.groups, self.codebook_size, self.dim
        return g * k * (1 + d if self.update_mode == "ema" else 1)

    def pending_payload(self, device: torch.device) -> Tensor:
        """Pending statistics of this rank, flat float64 [counts (G*K), EMA sums (G*K*d)]."""
        if self._pending is None:
            return torch.zeros(self.payload_size(), dtype=torch.float64, device=device)
        parts = [self._pending.counts.reshape(-1).double()]
        if self._pending.sums is not None:
            parts.append(self._pending.sums.reshape(-1))
        return torch.cat(parts)

    def discard_pending(self) -> None:
        self._pending = None

    @torch.no_grad()
    def apply_pending(self, payload: Tensor, offsets: tuple[int, int]) -> int:
        """One training-step update from ``payload`` (``pending_payload`` summed over ranks).

        Moves the usage counters, takes the EMA k-means step (after the warm-up), restarts dead codes
        from the recorded vectors and advances ``steps``. Collective when codes are restarted.

        Args:
            payload: flat statistics of every rank, laid out as ``pending_payload``.
            offsets: (offset of this rank's recorded rows in the rank-ordered global batch, total rows).
        Returns:
            The number of restarted codes.
        """
        g, k, d = self.groups, self.codebook_size, self.dim
        dtype = torch.promote_types(torch.float32, self.usage_ema.dtype)  # float64 if cast to it
        counts = payload[: g * k].view(g, k).to(dtype)  # integers: exact in float32 below 2^24 per code
        self.usage_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.update_mode == "ema":
            warming_up = int(self.steps) < self.ema_warmup_steps
            if not warming_up:
                self._ema_step(counts, payload[g * k :].view(g, k, d).to(dtype))
            elif self.ema_warmup == "counts_only":
                self._ema_step(counts, None)
        restarts = self._restart_dead_codes(offsets)
        self.steps += 1
        self._pending = None
        return restarts

    def _ema_step(self, counts: Tensor, sums: Tensor | None) -> None:
        """EMA k-means step from this step's (G, K) counts and (G, K, d) sums; ``sums`` None holds the
        vector sums (a "counts_only" warm-up)."""
        d = self.decay
        frozen_warmup_ends = self.ema_warmup == "frozen" and int(self.steps) == self.ema_warmup_steps
        if frozen_warmup_ends and self.ema_warmup_steps > 0:
            # EMA starts now: restart the statistics from the codes as they are.
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(self.embed)
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        if sums is not None:
            self.embed_sum.mul_(d).add_(sums, alpha=1 - d)
        total = self.cluster_size.sum(-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        if self.ema_min_cluster_size > 0:
            smoothed = smoothed.clamp(min=self.ema_min_cluster_size)
        new = self.embed_sum / smoothed.unsqueeze(-1)
        self.embed.copy_(F.normalize(new, dim=-1) if self.normalize else new)

    def _restart_dead_codes(self, offsets: tuple[int, int]) -> int:
        if self.dead_code_threshold <= 0:
            return 0
        # Bias-corrected like Adam's moments: the counter starts at 0, and without the correction every
        # code would look dead during the first ~1 / (1 - decay) steps. `steps` is not yet incremented.
        correction = 1.0 - self.decay ** (int(self.steps) + 1)
        dead = self.usage_ema < self.dead_code_threshold * correction  # same on all ranks: synced counts
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        per_group = int(dead.sum(-1).max())
        x = self._pending_rows_tensor()
        samples = sample_global_rows(
            x.transpose(0, 1), per_group, self._generator(2), self.sync_distributed, offsets=offsets
        )
        if self.normalize:
            samples = F.normalize(samples, dim=-1)
        # The j-th dead code of group g takes the j-th sample of group g.
        rank_in_group = dead.long().cumsum(-1) - 1
        picked = torch.gather(samples, 1, rank_in_group.clamp(min=0).unsqueeze(-1).expand(-1, -1, self.dim))
        self._set_codes(torch.where(dead.unsqueeze(-1), picked, self._embed_full().detach()))
        if self.update_mode == "ema":
            self.cluster_size.masked_fill_(dead, 1.0)
            self.embed_sum.copy_(torch.where(dead.unsqueeze(-1), picked, self.embed_sum))
        # A restarted code starts at the threshold: if no input picks it next step it is restarted again.
        self.usage_ema.masked_fill_(dead, self.dead_code_threshold * correction)
        return n_dead

    def _pending_rows_tensor(self) -> Tensor:
        """(M, G, d) recorded vectors of this rank, by source then call (empty when none)."""
        rows = self._pending.rows if self._pending is not None else {}
        parts = [t for source in sorted(rows) for t in rows[source]]
        if not parts:
            return torch.zeros(0, self.groups, self.dim, device=self.embed.device)
        return torch.cat(parts, 0)

    # -- statistics -------------------------------------------------------------------------------

    @torch.no_grad()
    def usage(self) -> dict[str, Tensor]:
        """Usage from the EMA counters, per group (G,).

        ``usage`` is the fraction of codes assigned at least once in about the last 1 / (1 - decay)
        training steps; ``perplexity`` is exp(entropy) of the EMA assignment distribution.
        """
        active = self.usage_ema > (1 - self.decay) * math.exp(-1)
        probs = self.usage_ema / self.usage_ema.sum(-1, keepdim=True).clamp(min=1e-12)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
        return {"usage": active.float().mean(-1), "perplexity": entropy.exp()}
