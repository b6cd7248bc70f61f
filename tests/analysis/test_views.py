"""The analysis modules (selection, series, passes, parameters, sync) against numpy on small synthetic stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stores import SHAPES, make_store

from lca_cli.analysis.parameters import parameter_label, select_parameters
from lca_cli.analysis.passes import ParameterStats, bin_edges, rank_neuron_groups, scan_parameters, scan_selected
from lca_cli.analysis.selection import select_rows
from lca_cli.analysis.series import cumulative, helped_fraction_per_iteration, layer_series, loss_curves
from lca_cli.analysis.sync import detect_peaks, peak_overlap, synchronisation
from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError, UsageError
from lca_cli.store.lcastore import LcaStore


@pytest.fixture
def store3(tmp_path: Path) -> tuple[LcaStore, dict[str, np.ndarray], dict[str, np.ndarray]]:
    return make_store(tmp_path / "s.zarr")


# -- selection --------------------------------------------------------------------------------------------


def test_select_rows_window_and_done(tmp_path: Path) -> None:
    done = np.ones(50, bool)
    done[[10, 11, 30]] = False
    store, _, _ = make_store(tmp_path / "s.zarr", done_rows=done)
    sel = select_rows(store, "train")
    assert sel.n == 47 and sel.n_skipped == 3
    assert 10 not in sel.rows and 30 not in sel.rows
    # steps are 0, 2, 4, ...; [A, B) over the start step
    sel = select_rows(store, "train", (20, 41))
    np.testing.assert_array_equal(sel.start_steps, [24, 26, 28, 30, 32, 34, 36, 38, 40])
    assert sel.n_skipped == 2 and (sel.start, sel.stop) == (10, 21)
    sel = select_rows(store, "train", (None, 5))
    np.testing.assert_array_equal(sel.rows, [0, 1, 2])
    sel = select_rows(store, "train", (95, None))
    np.testing.assert_array_equal(sel.rows, [48, 49])
    with pytest.raises(UsageError):
        select_rows(store, "train", (30, 30))
    with pytest.raises(UsageError):
        select_rows(store, "train", (1000, None))
    with pytest.raises(UsageError):
        select_rows(store, "nope")
    with pytest.raises(StoreError):
        select_rows(store, "train", (20, 24))  # rows 10, 11: not done


# -- small-array reductions ---------------------------------------------------------------------------------


def test_layer_series_matches_numpy(store3) -> None:
    store, full, _ = store3
    sel = select_rows(store, "train", (10, 80))
    names, series = layer_series(store, sel)
    assert names == ["fc1", "fc2", "scale"]
    lca = full["train"][sel.rows].astype(np.float64)
    np.testing.assert_allclose(series[:, 0], lca[:, 0:30].sum(1), atol=1e-9)
    np.testing.assert_allclose(series[:, 1], lca[:, 30:51].sum(1), atol=1e-9)
    np.testing.assert_allclose(series[:, 2], lca[:, 51], atol=1e-9)


def test_helped_fraction_per_iteration(store3) -> None:
    store, full, _ = store3
    sel = select_rows(store, "train")
    frac, helped, hurt = helped_fraction_per_iteration(store, sel)
    lca = full["train"]
    np.testing.assert_array_equal(helped, (lca < 0).sum(1))
    np.testing.assert_array_equal(hurt, (lca > 0).sum(1))
    np.testing.assert_allclose(frac, (lca < 0).sum(1) / (lca != 0).sum(1))


def test_loss_curves_reconstruct(tmp_path: Path) -> None:
    done = np.ones(50, bool)
    done[20] = False
    store, full, losses = make_store(tmp_path / "s.zarr", done_rows=done)
    sel = select_rows(store, "train")
    c = loss_curves(store, sel)
    # two contiguous segments: 0..19 and 21..49 -> 21 + 30 points
    assert len(c.steps) == 21 + 30 and set(np.unique(c.segment)) == {0, 1}
    np.testing.assert_allclose(c.reconstructed, c.true_loss, atol=1e-6)
    assert c.flagged.sum() == 1
    np.testing.assert_allclose(c.lca_sum, full["train"][sel.rows].astype(np.float64).sum(1), atol=1e-9)
    np.testing.assert_allclose(c.delta_loss, np.diff(losses["train"])[sel.rows])


def test_cumulative_and_bins() -> None:
    np.testing.assert_allclose(cumulative(np.array([1.0, 2.0, 3.0])), [0, 1, 3, 6])
    assert cumulative(np.ones((4, 2))).shape == (5, 2)
    e = bin_edges(10, 3)
    assert e[0] == 0 and e[-1] == 10 and len(e) == 4 and np.all(np.diff(e) >= 3)
    np.testing.assert_array_equal(bin_edges(3, 400), [0, 1, 2, 3])
    np.testing.assert_array_equal(bin_edges(0, 5), [0])


# -- streaming passes ----------------------------------------------------------------------------------------


def test_scan_parameters_matches_numpy(store3) -> None:
    store, full, _ = store3
    sel = select_rows(store, "train", (6, 90))
    stats = scan_parameters(store, sel)
    lca = full["train"][sel.rows].astype(np.float64)
    np.testing.assert_allclose(stats.neg, np.minimum(lca, 0).sum(0), atol=1e-6)
    np.testing.assert_allclose(stats.pos, np.maximum(lca, 0).sum(0), atol=1e-6)
    np.testing.assert_allclose(stats.total, lca.sum(0), atol=1e-6)
    np.testing.assert_array_equal(stats.helped, (lca < 0).sum(0))
    np.testing.assert_array_equal(stats.hurt, (lca > 0).sum(0))
    assert stats.n_iterations == sel.n
    frac = stats.helped_fraction
    assert np.isnan(frac[0])  # never moved
    np.testing.assert_allclose(frac[1:], (lca[:, 1:] < 0).sum(0) / (lca[:, 1:] != 0).sum(0))
    names, neg, pos = stats.by_layer(store.layout)
    assert names == ["fc1", "fc2", "scale"]
    np.testing.assert_allclose(neg, [np.minimum(lca[:, a:b], 0).sum() for a, b in [(0, 30), (30, 51), (51, 52)]])
    np.testing.assert_allclose(pos, [np.maximum(lca[:, a:b], 0).sum() for a, b in [(0, 30), (30, 51), (51, 52)]])


def test_scan_skips_rows_not_done(tmp_path: Path) -> None:
    done = np.ones(50, bool)
    done[[0, 9, 17, 49]] = False
    store, full, _ = make_store(tmp_path / "s.zarr", done_rows=done, rows_per_chunk=4)
    sel = select_rows(store, "train")
    stats = scan_parameters(store, sel)
    np.testing.assert_allclose(stats.total, full["train"][done].astype(np.float64).sum(0), atol=1e-6)
    traj, _ = scan_selected(store, sel, [3, 40])
    np.testing.assert_allclose(traj, full["train"][done][:, [3, 40]], atol=1e-9)


def test_neuron_maps_match_numpy(store3) -> None:
    store, full, _ = store3
    sel = select_rows(store, "train")
    groups = store.layout.neurons()
    assert [g[0] for g in groups] == ["fc1", "fc2", "scale"]
    traj, maps = scan_selected(store, sel, [], [0, 1, 2], max_bins=7, max_neurons=4)
    lca = full["train"].astype(np.float64)
    # fc1: neuron i = row i of weight (4 columns) + bias i; 6 neurons -> 4 neuron bins, 50 iterations -> 7 bins
    w = lca[:, 0:24].reshape(50, 6, 4).sum(2) + lca[:, 24:30]
    it_e, ne_e = bin_edges(50, 7), bin_edges(6, 4)
    direct = np.add.reduceat(np.add.reduceat(w, it_e[:-1], axis=0), ne_e[:-1], axis=1).T
    np.testing.assert_allclose(maps[0].matrix, direct, atol=1e-6)
    assert maps[0].matrix.shape == (4, 7) and maps[0].n_neurons == 6
    np.testing.assert_array_equal(maps[0].step_edges[[0, -1]], [0, 100])
    w2 = lca[:, 30:48].reshape(50, 3, 6).sum(2) + lca[:, 48:51]
    np.testing.assert_allclose(maps[1].matrix, np.add.reduceat(w2, it_e[:-1], axis=0).T, atol=1e-6)
    np.testing.assert_allclose(maps[2].matrix[0], np.add.reduceat(lca[:, 51], it_e[:-1]), atol=1e-6)
    assert traj.shape == (50, 0)


def test_rank_and_select_parameters(store3) -> None:
    store, full, _ = store3
    sel = select_rows(store, "train")
    stats = scan_parameters(store, sel)
    lca = full["train"].astype(np.float64)
    ranked = rank_neuron_groups(store.layout, stats)
    absum = [np.abs(lca[:, a:b]).sum() for a, b in [(0, 30), (30, 51), (51, 52)]]
    assert [g for g, _ in ranked] == list(np.argsort(absum)[::-1])
    np.testing.assert_allclose(sorted(v for _, v in ranked), sorted(absum), rtol=1e-9)
    cols, kinds = select_parameters(stats, 3, 3, 4, seed=1)
    total = lca.sum(0)
    assert kinds == ["helpful"] * 3 + ["harmful"] * 3 + ["random"] * 4
    np.testing.assert_array_equal(cols[:3], np.argsort(total)[:3])
    np.testing.assert_array_equal(cols[3:6], np.argsort(total)[::-1][:3])
    assert len(set(cols.tolist())) == 10 and 0 not in cols[6:]  # column 0 never moved: not drawn
    again, _ = select_parameters(stats, 3, 3, 4, seed=1)
    np.testing.assert_array_equal(cols, again)
    traj, _ = scan_selected(store, sel, cols)
    np.testing.assert_allclose(traj, lca[:, cols], atol=1e-9)
    np.testing.assert_allclose(cumulative(traj)[-1], total[cols], atol=1e-6)


def test_parameter_label() -> None:
    layout = Layout.from_shapes(SHAPES)
    assert parameter_label(layout, 0) == "fc1.weight[0, 0]"
    assert parameter_label(layout, 7) == "fc1.weight[1, 3]"
    assert parameter_label(layout, 25) == "fc1.bias[1]"
    assert parameter_label(layout, 51) == "scale"
    with pytest.raises(IndexError):
        parameter_label(layout, 52)


def test_stats_add_is_chunk_invariant() -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(20, 7)).astype(np.float32)
    a = ParameterStats.zeros(7)
    a.add(rows)
    b = ParameterStats.zeros(7)
    for i in range(0, 20, 3):
        b.add(rows[i : i + 3])
    np.testing.assert_allclose(a.neg, b.neg, atol=1e-6)
    np.testing.assert_array_equal(a.helped, b.helped)
    assert a.n_iterations == b.n_iterations == 20


# -- peaks and synchronisation --------------------------------------------------------------------------------


def test_detect_peaks_constructed_series() -> None:
    x = np.zeros(40)
    x[[5, 17, 30]] = [3.0, 4.0, 5.0]
    x[[6]] = 1.0  # shoulder: not a local maximum
    x[[22]] = 0.1  # local maximum below mean + 1 sd
    np.testing.assert_array_equal(detect_peaks(x), [5, 17, 30])
    # ends count with their one neighbour; plateaus give their first point
    y = np.array([5.0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 0, 4.0])
    np.testing.assert_array_equal(detect_peaks(y, k_sd=0.5), [0, 6, 13])
    assert detect_peaks(np.zeros(10)).size == 0
    assert detect_peaks(np.array([])).size == 0
    z = np.array([0, 1, np.nan, 0, 0, 0, 0, 9, 0, 0])
    np.testing.assert_array_equal(detect_peaks(z), [7])


def test_detect_peaks_local_window() -> None:
    # A big early phase and a quiet late phase with its own bumps: a global threshold sees only the
    # early peaks, a local one also the late ones.
    x = np.zeros(200)
    x[10:60:10] = 10.0
    x[120:200:20] = 1.0
    np.testing.assert_array_equal(detect_peaks(x), [10, 20, 30, 40, 50])
    np.testing.assert_array_equal(detect_peaks(x, window=15), [10, 20, 30, 40, 50, 120, 140, 160, 180])
    # the local rule with a window covering everything is the global rule
    rng = np.random.default_rng(0)
    y = rng.normal(size=80)
    np.testing.assert_array_equal(detect_peaks(y, window=200), detect_peaks(y))


def test_peak_overlap_identical_and_tolerance() -> None:
    p = np.array([3, 10, 25, 40])
    obs, mat = peak_overlap([p, p, p], 50, tolerance=1)
    assert obs == pytest.approx(1.0)
    assert mat[0, 1] == pytest.approx(1.0)
    obs, _ = peak_overlap([p, p + 1], 50, tolerance=1)
    assert obs == pytest.approx(1.0)
    obs, _ = peak_overlap([p, p + 2], 50, tolerance=1)
    assert obs == pytest.approx(0.0)
    # half matched: m = 2, |A| = |C| = 4 -> J = 2 / 6
    obs, _ = peak_overlap([p, np.array([3, 10, 30, 45])], 50, tolerance=0)
    assert obs == pytest.approx(2 / 6)
    # a layer with no peaks is left out of the pairs
    obs, mat = peak_overlap([p, p, np.array([], dtype=np.int64)], 50)
    assert obs == pytest.approx(1.0) and np.isnan(mat[0, 2])


def test_synchronisation_identical_vs_independent() -> None:
    rng = np.random.default_rng(0)
    n = 400
    base = np.sort(rng.choice(n, 30, replace=False))
    same = synchronisation([base] * 4, n, n_shuffles=300, seed=0)
    assert same.observed == pytest.approx(1.0)
    assert same.baseline_mean < 0.4 and same.p_value < 0.01
    assert same.pairs == 6 and same.n_shuffles == 300
    indep = [np.sort(rng.choice(n, 30, replace=False)) for _ in range(4)]
    r = synchronisation(indep, n, n_shuffles=300, seed=0)
    assert abs(r.observed - r.baseline_mean) < 3 * r.baseline_sd + 1e-9
    assert r.p_value > 0.01
    # reproducible with the seed
    r2 = synchronisation(indep, n, n_shuffles=300, seed=0)
    assert r2.baseline_mean == r.baseline_mean
    empty = synchronisation([np.array([], dtype=np.int64)] * 2, n)
    assert empty.n_shuffles == 0 and np.isnan(empty.p_value)


def test_views_stream_only_through_iter_lca(store3, lca_read_spy) -> None:  # type: ignore[no-untyped-def]
    store, _, _ = store3
    lca_read_spy()
    sel = select_rows(store, "train")
    stats = scan_parameters(store, sel)
    scan_selected(store, sel, [1, 2], [0, 1])
    layer_series(store, sel)
    loss_curves(store, sel)
    assert stats.n_iterations == 50


# -- helped / zero / hurt, milestones, significance, concentration, histogram ---------------------------------


def test_composition_and_layer_composition_match_numpy(store3) -> None:
    from lca_cli.analysis.series import composition, layer_composition

    store, full, _ = store3
    sel = select_rows(store, "train", (10, 80))
    lca = full["train"][sel.rows]
    comp = composition(store, sel)
    helped, zero, hurt = comp.shares()
    np.testing.assert_allclose(helped, (lca < 0).mean(1))
    np.testing.assert_allclose(zero, (lca == 0).mean(1))
    np.testing.assert_allclose(helped + zero + hurt, 1.0)
    np.testing.assert_allclose(comp.nonzero_fraction(), (lca < 0).sum(1) / (lca != 0).sum(1))
    lc = layer_composition(store, sel)
    assert lc.names == ["fc1", "fc2", "scale"] and lc.params.tolist() == [30, 21, 1]
    h, z, u = lc.shares()
    np.testing.assert_allclose(h[0], (lca[:, :30] < 0).mean())
    np.testing.assert_allclose(z[0], (lca[:, :30] == 0).mean())
    np.testing.assert_allclose(u[1], (lca[:, 30:51] > 0).mean())


def test_learning_milestones_and_significance() -> None:
    from lca_cli.analysis.series import learning_milestones, significance

    # layer 0 learns 1 per iteration (half done after 2 of 4, 90% after 4 of 4); layer 1 learns everything on
    # the last iteration; layer 2 hurts overall (no milestone).
    lca = -np.array([[1.0, 0.0, -1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.5], [1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(learning_milestones(lca, (0.5, 0.9)), [[1, 3, -1], [3, 3, -1]])
    assert significance(np.array([-1.0, 0.5, 0.01, -0.01]), 0.05) == ["helps", "hurts", "within error", "within error"]


def _slow_concentration(total: np.ndarray, f: float) -> float:
    gains = sorted((-t for t in total if t < 0), reverse=True)
    learning = sum(gains)
    acc = 0.0
    for k, g in enumerate(gains, 1):
        acc += g
        if acc >= f * learning - 1e-12:
            return k / len(total)
    return float("nan")


def test_concentration_matches_a_slow_reference() -> None:
    from lca_cli.analysis.parameters import concentration

    rng = np.random.default_rng(5)
    total = rng.standard_t(2, size=500) * 1e-3 - 2e-4
    total[:20] = 0.0
    c = concentration(total, (0.5, 0.9), max_points=50)
    for f, share in zip((0.5, 0.9), c.shares, strict=True):
        assert share == pytest.approx(_slow_concentration(total, f))
    assert c.learning == pytest.approx(-total[total < 0].sum())
    assert c.curve_x[0] == 0 and c.curve_x[-1] == 1 and c.curve_y[-1] == 1 and len(c.curve_x) <= 51
    assert np.all(np.diff(c.curve_y) >= 0)
    assert np.isnan(concentration(np.array([0.0, 1.0]), (0.9,)).shares[0])  # nothing learned


def test_value_histogram_matches_numpy_and_is_chunk_invariant() -> None:
    from lca_cli.analysis.passes import ValueHistogram

    rng = np.random.default_rng(2)
    rows = (rng.standard_normal((40, 30)) * 10.0 ** rng.uniform(-9, -2, (40, 30))).astype(np.float32)
    rows[:, 0] = 0.0
    rows[3, 4] = -0.0
    whole = ValueHistogram()
    whole.add(rows)
    parts = ValueHistogram()
    for i in range(0, 40, 7):
        parts.add(rows[i : i + 7])
    np.testing.assert_array_equal(whole.negative, parts.negative)
    assert whole.zeros == parts.zeros == 41
    assert whole.total == rows.size
    edges = ValueHistogram.EDGES
    mags = np.abs(rows.astype(np.float64))
    for sign, counts in ((rows < 0, whole.negative), (rows > 0, whole.positive)):
        direct, _ = np.histogram(mags[sign], bins=edges)
        np.testing.assert_array_equal(counts, direct)


def test_min_size_removes_wiggles_in_a_flat_tail() -> None:
    x = np.zeros(300)
    x[20:60] = np.hanning(40) * 10.0  # the real learning
    x[150::20] = 0.1  # regular wiggles, 1% of it
    assert set(detect_peaks(x, window=25)) >= {150, 170, 190}
    np.testing.assert_array_equal(detect_peaks(x, window=25, min_size=0.05), [39])


def test_synchronisation_needs_three_layers_and_formats_p_at_its_floor() -> None:
    rng = np.random.default_rng(1)
    base = np.sort(rng.choice(400, 30, replace=False))
    two = synchronisation([base, base], 400)
    assert not two.tested and two.p_text() == "no test" and two.reason.startswith("no test")
    assert np.isnan(two.ratio) and not two.passes
    few = synchronisation([base, base, np.array([3, 9])], 400)  # third layer: too few peaks
    assert not few.tested and "peaks per layer: 30, 30, 2" in few.reason
    same = synchronisation([base] * 3, 400, n_shuffles=1000)
    assert same.tested and same.at_floor and same.passes
    assert same.p_text() == "p < 0.001" and same.p_value == pytest.approx(1 / 1001)
    assert synchronisation([base] * 3, 400, n_shuffles=200).p_text() == "p < 0.005"


def test_step_size_control_separates_a_shared_driver_from_synchronisation() -> None:
    from lca_cli.analysis.sync import step_size_controlled, sync_analysis

    rng = np.random.default_rng(0)
    n, n_layers = 600, 6
    names = [f"l{i}" for i in range(n_layers)]
    # Every layer learns in proportion to one shared step size (spiky), plus its own noise: the raw peaks
    # coincide, but nothing beyond the shared step does.
    step = np.exp(rng.normal(size=n) * 0.8)
    learning = step[:, None] * rng.uniform(0.5, 2.0, n_layers)[None, :] + rng.normal(size=(n, n_layers)) * 0.3
    controlled = step_size_controlled(learning)
    assert abs(np.corrcoef(controlled[:, 0], step)[0, 1]) < 0.3 < np.corrcoef(learning[:, 0], step)[0, 1]
    sa = sync_analysis(names, -learning, n_shuffles=300, min_size=0.0)
    assert sa.shift.passes
    assert not sa.controlled_shift.passes
    # Half of the layers share extra peaks that the iteration's overall size does not explain: both pass.
    extra = np.zeros((n, n_layers))
    extra[rng.choice(n, 25, replace=False)[:, None], np.arange(3)[None, :]] = 6.0
    sb = sync_analysis(names, -(learning + extra), n_shuffles=300, min_size=0.0)
    assert sb.shift.passes and sb.controlled_shift.passes
