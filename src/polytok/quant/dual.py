"""Dual-codebook quantization (TokenFlow, Qu et al. 2024): two feature streams, one shared index."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.quant.codebook import Codebook
from polytok.quant.core import LevelledQuantizer, QuantizerOutput, _mean_square, _stored_codes
from polytok.quant.gradients import straight_through
from polytok.quant.search import nearest_codes

_FP32_MAX = torch.finfo(torch.float32).max


@dataclass
class DualQuantizerOutput(QuantizerOutput):
    """:class:`QuantizerOutput` whose ``quantized`` is the two streams side by side, (B, N, Ds + Dp),
    semantic first; ``semantic`` and ``pixel`` are the two halves."""

    semantic_dim: int = 0

    @property
    def semantic(self) -> Tensor:
        """(B, N, Ds) quantized semantic stream."""
        return self.quantized[..., : self.semantic_dim]

    @property
    def pixel(self) -> Tensor:
        """(B, N, Dp) quantized pixel stream."""
        return self.quantized[..., self.semantic_dim :]


class DualCodebookQuantizer(LevelledQuantizer):
    """A semantic codebook (K x Ds) and a pixel codebook (K x Dp) whose codes are paired by index.

    Position n of the semantic stream s (B, N, Ds) and the pixel stream p (B, N, Dp) takes the one index
        k = argmin_k  semantic_weight * |s_n - S_k|^2 + pixel_weight * |p_n - P_k|^2
    and is quantized to (S_k, P_k): one token carries both. With ``normalize=True`` each stream and each
    codebook is L2-normalised separately (cosine codes per stream), as TokenFlow's l2-normalised codes.
    The search is one nearest-code search over the concatenation [sqrt(ws) s, sqrt(wp) p] against
    [sqrt(ws) S, sqrt(wp) P], whose squared distance is exactly the weighted sum.

    Loss: per stream, as VQ: ``beta * |s - sg(S_k)|^2 + |S_k - sg(s)|^2`` (the second term with
    ``update="grad"`` only), summed over the two streams; the weights choose the index only. Codebooks
    learn by gradient or EMA (each from its own stream's vectors, the same counts); dead-code restarts
    replace a pair of codes from one input row. Indices (B, N); ``indices_to_codes`` returns (B, N, Ds + Dp),
    semantic first, like ``quantized``; ``codebook_usage`` is (2, 1): semantic then pixel (they share
    their counts, so they agree). ``forward(semantic, pixel)``.

    Example:
        >>> q = DualCodebookQuantizer(semantic_dim=32, pixel_dim=8, codebook_size=1024)
        >>> out = q(torch.randn(2, 16, 32), torch.randn(2, 16, 8))
        >>> out.semantic.shape, out.pixel.shape, out.indices.shape
        (torch.Size([2, 16, 32]), torch.Size([2, 16, 8]), torch.Size([2, 16]))
    """

    def __init__(
        self,
        semantic_dim: int,
        pixel_dim: int,
        codebook_size: int,
        *,
        semantic_weight: float = 1.0,
        pixel_weight: float = 1.0,
        normalize: bool = False,
        **kwargs: Any,
    ) -> None:
        unsupported = {"levels", "num_codebooks", "codebook_dim", "shared_codebook", "quantize_dropout"}
        unsupported |= {"kmeans_init", "entropy_weight", "rotation_trick", "projected"}
        for key in unsupported & kwargs.keys():
            raise TypeError(f"DualCodebookQuantizer does not take {key!r}")
        if not (semantic_weight >= 0 and pixel_weight >= 0 and semantic_weight + pixel_weight > 0):
            raise ValueError(f"weights must be >= 0, not both 0: {semantic_weight}, {pixel_weight}")
        super().__init__(semantic_dim + pixel_dim, codebook_size, levels=2, **kwargs)
        self.semantic_dim, self.pixel_dim = semantic_dim, pixel_dim
        self.semantic_weight, self.pixel_weight = semantic_weight, pixel_weight
        self.normalize = normalize
        book_kwargs = {
            key: kwargs[key]
            for key in (
                "update",
                "decay",
                "eps",
                "ema_warmup_steps",
                "ema_warmup",
                "ema_min_cluster_size",
                "dead_code_threshold",
                "init_std",
                "sync_distributed",
            )
            if key in kwargs
        }
        # Equal seeds: the two codebooks draw the same rows when they restart codes, so a restarted
        # pair comes from one position of both streams.
        seed = self.seed * 131
        self.codebooks = nn.ModuleList(
            [
                Codebook(1, codebook_size, d, normalize=normalize, seed=seed, **book_kwargs)
                for d in (semantic_dim, pixel_dim)
            ]
        )
        # Level 0 / 1 of the engine are the semantic / pixel codebooks: commits, usage and state come from
        # LevelledQuantizer; the search and the codes are this class's.
        self.magnitude_limit = math.sqrt(_FP32_MAX / (8 * max(semantic_dim, pixel_dim) * 3))

    def _kept_axes(self) -> tuple[bool, bool]:
        return (False, False)

    def _check_pair(self, semantic: Tensor, pixel: Tensor) -> None:
        for name, t, d in (("semantic", semantic, self.semantic_dim), ("pixel", pixel, self.pixel_dim)):
            if not isinstance(t, Tensor) or not t.is_floating_point():
                raise TypeError(
                    f"expected a float tensor {name} (B, N, {d}), got "
                    f"{type(t).__name__ if not isinstance(t, Tensor) else t.dtype}"
                )
            if t.dim() != 3 or t.shape[-1] != d:
                raise ValueError(f"expected {name} input of shape (B, N, {d}), got {tuple(t.shape)}")
        if semantic.shape[:2] != pixel.shape[:2]:
            raise ValueError(
                f"semantic {tuple(semantic.shape)} and pixel {tuple(pixel.shape)} differ in (B, N)"
            )

    def _search_codes(self) -> Tensor:
        """(1, K, Ds + Dp) both codebooks side by side, each scaled by the square root of its weight."""
        sem, pix = (book.codes().detach() for book in self.codebooks)
        return torch.cat([sem * math.sqrt(self.semantic_weight), pix * math.sqrt(self.pixel_weight)], -1)

    def forward(self, semantic: Tensor, pixel: Tensor) -> DualQuantizerOutput:  # type: ignore[override]
        """Quantize ``semantic`` (B, N, Ds) and ``pixel`` (B, N, Dp) -> :class:`DualQuantizerOutput`.

        Bad input as in :meth:`LevelledQuantizer.forward`: a ValueError in eval; in training the position
        (both streams) gets NaN and index -1, the loss is NaN and no statistic is kept.
        """
        self._check_pair(semantic, pixel)
        b, n, _ = semantic.shape
        out_dtype = torch.promote_types(semantic.dtype, pixel.dtype)
        sem_book, pix_book = self.codebooks
        with torch.autocast(device_type=semantic.device.type, enabled=False):
            xs = semantic.float().reshape(b * n, 1, self.semantic_dim)
            xp = pixel.float().reshape(b * n, 1, self.pixel_dim)
            limit, inf = self.magnitude_limit, float("inf")
            bad = ~(torch.linalg.vector_norm(torch.cat([xs, xp], -1).detach(), inf, dim=-1) <= limit)
            codes_bad = torch.stack(
                [~(torch.linalg.vector_norm(_stored_codes(book), inf) <= limit) for book in self.codebooks]
            )
            any_bad, any_codes_bad = torch.stack([bad.any(), codes_bad.any()]).tolist()  # one host sync
            if any_codes_bad:
                raise ValueError(
                    f"a codebook holds NaN, Inf or values beyond {limit:.3g} in magnitude: the quantizer "
                    "state is corrupt"
                )
            if any_bad and not self.training:
                raise ValueError(self._describe_unsearchable(torch.cat([xs, xp], -1)))
            if self.normalize:
                xs, xp = F.normalize(xs, dim=-1), F.normalize(xp, dim=-1)
            clean_s = xs.masked_fill(bad.unsqueeze(-1), 0.0) if any_bad else xs
            clean_p = xp.masked_fill(bad.unsqueeze(-1), 0.0) if any_bad else xp
            scaled = torch.cat(
                [clean_s * math.sqrt(self.semantic_weight), clean_p * math.sqrt(self.pixel_weight)], -1
            )
            idx = nearest_codes(scaled.detach().transpose(0, 1), self._search_codes()).transpose(
                0, 1
            )  # (M, 1)
            qs, qp = sem_book.lookup(idx), pix_book.lookup(idx)  # (M, 1, Ds), (M, 1, Dp)
            commit = _mean_square(clean_s, qs.detach()) + _mean_square(clean_p, qp.detach())
            loss = self.beta * commit
            stats: dict[str, Tensor] = {"commitment": commit.detach()}
            if self.update == "grad":
                codebook_loss = _mean_square(qs, clean_s.detach()) + _mean_square(qp, clean_p.detach())
                loss = loss + codebook_loss
                stats["codebook_loss"] = codebook_loss.detach()
            if self.training:
                counts = sem_book.count(idx)
                if not any_bad:
                    sem_book.record(0, clean_s.detach(), idx, counts)
                    pix_book.record(1, clean_p.detach(), idx, counts)
                stats.update(self._finish_training_call([counts, counts], any_bad))
            if any_bad:
                loss = loss + float("nan")
                idx = idx.masked_fill(bad, -1)
            grad = torch.is_grad_enabled()
            outs = []
            for x, q in ((xs, qs), (xp, qp)):
                q = q.detach()
                q_out = straight_through(x, q) if grad and x.requires_grad else q
                outs.append(q_out.masked_fill(bad.unsqueeze(-1), float("nan")) if any_bad else q_out)
            quantized = torch.cat(outs, -1).reshape(b, n, self.dim).to(out_dtype)
        return DualQuantizerOutput(
            quantized=quantized,
            indices=idx.view(b, n),
            loss=loss,
            stats=stats,
            semantic_dim=self.semantic_dim,
        )

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """(B, N) indices -> (B, N, Ds + Dp) codes, semantic first; in eval mode ``forward``'s
        ``quantized`` exactly. Any leading shape."""
        full = self._check_indices(indices)[..., 0, :]  # (..., 1)
        sem, pix = (book.lookup(full)[..., 0, :] for book in self.codebooks)
        return torch.cat([sem, pix], -1)
