"""The pair integrator: exactness, refinement with point reuse, Euler, flags and numerical errors."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction

import pytest
import reference
import torch

from lca_cli.core.evalset import make_chunks
from lca_cli.core.integrate import (
    DEEP_FACTOR,
    JUMP_FACTOR,
    PAIR_CEILING,
    Evaluation,
    integrate_pair,
    loss_rounding_of,
    residual_budget,
    within_tolerance,
)
from lca_cli.core.layout import Layout
from lca_cli.core.losses import builtin_loss
from lca_cli.core.model import prepare_model
from lca_cli.core.objective import Objective
from lca_cli.core.quadrature import panel_rule
from lca_cli.core.vectors import flatten
from lca_cli.errors import NumericalError


class Counted:
    """A ``point`` function over an analytic objective that records every ``s`` it is asked for."""

    def __init__(self, loss, grad, v0: torch.Tensor, delta: torch.Tensor) -> None:
        self.loss, self.grad, self.v0, self.delta = loss, grad, v0, delta
        self.calls: list[float] = []

    def at(self, s: float) -> Evaluation:
        v = self.v0 + s * self.delta
        return Evaluation(self.loss(v), self.grad(v))

    def __call__(self, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(s)
        e = self.at(s)
        return e.loss, e.grad


def power_objective(k: int):
    """``L(v) = sum(c_i v_i^k) / k``: gradient ``c_i v_i^(k-1)``, so the integrand dL/ds has degree k - 1."""
    c = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)
    return (lambda v: (c * v**k).sum() / k), (lambda v: c * v ** (k - 1))


def exp_objective():
    c = torch.tensor([0.3, -1.0, 0.7, 1.5], dtype=torch.float64)
    return (lambda v: torch.exp(c * v).sum()), (lambda v: c * torch.exp(c * v))


V0 = torch.tensor([0.5, -1.0, 0.25, 2.0], dtype=torch.float64)
DELTA = torch.tensor([0.8, 0.6, -1.2, -0.9], dtype=torch.float64)


def run(obj, *, end: bool = False, **kw):
    kw.setdefault("refine", "doubling")  # the doubling scheme's tests; the local scheme's use run_local
    loss, grad = obj
    point = Counted(loss, grad, V0, DELTA)
    start = point.at(0.0)
    res = integrate_pair(point, DELTA, start, point.at(1.0) if end else None, **kw)
    return res, point


def exact_lca(k: int) -> torch.Tensor:
    # Per coordinate: Δ_i ∫ c_i (v0_i + sΔ_i)^(k-1) ds = c_i ((v1_i)^k - (v0_i)^k) / k.
    c = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)
    return c * ((V0 + DELTA) ** k - V0**k) / k


def test_quadratic_loss_is_exact_with_plain_simpson() -> None:
    res, point = run(power_objective(2), max_splits=32, tolerance=1e-14)
    assert res.splits == 2 and not res.flagged
    assert point.calls == [1.0, 0.5]
    torch.testing.assert_close(res.lca, exact_lca(2), rtol=1e-14, atol=1e-15)
    assert abs(res.residual) <= 1e-14 * abs(res.loss1 - res.loss0)


def test_quartic_loss_simpson_exact_trapezoid_not() -> None:
    # A quartic loss has a cubic integrand: Simpson (n = 2) is exact, the trapezoid rule is not.
    res, _ = run(power_objective(4), max_splits=2)
    torch.testing.assert_close(res.lca, exact_lca(4), rtol=1e-13, atol=1e-14)
    _loss, grad = power_objective(4)
    trapezoid = DELTA * (grad(V0) + grad(V0 + DELTA)) / 2
    assert (trapezoid - exact_lca(4)).abs().max() > 1e-2


@pytest.mark.parametrize("obj", [power_objective(6), exp_objective()], ids=["sextic", "exp"])
def test_refinement_converges_when_simpson_is_not_exact(obj) -> None:
    errors = []
    for cap in (2, 4, 8, 16, 32):
        res, _ = run(obj, max_splits=cap, tolerance=0.0, rtol=0.0)
        assert res.splits == cap and res.flagged  # zero tolerance: always refined to the cap
        errors.append(abs(res.residual))
    assert errors[0] > 1e-6  # Simpson n = 2 is visibly not exact here
    for coarse, fine in itertools.pairwise(errors):
        assert fine < coarse / 8  # fourth order: ~16x per doubling
    assert errors[-1] < 1e-4 * errors[0]  # 2 -> 32 sub-intervals: ~16^4 smaller


def test_refinement_against_reference_weights() -> None:
    # The integrator's running sums equal composite Simpson with independently computed weights.
    loss, grad = exp_objective()
    for n in (2, 4, 8, 16):
        res, _ = run((loss, grad), max_splits=n, tolerance=0.0)
        points, weights = reference.simpson_weights(n)
        integral = sum(float(w) * grad(V0 + float(s) * DELTA) for s, w in zip(points, weights, strict=True))
        torch.testing.assert_close(res.lca, DELTA * integral, rtol=1e-14, atol=1e-15)


def recording_point(
    loss: Callable[[torch.Tensor], torch.Tensor], grad: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[Callable[[float], tuple[torch.Tensor, torch.Tensor]], list[tuple[torch.Tensor, torch.Tensor]]]:
    """A point function along V0 + s DELTA that records each gradient it hands out beside a copy of it."""
    handed: list[tuple[torch.Tensor, torch.Tensor]] = []

    def point(s: float) -> tuple[torch.Tensor, torch.Tensor]:
        g = grad(V0 + s * DELTA)
        handed.append((g, g.clone()))
        return loss(V0 + s * DELTA), g

    return point, handed


def test_running_sums_bitwise_and_caller_gradients_untouched() -> None:
    # The in-place, fused vector work equals the plain formula (ends + 4 odd + 2 even) Δ / (3n) bit for bit,
    # and never writes into the gradients the point function hands out (they may be cached by the caller).
    loss, grad = exp_objective()
    point, handed = recording_point(loss, grad)
    start = Evaluation(loss(V0), grad(V0))
    start_copy = start.grad.clone()
    for n in (2, 4, 8):
        handed.clear()
        res = integrate_pair(point, DELTA, start, refine="doubling", max_splits=n, tolerance=0.0)
        gs = {0.0: start.grad, **{k / n: grad(V0 + (k / n) * DELTA) for k in range(1, n + 1)}}
        ends = gs[0.0] + gs[1.0]
        odd, even = torch.zeros_like(ends), torch.zeros_like(ends)
        m = 1
        while m < n:  # the same accumulation order as the integrator: odd points of each level in turn
            even = even + odd
            odd = torch.zeros_like(ends)
            for k in range(1, 2 * m, 2):
                odd = odd + gs[k / (2 * m)]
            m *= 2
        assert torch.equal(res.lca, DELTA * (ends + 4.0 * odd + 2.0 * even) / (3.0 * n))
        assert all(torch.equal(g, copy) for g, copy in handed)
        assert torch.equal(start.grad, start_copy)


def test_refinement_reuses_points() -> None:
    res, point = run(exp_objective(), max_splits=16, tolerance=0.0)
    # n = 2 costs the end point + the midpoint; each doubling to 2n costs n new (odd) points only.
    assert point.calls[:2] == [1.0, 0.5]
    assert point.calls[2:4] == [0.25, 0.75]
    assert point.calls[4:8] == [k / 8 for k in (1, 3, 5, 7)]
    assert point.calls[8:] == [k / 16 for k in range(1, 16, 2)]
    assert len(point.calls) == 1 + 1 + 2 + 4 + 8
    assert len(set(point.calls)) == len(point.calls)  # no point is evaluated twice
    assert 0.0 not in point.calls  # the start is reused, never recomputed
    assert res.splits == 16


def test_known_end_is_not_recomputed() -> None:
    _, point = run(exp_objective(), end=True, max_splits=4, tolerance=0.0)
    assert point.calls == [0.5, 0.25, 0.75]


def test_stops_as_soon_as_within_tolerance() -> None:
    loss, grad = exp_objective()
    residuals = {}
    for cap in (2, 4, 8):
        residuals[cap], _ = run((loss, grad), max_splits=cap, tolerance=0.0)
    tol = abs(residuals[4].residual) * 1.01  # n = 4 passes, n = 2 does not
    assert abs(residuals[2].residual) > tol
    res, point = run((loss, grad), max_splits=32, tolerance=tol)
    assert res.splits == 4 and not res.flagged and len(point.calls) == 4
    assert res.residual == residuals[4].residual


def test_relative_tolerance_part() -> None:
    res2, _ = run(exp_objective(), max_splits=2, tolerance=0.0)
    dl = res2.loss1 - res2.loss0
    rtol = abs(res2.residual) / abs(dl) * 1.01
    res, _ = run(exp_objective(), max_splits=32, tolerance=0.0, rtol=rtol)
    assert res.splits == 2 and not res.flagged


def test_flagged_at_the_cap() -> None:
    res, point = run(exp_objective(), max_splits=8, tolerance=1e-300)
    assert res.flagged and res.splits == 8
    assert len(point.calls) == 1 + 1 + 2 + 4
    # The residual is still the exact bookkeeping value.
    assert res.residual == pytest.approx((res.loss1 - res.loss0) - float(res.lca.sum()), abs=1e-15)


def test_plain_simpson_cap_never_refines() -> None:
    res, point = run(exp_objective(), max_splits=2, tolerance=0.0)
    assert res.splits == 2 and res.flagged and point.calls == [1.0, 0.5]


def test_euler_is_delta_times_start_gradient() -> None:
    loss, grad = exp_objective()
    res, point = run((loss, grad), method="euler", tolerance=1e9)
    assert torch.equal(res.lca, DELTA * grad(V0))
    assert res.splits == 1 and not res.flagged
    assert point.calls == [1.0]  # only the end loss (for the residual), no interior point
    assert res.residual == pytest.approx(float(loss(V0 + DELTA) - loss(V0)) - float(res.lca.sum()), abs=1e-14)
    flagged, _ = run((loss, grad), method="euler", tolerance=0.0)
    assert flagged.flagged  # Euler is checked against the tolerance too, never refined


def test_end_evaluation_is_returned_for_reuse() -> None:
    res, point = run(exp_objective(), max_splits=2)
    expected = point.at(1.0)
    assert torch.equal(res.end.grad, expected.grad) and float(res.end.loss) == float(expected.loss)
    assert res.loss1 == float(expected.loss) and res.loss0 == float(point.at(0.0).loss)


def test_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        run(exp_objective(), method="rk5")


@pytest.mark.parametrize("where", ["start", "end", "interior"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_is_a_numerical_error(where: str, bad: float) -> None:
    loss, grad = exp_objective()

    def point(s: float) -> tuple[torch.Tensor, torch.Tensor]:
        v = V0 + s * DELTA
        value = loss(v)
        if (where == "end" and s == 1.0) or (where == "interior" and s == 0.25):
            value = torch.tensor(bad, dtype=torch.float64)
        return value, grad(v)

    start = Evaluation(torch.tensor(bad, dtype=torch.float64) if where == "start" else loss(V0), grad(V0))
    with pytest.raises(NumericalError, match="steps 3 -> 4"):
        integrate_pair(point, DELTA, start, max_splits=4, tolerance=0.0, label="steps 3 -> 4")


def test_within_tolerance() -> None:
    assert within_tolerance(1e-3, 0.0, 1e-3, 0.0)
    assert not within_tolerance(-2e-3, 0.0, 1e-3, 0.0)
    assert within_tolerance(-2e-3, -10.0, 1e-3, 1e-4)
    assert not within_tolerance(math.nan, 1.0, 1.0, 1.0)


def test_linear_regression_mse_float64_matches_reference() -> None:
    """A quadratic objective through the real Objective: Simpson n = 2 conserves to ~1e-12 and equals the reference."""
    model = reference.linear_model(seed=0)
    x, y = reference.regression(n=50)
    net = prepare_model(reference.linear_model(seed=0), "batch").double()
    layout = Layout.from_module(net)
    obj = Objective(
        net,
        layout,
        make_chunks("train", (x, y), 16, torch.device("cpu"), torch.float64),
        builtin_loss("mse"),
        torch.float64,
    )
    g = torch.Generator().manual_seed(3)
    state0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state1 = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in state0.items()}
    v0, v1 = flatten(layout, state0), flatten(layout, state1)
    delta = v1 - v0
    calls: list[float] = []

    def point(s: float) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(s)
        return obj.value_and_grad(v0 + s * delta, {})

    res = integrate_pair(
        point, delta, Evaluation(*obj.value_and_grad(v0, {})), max_splits=32, tolerance=1e-12, rtol=1e-12
    )
    dl = res.loss1 - res.loss0
    assert res.splits == 2 and not res.flagged and calls == [1.0, 0.5]
    assert abs(res.residual) <= 1e-12 * abs(dl)
    # The reference takes a factory too; it builds its own float64 copy.
    ref = reference.reference_pair(reference.linear_model, state0, state1, x, y, reference.ref_loss("mse"), n=32)
    assert abs(res.loss0 - ref.loss0) <= 1e-13 * abs(ref.loss0)
    assert abs(res.loss1 - ref.loss1) <= 1e-13 * abs(ref.loss1)
    err = reference.relative_l1(res.lca.numpy(), ref.lca)
    assert err < 1e-12


def _kinked_point(v0: torch.Tensor, delta: torch.Tensor):  # type: ignore[no-untyped-def]
    # L(v) = sum max(v, 0)^2: the gradient 2 max(v, 0) has a kink where a coordinate crosses 0 (like ReLU).
    def point(s: float) -> tuple[torch.Tensor, torch.Tensor]:
        v = v0 + s * delta
        return (v.clamp(min=0) ** 2).sum(), 2 * v.clamp(min=0)

    return point


def test_l1_change_is_recorded_and_l1_tol_refines_further() -> None:
    v0 = torch.tensor([-1.0, -0.5, 0.3], dtype=torch.float64)
    delta = torch.tensor([2.0, 1.7, -0.9], dtype=torch.float64)
    point = _kinked_point(v0, delta)
    start = Evaluation(*point(0.0))
    kw = {"method": "rk4", "refine": "doubling", "max_splits": 64, "tolerance": 1e-3, "rtol": 0.0}
    loose = integrate_pair(point, delta, start, **kw)
    strict = integrate_pair(point, delta, start, **kw, l1_tol=1e-4)
    assert loose.l1_change > 1e-4  # the residual passed, but the row was still moving
    assert strict.splits > loose.splits
    assert strict.l1_change <= 1e-4 and not strict.flagged
    # Exact per-coordinate integrals: coordinate i contributes max(v_i(1), 0)^2 - max(v_i(0), 0)^2.
    exact = (v0 + delta).clamp(min=0) ** 2 - v0.clamp(min=0) ** 2
    assert torch.allclose(strict.lca, exact, atol=1e-3)
    assert (strict.lca - exact).abs().sum() < (loose.lca - exact).abs().sum()


def test_euler_l1_change_compares_with_trapezoid() -> None:
    v0 = torch.tensor([0.2, 0.4], dtype=torch.float64)
    delta = torch.tensor([0.5, -0.1], dtype=torch.float64)
    point = _kinked_point(v0, delta)
    res = integrate_pair(point, delta, Evaluation(*point(0.0)), method="euler")
    g0, g1 = point(0.0)[1], point(1.0)[1]
    euler, trap = delta * g0, delta * (g0 + g1) / 2
    assert res.l1_change == pytest.approx(float((euler - trap).abs().sum() / euler.abs().sum()))


# -- the local scheme ------------------------------------------------------------------------------------


def run_local(obj, **kw):  # type: ignore[no-untyped-def]
    loss, grad = obj
    point = Counted(loss, grad, V0, DELTA)
    res = integrate_pair(point, DELTA, point.at(0.0), refine="local", **kw)
    return res, point


def panels_of(calls: list[float]) -> list[tuple[Fraction, Fraction]]:
    """The local scheme's panels from the points it evaluated: consecutive (end, mid, end) triples."""
    pts = sorted({Fraction(0), *(Fraction(s) for s in calls)})
    assert len(pts) % 2 == 1
    return [(pts[k], pts[k + 2]) for k in range(0, len(pts) - 1, 2)]


def test_local_quadratic_is_plain_simpson() -> None:
    # A quadratic loss has a linear gradient: Simpson and the trapezoid rule on the halves agree, the
    # indicator is zero, and plain Simpson (two gradients) is accepted whatever the target.
    res, point = run_local(power_objective(2), max_splits=32, l1_tol=1e-12)
    assert res.splits == 2 and not res.flagged and point.calls == [1.0, 0.5]
    torch.testing.assert_close(res.lca, exact_lca(2), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("cap", [2, 4, 8, 16])
def test_local_without_tolerance_refines_everything_to_the_cap(cap: int) -> None:
    # No tolerance of any kind: every panel is split down to the cap, which is uniform composite Simpson.
    loss, grad = exp_objective()
    res, point = run_local((loss, grad), max_splits=cap, l1_tol=0.0)
    assert res.splits == cap and res.flagged
    assert len(point.calls) == cap and len(set(point.calls)) == cap and 0.0 not in point.calls
    points, weights = reference.simpson_weights(cap)
    integral = sum(float(w) * grad(V0 + float(s) * DELTA) for s, w in zip(points, weights, strict=True))
    torch.testing.assert_close(res.lca, DELTA * integral, rtol=1e-14, atol=1e-15)


def _one_kink(s_star: float):  # type: ignore[no-untyped-def]
    # L(v) = sum max(v - c, 0)^2 / 2 on one coordinate that crosses c at s = s_star: a gradient kink there
    # (like a ReLU unit changing sign), smooth elsewhere. The other coordinates are quadratic.
    v0 = torch.tensor([-s_star, 0.3, -0.2, 0.1], dtype=torch.float64)
    delta = torch.tensor([1.0, 0.25, 0.5, -0.4], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 0.25, 2.0], dtype=torch.float64)

    def loss_grad(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kinked = torch.cat([v[:1].clamp(min=0), v[1:]])
        return (w * kinked**2).sum() / 2, w * kinked

    exact = w * ((v0 + delta).clamp(min=0) ** 2 - v0.clamp(min=0) ** 2) / 2
    exact[1:] = w[1:] * ((v0 + delta)[1:] ** 2 - v0[1:] ** 2) / 2
    return v0, delta, loss_grad, exact


def test_local_refines_around_a_kink_and_sums_exactly_its_panels() -> None:
    v0, delta, loss_grad, exact = _one_kink(0.3)
    calls: list[float] = []

    def point(s: float) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(s)
        return loss_grad(v0 + s * delta)

    start = Evaluation(*loss_grad(v0))
    res = integrate_pair(point, delta, start, refine="local", max_splits=256, l1_tol=1e-4)
    # The budget is l1_tol times the plain-Simpson row's L1 norm (known before refining); l1_change is the
    # estimate relative to the final row's. Below the cap (narrowest panel 2/256) the estimate fits the budget.
    plain = integrate_pair(point, delta, start, refine="local", max_splits=2, l1_tol=1e-4)
    norm, plain_norm = float(res.lca.abs().sum()), float(plain.lca.abs().sum())
    assert not res.flagged and res.l1_change * norm <= 1e-4 * plain_norm
    calls.clear()
    res = integrate_pair(point, delta, start, refine="local", max_splits=256, l1_tol=1e-4)
    assert res.splits == len(calls)  # sub-intervals = gradients (the end point included, the start reused)
    panels = panels_of(calls)
    widths = {b - a for a, b in panels}
    assert len(widths) > 1  # refined locally: panels of several widths
    narrow = [(a, b) for a, b in panels if b - a == min(widths)]
    assert any(a <= 0.3 <= b for a, b in narrow)  # the narrowest panels hold the kink ...
    assert all(abs(a - Fraction(3, 10)) <= 4 * (b - a) for a, b in narrow)  # ... and stay next to it
    # The row is exactly the composite Simpson rule of those panels (exact Fraction weights).
    points, weights = panel_rule(panels)
    integral = sum(float(w) * loss_grad(v0 + float(s) * delta)[1] for s, w in zip(points, weights, strict=True))
    torch.testing.assert_close(res.lca, delta * integral, rtol=1e-13, atol=1e-15)
    # And it is accurate: the per-parameter error is within the target it claims (here, 1e-4 relative L1).
    assert float((res.lca - exact).abs().sum()) <= 1e-4 * float(exact.abs().sum())
    # Uniform doubling to the same accuracy costs more gradients.
    uniform = integrate_pair(point, delta, start, refine="doubling", max_splits=256, tolerance=1.0, l1_tol=1e-4)
    assert uniform.splits > res.splits


def test_run_scale_loosens_small_pairs_only() -> None:
    """l1_scale: the budget is l1_tol times the larger of the plain-Simpson row's norm and the run's scale."""
    v0, delta, loss_grad, exact = _one_kink(0.3)
    point = lambda s: loss_grad(v0 + s * delta)  # noqa: E731
    start = Evaluation(*loss_grad(v0))
    kw = {"refine": "local", "max_splits": 256, "l1_tol": 1e-4}
    own = integrate_pair(point, delta, start, **kw)
    plain = integrate_pair(point, delta, start, refine="local", max_splits=2, l1_tol=1e-4)
    plain_norm = float(plain.lca.abs().sum())
    # A scale below the pair's own norm changes nothing: the same panels, bit for bit.
    below = integrate_pair(point, delta, start, **kw, l1_scale=0.5 * plain_norm)
    assert below.splits == own.splits and torch.equal(below.lca, own.lca)
    # A pair that is small against the run (its own norm 1/1000 of the scale, here) is held to l1_tol of the
    # scale: plain Simpson's estimated error, l1_change times its norm, fits that budget and nothing is split.
    scale = plain.l1_change * plain_norm / 1e-4 * 1.01
    loose = integrate_pair(point, delta, start, **kw, l1_scale=scale)
    assert loose.splits == 2 and own.splits > 2 and torch.equal(loose.lca, plain.lca)
    assert not loose.flagged
    # Between the two, fewer gradients than the pair's own target, more accurate than plain Simpson.
    mid = integrate_pair(point, delta, start, **kw, l1_scale=scale / 8)
    assert own.splits > mid.splits > 2
    err = {r: float((r.lca - exact).abs().sum()) for r in (own, mid, plain)}
    assert err[own] <= err[mid] < err[plain]
    assert err[mid] <= 1e-4 * max(float(exact.abs().sum()), scale / 8)  # the target it was held to
    # The residual budget (what flags a pair) uses the same larger norm.
    dl, norm = plain.loss1 - plain.loss0, float(plain.lca.abs().sum())
    assert residual_budget(dl, norm, None, None, 1e-4, scale) == 1e-4 * scale
    assert residual_budget(dl, norm, None, None, 1e-4, 0.5 * norm) == 1e-4 * norm
    assert residual_budget(dl, norm, 1.0, None, 1e-4, scale) == 1e-4 * scale  # the smaller of the two budgets


def test_local_residual_is_a_lower_bound_and_flags() -> None:
    # At the cap the estimate may stay over l1_tol; the pair is flagged only when the residual proves it.
    v0, delta, loss_grad, _ = _one_kink(0.3)
    point = lambda s: loss_grad(v0 + s * delta)  # noqa: E731
    start = Evaluation(*loss_grad(v0))
    res = integrate_pair(point, delta, start, refine="local", max_splits=2, l1_tol=1e-9)
    norm = float(res.lca.abs().sum())
    assert res.splits == 2 and res.l1_change > 1e-9
    assert res.flagged == (abs(res.residual) > residual_budget(res.loss1 - res.loss0, norm, None, None, 1e-9))
    assert res.flagged  # this kink's residual is far over 1e-9 of the row
    # The estimate includes the residual: it is never below |residual| / ||lca||_1.
    assert res.l1_change >= abs(res.residual) / norm


def test_local_explicit_residual_tolerance() -> None:
    loss, grad = exp_objective()
    plain, _ = run_local((loss, grad), max_splits=2, l1_tol=0.0)
    tol = abs(plain.residual) / 100
    res, point = run_local((loss, grad), max_splits=64, tolerance=tol, l1_tol=0.0)
    assert abs(res.residual) <= tol and not res.flagged and res.splits > 2
    assert len(set(point.calls)) == len(point.calls) == res.splits


def test_local_leaves_caller_gradients_untouched() -> None:
    loss, grad = exp_objective()
    point, handed = recording_point(loss, grad)
    start = Evaluation(loss(V0), grad(V0))
    start_copy = start.grad.clone()
    res = integrate_pair(point, DELTA, start, refine="local", max_splits=16, l1_tol=0.0)
    assert res.splits == 16
    assert all(torch.equal(g, copy) for g, copy in handed)
    assert torch.equal(start.grad, start_copy)


def test_loss_rounding_bounds() -> None:
    assert loss_rounding_of(torch.float64) == 0.0  # float64 losses count as exact, as they always did
    assert loss_rounding_of(torch.float32) == 4 * 2.0**-24  # four unit roundoffs
    assert loss_rounding_of(torch.bfloat16) > loss_rounding_of(torch.float16) > loss_rounding_of(torch.float32)


def _float32_losses(loss):  # type: ignore[no-untyped-def]
    """The same loss, rounded to float32 as a float32 model's own loss is (the gradient stays exact)."""
    return lambda v: loss(v).float().double()


@pytest.mark.parametrize("refine", ["local", "doubling"])
def test_a_residual_that_is_loss_rounding_neither_refines_nor_flags(refine: str) -> None:
    # A quadratic loss (plain Simpson exact) over a step so small that its loss change is a few float32 steps of
    # the loss: the residual is the rounding of the two losses, and refining cannot reduce it.
    loss, grad = power_objective(2)
    delta = DELTA * 1e-6
    point = Counted(_float32_losses(loss), grad, V0, delta)
    kw = {"refine": refine, "max_splits": 16, "l1_tol": 1e-3, **({"tolerance": 0.0} if refine == "doubling" else {})}
    blind = integrate_pair(point, delta, point.at(0.0), **kw)  # type: ignore[arg-type]
    assert blind.splits == 16 and blind.flagged and blind.residual != 0.0  # chased the rounding to the cap
    aware = integrate_pair(point, delta, point.at(0.0), loss_rounding=loss_rounding_of(torch.float32), **kw)  # type: ignore[arg-type]
    assert not aware.flagged and aware.residual == pytest.approx(blind.residual, rel=1e-9)
    # The per-parameter target alone stops at plain Simpson; an explicit tolerance (0 here) refines as given.
    assert aware.splits == (2 if refine == "local" else 16)
    exact = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64) * delta * (V0 + delta / 2)  # no cancellation
    torch.testing.assert_close(aware.lca, exact, rtol=1e-12, atol=0.0)  # and the row is right


def test_loss_rounding_leaves_real_errors_to_refine_and_flag() -> None:
    # A kink's residual is far above the rounding of its float32 losses: refined and, at the cap, flagged as before.
    v0, delta, loss_grad, exact = _one_kink(0.3)
    loss, grad = (lambda v: loss_grad(v)[0]), (lambda v: loss_grad(v)[1])
    point = Counted(_float32_losses(loss), grad, v0, delta)
    rounding = loss_rounding_of(torch.float32)
    capped = integrate_pair(
        point, delta, point.at(0.0), refine="local", max_splits=2, l1_tol=1e-9, loss_rounding=rounding
    )
    assert capped.flagged and abs(capped.residual) > 100 * rounding * (abs(capped.loss0) + abs(capped.loss1))
    refined = integrate_pair(
        point, delta, point.at(0.0), refine="local", max_splits=64, l1_tol=1e-4, loss_rounding=rounding
    )
    assert refined.splits > 2
    assert float((refined.lca - exact).abs().sum()) < float((capped.lca - exact).abs().sum()) / 10


def test_unknown_refine_scheme() -> None:
    with pytest.raises(ValueError, match="unknown refine"):
        run(exp_objective(), refine="bisect")


def test_first_factor_decides_plain_simpson_only() -> None:
    """The run-calibrated factor applies to the whole pair's panel only (deeper panels take ``deep_factor``).

    Two coordinates whose gradients jump (1 -> 2 at s = 0.3) in opposite directions: the residual is 0 (their
    errors cancel), so only the indicator decides. Plain Simpson's indicator is 2/12 = 0.167, the row's norm 3.67,
    and with l1_tol 0.06 the first panel's share 0.22 (0.198 with a calibrated deeper factor): JUMP_FACTOR (1.4)
    refines, a calibrated factor of 1.0 accepts.
    """

    def point(s: float) -> tuple[torch.Tensor, torch.Tensor]:
        j = 1.0 if s < 0.3 else 2.0
        return torch.tensor(0.0, dtype=torch.float64), torch.tensor([j, -j], dtype=torch.float64)

    delta = torch.ones(2, dtype=torch.float64)
    start, end = Evaluation(*point(0.0)), Evaluation(*point(1.0))
    fixed = integrate_pair(point, delta, start, end, l1_tol=0.06)
    calibrated = integrate_pair(point, delta, start, end, l1_tol=0.06, first_factor=1.0)
    assert fixed.splits > 2 and calibrated.splits == 2 and not calibrated.flagged
    assert calibrated.l1_change == pytest.approx(2 / 12 / (2 * 11 / 6))  # the estimate uses the factor it met
    # A larger first factor refines the first panel as the fixed one does; below it, the panels are the same.
    larger = integrate_pair(point, delta, start, end, l1_tol=0.06, first_factor=10.0)
    assert larger.splits == fixed.splits and torch.equal(larger.lca, fixed.lca)


def _opposite_jumps(s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two coordinates whose gradients jump (1 -> 2 at s = 0.3) in opposite directions: the residual is 0."""
    j = 1.0 if s < 0.3 else 2.0
    return torch.tensor(0.0, dtype=torch.float64), torch.tensor([j, -j], dtype=torch.float64)


def test_deep_factor_decides_the_deeper_panels_only() -> None:
    """``deep_factor`` (calibrated per run) weighs the indicator of every panel below the first, not the first."""
    delta = torch.ones(2, dtype=torch.float64)
    start, end = Evaluation(*_opposite_jumps(0.0)), Evaluation(*_opposite_jumps(1.0))

    def splits(**kw: float) -> int:
        return integrate_pair(_opposite_jumps, delta, start, end, l1_tol=0.05, **kw).splits

    # The first panel is refined (JUMP_FACTOR); a negligible deeper factor accepts both halves at once.
    assert splits(deep_factor=1e-3) == 4
    assert splits(deep_factor=10.0) > splits() > 4
    # A first panel that is accepted never looks at the deeper factor.
    assert splits(first_factor=0.5, deep_factor=10.0) == splits(first_factor=0.5, deep_factor=1e-3) == 2


def _many_jumps(
    dim: int = 64,
) -> tuple[Callable[[float], tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """A ReLU-like pair: each coordinate's gradient jumps from ``a_i`` to ``b_i`` at its own place ``u_i``.

    Simpson converges at first order there (a split only halves a panel's error); the loss is exact, and so is
    the allocation ``a_i u_i + b_i (1 - u_i)`` (returned third, ``(dim,)``, with ``Δ = 1``).
    """
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(dim, generator=gen, dtype=torch.float64), torch.randn(dim, generator=gen, dtype=torch.float64)
    u = torch.rand(dim, generator=gen, dtype=torch.float64)

    def point(s: float) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tensor(s, dtype=torch.float64)
        loss = (a * torch.clamp(t, max=u) + b * torch.clamp(t - u, min=0.0)).sum()
        return loss, torch.where(t < u, a, b)

    return point, torch.ones(dim, dtype=torch.float64), a * u + b * (1 - u)


def test_shares_of_the_square_root_of_the_width_stop_sooner_within_the_ceiling() -> None:
    """On a jump-dominated pair, shares ``0.9 w^0.5`` (calibrated runs) refine less than shares ``w`` (uncalibrated).

    With shares proportional to the width, a panel whose error only halves per split fails again below a failed
    one; with ``w^0.5`` the halves fit. The pair's summed estimate stays within ``PAIR_CEILING`` budgets, its
    summed residual within one (never flagged), and its true error against the exact allocation within the
    ceiling too (the contract is per run: a pair may spend more than its own budget).
    """
    point, delta, exact = _many_jumps()
    start = Evaluation(*point(0.0))
    plain = integrate_pair(point, delta, start, max_splits=2)
    budget = 2e-2 * float(plain.lca.abs().sum())  # l1_tol times the plain-Simpson row's norm (no run scale)
    new = integrate_pair(point, delta, start, l1_tol=2e-2, deep_factor=DEEP_FACTOR)  # a calibrated run's rule
    assert 2 < new.splits < 32 and not new.flagged  # 32: the cap (16 panels)
    assert new.l1_change * float(new.lca.abs().sum()) <= PAIR_CEILING * budget * (1 + 1e-12)
    assert abs(new.residual) <= budget
    assert float((new.lca - exact).abs().sum()) <= PAIR_CEILING * budget
    former = integrate_pair(point, delta, start, l1_tol=2e-2)  # uncalibrated: shares w, JUMP_FACTOR
    assert former.splits > new.splits


def test_a_deeper_factor_at_the_fixed_one_keeps_the_first_panels_whole_budget() -> None:
    """``deep_factor = JUMP_FACTOR`` (a smooth first panel near its target): square-root shares below the first
    panel, which keeps its whole budget; a calibrated (larger) deeper factor gives the first panel 0.9 of it.

    Opposite jumps: the first panel's estimate is 1.25 × 2/12 = 0.208 against a budget of 0.06 × 3.67 = 0.22.
    """
    delta = torch.ones(2, dtype=torch.float64)
    start, end = Evaluation(*_opposite_jumps(0.0)), Evaluation(*_opposite_jumps(1.0))

    def splits(**kw: float) -> int:
        return integrate_pair(_opposite_jumps, delta, start, end, l1_tol=0.06, first_factor=1.25, **kw).splits

    assert splits() == splits(deep_factor=JUMP_FACTOR) == 2  # within the whole budget
    assert splits(deep_factor=JUMP_FACTOR + 0.1) > 2  # over 0.9 of it
    # Below the first panel the shares are the square root's, as for a calibrated run: fewer splits than width
    # shares on a jump-dominated pair.
    point, many, _ = _many_jumps()
    first = Evaluation(*point(0.0))
    near = integrate_pair(point, many, first, l1_tol=2e-2, deep_factor=JUMP_FACTOR)
    assert 2 < near.splits < integrate_pair(point, many, first, l1_tol=2e-2).splits and not near.flagged
