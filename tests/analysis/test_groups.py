"""Seed groups: mean / sd / n per statistic over comparable stores, and two groups' difference with its spread."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from stores import make_store

from lca_cli.analysis.groups import check_comparable, compare_groups, stat, summarize_group
from lca_cli.analysis.reduce import summarize
from lca_cli.errors import UsageError


def seeds(tmp_path: Path, n: int, first: int = 0, **kwargs: object) -> list:
    return [make_store(tmp_path / f"s{i}.zarr", n_pairs=9, seed=i, **kwargs)[0] for i in range(first, first + n)]


def test_stat_is_mean_sample_sd_and_count() -> None:
    assert stat([1.0, 2.0, 3.0, None]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert stat([5.0]) == {"mean": 5.0, "sd": None, "n": 1}
    assert stat([None, float("nan")]) == {"mean": None, "sd": None, "n": 0}


def test_group_rows_are_the_members_mean_sd_n(tmp_path: Path) -> None:
    stores = seeds(tmp_path, 3, sets=("train", "val"))
    group = summarize_group(stores, by="layer", set_name="val")
    singles = [summarize(s, set_name="val") for s in stores]
    assert group.header["n"] == 3 and group.header["sd_ddof"] == 1 and group.header["set"] == "val"
    for i, row in enumerate(group.rows):
        for key in ("lca", "helped_share", "hurt_share", "helped_fraction", "step_50"):
            # A milestone never reached is None in a store: n counts the stores that have a value.
            values = np.array([s.rows[i][key] for s in singles if s.rows[i][key] is not None], dtype=float)
            assert row[f"{key}_n"] == values.size
            assert row[f"{key}_mean"] == (pytest.approx(values.mean()) if values.size else None)
            assert row[f"{key}_sd"] == (pytest.approx(values.std(ddof=1)) if values.size > 1 else None)
        verdicts = [s.rows[i]["significance"] for s in singles]
        assert row["significance_helps"] == verdicts.count("helps")
    dl = [s.header["delta_loss"] for s in singles]
    assert group.header["stats"]["delta_loss"]["mean"] == pytest.approx(np.mean(dl))
    assert group.header["stats"]["delta_loss"]["sd"] == pytest.approx(np.std(dl, ddof=1))


def test_identical_stores_have_sd_zero_and_min_abs_passes_through(tmp_path: Path) -> None:
    a = make_store(tmp_path / "a.zarr", n_pairs=9, seed=4)[0]
    b = make_store(tmp_path / "b.zarr", n_pairs=9, seed=4)[0]
    group = summarize_group([a, b], by="tensor", min_abs=1e-3)
    assert all(r["lca_sd"] == 0.0 and r["below_resolution_share_n"] == 2 for r in group.rows)
    assert group.header["min_abs"] == 1e-3


def test_stores_that_are_not_comparable_are_refused(tmp_path: Path) -> None:
    base = make_store(tmp_path / "a.zarr", n_pairs=9)[0]
    other_shape = make_store(tmp_path / "b.zarr", n_pairs=9, shapes=[("fc1.weight", (6, 5)), ("fc1.bias", (6,))])[0]
    with pytest.raises(UsageError, match=r"not comparable: their tensors differ \(fc1.weight\(6, 4\) vs"):
        check_comparable([base, other_shape])
    other_sets = make_store(tmp_path / "c.zarr", n_pairs=9, sets=("train", "val"))[0]
    with pytest.raises(UsageError, match="evaluation sets"):
        summarize_group([base, other_sets])
    with pytest.raises(UsageError, match="is given twice"):
        summarize_group([base, make_store(tmp_path / "e.zarr", n_pairs=9)[0], base])
    shifted = make_store(tmp_path / "d.zarr", n_pairs=9, first_step=1)[0]
    with pytest.raises(UsageError, match=r"iterations \(start steps\) in the window differ"):
        summarize_group([base, shifted], by="iteration")


def test_difference_of_two_groups_with_its_standard_error(tmp_path: Path) -> None:
    a = summarize_group(seeds(tmp_path, 3))
    b = summarize_group(seeds(tmp_path, 2, first=3))
    cmp = compare_groups(a, b, ("A", "B"))
    row = cmp["rows"][0]["stats"]["lca"]
    ra, rb = a.rows[0], b.rows[0]
    assert row["diff"] == pytest.approx(rb["lca_mean"] - ra["lca_mean"])
    se = math.sqrt(ra["lca_sd"] ** 2 / 3 + rb["lca_sd"] ** 2 / 2)
    assert row["se"] == pytest.approx(se) and row["t"] == pytest.approx(row["diff"] / se)
    (tmp_path / "one").mkdir()
    one = summarize_group(seeds(tmp_path / "one", 1))
    assert compare_groups(a, one)["rows"][0]["stats"]["lca"]["se"] is None  # n = 1: no spread, no se
