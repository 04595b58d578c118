"""Evaluation: reconstruction metrics (rFID, PSNR, SSIM, LPIPS, Frechet distance in any feature space,
Inception Score), codebook health, zero-shot and linear-probe accuracy, depth curves for residual
tokenizers, and a self-contained HTML report. Every figure is a ``MetricResult`` carrying its protocol.
Each kind of figure is a metric family (``polytok.eval.families``) run by ``evaluate_tokenizer``.
``evaluate_unified`` measures a unified model's generation and captioning on the ``shapes`` world."""

from polytok.eval.evaluate import DepthPlan, code_prefix, evaluate_tokenizer
from polytok.eval.families import DepthBatch, DepthResult, MetricFamily, RealBatch
from polytok.eval.html.tokenizer import render_report, write_report
from polytok.eval.metrics.codebook import CodebookStats, CodebookUsage
from polytok.eval.metrics.features import FeatureSpace, InceptionFeatures, ModuleFeatures
from polytok.eval.metrics.frechet import FeatureMoments, FrechetDistance, frechet_distance
from polytok.eval.metrics.inception_score import InceptionScore
from polytok.eval.metrics.linear_probe import FeatureBank, linear_probe
from polytok.eval.metrics.perceptual import LPIPS, build_lpips_vgg
from polytok.eval.metrics.pixel import PSNR, SSIM, psnr_per_image, ssim_per_image
from polytok.eval.metrics.weights import inception_weights_path, vgg16_weights_path
from polytok.eval.metrics.zero_shot import (
    TopKAccuracy,
    ZeroShotClassifier,
    build_class_embeddings,
    zero_shot_logits,
)
from polytok.eval.options import SEMANTIC_FIDELITY_SIZE, EvalOptions, ZeroShotSpec
from polytok.eval.result import MetricResult
from polytok.eval.shapes.captions import parse_caption
from polytok.eval.shapes.prompts import PROMPT_SUITE_VERSION, ShapesPrompt, prompt_suite
from polytok.eval.tokenizer_report import EvalReport
from polytok.eval.unified.evaluate import evaluate_unified
from polytok.eval.unified.report import CaptionedImage, PromptSamples, UnifiedReport

# Loaded on first use: they bring in the pretrained EfficientNet-Lite machinery.
_LAZY = {
    "SemanticFidelity": "polytok.eval.metrics.semantic_fidelity",
    "SemanticAgreement": "polytok.eval.metrics.semantic_fidelity",
    "EfficientNetFrechetDistance": "polytok.eval.metrics.semantic_fidelity",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'polytok.eval' has no attribute {name!r}")


__all__ = [
    "LPIPS",
    "PROMPT_SUITE_VERSION",
    "PSNR",
    "SEMANTIC_FIDELITY_SIZE",
    "SSIM",
    "CaptionedImage",
    "CodebookStats",
    "CodebookUsage",
    "DepthBatch",
    "DepthPlan",
    "DepthResult",
    "EfficientNetFrechetDistance",
    "EvalOptions",
    "EvalReport",
    "FeatureBank",
    "FeatureMoments",
    "FeatureSpace",
    "FrechetDistance",
    "InceptionFeatures",
    "InceptionScore",
    "MetricFamily",
    "MetricResult",
    "ModuleFeatures",
    "PromptSamples",
    "RealBatch",
    "SemanticAgreement",
    "SemanticFidelity",
    "ShapesPrompt",
    "TopKAccuracy",
    "UnifiedReport",
    "ZeroShotClassifier",
    "ZeroShotSpec",
    "build_class_embeddings",
    "build_lpips_vgg",
    "code_prefix",
    "evaluate_tokenizer",
    "evaluate_unified",
    "frechet_distance",
    "inception_weights_path",
    "linear_probe",
    "parse_caption",
    "prompt_suite",
    "psnr_per_image",
    "render_report",
    "ssim_per_image",
    "vgg16_weights_path",
    "write_report",
    "zero_shot_logits",
]
