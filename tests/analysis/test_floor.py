"""The noise floor (--min-abs) and the share below float resolution, on a constructed store with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stores import make_store

from lca_cli.analysis.floor import run_dtype
from lca_cli.analysis.reduce import summarize
from lca_cli.errors import UsageError
from lca_cli.store import LcaStore

N_PAIRS, P = 10, 52  # tests/stores.py's layout has 52 parameters: fc1 30, fc2 21, scale 1

#: Entry j of every row: sign (-1)^(j+1) (even j help), magnitude 10^-(j % 13); column 0 exactly 0.
EXPONENTS = np.arange(P) % 13
SIGNS = np.where(np.arange(P) % 2 == 0, -1.0, 1.0)


def constructed(path: Path, dtype: str | None = None) -> LcaStore:
    """The store whose every row is the constructed row above."""
    row = SIGNS * 10.0 ** (-EXPONENTS.astype(np.float64))
    row[0] = 0.0
    return make_store(path, n_pairs=N_PAIRS, values=np.tile(row, (N_PAIRS, 1)), dtype=dtype)[0]


def test_floor_counts_and_resolution_share_are_the_constructed_ones(tmp_path: Path) -> None:
    store = constructed(tmp_path / "s.zarr")
    plain = summarize(store)
    floored = summarize(store, min_abs=3e-6)
    # Above 3e-6: magnitudes 1 .. 1e-5 (exponents 0..5); even columns help, odd hurt, column 0 is 0.
    big = (EXPONENTS <= 5) & (np.arange(P) != 0)
    helped = int((big & (SIGNS < 0)).sum())
    hurt = int((big & (SIGNS > 0)).sum())
    assert floored.header["helped_share_mean"] == pytest.approx(helped / P)
    assert floored.header["hurt_share_mean"] == pytest.approx(hurt / P)
    assert floored.header["zero_share_mean"] == pytest.approx(1 - (helped + hurt) / P)
    # Without the floor every nonzero entry counts (the stored counts): 26 even columns less column 0 help.
    assert plain.header["helped_share_mean"] == pytest.approx(25 / P)
    # Totals are unchanged by the floor, row by row.
    assert floored.header["sum_lca"] == plain.header["sum_lca"]
    assert [r["lca"] for r in floored.rows] == [r["lca"] for r in plain.rows]
    # Below float32 resolution: 0 < |lca| <= 1.19e-7 x 1 (each row's largest |lca| is 1): exponents 7..12.
    tiny = int(((EXPONENTS >= 7) & (np.arange(P) != 0)).sum())
    assert floored.header["below_resolution_share"] == pytest.approx(tiny / P)
    assert floored.header["dtype"] == "float32"
    fc1 = floored.rows[0]
    assert fc1["name"] == "fc1"
    in_fc1 = np.arange(P) < 30
    assert fc1["below_resolution_share"] == pytest.approx(((EXPONENTS >= 7) & in_fc1 & (np.arange(P) != 0)).sum() / 30)
    assert fc1["helped_share"] == pytest.approx((big & (SIGNS < 0) & in_fc1).sum() / 30)
    # The default summary has none of the floor's keys (its JSON is what it was).
    assert "below_resolution_share" not in plain.header and "below_resolution_share" not in plain.columns


def test_floor_zero_keeps_the_stored_counts_and_neuron_and_iteration_rows_agree(tmp_path: Path) -> None:
    store, full, _ = make_store(tmp_path / "s.zarr", n_pairs=12)
    plain, zero = summarize(store), summarize(store, min_abs=0.0)
    for key in ("helped_share_mean", "zero_share_mean", "hurt_share_mean", "helped_fraction_mean"):
        assert zero.header[key] == pytest.approx(plain.header[key])
    x = 5e-4
    lca = full["train"].astype(np.float64)
    it = summarize(store, by="iteration", min_abs=x)
    assert [r["helped_share"] for r in it.rows] == pytest.approx(list((lca < -x).sum(axis=1) / P))
    neurons = summarize(store, by="neuron", min_abs=x, sort="model")
    assert sum(r["helped_share"] * r["parameters"] for r in neurons.rows) * 12 == pytest.approx((lca < -x).sum())


def test_float64_runs_resolve_more(tmp_path: Path) -> None:
    store = constructed(tmp_path / "s.zarr", dtype="float64")
    assert run_dtype(store) == np.float64
    # float64's eps (2.2e-16) is below the smallest entry (1e-12): nothing is below its resolution.
    assert summarize(store, min_abs=0.0).header["below_resolution_share"] == 0.0


def test_floor_refuses_a_negative_floor(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr", n_pairs=9)[0]
    with pytest.raises(UsageError, match="--min-abs -1"):
        summarize(store, min_abs=-1.0)


def test_floor_and_series_refuse_a_store_of_neuron_columns(tmp_path: Path) -> None:
    from lca_cli.core.columns import Columns
    from lca_cli.core.layout import Layout
    from lca_cli.store import BlockRows

    layout = Layout.from_shapes([("fc.weight", (3, 4)), ("fc.bias", (3,))])
    columns = Columns.build(layout, "neuron")
    n = 4
    store = LcaStore.create(tmp_path / "n.zarr", layout=layout, sets=["train"], steps=list(range(n + 1)),
                            attrs={"method": "rk4"}, columns=columns)  # fmt: skip
    k = len(layout.params)
    store.write_block(
        "train",
        BlockRows(0, np.full((n, columns.size), -1e-3, np.float32), np.linspace(2, 1, n + 1), np.zeros(n),
                  np.full(n, 2, np.int32), np.zeros(n, bool), np.full((n, k), -1e-3), np.ones((n, k), int),
                  np.zeros((n, k), int), np.zeros(n)),
    )  # fmt: skip
    store = LcaStore.open(tmp_path / "n.zarr")
    assert summarize(store).rows  # the plain summary works
    with pytest.raises(UsageError, match=r"--min-abs needs one lca column per parameter.*--granularity neuron"):
        summarize(store, min_abs=0.0)
    with pytest.raises(UsageError, match="--series needs one lca column per parameter"):
        summarize(store, series=True)
