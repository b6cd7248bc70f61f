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

Pure numpy; no store, no matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

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

#: An iteration is part of the starting transient when it alone holds more than this share of the |loss change|
#: of the window from it on (``|ΔL_i| > TRANSIENT_SHARE * sum_{j >= i} |ΔL_j|``) ...
TRANSIENT_SHARE = 0.10
#: ... and the transient never takes more than this share of the window's iterations.
TRANSIENT_MAX = 0.10

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


def transient_length(delta_loss: np.ndarray, share: float = TRANSIENT_SHARE, max_share: float = TRANSIENT_MAX) -> int:
    """The number of leading iterations that form a starting transient (0 when there is none).

    Iteration ``i`` (from the start, in order) belongs to the transient when it alone holds more than ``share``
    of the |loss change| of the window from it on: ``|ΔL_i| > share * sum_{j >= i} |ΔL_j|``; the transient
    ends at the first iteration that does not, and never takes more than ``max_share`` of the iterations
    (at least one may always be taken). A freshly initialised ResNet whose loss drops from 4.7 to 2.7 in
    its first step of 300 has a transient of 1.

    Args:
        delta_loss: ``(n,)`` loss change per iteration (true, or the allocated sum).
        share: Share of the remaining |loss change| one iteration must hold.
        max_share: Longest transient, as a share of the iterations.

    Returns:
        ``k`` in ``0..max(1, floor(max_share * n))``.

    """
    a = np.abs(np.asarray(delta_loss, dtype=np.float64))
    a = np.where(np.isfinite(a), a, 0.0)
    n = a.size
    if n < 2:
        return 0
    remaining = np.cumsum(a[::-1])[::-1]  # (n,) sum_{j >= i} |ΔL_j|
    cap = max(1, int(max_share * n))
    k = 0
    while k < min(cap, n - 1) and remaining[k] > 0 and a[k] > share * remaining[k]:
        k += 1
    return k


def phase_windows(n: int, phases: int = 3) -> list[tuple[int, int]]:
    """``phases`` contiguous windows ``[a, b)`` of nearly equal length over ``0..n-1`` (early, middle, late).

    Args:
        n: Iterations.
        phases: Windows (fewer when ``n`` is smaller).

    Returns:
        The windows, in order; empty when ``n`` is 0.

    """
    b = max(1, min(n, phases)) if n > 0 else 0
    edges = [(i * n) // b for i in range(b + 1)] if b else []
    return [(edges[i], edges[i + 1]) for i in range(b)]


def layer_verdicts(totals: np.ndarray, errors: np.ndarray | float) -> list[str]:
    """``helps`` / ``hurts`` / ``within error`` for each layer total against its error estimate.

    Args:
        totals: ``(L,)`` totals (negative = helped).
        errors: ``(L,)`` per-layer error estimates, or one error for every layer.

    Returns:
        One word per layer.

    """
    t = np.asarray(totals, dtype=np.float64)
    e = np.broadcast_to(np.asarray(errors, dtype=np.float64), t.shape)
    return ["within error" if abs(x) <= err else ("helps" if x < 0 else "hurts") for x, err in zip(t, e, strict=True)]


@dataclass(frozen=True)
class LayerRobustness:
    """Layer verdicts on the whole window, without its starting transient and per phase.

    Attributes:
        names: Layer names.
        transient: Iterations left out as the starting transient (:func:`transient_length`).
        windows: ``label -> (first, stop)`` positions of each variant (``whole``, ``without first k``,
            ``early``, ``middle``, ``late``), in that order.
        totals: ``label -> (L,)`` layer totals.
        verdicts: ``label -> [word per layer]``.
        flips: Per layer, the labels whose verdict (helps vs hurts) differs from the whole window's; a layer
            absent from it keeps one sign wherever it is significant.

    """

    names: list[str]
    transient: int
    windows: dict[str, tuple[int, int]]
    totals: dict[str, np.ndarray]
    verdicts: dict[str, list[str]]
    flips: dict[str, list[str]]

    def sentences(self) -> list[str]:
        """One sentence per layer whose verdict flips between the variants (empty when none does)."""
        out = []
        for name, labels in self.flips.items():
            j = self.names.index(name)
            parts = ", ".join(f"{lab} {self.verdicts[lab][j]} ({self.totals[lab][j]:+.3g})" for lab in labels)
            out.append(
                f"{name} {self.verdicts['whole'][j]} over the whole window ({self.totals['whole'][j]:+.3g}) but: "
                f"{parts}"
            )
        return out


def layer_robustness(
    names: Sequence[str],
    per_layer: np.ndarray,
    errors: np.ndarray,
    delta_loss: np.ndarray,
    *,
    phases: int = 3,
) -> LayerRobustness:
    """Layer verdicts with and without the starting transient and per phase, and where they flip.

    A layer's error over a window is the sum of its per-iteration error estimates in that window; a verdict
    flips when a variant calls the layer ``helps`` where the whole window says ``hurts`` or the other way round
    (``within error`` on either side is not a flip, it is a verdict that cannot be given).

    Args:
        names: Layer names.
        per_layer: ``(n, L)`` LCA per iteration and layer.
        errors: ``(n,)`` network error per iteration (then every layer gets all of it: a bound) or ``(n, L)``
            per-layer error estimates.
        delta_loss: ``(n,)`` loss change per iteration (finds the transient).
        phases: Equal windows over the iterations (early, middle, late for 3).

    Returns:
        The verdicts and the flips.

    """
    v = np.asarray(per_layer, dtype=np.float64)
    n, n_layers = v.shape
    err = np.asarray(errors, dtype=np.float64)
    err = np.broadcast_to(err[:, None] if err.ndim == 1 else err, v.shape)
    k = transient_length(delta_loss)
    windows: dict[str, tuple[int, int]] = {"whole": (0, n)}
    if k:
        windows[f"without first {k}"] = (k, n)
    labels = ["early", "middle", "late"] if phases == 3 else [f"phase {i + 1}" for i in range(phases)]
    for lab, w in zip(labels, phase_windows(n, phases), strict=False):
        windows[lab] = w
    totals = {lab: v[a:b].sum(axis=0) for lab, (a, b) in windows.items()}
    verdicts = {lab: layer_verdicts(totals[lab], err[a:b].sum(axis=0)) for lab, (a, b) in windows.items()}
    flips: dict[str, list[str]] = {}
    sign = {"helps": -1, "hurts": 1}
    for j in range(n_layers):
        base = sign.get(verdicts["whole"][j], 0)
        changed = [
            lab
            for lab in windows
            if lab != "whole" and (s := sign.get(verdicts[lab][j], 0)) and (base == 0 or s != base)
        ]
        # A layer within error on the whole window counts as flipping only where variants disagree in sign.
        if base == 0 and len({sign[verdicts[lab][j]] for lab in changed}) < 2:
            changed = []
        if changed:
            flips[names[j]] = changed
    return LayerRobustness(list(names), k, windows, totals, verdicts, flips)


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


#: How :func:`apportion_errors` splits a pair's error among layers.
ERROR_RULE = (
    "each pair's error estimate is shared among layers in proportion to the layer's Σ|LCA| on that pair: the "
    "larger of |residual| x (layer's share of the pair's Σ|LCA|) and the stored relative L1 error estimate "
    "(l1_change, where measured) x the layer's Σ|LCA|; a layer's error over a window is the sum over its pairs"
)

#: What "helps" / "hurts" / "within error" mean for a layer with per-layer error estimates (``lca report``).
LAYER_SIGNIFICANCE_RULE = (
    "a layer helps or hurts only when |its total LCA| over a window exceeds its own error estimate over that "
    "window (the per-layer estimates below, which add up to at least the network's Σ|residual|); otherwise it "
    "is within error"
)


def apportion_errors(residual: np.ndarray, l1_change: np.ndarray | None, layer_abs: np.ndarray) -> np.ndarray:
    """Per-layer error estimates of each pair (:data:`ERROR_RULE`), instead of the whole network's bound for each.

    The residual of a pair is what the quadrature left unallocated over the whole network; the stored
    ``l1_change`` is the pair's estimated relative L1 error of its per-parameter row. A layer's share of
    either is taken in proportion to its Σ|LCA| on the pair, the size of what it was allocated: the residual
    shares add up to the network's ``|residual|`` over the layers, and the L1 term is the row's error estimate
    restricted to the layer.

    Args:
        residual: ``(n,)`` residual per pair.
        l1_change: ``(n,)`` relative L1 error estimate per pair (NaN where not measured), or None.
        layer_abs: ``(n, L)`` Σ|LCA| of each layer's entries per pair.

    Returns:
        float64 ``(n, L)`` error estimates (>= 0).

    """
    a = np.abs(np.asarray(layer_abs, dtype=np.float64))
    tot = a.sum(axis=1, keepdims=True)
    share = np.divide(a, tot, out=np.full_like(a, 1.0 / max(a.shape[1], 1)), where=tot > 0)
    out = np.abs(np.asarray(residual, dtype=np.float64))[:, None] * share
    if l1_change is not None:
        l1 = np.asarray(l1_change, dtype=np.float64)
        l1 = np.where(np.isfinite(l1), np.abs(l1), 0.0)[:, None]
        out = np.maximum(out, l1 * a)
    return out


def cancellation(
    per_layer: np.ndarray, layer_neg: np.ndarray, layer_pos: np.ndarray, abs_per_iteration: np.ndarray,
    delta_loss: np.ndarray,
) -> dict[str, np.ndarray | float]:  # fmt: skip
    """How much of the allocated work cancels: per layer and per iteration.

    Args:
        per_layer: ``(n, L)`` LCA per iteration and layer.
        layer_neg: ``(L,)`` sums of the negative entries of each layer (<= 0).
        layer_pos: ``(L,)`` sums of the positive entries (>= 0).
        abs_per_iteration: ``(n,)`` Σ|LCA| over all entries of each iteration.
        delta_loss: ``(n,)`` loss change per iteration.

    Returns:
        ``pos_over_neg`` ``(L,)`` Σpos / |Σneg| (1 = all cancels; NaN for a layer that never helped),
        ``hurt_iterations`` ``(L,)`` the fraction of iterations on which each layer's net LCA was > 0,
        ``abs_over_delta`` ``(n,)`` Σ|LCA| / |ΔL| per iteration (NaN where ΔL = 0),
        ``abs_over_delta_median`` its median and ``abs_over_delta_window`` Σ_t Σ|LCA| / |Σ_t ΔL|.

    """
    v = np.asarray(per_layer, dtype=np.float64)
    neg = np.abs(np.asarray(layer_neg, dtype=np.float64))
    pos = np.asarray(layer_pos, dtype=np.float64)
    a = np.asarray(abs_per_iteration, dtype=np.float64)
    d = np.abs(np.asarray(delta_loss, dtype=np.float64))
    ratio = np.divide(a, d, out=np.full_like(a, np.nan), where=d > 0)
    ok = np.isfinite(ratio)
    total_delta = abs(float(np.sum(delta_loss)))
    return {
        "pos_over_neg": np.divide(pos, neg, out=np.full_like(pos, np.nan), where=neg > 0),
        "hurt_iterations": (v > 0).mean(axis=0) if v.shape[0] else np.full(v.shape[1], np.nan),
        "abs_over_delta": ratio,
        "abs_over_delta_median": float(np.median(ratio[ok])) if ok.any() else float("nan"),
        "abs_over_delta_window": float(a.sum() / total_delta) if total_delta > 0 else float("nan"),
    }
