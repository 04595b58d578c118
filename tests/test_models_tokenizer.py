"""Every registered preset: small ones run for real, large ones are checked on the meta device only."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from polytok import Tokenizer, list_presets
from polytok.models.presets import PUBLISHED_PARAMETERS
from polytok.models.registry import get_preset_dict

SMALL_LIMIT = 20_000_000  # presets below this many parameters are built and run for real
HAVE_PRETRAINED = importlib.util.find_spec("polytok.pretrained") is not None
SELF_CONTAINED = {  # used only when polytok.pretrained is absent
    "text_tower": {
        "kind": "transformer",
        "vocab": "bytes",
        "width": 64,
        "depth": 2,
        "heads": 2,
        "context_length": 32,
    },
    "teacher": None,
}


def meta_tokenizer(name: str) -> Tokenizer:
    """Architecture on the meta device; pretrained third-party parts (which need real weights) replaced."""
    with torch.device("meta"):
        return Tokenizer.from_preset(
            name, load_backbone_weights=False, **_offline_overrides(name, force=True)
        )


def _offline_overrides(name: str, force: bool = False) -> dict:
    if HAVE_PRETRAINED and not force:
        return {}
    sem = get_preset_dict(name)["semantic"]
    if sem["kind"] == "contrastive" and sem["text_tower"]["kind"] != "transformer":
        return {"semantic": {"text_tower": SELF_CONTAINED["text_tower"]}}
    if sem["kind"] == "distill" and sem.get("teacher") not in (None, "encoder"):
        return {"semantic": {"teacher": None}}
    return {}


def _is_small(name: str) -> bool:
    return meta_tokenizer(name).parameter_counts()["total"] < SMALL_LIMIT


SMALL = [n for n in list_presets() if _is_small(n)]
LARGE = [n for n in list_presets() if n not in SMALL]
_CACHE: dict[str, Tokenizer] = {}


def small(name: str) -> Tokenizer:
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = Tokenizer.from_preset(name, **_offline_overrides(name))
    return _CACHE[name]


def images(b: int = 2, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, h // 8, w // 8, generator=g)  # smooth-ish images, like downscaled photos
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False).clamp(
        0, 1
    )


def level_prefix(tok: Tokenizer, codes: torch.Tensor, k: int) -> torch.Tensor:
    return codes[..., :k] if len(tok.code_shape) == 1 else codes[..., :k, :]


def test_registry_holds_the_published_and_tiny_presets():
    assert {"unitok-l", "evotok-l", "unitok-tiny", "evotok-tiny", "polytok-tiny"} <= set(list_presets())
    assert set(SMALL) >= {"unitok-tiny", "evotok-tiny", "polytok-tiny"}
    assert set(LARGE) >= {"unitok-l", "evotok-l"}


# -- large presets: architecture only --------------------------------------------------------------


@pytest.mark.parametrize("name", LARGE)
def test_large_preset_parameter_counts_match_publication(name):
    tok = meta_tokenizer(name)
    counts = tok.parameter_counts()
    assert all(p.device.type == "meta" for p in tok.parameters())
    for part, published_m in PUBLISHED_PARAMETERS.get(name, {}).items():
        assert abs(counts[part] / 1e6 - published_m) / published_m < 0.03, (part, counts[part])
    assert tok.stride == 16


def test_unitok_l_matches_published_architecture():
    tok = meta_tokenizer("unitok-l")
    assert tok.code_shape == (8,) and tok.codebook_size == 4096
    assert len(tok.encoder.transformer.blocks) == 31 and len(tok.pixel_decoder.transformer.blocks) == 31
    assert tok.text_tower.context_length == 77 and len(tok.text_tower.transformer.blocks) == 12
    assert tok.text_tower.token_embedding.weight.shape == (49408, 768)
    total = tok.parameter_counts()["total"] / 1e6
    assert abs(total - 820) / 820 < 0.03  # "820M parameters in all"


def test_evotok_l_matches_published_architecture():
    tok = meta_tokenizer("evotok-l")
    assert tok.code_shape == (16,) and tok.codebook_size == 32768 and tok.pixel_depth == 4
    assert tok.quantizer.update == "ema"
    vc = tok.encoder.model.config
    assert (vc.hidden_size, vc.num_hidden_layers, vc.patch_size) == (1024, 24, 16)
    assert tok.encoder.feature_layer == -2
    # SiglipVisionModel (convolutional patch embedding), the layout the SigLIP2-256 weights are saved in.
    transformers = pytest.importorskip("transformers")
    assert type(tok.encoder.model) is transformers.SiglipVisionModel
    assert tok.encoder.model.state_dict()["embeddings.patch_embedding.weight"].shape == (1024, 3, 16, 16)
    # Semantic decoder as EvoTok's: class token, learned positions for 256 + 1 tokens, 12 heads of 85.
    sem = tok.semantic_decoder
    assert len(sem.transformer.blocks) == 3 and sem.pos_embed.shape == (1, 257, 1024)
    attn = sem.transformer.blocks[0].attn
    assert (attn.heads, attn.head_dim, attn.qkv.out_features) == (12, 85, 3 * 1020)
    assert sem.head.fc1.out_features == 1024 and sem.head.fc2.out_features == 1024
    # Pixel decoder: post_quant_conv 32 -> 256 before a CNN built for 256 latent channels.
    assert tok.pixel_decoder.post_quant_conv.weight.shape == (256, 32, 1, 1)
    assert tok.pixel_decoder.cnn.conv_in.in_channels == 256
    assert tok.pixel_decoder.factor == 16
    # Training defaults of EvoTok's script: commitment weight 1, restart codes used < once per step.
    q = tok.config.quantizer
    assert (q.beta, q.dead_code_threshold, q.ema_warmup_steps) == (1.0, 1.0, 2000)
    # EvoTok's EMA step: cluster sizes move during the warm-up, normalised sizes count as at least 1.
    for book in tok.quantizer.codebooks:
        assert (book.ema_warmup, book.ema_min_cluster_size) == ("counts_only", 1.0)


@pytest.mark.parametrize("name", SMALL)
def test_semantic_tokens_per_position_where_the_preset_has_them(name):
    tok = small(name).eval()
    codes = tok.encode(images(2, 64, 96))
    if tok.config.semantic.kind != "distill":
        with pytest.raises(ValueError, match="no per-token semantic features"):
            tok.semantic_tokens(codes)
        return
    tokens = tok.semantic_tokens(codes)
    h, w = codes.shape[1:3]
    assert tokens.shape == (2, h * w, tok.config.semantic.feature_dim)
    with torch.no_grad():
        out = tok(images(2, 64, 96))
    torch.testing.assert_close(out.semantic_tokens, tokens, atol=1e-5, rtol=1e-5)
    pooled = torch.nn.functional.normalize(tokens.mean(dim=1), dim=-1)
    torch.testing.assert_close(tok.semantic_features(codes), pooled, atol=1e-5, rtol=1e-5)


def test_evotok_l_missing_siglip_weights_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-siglip2"
    with pytest.raises(FileNotFoundError, match="no-such-siglip2"):
        Tokenizer.from_preset("evotok-l", encoder={"weights": str(missing)})
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        Tokenizer.from_preset("evotok-l", encoder={"weights": "google/no-such-siglip2-model"})


# -- small presets: the real thing -----------------------------------------------------------------


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_finite(name):
    tok = small(name)
    tok.train()
    x = images(2)
    texts = ["a red square", "a blue circle"] if tok.semantic_kind == "contrastive" else None
    out = tok(x, texts=texts)
    assert out.reconstruction.shape == x.shape
    side = x.shape[-1] // tok.stride
    assert out.codes.shape == (2, side, side, *tok.code_shape) and out.codes.dtype == torch.int64
    loss = (out.reconstruction - x).pow(2).mean() + out.quant.loss
    if tok.semantic_kind == "contrastive":
        assert out.text_embedding.shape == out.semantic_embedding.shape
        logits = out.logit_scale * out.semantic_embedding @ out.text_embedding.T
        loss = loss + torch.nn.functional.cross_entropy(logits, torch.arange(2))
    elif out.teacher_features is not None:
        assert out.teacher_features.shape == out.semantic_tokens.shape
        loss = (
            loss
            + (
                1 - torch.nn.functional.cosine_similarity(out.semantic_tokens, out.teacher_features, -1)
            ).mean()
        )
    else:
        loss = loss + out.semantic_tokens.pow(2).mean()
    assert torch.isfinite(loss)
    tok.zero_grad()
    loss.backward()
    for part in (tok.encoder, tok.projection, tok.pixel_decoder):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert tok.last_decoder_layer().grad is not None
    tok.zero_grad()
    tok.eval()


@pytest.mark.parametrize("name", SMALL)
def test_encode_decode_shapes_and_ranges(name):
    tok = small(name).eval()
    x = images(2, 64, 96)  # non-square, any multiple of the stride
    codes = tok.encode(x)
    assert codes.shape == (2, 64 // tok.stride, 96 // tok.stride, *tok.code_shape)
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    recon = tok.decode(codes)
    assert recon.shape == x.shape and float(recon.min()) >= 0 and float(recon.max()) <= 1
    emb = tok.semantic_features(codes)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("name", SMALL)
def test_eval_forward_equals_encode_then_decode(name):
    tok = small(name).eval()
    x = images(2, seed=1)
    with torch.no_grad():
        out = tok(x)
    codes = tok.encode(x)
    assert torch.equal(out.codes, codes)
    torch.testing.assert_close(out.reconstruction.clamp(0, 1), tok.decode(codes), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.semantic_embedding, tok.semantic_features(codes), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", SMALL)
def test_encode_never_changes_codebooks_even_in_train_mode(name):
    tok = Tokenizer.from_preset(name, **_offline_overrides(name))
    tok.train()
    before = {k: v.clone() for k, v in tok.quantizer.state_dict().items()}
    codes = tok.encode(images(2))
    after = tok.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(codes, tok.encode(images(2)))


@pytest.mark.parametrize("name", SMALL)
def test_save_load_roundtrip_identical(name, tmp_path):
    tok = small(name).eval()
    x = images(2, seed=2)
    codes = tok.encode(x)
    tok.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
    ]
    tok2 = Tokenizer.from_pretrained(tmp_path / "ckpt").eval()
    assert torch.equal(tok2.encode(x), codes)
    assert torch.equal(tok2.decode(codes), tok.decode(codes))
    assert torch.equal(tok2.semantic_features(codes), tok.semantic_features(codes))
    if tok.semantic_kind == "contrastive":
        torch.testing.assert_close(tok2.encode_text(["a cat"]), tok.encode_text(["a cat"]))
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any(k.startswith("teacher.") for k in stored)  # frozen teachers are rebuilt, not stored


@pytest.mark.parametrize("name", [n for n in SMALL if get_preset_dict(n)["quantizer"].get("levels", 1) > 1])
def test_prefix_decoding(name):
    tok = small(name).eval()
    x = images(2, seed=3)
    codes = tok.encode(x)
    full = tok.decode(codes)
    # the pixel decoder reads the first pixel_depth levels: deeper levels do not change the image
    assert torch.equal(full, tok.decode(level_prefix(tok, codes, tok.pixel_depth)))
    coarse = tok.decode(level_prefix(tok, codes, 1))
    assert coarse.shape == full.shape and not torch.allclose(coarse, full)
    # and the coarse image is exactly the decoder applied to the level-1 code vectors
    h, w = codes.shape[1:3]
    flat = level_prefix(tok, codes, 1).reshape(2, h * w, *level_prefix(tok, codes, 1).shape[3:])
    with torch.no_grad():
        ref = tok._pixels(tok.quantizer.indices_to_codes(flat), (h, w)).clamp(0, 1)
    torch.testing.assert_close(coarse, ref)
    with pytest.raises(ValueError):
        tok.decode(level_prefix(tok, codes, 1)[..., :0] if len(tok.code_shape) == 1 else codes[..., :0, :])


@pytest.mark.parametrize("name", SMALL)
def test_pil_and_uint8_inputs_match_tensor(name):
    from PIL import Image

    tok = small(name).eval()
    arr = (images(1, seed=4)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    as_tensor = torch.from_numpy(arr).permute(2, 0, 1).float().unsqueeze(0) / 255
    ref = tok.encode(as_tensor)
    assert torch.equal(tok.encode(arr), ref)
    assert torch.equal(tok.encode(Image.fromarray(arr)), ref)
    assert torch.equal(tok.encode([Image.fromarray(arr), arr]), ref.repeat(2, *[1] * (ref.dim() - 1)))


@pytest.mark.parametrize("name", SMALL)
def test_bad_inputs_raise_clear_errors(name):
    tok = small(name).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tok.encode(torch.rand(2, 4, 64, 64))
    with pytest.raises(ValueError, match="uint8"):
        tok.encode((torch.rand(1, 3, 64, 64) * 255).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tok.encode(torch.rand(1, 3, 64, 64) * 2 - 1)
    with pytest.raises(ValueError, match="multiple of the tokenizer stride"):
        tok.encode(torch.rand(1, 3, 64 - tok.stride // 2, 64))
    with pytest.raises(ValueError, match="NaN"):
        tok.encode(torch.full((1, 3, 64, 64), float("nan")))
    with pytest.raises(ValueError, match="numpy images must be uint8"):
        tok.encode(np.zeros((64, 64, 3), dtype=np.float32))
    codes = tok.encode(images(1))
    bad = codes.clone()
    bad.view(-1)[0] = tok.codebook_size
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(bad)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(codes - codes.max() - 1)
    with pytest.raises(ValueError, match="dims"):
        tok.decode(codes[..., 0] if tok.code_shape else codes[0])
    with pytest.raises(ValueError, match="integer"):
        tok.decode(codes.float())
    if tok.semantic_kind != "contrastive":
        with pytest.raises(ValueError, match="no text tower"):
            tok.encode_text(["a cat"])


def test_mcq_codes_with_wrong_codebook_count_rejected():
    name = next(n for n in SMALL if get_preset_dict(n)["quantizer"]["kind"] == "mcq")
    tok = small(name)
    codes = tok.encode(images(1))
    with pytest.raises(ValueError, match="code shape"):
        tok.decode(codes[..., :2])


@pytest.mark.parametrize(
    "name", [n for n in SMALL if get_preset_dict(n)["semantic"]["kind"] == "contrastive"]
)
def test_text_side(name):
    tok = small(name).eval()
    emb = tok.encode_text(["a photo of a cat", "a red square", "x"])
    assert emb.shape == (3, tok.config.semantic.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(emb[0], emb[1])
    assert abs(float(tok.log_logit_scale.detach()) - np.log(1 / 0.07)) < 1e-5
    with torch.no_grad():
        tok.log_logit_scale.fill_(10.0)
        assert abs(float(tok.logit_scale) - 100.0) < 1e-3  # clamped at log(100)
        tok.log_logit_scale.fill_(float(np.log(1 / 0.07)))


def test_user_teacher_module_is_distilled_and_not_saved(tmp_path):
    name = next(n for n in SMALL if get_preset_dict(n)["semantic"]["kind"] == "distill")
    feature_dim = get_preset_dict(name)["semantic"]["feature_dim"]
    torch.manual_seed(0)
    teacher = torch.nn.Conv2d(3, feature_dim, 16, stride=16)  # a 4x4 map, resized to the token grid
    tok = Tokenizer.from_preset(name, semantic={"teacher": None}, teacher=teacher)
    out = tok(images(2))
    grid = 64 // tok.stride
    assert out.teacher_features.shape == (2, grid * grid, feature_dim)
    with torch.no_grad():
        ref = torch.nn.functional.interpolate(
            teacher(images(2)), size=(grid, grid), mode="bilinear", align_corners=False
        )
    torch.testing.assert_close(out.teacher_features, ref.flatten(2).transpose(1, 2))
    assert not any(p.requires_grad for p in teacher.parameters())
    tok.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["semantic"]["teacher"] is None
    assert not any(k.startswith("teacher.") for k in load_file(str(tmp_path / "model.safetensors")))
    assert Tokenizer.from_pretrained(tmp_path).teacher is None  # a user module is passed again, not stored
    wrong = torch.nn.Conv2d(3, feature_dim + 1, 8, stride=8)
    tok.set_teacher(wrong)
    with pytest.raises(ValueError, match="feature_dim"):
        tok(images(1))


@pytest.mark.skipif(not HAVE_PRETRAINED, reason="polytok.pretrained not importable")
def test_pretrained_defaults():
    evo = small("evotok-tiny")
    out = evo(images(2))
    # EfficientNet-Lite0's stride-16 map (112 channels) of a 128 px input (8x8), resized to the 16x16 grid
    assert evo.config.semantic.teacher_input_size == 128
    assert out.teacher_features.shape == (2, 256, 112)
    with torch.no_grad():
        net = evo.teacher.net
        ref = net.feature_maps(images(2), [3], size=128)[0]
        ref = torch.nn.functional.interpolate(ref, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out.teacher_features, ref.flatten(2).transpose(1, 2))
    uni = small("unitok-tiny")
    assert uni.text_tower.kind == "minilm-l6" and uni.text_tower.frozen
    assert not any(p.requires_grad for p in uni.text_tower.encoder.parameters())
    assert all(p.requires_grad for p in uni.text_tower.projection.parameters())
    tuned = Tokenizer.from_preset("unitok-tiny", **{"semantic.text_tower.freeze": False})
    emb = tuned.encode_text(["a cat", "a dog"])
    emb.sum().backward()
    assert any(p.grad is not None for p in tuned.text_tower.encoder.parameters())
    assert any(k.startswith("text_tower.encoder.") for k in tuned.checkpoint_state_dict())
    assert not any(k.startswith("text_tower.encoder.") for k in uni.checkpoint_state_dict())


@pytest.mark.parametrize("name", SMALL)
def test_code_embedding_is_the_mean_code_vector_over_positions(name):
    tok = small(name).eval()
    codes = tok.encode(images(2))
    emb = tok.code_embedding(codes)
    b, h, w = codes.shape[:3]
    expected = torch.zeros(b, tok.config.quantizer.dim)
    for i in range(h):
        for j in range(w):  # one position at a time through indices_to_codes
            expected += tok.quantizer.indices_to_codes(codes[:, i, j].reshape(b, 1, *tok.code_shape))[:, 0]
    torch.testing.assert_close(emb, expected / (h * w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("feature_layer", [-2, -3, 1])
def test_siglip_encoder_stops_at_its_feature_layer(feature_layer):
    """The tokens are the hidden state ``feature_layer`` of the whole tower, and the blocks after it
    (whose outputs are unused) are not run."""
    pytest.importorskip("transformers")
    from polytok.models.config import EncoderConfig
    from polytok.models.encoders import HFSiglipEncoder

    siglip = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "patch_size": 4,
        "image_size": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    }
    torch.manual_seed(0)
    cfg = EncoderConfig(kind="siglip", hf_config=siglip, feature_layer=feature_layer)
    encoder = HFSiglipEncoder(cfg).eval()
    layers = getattr(encoder.model, "vision_model", encoder.model).encoder.layers
    calls = []
    for i, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, grid = encoder(x)
        n_run = len(calls)
        expected = encoder.model(pixel_values=x, output_hidden_states=True).hidden_states[feature_layer]
    assert grid == (4, 4)
    torch.testing.assert_close(tokens, expected, atol=1e-6, rtol=0)
    assert n_run == (feature_layer if feature_layer > 0 else len(layers) + 1 + feature_layer)


@pytest.mark.parametrize(
    "name", [n for n in SMALL if get_preset_dict(n)["semantic"]["kind"] == "contrastive"][:1]
)
def test_forward_embeds_each_images_negative_texts(name):
    """Per-image lists of hard negatives come back as (B, K, E) embeddings equal to encode_text's, with a
    mask that marks the padding of shorter lists."""
    tok = small(name).eval()
    negatives = [["a red circle", "a red square"], [], ["a blue star"]]
    with torch.no_grad():
        out = tok(torch.rand(3, 3, 64, 64), ["a", "b", "c"], negatives)
        expected = tok.encode_text(["a red circle", "a red square", "a blue star"])
    assert out.negative_text_embedding.shape == (3, 2, tok.config.semantic.embed_dim)
    assert out.negative_mask.tolist() == [[True, True], [False, False], [True, False]]
    torch.testing.assert_close(out.negative_text_embedding[0], expected[:2])
    torch.testing.assert_close(out.negative_text_embedding[2, 0], expected[2])
    assert float(out.negative_text_embedding[1].abs().sum()) == 0.0
