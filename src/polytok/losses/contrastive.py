"""CLIP contrastive loss between image and text embeddings (UniTok's semantic objective).

Under ``torch.distributed`` the embeddings of every rank are gathered *with* gradient, and each rank
scores its own rows against the whole global batch ("local loss"). Averaged over ranks (as DDP does for
gradients) this equals, in value and gradient, the loss of one process holding the full batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.losses.output import LossOutput, detached


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Concatenate ``x`` (B, D) from every rank in rank order, keeping the autograd graph.

    Returns the (world * B, D) tensor and the offset of this rank's rows. Every rank must pass the same B
    (checked with one small collective, so a mismatch raises instead of hanging or mis-labelling).
    """
    if not _distributed():
        return x, 0
    import torch.distributed.nn.functional as dist_fn

    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    counts = [int(s) for s in sizes]
    if len(set(counts)) != 1:
        raise ValueError(f"the contrastive loss needs the same local batch size on every rank, got {counts}")
    gathered = dist_fn.all_gather(x)
    return torch.cat(gathered, dim=0), rank * x.shape[0]


class ClipContrastiveLoss(nn.Module):
    """Symmetric InfoNCE with a learnable temperature, as in CLIP.

    Args:
        init_logit_scale: initial value of the log of the inverse temperature (log(1/0.07)).
        max_logit_scale: the log-scale is clamped to at most this (log(100)) when used.
        learnable: make the log-scale a trainable parameter (else a buffer).
        normalize: L2-normalise the embeddings first (set False if they already are).
        weight: factor applied to the returned ``loss``.
        gather: gather embeddings across ranks when torch.distributed is initialised.

    Call: ``loss(image_emb, text_emb)`` with (B, D) each; row i of both is a matching pair. Returns a
    :class:`LossOutput` with terms ``image_to_text``, ``text_to_image``, ``contrastive`` (their mean),
    ``logit_scale`` (the exp'd scale), ``accuracy`` (image->text top-1 on this rank's rows).

    Hard negatives (NegCLIP, Yuksekgonul et al. 2023): ``negatives`` (B, K, D) are texts that must not
    match image i although they differ from its caption in one attribute only (e.g. the shape word);
    they join image i's image-to-text logits as K more wrong columns (``negative_mask`` (B, K) marks
    the real ones; images without negatives pad and mask). Text-to-image is unchanged. Then also
    ``negative_accuracy``: the share of images whose caption beats all of their own negatives.

    Caption choice (``choice_weight`` > 0): a second term in which each image chooses its caption among
    itself and its own negatives only, no other image's caption (term ``choice``). In-batch captions differ
    in many attributes, so InfoNCE is solved by the easiest ones (colour, position) and the hard negatives
    are a few columns among hundreds; the choice leaves only what the negatives change (the shape on
    ``shapes``) to tell; it put the shape into a tokenizer's semantic channels in docs/study.md 7.1-7.3
    (unitok-tiny's config, both seeds measured). The returned loss is ``weight * contrastive + choice_weight *
    choice``.
    """

    def __init__(
        self,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = math.log(100),
        learnable: bool = True,
        normalize: bool = True,
        weight: float = 1.0,
        gather: bool = True,
        choice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if init_logit_scale > max_logit_scale:
            raise ValueError(f"init_logit_scale {init_logit_scale} exceeds max_logit_scale {max_logit_scale}")
        scale = torch.tensor(float(init_logit_scale))
        if learnable:
            self.logit_scale = nn.Parameter(scale)
        else:
            self.register_buffer("logit_scale", scale)
        self.max_logit_scale = float(max_logit_scale)
        self.normalize = normalize
        self.weight = float(weight)
        self.gather = gather
        self.choice_weight = float(choice_weight)

    def scale(self) -> Tensor:
        """exp(clamped log-scale), the factor multiplying cosine similarities."""
        return self.logit_scale.clamp(max=self.max_logit_scale).exp()

    def forward(
        self,
        image_emb: Tensor,
        text_emb: Tensor,
        logit_scale: Tensor | None = None,
        negatives: Tensor | None = None,
        negative_mask: Tensor | None = None,
    ) -> LossOutput:
        """``logit_scale``: an exp'd scale computed by the model's forward (open_clip style), used instead
        of this module's own; under DDP a scale that lives in the model must come through its forward.
        ``negatives`` (B, K, D) and ``negative_mask`` (B, K) bool: hard negative texts per image."""
        if image_emb.dim() != 2 or text_emb.dim() != 2 or image_emb.shape != text_emb.shape:
            raise ValueError(
                f"expected image and text embeddings of the same shape (B, D), got {tuple(image_emb.shape)} "
                f"and {tuple(text_emb.shape)}"
            )
        image_emb, text_emb = image_emb.float(), text_emb.float()
        if self.normalize:
            image_emb, text_emb = F.normalize(image_emb, dim=-1), F.normalize(text_emb, dim=-1)
        if self.gather:
            all_images, offset = gather_with_grad(image_emb)
            all_texts, _ = gather_with_grad(text_emb)
        else:
            all_images, all_texts, offset = image_emb, text_emb, 0
        scale = self.scale() if logit_scale is None else logit_scale.float()
        logits_image_to_text = scale * image_emb @ all_texts.t()  # (B, world * B)
        logits_text_to_image = scale * text_emb @ all_images.t()
        labels = torch.arange(image_emb.shape[0], device=image_emb.device) + offset
        terms: dict[str, Tensor] = {}
        choice = None
        if negatives is not None:
            own = self._negative_logits(image_emb, negatives, negative_mask, scale)  # (B, K)
            true = logits_image_to_text.gather(1, labels[:, None])
            beaten = (own < true) | ~torch.isfinite(own)
            terms["negative_accuracy"] = detached(beaten.all(dim=1).float().mean())
            logits_image_to_text = torch.cat([logits_image_to_text, own], dim=1)
            if self.choice_weight > 0:
                choice = self._choice(true, own)
                terms["choice"] = detached(choice)
        elif self.choice_weight > 0:
            raise ValueError("the caption choice needs each image's negative captions (negatives=...)")
        loss_i2t = F.cross_entropy(logits_image_to_text, labels)
        loss_t2i = F.cross_entropy(logits_text_to_image, labels)
        value = 0.5 * (loss_i2t + loss_t2i)
        accuracy = (logits_image_to_text.argmax(dim=1) == labels).float().mean()
        terms = {
            **terms,
            "image_to_text": detached(loss_i2t),
            "text_to_image": detached(loss_t2i),
            "contrastive": detached(value),
            "logit_scale": detached(scale),
            "accuracy": detached(accuracy),
        }
        total = self.weight * value
        if choice is not None:
            total = total + self.choice_weight * choice
        return LossOutput(total, terms)

    @staticmethod
    def _choice(true: Tensor, own: Tensor) -> Tensor:
        """Cross-entropy of each image's caption against its own negatives only: (B, 1), (B, K) -> scalar;
        images without negatives (a row of -inf) count 0 and leave the mean."""
        rows = torch.isfinite(own).any(dim=1)
        if not bool(rows.any()):
            return true.sum() * 0.0
        logits = torch.cat([true, own], dim=1)[rows]
        return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))

    def _negative_logits(
        self, image_emb: Tensor, negatives: Tensor, mask: Tensor | None, scale: Tensor
    ) -> Tensor:
        """(B, K) scaled similarities of each image to its own negatives; masked ones -inf."""
        b = image_emb.shape[0]
        if negatives.dim() != 3 or negatives.shape[0] != b or negatives.shape[2] != image_emb.shape[1]:
            raise ValueError(
                f"expected negatives (B, K, D) = ({b}, K, {image_emb.shape[1]}), got {tuple(negatives.shape)}"
            )
        if mask is not None and tuple(mask.shape) != tuple(negatives.shape[:2]):
            raise ValueError(f"negative_mask must be {tuple(negatives.shape[:2])}, got {tuple(mask.shape)}")
        negatives = negatives.float()
        if self.normalize:
            negatives = F.normalize(negatives, dim=-1)
        logits = scale * torch.einsum("bd,bkd->bk", image_emb, negatives)
        if mask is not None:
            logits = logits.masked_fill(~mask.bool(), float("-inf"))
        return logits
