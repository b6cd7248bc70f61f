"""Layer verdicts that hold up: the starting transient, per-phase windows, per-layer error estimates, cancellation.

A layer's total over a window can rest on one iteration (a freshly initialised ResNet drops from 4.7 to 2.7 in its
first step) and its error bar was the whole network's integration error, a bound for every layer. Here:
:func:`transient_length` finds the starting transient from the data, :func:`layer_robustness` gives each layer's
verdict on the whole window, without the transient and per phase and names those that flip,
:func:`apportion_errors` shares each pair's error estimate among layers by a stated rule (:data:`ERROR_RULE`),
and :func:`cancellation` measures how much of the allocated work cancels. Every name is also importable from
:mod:`lca_cli.analysis.verdicts`. Pure numpy; no store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ERROR_RULE",
    "LAYER_SIGNIFICANCE_RULE",
    "TRANSIENT_MAX",
    "TRANSIENT_SHARE",
    "LayerRobustness",
    "apportion_errors",
    "cancellation",
    "layer_robustness",
    "layer_verdicts",
    "phase_windows",
    "transient_length",
]

#: An iteration is part of the starting transient when it alone holds more than this share of the |loss change|
#: of the window from it on (``|ΔL_i| > TRANSIENT_SHARE * sum_{j >= i} |ΔL_j|``) ...
TRANSIENT_SHARE = 0.10
#: ... and the transient never takes more than this share of the window's iterations.
TRANSIENT_MAX = 0.10


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
