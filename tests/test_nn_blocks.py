"""Building blocks checked against independent computations (hand-written attention, timm's ViTamin)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polytok.nn import (
    AttentionProjection,
    ConvUpsampler,
    HybridConvStem,
    MultiHeadAttention,
    Transformer,
    VQGANDecoder,
    sincos_2d,
)


def naive_attention(x, qkv_w, qkv_b, heads, causal=False):
    """Loop over heads and queries: softmax(q k^T / sqrt(d)) v, per head (B, N, heads, d)."""
    b, n, dim = x.shape
    d = dim // heads
    qkv = x @ qkv_w.T + qkv_b
    q, k, v = qkv[..., :dim], qkv[..., dim : 2 * dim], qkv[..., 2 * dim :]
    out = torch.zeros(b, n, heads, d)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        for i in range(n):
            keys = n if not causal else i + 1
            scores = (q[:, i, sl].unsqueeze(1) * k[:, :keys, sl]).sum(-1) / math.sqrt(d)
            out[:, i, h] = (scores.softmax(-1).unsqueeze(-1) * v[:, :keys, sl]).sum(1)
    return out


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive_loop(causal):
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, causal=causal)
    x = torch.randn(2, 5, 16)
    ref = naive_attention(x, attn.qkv.weight, attn.qkv.bias, 4, causal).reshape(2, 5, 16)
    ref = ref @ attn.proj.weight.T + attn.proj.bias
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_causal_transformer_ignores_future_tokens():
    torch.manual_seed(0)
    net = Transformer(16, 2, 4, mlp="mlp", mlp_ratio=4.0, causal=True)
    x = torch.randn(1, 6, 16)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 2, 16)
    torch.testing.assert_close(net(x)[:, :4], net(y)[:, :4])
    assert not torch.allclose(net(x)[:, 4:], net(y)[:, 4:])


def test_attention_projection_matches_hand_computation():
    torch.manual_seed(0)
    proj = AttentionProjection(32, 8, heads=4)  # head dim 8 = out dim: heads are averaged
    with torch.no_grad():  # norms off their defaults, or the MLP's own LayerNorm would be a no-op
        for module in proj.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(torch.randn_like(module.weight) * 0.3)
                module.bias.add_(torch.randn_like(module.bias) * 0.3)
    x = torch.randn(2, 6, 32)
    a = proj.attn
    xa = F.layer_norm(x, (32,), proj.norm_attn.weight, proj.norm_attn.bias)
    heads = naive_attention(xa, a.qkv.weight, a.qkv.bias, 4)  # (B, N, 4, 8)
    attn_out = heads.mean(dim=2) @ a.proj.weight.T + a.proj.bias
    xl = F.layer_norm(x, (32,), proj.norm_linear.weight, proj.norm_linear.bias)
    y = xl @ proj.linear.weight.T + proj.linear.bias + attn_out
    yn = F.layer_norm(y, (8,), proj.norm_mlp.weight, proj.norm_mlp.bias)
    m = proj.mlp
    yn = F.layer_norm(yn, (8,), m.norm.weight, m.norm.bias, eps=1e-6)  # the MLP's own LayerNorm
    mlp = F.gelu(yn @ m.w0.weight.T + m.w0.bias, approximate="tanh") * (yn @ m.w1.weight.T + m.w1.bias)
    ref = y + mlp @ m.w2.weight.T + m.w2.bias
    torch.testing.assert_close(proj(x), ref, atol=1e-5, rtol=1e-5)


def test_attention_projection_widens_and_mixes_tokens():
    torch.manual_seed(0)
    proj = AttentionProjection(8, 64)  # 8 heads of 8 channels, concatenated to 64
    x = torch.randn(1, 5, 8)
    y = proj(x)
    assert y.shape == (1, 5, 64)
    x2 = x.clone()
    x2[:, 0] = torch.randn(8)  # (a constant shift would vanish in the LayerNorm)
    assert not torch.allclose(proj(x2)[:, 1:], y[:, 1:])  # full attention: token 0 reaches the others


def test_hybrid_stem_matches_timm_vitamin_large():
    """ViTamin-L stem and trunk sizes against timm's independent implementation (meta device)."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ref = timm.create_model("vitamin_large_224", pretrained=False, num_classes=0)
        stem = HybridConvStem(160, [160, 320], [2, 4], 1024)
        trunk = Transformer(1024, 31, 16, mlp="geglu", mlp_ratio=2.0)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(stem) == count(ref.patch_embed)
    assert abs(count(trunk) - count(ref.blocks)) / count(ref.blocks) < 0.005
    assert stem.stride == 16


def test_stem_and_upsampler_strides_mirror():
    stem = HybridConvStem(8, [8, 16], [1, 1], 32)
    up = ConvUpsampler(32, [16, 8], [1, 1])
    x = torch.rand(2, 3, 64, 48)
    f = stem(x)
    assert f.shape == (2, 32, 4, 3) and stem.stride == up.factor == 16
    assert up(f).shape == (2, 3, 64, 48)


def test_upsampler_without_a_first_upsampling_fits_a_stride_4_encoder():
    up = ConvUpsampler(32, [16], [2], upsample_first=False)
    assert up.factor == 4 and up(torch.rand(2, 32, 5, 3)).shape == (2, 3, 20, 12)
    # the same config with the first upsampling is the x8 head it always was
    assert ConvUpsampler(32, [16], [2]).factor == 8


def test_vqgan_decoder_upsamples_by_ch_mult():
    dec = VQGANDecoder(4, ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, norm_groups=4)
    assert dec.factor == 16
    assert dec(torch.randn(1, 4, 2, 3)).shape == (1, 3, 32, 48)


def test_sincos_known_values():
    emb = sincos_2d(2, 3, 8)
    assert emb.shape == (6, 8)
    # position (0, 0): sin 0 = 0, cos 0 = 1 for every frequency
    torch.testing.assert_close(emb[0], torch.tensor([0, 0, 1, 1, 0, 0, 1, 1.0]))
    # position (1, 2), lowest frequency (omega = 1): sin(1), cos(1) for rows, sin(2), cos(2) for columns
    row = emb[1 * 3 + 2]
    torch.testing.assert_close(
        row[[0, 2, 4, 6]], torch.tensor([math.sin(1), math.cos(1), math.sin(2), math.cos(2)])
    )
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(2, 2, 6)


def test_patch_head_places_each_token_vector_in_its_own_patch():
    from polytok.models.decoders import PatchHead

    torch.manual_seed(0)
    head = PatchHead(width=6, patch_size=4)
    x = torch.randn(2, 6, 3, 5)  # (B, width, h, w)
    out = head(x)
    assert out.shape == (2, 3, 12, 20)
    w, b = head.proj.weight[:, :, 0, 0], head.proj.bias  # (3 * 16, 6)
    for i in range(3):
        for j in range(5):
            pixels = (x[:, :, i, j] @ w.T + b).reshape(2, 3, 4, 4)  # channel-major, then rows, columns
            torch.testing.assert_close(out[:, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4], pixels)


@pytest.mark.parametrize(("c_in", "c_out", "h", "w"), [(3, 5, 4, 6), (8, 8, 1, 3), (4, 2, 7, 5)])
def test_nearest_upsample_conv_at_the_input_resolution_equals_upsampling_first(c_in, c_out, h, w) -> None:
    """The four 2x2 phase kernels give conv3x3(nearest_x2(x)), borders included, values and gradients
    (float64: only rounding separates the two orders of summation)."""
    from polytok.nn.conv import Upsample2d
    from polytok.nn.vqgan import _NearestConvUp

    g = torch.Generator().manual_seed(11)
    for module in (Upsample2d(c_in, c_out), _NearestConvUp(c_in)):
        module = module.double()
        with torch.no_grad():
            module.conv.bias.normal_(generator=g)
        x = torch.randn(2, c_in, h, w, generator=g, dtype=torch.float64, requires_grad=True)
        got = module(x)
        ref = module.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert got.shape == ref.shape == (2, module.conv.out_channels, 2 * h, 2 * w)
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
        upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        grads = torch.autograd.grad(got, (x, module.conv.weight, module.conv.bias), upstream)
        ref_grads = torch.autograd.grad(ref, (x, module.conv.weight, module.conv.bias), upstream)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_upsampling_kernel_kept_without_gradients_follows_weight_changes() -> None:
    """Without gradients the folded kernel is reused; an in-place update or a loaded state replaces it."""
    from polytok.nn.conv import Upsample2d

    g = torch.Generator().manual_seed(12)
    module = Upsample2d(3, 4).double()
    x = torch.randn(1, 3, 5, 5, generator=g, dtype=torch.float64)

    def reference() -> torch.Tensor:
        return module.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    with torch.no_grad():
        first = module(x)
        assert module(x) is not first and torch.equal(module(x), first)
        module.conv.weight.mul_(-2.0)  # as an optimizer step would
        torch.testing.assert_close(module(x), reference(), atol=1e-12, rtol=0)
    state = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in module.state_dict().items()}
    module.load_state_dict(state)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), reference(), atol=1e-12, rtol=0)
