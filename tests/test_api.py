"""The Python API (``import lca_cli``) against the command line it sits under: same stores, same numbers."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from faults import run_lca
from runs import make_tiny_run
from test_golden import store_digests

import lca_cli
import lca_cli.errors

BYS = ("layer", "tensor", "neuron", "iteration")


lca = run_lca  # ``lca ARGS`` in a fresh process, as a user runs it


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, lca_cli.ComputeResult, Path]:
    """A tiny run computed twice: by ``lca_cli.compute`` and by ``lca compute`` (one thread each, see below)."""
    root = tmp_path_factory.mktemp("api")
    run = make_tiny_run(root)
    # One thread on both sides: --threads auto picks a count by timing, and the count can change the float
    # summation order of a reduction (so its last bits); everything else is the default.
    result = lca_cli.compute(run, out=root / "api.zarr", threads=1)
    proc = lca("compute", run, "--out", root / "cli.zarr", "--threads", "1", "--json", "-q")
    assert proc.returncode == 0, proc.stderr
    return run, result, root / "cli.zarr"


def test_compute_makes_the_cli_store_bit_for_bit(both: tuple[Path, lca_cli.ComputeResult, Path]) -> None:
    _run, result, cli_store = both
    assert store_digests(result.store) == store_digests(cli_store)


def test_compute_result_says_what_was_done(both: tuple[Path, lca_cli.ComputeResult, Path]) -> None:
    run, result, _ = both
    assert result.store == run.parent / "api.zarr"
    assert (result.n_pairs, result.computed, result.skipped) == (12, 12, 0)
    assert result.flagged == {"train": []}
    assert result.gradients_per_pair >= 2 and result.flagged_pairs == 0
    assert not result.interrupted
    again = lca_cli.compute(run, out=result.store, threads=1)  # resumes: nothing left to do
    assert (again.computed, again.skipped, again.gradients_per_pair) == (0, 12, 0.0)
    assert lca_cli.open_store(again.store).path == result.store


@pytest.mark.parametrize("by", BYS)
def test_summarize_to_dict_is_what_the_cli_prints(both: tuple[Path, lca_cli.ComputeResult, Path], by: str) -> None:
    _run, result, cli_store = both
    mine = lca_cli.open_store(result.store).summarize(by=by).to_dict()
    on_same = lca("summarize", result.store, "--by", by, "--json")
    assert on_same.returncode == 0, on_same.stderr
    assert json.loads(on_same.stdout) == json.loads(json.dumps(mine))  # exactly, NaN-free JSON both sides
    on_cli_store = json.loads(lca("summarize", cli_store, "--by", by, "--json").stdout)
    assert on_cli_store["header"].pop("store") == str(cli_store)
    assert mine["header"].pop("store") == str(result.store)
    assert on_cli_store == json.loads(json.dumps(mine))  # the same numbers from lca compute's store


def test_summarize_options(both: tuple[Path, lca_cli.ComputeResult, Path]) -> None:
    store = lca_cli.open_store(both[1].store)
    assert store.sets == ["train"] and store.n_pairs == 12 and list(store.steps) == list(range(13))
    window = store.summarize(by="iteration", steps="2:5")
    assert [r["step"] for r in window.rows] == [2, 3, 4]
    assert store.summarize(by="iteration", steps=(2, 5)).to_dict() == window.to_dict()
    assert [r["step"] for r in store.summarize(by="iteration", steps=7).rows] == [7]
    top = store.summarize(by="tensor", sort="hurt", top=2, concentration=True, set="train")
    assert len(top.rows) == 2 and top.rows[0]["lca"] >= top.rows[1]["lca"] and "params_50" in top.columns


def test_errors_speak_of_arguments_and_the_cli_of_flags(both: tuple[Path, lca_cli.ComputeResult, Path]) -> None:
    run, result, _ = both
    store = lca_cli.open_store(result.store)
    with pytest.raises(lca_cli.UsageError) as bad_window:
        store.summarize(steps="5:2")
    assert str(bad_window.value).startswith("steps=5:2: the window is empty") and "--" not in str(bad_window.value)
    cli = lca("summarize", result.store, "--steps", "5:2")
    assert cli.returncode == 2 and cli.stderr.startswith("Error: --steps 5:2: the window is empty")
    with pytest.raises(lca_cli.UsageError, match=r"^by='planet': expected one of layer"):
        store.summarize(by="planet")
    with pytest.raises(lca_cli.UsageError, match=r"^set=val: .* has no such evaluation set"):
        store.summarize(set="val")
    with pytest.raises(lca_cli.UsageError, match=r"^concentration works with by=layer or by=tensor, not by=neuron"):
        store.summarize(by="neuron", concentration=True)
    with pytest.raises(lca_cli.StoreError, match="is a run directory, not an lca store"):
        lca_cli.open_store(run)
    with pytest.raises(lca_cli.UsageError, match=r"unknown option.*max_split"):
        lca_cli.compute(run, out=result.store, max_split=4)
    with pytest.raises(lca_cli.UsageError, match=r"^lca report takes one store, or two to compare \(got 3\)"):
        lca_cli.report([store, store, store], run.parent / "x.html")
    with pytest.raises(lca_cli.UsageError, match=r"^labels: give one per store \(2\), got 1"):
        lca_cli.report([store, store], run.parent / "x.html", labels=["a"])


def test_error_classes_are_exported() -> None:
    for name in ("LcaError", "UsageError", "ConfigError", "RunDirError", "CheckpointError", "StoreError",
                 "NumericalError", "ToleranceError", "StoreBusyError", "StorageError"):  # fmt: skip
        assert getattr(lca_cli, name) is getattr(lca_cli.errors, name) and name in lca_cli.__all__


def test_to_pandas_and_to_xarray(both: tuple[Path, lca_cli.ComputeResult, Path]) -> None:
    store = lca_cli.open_store(both[1].store)
    layers = store.summarize(by="layer")
    frame = layers.to_pandas()
    assert list(frame.index) == [r["name"] for r in layers.rows] and frame.index.name == "layer"
    assert list(frame.columns) == [c for c in layers.columns if c != "name"]
    np.testing.assert_array_equal(frame["lca"].to_numpy(), [r["lca"] for r in layers.rows])
    assert frame.attrs["delta_loss"] == layers.header["delta_loss"]
    dataset = layers.to_xarray()
    assert dataset.sizes == {"layer": len(layers.rows)} and list(dataset["layer"].values) == list(frame.index)
    np.testing.assert_array_equal(dataset["lca"].values, frame["lca"].to_numpy())
    assert dataset.attrs["by"] == "layer" and json.loads(dataset.attrs["flagged_steps"]) == []
    iterations = store.summarize(by="iteration")
    per_step = iterations.to_pandas()
    assert list(per_step.index) == list(range(12)) and per_step.index.name == "step"
    ds = iterations.to_xarray()
    assert ds.sizes == {"iteration": 12} and list(ds["step"].values) == list(range(12))
    np.testing.assert_array_equal(ds["residual"].values, [r["residual"] for r in iterations.rows])


def test_to_pandas_and_to_xarray_without_the_library(
    both: tuple[Path, lca_cli.ComputeResult, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = lca_cli.open_store(both[1].store).summarize()
    monkeypatch.setitem(sys.modules, "xarray", None)  # an import of a None entry raises ImportError
    with pytest.raises(lca_cli.LcaError, match=r"^Summary.to_xarray needs xarray: pip install 'lca-cli\[xarray\]'$"):
        summary.to_xarray()
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(lca_cli.LcaError, match=r"^Summary.to_pandas needs pandas: pip install pandas") as missing:
        summary.to_pandas()
    assert "\n" not in str(missing.value)


def test_verify_and_report(both: tuple[Path, lca_cli.ComputeResult, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    store = lca_cli.open_store(both[1].store)
    assert lca_cli.verify(store).ok and lca_cli.verify(store.path).to_dict()["ok"]
    written = lca_cli.report(store, tmp_path / "r.html", views=["loss"])
    assert written.html == tmp_path / "r.html" and written.html.is_file() and written.pngs


def test_import_is_cheap_and_reading_never_imports_torch(both: tuple[Path, lca_cli.ComputeResult, Path]) -> None:
    script = textwrap.dedent(
        f"""
        import inspect, sys
        import lca_cli
        heavy = [m for m in ("torch", "zarr", "numpy", "lca_cli.api", "lca_cli.computation") if m in sys.modules]
        assert not heavy, heavy
        for by in {BYS!r}:
            lca_cli.open_store({str(both[1].store)!r}).summarize(by=by).to_dict()
        for name in lca_cli.__all__:
            getattr(lca_cli, name)
        assert inspect.isfunction(lca_cli.compute) and inspect.isfunction(lca_cli.report)
        assert "torch" not in sys.modules, "torch was imported"
        print(sorted(set(lca_cli.__all__) - set(dir(lca_cli))))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_public_functions_are_documented() -> None:
    for name in ("compute", "open_store", "verify", "report"):
        fn = getattr(lca_cli, name)
        assert inspect.getdoc(fn) and "Returns:" in inspect.getdoc(fn)
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        lca_cli.nothing_here  # noqa: B018
