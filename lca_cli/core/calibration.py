"""The run-calibrated factor of the local scheme's first panel: when plain Simpson is already good enough.

The local scheme (:mod:`lca_cli.core.integrate`) accepts a pair at plain Simpson when ``factor × indicator``
fits its budget, the indicator being ``||Δ (g(0) + g(1) - 2 g(1/2))||_1 / 12``. How plain Simpson's real error
relates to that indicator depends on the run: 0.42-0.74 on SGD runs, 1.44-2.07 on Adam runs (BENCHMARKS.md),
so one fixed factor (:data:`~lca_cli.core.integrate.JUMP_FACTOR`, 1.4) refines pairs that plain Simpson already
had within the run's contract on some runs. A few *probe* pairs, spread over the run, are refined once more
(``S_4``: four more gradients each) and give, per probe ``t``:

* ``indicator_t``: the first panel's indicator, without factor;
* ``diff_t = ||S_2 - S_4||_1``: what one split moves the row, which overstated plain Simpson's real error by only
  7-15% on nine ReLU runs (:data:`DIFF_OVERSTATES`);
* ``norm_t = ||S_2||_1`` and the pair's budget ``l1_tol max(norm_t, S)``.

From them, :func:`first_panel_factor`: the run's honest ratio ``ρ = Σ diff / Σ indicator``, and a pooling
multiplier ``κ >= 1``: the largest for which the probes' predicted error, plain Simpson where ``ρ indicator_t <=
κ budget_t`` and a refined pair's share otherwise, stays within :data:`POOL_MARGIN` of the run's target
``l1_tol Σ norm_t``. The first panel's factor is ``ρ / κ``, clipped to ``[FACTOR_FLOOR, JUMP_FACTOR]``: where the
probes show that plain Simpson's errors, summed, meet the run's target with room to spare, a pair whose own
estimate is a little over its budget keeps plain Simpson (the run's target is a sum); elsewhere the factor
follows the run's real ratio. The residual stays an exact lower bound of every panel's error.

Four probes can miss the few large early pairs that hold most of a run's error (BENCHMARKS.md, *Pooling*), so
pooling stops at :data:`POOL_MARGIN` of the target. Where the four would pool further at
:data:`SECOND_LOOK_MARGIN` (:func:`wants_second_look`), the survey probes the rest of its sampled pairs too (eight
in all) and :func:`full_pooling_factor` keeps plain Simpson on the whole run only if all of them, at plain Simpson,
fit that margin: the prediction is then plain Simpson's own measured error, with no model of what refined pairs
would reach (that model put a CNN pooled at ``κ = 2`` at 0.70 of the target where it came out at 1.13). Otherwise
the four probes' factor stands.

Deeper panels take :func:`deep_panel_factor`: ``ρ`` times :data:`DEEP_GROWTH`, clipped to ``[floor, ceiling]``
(:data:`~lca_cli.core.integrate.JUMP_FACTOR` and :data:`~lca_cli.core.integrate.DEEP_FACTOR`). Below the first
panel, jumps of the gradient (ReLU units changing sign) dominate more and more of a panel's error, so the honest
ratio grows with depth: over all pairs of five runs, 1.83 -> 1.9-2.1 (Adam MLPs), 1.44 -> 1.8-2.1 (Adam CNN),
0.74 -> 1.2-2.0 (SGD MLP), 0.42 -> 0.93, 1.53, 1.99 level by level (SGD CNN). Adam runs, whose probes show
jumps from the first panel on, get the deeper panels' measured ratio, about 2, and the calibrated shares (of the
width's square root) below the first panel. Runs whose first panel is smooth (SGD: ``DEEP_GROWTH ρ`` at or under
the floor) get neither: their probes do not bound the deeper panels' ratio, which grows to 2 on the SGD CNN, and
the calibrated shares with the floor's 1.4 took that run over the contract (1.36e-3, BENCHMARKS.md); below the
first panel they keep the fixed factor and shares proportional to the width, unless their probes show plain
Simpson near the target (:data:`NEAR_TARGET`): a pair is then refined rarely and shallowly, so the deeper panels'
growing ratio weighs little, and they take the shares of the width's square root with the fixed factor (the
first panel keeping its whole budget; the deeper factor is then exactly the floor).
Numbers only (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DEEP_GROWTH",
    "DIFF_OVERSTATES",
    "FACTOR_FLOOR",
    "KAPPA_MAX",
    "MIN_PROBES",
    "NEAR_TARGET",
    "POOL_MARGIN",
    "REFINED_SHARE",
    "SECOND_LOOK_MARGIN",
    "Probe",
    "careful_first_factor",
    "deep_panel_factor",
    "first_panel_factor",
    "full_pooling_factor",
    "plain_error_share",
    "wants_second_look",
]

#: ``||S_2 - S_4||_1`` over plain Simpson's real error: 1.07-1.15 on nine ReLU runs (BENCHMARKS.md).
DIFF_OVERSTATES = 1.1
#: The probes' predicted error may be at most this fraction of the run's target before pooling stops. 0.7 would
#: take the small Adam ReLU MLP (predicted 0.67, real 0.71) from 1.35x the oracle's gradients to 1.03x, but the bench's
#: Adam CNN at two threads (rounding alone moved one probe) was predicted at 0.70 where pooling gave 1.13e-3, over
#: the contract: four probes cannot tell the two apart (BENCHMARKS.md, *Cost per accuracy*).
POOL_MARGIN = 0.6
#: The margin of the second look (:func:`wants_second_look`, :func:`full_pooling_factor`): the eight probes' plain
#: Simpson error, summed, may be at most this fraction of their target for the whole run to keep plain Simpson. On
#: the small Adam ReLU MLP the eight predict 0.73 (real 0.71); on four more runs they were 0.02 under to 0.16 over
#: the real error, and none of those predictions was under 0.9 (BENCHMARKS.md).
SECOND_LOOK_MARGIN = 0.8
#: A probe that the factor would refine counts with this fraction of its budget (refinement stops below it).
REFINED_SHARE = 0.5
#: The largest pooling multiplier.
KAPPA_MAX = 8.0
#: The first panel's factor is never below this: the safety margin against a few probes that happen to be
#: smooth. At 0.2, four probes of the bench's SGD ReLU MLP (plain Simpson 9.9e-4, at the contract) pooled fully
#: and the run came out at 9.1e-4; its ratio over the whole run is 0.59, and on the SGD CNN 0.42-0.48.
FACTOR_FLOOR = 0.5
#: The deeper panels' factor is this multiple of the probes' first-panel ratio ``ρ`` (then clipped): the growth
#: of the honest ratio from the first panel to the next levels on the Adam runs measured (1.04-1.25; 1.6 on SGD).
DEEP_GROWTH = 1.25
#: A run whose first panel is smooth gets the shares of the width's square root below it (with the fixed factor)
#: where its probes' plain-Simpson error, summed, is at most this fraction of their target: the SGD ReLU MLP
#: (0.60 predicted, 0.99 real) from 1.35x to 1.20x its oracle, MNIST-FC from 1.24x to 1.19x, in a replay of eleven
#: runs and 70 cuts that left none over the contract; the SGD CNN, whose deeper panels' ratio grows to 2 and which
#: the larger shares took over it, predicts 5.4-5.6 (BENCHMARKS.md, *Square-root shares where plain Simpson is near
#: the target*).
NEAR_TARGET = 1.0
#: Fewer probes than this give no calibration (the fixed factor is used).
MIN_PROBES = 4


@dataclass(frozen=True)
class Probe:
    """What one probe pair measured (per evaluation set; loss units).

    Attributes:
        indicator: ``||Δ (g(0) + g(1) - 2 g(1/2))||_1 / 12``: the first panel's indicator without its factor.
        diff: ``||S_2 - S_4||_1``: how much one split moved the row.
        norm: ``||S_2||_1``: the plain-Simpson row's L1 norm.

    """

    indicator: float
    diff: float
    norm: float


def _ratio(probes: Sequence[Probe]) -> float | None:
    """``ρ = Σ diff / Σ indicator`` over the probes; None with fewer than :data:`MIN_PROBES` or no indicator."""
    if len(probes) < MIN_PROBES:
        return None
    indicator = sum(p.indicator for p in probes)
    return sum(p.diff for p in probes) / indicator if indicator > 0 else None


def first_panel_factor(
    probes: Sequence[Probe], l1_tol: float, scale: float, ceiling: float, margin: float = POOL_MARGIN
) -> tuple[float, float, float] | None:
    """The first panel's factor for a run, from its probes (see the module docstring).

    Args:
        probes: The probes' measurements (finite ones only).
        l1_tol: The per-parameter target.
        scale: The run scale ``S`` (0: none): a pair's budget is ``l1_tol max(norm, S)``.
        ceiling: The largest factor (the fixed one, :data:`~lca_cli.core.integrate.JUMP_FACTOR`).
        margin: The fraction of the run's target the probes' predicted error may reach (:data:`POOL_MARGIN`).

    Returns:
        ``(factor, ρ, κ)``, or None when there are fewer than :data:`MIN_PROBES` probes, no target, or no
        indicator to calibrate (a run that did not move): the fixed factor then applies.

    """
    rho = _ratio(probes)
    if rho is None or l1_tol <= 0:
        return None
    target = margin * l1_tol * sum(p.norm for p in probes)
    kappa = 1.0
    # Candidates: the multipliers at which a probe switches from refined to plain Simpson (the predicted error
    # only changes there), largest last; the largest whose prediction fits wins.
    switches = sorted(
        {1.0, KAPPA_MAX}
        | {
            rho * p.indicator / (l1_tol * max(p.norm, scale))
            for p in probes
            if max(p.norm, scale) > 0 and 1.0 < rho * p.indicator / (l1_tol * max(p.norm, scale)) < KAPPA_MAX
        }
    )
    for k in switches:
        predicted = 0.0
        for p in probes:
            budget = l1_tol * max(p.norm, scale)
            error = p.diff / DIFF_OVERSTATES  # plain Simpson's real error, as the split shows it
            predicted += error if rho * p.indicator <= k * budget else min(error, REFINED_SHARE * budget)
        if predicted <= target:
            kappa = k
    return min(ceiling, max(FACTOR_FLOOR, rho / kappa)), rho, kappa


def wants_second_look(probes: Sequence[Probe], l1_tol: float, scale: float, ceiling: float) -> bool:
    """Whether the probes would pool further at :data:`SECOND_LOOK_MARGIN` than at :data:`POOL_MARGIN`.

    Args:
        probes: The first probes' measurements (finite ones only).
        l1_tol: As for :func:`first_panel_factor`.
        scale: As for :func:`first_panel_factor`.
        ceiling: As for :func:`first_panel_factor`.

    Returns:
        True when more probes could let the run keep plain Simpson (module docstring).

    """
    near = first_panel_factor(probes, l1_tol, scale, ceiling)
    wide = first_panel_factor(probes, l1_tol, scale, ceiling, SECOND_LOOK_MARGIN)
    return near is not None and wide is not None and wide[0] < near[0]


def full_pooling_factor(
    probes: Sequence[Probe], l1_tol: float, scale: float, ceiling: float
) -> tuple[float, float, float] | None:
    """The first panel's factor after a second look: full pooling, or None (the first probes' factor stands).

    Args:
        probes: Every probe's measurements, the second look's included (finite ones only).
        l1_tol: As for :func:`first_panel_factor`.
        scale: As for :func:`first_panel_factor`.
        ceiling: As for :func:`first_panel_factor`.

    Returns:
        ``(factor, ρ, κ)`` of :func:`first_panel_factor` at :data:`SECOND_LOOK_MARGIN` (``κ`` =
        :data:`KAPPA_MAX`) when the probes' plain-Simpson errors, summed, fit that margin of their target; None
        otherwise (or with fewer than :data:`MIN_PROBES` probes).

    """
    if len(probes) < MIN_PROBES or plain_error_share(probes, l1_tol) > SECOND_LOOK_MARGIN:
        return None
    return first_panel_factor(probes, l1_tol, scale, ceiling, SECOND_LOOK_MARGIN)


def plain_error_share(probes: Sequence[Probe], l1_tol: float) -> float:
    """The probes' plain-Simpson error, summed, as a fraction of their target ``l1_tol Σ norm`` (inf: no target).

    Args:
        probes: The probes' measurements (finite ones only).
        l1_tol: The per-parameter target.

    """
    target = l1_tol * sum(p.norm for p in probes)
    return sum(p.diff for p in probes) / DIFF_OVERSTATES / target if target > 0 else math.inf


def deep_panel_factor(rho: float, floor: float, ceiling: float, plain: float = math.inf) -> float | None:
    """The deeper panels' factor for a run whose probes measured the first-panel ratio ``rho``.

    Args:
        rho: ``Σ diff / Σ indicator`` over the probes (the second item of :func:`first_panel_factor`).
        floor: The least factor (:data:`~lca_cli.core.integrate.JUMP_FACTOR`).
        ceiling: The largest (:data:`~lca_cli.core.integrate.DEEP_FACTOR`).
        plain: The probes' :func:`plain_error_share` (inf: unknown).

    Returns:
        ``DEEP_GROWTH rho`` clipped to ``[floor, ceiling]``; ``ceiling`` when ``rho`` is not finite. For a smooth
        first panel (``DEEP_GROWTH rho <= floor``): ``floor`` where ``plain`` is at most :data:`NEAR_TARGET` (the
        shares of the width's square root with the fixed factor, the first panel keeping its whole budget), else
        None: the deeper panels stay uncalibrated (module docstring).

    """
    if not math.isfinite(rho):
        return ceiling
    grown = DEEP_GROWTH * rho
    if grown <= floor:
        return floor if plain <= NEAR_TARGET else None
    return min(ceiling, grown)


def careful_first_factor(probes: Sequence[Probe], floor: float, ceiling: float) -> tuple[float, float] | None:
    """The first panel's factor on a run too short to pool: the probes may only make it more careful.

    Pooling and the deeper panels' calibration rest on a run's probes standing for its pairs; on a short run (under
    :data:`~lca_cli.computation.scale.MIN_CALIBRATED_PAIRS` pairs) they do not safely: four probes on the first 50
    pairs of a ReLU CNN took the calibrated rule over the contract (1.10e-3) in a replay. What they do show is a run
    whose plain-Simpson error the fixed factor under-estimates: a ReLU MLP of 50 pairs, real ratio 1.66, kept 49 of
    its pairs at plain Simpson with 1.4 and came out at 1.05e-3 (BENCHMARKS.md). So the factor is the honest ratio
    ``ρ / DIFF_OVERSTATES``, never below the fixed one.

    Args:
        probes: The probes' measurements (finite ones only).
        floor: The fixed factor (:data:`~lca_cli.core.integrate.JUMP_FACTOR`): never less.
        ceiling: The largest (:data:`~lca_cli.core.integrate.DEEP_FACTOR`).

    Returns:
        ``(factor, ρ)``, or None when there are fewer than :data:`MIN_PROBES` probes or no indicator.

    """
    rho = _ratio(probes)
    return None if rho is None else (min(ceiling, max(floor, rho / DIFF_OVERSTATES)), rho)
