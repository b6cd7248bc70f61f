"""``--series``: the layer x iteration long table against float64 reference sums of a small store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stores import make_store

from lca_cli.analysis.reduce import Window, summarize
from lca_cli.errors import UsageError


def test_series_equals_float64_reference_sums(tmp_path: Path) -> None:
    store, full, _ = make_store(tmp_path / "s.zarr", n_pairs=11, rows_per_chunk=4, sets=("train", "val"))
    summary = summarize(store, set_name="val", series=True, window=Window(4, 18))
    assert summary.columns == ["step", "layer", "lca", "neg", "pos"]
    lca = full["val"].astype(np.float64)  # (T, P): the float64 reference
    spans = {"fc1": (0, 30), "fc2": (30, 51), "scale": (51, 52)}
    rows = [t for t in range(11) if 4 <= 2 * t < 18]
    assert [r["step"] for r in summary.rows] == [2 * t for t in rows for _ in spans]
    for r in summary.rows:
        a, b = spans[r["layer"]]
        block = lca[r["step"] // 2, a:b]
        assert r["neg"] == pytest.approx(block[block < 0].sum(), rel=1e-12, abs=1e-15)
        assert r["pos"] == pytest.approx(block[block > 0].sum(), rel=1e-12, abs=1e-15)
        assert r["lca"] == pytest.approx(block.sum(), rel=1e-9, abs=1e-12)
    by_tensor = summarize(store, series=True, by="tensor")
    assert {r["tensor"] for r in by_tensor.rows} == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "scale"}
    assert len(by_tensor.rows) == 11 * 5


def test_series_frames(tmp_path: Path) -> None:
    pytest.importorskip("xarray")
    store = make_store(tmp_path / "s.zarr", n_pairs=9)[0]
    summary = summarize(store, series=True)
    frame = summary.to_pandas()
    assert list(frame.index.names) == ["step", "layer"] and list(frame.columns) == ["lca", "neg", "pos"]
    dataset = summary.to_xarray()
    assert dict(dataset.sizes) == {"step": 9, "layer": 3}


@pytest.mark.parametrize(
    ("options", "needle"),
    [({"by": "neuron"}, "--by neuron"), ({"top": 3}, "--top"), ({"sort": "abs"}, "--sort")],
)
def test_series_refuses_what_does_not_go_with_it(tmp_path: Path, options: dict, needle: str) -> None:
    store = make_store(tmp_path / "s.zarr", n_pairs=9)[0]
    with pytest.raises(UsageError, match=needle):
        summarize(store, series=True, **options)
