"""The report's small derived numbers: JSON-safe floats, NaN-aware means, sign changes of single parameters."""

from __future__ import annotations

import math

import numpy as np

from lca_cli.reporting.numbers import finite, nanmean, random_sign_changes


def test_finite_and_nanmean() -> None:
    assert finite(None) is None and finite(float("nan")) is None and finite(np.float32(np.inf)) is None
    assert finite(np.float64(0.25)) == 0.25 and isinstance(finite(np.float32(2)), float)
    assert nanmean(np.array([1.0, np.nan, 3.0])) == 2.0
    assert math.isnan(nanmean(np.array([np.nan, np.nan])))  # nothing moved: NaN, without numpy's warning


def test_random_sign_changes_count_random_parameters_that_moved_twice() -> None:
    traj = np.array(
        [
            [-1.0, 1.0, 0.0, -2.0],
            [0.0, -1.0, 0.0, -1.0],
            [-1.0, 1.0, 3.0, 1.0],
            [1.0, 1.0, 0.0, -1.0],
        ]
    )
    kinds = ["random", "random", "random", "helpful"]
    flips, hurts = random_sign_changes(traj, kinds)
    # column 0: nonzero -1, -1, 1 -> one flip in two, hurt once in three; column 1: 1, -1, 1, 1; column 2 moved once
    assert flips == [0.5, 2 / 3] and hurts == [1 / 3, 0.75]
    assert random_sign_changes(traj, ["helpful"] * 4) == ([], [])
