"""Embeddings of image codes: the backbone's input at image positions and the depth head's sub-codes.

Two styles (both found in the published systems):
- "learned": one new table per sub-code slot (level l, codebook c), not tied to the tokenizer;
- "codebook": the tokenizer's frozen code vectors. Summed over levels and concatenated over codebooks they
  are the partial reconstruction of a position, which a projector maps to the model's width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from polytok.unified.layout import CodeLayout


class CodeVectors(nn.Module):
    """The tokenizer's code vectors (L, C, K, d), frozen (a buffer stored with the model)."""

    def __init__(self, vectors: Tensor) -> None:
        super().__init__()
        if vectors.dim() != 4:
            raise ValueError(f"code vectors must be (L, C, K, d), got {tuple(vectors.shape)}")
        self.register_buffer("vectors", vectors.detach().clone())

    @property
    def dim(self) -> int:
        """C * d, the width of a position's (partial) reconstruction."""
        return self.vectors.shape[1] * self.vectors.shape[3]

    def level_vectors(self, codes: Tensor) -> Tensor:
        """(..., L', C) codes -> (..., L', C * d): each level's vector, codebooks concatenated."""
        levels, books = codes.shape[-2], codes.shape[-1]
        lc = torch.arange(levels * books, device=codes.device).view(levels, books)
        k = self.vectors.shape[2]
        flat = self.vectors[:levels].reshape(levels * books * k, -1)
        v = nn.functional.embedding(codes + lc * k, flat)  # (..., L', C, d)
        return v.flatten(-2)


def _level_mask(levels: Tensor | int, num_levels: int, batch: int, like: Tensor) -> Tensor:
    """(B,) or int levels read -> (B, 1, L, 1) mask (dtype of ``like``) of the levels < levels[b]."""
    if isinstance(levels, int):
        levels = torch.full((batch,), levels, device=like.device)
    keep = torch.arange(num_levels, device=like.device)[None, :] < levels.to(like.device)[:, None]
    return keep[:, None, :, None].to(like.dtype)


class ImageInputEmbedding(nn.Module):
    """Codes of a position -> one input vector of the backbone.

    ``forward(codes (B, N, L', C), levels)`` -> (B, N, hidden): the sum over sub-codes of levels
    < ``levels`` (an int or a (B,) tensor: generation reads the pixel prefix, understanding more).
    """

    def __init__(
        self,
        layout: CodeLayout,
        hidden: int,
        kind: str,
        code_vectors: CodeVectors | None = None,
        projector_hidden: int | None = None,
    ) -> None:
        super().__init__()
        self.layout, self.kind = layout, kind
        if kind == "learned":
            self.table = nn.Embedding(layout.full_depth * layout.codebook_size, hidden)
            nn.init.normal_(self.table.weight, std=0.02)
        elif kind == "codebook":
            if code_vectors is None:
                raise ValueError("input_embedding 'codebook' needs the tokenizer's code vectors")
            self.code_vectors = [code_vectors]  # shared module, registered by the model
            width = projector_hidden or hidden
            self.projector = nn.Sequential(
                nn.LayerNorm(code_vectors.dim),
                nn.Linear(code_vectors.dim, width),
                nn.GELU(),
                nn.Linear(width, hidden),
            )
        else:
            raise ValueError(f"unknown input embedding {kind!r}; expected 'learned' or 'codebook'")

    def forward(self, codes: Tensor, levels: Tensor | int) -> Tensor:
        num_levels, books = codes.shape[2:]
        if self.kind == "learned":
            k = self.layout.codebook_size
            slot = torch.arange(books, device=codes.device) * k
            mask = _level_mask(levels, num_levels, codes.shape[0], self.table.weight)  # (B, 1, L', 1)
            total = None
            for level in range(num_levels):  # one level at a time: memory of one (B, N, C, hidden)
                emb = self.table(codes[:, :, level] + slot + level * books * k).sum(dim=2)
                emb = emb * mask[:, :, level]
                total = emb if total is None else total + emb
            return total
        per_level = self.code_vectors[0].level_vectors(codes)  # (B, N, L', C*d)
        mask = _level_mask(levels, num_levels, codes.shape[0], per_level)
        partial = (per_level * mask).sum(dim=2)
        return self.projector(partial.to(self.projector[1].weight.dtype))


class ImagePositionEmbedding(nn.Module):
    """Where the next image position lies on the grid: a learned row vector plus a learned column vector.

    The backbone's own positions are 1-d over the whole sequence; on a raster-ordered grid the position
    above is ``w`` tokens back, which a small model learns slowly. This embedding is added to the input of
    the token whose output predicts image position ``i`` (``<boi>`` for position 0, image position
    ``i - 1`` otherwise), so every state knows which cell of the grid it predicts, in both directions.

    ``forward(index (...,) long)`` -> (..., hidden).
    """

    def __init__(self, grid: tuple[int, int], hidden: int) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.rows = nn.Embedding(self.grid[0], hidden)
        self.cols = nn.Embedding(self.grid[1], hidden)
        nn.init.normal_(self.rows.weight, std=0.02)
        nn.init.normal_(self.cols.weight, std=0.02)

    def forward(self, index: Tensor) -> Tensor:
        w = self.grid[1]
        return self.rows(index // w) + self.cols(index % w)


class SubCodeEmbedding(nn.Module):
    """Sub-code s = (l, c) of the generation depth -> a vector of the depth head's width.

    ``forward(codes (M, s))`` -> (M, s, width), slot t embedding ``codes[:, t]``. "learned": a table per
    slot; "codebook": the frozen code vector of slot t placed in its codebook's channels, through one linear
    map (so that sums of embeddings are the map of the partial reconstruction).
    """

    def __init__(
        self, layout: CodeLayout, width: int, kind: str, code_vectors: CodeVectors | None = None
    ) -> None:
        super().__init__()
        self.layout, self.kind = layout, kind
        slots = layout.generation_depth
        if kind == "learned":
            self.table = nn.Embedding(slots * layout.codebook_size, width)
            nn.init.normal_(self.table.weight, std=0.02)
        elif kind == "codebook":
            if code_vectors is None:
                raise ValueError("depth_embedding 'codebook' needs the tokenizer's code vectors")
            self.code_vectors = [code_vectors]
            self.proj = nn.Linear(code_vectors.dim, width, bias=False)
        else:
            raise ValueError(f"unknown depth embedding {kind!r}; expected 'learned' or 'codebook'")

    def forward(self, codes: Tensor) -> Tensor:
        s = codes.shape[1]
        slot = torch.arange(s, device=codes.device)
        if self.kind == "learned":
            return self.table(codes + slot * self.layout.codebook_size)
        books = self.layout.codebooks
        vectors = self.code_vectors[0].vectors  # (L, C, K, d)
        level, book = slot // books, slot % books
        v = vectors[level[None, :], book[None, :], codes]  # (M, s, d), without copying the codebooks
        d = vectors.shape[-1]
        weight = self.proj.weight.view(self.proj.out_features, books, d)[:, book]  # (W, s, d)
        return torch.einsum("msd,wsd->msw", v.to(weight.dtype), weight)
