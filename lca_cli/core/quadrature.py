"""Quadrature rules on [0, 1] as exact (points, weights) tables.

LCA integrates the gradient along the straight segment between two checkpoints. The rules here are pure:
they return :class:`fractions.Fraction` tables so that tests can compare them with literal lists, and the
integrator converts them to floats once.

Composite Simpson with ``n`` sub-intervals (``n`` even) uses points ``k / n`` for ``k = 0..n`` and weights
``(1, 4, 2, 4, ..., 2, 4, 1) / (3 n)``. Doubling ``n`` keeps every old point (they become the even points
of the finer rule) and adds the ``n`` new odd points ``(2 j + 1) / (2 n)``: that is what makes adaptive
refinement cheap, since only the new odd points need a gradient.

Local refinement works on *panels*: a panel ``[a, b]`` is one Simpson step with points ``a, (a + b) / 2, b``
and weights ``(1, 4, 1) (b - a) / 6``. Splitting it into its two halves keeps its three points and adds the
midpoints of the halves, ``(3 a + b) / 4`` and ``(a + 3 b) / 4``. Any set of panels that tiles [0, 1] is a
composite Simpson rule (:func:`panel_rule`); splitting every panel of the uniform rule with ``n``
sub-intervals gives the uniform rule with ``2 n``. The same three points also give the trapezoid rule on the
panel's two halves, weights ``(1, 2, 1) (b - a) / 4``: the difference of the two rules,
``(2 g(m) - g(a) - g(b)) (b - a) / 12``, is the local error indicator of the integrator.
"""

from __future__ import annotations

import itertools
from fractions import Fraction

__all__ = [
    "euler_rule",
    "new_points",
    "panel_rule",
    "panel_trapezoid_rule",
    "refinement_schedule",
    "simpson_rule",
    "split_points",
    "trapezoid_rule",
]


def _check_even(n: int) -> None:
    if n < 2 or n % 2:
        raise ValueError(f"composite Simpson needs an even number of sub-intervals >= 2, got {n}")


def simpson_rule(n: int = 2) -> tuple[list[Fraction], list[Fraction]]:
    """Composite Simpson rule with ``n`` sub-intervals on [0, 1].

    Args:
        n: Number of sub-intervals; even and at least 2 (``n = 2`` is plain Simpson: 0, 1/2, 1).

    Returns:
        ``(points, weights)``: ``n + 1`` points ``k / n`` and their weights, which sum to exactly 1.

    Raises:
        ValueError: If ``n`` is odd or smaller than 2.

    """
    _check_even(n)
    points = [Fraction(k, n) for k in range(n + 1)]
    weights = []
    for k in range(n + 1):
        coeff = 1 if k in (0, n) else (4 if k % 2 else 2)
        weights.append(Fraction(coeff, 3 * n))
    return points, weights


def trapezoid_rule(n: int = 1) -> tuple[list[Fraction], list[Fraction]]:
    """Composite trapezoid rule with ``n`` sub-intervals on [0, 1] (a comparison rule for tests).

    Args:
        n: Number of sub-intervals, at least 1.

    Returns:
        ``(points, weights)`` with weights ``(1, 2, ..., 2, 1) / (2 n)``.

    """
    if n < 1:
        raise ValueError(f"trapezoid rule needs n >= 1, got {n}")
    points = [Fraction(k, n) for k in range(n + 1)]
    weights = [Fraction(1 if k in (0, n) else 2, 2 * n) for k in range(n + 1)]
    return points, weights


def euler_rule() -> tuple[list[Fraction], list[Fraction]]:
    """First-order rule: the gradient at the segment's start only (the naive method, for comparison).

    Returns:
        ``([0], [1])``.

    """
    return [Fraction(0)], [Fraction(1)]


def new_points(n: int) -> list[Fraction]:
    """Points a refinement from ``n`` to ``2 n`` sub-intervals adds (the odd points of the finer rule).

    Args:
        n: Current number of sub-intervals (at least 1).

    Returns:
        The ``n`` points ``(2 j + 1) / (2 n)``, ``j = 0..n-1``, in increasing order.

    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [Fraction(2 * j + 1, 2 * n) for j in range(n)]


def refinement_schedule(max_splits: int) -> list[int]:
    """Sub-interval counts adaptive refinement visits: 2, 4, 8, ... up to ``max_splits``.

    Args:
        max_splits: The cap; a power of two and at least 2.

    Returns:
        The increasing list of sub-interval counts.

    Raises:
        ValueError: If ``max_splits`` is not a power of two >= 2.

    """
    if max_splits < 2 or max_splits & (max_splits - 1):
        raise ValueError(f"max_splits must be a power of two >= 2, got {max_splits}")
    out, n = [], 2
    while n <= max_splits:
        out.append(n)
        n *= 2
    return out


def _check_panels(panels: list[tuple[Fraction, Fraction]]) -> None:
    if not panels:
        raise ValueError("no panels")
    ordered = sorted(panels)
    if ordered[0][0] != 0 or ordered[-1][1] != 1:
        raise ValueError(f"panels must tile [0, 1], got {ordered}")
    for (_, b), (c, _) in itertools.pairwise(ordered):
        if b != c:
            raise ValueError(f"panels must tile [0, 1] without gaps or overlaps, got {ordered}")
    if any(a >= b for a, b in ordered):
        raise ValueError(f"every panel needs a < b, got {ordered}")


def _merge(terms: dict[Fraction, Fraction]) -> tuple[list[Fraction], list[Fraction]]:
    points = sorted(terms)
    return points, [terms[s] for s in points]


def panel_rule(panels: list[tuple[Fraction, Fraction]]) -> tuple[list[Fraction], list[Fraction]]:
    """Composite Simpson rule on panels ``[a, b]`` of any widths that tile [0, 1].

    Args:
        panels: ``(a, b)`` pairs, in any order; together they must cover [0, 1] exactly once.

    Returns:
        ``(points, weights)`` in increasing order of points: every panel contributes ``(1, 4, 1) (b - a) / 6`` at
        ``a, (a + b) / 2, b``; shared endpoints add up. The weights sum to exactly 1.

    Raises:
        ValueError: If the panels do not tile [0, 1].

    """
    return _panel_rule(panels, (1, 4, 1), 6)


def panel_trapezoid_rule(panels: list[tuple[Fraction, Fraction]]) -> tuple[list[Fraction], list[Fraction]]:
    """Composite trapezoid rule on the halves of the same panels (the integrator's comparison rule).

    Args:
        panels: ``(a, b)`` pairs tiling [0, 1].

    Returns:
        ``(points, weights)``: every panel contributes ``(1, 2, 1) (b - a) / 4`` at ``a, (a + b) / 2, b``.

    Raises:
        ValueError: If the panels do not tile [0, 1].

    """
    return _panel_rule(panels, (1, 2, 1), 4)


def _panel_rule(
    panels: list[tuple[Fraction, Fraction]], coefficients: tuple[int, int, int], denominator: int
) -> tuple[list[Fraction], list[Fraction]]:
    """Every panel contributes ``coefficients (b - a) / denominator`` at ``a, (a + b) / 2, b``; shared points add."""
    _check_panels(panels)
    terms: dict[Fraction, Fraction] = {}
    for a, b in panels:
        w = b - a
        for s, c in zip((a, (a + b) / 2, b), coefficients, strict=True):
            terms[s] = terms.get(s, Fraction(0)) + c * w / denominator
    return _merge(terms)


def split_points(a: Fraction, b: Fraction) -> tuple[Fraction, Fraction]:
    """The two points that splitting panel ``[a, b]`` into its halves adds (the halves' midpoints).

    Args:
        a: Left end.
        b: Right end (``b > a``).

    Returns:
        ``((3 a + b) / 4, (a + 3 b) / 4)``.

    """
    if not a < b:
        raise ValueError(f"need a < b, got [{a}, {b}]")
    return (3 * a + b) / 4, (a + 3 * b) / 4
