"""Peaks of per-layer learning and whether they coincide across layers beyond chance (the paper's finding 3).

Pure numpy over ``(n, L)`` series (:func:`lca_cli.analysis.series.layer_series`): no store access.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ACTIVE_SHARE",
    "FEW_COINCIDENCES",
    "MIN_SYNC_LAYERS",
    "MIN_SYNC_PEAKS",
    "PEAK_K_SD",
    "PEAK_MIN_SIZE",
    "PEAK_WINDOW",
    "PhaseSync",
    "SyncAnalysis",
    "SyncResult",
    "active_window",
    "coinciding_iterations",
    "detect_peaks",
    "peak_overlap",
    "step_size_controlled",
    "sync_analysis",
    "synchronisation",
    "windowed_synchronisation",
]


#: Half-width (iterations) of the window whose mean + ``PEAK_K_SD`` sd a peak of layer learning must exceed.
PEAK_WINDOW = 25
#: Standard deviations above the local mean a peak must reach.
PEAK_K_SD = 1.0
#: Minimum size of a peak: it must rise this share of the layer's largest learning (99th percentile of
#: |learning|) above the local mean, so that wiggles in a flat tail, tiny next to the layer's real
#: learning, are not peaks (digits: fc1's late bumps at 2-3% of its early learning; FC MNIST: 3-8%).
PEAK_MIN_SIZE = 0.10
#: The synchronisation test needs at least this many layers with at least ``MIN_SYNC_PEAKS`` peaks each; with
#: fewer the statistic takes only a handful of values (2 layers: one pair) and a p-value means nothing.
MIN_SYNC_LAYERS = 3
MIN_SYNC_PEAKS = 3
#: The windowed baseline shifts peaks only within the shortest window holding this share of all peaks: learning
#: peaks cluster early in training, and shifts over the whole run would spread them over quiet iterations
#: where no peak could be, making any coincidence look significant.
ACTIVE_SHARE = 0.95
#: A synchronisation result resting on fewer iterations than this on which two or more layers peak together is
#: fragile: a handful of shared peaks can make p small, and the page says so.
FEW_COINCIDENCES = 10


def detect_peaks(x: np.ndarray, k_sd: float = 1.0, window: int | None = None, min_size: float = 0.0) -> np.ndarray:
    """Peaks of a series: local maxima that rise above ``mean + k_sd * sd`` (and by a minimum size).

    A local maximum is strictly above the previous value and at least the next (the first point of a
    plateau); the series' ends count with their one neighbour. NaNs are never peaks. With ``window=None``
    the mean and sd are those of the whole series; with ``window=w`` they are taken over the ``2w + 1``
    iterations centred on each point (clipped at the ends), so that a slow trend shared by all layers
    (everything learns most early in training) does not decide where the peaks are. With ``min_size > 0``
    a peak must also exceed that mean by ``min_size`` times the 99th percentile of ``|x|``, the series' own
    scale, so that wiggles in a flat stretch are not peaks however regular they are.

    Args:
        x: Series ``(n,)``.
        k_sd: Threshold in standard deviations above the mean.
        window: Half-width of the local window, or None for a global threshold.
        min_size: Minimum rise above the mean, as a share of the series' scale (0 = none).

    Returns:
        int64 indices of the peaks, increasing.

    """
    v = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(v)
    if v.size == 0 or not finite.any():
        return np.zeros(0, np.int64)
    if window is None:
        mean: np.ndarray | float = float(np.mean(v[finite]))
        thr: np.ndarray | float = float(mean + k_sd * np.std(v[finite]))
    else:
        # Rolling mean and sd over [i - w, i + w] from prefix sums (NaNs left out).
        z = np.where(finite, v, 0.0)
        c1 = np.concatenate([[0.0], np.cumsum(z)])
        c2 = np.concatenate([[0.0], np.cumsum(z * z)])
        cn = np.concatenate([[0], np.cumsum(finite)])
        i = np.arange(v.size)
        lo, hi = np.maximum(0, i - window), np.minimum(v.size, i + window + 1)
        cnt = np.maximum(cn[hi] - cn[lo], 1)
        mean = (c1[hi] - c1[lo]) / cnt
        var = np.maximum((c2[hi] - c2[lo]) / cnt - mean * mean, 0.0)
        thr = mean + k_sd * np.sqrt(var)
    if min_size > 0:
        scale = float(np.quantile(np.abs(v[finite]), 0.99))
        thr = np.maximum(thr, mean + min_size * scale)
    w = np.where(finite, v, -np.inf)
    padded = np.concatenate([[-np.inf], w, [-np.inf]])
    mid = padded[1:-1]
    is_peak = (mid > padded[:-2]) & (mid >= padded[2:]) & (mid > thr) & finite
    return np.flatnonzero(is_peak).astype(np.int64)


def _dilate(b: np.ndarray, tol: int) -> np.ndarray:
    """Circular dilation of boolean rows ``(L, n)`` by ``±tol`` positions."""
    out = b.copy()
    for d in range(1, tol + 1):
        out |= np.roll(b, d, axis=1) | np.roll(b, -d, axis=1)
    return out


def _overlap_from_indicators(b: np.ndarray, d: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean tolerant Jaccard over layer pairs from peak indicators ``b`` and their dilations ``d``."""
    k = b.sum(axis=1).astype(np.float64)  # peaks per layer
    m = b.astype(np.float32) @ d.astype(np.float32).T  # m[a, c]: peaks of a with a peak of c within tol
    matched = 0.5 * (m + m.T)
    denom = k[:, None] + k[None, :] - matched
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where((k[:, None] > 0) & (k[None, :] > 0), matched / denom, np.nan)
    iu = np.triu_indices(len(k), 1)
    vals = jac[iu]
    mean = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
    return mean, jac


def _indicators(peaks: Sequence[np.ndarray], n: int) -> np.ndarray:
    b = np.zeros((len(peaks), n), dtype=bool)
    for i, p in enumerate(peaks):
        b[i, np.asarray(p, dtype=np.int64)] = True
    return b


def peak_overlap(peaks: Sequence[np.ndarray], n: int, tolerance: int = 1) -> tuple[float, np.ndarray]:
    """How often peaks of different layers coincide: mean over layer pairs of a tolerant Jaccard index.

    For layers ``a`` and ``c`` with peak sets ``A`` and ``C``, ``m_ac`` = number of peaks of ``A`` with a
    peak of ``C`` within ``±tolerance`` iterations (distances circular, as for the shuffled baseline),
    ``m = (m_ac + m_ca) / 2`` and ``J = m / (|A| + |C| - m)``; ``J = 1`` for identical trains and 0 when no
    peak is near another. Pairs where a layer has no peak are left out.

    Args:
        peaks: Peak indices per layer.
        n: Length of the series.
        tolerance: Allowed offset in iterations.

    Returns:
        ``(mean J over pairs (NaN if no pair counts), J matrix (L, L) with NaN diagonal entries
        where a layer has no peak)``.

    """
    b = _indicators(peaks, n)
    return _overlap_from_indicators(b, _dilate(b, tolerance))


@dataclass(frozen=True)
class SyncResult:
    """Synchronisation of per-layer learning peaks against a circular-shift baseline.

    Attributes:
        observed: Mean tolerant Jaccard over the pairs of tested layers (see :func:`peak_overlap`).
        baseline_mean: Mean of the statistic over shuffles.
        baseline_sd: Its standard deviation.
        p_value: ``(1 + #{baseline >= observed}) / (1 + shuffles)``; its floor is ``1 / (1 + shuffles)``.
        n_shuffles: Shuffles drawn (0 when there is no test).
        tolerance: Allowed offset in iterations.
        pairs: Layer pairs that counted.
        matrix: ``(L, L)`` pairwise index (NaN for layers left out of the test).
        baseline: ``(n_shuffles,)`` the shuffled statistics.
        tested: Whether there was enough to test (see :data:`MIN_SYNC_LAYERS`, :data:`MIN_SYNC_PEAKS`).
        reason: Why there is no test (empty when tested).
        layers: Indices of the layers in the test (those with enough peaks).
        span: ``(first, stop)`` iterations the peaks were taken from and shifted within (None: the whole series).

    """

    observed: float
    baseline_mean: float
    baseline_sd: float
    p_value: float
    n_shuffles: int
    tolerance: int
    pairs: int
    matrix: np.ndarray
    baseline: np.ndarray
    tested: bool = True
    reason: str = ""
    layers: tuple[int, ...] = ()
    span: tuple[int, int] | None = None

    @property
    def effect_size(self) -> float:
        """``(observed - baseline mean) / baseline sd``: the effect in the baseline's spread (NaN without one)."""
        if not self.tested or not self.baseline_sd > 0:
            return float("nan")
        return (self.observed - self.baseline_mean) / self.baseline_sd

    @property
    def ratio(self) -> float:
        """Observed over baseline mean (NaN when the baseline is 0 or there is no test)."""
        return self.observed / self.baseline_mean if self.tested and self.baseline_mean > 0 else float("nan")

    @property
    def at_floor(self) -> bool:
        """True when no shuffle reached the observed value: then only ``p < 1 / (1 + shuffles)`` is known."""
        return self.tested and self.n_shuffles > 0 and self.p_value <= 1.0 / (1 + self.n_shuffles) + 1e-15

    @property
    def passes(self) -> bool:
        """Tested, above the baseline and ``p < 0.05``."""
        return self.tested and self.observed > self.baseline_mean and self.p_value < 0.05

    def p_text(self) -> str:
        """``"p = 0.012"``, ``"p < 0.001"`` at the floor (1,000 shuffles), or ``"no test"``."""
        if not self.tested:
            return "no test"
        if self.at_floor:
            bound = 1.0 / (1 + self.n_shuffles)
            # round the bound *up* to two significant digits: 1/1001 -> 0.001
            digits = -math.floor(math.log10(bound)) + 1
            up = math.ceil(bound * 10**digits) / 10**digits
            return f"p < {up:.{max(digits, 0)}f}".rstrip("0")
        return f"p = {self.p_value:.3g}"


def synchronisation(
    peaks: Sequence[np.ndarray],
    n: int,
    *,
    tolerance: int = 1,
    n_shuffles: int = 1000,
    seed: int = 0,
    min_layers: int = MIN_SYNC_LAYERS,
    min_peaks: int = MIN_SYNC_PEAKS,
) -> SyncResult:
    """Observed peak overlap vs a baseline that circularly shifts each layer's peak train independently.

    A circular shift keeps each layer's number of peaks and their spacing, and destroys only their
    alignment with other layers, so the baseline answers: how much overlap would trains with these
    rates and rhythms show by chance? Layers with fewer than ``min_peaks`` peaks are left out (too few to
    align); with fewer than ``min_layers`` layers left there is no test (``tested`` is False and the reason
    says why). The shuffle count is cut (to no fewer than 100) when layers x iterations is so large that
    1000 would take more than a few seconds.

    Args:
        peaks: Peak indices per layer (each in ``0..n-1``).
        n: Length of the series.
        tolerance: Allowed offset in iterations.
        n_shuffles: Shuffles to draw.
        seed: Seed of ``numpy.random.default_rng``.
        min_layers: Layers (with enough peaks) needed for a test.
        min_peaks: Peaks a layer needs to take part.

    Returns:
        The statistic, its baseline and a permutation p-value.

    """
    n_all = len(peaks)
    keep = [j for j, p in enumerate(peaks) if len(p) >= min_peaks]
    nan = float("nan")
    full = np.full((n_all, n_all), np.nan)
    if len(keep) < max(min_layers, 2) or n == 0:
        counts = ", ".join(str(len(p)) for p in peaks) if n_all <= 8 else f"{len(keep)} with {min_peaks}+"
        reason = (
            f"no test: needs at least {max(min_layers, 2)} layers with at least {min_peaks} peaks each "
            f"({n_all} layer{'s' if n_all != 1 else ''}, peaks per layer: {counts or 'none'})"
        )
        return SyncResult(nan, nan, nan, nan, 0, tolerance, 0, full, np.zeros(0), False, reason, tuple(keep))
    sub = [peaks[j] for j in keep]
    b = _indicators(sub, n)
    d = _dilate(b, tolerance)
    observed, matrix = _overlap_from_indicators(b, d)
    full[np.ix_(keep, keep)] = matrix
    n_layers = len(sub)
    pairs = int(np.isfinite(matrix[np.triu_indices(n_layers, 1)]).sum())
    # Each shuffle costs one (L, n) x (n, L) product; keep the whole baseline within ~2e10 operations.
    budget = int(2e10 // max(1, n_layers * n_layers * max(n, 1)))
    shuffles = int(max(min(n_shuffles, 100), min(n_shuffles, budget)))
    rng = np.random.default_rng(seed)
    base = np.empty(shuffles)
    cols = np.arange(n)
    rows = np.arange(n_layers)[:, None]
    for s in range(shuffles):
        off = rng.integers(0, n, size=n_layers)
        idx = (cols[None, :] - off[:, None]) % n  # shifting b and its dilation alike (dilation is circular)
        base[s], _ = _overlap_from_indicators(b[rows, idx], d[rows, idx])
    base_ok = base[np.isfinite(base)]
    p = (1 + int(np.sum(base_ok >= observed - 1e-12))) / (1 + len(base_ok))
    return SyncResult(
        observed=observed,
        baseline_mean=float(base_ok.mean()) if len(base_ok) else nan,
        baseline_sd=float(base_ok.std(ddof=1)) if len(base_ok) > 1 else nan,
        p_value=float(p),
        n_shuffles=shuffles,
        tolerance=tolerance,
        pairs=pairs,
        matrix=full,
        baseline=base,
        layers=tuple(keep),
    )


def active_window(peaks: Sequence[np.ndarray], n: int, share: float = ACTIVE_SHARE) -> tuple[int, int]:
    """The shortest window ``[first, stop)`` of iterations that holds ``share`` of all layers' peaks together.

    Args:
        peaks: Peak indices per layer (each in ``0..n-1``).
        n: Length of the series.
        share: Share of the pooled peaks the window must hold.

    Returns:
        ``(first, stop)``; ``(0, n)`` when there are no peaks.

    """
    pooled = np.sort(np.concatenate([np.asarray(p, dtype=np.int64) for p in peaks])) if len(peaks) else np.zeros(0)
    if pooled.size == 0:
        return 0, n
    need = max(1, math.ceil(share * pooled.size))
    # Windows from pooled[i] to pooled[i + need - 1]: the narrowest one (the earliest among equals).
    widths = pooled[need - 1 :] - pooled[: pooled.size - need + 1]
    i = int(np.argmin(widths))
    return int(pooled[i]), int(pooled[i + need - 1]) + 1


def coinciding_iterations(peaks: Sequence[np.ndarray], span: tuple[int, int]) -> int:
    """Iterations in ``[first, stop)`` on which two or more layers peak (what a synchronisation result rests on).

    Args:
        peaks: Peak indices per layer.
        span: ``(first, stop)`` window.

    Returns:
        The number of such iterations.

    """
    a, b = int(span[0]), int(span[1])
    counts = np.zeros(max(b - a, 0), dtype=np.int64)
    for p in peaks:
        q = np.asarray(p, dtype=np.int64)
        counts[q[(q >= a) & (q < b)] - a] += 1
    return int((counts >= 2).sum())


def windowed_synchronisation(
    peaks: Sequence[np.ndarray],
    n: int,
    span: tuple[int, int],
    **kwargs: Any,
) -> SyncResult:
    """:func:`synchronisation` within a window: only the peaks in ``[first, stop)``, shifted within it.

    Circular shifts over a whole run whose peaks cluster early move peaks onto quiet iterations, where by
    chance they rarely meet: a baseline drawn there is too low and the effect too large. Restricted to the
    window where the peaks are (:func:`active_window`), or to one phase of the run, the baseline keeps each
    layer's peak count and spacing and the time when learning happens.

    Args:
        peaks: Peak indices per layer (each in ``0..n-1``).
        n: Length of the series.
        span: ``(first, stop)`` window.
        **kwargs: Passed to :func:`synchronisation` (``tolerance``, ``n_shuffles``, ``seed``, ...).

    Returns:
        The result, with ``span`` set (peaks in the matrix and the statistic are the window's).

    """
    a, b = max(0, int(span[0])), min(n, int(span[1]))
    inside = [np.asarray(p, dtype=np.int64) for p in peaks]
    inside = [p[(p >= a) & (p < b)] - a for p in inside]
    r = synchronisation(inside, max(b - a, 0), **kwargs)
    return dataclasses.replace(r, span=(a, b))


@dataclass(frozen=True)
class PhaseSync:
    """Both synchronisation tests within one window of the run.

    Attributes:
        label: ``active``, ``early``, ``middle``, ``late``.
        span: ``(first, stop)`` iterations.
        raw: Peaks of learning, shifted within the window.
        controlled: Peaks of the step-size-controlled series, shifted within the window.

    """

    label: str
    span: tuple[int, int]
    raw: SyncResult
    controlled: SyncResult


def step_size_controlled(learning: np.ndarray) -> np.ndarray:
    """Each layer's learning minus what the other layers' learning on the same iteration predicts.

    All layers share one driver, the optimizer's step: on an iteration with a large loss drop every
    layer tends to learn much, and their peaks then coincide without any coordination between layers.
    For layer ``l`` with learning ``y_l`` and the summed learning of all *other* layers ``o_l`` on each
    iteration, the least-squares slope ``b_l = <y_l, o_l> / <o_l, o_l>`` is removed:
    ``y_l - b_l o_l``. What is left is the part of the layer's learning that the iteration's overall size
    does not explain; peaks of it that still coincide across layers are synchronisation beyond the shared
    step: groups of layers that learn together more than the rest of the network does on those
    iterations. A burst common to *all* layers is indistinguishable from a large step and is removed too,
    so the test is conservative. (Leaving the layer itself out of the predictor avoids the artefact of
    shares of a total, which are forced to move against each other.)

    Args:
        learning: float ``(n, L)`` learning (``-LCA``) per iteration and layer.

    Returns:
        float64 ``(n, L)`` controlled series.

    """
    y = np.asarray(learning, dtype=np.float64)
    others = y.sum(axis=1, keepdims=True) - y  # (n, L)
    num = (y * others).sum(axis=0)
    den = (others * others).sum(axis=0)
    slope = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return y - others * slope


@dataclass(frozen=True)
class SyncAnalysis:
    """Peaks of per-layer learning and two synchronisation tests (what ``lca report`` and the paper show).

    Attributes:
        names: Layer names.
        learning: float64 ``(n, L)`` learning (``-LCA``) per iteration and layer.
        peaks: Peak positions per layer on ``learning``.
        shift: Peaks of ``learning`` against circular shifts (alignment beyond chance).
        controlled: Float64 ``(n, L)`` :func:`step_size_controlled` series.
        controlled_peaks: Peak positions per layer on ``controlled``.
        controlled_shift: The same test on ``controlled`` (alignment beyond the shared step size).
        rule: The peak rule in words.
        windows: Both tests with shifts within the window holding :data:`ACTIVE_SHARE` of the peaks
            (``active``) and within each third of the run (``early``, ``middle``, ``late``), in that order.

    """

    names: list[str]
    learning: np.ndarray
    peaks: list[np.ndarray]
    shift: SyncResult
    controlled: np.ndarray
    controlled_peaks: list[np.ndarray]
    controlled_shift: SyncResult
    rule: str
    windows: list[PhaseSync] = field(default_factory=list)

    @property
    def active(self) -> PhaseSync | None:
        """The tests within the window holding most peaks (None when not computed)."""
        return next((w for w in self.windows if w.label == "active"), None)


def sync_analysis(
    names: Sequence[str],
    lca: np.ndarray,
    *,
    tolerance: int = 1,
    n_shuffles: int = 1000,
    seed: int = 0,
    window: int | None = PEAK_WINDOW,
    k_sd: float = PEAK_K_SD,
    min_size: float = PEAK_MIN_SIZE,
) -> SyncAnalysis:
    """Detect peaks of each layer's learning and test their synchronisation against both baselines.

    Args:
        names: Layer names.
        lca: float ``(n, L)`` LCA per iteration and layer (:func:`layer_series`).
        tolerance: Allowed offset between coinciding peaks, in iterations.
        n_shuffles: Shuffles of each baseline.
        seed: Seed of the shuffles.
        window: Half-width of the local peak threshold (None: global).
        k_sd: Standard deviations above the mean a peak must reach.
        min_size: Minimum rise of a peak as a share of the layer's scale (:func:`detect_peaks`).

    Returns:
        The analysis.

    """
    learning = -np.asarray(lca, dtype=np.float64)
    n, n_layers = learning.shape
    controlled = step_size_controlled(learning) if n_layers > 1 else learning.copy()

    def peaks_of(series: np.ndarray) -> list[np.ndarray]:
        return [detect_peaks(series[:, j], k_sd=k_sd, window=window, min_size=min_size) for j in range(n_layers)]

    peaks, cpeaks = peaks_of(learning), peaks_of(controlled)
    where = "the whole run" if window is None else f"±{window} iterations"
    rule = (
        f"local maxima of the layer's learning above the mean + {k_sd:g} sd over {where}"
        + (f", rising at least {100 * min_size:g}% of the layer's largest learning above that mean" if min_size else "")
        + f"; coinciding within ±{tolerance} iteration{'s' if tolerance != 1 else ''}"
    )
    kw: dict[str, Any] = {"tolerance": tolerance, "n_shuffles": n_shuffles, "seed": seed}
    spans = [("active", active_window(peaks, n))] + [
        (lab, (i * n // 3, (i + 1) * n // 3)) for i, lab in enumerate(("early", "middle", "late")) if n >= 3
    ]
    windows = [
        PhaseSync(lab, sp, windowed_synchronisation(peaks, n, sp, **kw), windowed_synchronisation(cpeaks, n, sp, **kw))
        for lab, sp in spans
    ]
    return SyncAnalysis(
        list(names),
        learning,
        peaks,
        synchronisation(peaks, n, **kw),
        controlled,
        cpeaks,
        synchronisation(cpeaks, n, **kw),
        rule,
        windows,
    )
