"""``polytok train CONFIG``: a config with a ``unified`` section trains the unified model
(:mod:`polytok.recipes.unified_run`), any other a tokenizer (:mod:`polytok.recipes.tokenizer_run`)."""

from __future__ import annotations

import os

from polytok.config import from_dict, load_yaml_with_overrides


def train_from_file(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()):
    """``polytok train``: a config with a ``unified`` section trains the unified model
    (:mod:`polytok.recipes.unified_run`), any other trains a tokenizer. Returns the trained model."""
    data = load_yaml_with_overrides(path, list(overrides))
    if "unified" in data:
        from polytok.recipes.unified_run import UnifiedRunConfig, train_unified

        return train_unified(from_dict(UnifiedRunConfig, data))
    from polytok.recipes.tokenizer_run import RunConfig, train_tokenizer

    return train_tokenizer(from_dict(RunConfig, data))
