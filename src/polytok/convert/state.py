"""Bookkeeping for key-by-key state dict conversion."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


class ConversionError(ValueError):
    """An official checkpoint that does not fit the target preset (wrong model, missing or extra keys)."""


class StateMapper:
    """Moves tensors from an official state dict (``source``) into a polytok one (``target``).

    Every source key must be consumed exactly once (``take``, ``copy`` or ``drop``); ``finish`` raises
    :class:`ConversionError` naming the keys left over, so that a checkpoint of another model is
    never converted half-way.
    """

    def __init__(self, source: Mapping[str, Tensor], what: str) -> None:
        self.source = dict(source)
        self.what = what
        self.used: set[str] = set()
        self.target: dict[str, Tensor] = {}

    def has(self, key: str) -> bool:
        return key in self.source

    def keys_under(self, prefix: str) -> list[str]:
        return [k for k in self.source if k.startswith(prefix)]

    def take(self, key: str) -> Tensor:
        if key not in self.source:
            raise ConversionError(f"{self.what}: missing key {key!r}")
        if key in self.used:
            raise ConversionError(f"{self.what}: key {key!r} mapped twice")
        self.used.add(key)
        return self.source[key]

    def put(self, key: str, value: Tensor) -> None:
        if key in self.target:
            raise ConversionError(f"{self.what}: target key {key!r} written twice")
        self.target[key] = value

    def copy(self, src: str, dst: str, names: Iterable[str] = ("weight", "bias")) -> None:
        """``src.<name>`` -> ``dst.<name>`` for each name (a plain key when ``names`` is empty)."""
        names = tuple(names)
        if not names:
            self.put(dst, self.take(src))
        for name in names:
            self.put(f"{dst}.{name}", self.take(f"{src}.{name}"))

    def drop(self, key: str, *, must_be_zero: bool = False) -> None:
        """Consume a key that has no counterpart (usage statistics, a constant buffer)."""
        value = self.take(key)
        if must_be_zero and bool(torch.any(value != 0)):
            raise ConversionError(f"{self.what}: key {key!r} is expected to be all zeros")

    def finish(self) -> dict[str, Tensor]:
        left = sorted(set(self.source) - self.used)
        if left:
            shown = ", ".join(repr(k) for k in left[:8])
            if len(left) > 8:
                shown += f" and {len(left) - 8} more"
            raise ConversionError(f"{self.what}: unexpected key(s) {shown}")
        return self.target
