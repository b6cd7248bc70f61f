"""One checkpoint pair -> one LCA row, its residual and the number of sub-intervals used.

Along the segment ``v(s) = v0 + s Δ`` the gradient theorem gives
``L(v1) - L(v0) = Σ_i Δ_i ∫_0^1 ∂_i L(v(s)) ds``; LCA_i is the i-th term. The integral is composite Simpson
with adaptive doubling: start at n = 2 (points 0, 1/2, 1), and while the residual
``r = (L1 - L0) - Σ LCA`` exceeds ``tolerance + rtol |L1 - L0|`` double n up to ``max_splits``, evaluating only
the new odd points. The gradient at s = 1 is returned so that the next pair reuses it as its s = 0 gradient:
Simpson then costs two new gradients per pair.

Instead of keeping every gradient, three running sums are kept (shapes ``(D,)``, float64):
``ends = g(0) + g(1)``, ``odd`` (points of weight 4) and ``even`` (interior points of weight 2). Doubling n
turns every old odd point into an even one and adds the new points as odd ones:
``I_n = (ends + 4 odd + 2 even) / (3 n)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lca_cli.errors import NumericalError
from lca_cli.quadrature import new_points

__all__ = ["Evaluation", "PairResult", "integrate_pair", "within_tolerance"]

#: ``s -> (loss, grad)`` at ``v0 + s Δ``: float64 scalar tensor and float64 ``(D,)`` tensor.
PointFn = Callable[[float], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Evaluation:
    """Loss and gradient at one point (float64 tensors on the compute device)."""

    loss: torch.Tensor
    grad: torch.Tensor


@dataclass(frozen=True)
class PairResult:
    """LCA of one pair.

    Attributes:
        lca: float64 ``(D,)``: Δ_i times the integrated gradient, on the compute device.
        loss0: Loss at the start checkpoint.
        loss1: Loss at the end checkpoint.
        residual: ``(loss1 - loss0) - Σ lca`` (exact up to float64 rounding of the sums).
        splits: Sub-intervals used (1 for Euler).
        l1_change: ``||lca_n - lca_{n/2}||_1 / ||lca_n||_1``: how much the last refinement moved the row (the
            coarser rule at n = 2, and for Euler, is the trapezoid rule on the two endpoint gradients). A
            per-parameter accuracy indicator that, unlike the residual, errors of opposite sign cannot hide.
        flagged: True when the residual is still over tolerance (at the cap for Simpson; always
            checked, never refined, for Euler).
        end: The end point's evaluation, to be reused as the next pair's start.

    """

    lca: torch.Tensor
    loss0: float
    loss1: float
    residual: float
    splits: int
    flagged: bool
    end: Evaluation
    l1_change: float = float("nan")


def within_tolerance(residual: float, delta_loss: float, tolerance: float, rtol: float) -> bool:
    """Whether a pair's residual passes ``|r| <= tolerance + rtol * |ΔL|``.

    Args:
        residual: The pair's residual.
        delta_loss: The pair's loss change.
        tolerance: Absolute part, in loss units.
        rtol: Relative part.

    Returns:
        True when the residual is small enough.

    """
    return abs(residual) <= tolerance + rtol * abs(delta_loss)


def _l1_change(fine: torch.Tensor, coarse: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(fine, 1))
    return float(torch.dist(fine, coarse, 1)) / norm if norm > 0 else 0.0


def _finite(loss: torch.Tensor, what: str) -> float:
    value = float(loss)
    if value != value or value in (float("inf"), float("-inf")):
        raise NumericalError(f"loss is {value} at {what}; the run diverged there or the data has NaNs")
    return value


def integrate_pair(
    point: PointFn,
    delta: torch.Tensor,
    start: Evaluation,
    end: Evaluation | None = None,
    *,
    method: str = "rk4",
    max_splits: int = 32,
    tolerance: float = 0.0,
    rtol: float = 0.0,
    l1_tol: float = 0.0,
    label: str = "pair",
) -> PairResult:
    """Allocate one pair's loss change to the coordinates of ``Δ``.

    Args:
        point: Evaluates loss and gradient at ``v0 + s Δ``.
        delta: ``v1 - v0``, float64 ``(D,)``.
        start: Evaluation at s = 0 (reused from the previous pair's end when contiguous).
        end: Evaluation at s = 1 when already known; computed otherwise.
        method: ``"rk4"`` (adaptive composite Simpson) or ``"euler"`` (gradient at s = 0 only).
        max_splits: Cap on sub-intervals for ``"rk4"`` (power of two >= 2).
        tolerance: Absolute residual tolerance.
        rtol: Relative residual tolerance.
        l1_tol: When > 0, a pair also needs ``l1_change <= l1_tol`` to stop refining (per-parameter accuracy;
            residual errors of opposite sign can cancel, these cannot). 0 disables it.
        label: Names the pair in error messages (e.g. ``"steps 4 -> 5"``).

    Returns:
        The pair's result, including the end evaluation for reuse.

    Raises:
        NumericalError: If a loss along the segment is not finite.

    """
    loss0 = _finite(start.loss, f"the start of {label}")
    if end is None:
        end = Evaluation(*point(1.0))
    loss1 = _finite(end.loss, f"the end of {label}")
    dl = loss1 - loss0

    # The (D,) vector work below is a handful of passes per pair (about 1% of a pair for an MNIST-FC-sized
    # net on CPU): kept to in-place ops and fused kernels. Results are bitwise those of the plain formulas
    # (the factors 4 and 2 are exact, so ``add(a, b, alpha=4)`` rounds exactly like ``a + 4 * b``).
    ends = start.grad + end.grad  # (D,) weight-1 points
    coarse = torch.mul(delta, ends).div_(2.0)  # (D,) trapezoid rule: the comparison for Euler and for n = 2
    if method == "euler":
        lca = delta * start.grad
        residual = dl - float(lca.sum())
        change = _l1_change(lca, coarse)
        ok = within_tolerance(residual, dl, tolerance, rtol) and (l1_tol <= 0 or change <= l1_tol)
        return PairResult(lca, loss0, loss1, residual, 1, not ok, end, change)
    if method != "rk4":
        raise ValueError(f"unknown method {method!r}")

    even: torch.Tensor | None = None  # (D,) weight-2 interior points (none at n = 2)
    odd: torch.Tensor | None = None  # (D,) weight-4 points
    n = 1  # the next loop turns n into 2 first: the plain-Simpson midpoint is the first "new odd point"
    while True:
        if odd is not None:
            even = odd if even is None else even + odd  # never in place: odd may be the caller's tensor
        odd = None
        for s in new_points(n):
            loss_s, grad_s = point(float(s))
            _finite(loss_s, f"s = {float(s):g} inside {label}")
            odd = grad_s if odd is None else odd + grad_s
        assert odd is not None
        n *= 2
        weighted = torch.add(ends, odd, alpha=4.0)  # ends + 4 odd (+ 2 even): Simpson's weights
        if even is not None:
            weighted.add_(even, alpha=2.0)
        lca = weighted.mul_(delta).div_(3.0 * n)
        residual = dl - float(lca.sum())
        change = _l1_change(lca, coarse)
        ok = within_tolerance(residual, dl, tolerance, rtol) and (l1_tol <= 0 or change <= l1_tol)
        if ok or n >= max_splits:
            return PairResult(lca, loss0, loss1, residual, n, not ok, end, change)
        coarse = lca
