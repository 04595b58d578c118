"""Peers' tokenizers that :class:`polytok.Tokenizer` cannot express exactly, each in a room of its own.

Each peer reuses polytok's engine (quantizers, decoders, storage) and offers the tokenizer API
(``encode``, ``decode``, ``semantic_features``, ``encode_text``, ``save_pretrained``,
``from_pretrained``) and says what the evaluation may read of it (``eval_capabilities()``, a
:class:`polytok.eval.capabilities.TokenizerCapabilities`). ``PEERS`` maps a peer's architecture name to
its class (``module:Class``), imported on first use; a saved peer names itself in its ``config.json``
(``"peer": name``).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

PEERS: dict[str, str] = {
    "tokenflow-256": "polytok.peers.tokenflow.model:TokenFlowTokenizer",
    "vila-u": "polytok.peers.vila_u.model:VilaUTokenizer",
    "qlip-b16-256": "polytok.peers.qlip.model:QlipTokenizer",
}


def peer_name(model: Any) -> str | None:
    """The peer a model is (its class's ``peer`` name), or None for anything else."""
    name = getattr(type(model), "peer", None)
    return name if isinstance(name, str) and name in PEERS else None


def list_peers() -> list[str]:
    """Architecture names of the peers, sorted."""
    return sorted(PEERS)


def peer_class(name: str) -> Any:
    """The class of peer ``name`` (KeyError listing the peers)."""
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; peers: {', '.join(list_peers())}")
    module, _, attr = PEERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def describe_peers() -> list[dict[str, Any]]:
    """One row per peer for ``polytok presets`` and the docs: its class's ``CARD`` (family, resolution,
    tokens per image, bits per token, quantizer, parameters, official figures with their sources)."""
    return [{"name": name, **peer_class(name).CARD} for name in list_peers()]


def peer_of_folder(directory: str | Path) -> str | None:
    """The peer a saved folder holds (its ``config.json`` names it), or None for a polytok Tokenizer."""
    path = Path(directory) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    peer = data.get("peer") if isinstance(data, dict) else None
    return peer if isinstance(peer, str) and peer in PEERS else None
