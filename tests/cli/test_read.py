"""``lca summarize`` over seed groups, with a noise floor and as a series: the CLI's JSON and CSV against the API."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from stores import make_store

import lca_cli
from lca_cli.errors import UsageError


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("seeds")
    for i in range(3):
        make_store(root / f"seed{i}.zarr", n_pairs=9, seed=i, sets=("train", "val"))
    return [root / f"seed{i}.zarr" for i in range(3)]


def test_group_json_is_the_api_summary(capsys: pytest.CaptureFixture[str], group: list[Path]) -> None:
    code, out, err = run_cli(capsys, "summarize", *group, "--by", "layer", "--set", "val", "--format", "json")
    assert code == 0, err
    printed = json.loads(out)
    api = lca_cli.open_group(group).summarize(by="layer", set="val").to_dict()
    assert printed == json.loads(json.dumps(api))
    assert printed["header"]["n"] == 3 and printed["header"]["sd_ddof"] == 1
    fc1 = printed["rows"][0]
    lcas = [lca_cli.open_store(p).summarize(set="val").rows[0]["lca"] for p in group]
    assert fc1["lca_mean"] == pytest.approx(np.mean(lcas)) and fc1["lca_sd"] == pytest.approx(np.std(lcas, ddof=1))


def test_group_csv_and_table(capsys: pytest.CaptureFixture[str], group: list[Path]) -> None:
    code, out, _ = run_cli(capsys, "summarize", *group, "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["name"] for r in rows] == ["fc1", "fc2", "scale"]
    assert {"lca_mean", "lca_sd", "lca_n", "helped_share_mean", "significance_helps"} <= set(rows[0])
    code, out, _ = run_cli(capsys, "summarize", *group)
    assert code == 0 and "group of 3 stores" in out and "ddof 1" in out


def test_group_of_stores_that_differ_is_a_one_line_usage_error(
    capsys: pytest.CaptureFixture[str], group: list[Path], tmp_path: Path
) -> None:
    make_store(tmp_path / "other.zarr", n_pairs=9, shapes=[("fc1.weight", (6, 4)), ("fc1.bias", (6,))])
    code, out, err = run_cli(capsys, "summarize", group[0], tmp_path / "other.zarr")
    assert code == UsageError.exit_code and out == ""
    assert len(err.strip().splitlines()) == 1 and "not comparable" in err
    code, _, err = run_cli(capsys, "summarize", *group, "--series")
    assert code == UsageError.exit_code and "--series takes one store" in err


def test_min_abs_changes_the_counts_as_documented(capsys: pytest.CaptureFixture[str], group: list[Path]) -> None:
    x = 1e-3
    code, out, _ = run_cli(capsys, "summarize", group[0], "--by", "iteration", "--min-abs", x, "--json")
    assert code == 0
    printed = json.loads(out)
    full = make_store(group[0].parent / "again.zarr", n_pairs=9, seed=0, sets=("train", "val"))[1]["train"]
    helped = (full.astype(np.float64) < -x).sum(axis=1) / full.shape[1]
    assert [r["helped_share"] for r in printed["rows"]] == pytest.approx(list(helped))
    assert printed["header"]["min_abs"] == x and "below_resolution_share" in printed["columns"]
    code, plain, _ = run_cli(capsys, "summarize", group[0], "--by", "iteration", "--json")
    assert "min_abs" not in json.loads(plain)["header"]


def test_series_csv(capsys: pytest.CaptureFixture[str], group: list[Path]) -> None:
    code, out, _ = run_cli(capsys, "summarize", group[1], "--by", "layer", "--series", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["step", "layer", "lca", "neg", "pos"] and len(rows) == 9 * 3
    for r in rows:
        assert float(r["neg"]) + float(r["pos"]) == pytest.approx(float(r["lca"]), rel=1e-5, abs=1e-9)
    code, out, _ = run_cli(capsys, "summarize", group[1], "--series", "--json")
    assert json.loads(out)["header"]["series"] is True


@pytest.mark.parametrize(
    "args",
    [
        ["a1", "a2", "--vs", "b1", "b2", "--out", "x.html"],
        ["a1", "--vs", "b1", "--set", "val", "a2", "--vs", "b2", "--out", "x.html"],
        ["a1", "a2", "--vs", "b1", "--vs", "b2", "-q", "--out", "x.html"],
    ],
)
def test_vs_takes_every_path_up_to_the_next_option(args: list[str]) -> None:
    from lca_cli.cli.read import report

    params = report.make_context("report", list(args)).params
    assert [str(p) for p in params["vs"]] == ["b1", "b2"]
    assert [str(p) for p in params["stores"]][:2] == ["a1", "a2"]
