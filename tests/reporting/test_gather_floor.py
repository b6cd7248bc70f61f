"""``lca report --min-abs X``: the report's helped / hurt counts above a floor, on a constructed store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stores import make_store

pytest.importorskip("matplotlib")

import lca_cli
from lca_cli.reporting.compare import write_comparison
from lca_cli.reporting.gather import gather_set

P, N = 52, 9


def constructed(path: Path) -> np.ndarray:
    """Every row: entry j = (-1)^(j+1) x 10^-(j % 13), column 0 exactly 0 (even columns help)."""
    j = np.arange(P)
    row = np.where(j % 2 == 0, -1.0, 1.0) * 10.0 ** -(j % 13).astype(np.float64)
    row[0] = 0.0
    make_store(path, n_pairs=N, values=np.tile(row, (N, 1)))
    return row


def test_gathered_counts_are_above_the_floor(tmp_path: Path) -> None:
    row = constructed(tmp_path / "s.zarr")
    store = lca_cli.open_store(tmp_path / "s.zarr").lca_store
    plain = gather_set(store, "train", None)
    floored = gather_set(store, "train", None, min_abs=3e-6)
    assert plain.floor == {}
    np.testing.assert_array_equal(floored.comp.helped, np.full(N, (row < -3e-6).sum()))
    np.testing.assert_array_equal(floored.comp.hurt, np.full(N, (row > 3e-6).sum()))
    np.testing.assert_array_equal(
        floored.lcomp.helped, [(row[:30] < -3e-6).sum() * N, (row[30:51] < -3e-6).sum() * N, 0]
    )
    np.testing.assert_array_equal(floored.totals, plain.totals)  # the floor leaves totals alone
    tiny = ((np.abs(row) > 0) & (np.abs(row) <= np.finfo(np.float32).eps)).sum() / P
    assert floored.floor["below_resolution_share"] == pytest.approx(tiny)


@pytest.mark.slow
def test_comparison_states_the_floor_and_the_resolution_share(tmp_path: Path) -> None:
    constructed(tmp_path / "a" / "lca.zarr")
    make_store(tmp_path / "b" / "lca.zarr", n_pairs=N)
    result = write_comparison(tmp_path / "a" / "lca.zarr", tmp_path / "b" / "lca.zarr", tmp_path / "c.html",
                              min_abs=1e-4)  # fmt: skip
    floor = result.numbers["per_set"]["train"]["floor"]
    assert floor[0]["min_abs"] == 1e-4 and floor[0]["below_resolution_share"] > 0
    assert "Noise floor 0.0001" in result.html.read_text()


def test_report_of_one_store_gives_the_floor_per_set(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr", n_pairs=N, sets=("train", "val"))
    plain = lca_cli.report(tmp_path / "s.zarr", tmp_path / "p.html", views=["composition"])
    floored = lca_cli.report(tmp_path / "s.zarr", tmp_path / "f.html", views=["composition"], min_abs=1e-3)
    assert "floor" not in plain.numbers and sorted(floored.numbers["floor"]) == ["train", "val"]
    assert floored.numbers["helped_share_mean"] < plain.numbers["helped_share_mean"]
    page = floored.html.read_text()
    assert "noise floor (--min-abs)" in page and "|LCA| &lt;= 0.001 counts as zero" in page
    assert "noise floor" not in plain.html.read_text()
