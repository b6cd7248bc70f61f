"""One checkpoint pair -> one LCA row, its residual and the number of sub-intervals used.

Along the segment ``v(s) = v0 + s Δ`` the gradient theorem gives
``L(v1) - L(v0) = Σ_i Δ_i ∫_0^1 ∂_i L(v(s)) ds``; LCA_i is the i-th term. The integral is composite Simpson,
starting from plain Simpson (points 0, 1/2, 1). The gradient at s = 1 is returned so that the next pair reuses
it as its s = 0 gradient: plain Simpson then costs two new gradients per pair. Two ways to refine:

``refine="local"`` (the default): adaptive Simpson on *panels* (one Simpson step each, see
:mod:`lca_cli.core.quadrature`), depth first, left to right. Every panel ``[a, b]`` with midpoint ``m`` has a
per-parameter error indicator that costs no gradient, :data:`JUMP_FACTOR` times the L1 norm of the difference
between Simpson and the trapezoid rule on its halves, ``|Δ (2 g(m) - g(a) - g(b))|_1 (b - a) / 12``, and an
exact lower bound of its per-parameter L1 error, the panel's residual ``|L(b) - L(a) - Σ_i lca_i|``. The larger
of the two is the panel's estimate. A panel is accepted when its estimate fits its share ``(b - a) l1_tol
|lca_2|_1`` of the pair's budget (``lca_2`` the plain-Simpson row) plus what earlier panels left unused;
otherwise it is split into its halves (two new gradients) down to width ``2 / max_splits``. On a run whose probes
calibrated a deeper panels' factor (``deep_factor``: runs of 100 pairs and more whose probes show jumps from
the first panel on, as Adam runs do), the share is
``0.9 (b - a)^(1/2) l1_tol |lca_2|_1`` instead (:data:`SHARE_SCALE`, :data:`SHARE_EXPONENT`), a pair's summed
estimate is held to :data:`PAIR_CEILING` budgets and its panels' summed residuals (exact lower bounds) to one: on
ReLU nets a split only halves a panel's error (first-order convergence), so shares proportional to the width
made most panels below a failed one fail too, down to the cap (BENCHMARKS.md, *The estimator and the scale*).
A run whose probes show a smooth first panel but plain Simpson near its target gets ``deep_factor`` =
:data:`JUMP_FACTOR` (:data:`lca_cli.core.calibration.NEAR_TARGET`): the same shares and bounds below the first
panel, which keeps its whole budget. Without a deeper factor (shorter runs, smooth first panels elsewhere, direct
calls) the shares stay proportional to the width
(on an SGD CNN whose deeper panels' ratio grows to 2, the larger shares left the contract): the larger ones
rest on the calibrated factor, and uncalibrated they cost short runs more gradients (measured: the tests' 12-pair
ReLU CNN 3.83 -> 4.17, a 5-pair 1M-parameter barely-moving run 3.0 -> 3.8).
With a run scale ``S`` (``l1_scale``, a fraction of the run's mean ``||lca||_1``), the budget is
``l1_tol max(|lca_2|_1, S)``: the run's summed error stays about ``l1_tol`` of its summed ``||lca||_1``, and
pairs that hardly move (late in training) keep plain Simpson, whose absolute error there is small, instead of
being refined to their own row.
The first panel (the whole pair: plain Simpson) may take another factor, calibrated on the run
(``first_factor``; :mod:`lca_cli.core.calibration`): where a run's probes show plain Simpson's summed error within
its target, pairs a little over their own budget keep plain Simpson. Deeper panels take ``deep_factor``, also from
the run's probes (:func:`lca_cli.core.calibration.deep_panel_factor`), :data:`JUMP_FACTOR` when uncalibrated.
On ReLU networks, whose gradient jumps wherever a unit changes sign along the segment, Simpson converges only
at first order; the residual, in which errors of opposite sign cancel, understates their per-parameter error
5-10 times, so refining on it either stops too early or runs to the cap. The indicator tracks it (BENCHMARKS.md)
and over-estimates smooth nets, whose rows it then accepts after one split.

A loss computed in float32 (a model's own ``loss``, a custom loss) is rounded to a few parts in 10^7 of
itself: late in training a pair's loss change can be a few of those steps, and its residual is then that
rounding, not an error of the row. With ``loss_rounding`` (the relative rounding bound of each loss value), a
residual within ``loss_rounding (|L(a)| + |L(b)|)`` counts as zero in the per-parameter estimate and in the flag:
it neither refines a panel nor flags a pair (an explicit ``tolerance``/``rtol`` is still held as given when
refining). The built-in losses are reduced in float64; the network's own rounding remains.

``refine="doubling"``: double the number of uniform sub-intervals while the residual
``r = (L1 - L0) - Σ LCA`` exceeds ``tolerance + rtol |L1 - L0|`` (and, with ``l1_tol``, while the last doubling
moved the row by more than ``l1_tol`` in relative L1), evaluating only the new odd points. Three running sums
are kept (shapes ``(D,)``, float64): ``ends = g(0) + g(1)``, ``odd`` (points of weight 4) and ``even``
(interior points of weight 2); ``I_n = (ends + 4 odd + 2 even) / (3 n)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import torch

from lca_cli.core.quadrature import new_points, split_points
from lca_cli.core.vectors import sum64
from lca_cli.errors import NumericalError

__all__ = [
    "DEEP_FACTOR",
    "PAIR_CEILING",
    "REFINE_SCHEMES",
    "SHARE_EXPONENT",
    "SHARE_SCALE",
    "Evaluation",
    "PairResult",
    "integrate_pair",
    "loss_rounding_of",
    "residual_budget",
    "within_tolerance",
]

#: The local scheme's indicator is this multiple of ``|Simpson - trapezoid|_1`` on a panel. For a gradient jump
#: at a uniformly random place in a panel (a ReLU unit changing sign), Simpson's mean error is 5/3 of that
#: difference, and about 2 root-mean-square for many jumps; smooth parts make the ratio smaller. Measured
#: on eight ReLU runs (BENCHMARKS.md), real error / difference was 1.0-1.4 after refinement, so with 1.4 the
#: run's relative L1 error per parameter came out at or below ``l1_tol``.
JUMP_FACTOR = 1.4

#: The largest calibrated factor of the deeper panels (:func:`lca_cli.core.calibration.deep_panel_factor`).
#: Below the first panel a jump dominates ever more of a panel's error: real error over indicator measured
#: 1.8-2.1 on the deeper panels of three Adam ReLU runs (1.2-2.0 on an SGD one), above :data:`JUMP_FACTOR`; 1.8 with
#: :data:`SHARE_SCALE` 0.9 kept every one of seven replayed runs within the target (BENCHMARKS.md).
DEEP_FACTOR = 1.8

#: A panel of width ``w`` (a fraction of the pair) gets ``SHARE_SCALE w ** SHARE_EXPONENT`` of the pair's budget.
SHARE_EXPONENT = 0.5
#: See :data:`SHARE_EXPONENT`: the margin that the larger shares of deeper panels need (1.0 left one replayed run
#: at 1.02e-3 where the target was 1e-3).
SHARE_SCALE = 0.9
#: Shares of ``w ** 0.5`` sum to more than the budget when a pair is split deep (``2^(d/2)`` times at depth ``d``):
#: an accepted pair's summed estimate is held to this multiple of its budget, bounding what a run whose every pair
#: is refined deep can reach. At 2 it cost 0.1 gradients per pair or less on seven replayed runs.
PAIR_CEILING = 2.0

#: How sub-intervals are refined: split only the panels whose error estimate is large, or double them all.
REFINE_SCHEMES = ("local", "doubling")

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
        splits: Sub-intervals used (1 for Euler); with the end point reused, also the gradients the pair cost.
        l1_change: A per-parameter accuracy indicator relative to ``||lca||_1`` that, unlike the residual, errors
            of opposite sign cannot hide. ``"local"``: the sum over the accepted panels of their error estimates
            (see the module docstring). ``"doubling"``: ``||lca_n - lca_{n/2}||_1 / ||lca_n||_1``, how much the
            last doubling moved the row (the coarser rule at n = 2, and for Euler, is the trapezoid rule on the
            two endpoint gradients).
        flagged: True when the residual proves the pair over its tolerance (at the cap for Simpson; always
            checked, never refined, for Euler). See :func:`residual_budget`.
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


def loss_rounding_of(dtype: torch.dtype) -> float:
    """The relative rounding bound of a loss value reduced in ``dtype``, for :func:`integrate_pair`.

    Four unit roundoffs: the final rounding of a mean (half an ulp, at most one unit roundoff relatively) and
    a margin for the rounding inside its reduction. Measured (BENCHMARKS.md, *Float32 losses*): on a float32
    GPT-2 whose model computed its own loss, residuals of late pairs up to 2.8 unit roundoffs of the loss on rows
    within 1.9e-7 (relative L1) of the float64 network's; with the loss reduced in float64, a float32 network's
    own rounding left 0.06-0.2. Float64 losses count as exact (0), as they always did.

    Args:
        dtype: The dtype the loss was computed in.

    Returns:
        ``4 finfo(dtype).eps / 2`` for floating dtypes below float64, else 0.

    """
    if dtype == torch.float64 or not dtype.is_floating_point:
        return 0.0
    return 4 * torch.finfo(dtype).eps / 2


def _rounding(loss_rounding: float, loss_a: float, loss_b: float) -> float:
    """How large a residual between two losses can be from their rounding alone (loss units)."""
    return loss_rounding * (abs(loss_a) + abs(loss_b))


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


def residual_budget(
    delta_loss: float,
    l1_norm: float,
    tolerance: float | None,
    rtol: float | None,
    l1_tol: float,
    l1_scale: float = 0.0,
) -> float:
    """The largest residual a finished pair may have before it is flagged.

    The residual ``ΔL - Σ lca`` is the sum of the per-parameter errors, so ``|residual| <= ||error||_1``: a
    residual above ``l1_tol max(||lca||_1, l1_scale)`` proves the row misses the per-parameter target. An
    explicit residual tolerance (``tolerance`` and/or ``rtol`` given) is checked as well.

    Args:
        delta_loss: The pair's loss change.
        l1_norm: ``||lca||_1`` of the pair's row.
        tolerance: Absolute residual tolerance, or None when not given.
        rtol: Relative residual tolerance (times ``|ΔL|``), or None when not given.
        l1_tol: Per-parameter target relative to ``||lca||_1`` (0 = none).
        l1_scale: The run's scale of ``||lca||_1`` (0 = none): the target is relative to the larger of the two.

    Returns:
        The budget; 0 when no tolerance of any kind is given (every nonzero residual is then over it).

    """
    budgets = []
    if tolerance is not None or rtol is not None:
        budgets.append((tolerance or 0.0) + (rtol or 0.0) * abs(delta_loss))
    if l1_tol > 0:
        budgets.append(l1_tol * max(l1_norm, l1_scale))
    return min(budgets) if budgets else 0.0


def _l1_change(fine: torch.Tensor, coarse: torch.Tensor) -> float:
    norm = float(torch.linalg.vector_norm(fine, 1))
    return float(torch.dist(fine, coarse, 1)) / norm if norm > 0 else 0.0


def _finite(loss: torch.Tensor, what: str) -> float:
    value = float(loss)
    if value != value or value in (float("inf"), float("-inf")):
        raise NumericalError(
            f"loss is {value} at {what}; the run diverged there, the data has NaNs, or a checkpoint file is damaged"
        )
    return value


def integrate_pair(
    point: PointFn,
    delta: torch.Tensor,
    start: Evaluation,
    end: Evaluation | None = None,
    *,
    method: str = "rk4",
    refine: str = "local",
    max_splits: int = 32,
    tolerance: float | None = None,
    rtol: float | None = None,
    l1_tol: float = 0.0,
    l1_scale: float = 0.0,
    loss_rounding: float = 0.0,
    label: str = "pair",
    first_factor: float = JUMP_FACTOR,
    deep_factor: float | None = None,
    work: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> PairResult:
    """Allocate one pair's loss change to the coordinates of ``Δ``.

    Args:
        point: Evaluates loss and gradient at ``v0 + s Δ``.
        delta: ``v1 - v0``, float64 ``(D,)``.
        start: Evaluation at s = 0 (reused from the previous pair's end when contiguous).
        end: Evaluation at s = 1 when already known; computed otherwise.
        method: ``"rk4"`` (adaptive composite Simpson) or ``"euler"`` (gradient at s = 0 only).
        refine: ``"local"`` (split only the panels whose error estimate is large) or ``"doubling"`` (double
            every sub-interval); see the module docstring.
        max_splits: Cap on sub-intervals for ``"rk4"`` (power of two >= 2).
        tolerance: Absolute residual tolerance, or None for none (``"doubling"`` then uses 0).
        rtol: Relative residual tolerance, or None for none (``"doubling"`` then uses 0).
        l1_tol: Per-parameter target: the estimated L1 error of the row relative to ``||lca||_1`` (``"local"``),
            or the relative L1 change of the last doubling (``"doubling"``); 0 disables it.
        l1_scale: ``"local"`` only: the run's scale of ``||lca||_1`` (loss units; see
            :func:`lca_cli.computation.scale.measure_l1_scales`); the target is
            ``l1_tol`` times the larger of it and the pair's own norm. 0: each pair's own norm.
        loss_rounding: Relative rounding bound of each loss value (see :func:`loss_rounding_of`; 0 = exact): a
            residual within ``loss_rounding (|L(a)| + |L(b)|)`` of zero does not enter the per-parameter estimate
            and never flags (explicit residual tolerances still refine as given).
        label: Names the pair in error messages (e.g. ``"steps 4 -> 5"``).
        first_factor: ``"local"`` only: the indicator's factor on the first panel (plain Simpson), calibrated on
            the run (:func:`lca_cli.core.calibration.first_panel_factor`).
        deep_factor: ``"local"`` only: the indicator's factor on every deeper panel, calibrated on the run
            (:func:`lca_cli.core.calibration.deep_panel_factor`), with the calibrated shares (module docstring;
            at :data:`JUMP_FACTOR` or under it the first panel keeps its whole budget); None (uncalibrated):
            :data:`JUMP_FACTOR` and shares proportional to the width.
        work: ``x -> a free buffer like x`` for the ``"local"`` scheme's ``(D,)`` rows and temporaries (e.g.
            :meth:`~lca_cli.core.vectors.BufferPool.like`: no allocation per panel); fresh tensors when None.
            The arithmetic runs in the dtype of ``delta`` and the gradients, and is the same either way.

    Returns:
        The pair's result, including the end evaluation for reuse.

    Raises:
        NumericalError: If a loss along the segment is not finite.
        ValueError: For an unknown ``method`` or ``refine``.

    """
    loss0 = _finite(start.loss, f"the start of {label}")
    if end is None:
        end = Evaluation(*point(1.0))
    loss1 = _finite(end.loss, f"the end of {label}")
    if method not in ("rk4", "euler"):
        raise ValueError(f"unknown method {method!r}")
    if method == "rk4" and refine == "local":
        return _integrate_local(
            point, delta, start, end, loss0, loss1, max_splits, tolerance, rtol, l1_tol, l1_scale, loss_rounding, label,
            work or torch.empty_like, first_factor, deep_factor,
        )  # fmt: skip
    if refine not in REFINE_SCHEMES:
        raise ValueError(f"unknown refine scheme {refine!r}")
    noise = _rounding(loss_rounding, loss0, loss1)  # what the residual may be from rounding the two losses
    if method == "euler":
        return _integrate_euler(delta, start, end, loss0, loss1, tolerance, rtol, l1_tol, noise)
    return _integrate_doubling(
        point, delta, start, end, loss0, loss1, max_splits, tolerance, rtol, l1_tol, noise, label
    )


# The (D,) vector work of the two functions below is a handful of passes per pair (about 1% of a pair for an
# MNIST-FC-sized net on CPU): kept to in-place ops and fused kernels. Results are bitwise those of the plain
# formulas (the factors 4 and 2 are exact, so ``add(a, b, alpha=4)`` rounds exactly like ``a + 4 * b``).


def _integrate_euler(
    delta: torch.Tensor,
    start: Evaluation,
    end: Evaluation,
    loss0: float,
    loss1: float,
    tolerance: float | None,
    rtol: float | None,
    l1_tol: float,
    noise: float,
) -> PairResult:
    """Euler: the gradient at s = 0 only, compared with the trapezoid rule for the per-parameter change.

    ``noise`` is what the residual may be from rounding the two losses (see :func:`_rounding`).
    """
    dl = loss1 - loss0
    ends = start.grad + end.grad  # (D,) weight-1 points
    coarse = torch.mul(delta, ends).div_(2.0)  # (D,) trapezoid rule: the comparison for Euler
    lca = delta * start.grad
    residual = dl - float(sum64(lca))
    change = _l1_change(lca, coarse)
    budget = residual_budget(dl, float(torch.linalg.vector_norm(lca, 1)), tolerance, rtol, l1_tol)
    ok = abs(residual) - noise <= budget and (l1_tol <= 0 or change <= l1_tol)
    return PairResult(lca, loss0, loss1, residual, 1, not ok, end, change)


def _integrate_doubling(
    point: PointFn,
    delta: torch.Tensor,
    start: Evaluation,
    end: Evaluation,
    loss0: float,
    loss1: float,
    max_splits: int,
    tolerance: float | None,
    rtol: float | None,
    l1_tol: float,
    noise: float,
    label: str,
) -> PairResult:
    """Composite Simpson, doubling every sub-interval until the tolerances hold or ``max_splits`` is reached.

    ``noise`` is what the residual may be from rounding the two losses (see :func:`_rounding`).
    """
    dl = loss1 - loss0
    ends = start.grad + end.grad  # (D,) weight-1 points
    coarse = torch.mul(delta, ends).div_(2.0)  # (D,) trapezoid rule: the comparison for n = 2
    atol_d, rtol_d = tolerance or 0.0, rtol or 0.0

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
        residual = dl - float(sum64(lca))
        change = _l1_change(lca, coarse)
        l1_ok = l1_tol <= 0 or change <= l1_tol
        ok = within_tolerance(residual, dl, atol_d, rtol_d) and l1_ok  # the tolerance as given: refines to the cap
        if ok or n >= max_splits:
            proven = not (within_tolerance(residual, dl, atol_d + noise, rtol_d) and l1_ok)  # beyond the rounding
            return PairResult(lca, loss0, loss1, residual, n, proven, end, change)
        coarse = lca


@dataclass(frozen=True)
class _Point:
    """A point of the segment with its (finite) loss and gradient."""

    s: Fraction
    loss: float
    grad: torch.Tensor


def _share(budget: float, w: float, deep_factor: float | None) -> float:
    """A panel's share of its pair's budget: ``w`` uncalibrated, ``SHARE_SCALE w^SHARE_EXPONENT`` calibrated.

    A run held at the fixed factor below a smooth first panel (``deep_factor`` at :data:`JUMP_FACTOR`, or under it:
    plain Simpson near its target) gives its first panel (``w = 1``) the whole budget, as uncalibrated runs do.
    """
    if deep_factor is None:
        return budget * w
    if w == 1.0 and deep_factor <= JUMP_FACTOR:
        return budget
    return SHARE_SCALE * budget * w**SHARE_EXPONENT


def _integrate_local(
    point: PointFn,
    delta: torch.Tensor,
    start: Evaluation,
    end: Evaluation,
    loss0: float,
    loss1: float,
    max_splits: int,
    tolerance: float | None,
    rtol: float | None,
    l1_tol: float,
    l1_scale: float,
    loss_rounding: float,
    label: str,
    work: Callable[[torch.Tensor], torch.Tensor],
    first_factor: float = JUMP_FACTOR,
    deep_factor: float | None = None,
) -> PairResult:
    """Local adaptive Simpson, depth first (see the module docstring).

    Memory: the pending right halves on the stack, at most ``log2(max_splits)`` panels of three gradients with
    shared ends, besides a handful of ``(D,)`` temporaries per panel.
    """

    def evaluate(s: Fraction) -> _Point:
        loss_s, grad_s = point(float(s))
        return _Point(s, _finite(loss_s, f"s = {float(s):g} inside {label}"), grad_s)

    dl = loss1 - loss0
    min_width = Fraction(2, max_splits)
    # Per-parameter test when l1_tol > 0; residual test when a residual tolerance is given, or when nothing is
    # (no tolerance of any kind: refine to the cap, as doubling does with zero tolerances).
    explicit = tolerance is not None or rtol is not None
    res_tol = (tolerance or 0.0) + (rtol or 0.0) * abs(dl) if explicit else (float("inf") if l1_tol > 0 else 0.0)
    mid = evaluate(Fraction(1, 2))
    stack = [(_Point(Fraction(0), loss0, start.grad), mid, _Point(Fraction(1), loss1, end.grad))]
    lca: torch.Tensor | None = None  # (D,) running sum of the accepted panels' rows
    budget: float | None = None  # l1_tol max(|lca_2|_1, l1_scale), fixed by the plain-Simpson row (first panel)
    bank = res_bank = 0.0  # budget left unused by the panels accepted so far
    proven_sum = 0.0  # the accepted panels' proven errors: together they must fit the budget (no flag)
    estimate = 0.0
    splits = 0
    row_sum = row_norm = 0.0  # of the first panel, reused when it is the only one
    while stack:
        left, centre, right = stack.pop()
        width = right.s - left.s
        w = float(width)
        ends = torch.add(left.grad, right.grad, out=work(left.grad))  # (D,)
        # (D,) Δ (g_a + g_b - 2 g_m): the trapezoid rule on the halves minus Simpson, times 12 / width.
        second = torch.add(ends, centre.grad, alpha=-2.0, out=work(ends)).mul_(delta)
        # The run-calibrated factors: the whole pair's panel (budget still None there) and the deeper ones.
        factor = first_factor if budget is None else (JUMP_FACTOR if deep_factor is None else deep_factor)
        indicator = factor * float(second.abs_().sum()) * w / 12.0
        del second
        # (D,) the panel's row: (g_a + 4 g_m + g_b) Δ w / 6 (w is dyadic: the product by w is exact)
        row = ends.add_(centre.grad, alpha=4.0).mul_(delta)
        row = row.div_(6.0) if width == 1 else row.mul_(w).div_(6.0)
        row_sum = float(sum64(row))  # float64 sums of float32 rows: the residual's bookkeeping stays exact
        panel_res = abs((right.loss - left.loss) - row_sum)
        # In the estimate, only the residual beyond what rounding the two losses can explain (all of it for exact
        # losses); an explicit residual tolerance is held as given.
        proven = max(0.0, panel_res - _rounding(loss_rounding, left.loss, right.loss))
        if budget is None:
            row_norm = float(torch.abs(row, out=work(row)).sum())
            budget = l1_tol * max(row_norm, l1_scale) if l1_tol > 0 else float("inf")
        est = max(indicator, proven)
        # Calibrated shares (of the width's square root) sum to more than the budget over a pair's panels, so the
        # summed estimate is held to PAIR_CEILING budgets and the residuals (exact lower bounds) to one: no
        # accepted pair is ever flagged.
        share = _share(budget, w, deep_factor)
        res_share = res_tol * w
        ok = est <= share + bank and panel_res <= res_share + res_bank
        if deep_factor is not None:
            ok = ok and estimate + est <= PAIR_CEILING * budget and proven_sum + proven <= budget
        if ok or width <= min_width:
            lca = row if lca is None else lca.add_(row)
            splits += 2
            estimate += est
            proven_sum += proven
            if ok:
                bank += share - est
                res_bank += res_share - panel_res
            continue
        q1, q3 = split_points(left.s, right.s)
        first, second_q = evaluate(q1), evaluate(q3)
        stack.append((centre, second_q, right))  # popped after the left half: left to right
        stack.append((left, first, centre))
    assert lca is not None
    if splits == 2:  # plain Simpson: the sums of its only panel
        residual, norm = dl - row_sum, row_norm
    else:
        residual, norm = dl - float(sum64(lca)), float(torch.abs(lca, out=work(lca)).sum())
    flagged = abs(residual) - _rounding(loss_rounding, loss0, loss1) > residual_budget(
        dl, norm, tolerance, rtol, l1_tol, l1_scale
    )
    change = estimate / norm if norm > 0 else 0.0
    return PairResult(lca, loss0, loss1, residual, splits, flagged, end, change)
