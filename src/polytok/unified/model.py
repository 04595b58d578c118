"""The unified model: one causal LM over text tokens and image codes, captioning and generating images.

    text positions  : backbone token embeddings       -> backbone -> LM head        (text loss)
    image positions : ImageInputEmbedding(codes)      -> backbone -> DepthHead      (image loss)

The backbone is any ``transformers`` causal LM, built from a config or loaded from a local path, fed
``inputs_embeds``. Checkpoints (``save_pretrained``) hold ``unified.json`` (config, code layout, the
identity of the image tokenizer), ``backbone_config.json``, ``text_tokenizer.json`` and
``model.safetensors``; everything is written to a temporary name and renamed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polytok.losses.reconstruction import object_pixel_weight
from polytok.models.identity import TokenizerMismatchError, identity_difference, tokenizer_identity
from polytok.unified.config import UnifiedConfig
from polytok.unified.depth_head import DepthHead
from polytok.unified.embed import CodeVectors, ImageInputEmbedding, ImagePositionEmbedding
from polytok.unified.layout import CodeLayout, tokenizer_code_vectors
from polytok.unified.sequence import IGNORE, SequenceBatch, SequenceFormat, SpecialTokens
from polytok.unified.text_tokenizer import FILE_NAME as TEXT_FILE_NAME
from polytok.unified.text_tokenizer import TextTokenizer

META_NAME = "unified.json"
IMAGE_TOKENIZER_DIR = "image_tokenizer"  # the image tokenizer saved beside the model
BACKBONE_CONFIG_NAME = "backbone_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "polytok-unified/1"


@dataclass
class UnifiedOutput:
    """Losses of one batch: ``loss`` = image weight x image CE + text weight x text CE, each CE the mean
    over its targets (0 when the batch has none)."""

    loss: Tensor
    image_loss: Tensor
    text_loss: Tensor
    image_targets: int
    text_targets: int


def build_backbone(spec: dict[str, Any] | str, vocab_size: int, backbone_config: Any = None) -> nn.Module:
    """A ``transformers`` causal LM whose vocabulary holds at least ``vocab_size`` tokens.

    ``spec``: config keys with ``model_type`` (random init) or a local path (pretrained weights).
    ``backbone_config``: a ready config (checkpoint loading; no weights are read).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if backbone_config is not None:
        return AutoModelForCausalLM.from_config(backbone_config)
    if isinstance(spec, dict):
        keys = {**spec, "vocab_size": vocab_size}
        try:
            config = AutoConfig.for_model(**keys)
        except ValueError as exc:
            raise ValueError(
                f"backbone model_type {spec.get('model_type')!r} is not a transformers model: {exc}"
            ) from exc
        return AutoModelForCausalLM.from_config(config)
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"backbone path {path} is not a folder with a transformers causal LM")
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model


class UnifiedModel(nn.Module):
    """Captioning and text-to-image generation over the codes of one image tokenizer.

    Args:
        config: the :class:`UnifiedConfig`.
        layout: the image tokenizer's :class:`CodeLayout`.
        text_tokenizer: the :class:`TextTokenizer` of the captions.
        code_vectors: the tokenizer's code vectors (L, C, K, d), needed by the "codebook" embeddings.
        tokenizer_id: the image tokenizer's identity (see ``polytok.models.identity``).
        backbone_config: a ready ``transformers`` config to build the backbone from (checkpoints).

    Use :meth:`from_tokenizer` to build one for a polytok ``Tokenizer``.
    """

    def __init__(
        self,
        config: UnifiedConfig,
        layout: CodeLayout,
        text_tokenizer: TextTokenizer,
        *,
        code_vectors: Tensor | None = None,
        tokenizer_id: dict[str, str] | None = None,
        backbone_config: Any = None,
    ) -> None:
        super().__init__()
        self.config, self.layout, self.text_tokenizer = config, layout, text_tokenizer
        self.tokenizer_id = tokenizer_id
        self.special = SpecialTokens.after(text_tokenizer.vocab_size)
        self.format = SequenceFormat(
            layout, self.special, config.understanding_levels, config.max_caption_tokens
        )
        self.backbone = build_backbone(config.backbone, self.special.vocab_size, backbone_config)
        hidden = int(self.backbone.config.hidden_size)
        longest = layout.num_positions + config.max_caption_tokens + 6  # the longest sequence of the format
        max_positions = getattr(self.backbone.config, "max_position_embeddings", None)
        if max_positions is not None and longest > max_positions:
            raise ValueError(
                f"sequences reach {longest} tokens ({layout.num_positions} image positions + "
                f"{config.max_caption_tokens} caption tokens + 6 special) but the backbone's "
                f"max_position_embeddings is {max_positions}"
            )
        needs_vectors = "codebook" in (config.input_embedding, config.depth_embedding)
        if needs_vectors and code_vectors is None:
            raise ValueError(
                "the 'codebook' embeddings need the tokenizer's code vectors (from_tokenizer passes them)"
            )
        self.code_vectors = CodeVectors(code_vectors) if needs_vectors else None
        self.image_embed = ImageInputEmbedding(
            layout, hidden, config.input_embedding, self.code_vectors, config.projector_hidden
        )
        self.image_positions = (
            ImagePositionEmbedding(layout.grid, hidden) if config.image_positions == "learned_2d" else None
        )
        self.depth_head = DepthHead(layout, hidden, config, self.code_vectors)
        if not config.backbone_trainable:
            self.backbone.requires_grad_(False)
            self.backbone.get_input_embeddings().requires_grad_(True)  # rows of the new special tokens
            self.backbone.get_output_embeddings().requires_grad_(True)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        text_tokenizer: TextTokenizer,
        config: UnifiedConfig | None = None,
        *,
        grid: tuple[int, int] | None = None,
    ) -> UnifiedModel:
        """A new model for the codes of polytok ``Tokenizer`` ``tokenizer`` (its identity is recorded)."""
        config = config or UnifiedConfig()
        vectors = None
        if "codebook" in (config.input_embedding, config.depth_embedding):
            vectors = tokenizer_code_vectors(tokenizer)
        return cls(
            config,
            generation_layout(CodeLayout.from_tokenizer(tokenizer, grid), config.generation_levels),
            text_tokenizer,
            code_vectors=vectors,
            tokenizer_id=tokenizer_identity(tokenizer),
        )

    # -- pieces used by training and sampling -----------------------------------------------------

    @property
    def base(self) -> nn.Module:
        """The backbone without its LM head: inputs_embeds -> last hidden states."""
        return self.backbone.base_model

    @property
    def device(self) -> torch.device:
        return self.backbone.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.get_input_embeddings().weight.dtype

    def embed_text(self, token_ids: Tensor) -> Tensor:
        """(B, T) ids -> (B, T, hidden)."""
        return self.backbone.get_input_embeddings()(token_ids)

    def embed_image(self, codes: Tensor, levels: Tensor | int) -> Tensor:
        """(B, n, L', C) codes, the levels read -> (B, n, hidden)."""
        return self.image_embed(codes, levels).to(self.dtype)

    def text_logits(self, hidden: Tensor) -> Tensor:
        """(..., hidden) -> (..., vocab) logits of the next text token."""
        return self.backbone.get_output_embeddings()(hidden)

    def run_backbone(
        self,
        embeds: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Any]:
        """(B, T, hidden) inputs -> (last hidden states (B, T, hidden), the updated KV cache or None).

        ``attention_mask`` covers the cached tokens and the new ones, (B, past + T).
        """
        out = self.base(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state, (out.past_key_values if use_cache else None)

    def image_position(self, index: int) -> Tensor | float:
        """What is added to the input of the token that predicts image position ``index``: its grid cell's
        (hidden,) embedding with ``image_positions: learned_2d``, else 0."""
        if self.image_positions is None:
            return 0.0
        return self.image_positions(torch.tensor(index, device=self.device)).to(self.dtype)

    def embed_t2i_prompt(self, token_ids: Tensor) -> Tensor:
        """(B, T) left-padded text -> image prompts, each ending with <boi> -> (B, T, hidden) inputs."""
        emb = self.embed_text(token_ids)
        if self.image_positions is None:
            return emb
        last = emb[:, -1:] + self.image_position(0)
        return torch.cat([emb[:, :-1], last], dim=1)

    def embed_image_step(self, codes: Tensor, index: int) -> Tensor:
        """Codes (B, 1, pixel_levels, C) of image position ``index`` -> (B, 1, hidden), the input from which
        position ``index + 1`` is predicted."""
        emb = self.embed_image(codes, self.layout.pixel_levels)
        if index + 1 < self.layout.num_positions:
            emb = emb + self.image_position(index + 1)
        return emb

    def embed_sequence(self, batch: SequenceBatch) -> Tensor:
        """Inputs of a :class:`SequenceBatch`: (B, T, hidden), image positions from their codes."""
        emb = self.embed_text(batch.token_ids)
        image = self.embed_image(batch.image_codes, batch.input_levels)  # (B, N, hidden)
        n = self.layout.num_positions
        pos = batch.image_start[:, None] + torch.arange(n, device=emb.device)
        emb = emb.scatter(1, pos[..., None].expand(-1, -1, emb.shape[-1]), image)
        before = (pos - 1)[..., None].expand(-1, -1, emb.shape[-1])  # the token before position i predicts it
        if self.image_positions is not None:
            cells = self.image_positions(torch.arange(n, device=emb.device)).to(emb.dtype)
            emb = emb.scatter_add(1, before, cells.expand(emb.shape[0], -1, -1))
        return emb

    # -- training ---------------------------------------------------------------------------------

    def _image_logits(self, batch: SequenceBatch, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced depth-head logits of the text -> image rows: ((R, N, S, K), targets (R, N, S))."""
        rows = batch.image_target.nonzero().flatten()
        n, s = self.layout.num_positions, self.layout.generation_depth
        # img_i is predicted from the state of the token before it: <boi> for img_0
        pos = batch.image_start[rows, None] - 1 + torch.arange(n, device=hidden.device)
        h = hidden[rows[:, None], pos]  # (R, N, hidden)
        targets = batch.image_codes[rows, :, : self.layout.pixel_levels].reshape(len(rows), n, s)
        logits = self.depth_head(h.reshape(-1, h.shape[-1]), targets.reshape(-1, s)[:, : s - 1])
        return logits.reshape(len(rows), n, s, -1), targets

    def image_position_weights(self, batch: SequenceBatch) -> Tensor | None:
        """(R, N) loss weights of the image positions of the R text -> image rows: 1 on background,
        ``object_loss_weight`` on cells objects cover (linear in the coverage); None when every position
        weighs the same (weight 1, or no ``object_cover`` in the batch)."""
        w = self.config.object_loss_weight
        if w == 1.0 or batch.object_cover is None:
            return None
        cover = batch.object_cover[batch.image_target.to(batch.object_cover.device)]
        return object_pixel_weight(cover, w)  # the tokenizers' per-pixel weights, here per grid cell

    def image_logits(self, batch: SequenceBatch) -> Tensor:
        """Teacher-forced logits (R, N, S, K) of the pixel prefix of the R text -> image rows of ``batch``."""
        hidden, _ = self.run_backbone(self.embed_sequence(batch), batch.attention_mask, batch.position_ids)
        return self._image_logits(batch, hidden)[0]

    def forward(self, batch: SequenceBatch) -> UnifiedOutput:
        """Losses of a mixed batch; only the target part of each sequence is predicted."""
        hidden, _ = self.run_backbone(self.embed_sequence(batch), batch.attention_mask, batch.position_ids)
        zero = hidden.new_zeros((), dtype=torch.float32)
        text_loss, image_loss = zero, zero
        text_sel = batch.text_targets != IGNORE
        n_text = int(text_sel.sum())
        if n_text:
            logits = self.text_logits(hidden[text_sel]).float()
            text_loss = F.cross_entropy(logits, batch.text_targets[text_sel])
        n_image = 0
        if bool(batch.image_target.any()):
            logits, targets = self._image_logits(batch, hidden)
            n_image = targets.numel()
            ce = F.cross_entropy(logits.float().reshape(n_image, -1), targets.reshape(-1), reduction="none")
            weights = self.image_position_weights(batch)
            if weights is None:
                image_loss = ce.mean()
            else:  # a weighted mean over positions (and their sub-codes)
                w = weights[:, :, None].expand(targets.shape).reshape(-1)
                image_loss = (ce * w).sum() / w.sum()
        loss = self.config.image_loss_weight * image_loss + self.config.text_loss_weight * text_loss
        return UnifiedOutput(loss, image_loss, text_loss, n_image, n_text)

    # -- images through the recorded tokenizer ----------------------------------------------------

    def check_tokenizer(self, tokenizer: Any) -> None:
        """TokenizerMismatchError unless ``tokenizer`` is the one this model was trained on."""
        check_identity(self.tokenizer_id, tokenizer)

    def decode_images(self, codes: Tensor, tokenizer: Any) -> Tensor:
        """Generated codes (B, h, w, *pixel code shape) -> images (B, 3, H, W) by the recorded tokenizer."""
        self.check_tokenizer(tokenizer)
        return tokenizer.decode(codes.to(tokenizer.device))

    # -- checkpoints ------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, image_tokenizer: Any = None) -> Path:
        """Write the model's folder (``unified.json``, ``model.safetensors``, ``backbone_config.json``,
        ``text_tokenizer.json``, and ``image_tokenizer/`` when ``image_tokenizer`` is given) in the
        format every polytok save uses (:func:`polytok.storage.save_folder`): staged aside, checksummed in
        ``manifest.json``, swapped in whole; a folder holding other files is refused."""
        from safetensors.torch import save_model

        from polytok import storage

        if image_tokenizer is not None:
            self.check_tokenizer(image_tokenizer)

        def write(staging: Path) -> None:
            save_model(self, str(staging / WEIGHTS_NAME))
            self.text_tokenizer.save(staging)
            (staging / BACKBONE_CONFIG_NAME).write_text(self.backbone.config.to_json_string())
            meta = {
                "format": FORMAT,
                "config": self.config.to_dict(),
                "layout": self.layout.to_dict(),
                "tokenizer": self.tokenizer_id,
                "code_vectors": (
                    list(self.code_vectors.vectors.shape) if self.code_vectors is not None else None
                ),
            }
            (staging / META_NAME).write_text(json.dumps(meta, indent=2))
            if image_tokenizer is not None:
                image_tokenizer.save_pretrained(staging / IMAGE_TOKENIZER_DIR)

        known = {META_NAME, WEIGHTS_NAME, BACKBONE_CONFIG_NAME, TEXT_FILE_NAME, IMAGE_TOKENIZER_DIR}
        return storage.save_folder(
            Path(directory), write, known=known, what="unified model", extra={"kind": "unified model"}
        )

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"
    ) -> UnifiedModel:
        from safetensors import SafetensorError
        from safetensors.torch import load_model
        from transformers import AutoConfig

        from polytok import storage

        root = Path(directory)
        if not (storage.resolve(root) or root).joinpath(META_NAME).is_file():
            raise FileNotFoundError(f"{root} is not a unified model checkpoint: {META_NAME} is missing")
        root = storage.open_folder(root, "unified model")  # files checked against manifest.json
        meta_path = root / META_NAME
        meta = _read_json(meta_path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
        missing = sorted({"config", "layout", "tokenizer", "code_vectors"} - set(meta))
        if missing:
            raise ValueError(f"{meta_path} lacks {', '.join(missing)}: not a whole unified model record")
        backbone_path = root / BACKBONE_CONFIG_NAME
        try:
            backbone_config = AutoConfig.for_model(**_read_json(backbone_path))
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{backbone_path} is not a transformers config: {exc}") from exc
        text_path = root / TEXT_FILE_NAME
        try:
            text = TextTokenizer.load(text_path)
        except Exception as exc:  # tokenizers raises a bare Exception for a malformed file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{text_path} is not a readable tokenizer file ({first})") from exc
        shape = meta["code_vectors"]
        try:
            config = UnifiedConfig.from_saved(meta["config"])
            layout = CodeLayout.from_dict(meta["layout"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"{meta_path}: {exc}") from exc
        model = cls(
            config,
            layout,
            text,
            code_vectors=torch.zeros(shape) if shape is not None else None,
            tokenizer_id=meta["tokenizer"],
            backbone_config=backbone_config,
        )
        try:
            load_model(model, str(root / WEIGHTS_NAME), strict=True, device=str(map_location))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"cannot read {root / WEIGHTS_NAME}: truncated or corrupt ({exc})") from exc
        except RuntimeError as exc:  # names the missing and unexpected tensors
            raise ValueError(f"checkpoint {root} does not match its config: {exc}") from exc
        return model.to(map_location)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


def check_identity(expected: dict[str, Any] | None, tokenizer: Any) -> None:
    """:class:`TokenizerMismatchError` unless ``tokenizer`` is the one a unified model recorded."""
    if expected is None:
        raise TokenizerMismatchError("this unified model records no image tokenizer; it cannot decode codes")
    difference = identity_difference(expected, tokenizer_identity(tokenizer))
    if difference is not None:
        raise TokenizerMismatchError(
            f"the unified model was trained on tokenizer {expected.get('name')!r} (weights sha256 "
            f"{str(expected.get('weights_sha256'))[:12]}), got {str(tokenizer.config.name)!r} with a "
            f"different {difference}; decode with the tokenizer the model was trained on"
        )


def generation_layout(layout: CodeLayout, generation_levels: int | None) -> CodeLayout:
    """``layout`` with text -> image predicting its first ``generation_levels`` pixel levels (None: all)."""
    if generation_levels is None:
        return layout
    if not 1 <= generation_levels <= layout.pixel_levels:
        raise ValueError(
            f"generation_levels must be in [1, {layout.pixel_levels}] (the tokenizer's pixel levels), "
            f"got {generation_levels}"
        )
    return dataclasses.replace(layout, pixel_levels=generation_levels)
