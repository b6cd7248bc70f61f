"""Float32 accumulation under a bound measured on the run (lca_cli.computation.precision), on real small runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunCache

from lca_cli.computation.precision import SHARE, accumulation_bound, rounding_terms
from lca_cli.computation.runner import compute
from lca_cli.store.lcastore import LcaStore


def _store(run_dir: Path, config, out: Path) -> LcaStore:
    compute(run_dir, config, out)
    return LcaStore.open(out)


@pytest.mark.parametrize("kind", ["tanh_mlp", "relu_mlp"])
def test_float32_rows_stay_within_the_recorded_bound(runs: RunCache, tmp_path: Path, kind: str) -> None:
    # Default flags: the bound holds on these runs, so float32 is chosen and recorded with its numbers; the same
    # run forced to float64 differs from it, row by row, by no more than the recorded bound (relative L1).
    run_dir, config = runs.run(kind)
    auto = _store(run_dir, config, tmp_path / "auto.zarr")
    wide = _store(run_dir, config.with_overrides(accumulate="float64"), tmp_path / "wide.zarr")
    rec = auto.attrs["accumulation"]
    assert rec["dtype"] == "float32" and auto.attrs["evaluation"]["accumulation"] == "float32"
    assert rec["bound"] <= rec["limit"] == pytest.approx(SHARE * auto.attrs["l1_tol"])
    assert rec["kappa"]["train"] >= 1.0
    forced = wide.attrs["accumulation"]
    assert forced["dtype"] == "float64" and forced["reason"] == "--accumulate float64"
    a, b = auto.read("train", "lca").astype(np.float64), wide.read("train", "lca").astype(np.float64)
    same = auto.read("train", "splits") == wide.read("train", "splits")
    assert same.mean() >= 0.8  # rounding may tip a refinement decision; rows refined alike are compared
    diff = np.abs(a - b)[same].sum(1) / np.abs(b)[same].sum(1)
    assert diff.max() <= rec["bound"], (diff.max(), rec["bound"])
    assert diff.max() > 0  # the paths really differ: float32 was used
    # Conservation still holds in float32: every residual within the per-pair budget, nothing flagged.
    assert not auto.read("train", "flagged").any()
    dl = np.diff(auto.read("train", "loss"))
    residual = auto.read("train", "residual")
    assert np.allclose(dl - a.sum(1), residual, rtol=0, atol=1e-5 * np.abs(a).sum(1).max())


def test_float64_where_the_bound_fails(runs: RunCache, tmp_path: Path) -> None:
    # One sample per evaluation chunk: 200 float32 chunk sums round 200 times, the bound exceeds 1% of l1_tol,
    # and the store is computed (and recorded) in float64.
    run_dir, config = runs.run("tanh_mlp")
    store = _store(run_dir, config.with_overrides(batch_size=1), tmp_path / "s.zarr")
    rec = store.attrs["accumulation"]
    assert rec["chunks"]["train"] == 200 and rec["terms"]["train"] > 200
    assert rec["dtype"] == "float64" and rec["bound"] > rec["limit"]
    assert store.attrs["evaluation"]["accumulation"] == "float64"


def test_bound_formula() -> None:
    # SAFETY n u κ with n the roundings of one entry: chunks + 5 + max_splits / 2 + ceil(log2 D).
    assert rounding_terms(1, 32, 1 << 20) == 1 + 5 + 16 + 20
    u = torch.finfo(torch.float32).eps / 2
    assert accumulation_bound(1, 32, 1 << 20, 3.0, torch.float32) == pytest.approx(2 * 42 * u * 3.0)
    assert accumulation_bound(1, 32, 1 << 20, 3.0, torch.float64) < 1e-12
