"""The one configuration layer: config files, dotted overrides and strict dict -> dataclass conversion.

Every config of the library goes through it (the tokenizer's ``TokenizerConfig``, the trainer's
``TrainConfig``, the run config behind ``polytok train``, ``Tokenizer.from_preset(..., **overrides)``)::

    data = load_file("run.yaml")                                   # YAML or JSON; a mapping at the top
    data = apply_overrides(data, ["train.optim.lr=1e-4", "data.name=photos"])   # command-line style
    data = merge(data, {"model": {"preset": "unitok-tiny"}, "train.max_steps": 10})  # nested or dotted
    cfg = from_dict(RunConfig, data)                               # strict, typed dataclass tree
    to_dict(cfg)                                                   # back to plain dicts (YAML / JSON)

Rules, the same everywhere:

- A key path is dotted: ``quantizer.levels``. A Python keyword cannot hold a dot, so keyword overrides
  take nested dicts (``quantizer={"levels": 8}``) or dotted strings through ``**{"quantizer.levels": 8}``.
- The value in ``key=value`` is read with YAML rules: ``8`` int, ``1e-4`` float, ``true`` bool, ``null``
  None, ``[1, 2]`` list, ``{a: 1}`` mapping, anything else a string (``key=`` is the empty string).
- Merging: the keys of an override mapping are dotted paths; a mapping value merges into the mapping
  already there key by key (its own keys taken literally: ``lr_scales={"text_tower.": 0.1}``), any other
  value replaces. Missing sections (and sections that are null) are created; unknown keys are left for
  ``from_dict`` to refuse.
- ``from_dict`` refuses unknown keys (suggesting a close valid one), wrong types (a bool is not an int;
  an int is accepted for a float and converted; nothing else is coerced), missing required keys and
  values that a dataclass's ``__post_init__`` refuses. Every refusal is one line, a :class:`ConfigError`
  (a ValueError) naming the dotted key. A missing file is a FileNotFoundError.

Adding a config section (for example a language model next to the tokenizer):

1. Write a dataclass whose fields all have type hints and defaults. Supported annotations: bool, int,
   float, str, Any, ``Literal[...]``, ``X | None`` and other unions, ``list[X]``, ``tuple[X, ...]``,
   ``tuple[X, Y]``, ``dict[K, V]`` and nested dataclasses.
2. Add it as a field of its parent (``lm: LMConfig = field(default_factory=LMConfig)``): files, dotted
   overrides (``lm.depth=12``), checkpoints (``to_dict``) and the error messages all follow.
3. Put checks across fields in ``__post_init__`` and raise ValueError; the message is prefixed with the
   section's dotted key.
4. Mark with ``metadata=REQUIRED`` the keys that say what a config *is* (``kind: str = field(default=
   "vit", metadata=REQUIRED)``): code can still build the dataclass from its defaults, but a file or dict
   that leaves such a key out is refused at load, every missing key listed in one line, instead of
   silently becoming the default model.

A config read from a file of its own needs nothing more than step 1:
``from_dict(LMConfig, load_yaml_with_overrides(path, ["depth=12"]))``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

FILE_SUFFIXES = (".yaml", ".yml", ".json")


class ConfigError(ValueError):
    """A configuration key is unknown, missing or has a refused value (the message names the key)."""


# Field metadata of a key that a config file or dict must give although code has a default for it:
#     kind: str = field(default="vit", metadata=REQUIRED)
REQUIRED: Mapping[str, bool] = types.MappingProxyType({"polytok.config.required": True})


# ---------------------------------------------------------------------------------------------------------
# files and overrides


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (exponent without a dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.yaml`` / ``.yml`` / ``.json`` file holding a mapping (an empty YAML file is ``{}``)."""
    path = Path(path)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise ConfigError(f"config file {path} must end in .json, .yaml or .yml")
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, Loader=_Loader)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON (truncated or half-written?): {err}") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {_one_line(err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def parse_override_value(text: str) -> Any:
    """The right-hand side of ``key=value`` with YAML rules (``1e-4`` -> float, ``[1,2]`` -> list)."""
    if not text.strip():
        return ""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read the value {text!r}: {_one_line(err)}") from err


def _split_key(key: str, origin: str) -> list[str]:
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {origin!r} has an empty key component")
    return parts


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``overrides`` applied; their keys are dotted paths (see the module rules)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        parts = _split_key(str(key), str(key))
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {key!r}: {where!r} is a value, not a section")
            node = child
        node[parts[-1]] = _merge_value(node.get(parts[-1]), value)
    return out


def _merge_value(old: Any, new: Any) -> Any:
    if isinstance(old, dict) and isinstance(new, Mapping):
        out = dict(old)
        for k, v in new.items():
            out[k] = _merge_value(old.get(k), v)
        return out
    return copy.deepcopy(new)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with every ``dotted.key=value`` string applied, in order."""
    out = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-4)")
        key, _, raw = item.partition("=")
        _split_key(key, item)
        out = merge(out, {key.strip(): parse_override_value(raw)})
    return out


def load_yaml_with_overrides(path: str | Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read a config file (or start from ``{}`` when ``path`` is None) and apply ``key=value`` overrides."""
    return apply_overrides(load_file(path) if path is not None else {}, overrides)


# ---------------------------------------------------------------------------------------------------------
# strict dict -> dataclass


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, converting nested dataclasses, unions, lists, tuples, dicts.

    Raises ConfigError naming the dotted key (``path`` prefixes the keys) for unknown keys, missing
    required keys (all of them at once), wrong types and values ``__post_init__`` refuses.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass type")
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
    missing = _missing_required(cls, data, path)
    if missing:
        raise ConfigError(f"{path or cls.__name__}: missing required config key(s): {', '.join(missing)}")
    return _build(cls, data, path)


def to_dict(obj: Any) -> Any:
    """Inverse of ``from_dict``: a dataclass (tree) to plain dicts / lists, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def without_defaults(obj: Any) -> dict[str, Any]:
    """A dataclass tree as plain dicts holding only what differs from the defaults (field by field, nested
    sections compared key by key).

    What identifies a configuration: a field added later with a default leaves the identity of every
    earlier configuration unchanged, where a hash of the full ``to_dict`` would change with each addition.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected a dataclass instance, got {type(obj).__name__}")
    return _changes(obj, None)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _changes(value: Any, default: Any) -> dict[str, Any]:
    """The fields of dataclass ``value`` that differ from those of ``default`` (same type; None: each
    field's own default, and fields without one are kept), recursively."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        d = _field_default(f) if default is None else getattr(default, f.name)
        if d is dataclasses.MISSING:
            out[f.name] = to_dict(v)
        elif dataclasses.is_dataclass(v) and type(d) is type(v):
            changed = _changes(v, d)
            if changed:
                out[f.name] = changed
        elif to_dict(v) != to_dict(d):
            out[f.name] = to_dict(v)
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _is_required(f: dataclasses.Field) -> bool:
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    return no_default or bool(f.metadata.get("polytok.config.required"))


def _missing_required(cls: type, data: Mapping[str, Any], path: str) -> list[str]:
    """Dotted names of the required keys absent from ``data`` and from the sections it gives."""
    fields = _init_fields(cls)
    if any(k not in fields for k in data):
        return []  # an unknown key (a typo) is the better message; _build reports it
    hints = typing.get_type_hints(cls)
    missing = []
    for name, f in fields.items():
        key = _join(path, name)
        if name not in data:
            if _is_required(f):
                missing.append(key)
        elif dataclasses.is_dataclass(hints[name]) and isinstance(data[name], Mapping):
            missing += _missing_required(hints[name], data[name], key)
    return missing


def _build(cls: type[T], data: Mapping[str, Any], path: str) -> T:
    fields = _init_fields(cls)
    unknown = [str(k) for k in data if k not in fields]
    if unknown:
        names = []
        for k in unknown:
            close = difflib.get_close_matches(k, list(fields), n=1)
            names.append(_join(path, k) + (f" (did you mean {close[0]}?)" if close else ""))
        raise ConfigError(
            f"unknown config key(s): {', '.join(names)}; valid keys of {path or cls.__name__}: "
            f"{', '.join(sorted(fields))}"
        )
    missing = [_join(path, n) for n, f in fields.items() if n not in data and _is_required(f)]
    if missing:  # reached through a list or union of dataclasses, which the up-front walk skips
        raise ConfigError(f"missing required config key(s): {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, _join(path, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        if isinstance(err, ConfigError):
            raise
        where = f"config key {path}" if path else cls.__name__
        raise ConfigError(f"{where}: {_one_line(err)}") from err


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or isinstance(tp, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message is the precise one
            return _convert(options[0], value, key)
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        same_kind = not isinstance(value, bool) or any(isinstance(a, bool) for a in args)
        if value in args and same_kind:
            return value
        raise ConfigError(f"config key {key}: {value!r} is not one of {list(args)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin in (list, Sequence) or tp is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key}: expected a sequence, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"config key {key}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key}: expected a mapping, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, key): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int or tp is str or tp is bool:
        if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
            return value
    elif isinstance(tp, type):
        if isinstance(value, tp):
            return value
    else:
        raise TypeError(f"config key {key}: unsupported annotation {tp!r}")
    raise ConfigError(f"config key {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
