"""How gradients cross the non-differentiable code choice."""

from __future__ import annotations

import torch
from torch import Tensor


def straight_through(z: Tensor, q: Tensor) -> Tensor:
    """Forward value ``q``, gradient passed to ``z`` unchanged (straight-through estimator)."""
    return z + (q - z).detach()


def rotation_trick(z: Tensor, q: Tensor, eps: float = 1e-6) -> Tensor:
    """Forward value ``q``; gradient to ``z`` through the rotation + rescaling that maps z onto q.

    The rotation trick (Fifty et al., 2024) treats q as ``sg(lambda * R) z``, where R is the rotation
    taking z's direction onto q's and lambda = |q| / |z|. Gradients then keep the angle between z and
    q instead of being copied unchanged. Works on the last dim of (..., d) tensors.
    """
    z_norm = z.norm(dim=-1, keepdim=True).clamp(min=eps)
    q_norm = q.norm(dim=-1, keepdim=True).clamp(min=eps)
    u = (z / z_norm).detach()
    v = (q / q_norm).detach()
    r = u + v
    r = (r / r.norm(dim=-1, keepdim=True).clamp(min=eps)).detach()
    scale = (q_norm / z_norm).detach()
    # R z = z - 2 (z.r) r + 2 (z.u) v: reflection through r, then through v (a rotation in span(u, v)).
    rotated = z - 2 * (z * r).sum(-1, keepdim=True) * r + 2 * (z * u).sum(-1, keepdim=True) * v
    return scale * rotated


def entropy_loss(logits: Tensor) -> Tensor:
    """Per-sample entropy minus codebook (batch-averaged) entropy of soft code assignments.

    Minimising it makes each vector confident about its code while spreading vectors over all codes.

    Args:
        logits: (M, G, K) similarity logits (already divided by the temperature).
    Returns:
        scalar, averaged over groups.
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    p = log_p.exp()
    per_sample = -(p * log_p).sum(-1).mean(0)  # (G,)
    avg = p.mean(0)
    codebook = -(avg * avg.clamp(min=1e-12).log()).sum(-1)  # (G,)
    return (per_sample - codebook).mean()
