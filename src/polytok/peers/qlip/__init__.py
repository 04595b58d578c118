"""QLIP (NVlabs/QLIP): :class:`QlipTokenizer`, its config and converter (:mod:`polytok.peers.qlip.convert`,
``polytok convert qlip DIR OUT_DIR``)."""

from polytok.peers.qlip.config import QlipConfig
from polytok.peers.qlip.model import QlipTokenizer

__all__ = ["QlipConfig", "QlipTokenizer"]
