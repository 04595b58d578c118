"""The unified model on the tokens: one autoregressive transformer that captions images and generates
them from text, for every code layout polytok's tokenizers produce.

This package imports from the tokenizer side of polytok; nothing there imports from it.

    from polytok import Tokenizer
    from polytok.unified import UnifiedModel, train_text_tokenizer, generate_image_codes, generate_captions

    tok = Tokenizer.from_preset("evotok-tiny")
    text = train_text_tokenizer(captions, vocab_size=512)
    model = UnifiedModel.from_tokenizer(tok, text)              # UnifiedConfig() defaults: a tiny Llama
    fmt = model.format
    batch = fmt.training_batch(codes, text.encode_batch(captions), ["t2i", "i2t", ...], caption_dropout=0.1)
    model(batch).loss.backward()
    codes = generate_image_codes(model, ["a red circle"], guidance_scale=3.0, top_k=100, seed=0)
    images = model.decode_images(codes, tok)
    captions = generate_captions(model, tok.encode(images))
"""

from polytok.models.identity import TokenizerMismatchError, tokenizer_identity
from polytok.unified.config import TINY_BACKBONE, UnifiedConfig, unified_preset
from polytok.unified.depth_head import DepthHead
from polytok.unified.embed import CodeVectors, ImageInputEmbedding, SubCodeEmbedding
from polytok.unified.layout import CodeLayout, tokenizer_code_vectors
from polytok.unified.model import UnifiedModel, UnifiedOutput
from polytok.unified.sampling import (
    SamplingOptions,
    choose_tokens,
    filter_logits,
    generate_captions,
    generate_image_codes,
    generate_images,
    sample_caption_ids,
    sample_image_codes,
)
from polytok.unified.sequence import SequenceBatch, SequenceFormat, SequenceItem, SpecialTokens
from polytok.unified.text_tokenizer import TextTokenizer, train_text_tokenizer

__all__ = [
    "TINY_BACKBONE",
    "CodeLayout",
    "CodeVectors",
    "DepthHead",
    "ImageInputEmbedding",
    "SamplingOptions",
    "SequenceBatch",
    "SequenceFormat",
    "SequenceItem",
    "SpecialTokens",
    "SubCodeEmbedding",
    "TextTokenizer",
    "TokenizerMismatchError",
    "UnifiedConfig",
    "UnifiedModel",
    "UnifiedOutput",
    "choose_tokens",
    "filter_logits",
    "generate_captions",
    "generate_image_codes",
    "generate_images",
    "sample_caption_ids",
    "sample_image_codes",
    "tokenizer_code_vectors",
    "tokenizer_identity",
    "train_text_tokenizer",
    "unified_preset",
]
