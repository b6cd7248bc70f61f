"""The store's ``updated`` attribute is the END time of the compute that wrote rows (it was the first write's)."""

from __future__ import annotations

import math
import os
from datetime import datetime
from pathlib import Path

import pytest
from faults import run_lca
from runs import make_tiny_run

from lca_cli.store import LcaStore


@pytest.mark.slow
def test_updated_is_the_end_of_compute(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=8)
    out = tmp_path / "lca.zarr"
    # Each forward pass sleeps: 4 chunks of 2 rows written seconds apart (numbers unchanged).
    env = {**os.environ, "LCA_TEST_PAUSE": "0.1"}
    proc = run_lca("compute", run, "--out", out, "--quiet", "--rows-per-chunk", "2", "--threads", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    chunks = [p for p in (out / "train" / "lca").rglob("*") if p.is_file() and p.name != "zarr.json"]
    first, last = min(p.stat().st_mtime for p in chunks), max(p.stat().st_mtime for p in chunks)
    assert last - first >= 2, "the rows must be written far enough apart to tell the first write from the last"
    updated = datetime.strptime(LcaStore.open(out).attrs["updated"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert updated >= math.floor(last)  # after the last rows (whole seconds); it was the first write's time
