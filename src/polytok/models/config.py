"""Typed tokenizer configuration: nested dataclasses, built strictly from dicts, JSON or YAML.

Parsing, overrides and errors are the library's one config layer (:mod:`polytok.config`): unknown keys
and wrong value types are refused with the dotted name of the offending key. A config names what it is:
its ``encoder``, ``quantizer``, ``pixel_decoder`` and ``semantic`` sections, each with its ``kind``, are
required in a file or dict (``{}`` is refused at load, it does not silently become the default model).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from polytok.config import REQUIRED, ConfigError, from_dict, load_file


@dataclass
class EncoderConfig:
    """Image encoder.

    kind: "hybrid_vit" (ViTamin-style conv stem + transformer), "vit" (patch embedding + transformer,
    sin-cos positions), "siglip2" / "siglip" (a ``transformers`` SigLIP(2) vision tower), "cnn" (the
    VQGAN-style CNN of LlamaGen: ``ch``, ``ch_mult``, ``num_res_blocks``, ``norm_groups``; ``width`` is
    its output channels, stride ``2 ** (len(ch_mult) - 1)``).
    For the ``transformers`` kinds, ``hf_config`` holds the vision config, ``weights`` a local directory
    or a Hugging Face id already in the local cache (None: random init), and ``feature_layer`` which
    hidden state to use (-2: second-to-last layer). ``freeze_last_blocks`` freezes the final blocks,
    whose output is unused when reading an earlier layer. ``stem`` (hybrid_vit, no stages): "conv"
    (ViTamin's) or "efficientnet-lite0" (its front end to stride 4, starting from its ImageNet weights,
    :class:`~polytok.nn.efficient_stem.EfficientLiteStem`).
    """

    kind: Literal["hybrid_vit", "vit", "siglip2", "siglip", "cnn"] = field(
        default="hybrid_vit", metadata=REQUIRED
    )
    width: int = 1024
    depth: int = 31
    heads: int = 16
    mlp: Literal["geglu", "mlp"] = "geglu"
    mlp_ratio: float = 2.0
    stem_width: int = 160
    stage_widths: list[int] = field(default_factory=lambda: [160, 320])
    stage_depths: list[int] = field(default_factory=lambda: [2, 4])
    patch_size: int = 16
    hf_config: dict[str, Any] | None = None
    weights: str | None = None
    feature_layer: int = -1
    freeze_last_blocks: int = 0
    stem: Literal["conv", "efficientnet-lite0"] = "conv"
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    grad_checkpointing: bool = False
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    norm_groups: int = 32


@dataclass
class ProjectionConfig:
    """Map between the backbone width and the code width: "attention" (UniTok), "linear", "tanh_mlp"
    (EvoTok's Linear-Tanh-Linear) or "identity" (widths must match).

    For "attention": ``widening_attention`` "concat" (UniTok: heads of ``out_dim // heads`` channels,
    concatenated) or "head_average" (heads of ``in_dim // heads`` channels averaged, then repeated: the
    layout the shipped tiny checkpoints were trained with); ``mlp_norm`` gives the GeGLU MLP its own
    inner LayerNorm (UniTok; False in the shipped tiny checkpoints). See
    :class:`polytok.nn.AttentionProjection`.
    """

    kind: Literal["attention", "linear", "tanh_mlp", "identity"] = "attention"
    heads: int | None = None
    mlp_ratio: float = 2.0
    hidden: int | None = None
    widening_attention: Literal["concat", "head_average"] = "concat"
    mlp_norm: bool = True


@dataclass
class QuantizerConfig:
    """Quantizer (see :mod:`polytok.quant`). kind "vq": one codebook; "mcq": ``num_codebooks`` codebooks
    splitting the channels; "rvq": ``levels`` residual levels, each with ``num_codebooks`` codebooks."""

    kind: Literal["vq", "mcq", "rvq"] = field(default="mcq", metadata=REQUIRED)
    dim: int = 64
    codebook_size: int = 4096
    num_codebooks: int = 1
    levels: int = 1
    codebook_dim: int | None = None
    normalize: bool = False
    update: Literal["grad", "ema"] = "grad"
    beta: float = 0.25
    decay: float = 0.99
    ema_warmup_steps: int = 0
    ema_warmup: Literal["frozen", "counts_only"] = "frozen"
    ema_min_cluster_size: float = 0.0
    kmeans_init: bool = False
    dead_code_threshold: float = 0.0
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    rotation_trick: bool = False
    shared_codebook: bool = False
    quantize_dropout: float = 0.0


@dataclass
class PixelDecoderConfig:
    """Pixel decoder. "vit": transformer blocks on the post-projected tokens then the conv upsampler
    (UniTok); "cnn": VQGAN-style CNN straight on the code vectors (EvoTok). ``pos_embed`` adds sin-cos
    positions before the "vit" blocks (UniTok has none; small models learn faster with them). Empty
    ``up_widths`` replace the conv upsampler by a linear patch head (each token -> one stride x stride
    patch, as in ViT-VQGAN), the cheap choice on a CPU. ``z_channels`` ("cnn"): a 1 x 1 convolution
    from the code width to this many channels before the CNN (EvoTok's ``post_quant_conv``: 256)."""

    kind: Literal["vit", "cnn"] = field(default="vit", metadata=REQUIRED)
    width: int = 1024
    depth: int = 31
    heads: int = 16
    mlp: Literal["geglu", "mlp"] = "geglu"
    mlp_ratio: float = 2.0
    up_widths: list[int] = field(default_factory=lambda: [320, 160])
    up_depths: list[int] = field(default_factory=lambda: [4, 2])
    # False: the upsampler's first conv keeps the token resolution (x 2 ** (stages + 1) in all)
    upsample_first: bool = True
    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 1, 2, 2, 4])
    num_res_blocks: int = 2
    norm_groups: int = 32
    pos_embed: bool = False
    z_channels: int | None = None
    grad_checkpointing: bool = False


@dataclass
class TextTowerConfig:
    """Text side of the contrastive branch.

    kind "transformer": a CLIP-style causal transformer trained here (``vocab`` "clip_bpe" uses the BPE
    vocabulary bundled with ``open_clip_torch``; "bytes" a 259-token byte vocabulary). Any other kind is
    a pretrained sentence encoder from :func:`polytok.pretrained.load_pretrained` (e.g. "minilm-l6"),
    frozen when ``freeze`` (then it is not stored in checkpoints; it is rebuilt from its package).
    """

    kind: str = "transformer"
    width: int = 768
    depth: int = 12
    heads: int = 12
    context_length: int = 77
    vocab: Literal["clip_bpe", "bytes"] = "clip_bpe"
    mlp_ratio: float = 4.0
    freeze: bool = True


@dataclass
class SemanticConfig:
    """Semantic branch, fed by the full code.

    kind "contrastive" (UniTok): mean pool -> LN -> Linear -> L2 norm, against ``text_tower`` with a
    learnable logit scale. kind "distill" (EvoTok): a ViT semantic decoder maps the code tokens to
    ``feature_dim``-d features (``decoder_layout`` "beit": EvoTok's, with a class token, learned positions
    and a Linear-Tanh-Linear head; "sincos": sin-cos positions and one Linear out, the layout of the
    shipped evotok-tiny checkpoint) distilled onto a frozen ``teacher`` ("efficientnet-lite0" and the like
    from :mod:`polytok.pretrained`, "encoder" for the pretrained image encoder's own weights, or None:
    supply a module with ``Tokenizer.set_teacher``). The teacher's input is resized so that its feature
    map ``teacher_feature_index`` falls on the token grid, or to ``teacher_input_size`` (its map then
    resized to the grid: cheaper when the token grid is fine). "none": no semantic branch.
    ``head_input`` (contrastive): what the CLIP head pools, "tokens" (UniTok: the post-projection of the
    code vectors) or "codes" (the code vectors themselves, so the embedding is a linear map of their
    mean after a LayerNorm and the loss can be met only by codes that carry it).
    """

    kind: Literal["contrastive", "distill", "none"] = field(default="contrastive", metadata=REQUIRED)
    embed_dim: int = 768
    decoder_width: int = 1024
    decoder_depth: int = 3
    decoder_heads: int = 16
    decoder_layout: Literal["beit", "sincos"] = "beit"
    feature_dim: int = 1024
    teacher: str | None = None
    teacher_feature_index: int = 3
    teacher_input_size: int | None = None
    text_tower: TextTowerConfig = field(default_factory=TextTowerConfig)
    logit_scale_init: float = 14.285714285714286  # 1 / 0.07 (stored as its log)
    logit_scale_max: float = 100.0
    head_input: Literal["tokens", "codes"] = "tokens"


@dataclass
class TokenizerConfig:
    """Everything that defines a tokenizer. ``pixel_depth``: residual levels the pixel decoder reads
    (None: all). ``image_size``: the training resolution (any multiple of the stride works).
    ``linear_path``: add a linear patch codec (:class:`~polytok.nn.patch_pca.PatchPCA`, fitted on the
    first training batch) to the latent and to the reconstruction, the networks beside it scaled by
    learnable gates that start at ``linear_path_gate_init``, so training starts from (near) the best
    linear code of the token grid. A gate of exactly 0 never opens under Adam (its networks get no
    gradient until it moves, and its own gradient is noise until they learn).
    ``linear_path_gates``: False drops the scalar gates: the encoder path enters the linear channels
    through a zero-initialised linear map and the pixel decoder's last layer starts at zero, so training
    still starts from the linear code exactly, but every network gets full-size gradients after the first
    step. ``semantic_channels``: the last channels of the latent that the encoder path fills alone (the
    linear path fills the others): with multi-codebook codes, whole codebooks the pixel codec leaves to
    the network. They are left unbounded: per-codebook unit norm or tanh kept a shape classifier on their
    mean from learning within 600 steps where the raw channels learnt it (docs/study.md, section 7)."""

    name: str = "custom"
    image_size: int = 256
    encoder: EncoderConfig = field(default_factory=EncoderConfig, metadata=REQUIRED)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    post_projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig, metadata=REQUIRED)
    pixel_depth: int | None = None
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig, metadata=REQUIRED)
    semantic: SemanticConfig = field(default_factory=SemanticConfig, metadata=REQUIRED)
    linear_path: bool = False
    linear_path_gate_init: float = 0.0
    linear_path_gates: bool = True
    semantic_channels: int = 0

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizerConfig:
        """Strict parse; raises :class:`~polytok.config.ConfigError` naming the offending key."""
        return from_dict(cls, data)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenizerConfig:
        """Load a ``.json``, ``.yaml`` or ``.yml`` file; errors name the file."""
        data = load_file(path)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err


def _positive(cfg: Any, key: str, names: list[str]) -> None:
    for n in names:
        v = getattr(cfg, n)
        if v is not None and v <= 0:
            raise ConfigError(f"config key {f'{key}.{n}' if key else n} must be positive, got {v}")


def validate(cfg: TokenizerConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    e, q, p, s = cfg.encoder, cfg.quantizer, cfg.pixel_decoder, cfg.semantic
    _positive(e, "encoder", ["width", "depth", "heads", "stem_width", "patch_size", "mlp_ratio"])
    _positive(e, "encoder", ["ch", "num_res_blocks", "norm_groups"])
    if e.kind == "cnn" and (not e.ch_mult or any(m <= 0 for m in e.ch_mult)):
        raise ConfigError(f"config key encoder.ch_mult must be non-empty and positive, got {e.ch_mult}")
    _positive(q, "quantizer", ["dim", "codebook_size", "num_codebooks", "levels", "codebook_dim"])
    _positive(
        p, "pixel_decoder", ["width", "depth", "heads", "ch", "num_res_blocks", "norm_groups", "z_channels"]
    )
    _positive(cfg, "", ["image_size"])
    _positive(s, "semantic", ["teacher_input_size"])
    if e.kind == "hybrid_vit" and len(e.stage_widths) != len(e.stage_depths):
        raise ConfigError("config keys encoder.stage_widths and encoder.stage_depths must have equal length")
    if e.kind == "hybrid_vit" and e.stem == "efficientnet-lite0" and e.stage_widths:
        raise ConfigError(
            "config key encoder.stem efficientnet-lite0 is the whole stem to stride 4: set "
            "encoder.stage_widths and encoder.stage_depths to []"
        )
    if len(e.mean) != 3 or len(e.std) != 3 or any(v <= 0 for v in e.std):
        raise ConfigError("config keys encoder.mean / encoder.std must hold 3 values (std > 0)")
    if q.kind != "rvq" and q.levels != 1:
        raise ConfigError(f"config key quantizer.levels is {q.levels} but only kind 'rvq' has levels")
    if not q.ema_min_cluster_size >= 0:
        raise ConfigError(
            f"config key quantizer.ema_min_cluster_size must be >= 0, got {q.ema_min_cluster_size}"
        )
    if q.kind == "vq" and q.num_codebooks != 1:
        raise ConfigError("config key quantizer.num_codebooks must be 1 for kind 'vq' (use 'mcq')")
    if cfg.pixel_depth is not None and not 1 <= cfg.pixel_depth <= q.levels:
        raise ConfigError(
            f"config key pixel_depth must be in [1, {q.levels}] (quantizer levels), got {cfg.pixel_depth}"
        )
    if p.kind == "vit" and len(p.up_widths) != len(p.up_depths):
        raise ConfigError(
            "config keys pixel_decoder.up_widths and pixel_decoder.up_depths must have equal length"
        )
    if cfg.semantic_channels:
        if not cfg.linear_path or not 0 < cfg.semantic_channels < q.dim:
            raise ConfigError(
                f"config key semantic_channels ({cfg.semantic_channels}) needs linear_path and must lie in "
                f"(0, quantizer.dim = {q.dim})"
            )
        chunk = q.dim // q.num_codebooks
        if q.normalize and cfg.semantic_channels % chunk:
            raise ConfigError(
                f"config key semantic_channels ({cfg.semantic_channels}) must be whole codebooks of "
                f"{chunk} channels with normalised codes"
            )
    if s.logit_scale_init <= 0 or s.logit_scale_max < s.logit_scale_init:
        raise ConfigError(
            "config keys semantic.logit_scale_init and semantic.logit_scale_max must satisfy 0 < init <= max"
        )
