"""Quadrature tables, checked exactly with Fractions against literal lists."""

from __future__ import annotations

from fractions import Fraction as Fr

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lca_cli.core.quadrature import (
    euler_rule,
    new_points,
    panel_rule,
    panel_trapezoid_rule,
    refinement_schedule,
    simpson_rule,
    split_points,
    trapezoid_rule,
)


def integrate(rule: tuple[list[Fr], list[Fr]], f) -> Fr:
    points, weights = rule
    return sum((w * f(s) for s, w in zip(points, weights, strict=True)), Fr(0))


# Literal tables: points k/n, weights (1, 4, 2, ..., 4, 1) / (3n).
SIMPSON_TABLES = {
    2: (
        [Fr(0), Fr(1, 2), Fr(1)],
        [Fr(1, 6), Fr(4, 6), Fr(1, 6)],
    ),
    4: (
        [Fr(0), Fr(1, 4), Fr(1, 2), Fr(3, 4), Fr(1)],
        [Fr(1, 12), Fr(4, 12), Fr(2, 12), Fr(4, 12), Fr(1, 12)],
    ),
    8: (
        [Fr(0), Fr(1, 8), Fr(2, 8), Fr(3, 8), Fr(4, 8), Fr(5, 8), Fr(6, 8), Fr(7, 8), Fr(1)],
        [Fr(1, 24), Fr(4, 24), Fr(2, 24), Fr(4, 24), Fr(2, 24), Fr(4, 24), Fr(2, 24), Fr(4, 24), Fr(1, 24)],
    ),
}


@pytest.mark.parametrize("n", sorted(SIMPSON_TABLES))
def test_simpson_literal_tables(n: int) -> None:
    points, weights = simpson_rule(n)
    assert points == SIMPSON_TABLES[n][0]
    assert weights == SIMPSON_TABLES[n][1]
    assert all(isinstance(x, Fr) for x in points + weights)


def test_simpson_default_is_plain_simpson() -> None:
    assert simpson_rule() == SIMPSON_TABLES[2]


@pytest.mark.parametrize("n", [2, 4, 6, 8, 16, 32, 64])
def test_simpson_weights_sum_to_one(n: int) -> None:
    points, weights = simpson_rule(n)
    assert len(points) == len(weights) == n + 1
    assert sum(weights) == 1
    assert points == sorted(points) and points[0] == 0 and points[-1] == 1


@pytest.mark.parametrize("n", [-2, 0, 1, 3, 5, 31])
def test_simpson_rejects_odd_or_small_n(n: int) -> None:
    with pytest.raises(ValueError, match="even"):
        simpson_rule(n)


def test_trapezoid_and_euler_tables() -> None:
    assert trapezoid_rule(1) == ([Fr(0), Fr(1)], [Fr(1, 2), Fr(1, 2)])
    assert trapezoid_rule(4) == (
        [Fr(0), Fr(1, 4), Fr(1, 2), Fr(3, 4), Fr(1)],
        [Fr(1, 8), Fr(2, 8), Fr(2, 8), Fr(2, 8), Fr(1, 8)],
    )
    assert euler_rule() == ([Fr(0)], [Fr(1)])
    with pytest.raises(ValueError):
        trapezoid_rule(0)


def test_new_points_literal() -> None:
    assert new_points(1) == [Fr(1, 2)]
    assert new_points(2) == [Fr(1, 4), Fr(3, 4)]
    assert new_points(4) == [Fr(1, 8), Fr(3, 8), Fr(5, 8), Fr(7, 8)]
    with pytest.raises(ValueError):
        new_points(0)


@given(st.sampled_from([2, 4, 8, 16, 32, 64]))
def test_new_points_are_exactly_what_doubling_adds(n: int) -> None:
    coarse, _ = simpson_rule(n)
    fine, _ = simpson_rule(2 * n)
    added = new_points(n)
    assert len(added) == n
    assert sorted(set(coarse) | set(added)) == fine
    assert not set(coarse) & set(added)


def test_refinement_schedule() -> None:
    assert refinement_schedule(2) == [2]
    assert refinement_schedule(4) == [2, 4]
    assert refinement_schedule(32) == [2, 4, 8, 16, 32]
    for bad in (0, 1, 3, 6, 12, 33):
        with pytest.raises(ValueError, match="power of two"):
            refinement_schedule(bad)


# Exact integrals on [0, 1] with Fractions: Simpson (any n) is exact on cubics, not on quartics;
# the trapezoid rule is not exact on quadratics. LCA's integrand is dL/ds, so a quartic *loss* has a
# cubic integrand (Simpson exact, trapezoid not) and a quintic loss has a quartic integrand.


def cubic(s: Fr) -> Fr:
    return 3 * s**3 - 2 * s**2 + s - 7


def quartic(s: Fr) -> Fr:
    return s**4


@pytest.mark.parametrize("n", [2, 4, 8])
def test_simpson_exact_on_cubics(n: int) -> None:
    exact = Fr(3, 4) - Fr(2, 3) + Fr(1, 2) - 7
    assert integrate(simpson_rule(n), cubic) == exact


@pytest.mark.parametrize(("n", "error"), [(2, Fr(1, 120)), (4, Fr(1, 1920)), (8, Fr(1, 30720))])
def test_simpson_not_exact_on_quartics(n: int, error: Fr) -> None:
    # Composite Simpson error for s^4 on [0, 1]: h^4 / 180 * f''''  = (1/n)^4 * 24 / 180 = 2 / (15 n^4).
    value = integrate(simpson_rule(n), quartic)
    assert value - Fr(1, 5) == error == Fr(2, 15 * n**4)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_trapezoid_differs_from_simpson_on_cubics(n: int) -> None:
    exact = Fr(3, 4) - Fr(2, 3) + Fr(1, 2) - 7
    trap = integrate(trapezoid_rule(n), cubic)
    assert trap != exact
    assert integrate(simpson_rule(n), cubic) == exact
    # Simpson is Richardson-extrapolated trapezoid: S_n = (4 T_n - T_{n/2}) / 3.
    s_n = integrate(simpson_rule(n), quartic)
    assert s_n == (4 * integrate(trapezoid_rule(n), quartic) - integrate(trapezoid_rule(n // 2), quartic)) / 3


def test_euler_is_left_endpoint() -> None:
    assert integrate(euler_rule(), cubic) == cubic(Fr(0))


# Panels: the local scheme's tables.


def test_panel_rule_literal_non_uniform() -> None:
    # [0, 1/2] (w 1/2), [1/2, 3/4] and [3/4, 1] (w 1/4): (1, 4, 1) w / 6 per panel, shared ends added.
    points, weights = panel_rule([(Fr(3, 4), Fr(1)), (Fr(0), Fr(1, 2)), (Fr(1, 2), Fr(3, 4))])
    assert points == [Fr(0), Fr(1, 4), Fr(1, 2), Fr(5, 8), Fr(3, 4), Fr(7, 8), Fr(1)]
    assert weights == [Fr(1, 12), Fr(4, 12), Fr(3, 24), Fr(4, 24), Fr(2, 24), Fr(4, 24), Fr(1, 24)]
    assert sum(weights) == 1


def test_uniform_panels_are_composite_simpson_and_trapezoid() -> None:
    for n in (2, 4, 8):
        panels = [(Fr(2 * k, n), Fr(2 * k + 2, n)) for k in range(n // 2)]
        assert panel_rule(panels) == simpson_rule(n)
        assert panel_trapezoid_rule(panels) == trapezoid_rule(n)


def test_split_points_literal() -> None:
    assert split_points(Fr(0), Fr(1)) == (Fr(1, 4), Fr(3, 4))
    assert split_points(Fr(1, 2), Fr(1)) == (Fr(5, 8), Fr(7, 8))
    assert split_points(Fr(1, 4), Fr(1, 2)) == (Fr(5, 16), Fr(7, 16))
    with pytest.raises(ValueError):
        split_points(Fr(1, 2), Fr(1, 2))


@given(st.lists(st.integers(0, 5), min_size=1, max_size=6))
def test_any_split_sequence_tiles_and_is_exact_on_cubics(choices: list[int]) -> None:
    # Split panels in any order: the panels still tile [0, 1], the rule integrates cubics exactly, and the
    # points are the old ones plus exactly the two split_points of the split panel.
    panels = [(Fr(0), Fr(1))]
    for c in choices:
        a, b = panels.pop(c % len(panels))
        m = (a + b) / 2
        before = set(panel_rule([*panels, (a, b)])[0])
        panels += [(a, m), (m, b)]
        after = set(panel_rule(panels)[0])
        assert after - before == set(split_points(a, b))
    exact = Fr(3, 4) - Fr(2, 3) + Fr(1, 2) - 7
    assert integrate(panel_rule(panels), cubic) == exact
    assert sum(panel_rule(panels)[1]) == 1 == sum(panel_trapezoid_rule(panels)[1])


@pytest.mark.parametrize(
    "panels",
    [[], [(Fr(0), Fr(1, 2))], [(Fr(0), Fr(1, 2)), (Fr(1, 4), Fr(1))], [(Fr(0), Fr(1, 2)), (Fr(3, 4), Fr(1))]],
    ids=["none", "short", "overlap", "gap"],
)
def test_panels_must_tile(panels: list[tuple[Fr, Fr]]) -> None:
    with pytest.raises(ValueError):
        panel_rule(panels)
