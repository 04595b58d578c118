"""TokenFlow's tokenizer (ByteFlow-AI/TokenFlow): :class:`TokenFlowTokenizer`, its config and converter
(:mod:`polytok.peers.tokenflow.convert`, ``polytok convert tokenflow CKPT OUT_DIR``)."""

from polytok.peers.tokenflow.config import TokenFlowConfig
from polytok.peers.tokenflow.model import TokenFlowTokenizer

__all__ = ["TokenFlowConfig", "TokenFlowTokenizer"]
