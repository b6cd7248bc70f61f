"""Reductions of a store, checked against direct numpy sums over a synthetic store."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lca_cli.analysis.reduce import Window, neuron_index, parse_window, summarize
from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError, UsageError
from lca_cli.store.lcastore import BlockRows, LcaStore

SHAPES = [("conv.weight", (3, 2, 2, 2)), ("conv.bias", (3,)), ("fc.weight", (2, 12)), ("fc.bias", (2,))]


def synthetic_store(
    path: Path, t: int = 23, rows_per_chunk: int = 5, seed: int = 0, frozen: str | None = None
) -> tuple[LcaStore, np.ndarray]:
    """A store whose rows are random, with some exact zeros, written in chunk-aligned blocks.

    ``frozen``: a tensor whose LCA is exactly 0 everywhere, in a run whose loss went down.
    """
    layout = Layout.from_shapes(SHAPES)
    rng = np.random.default_rng(seed)
    lca = rng.normal(size=(t, layout.size)).astype(np.float32)
    lca[:, layout.params[0].offset : layout.params[0].offset + 4] = 0.0  # never-moving parameters
    if frozen is not None:
        lca -= 0.5
        p = next(q for q in layout.params if q.name == frozen)
        lca[:, p.offset : p.stop] = 0.0
    loss = np.concatenate([[2.0], 2.0 + np.cumsum(lca.astype(np.float64).sum(axis=1))])
    steps = np.arange(0, 2 * (t + 1), 2)  # steps 0, 2, 4, ...: windows are over steps, not indices
    store = LcaStore.create(path, layout=layout, sets=["train"], steps=steps, attrs={"method": "rk4"},
                            rows_per_chunk=rows_per_chunk)  # fmt: skip
    col2t = np.repeat(np.arange(len(SHAPES)), [p.numel for p in layout.params])
    for a in range(0, t, rows_per_chunk):
        b = min(t, a + rows_per_chunk)
        block = lca[a:b].astype(np.float64)
        k = len(SHAPES)
        store.write_block(
            "train",
            BlockRows(
                start=a,
                lca=lca[a:b],
                loss=loss[a : b + 1],
                residual=np.zeros(b - a),
                splits=np.full(b - a, 2, dtype=np.int32),
                flagged=np.zeros(b - a, dtype=bool),
                tensor_lca=np.stack([np.bincount(col2t, weights=r, minlength=k) for r in block]),
                tensor_helped=np.stack([np.bincount(col2t, weights=r < 0, minlength=k) for r in block]).astype(int),
                tensor_hurt=np.stack([np.bincount(col2t, weights=r > 0, minlength=k) for r in block]).astype(int),
                buffer_lca=np.zeros(b - a),
            ),
        )
    return LcaStore.open(path), lca


@pytest.fixture
def store(tmp_path: Path) -> tuple[LcaStore, np.ndarray]:
    return synthetic_store(tmp_path / "s.zarr")


def test_parse_window() -> None:
    assert parse_window(None) == Window()
    assert parse_window("3:9") == Window(3, 9)
    assert parse_window(":9") == Window(None, 9)
    assert parse_window("3:") == Window(3, None)
    assert parse_window("4") == Window(4, 5)
    for bad in ("a:b", "1:2:3", "9:3", "5:5"):
        with pytest.raises(UsageError):
            parse_window(bad)


def test_layer_and_tensor_sums_and_helped(store: tuple[LcaStore, np.ndarray]) -> None:
    s, lca = store
    d = lca.astype(np.float64)
    by_tensor = {r["name"]: r for r in summarize(s, by="tensor").rows}
    for p in s.layout.params:
        block = d[:, p.offset : p.stop]
        assert by_tensor[p.name]["lca"] == pytest.approx(block.sum(), rel=1e-9)
        helped, hurt = (block < 0).sum(), (block > 0).sum()
        assert by_tensor[p.name]["helped_fraction"] == pytest.approx(helped / (helped + hurt))
    by_layer = {r["name"]: r for r in summarize(s, by="layer").rows}
    assert by_layer["conv"]["lca"] == pytest.approx(d[:, :27].sum(), rel=1e-9)
    assert by_layer["fc"]["parameters"] == 26
    total = sum(r["lca"] for r in by_layer.values())
    assert sum(r["share"] for r in by_layer.values()) == pytest.approx(1.0)
    assert total == pytest.approx(d.sum(), rel=1e-9)


def test_header_excludes_exact_zeros_from_helped_fraction(store: tuple[LcaStore, np.ndarray]) -> None:
    s, lca = store
    h = summarize(s).header
    helped = (lca < 0).sum(axis=1)
    hurt = (lca > 0).sum(axis=1)
    frac = helped / (helped + hurt)
    assert h["helped_fraction_mean"] == pytest.approx(frac.mean())
    assert h["helped_fraction_sd"] == pytest.approx(frac.std())
    assert h["delta_loss"] == pytest.approx(lca.astype(np.float64).sum(), rel=1e-9)
    assert h["sum_lca"] == pytest.approx(h["delta_loss"], rel=1e-9)


def test_window_selects_by_step(store: tuple[LcaStore, np.ndarray]) -> None:
    s, lca = store
    summ = summarize(s, by="iteration", window=parse_window("6:14"))
    assert [r["step"] for r in summ.rows] == [6, 8, 10, 12]
    assert summ.header["iterations"] == 4
    assert summ.header["sum_lca"] == pytest.approx(lca[3:7].astype(np.float64).sum(), rel=1e-9)


def test_neurons_stream_and_match(store: tuple[LcaStore, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    s, lca = store
    d = lca.astype(np.float64)
    calls = []
    original = LcaStore.iter_lca

    def spy(self: LcaStore, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        for first, rows in original(self, *args, **kwargs):  # type: ignore[arg-type]
            calls.append(rows.shape[0])
            assert rows.shape[0] <= s.rows_per_chunk  # never more than one chunk of rows at a time
            yield first, rows

    monkeypatch.setattr(LcaStore, "iter_lca", spy)
    rows = {r["name"]: r for r in summarize(s, by="neuron", window=parse_window("10:")).rows}
    assert sum(calls) == 23 - 5
    # conv neuron 1 = conv.weight[1] (8 columns) + conv.bias[1]
    w, b = s.layout.params[0], s.layout.params[1]
    expected = d[5:, w.offset + 8 : w.offset + 16].sum() + d[5:, b.offset + 1].sum()
    assert rows["conv[1]"]["lca"] == pytest.approx(expected, rel=1e-9)
    assert rows["conv[1]"]["parameters"] == 9
    assert len(rows) == 3 + 2


def test_neuron_index_covers_every_column(store: tuple[LcaStore, np.ndarray]) -> None:
    s, _ = store
    names, col2neuron = neuron_index(s)
    assert names[:3] == ["conv[0]", "conv[1]", "conv[2]"]
    assert np.bincount(col2neuron).tolist() == [9, 9, 9, 13, 13]


def test_a_frozen_tensor_has_share_zero_not_minus_zero(tmp_path: Path) -> None:
    store, _ = synthetic_store(tmp_path / "s.zarr", frozen="fc.bias")
    rows = {r["name"]: r for r in summarize(store, by="tensor").rows}
    frozen = rows["fc.bias"]
    assert frozen["lca"] == 0.0 and frozen["share"] == 0.0 and math.copysign(1.0, frozen["share"]) == 1.0


def test_top_sort_and_errors(store: tuple[LcaStore, np.ndarray]) -> None:
    s, _ = store
    rows = summarize(s, by="tensor", sort="abs", top=2).rows
    assert len(rows) == 2 and abs(rows[0]["lca"]) >= abs(rows[1]["lca"])
    with pytest.raises(UsageError):
        summarize(s, by="planet")
    with pytest.raises(UsageError):
        summarize(s, top=0)
    with pytest.raises(UsageError, match=r"--set val: .* has no such evaluation set \(sets: train\)"):
        summarize(s, set_name="val")  # a bad option value (exit 2), as for report and compare


def test_not_done_rows_are_ignored(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "s.zarr")
    s2 = LcaStore.open(tmp_path / "s.zarr", mode="r+")
    s2.array("train", "done")[5:10] = False
    summ = summarize(LcaStore.open(tmp_path / "s.zarr"), by="iteration")
    assert summ.header["iterations"] == 23 - 5
    assert 10 not in [r["step"] for r in summ.rows]


def test_layer_rows_gain_shares_significance_and_milestones(store: tuple[LcaStore, np.ndarray]) -> None:
    s, lca = store
    d = lca.astype(np.float64)
    summ = summarize(s, by="layer")
    # the original columns first, in their order (the JSON/CSV contract), then the added ones
    assert summ.columns[:5] == ["name", "parameters", "lca", "share", "helped_fraction"]
    assert {"helped_share", "zero_share", "hurt_share", "significance", "step_50", "step_90"} <= set(summ.columns)
    rows = {r["name"]: r for r in summ.rows}
    conv = d[:, :27]
    assert rows["conv"]["helped_share"] == pytest.approx((conv < 0).mean())
    assert rows["conv"]["zero_share"] == pytest.approx((conv == 0).mean())  # the 4 never-moving columns
    assert rows["conv"]["zero_share"] > 0
    assert rows["conv"]["helped_share"] + rows["conv"]["zero_share"] + rows["conv"]["hurt_share"] == pytest.approx(1)
    # residuals are 0 in this store: every nonzero total is significant
    assert summ.header["integration_error"] == 0.0
    for r in summ.rows:
        assert r["significance"] == ("helps" if r["lca"] < 0 else "hurts")
    # milestones: the first step (end of an iteration) by which the layer's learning reached 50% / 90%
    for name, cols in (("conv", slice(0, 27)), ("fc", slice(27, 53))):
        learned = -np.cumsum(d[:, cols].sum(1))
        if learned[-1] > 0:
            steps_end = s.steps[1:]
            assert rows[name]["step_50"] == int(steps_end[np.argmax(learned >= 0.5 * learned[-1])])
            assert rows[name]["step_90"] == int(steps_end[np.argmax(learned >= 0.9 * learned[-1])])
        else:
            assert rows[name]["step_50"] is None
    h = summ.header
    assert h["helped_share_mean"] == pytest.approx((lca < 0).mean())
    assert h["zero_share_mean"] == pytest.approx((lca == 0).mean())


def test_concentration_is_opt_in_and_streams(
    store: tuple[LcaStore, np.ndarray],
    lca_read_spy,  # type: ignore[no-untyped-def]
) -> None:
    s, lca = store
    spy = lca_read_spy()
    plain = summarize(s, by="layer")
    assert spy["calls"] == 0 and "params_90" not in plain.columns  # the default reads only small arrays
    conc = summarize(s, by="layer", concentration=True, window=parse_window("10:"))
    assert spy["calls"] == 1 and conc.columns[-2:] == ["params_50", "params_90"]
    total = lca[5:, :27].astype(np.float64).sum(0)
    gains = np.sort(-total[total < 0])[::-1]
    k = int(np.searchsorted(np.cumsum(gains) / gains.sum(), 0.9 - 1e-12)) + 1
    assert {r["name"]: r for r in conc.rows}["conv"]["params_90"] == pytest.approx(k / 27)
    with pytest.raises(UsageError, match="--concentration"):
        summarize(s, by="iteration", concentration=True)


def test_iteration_rows_gain_shares(store: tuple[LcaStore, np.ndarray]) -> None:
    s, lca = store
    rows = summarize(s, by="iteration").rows
    assert rows[3]["zero_share"] == pytest.approx((lca[3] == 0).mean())
    assert rows[3]["helped_share"] == pytest.approx((lca[3] < 0).mean())


def test_windows_outside_the_store_and_reversed_are_explained(store: tuple[LcaStore, np.ndarray]) -> None:
    s, _ = store
    with pytest.raises(UsageError, match=r"start at steps 0\.\.44") as info:
        summarize(s, window=parse_window("500:600"))
    assert "A <= s < B" in str(info.value)
    with pytest.raises(UsageError, match=r"did you mean --steps 2:5\?"):
        parse_window("5:2")
    with pytest.raises(UsageError, match="B must be greater than A"):
        parse_window("5:5")


def test_not_done_window_is_a_store_error(tmp_path: Path) -> None:
    synthetic_store(tmp_path / "s.zarr")
    s2 = LcaStore.open(tmp_path / "s.zarr", mode="r+")
    s2.array("train", "done")[2:4] = False
    with pytest.raises(StoreError, match="computed yet"):
        summarize(LcaStore.open(tmp_path / "s.zarr"), window=parse_window("4:8"))


def test_open_store_points_a_run_directory_at_its_store(tmp_path: Path) -> None:
    from lca_cli.analysis.reduce import open_store

    run = tmp_path / "run"
    run.mkdir()
    (run / "lca.toml").write_text("")
    with pytest.raises(StoreError, match=r"run directory, not an lca store, and holds no store yet; run `lca compute"):
        open_store(run)
    synthetic_store(run / "lca.zarr")
    with pytest.raises(StoreError, match=f"did you mean {run / 'lca.zarr'}"):
        open_store(run)
    assert open_store(run / "lca.zarr").n_pairs == 23
    with pytest.raises(StoreError, match="not an lca store"):
        open_store(tmp_path / "run" / "..")  # a plain folder without a store or run files


def test_a_partly_computed_store_has_finite_loss_changes_for_every_finished_row(tmp_path: Path) -> None:
    """Issue 22: the last finished row of a partial store (its next checkpoint's loss not written) showed nan."""
    from runs import make_tiny_run

    from lca_cli.cli import main

    run = make_tiny_run(tmp_path, steps=8)
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--steps", "0:5", "--quiet"])
    assert info.value.code == 0
    store = LcaStore.open(run / "lca.zarr")
    done = np.flatnonzero(store.done("train"))
    assert list(done) == [0, 1, 2, 3, 4]
    rows = summarize(store, by="iteration").rows
    loss = store.read("train", "loss")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    for r in rows:
        assert math.isfinite(r["delta_loss"]), r
        assert r["delta_loss"] == pytest.approx(r["lca"] + r["residual"], abs=1e-6)
    assert math.isfinite(summarize(store, by="layer").header["delta_loss"])
    assert math.isfinite(loss[5])  # the end loss of row 4, from loss_end, on every read
