"""Bookkeeping for key-by-key state dict conversion."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

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
        self.prefixes: list[tuple[str, str, Callable[[str], str]]] = []

    def map_prefix(self, src: str, dst: str, official: Callable[[str], str] = lambda rest: rest) -> None:
        """Record that keys under ``dst`` come from keys under ``src`` (``official``: the rest of a target
        key -> the rest of its official key), so that a key the file lacks is named as the file names
        it (:meth:`official_name`) even where keys are moved by prefix."""
        self.prefixes.append((dst, src, official))

    def official_name(self, target_key: str) -> str | None:
        """The official key a target key comes from, when a prefix mapping covers it."""
        for dst, src, official in self.prefixes:
            if target_key.startswith(dst):
                return src + official(target_key[len(dst) :])
        return None

    def missing_target(self, target_key: str) -> ConversionError:
        """The error for a target key the conversion did not produce, by its official name if known."""
        name = self.official_name(target_key)
        if name is None:
            return ConversionError(f"conversion produced no tensor for the target's key {target_key!r}")
        return ConversionError(f"{self.what}: missing key {name!r} (the target's {target_key!r})")

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
