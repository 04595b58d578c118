"""The identity of an image tokenizer: which codes it makes and reads.

One record, written wherever codes are stored apart from their tokenizer (token sets, unified models)::

    {"name", "code_shape", "codebook_size", "config", "config_sha256", "weights_sha256"}

``config`` holds the whole config, ``config_sha256`` a hash of the fields that differ from their defaults
(so that config fields added later, at their defaults, keep earlier records valid); ``weights_sha256``
covers every stored tensor (``checkpoint_state_dict``: names, dtypes, shapes, bytes). Records written by
earlier versions hold a subset of these keys; :func:`identity_difference` compares what both hold.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


class TokenizerMismatchError(ValueError):
    """Codes recorded for one tokenizer met another (codes of one tokenizer mean nothing to a different
    one, even with the same layout)."""


@torch.no_grad()
def weights_sha256(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer's stored tensors (names, dtypes, shapes, bytes)."""
    state = tokenizer.checkpoint_state_dict() if hasattr(tokenizer, "checkpoint_state_dict") else None
    state = state if state is not None else tokenizer.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def config_sha256(config: Any) -> str:
    """Hash of a tokenizer config: the fields that differ from the defaults."""
    from polytok.config import without_defaults

    return _json_sha256(without_defaults(config))


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """The identity record of a polytok ``Tokenizer`` (see the module docstring)."""
    config = tokenizer.config.to_dict() if hasattr(tokenizer.config, "to_dict") else None
    return {
        "name": str(getattr(tokenizer.config, "name", "")),
        "code_shape": list(tokenizer.code_shape),
        "codebook_size": int(tokenizer.codebook_size),
        "config": json.loads(json.dumps(config)),  # as it reads back from JSON
        "config_sha256": config_sha256(tokenizer.config),
        "weights_sha256": weights_sha256(tokenizer),
    }


def _comparable_config(config: Any) -> Any:
    """A recorded config as it is compared: only what differs from the defaults, so that records made
    before a config field was added (at its default) still match."""
    from polytok.config import ConfigError, without_defaults
    from polytok.models.config import TokenizerConfig

    if not isinstance(config, dict):
        return config
    try:
        return without_defaults(TokenizerConfig.from_dict(config))
    except (ConfigError, TypeError, ValueError):  # not a polytok TokenizerConfig: compared as recorded
        return config


def identity_difference(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """None when two identity records name the same tokenizer, else which part differs (layout, weights,
    config). ``current`` is a whole record (:func:`tokenizer_identity`); ``recorded`` may be one written by
    an earlier version, holding fewer keys: what it holds is compared."""
    for part in ("code_shape", "codebook_size"):
        if part in recorded and recorded[part] != current[part]:
            return f"{part.replace('_', ' ')} ({recorded[part]} vs {current[part]})"
    if recorded.get("weights_sha256") != current["weights_sha256"]:
        return (
            f"weights (SHA-256 {str(recorded.get('weights_sha256'))[:12]}... vs "
            f"{current['weights_sha256'][:12]}...)"
        )
    if "config" in recorded:
        same = _comparable_config(recorded["config"]) == _comparable_config(current["config"])
    else:  # a hash only; earlier versions hashed the whole config
        same = recorded.get("config_sha256") in {current["config_sha256"], _json_sha256(current["config"])}
    return None if same else "config"
