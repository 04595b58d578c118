"""Feature distillation onto a frozen teacher (EvoTok's semantic objective: "cosine + fold").

Per token, ``1 - cos(student, teacher)`` over the full channel vector, plus the same cosine loss on
``num_folds`` equal channel chunks (EvoTok: 4 chunks of 256 dims of 1024-d features), which keeps every
part of the vector aligned instead of letting a few large channels dominate the cosine.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from polytok.losses.output import LossOutput, detached


def _as_tokens(x: Tensor, name: str) -> tuple[Tensor, tuple[int, int] | None]:
    """(B, N, C) tokens stay; (B, C, h, w) maps become (B, h*w, C). Also returns the map's grid if any."""
    if x.dim() == 3:
        return x, None
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])
    raise ValueError(f"{name} features must be (B, N, C) tokens or (B, C, h, w) maps, got {tuple(x.shape)}")


def cosine_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean over tokens of ``1 - cos`` along the last dim. Shapes (..., C), equal; returns a scalar."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-8)).mean()


def fold_cosine_distance(student: Tensor, teacher: Tensor, num_folds: int) -> Tensor:
    """Mean over tokens and chunks of ``1 - cos`` on ``num_folds`` equal chunks of the last dim."""
    channels = student.shape[-1]
    if num_folds < 1 or channels % num_folds:
        raise ValueError(f"num_folds={num_folds} must be >= 1 and divide the feature dim {channels}")
    folded_s = student.reshape(*student.shape[:-1], num_folds, channels // num_folds)
    folded_t = teacher.reshape(*teacher.shape[:-1], num_folds, channels // num_folds)
    return cosine_distance(folded_s, folded_t)


class FeatureDistillationLoss(nn.Module):
    """``token_weight * (1 - cos) + fold_weight * fold(1 - cos)`` between student and frozen teacher features.

    Args:
        student_dim: channels of the student features.
        teacher_dim: channels of the teacher features (default: ``student_dim``).
        num_folds: chunks for the fold term (EvoTok: 4).
        token_weight, fold_weight: weights of the two terms (EvoTok: 1 and 1).
        adapter: "none" (dims must match) or "linear" (a learnable Linear student_dim -> teacher_dim applied
            to the student; its parameters belong to this module and need to be in the optimiser).
        weight: overall factor applied to the returned ``loss``.
        resize_teacher: when the teacher is a (B, C, h, w) map whose grid differs from the student's square
            token grid, resample it bilinearly to the student grid (else a mismatch raises).

    Call: ``loss(student, teacher)`` with student (B, N, C_s) or (B, C_s, h, w) and teacher (B, N, C_t) or
    (B, C_t, h, w) -> :class:`LossOutput` with terms ``cosine``, ``fold``, ``total``. The teacher is detached.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int | None = None,
        num_folds: int = 4,
        token_weight: float = 1.0,
        fold_weight: float = 1.0,
        adapter: str = "none",
        weight: float = 1.0,
        resize_teacher: bool = True,
    ) -> None:
        super().__init__()
        teacher_dim = student_dim if teacher_dim is None else teacher_dim
        if adapter not in ("none", "linear"):
            raise ValueError(f"adapter must be 'none' or 'linear', got {adapter!r}")
        if adapter == "none" and student_dim != teacher_dim:
            raise ValueError(f"student_dim {student_dim} != teacher_dim {teacher_dim}: pass adapter='linear'")
        if fold_weight and (num_folds < 1 or teacher_dim % num_folds):
            raise ValueError(f"num_folds={num_folds} must be >= 1 and divide teacher_dim {teacher_dim}")
        if min(token_weight, fold_weight, weight) < 0:
            raise ValueError("weights must be >= 0")
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.num_folds = num_folds
        self.token_weight, self.fold_weight, self.weight = (
            float(token_weight),
            float(fold_weight),
            float(weight),
        )
        self.adapter = nn.Linear(student_dim, teacher_dim) if adapter == "linear" else nn.Identity()
        self.resize_teacher = resize_teacher

    @classmethod
    def evotok(cls, dim: int = 1024) -> FeatureDistillationLoss:
        """EvoTok: cosine + fold over 4 chunks, both weight 1 (1024-d SigLIP2-L features)."""
        return cls(dim, dim, num_folds=4, token_weight=1.0, fold_weight=1.0)

    def _align_teacher(self, teacher: Tensor, student_tokens: int) -> Tensor:
        tokens, grid = _as_tokens(teacher, "teacher")
        if tokens.shape[1] == student_tokens:
            return tokens
        side = math.isqrt(student_tokens)
        if grid is None or not self.resize_teacher or side * side != student_tokens:
            raise ValueError(
                f"teacher has {tokens.shape[1]} tokens, student {student_tokens}; resampling needs a "
                "(B, C, h, w) teacher map, a square student grid and resize_teacher=True"
            )
        resized = F.interpolate(teacher.float(), size=(side, side), mode="bilinear", align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def forward(self, student: Tensor, teacher: Tensor) -> LossOutput:
        student_tokens, _ = _as_tokens(student, "student")
        if student_tokens.shape[-1] != self.student_dim:
            raise ValueError(
                f"student features have {student_tokens.shape[-1]} channels, expected {self.student_dim}"
            )
        teacher_tokens = self._align_teacher(teacher.detach(), student_tokens.shape[1])
        if teacher_tokens.shape[0] != student_tokens.shape[0]:
            raise ValueError(
                f"batch sizes differ: student {student_tokens.shape[0]}, teacher {teacher_tokens.shape[0]}"
            )
        if teacher_tokens.shape[-1] != self.teacher_dim:
            raise ValueError(
                f"teacher features have {teacher_tokens.shape[-1]} channels, expected {self.teacher_dim}"
            )
        projected = self.adapter(student_tokens)
        cosine = cosine_distance(projected, teacher_tokens)
        total = self.token_weight * cosine
        terms = {"cosine": detached(cosine)}
        if self.fold_weight:
            fold = fold_cosine_distance(projected, teacher_tokens, self.num_folds)
            total = total + self.fold_weight * fold
            terms["fold"] = detached(fold)
        total = self.weight * total
        terms["total"] = detached(total)
        return LossOutput(total, terms)
