"""The verdict rules (analysis.verdicts) and the windowed synchronisation baseline on numbers whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from lca_cli.analysis.sync import active_window, synchronisation, windowed_synchronisation
from lca_cli.analysis.verdicts import (
    first_last_verdict,
    helped_share_verdict,
    layer_robustness,
    oscillation_verdict,
    overfitting,
    per_parameter_verdict,
    phase_windows,
    sync_verdict,
    transient_length,
    whole_vs_late,
)


@pytest.mark.parametrize(
    ("share", "verdict"),
    [
        (0.52, "agrees"),
        (0.549, "agrees"),
        (0.485, "partly"),
        (0.562, "partly"),
        (0.673, "disagrees"),
        (0.40, "disagrees"),
    ],
)
def test_helped_share_rule_bands(share: float, verdict: str) -> None:
    n_params = 1000
    helped = np.full(20, round(share * n_params))
    f = helped_share_verdict(helped, n_params, "all entries", "train")
    assert f.verdict == verdict
    assert f.measured["mean"] == pytest.approx(round(share * n_params) / n_params)
    assert "all entries" in f.text() and "set 'train'" in f.text() and f.verdict in f.text()


def test_helped_share_conventions_differ_on_zeros() -> None:
    # 24% of entries exactly 0, 56% help: "barely over half" of all, three quarters of the nonzero ones.
    helped, hurt, n = np.full(10, 560), np.full(10, 200), 1000
    assert helped_share_verdict(helped, n, "all entries").verdict == "partly"
    nz = helped_share_verdict(helped, helped + hurt, "nonzero entries")
    assert nz.verdict == "disagrees" and nz.measured["mean"] == pytest.approx(560 / 760)
    assert helped_share_verdict(np.zeros(3), 0, "nonzero entries").verdict == "no data"


def test_per_parameter_rule() -> None:
    rng = np.random.default_rng(0)
    hurt = np.full(500, 50)
    half = per_parameter_verdict(rng.integers(45, 56, 500), hurt)
    assert half.verdict == "agrees"
    mostly = per_parameter_verdict(np.full(500, 150), hurt)  # 75% helped per parameter
    assert mostly.verdict == "disagrees" and mostly.measured["mean"] == pytest.approx(0.75)
    lean = per_parameter_verdict(np.full(500, 70), hurt)  # 58.3%: within 10 points
    assert lean.verdict == "partly"
    assert per_parameter_verdict(np.zeros(3), np.zeros(3)).verdict == "no data"


def test_transient_is_the_leading_iterations_that_dominate() -> None:
    d = np.full(300, -0.01)
    assert transient_length(d) == 0
    d[0] = -2.0  # 4.71 -> 2.68 in one step
    assert transient_length(d) == 1
    d[1] = -1.0
    assert transient_length(d) == 2
    assert transient_length(np.full(5, -1.0)) == 1  # 1/5 > 10% of the rest, capped at one of five
    assert transient_length(np.zeros(10)) == 0


def test_layer_robustness_flags_a_verdict_that_rests_on_the_transient() -> None:
    n = 300
    per = np.zeros((n, 3))
    per[:, 0] = -0.01  # first layer helps throughout
    per[:, 2] = 0.003  # last layer hurts on every later iteration ...
    per[0, 2] = -2.0  # ... but helped hugely on the first one
    per[0, 0] = -1.0
    delta = per.sum(axis=1)
    rob = layer_robustness(["a", "b", "c"], per, np.full(n, 1e-4), delta)
    assert rob.transient == 1
    assert rob.verdicts["whole"] == ["helps", "within error", "helps"]
    assert rob.verdicts["without first 1"][2] == "hurts"
    assert "c" in rob.flips and "without first 1" in rob.flips["c"] and "a" not in rob.flips
    assert any(s.startswith("c helps") for s in rob.sentences())
    # per-layer errors (n, L): a layer whose error is large is within error in every window
    err = np.zeros((n, 3))
    err[:, 2] = 1.0
    assert layer_robustness(["a", "b", "c"], per, err, delta).verdicts["whole"][2] == "within error"
    assert phase_windows(10, 3) == [(0, 3), (3, 6), (6, 10)]


def test_first_last_and_oscillation_rules() -> None:
    assert first_last_verdict(["a", "b", "c"], ["hurts", "helps", "hurts"]).verdict == "agrees"
    assert first_last_verdict(["a", "b", "c"], ["helps", "helps", "hurts"]).verdict == "partly"
    assert first_last_verdict(["a", "b", "c"], ["helps", "within error", "helps"]).verdict == "disagrees"
    assert oscillation_verdict([0.7, 0.6, 0.65]).verdict == "agrees"
    assert oscillation_verdict([0.5, 0.48]).verdict == "partly"
    assert oscillation_verdict([0.2, 0.3]).verdict == "disagrees"


def test_sync_rule() -> None:
    assert sync_verdict(True, True).verdict == "agrees"
    assert sync_verdict(True, False).verdict == "partly"
    assert sync_verdict(False, False).verdict == "disagrees"
    assert sync_verdict(None, None).verdict == "no data"


def test_whole_vs_late_says_what_the_numbers_show() -> None:
    falling = whole_vs_late(np.linspace(0.7, 0.5, 100), "the helped share", "all entries")
    assert falling.holds and "raise the whole window's mean" in falling.text
    rising = whole_vs_late(np.linspace(0.5, 0.6, 100), "the helped share", "all entries")
    assert not rising.holds and "do not raise" in rising.text and "all entries" in rising.text


def test_overfitting_rule() -> None:
    train = np.linspace(2.0, 0.1, 11)
    rising = np.array([2.0, 1.5, 1.0, 0.8, 0.7, 0.72, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert overfitting(train, rising).holds and "training has overfitted" in overfitting(train, rising).text
    flat = np.linspace(2.0, 0.5, 11)
    assert not overfitting(train, flat).holds and "no sign of overfitting" in overfitting(train, flat).text


def test_active_window_and_a_baseline_within_it() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    # Peaks of 4 layers cluster in the first 250 iterations, each layer's drawn independently.
    peaks = [np.sort(rng.choice(250, size=25, replace=False)) for _ in range(4)]
    lo, hi = active_window(peaks, n)
    assert lo >= 0 and hi <= 250 and hi - lo >= 200
    whole = synchronisation(peaks, n, n_shuffles=200, seed=0)
    inside = windowed_synchronisation(peaks, n, (lo, hi), n_shuffles=200, seed=0)
    assert inside.span == (lo, hi) and abs(inside.observed - whole.observed) < 0.05  # 5% of peaks left out
    # Shifts over the whole run make independent trains look synchronised; within the window they do not.
    assert whole.baseline_mean < 0.5 * inside.baseline_mean
    assert whole.passes and not inside.passes
    assert inside.effect_size < whole.effect_size
    assert active_window([np.zeros(0, np.int64)] * 3, 10) == (0, 10)


def test_apportioned_errors_take_the_larger_of_the_residual_share_and_the_l1_estimate() -> None:
    from lca_cli.analysis.verdicts import apportion_errors, cancellation

    layer_abs = np.array([[3.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    res = np.array([0.4, 0.2, 0.1])
    plain = apportion_errors(res, None, layer_abs)
    assert plain.ravel().tolist() == pytest.approx([0.3, 0.1, 0.1, 0.1, 0.05, 0.05])  # nothing moved: shared evenly
    assert plain.sum(axis=1) == pytest.approx(res)
    l1 = np.array([0.01, np.nan, 0.2])  # the L1 estimate is larger on the last pair only
    assert apportion_errors(res, l1, layer_abs).ravel().tolist() == pytest.approx([0.3, 0.1, 0.1, 0.1, 0.2, 0.2])
    c = cancellation(np.array([[-1.0, 0.5], [-1.0, -0.5]]), np.array([-3.0, -1.0]), np.array([1.0, 1.0]),
                     np.array([4.0, 3.0]), np.array([-0.5, -1.5]))  # fmt: skip
    assert c["pos_over_neg"].tolist() == pytest.approx([1 / 3, 1.0])
    assert c["hurt_iterations"].tolist() == [0.0, 0.5]
    assert c["abs_over_delta_median"] == pytest.approx(5.0) and c["abs_over_delta_window"] == pytest.approx(3.5)


def test_coinciding_iterations_count_where_two_layers_peak_together() -> None:
    from lca_cli.analysis.sync import coinciding_iterations

    peaks = [np.array([1, 5, 9]), np.array([5, 9, 12]), np.array([9, 20])]
    assert coinciding_iterations(peaks, (0, 30)) == 2  # 5 and 9
    assert coinciding_iterations(peaks, (0, 8)) == 1 and coinciding_iterations(peaks, (10, 30)) == 0
