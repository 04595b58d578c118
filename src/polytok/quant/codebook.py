"""A group of codebooks and everything that keeps them healthy.

``Codebook`` holds G independent codebooks of K codes of d dims (G = 1 for plain VQ, G = C for
multi-codebook quantization) and owns: the nearest-code search, code lookup, learning by gradient or by
EMA k-means, k-means initialisation from the first batch, dead-code restart and usage statistics. All
statistics are per-code counts built with ``bincount``/``index_add_`` (never a one-hot matrix) and are
summed over ranks when distributed, so every rank keeps an identical codebook.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.quant.distributed import all_reduce_sum_, sample_global_rows
from polytok.quant.search import nearest_codes

UpdateMode = Literal["grad", "ema"]


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
        ema_warmup_steps: training steps before EMA updates start; until then the codes stay as
            initialised while the encoder adapts (commitment loss only).
        kmeans_init: initialise from the first training batch with k-means (``kmeans_iters`` Lloyd steps).
        dead_code_threshold: a code whose (bias-corrected) EMA assignment count per step falls below this
            is restarted from a random input vector of the current batch (0 disables restarts).
        init_std: standard deviation of the random initial codes (before normalisation if cosine).
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
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.0,
        init_std: float = 1.0,
        sync_distributed: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if update not in ("grad", "ema"):
            raise ValueError(f"update must be 'grad' or 'ema', got {update!r}")
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
        self.kmeans_init, self.dead_code_threshold = kmeans_init, dead_code_threshold
        self.sync_distributed, self.seed = sync_distributed, seed

        init = torch.randn(groups, codebook_size, dim) * init_std
        if normalize:
            init = F.normalize(init, dim=-1)
        if update == "grad":
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

    # -- lookup and search ------------------------------------------------------------------------

    def codes(self) -> Tensor:
        """(G, K, d) current codes (unit-norm when cosine)."""
        return F.normalize(self.embed, dim=-1) if self.normalize else self.embed

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

    def _generator(self, salt: int) -> torch.Generator:
        # Same seed on every rank (steps is identical everywhere), different for each step and purpose.
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps) * 7_919 + salt)

    @torch.no_grad()
    def maybe_kmeans_init(self, x: Tensor) -> None:
        """K-means initialisation from the first training batch ``x`` (M, G, d), synced over ranks."""
        if bool(self.initialized):
            return
        data = x.detach().float().transpose(0, 1)  # (G, M, d)
        if self.normalize:
            data = F.normalize(data, dim=-1)
        centroids = sample_global_rows(data, self.codebook_size, self._generator(1), self.sync_distributed)
        for _ in range(self.kmeans_iters):
            assign = nearest_codes(data, centroids, cosine=self.normalize)
            counts, sums = self._counts_and_sums(data.transpose(0, 1), assign.transpose(0, 1))
            filled = counts > 0
            means = sums / counts.clamp(min=1).unsqueeze(-1)
            if self.normalize:
                means = F.normalize(means, dim=-1)
            centroids = torch.where(filled.unsqueeze(-1), means, centroids)
        self.embed.data.copy_(centroids)
        if self.update_mode == "ema":
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(centroids)
        self.initialized.fill_(True)

    def _counts_and_sums(
        self, x: Tensor, indices: Tensor, with_sums: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Global per-code counts (G, K) and vector sums (G, K, d) of ``x`` (M, G, d) assigned ``indices``."""
        g, k, d = self.groups, self.codebook_size, self.dim
        flat = (indices + torch.arange(g, device=indices.device) * k).reshape(-1)
        counts = torch.bincount(flat, minlength=g * k).float().view(g, k)
        sums = None
        if with_sums:
            sums = torch.zeros(g * k, d, device=x.device).index_add_(0, flat, x.reshape(-1, d).float())
            sums = sums.view(g, k, d)
            # One collective for both: fewer round trips, and every rank always makes the same calls.
            packed = torch.cat([counts.unsqueeze(-1), sums], dim=-1)
            all_reduce_sum_(packed, self.sync_distributed)
            counts, sums = packed[..., 0].contiguous(), packed[..., 1:].contiguous()
        else:
            all_reduce_sum_(counts, self.sync_distributed)
        return counts, sums

    @torch.no_grad()
    def update(self, inputs: list[Tensor], indices: list[Tensor]) -> dict[str, Tensor]:
        """One training-step update from the vectors this codebook quantized.

        Args:
            inputs: list of (M_i, G, d) vectors that were matched (normalised if cosine); several entries
                when one codebook serves several residual levels.
            indices: list of (M_i, G) chosen indices.
        Returns:
            Detached statistics of this step: ``usage`` and ``perplexity`` (G,), ``restarts`` (scalar).
        """
        x = torch.cat([t.detach().float() for t in inputs], 0)
        idx = torch.cat(indices, 0)
        ema = self.update_mode == "ema"
        counts, sums = self._counts_and_sums(x, idx, with_sums=ema)
        self.usage_ema.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if ema and int(self.steps) >= self.ema_warmup_steps:
            self._ema_step(counts, sums)
        restarts = self._restart_dead_codes(x)
        self.steps += 1
        probs = counts / counts.sum(-1, keepdim=True).clamp(min=1)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(-1)
        return {
            "usage": (counts > 0).float().mean(-1),
            "perplexity": entropy.exp(),
            "restarts": restarts,
        }

    def _ema_step(self, counts: Tensor, sums: Tensor) -> None:
        d = self.decay
        if int(self.steps) == self.ema_warmup_steps and self.ema_warmup_steps > 0:
            # EMA starts now: restart the statistics from the codes as they are.
            self.cluster_size.fill_(1.0)
            self.embed_sum.copy_(self.embed)
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embed_sum.mul_(d).add_(sums, alpha=1 - d)
        total = self.cluster_size.sum(-1, keepdim=True)
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        new = self.embed_sum / smoothed.unsqueeze(-1)
        self.embed.copy_(F.normalize(new, dim=-1) if self.normalize else new)

    def _restart_dead_codes(self, x: Tensor) -> Tensor:
        if self.dead_code_threshold <= 0:
            return torch.zeros((), device=x.device)
        # Bias-corrected like Adam's moments: the counter starts at 0, and without the correction every
        # code would look dead during the first ~1 / (1 - decay) steps. `steps` is not yet incremented.
        correction = 1.0 - self.decay ** (int(self.steps) + 1)
        dead = self.usage_ema < self.dead_code_threshold * correction  # same on all ranks: synced counts
        n_dead = int(dead.sum())
        if n_dead == 0:
            return torch.zeros((), device=x.device)
        per_group = int(dead.sum(-1).max())
        samples = sample_global_rows(x.transpose(0, 1), per_group, self._generator(2), self.sync_distributed)
        if self.normalize:
            samples = F.normalize(samples, dim=-1)
        # The j-th dead code of group g takes the j-th sample of group g.
        rank_in_group = dead.long().cumsum(-1) - 1
        picked = torch.gather(samples, 1, rank_in_group.clamp(min=0).unsqueeze(-1).expand(-1, -1, self.dim))
        self.embed.data.copy_(torch.where(dead.unsqueeze(-1), picked, self.embed.data))
        if self.update_mode == "ema":
            self.cluster_size.masked_fill_(dead, 1.0)
            self.embed_sum.copy_(torch.where(dead.unsqueeze(-1), picked, self.embed_sum))
        # A restarted code starts at the threshold: if no input picks it next step it is restarted again.
        self.usage_ema.masked_fill_(dead, self.dead_code_threshold * correction)
        return torch.tensor(float(n_dead), device=x.device)

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
