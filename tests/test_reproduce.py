"""Smoke test of scripts/reproduce_paper.py: the whole pipeline on tiny synthetic runs writes every section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "reproduce_paper.py"


def _load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_paper"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_run_writes_every_finding(tmp_path: Path) -> None:
    rp = _load_script()
    out, work = tmp_path / "docs", tmp_path / "work"
    code = rp.main(["--smoke", "--out", str(out), "--work", str(work), "--device", "cpu", "--no-figures"])
    assert code == 0
    text = (out / "paper.md").read_text(encoding="utf-8")
    for heading in (
        "## Setup",
        "## 1. Noise",
        "## 2. Some layers hurt overall",
        "### Freezing the last layer",
        "## 3. Learning is synchronised across layers",
        "## 4. Method accuracy",
    ):
        assert heading in text, heading
    assert "**Paper:**" in text and "Hardware:" in text and "smoke" in text
    # The frozen layer's LCA is exactly zero, and the reference row of finding 4 is there.
    assert "max |LCA| over its parameters = 0." in text
    assert "reference (float64, n = 32 on every pair)" in text
    assert not (out / "figures").exists()  # --no-figures
    # Runs and stores stay in --work.
    assert (work / "fc_mnist" / "lca.zarr").is_dir()
