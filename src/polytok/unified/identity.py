"""The identity of an image tokenizer: its config (what differs from the defaults) and a hash of its weights.

A unified model records the identity of the tokenizer its codes came from and refuses to decode with
another: codes of one tokenizer mean nothing to a different one, even with the same layout.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


class TokenizerMismatchError(ValueError):
    """A tokenizer other than the one the unified model was trained on."""


@torch.no_grad()
def tokenizer_identity(tokenizer: Any) -> dict[str, str]:
    """{"name", "config_sha256", "weights_sha256"} of a polytok ``Tokenizer``.

    The config hash covers the fields that differ from their defaults (``polytok.config.without_defaults``),
    so that config fields added in later versions, at their defaults, keep earlier models valid. The
    weights hash covers every stored tensor (``checkpoint_state_dict``): names, dtypes, shapes, bytes.
    """
    from polytok.config import without_defaults

    config_hash = _json_sha256(without_defaults(tokenizer.config))
    h = hashlib.sha256()
    for name, tensor in sorted(tokenizer.checkpoint_state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"name": str(tokenizer.config.name), "config_sha256": config_hash, "weights_sha256": h.hexdigest()}


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _full_config_hash(tokenizer: Any) -> str:
    """How earlier versions hashed the config: every field, defaults included."""
    return _json_sha256(tokenizer.config.to_dict())


def check_identity(expected: dict[str, str] | None, tokenizer: Any) -> None:
    """Raise :class:`TokenizerMismatchError` unless ``tokenizer`` is the recorded one."""
    if expected is None:
        raise TokenizerMismatchError("this unified model records no image tokenizer; it cannot decode codes")
    got = tokenizer_identity(tokenizer)
    if got["config_sha256"] != expected.get("config_sha256") and expected.get("config_sha256") == (
        _full_config_hash(tokenizer)
    ):  # recorded by earlier versions, over the whole config: the same config if the fields are the same
        got["config_sha256"] = expected["config_sha256"]
    if got != expected:
        what = "config" if got["config_sha256"] != expected["config_sha256"] else "weights"
        raise TokenizerMismatchError(
            f"the unified model was trained on tokenizer {expected['name']!r} (weights sha256 "
            f"{expected['weights_sha256'][:12]}), got {got['name']!r} with a different {what} "
            f"(weights sha256 {got['weights_sha256'][:12]}); decode with the tokenizer the model was "
            "trained on"
        )
