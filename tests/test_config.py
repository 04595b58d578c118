"""The one config layer (polytok.config): files, dotted overrides, strict typed conversion, one error type."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from polytok.config import (
    REQUIRED,
    ConfigError,
    apply_overrides,
    from_dict,
    load_file,
    load_yaml_with_overrides,
    merge,
    to_dict,
    without_defaults,
)


@dataclass
class Inner:
    size: int = 3
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str
    lr: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    layers: list[int] = field(default_factory=list)
    limit: float | None = None
    inner: Inner = field(default_factory=Inner)


@dataclass
class Part:
    kind: Literal["x", "y"] = field(default="x", metadata=REQUIRED)
    width: int = 4

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ValueError(f"width must be >= 1, got {self.width}")


@dataclass
class Whole:
    """Two sections a file must name (with their kind), one it may leave out."""

    first: Part = field(default_factory=Part, metadata=REQUIRED)
    second: Part = field(default_factory=Part, metadata=REQUIRED)
    extra: Part = field(default_factory=Part)
    options: dict[str, Any] = field(default_factory=dict)
    switch: bool | Literal["auto"] = "auto"


def test_files_yaml_and_json_read_alike(tmp_path):
    data = {"train": {"lr": 1e-3, "steps": [1, 2]}, "name": "n"}
    (tmp_path / "a.json").write_text(json.dumps(data))
    (tmp_path / "a.yaml").write_text(
        "train:\n  lr: 1e-3   # YAML 1.1 would read this as a string\n  steps: [1, 2]\nname: n\n"
    )
    assert load_file(tmp_path / "a.json") == load_file(tmp_path / "a.yaml") == data
    (tmp_path / "empty.yaml").write_text("")
    assert load_file(tmp_path / "empty.yaml") == {}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("list.yaml", "- 1\n- 2\n", r"must hold a mapping.*list"),
        ("bad.yaml", "a: [1, 2\n", r"bad\.yaml is not valid YAML"),
        ("half.json", '{"a": {', r"half\.json is not valid JSON"),
        ("c.txt", "{}", r"\.json, \.yaml or \.yml"),
    ],
)
def test_bad_files_are_one_line_config_errors(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_file(tmp_path / name)
    assert "\n" not in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_file(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_yaml_with_overrides(tmp_path / "nope.yaml", ["a=1"])


def test_string_overrides_use_yaml_value_rules(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-3\n  max_steps: 10\ndata:\n  batch_size: 4\n")
    overrides = [
        "train.lr=1e-4",
        "data.batch_size=8",
        "model.depth=[1, 2]",
        "x.y.z=a",
        "flag=true",
        "nothing=null",
        "opts={a: 1}",
        "text=",
    ]
    assert load_yaml_with_overrides(path, overrides) == {
        "train": {"lr": 1e-4, "max_steps": 10},
        "data": {"batch_size": 8},
        "model": {"depth": [1, 2]},
        "x": {"y": {"z": "a"}},
        "flag": True,
        "nothing": None,
        "opts": {"a": 1},
        "text": "",
    }
    assert load_yaml_with_overrides(None, ["a.b=2"]) == {"a": {"b": 2}}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match=r"'train\.lr' is a value"):
        apply_overrides({"train": {"lr": 1.0}}, ["train.lr.x=2"])
    with pytest.raises(ConfigError, match="empty key"):
        apply_overrides({}, ["train..lr=2"])


def test_mapping_overrides_take_nested_or_dotted_keys_and_merge():
    base = {"quantizer": {"kind": "rvq", "levels": 3}, "encoder": {"hf_config": None}, "name": "n"}
    nested = merge(base, {"quantizer": {"levels": 8}})
    dotted = merge(base, {"quantizer.levels": 8})
    assert nested == dotted == {**base, "quantizer": {"kind": "rvq", "levels": 8}}
    assert base["quantizer"]["levels"] == 3  # the base is not modified
    # a null section becomes one; keys inside a value are literal (parameter-name prefixes hold dots)
    out = merge(base, {"encoder.hf_config.hidden_size": 32, "lr_scales": {"text_tower.": 0.1}})
    assert out["encoder"] == {"hf_config": {"hidden_size": 32}} and out["lr_scales"] == {"text_tower.": 0.1}
    # string and mapping overrides are one mechanism
    assert apply_overrides(base, ["quantizer.levels=8"]) == dotted
    with pytest.raises(ConfigError, match=r"'name' is a value"):
        merge(base, {"name.first": "x"})


def test_from_dict_converts_strictly_and_round_trips():
    raw = {"name": "n", "lr": 2, "betas": [0.8, 0.9], "layers": [1, 2], "inner": {"kind": "b"}}
    out = from_dict(Outer, raw)
    assert out == Outer(name="n", lr=2.0, betas=(0.8, 0.9), layers=[1, 2], inner=Inner(size=3, kind="b"))
    assert isinstance(out.lr, float) and isinstance(out.betas, tuple)
    assert from_dict(Outer, to_dict(out)) == out
    assert json.loads(json.dumps(to_dict(out))) == to_dict(out)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "n", "inner": {"sise": 3}}, r"unknown config key\(s\): inner\.sise \(did you mean size\?"),
        ({"name": "n", "inner": {"kind": "c"}}, r"config key inner\.kind: 'c' is not one of \['a', 'b'\]"),
        ({}, r"missing required config key\(s\): name"),
        ({"name": "n", "layers": [1, "two"]}, r"config key layers\[1\]: expected int"),
        ({"name": "n", "lr": "fast"}, r"config key lr: expected float"),
        ({"name": "n", "limit": [1]}, r"config key limit: expected float, got list"),
        ({"name": "n", "inner": {"size": True}}, r"config key inner\.size: expected int, got bool"),
        ({"name": "n", "betas": [0.9]}, r"config key betas: expected 2 items"),
        ({"name": "n", "inner": 3}, r"config key inner: expected a mapping"),
        ({"name": 5}, r"config key name: expected str"),
    ],
)
def test_from_dict_names_the_dotted_key(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        from_dict(Outer, data)
    assert "\n" not in str(info.value)


def test_required_keys_are_listed_in_one_line_and_checks_name_their_section():
    with pytest.raises(ConfigError, match=r"^Whole: missing required config key\(s\): first, second$"):
        from_dict(Whole, {})
    with pytest.raises(ConfigError, match=r"^Whole: missing required config key\(s\): second\.kind$"):
        from_dict(Whole, {"first": {"kind": "y"}, "second": {"width": 2}})
    whole = from_dict(Whole, {"first": {"kind": "y"}, "second": {"kind": "x"}})
    assert whole == Whole(first=Part("y"), second=Part("x"))  # code still builds it from defaults
    assert from_dict(Whole, to_dict(whole)) == whole
    with pytest.raises(ConfigError, match=r"^config key second: width must be >= 1, got 0$"):
        from_dict(Whole, {"first": {"kind": "y"}, "second": {"kind": "x", "width": 0}})
    parts = {"first": {"kind": "y"}, "second": {"kind": "x"}}
    assert from_dict(Whole, {**parts, "switch": False}).switch is False
    with pytest.raises(ConfigError, match=r"config key switch: 'on' does not match"):
        from_dict(Whole, {**parts, "switch": "on"})


@dataclass
class OuterLater(Outer):
    """``Outer`` as a later version might have it: two more fields, both at defaults."""

    warmup: int = 0
    extra: Part = field(default_factory=lambda: Part(width=2))


def test_without_defaults_keeps_only_what_was_chosen():
    chosen = Outer(name="m", lr=0.5, inner=Inner(kind="b"))
    assert without_defaults(chosen) == {"name": "m", "lr": 0.5, "inner": {"kind": "b"}}
    assert without_defaults(Outer(name="m")) == {"name": "m"}
    # a field added later at its default leaves the identity of an earlier config unchanged
    later = OuterLater(name="m", lr=0.5, inner=Inner(kind="b"))
    assert without_defaults(later) == without_defaults(chosen)
    # a nested default is the field's own default (Part(width=2)), not the class defaults (width 4)
    assert without_defaults(OuterLater(name="m", extra=Part(width=4))) == {"name": "m", "extra": {"width": 4}}
    assert without_defaults(OuterLater(name="m", extra=Part(width=2))) == {"name": "m"}
    with pytest.raises(TypeError, match="dataclass instance"):
        without_defaults({"name": "m"})
