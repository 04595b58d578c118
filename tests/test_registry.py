"""Names: architectures build untrained weights, ``arch.tag`` names trained weights, an architecture name
loads its default tag; unified models are found by name in the package and in POLYTOK_UNIFIED_WEIGHTS;
``polytok presets`` lists every entry."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from polytok import Tokenizer
from polytok.cli import main
from polytok.hub import list_shipped, load_tokenizer
from polytok.models.registry import list_presets
from polytok.peers import list_peers
from polytok.registry import (
    CONFIG_DIR,
    DEFAULT_TAG,
    SHIPPED_DIR,
    UNIFIED_WEIGHTS_ENV,
    find_model,
    get_model,
    list_models,
    run_config_path,
    split_name,
    trained_weights,
)


def test_split_name() -> None:
    assert split_name("evotok-tiny.builtin") == ("evotok-tiny", "builtin")
    assert split_name("evotok-tiny") == ("evotok-tiny", None)


def test_every_preset_is_an_untrained_architecture_and_every_shipped_folder_a_tagged_entry() -> None:
    untrained = {e.name for e in list_models(kind="tokenizer", trained=False)}
    assert untrained == set(list_presets()) | set(list_peers())  # peers: architectures of their own
    folders = sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "config.json").is_file())
    trained = {e.name: e for e in list_models(kind="tokenizer", trained=True)}
    assert sorted(trained) == [f"{f}.{DEFAULT_TAG}" for f in folders]
    assert all(e.arch in list_presets() and e.path == SHIPPED_DIR / e.arch for e in trained.values())
    assert list_shipped() == folders
    assert get_model("evotok-tiny").trained is False and get_model("evotok-tiny.builtin").trained
    assert find_model("evotok-tiny.nosuchtag") is None
    with pytest.raises(KeyError, match=r"evotok-tiny\.builtin"):  # the error lists the names there are
        get_model("no-such-model")


def test_an_architecture_name_loads_its_default_tag_and_a_tag_loads_exactly_it() -> None:
    assert trained_weights("evotok-tiny").name == "evotok-tiny.builtin"
    assert trained_weights("evotok-tiny.other") is None
    by_arch, by_tag = load_tokenizer("evotok-tiny"), load_tokenizer("evotok-tiny.builtin")
    shipped = Tokenizer.from_pretrained(SHIPPED_DIR / "evotok-tiny")
    for name, value in shipped.checkpoint_state_dict().items():
        assert torch.equal(by_arch.checkpoint_state_dict()[name], value), name
        assert torch.equal(by_tag.checkpoint_state_dict()[name], value), name
    with pytest.raises(FileNotFoundError, match="untrained"):
        load_tokenizer("unitok-l")  # an architecture without trained weights
    with pytest.raises(FileNotFoundError):
        load_tokenizer("evotok-tiny.other", allow_untrained=True)  # a tag is never untrained weights
    assert isinstance(load_tokenizer("unitok-tiny.builtin"), Tokenizer)


def test_unified_models_by_name_in_the_package_and_in_other_directories(tmp_path, monkeypatch) -> None:
    shipped = [e for e in list_models(kind="unified") if e.path.parent == SHIPPED_DIR]
    assert [e.name for e in shipped] == ["unified-evotok-tiny.builtin"]
    assert trained_weights("unified-evotok-tiny", kind="unified") == shipped[0]
    extra = tmp_path / "weights"
    shutil.copytree(shipped[0].path, extra / "my-unified", ignore=shutil.ignore_patterns("image_tokenizer"))
    assert find_model("my-unified") is None
    monkeypatch.setenv(UNIFIED_WEIGHTS_ENV, str(extra))
    entry = get_model("my-unified", kind="unified")
    assert entry.path == extra / "my-unified" and entry.trained and entry.tag is None


def test_run_configs_by_name() -> None:
    assert run_config_path("evotok-tiny") == CONFIG_DIR / "evotok-tiny.yaml"
    with pytest.raises(FileNotFoundError, match="unified-shipped"):  # the error lists the known ones
        run_config_path("no-such-config")


def test_presets_command_lists_every_entry(capsys) -> None:
    assert main(["presets"]) == 0
    listing = json.loads(capsys.readouterr().out)
    names = {m["name"]: m for m in listing["models"]}
    assert set(names) == {e.name for e in list_models()}
    assert names["evotok-tiny"]["trained"] is False and "path" not in names["evotok-tiny"]
    assert names["evotok-tiny.builtin"] == {
        "name": "evotok-tiny.builtin",
        "kind": "tokenizer",
        "arch": "evotok-tiny",
        "tag": "builtin",
        "trained": True,
        "path": str(SHIPPED_DIR / "evotok-tiny"),
    }
    assert names["unified-evotok-tiny.builtin"]["kind"] == "unified"
