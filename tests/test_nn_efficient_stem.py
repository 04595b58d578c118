"""EfficientNet-Lite0's front end as a tokenizer stem: its folded weights compute timm's network."""

from __future__ import annotations

import pytest
import torch

from polytok.config import ConfigError
from polytok.models.tokenizer import Tokenizer
from polytok.nn.efficient_stem import EfficientLiteStem
from polytok.pretrained import load_pretrained


@pytest.mark.parametrize("size", [(64, 64), (63, 58)])  # even and odd sides: SAME padding differs
def test_folded_stem_equals_timms_network_to_stride_4(size):
    """The batch norms folded into the convolutions (in float64, and both networks run in float64, so
    the folding's rounding lies far below the tolerance): the stem's 24-channel map is timm's second
    feature map."""
    stem = EfficientLiteStem(width=16).double()
    stem.load_pretrained()
    net = load_pretrained("efficientnet-lite0")
    images = torch.rand(3, 3, *size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        reference = net.double().feature_maps(images, layers=[1])[0]
        mine = stem.features(images * 2 - 1)
    assert mine.shape == reference.shape == (3, 24, (size[0] + 3) // 4, (size[1] + 3) // 4)
    torch.testing.assert_close(mine, reference, rtol=1e-9, atol=1e-9)
    assert stem(images * 2 - 1).shape == (3, 16, *reference.shape[-2:])


def test_tokenizer_with_the_stem_loads_its_weights_only_when_asked():
    pretrained = Tokenizer.from_preset("unitok-tiny", encoder={"stem": "efficientnet-lite0"})
    random = Tokenizer.from_preset(
        "unitok-tiny", encoder={"stem": "efficientnet-lite0"}, load_backbone_weights=False
    )
    a, b = pretrained.encoder.stem.conv.weight, random.encoder.stem.conv.weight
    assert a.shape == b.shape == (32, 3, 3, 3) and not torch.equal(a, b)
    stem = EfficientLiteStem(width=128)
    stem.load_pretrained()
    assert torch.equal(a, stem.conv.weight)
    tokens, grid = pretrained.encoder(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert grid == (16, 16) and tokens.shape == (2, 256, 128)


def test_the_stem_refuses_stages_after_it():
    with pytest.raises(ConfigError, match=r"encoder\.stem efficientnet-lite0"):
        Tokenizer.from_preset(
            "unitok-tiny",
            encoder={"stem": "efficientnet-lite0", "stage_widths": [64], "stage_depths": [1]},
            load_backbone_weights=False,
        )
