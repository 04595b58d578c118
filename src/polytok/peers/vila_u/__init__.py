"""VILA-U's unified vision tower (mit-han-lab/vila-u): :class:`VilaUTokenizer`, its config and converter
(:mod:`polytok.peers.vila_u.convert`, ``polytok convert vila-u DIR OUT_DIR``)."""

from polytok.peers.vila_u.config import VilaUConfig
from polytok.peers.vila_u.model import VilaUTokenizer

__all__ = ["VilaUConfig", "VilaUTokenizer"]
