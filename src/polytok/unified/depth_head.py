"""The depth head: a small causal transformer over one position's sub-codes.

For a position with backbone hidden state h, step 0 reads h, and step t > 0 reads what the sub-codes
before t say (see ``UnifiedConfig.depth_conditioning``) plus a learned depth position; step t predicts
sub-code t. Sub-codes are ordered level by level, codebook by codebook: t = l * C + c.

    running_sum: input(l, c) = sum of the embeddings of all sub-codes of levels < l
                               + embedding of sub-code (l, c - 1) when c > 0
                 (MCQ: the previous sub-code; RVQ: the partial reconstruction; residual MCQ: both)
    previous:    input(t) = embedding of sub-code t - 1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.nn import TransformerBlock
from polytok.unified.config import UnifiedConfig
from polytok.unified.embed import CodeVectors, SubCodeEmbedding
from polytok.unified.layout import CodeLayout


class DepthCache:
    """What the steps of one position so far leave for the next: per block, the keys and values of the
    earlier steps (buffers of all ``depth`` steps, filled in place), and the running sums of the
    sub-code embeddings (complete levels, the current level) that the next step's input needs."""

    def __init__(self, layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * layers
        self.values: list[Tensor | None] = [None] * layers
        self.complete_levels: Tensor | None = None  # (M, W): sum over the levels before the current one
        self.current_level: Tensor | None = None  # (M, W): sum over the current level's sub-codes so far


class DepthHead(nn.Module):
    """(M, hidden) backbone states + (M, s) earlier sub-codes -> logits (M, s + 1, K) of sub-codes 0..s."""

    def __init__(
        self, layout: CodeLayout, hidden: int, config: UnifiedConfig, code_vectors: CodeVectors | None = None
    ) -> None:
        super().__init__()
        self.layout = layout
        self.depth = layout.generation_depth
        self.conditioning = config.depth_conditioning
        width = config.depth_width
        self.input_proj = nn.Linear(hidden, width)
        self.sub_embed = SubCodeEmbedding(layout, width, config.depth_embedding, code_vectors)
        self.depth_pos = nn.Parameter(torch.randn(self.depth, width) * 0.02)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    width, config.depth_heads, mlp="mlp", mlp_ratio=config.depth_mlp_ratio, causal=True
                )
                for _ in range(config.depth_layers)
            ]
        )
        self.norm = nn.LayerNorm(width)
        k = layout.codebook_size
        self.shared_classifier = config.shared_classifier
        if self.shared_classifier:
            self.classifier = nn.Linear(width, k)
        else:  # one classifier per sub-code, initialised like nn.Linear
            bound = width**-0.5
            self.class_weight = nn.Parameter(torch.empty(self.depth, k, width).uniform_(-bound, bound))
            self.class_bias = nn.Parameter(torch.empty(self.depth, k).uniform_(-bound, bound))

    # -- inputs -----------------------------------------------------------------------------------

    def conditioning_inputs(self, codes: Tensor) -> Tensor:
        """(M, s) sub-codes -> (M, s, width): the conditioning of steps 1..s (step t reads codes[:, :t])."""
        emb = self.sub_embed(codes)  # (M, s, W)
        if self.conditioning == "previous":
            return emb
        m, s, width = emb.shape
        books = self.layout.codebooks
        complete = s // books
        running = emb.new_zeros(m, complete + 1, width)  # running[:, l]: sum over the levels < l
        if complete:
            level_sums = emb[:, : complete * books].reshape(m, complete, books, width).sum(dim=2)
            running[:, 1:] = level_sums.cumsum(dim=1)
        step = torch.arange(1, s + 1, device=codes.device)
        within = (step % books != 0).to(emb.dtype)[None, :, None]
        return running[:, step // books] + emb * within

    def _step_inputs(self, h: Tensor, codes: Tensor) -> Tensor:
        """Inputs of steps 0..s: (M, s + 1, width)."""
        start = self.input_proj(h)[:, None]
        x = torch.cat([start, self.conditioning_inputs(codes)], dim=1) if codes.shape[1] else start
        return x + self.depth_pos[: x.shape[1]]

    def _classify(self, x: Tensor, first_slot: int) -> Tensor:
        """(M, n, width) outputs of slots first_slot.. -> logits (M, n, K)."""
        x = self.norm(x)
        if self.shared_classifier:
            return self.classifier(x)
        n = x.shape[1]
        w = self.class_weight[first_slot : first_slot + n]
        return torch.einsum("mnw,nkw->mnk", x, w) + self.class_bias[first_slot : first_slot + n]

    # -- full and incremental passes --------------------------------------------------------------

    def forward(self, h: Tensor, codes: Tensor) -> Tensor:
        """Teacher-forced logits: h (M, hidden), codes (M, s) with s < depth -> (M, s + 1, K).

        Training passes the first depth - 1 sub-codes of the target and gets the logits of all of them.
        """
        if codes.shape[1] >= self.depth:
            raise ValueError(
                f"the depth head predicts {self.depth} sub-codes; got {codes.shape[1]} earlier ones"
            )
        x = self._step_inputs(h, codes)
        for block in self.blocks:
            x = block(x)
        return self._classify(x, 0)

    def step(self, h: Tensor, codes: Tensor, cache: DepthCache) -> Tensor:
        """Logits (M, K) of sub-code s = codes.shape[1], running only step s against ``cache`` (updated).

        Start each position with ``cache = new_cache()``; the result equals ``forward(h, codes)[:, -1]``.
        """
        s = codes.shape[1]
        if s == 0:
            x = self.input_proj(h)[:, None] + self.depth_pos[0]
        else:
            x = self._next_input(codes, cache)[:, None] + self.depth_pos[s]
        for i, block in enumerate(self.blocks):
            x = _block_step(block, x, cache, i, s, self.depth)
        x = self.norm(x[:, 0])
        if self.shared_classifier:
            return self.classifier(x)
        return F.linear(x, self.class_weight[s], self.class_bias[s])

    def _next_input(self, codes: Tensor, cache: DepthCache) -> Tensor:
        """Conditioning (M, width) of step s = codes.shape[1] >= 1, from the newest sub-code and the sums
        in ``cache`` (updated); equals ``conditioning_inputs(codes)[:, -1]``."""
        s = codes.shape[1]
        newest = self.sub_embed(codes)[:, -1]  # slot embeddings depend on the slot: embed from slot 0
        if self.conditioning == "previous":
            return newest
        books = self.layout.codebooks
        if cache.current_level is None or (s - 1) % books == 0:  # the newest sub-code starts a level
            cache.current_level = newest
        else:
            cache.current_level = cache.current_level + newest
        if s % books:  # inside a level: the levels before it plus the previous sub-code
            return newest if cache.complete_levels is None else cache.complete_levels + newest
        # the newest sub-code completes its level
        done = cache.current_level
        cache.complete_levels = done if cache.complete_levels is None else cache.complete_levels + done
        return cache.complete_levels

    def new_cache(self) -> DepthCache:
        return DepthCache(len(self.blocks))


def _block_step(
    block: TransformerBlock, x: Tensor, cache: DepthCache, index: int, step: int, depth: int
) -> Tensor:
    """Token ``step`` (M, 1, W) through a causal block, its keys and values written into the buffers of
    ``cache`` (allocated for all ``depth`` steps at step 0, so no step copies the earlier ones)."""
    m, _, width = x.shape
    q, k, v = block.attn.split_heads(block.norm1(x))  # each (M, heads, 1, head_dim)
    if step == 0:
        cache.keys[index] = k.new_empty(m, k.shape[1], depth, k.shape[3])
        cache.values[index] = v.new_empty(m, v.shape[1], depth, v.shape[3])
    keys, values = cache.keys[index], cache.values[index]
    assert keys is not None and values is not None
    keys[:, :, step : step + 1] = k
    values[:, :, step : step + 1] = v
    k, v = keys[:, :, : step + 1], values[:, :, : step + 1]
    out = F.scaled_dot_product_attention(q, k, v)  # the newest token may attend to every earlier one
    x = x + block.attn.proj(out.transpose(1, 2).reshape(m, 1, width))
    return x + block.mlp(block.norm2(x))
