"""Verdicts against the paper, computed from numbers by rules written next to the paper's claims.

Every statement ``lca report`` (and ``docs/paper.md``) makes about the data comes from a function here: each
takes plain numbers (numpy arrays, no store), applies a rule whose thresholds sit beside the paper's claim
(the constants below) and returns a :class:`Finding`: the verdict (``agrees`` / ``partly`` / ``disagrees``),
the numbers behind it, the convention they were counted in (all entries / nonzero entries / above a floor)
and the rule in words, so that a page can print the verdict next to the set it was computed on and a reader
can check it. Facts that are not claims of the paper (is the held-out loss rising? is the early window's
share higher than the late one's?) come back as a :class:`Fact`: a sentence computed from the numbers.

The paper (Lan et al., 2019, "LCA: Loss Change Allocation for Neural Network Training") found:

1. barely over 50% of parameters help on any given iteration (:data:`PAPER_HELPED_SHARE`); every parameter
   helps about half of the time (:data:`PAPER_PER_PARAMETER`);
2. in ResNet-20 on CIFAR-10 the first and the last layer hurt overall (:data:`PAPER_FIRST_LAST`); parameters
   oscillate between helping and hurting (:data:`PAPER_OSCILLATION`);
3. per-layer learning peaks on the same iterations across layers (:data:`PAPER_SYNC`).

Layer robustness (the starting transient, phases, flips), per-layer error estimates and cancellation are in
:mod:`lca_cli.analysis.robustness`; their names are importable from here too. Pure numpy; no store, no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# Layer robustness and error estimates live in their own module; their names are part of this one's too.
from lca_cli.analysis.robustness import (
    ERROR_RULE,
    LAYER_SIGNIFICANCE_RULE,
    TRANSIENT_MAX,
    TRANSIENT_SHARE,
    LayerRobustness,
    apportion_errors,
    cancellation,
    layer_robustness,
    layer_verdicts,
    phase_windows,
    transient_length,
)

__all__ = [
    "AGREES",
    "DISAGREES",
    "ERROR_RULE",
    "FIRST_LAST_RULE",
    "HELPED_SHARE_AGREES",
    "HELPED_SHARE_PARTLY",
    "HELPED_SHARE_RULE",
    "LAYER_SIGNIFICANCE_RULE",
    "NO_DATA",
    "OSCILLATION_AGREES",
    "OSCILLATION_PARTLY",
    "OSCILLATION_RULE",
    "OVERFIT_TOLERANCE",
    "PAPER_FIRST_LAST",
    "PAPER_HELPED_SHARE",
    "PAPER_OSCILLATION",
    "PAPER_PER_PARAMETER",
    "PAPER_SYNC",
    "PARTLY",
    "PER_PARAMETER_AGREES",
    "PER_PARAMETER_PARTLY",
    "PER_PARAMETER_RULE",
    "SYNC_RULE",
    "TRANSIENT_MAX",
    "TRANSIENT_SHARE",
    "Fact",
    "Finding",
    "LayerRobustness",
    "apportion_errors",
    "cancellation",
    "first_last_verdict",
    "helped_share_verdict",
    "layer_robustness",
    "layer_verdicts",
    "oscillation_verdict",
    "overfitting",
    "per_parameter_verdict",
    "phase_windows",
    "sync_verdict",
    "transient_length",
    "whole_vs_late",
]

Verdict = Literal["agrees", "partly", "disagrees", "no data"]
AGREES: Verdict = "agrees"
PARTLY: Verdict = "partly"
DISAGREES: Verdict = "disagrees"
NO_DATA: Verdict = "no data"

# -- finding 1: noise ----------------------------------------------------------------------------------------

#: The paper's first helped claim: a share of the parameters on each iteration.
PAPER_HELPED_SHARE = "barely over 50% of parameters help on any given iteration"
#: "Barely over half": the mean per-iteration helped share in ``(0.50, 0.55]`` agrees ...
HELPED_SHARE_AGREES = (0.50, 0.55)
#: ... within five points of that band (``[0.45, 0.60]``) is partly; anything else disagrees.
HELPED_SHARE_PARTLY = (0.45, 0.60)
HELPED_SHARE_RULE = (
    "agrees when the mean over iterations of the helped share is in (50%, 55%] (barely over half), partly in "
    "[45%, 60%], else disagrees"
)

#: The paper's second helped claim: a fraction of the iterations for each parameter.
PAPER_PER_PARAMETER = "every parameter helps about half of the time"
#: The mean over parameters of the fraction of their nonzero iterations on which they helped within 5 points of
#: 50%, and at least half of the parameters between 40% and 60%, agrees ...
PER_PARAMETER_AGREES = 0.05
#: ... a mean within 10 points of 50% is partly; anything else disagrees.
PER_PARAMETER_PARTLY = 0.10
PER_PARAMETER_RULE = (
    "agrees when the mean over parameters of the fraction of their nonzero iterations on which they helped is "
    "within 5 points of 50% and at least half of the parameters lie in [40%, 60%]; partly when the mean is "
    "within 10 points of 50%; else disagrees"
)

# -- finding 2: layers that hurt; oscillation -----------------------------------------------------------------

#: The paper's layer claim (for ResNet-20 on CIFAR-10 only, not for its other nets).
PAPER_FIRST_LAST = "in ResNet-20 on CIFAR-10 the first and the last layer hurt overall (total LCA > 0)"
FIRST_LAST_RULE = (
    "agrees when both the first and the last layer hurt beyond their error, partly when one of them does, "
    "else disagrees"
)
#: The paper's oscillation claim.
PAPER_OSCILLATION = "parameters oscillate, alternating between helping and hurting"
#: Sign flips between consecutive nonzero iterations of random parameters: more than 55% of the time agrees
#: (coin flips give 50%, oscillation more) ...
OSCILLATION_AGREES = 0.55
#: ... 45%-55% (indistinguishable from coin flips) is partly; fewer flips (persistent signs) disagree.
OSCILLATION_PARTLY = 0.45
OSCILLATION_RULE = (
    "agrees when the median sign-flip rate of random parameters between consecutive nonzero iterations is over "
    "55% (coin flips give 50%), partly in [45%, 55%], else disagrees"
)

# -- finding 3: synchronisation --------------------------------------------------------------------------------

#: The paper's synchronisation claim.
PAPER_SYNC = "per-layer learning peaks on the same iterations across layers (synchronisation)"
SYNC_RULE = (
    "agrees when the peaks coincide beyond chance (p < 0.05) against shifts within the window holding 95% of "
    "the peaks and also after controlling for the shared step size; partly when only one of the two passes; "
    "disagrees when neither passes"
)

# -- transients ------------------------------------------------------------------------------------------------

#: The held-out loss "rose" when its last value is above its minimum by more than this share of the minimum.
OVERFIT_TOLERANCE = 0.01


@dataclass(frozen=True)
class Finding:
    """A verdict on one of the paper's claims, with the numbers behind it.

    Attributes:
        claim: The paper's claim, in words, with its number.
        verdict: ``agrees`` / ``partly`` / ``disagrees`` / ``no data``.
        measured: The numbers the rule read (name -> value; shares in ``[0, 1]``).
        convention: What was counted: ``all entries``, ``nonzero entries``, ``|LCA| above 1e-12``, ...
        rule: The rule, in words.
        summary: One sentence with the numbers (no verdict word).
        set_name: The evaluation set it was computed on (empty when not set-specific).

    """

    claim: str
    verdict: Verdict
    measured: dict[str, float]
    convention: str
    rule: str
    summary: str
    set_name: str = ""

    def text(self) -> str:
        """``<verdict> (<set>, <convention>): <summary>`` for a caption or a table cell."""
        where = ", ".join(x for x in (f"set '{self.set_name}'" if self.set_name else "", self.convention) if x)
        return f"{self.verdict} ({where}): {self.summary}"


@dataclass(frozen=True)
class Fact:
    """A sentence about the data that is not one of the paper's claims, and whether it holds.

    Attributes:
        holds: Whether the statement is true of the numbers.
        text: The sentence, computed from the numbers (true either way).
        numbers: The numbers behind it.

    """

    holds: bool
    text: str
    numbers: dict[str, float] = field(default_factory=dict)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.1f}%"


def _band(x: float, agrees: tuple[float, float], partly: tuple[float, float]) -> Verdict:
    if not math.isfinite(x):
        return NO_DATA
    if agrees[0] < x <= agrees[1]:
        return AGREES
    if partly[0] <= x <= partly[1]:
        return PARTLY
    return DISAGREES


def helped_share_verdict(helped: np.ndarray, counted: np.ndarray | int, convention: str, set_name: str = "") -> Finding:
    """Finding 1, shares per iteration: is the mean helped share "barely over 50%"? (:data:`HELPED_SHARE_RULE`).

    The convention is the caller's: ``counted`` is the number of entries each iteration counts (all
    parameters for ``all entries``; ``helped + hurt`` for ``nonzero entries``; those above a floor).

    Args:
        helped: int ``(n,)`` entries that helped on each iteration.
        counted: int ``(n,)`` (or one int) entries counted on each iteration.
        convention: What ``counted`` counts, in words.
        set_name: The evaluation set.

    Returns:
        The finding; ``measured`` holds ``mean`` (over iterations with anything counted), ``sd``, ``min``, ``max``.

    """
    h = np.asarray(helped, dtype=np.float64)
    c = np.broadcast_to(np.asarray(counted, dtype=np.float64), h.shape)
    ok = c > 0
    share = h[ok] / c[ok]
    if not share.size:
        return Finding(PAPER_HELPED_SHARE, NO_DATA, {}, convention, HELPED_SHARE_RULE, "nothing counted", set_name)
    m = float(share.mean())
    measured = {
        "mean": m,
        "sd": float(share.std(ddof=1)) if share.size > 1 else 0.0,
        "min": float(share.min()),
        "max": float(share.max()),
        "iterations": float(share.size),
    }
    summary = (
        f"mean helped share {_pct(m)} ± {_pct(measured['sd'])} sd over {share.size} iterations "
        f"(range {_pct(measured['min'])}-{_pct(measured['max'])})"
    )
    return Finding(
        PAPER_HELPED_SHARE,
        _band(m, HELPED_SHARE_AGREES, HELPED_SHARE_PARTLY),
        measured,
        convention,
        HELPED_SHARE_RULE,
        summary,
        set_name,
    )


def per_parameter_verdict(helped: np.ndarray, hurt: np.ndarray, set_name: str = "") -> Finding:
    """Finding 1 per parameter: does every parameter help about half of the time? (:data:`PER_PARAMETER_RULE`).

    Each parameter's fraction is ``helped / (helped + hurt)`` over its nonzero iterations (convention
    ``nonzero entries``); parameters that never moved the loss are left out.

    Args:
        helped: int ``(P,)`` iterations each parameter helped on.
        hurt: int ``(P,)`` iterations each parameter hurt on.
        set_name: The evaluation set.

    Returns:
        The finding; ``measured`` holds ``mean``, ``median``, ``in_40_60`` (share of parameters) and ``parameters``.

    """
    h = np.asarray(helped, dtype=np.float64)
    n = h + np.asarray(hurt, dtype=np.float64)
    moved = n > 0
    conv = "nonzero entries, per parameter"
    if not moved.any():
        return Finding(PAPER_PER_PARAMETER, NO_DATA, {}, conv, PER_PARAMETER_RULE, "no parameter moved", set_name)
    f = h[moved] / n[moved]
    m = float(f.mean())
    mid = float(np.mean((f >= 0.4) & (f <= 0.6)))
    measured = {"mean": m, "median": float(np.median(f)), "in_40_60": mid, "parameters": float(f.size)}
    if abs(m - 0.5) <= PER_PARAMETER_AGREES and mid >= 0.5:
        verdict: Verdict = AGREES
    elif abs(m - 0.5) <= PER_PARAMETER_PARTLY:
        verdict = PARTLY
    else:
        verdict = DISAGREES
    summary = (
        f"a parameter helped on {_pct(m)} of its nonzero iterations on average (median {_pct(measured['median'])}); "
        f"{_pct(mid)} of the {f.size:,} parameters that moved lie in 40-60%"
    )
    return Finding(PAPER_PER_PARAMETER, verdict, measured, conv, PER_PARAMETER_RULE, summary, set_name)


def first_last_verdict(names: Sequence[str], verdicts: Sequence[str], label: str = "", set_name: str = "") -> Finding:
    """Finding 2: do the first and the last layer hurt? (:data:`FIRST_LAST_RULE`; the paper says so of ResNet-20).

    Args:
        names: Layer names, model order.
        verdicts: ``helps`` / ``hurts`` / ``within error`` per layer (:func:`layer_verdicts`).
        label: The window the verdicts are on (``whole``, ``without first 1``, ...), named in the convention.
        set_name: The evaluation set.

    Returns:
        The finding; ``measured`` holds ``first_hurts`` and ``last_hurts`` (1 or 0).

    """
    conv = "layer net totals beyond their error" + (f", {label}" if label else "")
    if not names:
        return Finding(PAPER_FIRST_LAST, NO_DATA, {}, conv, FIRST_LAST_RULE, "no layers", set_name)
    first, last = verdicts[0] == "hurts", verdicts[-1] == "hurts"
    verdict: Verdict = AGREES if first and last else PARTLY if first or last else DISAGREES
    summary = f"first layer {names[0]} {verdicts[0]}, last layer {names[-1]} {verdicts[-1]}"
    return Finding(
        PAPER_FIRST_LAST, verdict, {"first_hurts": float(first), "last_hurts": float(last)}, conv, FIRST_LAST_RULE,
        summary, set_name,
    )  # fmt: skip


def oscillation_verdict(flip_rates: Sequence[float], set_name: str = "") -> Finding:
    """Finding 2, oscillation: do random parameters flip sign more often than coin flips? (:data:`OSCILLATION_RULE`).

    Args:
        flip_rates: Per random parameter, the share of consecutive nonzero iterations whose signs differ.
        set_name: The evaluation set.

    Returns:
        The finding; ``measured`` holds ``median`` and ``parameters``.

    """
    conv = "nonzero entries of random parameters"
    if not len(flip_rates):
        return Finding(PAPER_OSCILLATION, NO_DATA, {}, conv, OSCILLATION_RULE, "no random parameter moved", set_name)
    med = float(np.median(np.asarray(flip_rates, dtype=np.float64)))
    verdict = _band(med, (OSCILLATION_AGREES, 1.0), (OSCILLATION_PARTLY, OSCILLATION_AGREES))
    summary = f"median sign-flip rate {_pct(med)} over {len(flip_rates)} random parameters (coin flips: 50%)"
    return Finding(
        PAPER_OSCILLATION, verdict, {"median": med, "parameters": float(len(flip_rates))}, conv, OSCILLATION_RULE,
        summary, set_name,
    )  # fmt: skip


def sync_verdict(
    windowed_passes: bool | None, controlled_passes: bool | None, detail: str = "", set_name: str = ""
) -> Finding:
    """Finding 3: do layers' learning peaks coincide beyond chance? (:data:`SYNC_RULE`).

    Args:
        windowed_passes: Whether the test against shifts within the active window passes (None: no test).
        controlled_passes: Whether the step-size-controlled test (within the same window) passes (None: no test).
        detail: The numbers, in words (observed vs baseline, p, effect size).
        set_name: The evaluation set.

    Returns:
        The finding; ``measured`` holds ``windowed`` and ``controlled`` (1, 0; absent without a test).

    """
    conv = "peaks of per-layer learning, shifts within the window holding 95% of the peaks"
    if windowed_passes is None:
        return Finding(PAPER_SYNC, NO_DATA, {}, conv, SYNC_RULE, detail or "no test", set_name)
    measured = {"windowed": float(windowed_passes)}
    if controlled_passes is not None:
        measured["controlled"] = float(controlled_passes)
    both = windowed_passes and bool(controlled_passes)
    verdict: Verdict = AGREES if both else PARTLY if (windowed_passes or controlled_passes) else DISAGREES
    return Finding(PAPER_SYNC, verdict, measured, conv, SYNC_RULE, detail, set_name)


def whole_vs_late(values: np.ndarray, what: str, convention: str) -> Fact:
    """Is the whole window's mean of ``values`` higher than its second half's? A sentence that says which.

    Replaces fixed sentences such as "whole runs are higher: the first iterations have the largest helped
    shares" and "short runs weigh the steep early phase": the comparison is computed, and the sentence says
    what the numbers show.

    Args:
        values: ``(n,)`` a per-iteration quantity (NaN entries ignored).
        what: What it is (``"the helped share"``).
        convention: Its convention (``"all entries"``).

    Returns:
        A fact that holds when the whole window's mean is higher than the second half's.

    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    first, late = v[: n // 2], v[n // 2 :]

    def mean(x: np.ndarray) -> float:
        x = x[np.isfinite(x)]
        return float(x.mean()) if x.size else float("nan")

    w, e, lt = mean(v), mean(first), mean(late)
    nums = {"whole": w, "first_half": e, "second_half": lt}
    if not (math.isfinite(w) and math.isfinite(lt) and math.isfinite(e)):
        return Fact(False, f"{what} ({convention}) cannot be compared between halves of this window", nums)
    higher = w > lt
    text = (
        f"{what} ({convention}) averages {_pct(w)} over the whole window, {_pct(e)} in its first half and "
        f"{_pct(lt)} in its second: "
        + (
            "the early iterations raise the whole window's mean"
            if e > lt
            else "the early iterations do not raise it (the second half is as high or higher)"
        )
    )
    return Fact(higher, text, nums)


def overfitting(train_loss: np.ndarray, held_out_loss: np.ndarray, tolerance: float = OVERFIT_TOLERANCE) -> Fact:
    """Has training overfitted? The held-out loss ends above its minimum while the training loss keeps falling.

    Rule: the held-out loss's last value exceeds its minimum by more than ``tolerance`` of that minimum, and the
    training loss's last value is below its value at the held-out minimum. The sentence gives the numbers
    either way (it replaces the fixed "training has overfitted").

    Args:
        train_loss: ``(m,)`` training loss at each checkpoint.
        held_out_loss: ``(m,)`` held-out loss at the same checkpoints.
        tolerance: Relative rise over the minimum that counts.

    Returns:
        A fact that holds when the rule says overfitted.

    """
    tr = np.asarray(train_loss, dtype=np.float64)
    va = np.asarray(held_out_loss, dtype=np.float64)
    if va.size < 2 or tr.size != va.size or not np.isfinite(va).all():
        return Fact(False, "overfitting cannot be judged (no held-out loss at every checkpoint)", {})
    i = int(np.argmin(va))
    rise = float(va[-1] - va[i])
    nums = {"held_out_min": float(va[i]), "held_out_last": float(va[-1]), "argmin": float(i),
            "train_at_min": float(tr[i]), "train_last": float(tr[-1])}  # fmt: skip
    over = rise > tolerance * abs(float(va[i])) and tr[-1] < tr[i]
    text = (
        f"the held-out loss fell to {va[i]:.4g} (checkpoint {i} of {va.size - 1}) and ends at {va[-1]:.4g} while "
        f"the training loss went from {tr[i]:.4g} to {tr[-1]:.4g}: "
        + ("training has overfitted" if over else "no sign of overfitting (the held-out loss did not rise by more "
                                                 f"than {100 * tolerance:g}% of its minimum while training went on)")
    )  # fmt: skip
    return Fact(bool(over), text, nums)
