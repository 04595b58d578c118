"""Built-in presets: the published systems (large) and small versions that train on one CPU (tiny).

Each preset is a plain config dict (the same schema as a user's YAML/JSON file); the registry parses it
into a :class:`~polytok.models.config.TokenizerConfig`.
"""

from __future__ import annotations

from typing import Any

from polytok.models.encoders import SIGLIP_LARGE_256

_VITAMIN_L = {
    "kind": "hybrid_vit",
    "width": 1024,
    "depth": 31,
    "heads": 16,
    "mlp": "geglu",
    "mlp_ratio": 2.0,
    "stem_width": 160,
    "stage_widths": [160, 320],
    "stage_depths": [2, 4],
}

UNITOK_L: dict[str, Any] = {
    "name": "unitok-l",
    "image_size": 256,
    "encoder": _VITAMIN_L,
    "projection": {"kind": "attention", "heads": 16, "mlp_ratio": 2.0},
    "post_projection": {"kind": "attention", "heads": 16, "mlp_ratio": 2.0},
    "quantizer": {
        "kind": "mcq",
        "dim": 64,
        "num_codebooks": 8,
        "codebook_size": 4096,
        "normalize": True,
        "update": "grad",
        "beta": 0.25,
    },
    "pixel_decoder": {
        "kind": "vit",
        "width": 1024,
        "depth": 31,
        "heads": 16,
        "mlp": "geglu",
        "mlp_ratio": 2.0,
        "up_widths": [320, 160],
        "up_depths": [4, 2],
    },
    "semantic": {
        "kind": "contrastive",
        "embed_dim": 768,
        "text_tower": {
            "kind": "transformer",
            "width": 768,
            "depth": 12,
            "heads": 12,
            "context_length": 77,
            "vocab": "clip_bpe",
            "mlp_ratio": 4.0,
        },
    },
}

EVOTOK_L: dict[str, Any] = {
    "name": "evotok-l",
    "image_size": 256,
    "encoder": {
        "kind": "siglip",  # SiglipVisionModel, as EvoTok loads the SigLIP2-256 checkpoint
        "hf_config": dict(SIGLIP_LARGE_256),
        "weights": "google/siglip2-large-patch16-256",
        "feature_layer": -2,
        "freeze_last_blocks": 1,
    },
    "projection": {"kind": "tanh_mlp", "hidden": 1024},
    "post_projection": {"kind": "identity"},
    "quantizer": {
        "kind": "rvq",
        "dim": 32,
        "levels": 16,
        "codebook_size": 32768,
        "update": "ema",
        "decay": 0.99,
        "ema_warmup_steps": 2000,
        # EvoTok's EMA update: cluster sizes move during the warm-up (vector sums held), and normalised
        # cluster sizes count as at least 1.
        "ema_warmup": "counts_only",
        "ema_min_cluster_size": 1.0,
        # EvoTok's training script: codes used less than once per step on average are restarted,
        # and the commitment loss has weight 1.
        "dead_code_threshold": 1.0,
        "beta": 1.0,
    },
    "pixel_depth": 4,
    "pixel_decoder": {
        "kind": "cnn",
        "z_channels": 256,
        "ch": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
    },
    "semantic": {
        "kind": "distill",
        "decoder_width": 1024,
        "decoder_depth": 3,
        "decoder_heads": 12,
        "decoder_layout": "beit",
        "feature_dim": 1024,
        "teacher": "encoder",
    },
}

# LlamaGen's VQ-16 (FoundationVision/LlamaGen, tokenizer/tokenizer_image/vq_model.py; Janus' generation
# tokenizer is the same network): a VQGAN CNN down to stride 16, a 1 x 1 conv (quant_conv) to 8-d codes, one
# codebook of 16384 L2-normalised codes, a 1 x 1 conv (post_quant_conv) back to 256 channels and the mirrored
# CNN up. No semantic branch.
_LLAMAGEN_CNN = {"ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2}
LLAMAGEN_VQ16: dict[str, Any] = {
    "name": "llamagen-vq16",
    "image_size": 256,
    "encoder": {"kind": "cnn", "width": 256, **_LLAMAGEN_CNN},
    "projection": {"kind": "linear"},
    "post_projection": {"kind": "identity"},
    "quantizer": {
        "kind": "vq",
        "dim": 8,
        "codebook_size": 16384,
        "normalize": True,
        "update": "grad",
        "beta": 0.25,
    },
    "pixel_decoder": {"kind": "cnn", "z_channels": 256, **_LLAMAGEN_CNN},
    "semantic": {"kind": "none"},
}

# The tiny presets mirror the 256 px originals at 64 px: a 16 x 16 token grid (stride 4), widths of 128,
# three transformer blocks on each side, and a linear patch head instead of conv upsampling (the cheapest
# decoder per step on a CPU; both decoders stay available by config). Each adds the linear patch codec
# (``linear_path``: the leading principal components of its 4 x 4 patches, fitted on the first batch) to its
# latent and its reconstruction, and k-means initialises its codebooks on that batch: at the hundreds of
# steps a CPU affords, the networks alone do not learn the sub-patch geometry that tells a star from a
# cross (docs/study.md, section 6.2).
_TINY_HYBRID = {
    "kind": "hybrid_vit",
    "width": 128,
    "depth": 3,
    "heads": 4,
    "mlp": "geglu",
    "mlp_ratio": 2.0,
    "stem_width": 32,
    "stage_widths": [],
    "stage_depths": [],
}
_TINY_VIT_DECODER = {
    "kind": "vit",
    "width": 128,
    "depth": 3,
    "heads": 4,
    "mlp": "geglu",
    "mlp_ratio": 2.0,
    "up_widths": [],
    "up_depths": [],
    "pos_embed": True,
}
_MINILM = {"kind": "minilm-l6", "freeze": True}
# The shipped unitok-tiny / polytok-tiny checkpoints were trained with the earlier projection layout:
# head-averaged widening attention and GeGLU MLPs without their own LayerNorm (unitok-l uses UniTok's).
_TINY_ATTENTION_PROJECTION = {
    "kind": "attention",
    "heads": 4,
    "widening_attention": "head_average",
    "mlp_norm": False,
}

UNITOK_TINY: dict[str, Any] = {
    "name": "unitok-tiny",
    "image_size": 64,
    "linear_path": True,
    # 8 latent channels (2 of the 8 codebooks) the encoder's alone, read by the CLIP head through the
    # codes: the semantic loss writes there (the gated linear path keeps the other 24 for pixels). The
    # stem starts from EfficientNet-Lite0 as UniTok's encoder starts from a CLIP model: from scratch, the
    # shape came late and only in some seeds (docs/study.md, sections 7.2-7.3).
    "semantic_channels": 8,
    "encoder": {**_TINY_HYBRID, "stem": "efficientnet-lite0"},
    "projection": _TINY_ATTENTION_PROJECTION,
    "post_projection": _TINY_ATTENTION_PROJECTION,
    "quantizer": {
        "kind": "mcq",
        "dim": 32,
        "num_codebooks": 8,
        "codebook_size": 512,
        # plain, not UniTok's cosine codes: through cosine 4-d codes the linear path kept 0.88 of the
        # held-out shapes and zero-shot fell to colour-only level (docs/study.md, section 6.2)
        "normalize": False,
        "update": "grad",
        "kmeans_init": True,
    },
    "pixel_decoder": _TINY_VIT_DECODER,
    "semantic": {"kind": "contrastive", "embed_dim": 128, "text_tower": _MINILM, "head_input": "codes"},
}

EVOTOK_TINY: dict[str, Any] = {
    "name": "evotok-tiny",
    "image_size": 64,
    "linear_path": True,
    "encoder": {
        "kind": "vit",
        "patch_size": 4,
        "width": 128,
        "depth": 3,
        "heads": 4,
        "mlp": "mlp",
        "mlp_ratio": 4.0,
    },
    "projection": {"kind": "tanh_mlp", "hidden": 128},
    "post_projection": {"kind": "linear"},
    "quantizer": {
        "kind": "rvq",
        "dim": 32,
        "levels": 8,
        "codebook_size": 1024,
        "update": "ema",
        "decay": 0.99,
        "kmeans_init": True,
        "dead_code_threshold": 0.01,
    },
    "pixel_depth": 4,
    "pixel_decoder": _TINY_VIT_DECODER,
    "semantic": {
        "kind": "distill",
        "decoder_width": 128,
        "decoder_depth": 2,
        "decoder_heads": 4,
        "decoder_layout": "sincos",  # the shipped checkpoint's layout
        "feature_dim": 112,
        "teacher": "efficientnet-lite0",
        "teacher_feature_index": 3,
        "teacher_input_size": 128,
    },
}

POLYTOK_TINY: dict[str, Any] = {
    "name": "polytok-tiny",
    "image_size": 64,
    "linear_path": True,
    "encoder": _TINY_HYBRID,
    "projection": _TINY_ATTENTION_PROJECTION,
    "post_projection": _TINY_ATTENTION_PROJECTION,
    "quantizer": {
        "kind": "rvq",
        "dim": 32,
        "levels": 4,
        "num_codebooks": 8,
        "codebook_size": 256,
        "update": "grad",
        "kmeans_init": True,
    },
    "pixel_depth": 2,
    "pixel_decoder": _TINY_VIT_DECODER,
    "semantic": {"kind": "contrastive", "embed_dim": 128, "text_tower": _MINILM},
}

BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    "unitok-l": UNITOK_L,
    "evotok-l": EVOTOK_L,
    "llamagen-vq16": LLAMAGEN_VQ16,
    "unitok-tiny": UNITOK_TINY,
    "evotok-tiny": EVOTOK_TINY,
    "polytok-tiny": POLYTOK_TINY,
}

# Published parameter counts (millions) per part, for the presets that reproduce a paper.
PUBLISHED_PARAMETERS: dict[str, dict[str, float]] = {
    "unitok-l": {"encoder": 332.0, "pixel_decoder": 352.0, "text_tower": 124.0},
    "llamagen-vq16": {"total": 72.0},  # LlamaGen's README: vq_ds16_c2i, 72M
}
