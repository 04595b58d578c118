"""Scripts under scripts/ imported as modules, so tests call their functions directly."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script_path(name: str) -> Path:
    """``scripts/<kind>/<name>.py`` (or ``.sh``): one folder per kind (studies, parity, shipped)."""
    found = sorted(SCRIPTS.glob(f"*/{name}")) + sorted(SCRIPTS.glob(f"*/{name}.py"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one script named {name!r} under {SCRIPTS}, found {found}")
    return found[0]


def load_script(name: str) -> ModuleType:
    """A script as a fresh module (scripts are not a package, so they cannot be imported by name)."""
    spec = importlib.util.spec_from_file_location(name, script_path(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
