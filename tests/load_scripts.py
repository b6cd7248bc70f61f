"""Import a file of ``scripts/`` as a module, for the tests of the benchmark and paper scripts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str, module: str | None = None) -> ModuleType:
    """Execute ``scripts/NAME.py`` as module ``module`` (default ``_lca_NAME``), registered in ``sys.modules``.

    Registered before it runs: dataclasses look their module up while a class is made.
    """
    spec = importlib.util.spec_from_file_location(module or f"_lca_{name}", SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
