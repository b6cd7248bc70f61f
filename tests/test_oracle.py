"""``scripts/oracle.py`` (``bench.py --cost-per-accuracy``): the oracle minimum on cases whose answer is known.

* A quadratic loss (gradients linear along the segment): plain Simpson is exact, so the oracle is 2, end to end
  through a trained run, ``compute_run``'s defaults and the float64 grid.
* A quartic integrand ``s^4``: the error of ``L`` uniform panels against the 32-sub-interval reference is
  ``(1 / L^4 - 1 / 16^4) / 120``, so the curve and the cheapest allocation are known in closed form.
* Random curves: the greedy allocation meets the budget, and the true optimum (brute force) lies between the
  convexified lower bound and it.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from load_scripts import load_script

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def oracle() -> ModuleType:
    return load_script("oracle")


def _quartic_error(panels: int) -> float:
    """Composite Simpson's error on ``∫_0^1 s^4`` with ``panels`` panels, against 16 panels (K = 32)."""
    return (1 / panels**4 - 1 / 16**4) / 120


def test_quartic_curve_and_allocation_are_known(oracle: ModuleType) -> None:
    k = 32
    s = np.arange(k + 1) / k
    quartic, _ = oracle.pair_curve((s**4)[:, None], np.ones(1))  # the pair that needs refining
    curve = dict(zip(quartic.costs, quartic.errors, strict=True))
    for panels in (1, 2, 4, 8):
        assert curve[2 * panels] == pytest.approx(_quartic_error(panels), rel=1e-9)
    assert curve[32] == 0.0 and quartic.costs == list(range(2, 34, 2))
    # A pair where Simpson is exact (constant gradient), sized so that the run's norm is 1 and its budget at
    # l1_tol 1e-4 is 1e-4: the quartic pair needs 4 panels (3.3e-5; 3 panels, widths 1/2, 1/4, 1/4, are 2.8e-4).
    flat, _ = oracle.pair_curve(np.full((k + 1, 1), 1.0 - quartic.norm), np.ones(1))
    alloc = oracle.allocate([quartic, flat], 1e-4)
    assert alloc.chosen == [8, 2] and alloc.gradients_per_pair == 5.0 and alloc.reachable
    assert alloc.rel_l1 == pytest.approx(_quartic_error(4), rel=1e-6)
    assert 4.0 < alloc.lower_bound < 5.0
    # Held pair by pair (the contract before the per-run scope) at 3e-3 of its own 0.2, 2 panels do (5.2e-4).
    assert oracle.per_pair_minimum([quartic, flat], 3e-3) == (4 + 2) / 2


def test_greedy_allocation_brackets_the_true_optimum(oracle: ModuleType) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        curves = []
        for _ in range(4):
            errors = np.sort(rng.uniform(0, 1, 4))[::-1] * rng.uniform(0.1, 10)
            curves.append(oracle.PairCurve([2, 4, 6, 8], [float(e) for e in errors], float(rng.uniform(50, 100))))
        tol = float(rng.uniform(0.002, 0.02))
        budget = tol * sum(c.norm for c in curves)
        best = min(
            (sum(combo) / 4 for combo in itertools.product([2, 4, 6, 8], repeat=4)
             if sum(c.errors[[2, 4, 6, 8].index(x)] for c, x in zip(curves, combo, strict=True)) <= budget),
            default=np.inf,
        )  # fmt: skip
        alloc = oracle.allocate(curves, tol)
        if not alloc.reachable:
            assert best == np.inf
            continue
        spent = sum(c.errors[c.costs.index(x)] for c, x in zip(curves, alloc.chosen, strict=True))
        assert spent <= budget * (1 + 1e-12) and alloc.gradients_per_pair == sum(alloc.chosen) / 4
        assert alloc.lower_bound - 1e-9 <= best <= alloc.gradients_per_pair


def test_cost_per_accuracy_on_a_quadratic_loss_is_two(oracle: ModuleType, tmp_path: Path) -> None:
    # Linear regression with a mean squared error: the loss is quadratic in the parameters, its gradient linear
    # along each segment, so plain Simpson is exact and no allocation can be cheaper than 2 gradients per pair.
    raw = {
        "model": {"factory": "reference:linear_model"},
        "data": {"train": {"factory": "reference:regression"}},
        "loss": {"name": "mse"},
        "train": {"iterations": 3, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "seed": 0},
    }
    run = oracle.Run("quadratic", "linear regression, mse", pairs=3, quick_pairs=3, points=8, config=raw)
    row = oracle.measure(run, tmp_path, 3, True, 1, 1e-3)
    assert row["pairs"] == 3 and row["oracle"] == 2.0 and row["oracle_lower_bound"] == 2.0
    assert row["per_pair_oracle"] == 2.0 and row["plain_simpson_rel_l1"] < 1e-12
    # The call's gradients (its survey's among them) per pair, beside the pairs' sub-intervals: none refined.
    assert row["sub_intervals"] == 2.0 and row["default"] >= 2.0 and row["ratio"] == row["default"] / 2.0
    assert row["rel_l1"] < 1e-5 and row["flagged"] == 0  # float32 rows against the float64 reference
    assert row["overhead_per_gradient"] > 0
    assert "| quadratic | 3 (8) | 2.00 (2.00; 2.00) |" in oracle.table([row])


def _script(name: str) -> ModuleType:
    return load_script(name)


def test_accuracy_study_oracle_row_on_a_recorded_grid(tmp_path: Path) -> None:
    # accuracy_study.py oracle on a recorded grid (G, L, D) of a quadratic loss: the oracle is 2, and the
    # library's scheme replayed on it spends 2 as well (its indicator is 0 where the gradient is linear).
    study = _script("accuracy_study")
    rng = np.random.default_rng(1)
    pairs, k, dim = 6, 16, 30
    s = np.linspace(0.0, 1.0, k + 1)[None, :, None]  # (1, k + 1, 1)
    g0, slope = rng.standard_normal((pairs, 1, dim)), rng.standard_normal((pairs, 1, dim))
    grads = g0 + slope * s  # (pairs, k + 1, dim): linear along each segment
    steps = rng.standard_normal((pairs, dim)) * 1e-2
    losses = (steps[:, None] * (g0 * s + slope * s**2 / 2)).sum(2)  # the exact loss along each segment
    np.savez(tmp_path / "quadratic.npz", G=grads, L=losses, D=steps)
    row = study.oracle_row(tmp_path / "quadratic.npz", 1e-3, k)
    assert row.startswith("| quadratic | 6 | 2.00 (2.00) -> ") and row.endswith("| 1.00 |")


def test_bench_summary_gives_time_per_gradient_over_the_floors() -> None:
    bench = _script("bench")
    case = bench.Case("wide", "d", pairs=10, samples=100)
    case.rounds = {
        "floor": [{"seconds": 1.0, "pairs": 10, "cpu_seconds": 1.0}, {"seconds": 2.0, "pairs": 10, "cpu_seconds": 2.0}],
        "default": [
            # Every gradient of the call counts (the survey's too): 60 and 40, against 55 and 38 in the loop.
            {"seconds": 3.3, "pairs": 10, "cpu_seconds": 3.3, "gradients_per_pair": 5.5, "gradients": 60, "threads": 2},
            {"seconds": 4.0, "pairs": 10, "cpu_seconds": 4.0, "gradients_per_pair": 3.8, "gradients": 40, "threads": 2},
        ],
    }
    s = bench.summarize_case(case)
    # per round: (3.3 / 6) / (1.0 / 2) = 1.1 and (4.0 / 4) / (2.0 / 2) = 1.0: 6 and 4 gradients per pair in the call
    assert s["default_per_gradient_over_floor_rounds"] == pytest.approx([1.1, 1.0])
    assert s["default_per_gradient_over_floor"] == pytest.approx(1.05)
    assert s["default_call_gradients_per_pair"] == pytest.approx(5.0)
    assert s["default_gradients_per_pair"] == pytest.approx(4.65)
