"""Quadrature rules on [0, 1] as exact (points, weights) tables.

LCA integrates the gradient along the straight segment between two checkpoints. The rules here are pure:
they return :class:`fractions.Fraction` tables so that tests can compare them with literal lists, and the
integrator converts them to floats once.

Composite Simpson with ``n`` sub-intervals (``n`` even) uses points ``k / n`` for ``k = 0..n`` and weights
``(1, 4, 2, 4, ..., 2, 4, 1) / (3 n)``. Doubling ``n`` keeps every old point (they become the even points
of the finer rule) and adds the ``n`` new odd points ``(2 j + 1) / (2 n)``: that is what makes adaptive
refinement cheap, since only the new odd points need a gradient.
"""

from __future__ import annotations

from fractions import Fraction

__all__ = ["euler_rule", "new_points", "refinement_schedule", "simpson_rule", "trapezoid_rule"]


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
