"""Configuration of the unified model: a plain dataclass with defaults and named presets."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any, Literal

EmbeddingKind = Literal["learned", "codebook"]
DepthConditioning = Literal["running_sum", "previous"]
ImagePositions = Literal["none", "learned_2d"]

# A Llama-style causal LM small enough for tests and CPU runs; the vocabulary size is set from the text
# tokenizer plus the special tokens when the model is built.
TINY_BACKBONE: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}


# Options that were measured not to help and removed, with the value at which they changed nothing: models
# saved with them at that value still load.
RETIRED: dict[str, Any] = {"caption_summary": False, "image_input_noise": 0.0, "caption_input_noise": 0.0}


@dataclass
class UnifiedConfig:
    """How the unified model is built and trained.

    Attributes:
        backbone: a ``transformers`` causal-LM config as a dict (``model_type`` plus its keys; the vocab
            size is filled in) or the local path of a pretrained causal LM.
        backbone_trainable: False freezes the backbone's layers (its token embeddings and LM head, which
            hold the new special tokens, stay trainable).
        input_embedding: image positions' input: "learned" (one new table per sub-code, summed) or
            "codebook" (the tokenizer's frozen code vectors summed over the levels read, then an MLP).
        projector_hidden: hidden width of the "codebook" MLP projector (default: the backbone width).
        image_positions: "learned_2d" adds a learned (row, column) embedding of the grid cell each state
            predicts to the backbone's input (see ``ImagePositionEmbedding``); "none" leaves the backbone's
            1-d positions alone.
        depth_embedding: how earlier sub-codes enter the depth head: "learned" tables or "codebook"
            (frozen code vectors through a linear map).
        depth_conditioning: "running_sum" (step (l, c) reads the sum of all sub-codes of levels < l plus
            sub-code (l, c-1): the previous sub-code for MCQ, the partial reconstruction for RVQ, both for
            residual MCQ) or "previous" (only the sub-code just before).
        depth_width, depth_layers, depth_heads, depth_mlp_ratio: the depth head's causal transformer.
        shared_classifier: one classifier for all sub-codes (else one per sub-code).
        understanding_levels: levels the captioning direction reads (None: all levels).
        generation_levels: levels text -> image predicts and decodes, a prefix of the tokenizer's pixel
            levels (None: all of them). A residual tokenizer's later levels hold fine detail, most of
            the bits an image costs: evotok-tiny's first level of 4 keeps the colour, count and position
            of `shapes` objects as the shapes judge reads them, at about a fifth of the bits.
        caption_dropout: probability of training text-to-image on the empty caption (for guidance).
        object_loss_weight: weight of an image position's cross-entropy where objects cover its grid cell
            (1 on background, blended by the cell's coverage), read from the ``object_mask`` of datasets
            that give one (``shapes``); the image loss stays a weighted mean. The caption's object words
            decide only the few cells where an object starts, against thousands of bits of background
            texture, so this moves the image loss towards what the caption names. 1 (the default) or a
            dataset without masks: every position weighs the same.
        image_loss_weight, text_loss_weight: weights of the mean image and mean text cross-entropies.
        max_caption_tokens: captions are cut to this many text tokens.
        text_vocab_size: vocabulary size of a text tokenizer trained on the captions.
    """

    backbone: dict[str, Any] | str = field(default_factory=lambda: copy.deepcopy(TINY_BACKBONE))
    backbone_trainable: bool = True
    input_embedding: EmbeddingKind = "learned"
    projector_hidden: int | None = None
    image_positions: ImagePositions = "none"
    depth_embedding: EmbeddingKind = "learned"
    depth_conditioning: DepthConditioning = "running_sum"
    depth_width: int = 64
    depth_layers: int = 2
    depth_heads: int = 4
    depth_mlp_ratio: float = 4.0
    shared_classifier: bool = False
    understanding_levels: int | None = None
    generation_levels: int | None = None
    caption_dropout: float = 0.1
    object_loss_weight: float = 1.0
    image_loss_weight: float = 1.0
    text_loss_weight: float = 1.0
    max_caption_tokens: int = 64
    text_vocab_size: int = 512

    def __post_init__(self) -> None:
        for name, allowed in (
            ("input_embedding", ("learned", "codebook")),
            ("depth_embedding", ("learned", "codebook")),
            ("depth_conditioning", ("running_sum", "previous")),
            ("image_positions", ("none", "learned_2d")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.generation_levels is not None and self.generation_levels < 1:
            raise ValueError(f"generation_levels must be >= 1 or None, got {self.generation_levels}")
        if not self.object_loss_weight > 0.0:
            raise ValueError(f"object_loss_weight must be > 0, got {self.object_loss_weight}")
        if self.depth_width % self.depth_heads:
            raise ValueError(
                f"depth_width {self.depth_width} is not divisible by depth_heads {self.depth_heads}"
            )
        if min(self.depth_layers, self.max_caption_tokens) < 1:
            raise ValueError("depth_layers and max_caption_tokens must be >= 1")
        if isinstance(self.backbone, dict) and "model_type" not in self.backbone:
            raise ValueError("a backbone config dict needs 'model_type' (e.g. 'llama' or 'qwen2')")
        if isinstance(self.backbone, dict):
            check_backbone_keys(self.backbone)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> UnifiedConfig:
        """The config as a saved model records it. Options since removed (:data:`RETIRED`) are accepted
        at the value that left the model unchanged, and refused at any other."""
        data = dict(data)
        for name, inert in RETIRED.items():
            if name in data:
                value = data.pop(name)
                if value != inert:
                    raise ValueError(
                        f"this model was trained with {name}={value!r}, an option polytok no longer has "
                        "(it was not shown to help: docs/unified.md); load it with the version that made it"
                    )
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown unified model option(s) {', '.join(map(repr, unknown))} (a newer polytok's, or an "
                "edited file); load it with the version that made it"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}


def check_backbone_keys(backbone: dict[str, Any]) -> None:
    """Refuse a backbone key its ``transformers`` config class does not know (``hiden_size``): the class
    would keep it as a stray attribute and build the default instead. Known: the class's arguments, its
    defaults and aliases, and keys it takes in and files under another name (``rope_theta``)."""
    import inspect

    from transformers import CONFIG_MAPPING

    model_type = backbone["model_type"]
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"backbone model_type {model_type!r} is not a transformers model type")
    cls = CONFIG_MAPPING[model_type]
    known = set(inspect.signature(cls.__init__).parameters) | set(getattr(cls, "attribute_map", {}))
    known |= set(cls().to_dict()) | {"model_type"}
    candidates = [k for k in backbone if k not in known]
    if not candidates:
        return
    kept = cls(**{k: v for k, v in backbone.items() if k != "model_type"}).to_dict()
    unknown = sorted(k for k in candidates if k in kept)  # kept verbatim: nothing reads it
    if unknown:
        import difflib

        hints = [
            f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k)
            for k in unknown
            for close in [difflib.get_close_matches(k, sorted(known), n=1)]
        ]
        raise ValueError(
            f"backbone key(s) {', '.join(hints)} are not options of a {model_type!r} backbone "
            f"({cls.__name__}): it would keep them unread and build its default"
        )


def unified_preset(name: str) -> UnifiedConfig:
    """A named configuration: "tiny" (CPU-sized, for tests) or "small" (the sampling benchmark)."""
    if name == "tiny":
        return UnifiedConfig()
    if name == "small":
        backbone = {
            **TINY_BACKBONE,
            "hidden_size": 256,
            "intermediate_size": 768,
            "num_hidden_layers": 6,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "max_position_embeddings": 1024,
        }
        return UnifiedConfig(backbone=backbone, depth_width=128, depth_layers=2, depth_heads=4)
    raise ValueError(f"unknown unified preset {name!r}; expected 'tiny' or 'small'")
