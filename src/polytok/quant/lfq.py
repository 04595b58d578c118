"""Lookup-free quantization (LFQ, MAGVIT-v2, Yu et al. 2023): one bit per channel, the sign."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from polytok.quant.core import _mean_square
from polytok.quant.distributed import all_reduce_sum_, is_distributed
from polytok.quant.implicit import ImplicitQuantizer


def default_group_size(dim: int) -> int:
    """The largest divisor of ``dim`` not above 10: entropy tables of at most 1024 codes per group."""
    return max(g for g in range(1, min(dim, 10) + 1) if dim % g == 0)


# Logits beyond ±40 (probabilities below e^-40 ~ 4e-18) change no entropy by more than ~1e-16, and keep
# every intermediate a normal float: subnormals take the CPU's slow path (several times slower).
_LOGIT_CLAMP = 40.0


def _softmax_floored(scores: Tensor) -> Tensor:
    """Softmax over the last dim with every score at least max - 40 (see ``_LOGIT_CLAMP``); softmax is
    shift-invariant, so only the clamped (negligible) entries lose their gradient."""
    shifted = scores - scores.detach().amax(-1, keepdim=True)
    return torch.softmax(shifted.clamp(min=-_LOGIT_CLAMP), dim=-1)


def binary_entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise, stable for large |logits|."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


class LookupFreeQuantizer(ImplicitQuantizer):
    """Channel j becomes the bit b_j = [x_j > 0] and the code value ±``scale`` (x_j = 0 gives -scale).

    Index: the bits as one binary number with the first channel the most significant bit (as QLIP and
    BSQ-ViT do): index = sum_j b_j 2^(D-1-j), in [0, 2^D), D <= 62. Input (B, N, dim) -> indices (B, N).

    Loss (training; eval reports the commitment only): ``beta * commitment + entropy_weight *
    (per_sample_entropy - diversity * codebook_entropy)``, where the soft assignment of x to a code c is
    q(c | x) ∝ exp(-|x - c|^2 / temperature), the paper's entropy penalty:

    * per-sample entropy: mean over rows of H(q(. | x)). q factorises over channels, bit j being 1 with
      probability sigmoid(4 scale x_j / temperature), so this is exactly a sum of binary entropies.
    * codebook entropy: H of the batch-mean of q. It does not factorise; the channels are split into
      groups of ``group_size`` bits (the factorised codes of the official tokenizers) and the entropy of
      each group's batch-mean distribution over its 2^g codes is summed (exact when one group holds all
      bits; the 2^D table is never built). Under DDP the batch mean is over every rank's rows
      (a differentiable all-reduce), so the term equals the one of the whole batch; its gradient
      reaches every rank's rows, summed over ranks, which DDP's averaging of gradients turns into the
      whole batch's gradient.

    Defaults are MAGVIT-v2's: entropy weight 0.1, diversity 1, commitment 0.25, and temperature 0.01 (the
    inverse temperature 100 of Open-MAGVIT2 and vector-quantize-pytorch). ``stats`` holds
    ``per_sample_entropy``, ``codebook_entropy`` and ``commitment`` (unweighted) in training.
    Usage statistics are counted per group (G groups of 2^g codes).

    Example:
        >>> lfq = LookupFreeQuantizer(dim=18)
        >>> lfq(torch.randn(2, 16, 18)).indices.shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        dim: int = 18,
        *,
        group_size: int | None = None,
        scale: float = 1.0,
        beta: float = 0.25,
        entropy_weight: float = 0.1,
        diversity: float = 1.0,
        temperature: float = 0.01,
        decay: float = 0.99,
        sync_distributed: bool = True,
    ) -> None:
        if not 1 <= dim <= 62:
            raise ValueError(f"dim must be in [1, 62] (the index is an int64 of dim bits), got {dim}")
        group_size = default_group_size(dim) if group_size is None else group_size
        if not 1 <= group_size <= 16 or dim % group_size:
            raise ValueError(f"group_size must divide dim {dim} and be in [1, 16], got {group_size}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        super().__init__(
            dim, dim // group_size, 2**group_size, decay=decay, sync_distributed=sync_distributed
        )
        self.group_size, self.scale = group_size, scale
        self.beta, self.entropy_weight = beta, entropy_weight
        self.diversity, self.temperature = diversity, temperature
        # Bit weights, first channel most significant: over all dims and within a group.
        self.register_buffer("_bit_weights", 2 ** torch.arange(dim - 1, -1, -1), persistent=False)
        # (D, G [+ 1]): column g weighs the bits of group g (its first channel the most significant);
        # up to 24 bits a last column weighs all of them, so one product gives every index.
        weights = torch.zeros(dim, self.groups + (1 if dim <= 24 else 0), dtype=torch.float64)
        for g in range(self.groups):
            weights[g * group_size : (g + 1) * group_size, g] = 2.0 ** torch.arange(group_size - 1, -1, -1)
        if dim <= 24:
            weights[:, -1] = 2.0 ** torch.arange(dim - 1, -1, -1)
        self.register_buffer("_index_weights", weights.float(), persistent=False)
        places = 2 ** (group_size * torch.arange(self.groups - 1, -1, -1))  # group 0 the most significant
        self.register_buffer("_group_places", places, persistent=False)
        # A group's 2^g codes split into high and low halves of bits: q(c | x) is the product of the two
        # halves' distributions, so the batch-mean over the group's codes is one (2^a x M) @ (M x 2^b)
        # product and the (M, 2^g) table of soft assignments is never built.
        self._high_bits = (group_size + 1) // 2
        for name, bits in (("_high_table", self._high_bits), ("_low_table", group_size - self._high_bits)):
            weights = 2 ** torch.arange(bits - 1, -1, -1)
            table = (torch.arange(2**bits).unsqueeze(-1) // weights) % 2  # (2^bits, bits), MSB first
            self.register_buffer(name, table.float(), persistent=False)

    @property
    def codebook_size(self) -> int:
        return 2**self.dim

    @property
    def code_value(self) -> float:
        """|code| of every channel."""
        return self.scale

    def _prepare(self, x: Tensor) -> Tensor:
        """The vector whose signs are the bits (BSQ normalises it)."""
        return x

    def _quantize(self, x: Tensor) -> tuple[Tensor | None, Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        u = self._prepare(x)
        bits = torch.gt(u.detach(), 0, out=torch.empty_like(u))  # (M, D) float 0 / 1; bit 0 at u = 0
        codes = self._bits_to_codes(bits)
        q = u + (codes - u).detach() if self._wants_grad(x) else None  # straight-through sign
        # Group indices and, up to 24 bits, the index itself: one float product, exact below 2^24.
        weighted = (bits @ self._index_weights).long()  # (M, G) or (M, G + 1)
        group_indices = weighted[:, : self.groups]
        if self.dim <= 24:
            indices = weighted[:, -1]
        else:
            indices = (group_indices * self._group_places).sum(-1)
        commitment = _mean_square(u, codes)
        loss = self.beta * commitment
        stats = {"commitment": commitment.detach()}
        if self.training and self.entropy_weight > 0:
            per_sample, codebook = self.entropy_terms(u)
            loss = loss + self.entropy_weight * (per_sample - self.diversity * codebook)
            stats.update(per_sample_entropy=per_sample.detach(), codebook_entropy=codebook.detach())
        return q, codes, indices, group_indices, loss, stats

    def entropy_terms(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(per-sample entropy, codebook entropy) of the soft assignments of rows ``u`` (M, D) (nats).

        The codebook entropy averages over every rank's rows when distributed (see the class docstring).
        """
        logits = (4 * self.code_value / self.temperature) * u  # bit j is 1 with probability sigmoid(.)
        m = u.shape[0]
        per_sample = binary_entropy_from_logits(logits.clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)).sum(-1)
        per_sample = per_sample.mean() if m else u.sum() * 0
        # Each group's distribution over its 2^g codes is softmax_c(bits(c) . logits); it factorises into
        # its high-bit and low-bit halves, and the batch sum of the product is a matrix product.
        group_logits = logits.view(m, self.groups, self.group_size)
        p_high = _softmax_floored(group_logits[..., : self._high_bits] @ self._high_table.T)  # (M, G, 2^a)
        p_low = _softmax_floored(group_logits[..., self._high_bits :] @ self._low_table.T)  # (M, G, 2^b)
        sums = torch.einsum("mga,mgb->gab", p_high, p_low)  # (G, 2^a, 2^b): code c = high * 2^b + low
        rows = float(m)
        if is_distributed(self.sync_distributed):
            from torch.distributed.nn.functional import all_reduce

            sums = all_reduce(sums)  # differentiable: every rank's rows feed the mean
            rows = float(all_reduce_sum_(torch.tensor([rows], device=u.device))[0])
        if rows == 0:
            return per_sample, u.sum() * 0
        avg = sums / rows
        codebook = -(avg * avg.clamp(min=1e-12).log()).sum()
        return per_sample, codebook

    def _bits_to_codes(self, bits: Tensor) -> Tensor:
        """(..., D) float 0 / 1 bits -> codes ±code_value (2v - v is exactly v)."""
        value = self.code_value
        return bits * (2 * value) - value

    def _codes_from_indices(self, indices: Tensor) -> Tensor:
        bits = (indices.unsqueeze(-1) // self._bit_weights) % 2
        return self._bits_to_codes(bits.float())
