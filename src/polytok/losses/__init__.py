"""Training losses of the published recipes: reconstruction, perceptual, adversarial, semantic.

Every loss module returns a :class:`LossOutput`: ``loss`` (scalar to back-propagate) and ``terms``
(detached scalars for logging).
"""

from __future__ import annotations

from polytok.losses.adversarial import (
    AdversarialLoss,
    adaptive_gan_weight,
    hinge_d_loss,
    hinge_g_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
)
from polytok.losses.contrastive import ClipContrastiveLoss, gather_with_grad
from polytok.losses.diffaug import DiffAugment, diff_augment
from polytok.losses.discriminators import (
    DinoDiscriminator,
    PatchGANDiscriminator,
    TimmViTTokens,
    TokenHead,
    build_dino_backbone,
    dino_weights_path,
)
from polytok.losses.distillation import FeatureDistillationLoss, cosine_distance, fold_cosine_distance
from polytok.losses.output import LossOutput
from polytok.losses.perceptual import LPIPSLoss, vgg16_weights_path
from polytok.losses.reconstruction import ReconstructionLoss, l1_loss, l2_loss, object_pixel_weight

__all__ = [
    "AdversarialLoss",
    "ClipContrastiveLoss",
    "DiffAugment",
    "DinoDiscriminator",
    "FeatureDistillationLoss",
    "LPIPSLoss",
    "LossOutput",
    "PatchGANDiscriminator",
    "ReconstructionLoss",
    "TimmViTTokens",
    "TokenHead",
    "adaptive_gan_weight",
    "build_dino_backbone",
    "cosine_distance",
    "diff_augment",
    "dino_weights_path",
    "fold_cosine_distance",
    "gather_with_grad",
    "hinge_d_loss",
    "hinge_g_loss",
    "l1_loss",
    "l2_loss",
    "non_saturating_d_loss",
    "non_saturating_g_loss",
    "object_pixel_weight",
    "vgg16_weights_path",
]


def _optional_feature_perceptual() -> None:
    """Export the EfficientNet feature-space perceptual loss when its module is present.

    Its absence (or a module without the class) is tolerated; an error raised inside the module is not.
    """
    import importlib
    import importlib.util

    if importlib.util.find_spec("polytok.losses.feature_perceptual") is None:
        return
    module = importlib.import_module("polytok.losses.feature_perceptual")
    if hasattr(module, "EfficientNetPerceptualLoss"):
        globals()["EfficientNetPerceptualLoss"] = module.EfficientNetPerceptualLoss
        __all__.append("EfficientNetPerceptualLoss")


_optional_feature_perceptual()
