"""Streaming reductions behind ``lca report``: numpy arrays computed from a store, no plotting.

Every function here reads the big ``lca`` array only through :meth:`LcaStore.iter_lca` (one row chunk at a
time) and keeps at most ``O(P)`` per-parameter accumulators, ``O(T x layers)`` per-iteration series,
``O(bins x neurons)`` heat-map matrices and ``O(T x k)`` trajectories of ``k`` chosen parameters: memory
never grows with ``T x P``. The small per-iteration arrays (``loss``, ``residual``, ``tensor_lca``, ...)
are read whole.

Only iterations whose ``done`` flag is set count; a window of steps ``[A, B)`` selects iterations by
the step they *start* from. The result of that choice is a :class:`Selection`, which every other function
takes.

Conventions: LCA < 0 means a parameter *helped* (lowered the loss), LCA > 0 that it *hurt*; "learning" of
a layer on an iteration is ``-LCA`` of the layer, so that peaks of learning are iterations on which the
loss dropped most because of that layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError, UsageError
from lca_cli.store.lcastore import LcaStore, column_counts

__all__ = [
    "HIST_BINS",
    "MIN_SYNC_LAYERS",
    "MIN_SYNC_PEAKS",
    "PEAK_K_SD",
    "PEAK_MIN_SIZE",
    "PEAK_WINDOW",
    "Composition",
    "Concentration",
    "LayerComposition",
    "LossCurves",
    "NeuronMap",
    "ParameterStats",
    "Selection",
    "SyncAnalysis",
    "SyncResult",
    "ValueHistogram",
    "bin_edges",
    "composition",
    "concentration",
    "cumulative",
    "detect_peaks",
    "helped_fraction_per_iteration",
    "helped_of_moved",
    "integration_error",
    "layer_composition",
    "layer_concentration",
    "layer_series",
    "layer_split_from_tensors",
    "learning_milestones",
    "loss_curves",
    "neuron_groups",
    "neuron_totals",
    "parameter_label",
    "peak_overlap",
    "rank_neuron_groups",
    "require_set",
    "scan_parameters",
    "scan_selected",
    "select_parameters",
    "select_rows",
    "significance",
    "step_size_controlled",
    "sync_analysis",
    "synchronisation",
]

#: ``progress(message)``: one line describing the streaming pass under way.
Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------------------
# which iterations count


@dataclass(frozen=True)
class Selection:
    """The iterations of one set that a report covers.

    Attributes:
        set_name: Evaluation set.
        rows: int64 ``(n,)``: pair indices t, increasing, all done and inside the window.
        start: First row of the window (``rows`` lie in ``start .. stop - 1``).
        stop: One past the last row of the window.
        steps: All checkpoint steps of the store, ``(T + 1,)``.
        window: The step window ``(A, B)`` asked for (None = open end).

    """

    set_name: str
    rows: np.ndarray
    start: int
    stop: int
    steps: np.ndarray
    window: tuple[int | None, int | None] = (None, None)

    @property
    def n(self) -> int:
        """Number of iterations that count."""
        return int(self.rows.shape[0])

    @property
    def start_steps(self) -> np.ndarray:
        """Step each counted iteration starts from, ``(n,)``."""
        return self.steps[self.rows]

    @property
    def end_steps(self) -> np.ndarray:
        """Step each counted iteration ends at, ``(n,)``."""
        return self.steps[self.rows + 1]

    @property
    def n_skipped(self) -> int:
        """Iterations inside the window that are not done (excluded everywhere)."""
        return (self.stop - self.start) - self.n


def require_set(store: LcaStore, set_name: str) -> None:
    """Refuse an evaluation set the store does not hold (``--set``), naming the ones it does.

    Raises:
        UsageError: If ``set_name`` is not one of ``store.sets`` (a bad option value: exit 2).

    """
    if set_name not in store.sets:
        raise UsageError(f"--set {set_name}: {store.path} has no such evaluation set (sets: {', '.join(store.sets)})")


def select_rows(store: LcaStore, set_name: str, steps: tuple[int | None, int | None] | None = None) -> Selection:
    """Choose the iterations of ``set_name`` that start at a step in ``[A, B)`` and are done.

    Args:
        store: The store.
        set_name: Evaluation set.
        steps: ``(A, B)``; None (or a None end) leaves that end open.

    Returns:
        The selection.

    Raises:
        UsageError: If the set does not exist, ``A >= B``, or no iteration starts inside the window.
        StoreError: If no iteration inside the window is done yet.

    """
    require_set(store, set_name)
    lo, hi = steps if steps is not None else (None, None)
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(f"--steps {lo}:{hi}: the window is empty (A must be < B)")
    all_steps = store.steps
    starts = all_steps[:-1]
    # steps are increasing, so the window is a contiguous range of rows.
    a = 0 if lo is None else int(np.searchsorted(starts, lo, side="left"))
    b = len(starts) if hi is None else int(np.searchsorted(starts, hi, side="left"))
    if b <= a:
        raise UsageError(
            f"--steps {'' if lo is None else lo}:{'' if hi is None else hi}: no iteration starts in that window "
            f"(the store's iterations start at steps {int(starts[0]) if len(starts) else '-'}.."
            f"{int(starts[-1]) if len(starts) else '-'})"
        )
    done = store.read(set_name, "done").astype(bool)[: len(starts)]
    rows = a + np.flatnonzero(done[a:b])
    if rows.size == 0:
        raise StoreError(
            f"{store.path}: no finished iteration of set {set_name!r} in steps {int(starts[a])}..{int(starts[b - 1])}; "
            "run `lca compute` first"
        )
    return Selection(set_name, rows.astype(np.int64), a, b, all_steps, (lo, hi))


# --------------------------------------------------------------------------------------------------------
# per-iteration series from the small arrays


@dataclass(frozen=True)
class LossCurves:
    """True and reconstructed loss of a selection, and the per-iteration residual.

    Attributes:
        steps: Checkpoint steps of the curve, ``(n + 1,)`` when the selection is contiguous (a segment
            break repeats nothing: each counted iteration contributes its end point, each segment also its
            start point).
        true_loss: Loss on the set at those checkpoints.
        reconstructed: Loss at the start of each contiguous run of counted iterations plus the cumulative
            allocated change (sum of LCA + buffer share) since then; equals ``true_loss`` up to the
            cumulative residual.
        segment: Index of the contiguous run each point belongs to.
        residual: ``(n,)`` residual per counted iteration (loss units).
        flagged: ``(n,)`` bool, residual still over tolerance at the split cap.
        splits: ``(n,)`` sub-intervals used.
        lca_sum: ``(n,)`` sum of LCA over all parameters per iteration.
        buffer_lca: ``(n,)`` share of BatchNorm running statistics per iteration (0 unless ``bn_mode=running``).
        delta_loss: ``(n,)`` true loss change per iteration.

    """

    steps: np.ndarray
    true_loss: np.ndarray
    reconstructed: np.ndarray
    segment: np.ndarray
    residual: np.ndarray
    flagged: np.ndarray
    splits: np.ndarray
    lca_sum: np.ndarray
    buffer_lca: np.ndarray
    delta_loss: np.ndarray


def loss_curves(store: LcaStore, sel: Selection) -> LossCurves:
    """True loss vs loss rebuilt from the allocations, per contiguous run of counted iterations.

    Args:
        store: The store.
        sel: The iterations.

    Returns:
        The curves.

    """
    s, rows = sel.set_name, sel.rows
    loss = store.read(s, "loss").astype(np.float64)
    lca_sum = store.read(s, "tensor_lca")[rows].sum(axis=1)
    buf = store.read(s, "buffer_lca")[rows].astype(np.float64)
    residual = store.read(s, "residual")[rows].astype(np.float64)
    flagged = store.read(s, "flagged")[rows].astype(bool)
    splits = store.read(s, "splits")[rows].astype(np.int64)
    delta = loss[rows + 1] - loss[rows]
    # A new segment starts wherever the previous counted iteration is not the one just before.
    breaks = np.ones(len(rows), dtype=bool)
    breaks[1:] = rows[1:] != rows[:-1] + 1
    seg_of_row = np.cumsum(breaks) - 1
    pts_steps, pts_true, pts_rec, pts_seg = [], [], [], []
    allocated = lca_sum + buf
    for g in range(int(seg_of_row[-1]) + 1 if len(rows) else 0):
        idx = np.flatnonzero(seg_of_row == g)
        r = rows[idx]
        first = int(r[0])
        pts_steps.append(sel.steps[np.concatenate([[first], r + 1])])
        pts_true.append(loss[np.concatenate([[first], r + 1])])
        pts_rec.append(loss[first] + np.concatenate([[0.0], np.cumsum(allocated[idx])]))
        pts_seg.append(np.full(len(r) + 1, g, dtype=np.int64))
    return LossCurves(
        steps=np.concatenate(pts_steps),
        true_loss=np.concatenate(pts_true),
        reconstructed=np.concatenate(pts_rec),
        segment=np.concatenate(pts_seg),
        residual=residual,
        flagged=flagged,
        splits=splits,
        lca_sum=lca_sum,
        buffer_lca=buf,
        delta_loss=delta,
    )


def layer_series(store: LcaStore, sel: Selection) -> tuple[list[str], np.ndarray]:
    """LCA of each layer on each counted iteration, from the per-tensor sums (no streaming).

    Args:
        store: The store.
        sel: The iterations.

    Returns:
        ``(layer names, values)`` with ``values`` float64 ``(n, L)`` in loss units.

    """
    layout = store.layout
    tensor = store.read(sel.set_name, "tensor_lca")[sel.rows].astype(np.float64)  # (n, K)
    layers = layout.layers()
    out = np.zeros((sel.n, len(layers)), dtype=np.float64)
    for li, (_, idx) in enumerate(layers):
        out[:, li] = tensor[:, idx].sum(axis=1)
    return [name for name, _ in layers], out


def layer_split_from_tensors(store: LcaStore, sel: Selection) -> dict[str, tuple[float, float]]:
    """Per layer, the helped (negative) and hurt (positive) parts of its LCA at per-tensor resolution.

    For a store whose ``lca`` columns leave some layers out (``--params``: they are in its ``(other)``
    column), this is the finest split of those layers the store holds: each tensor's sum per iteration
    (``tensor_lca``, kept for every tensor), its negative and positive parts summed over the iterations.

    Returns:
        ``{layer: (neg, pos)}``.

    """
    names, _ = layer_series(store, sel)
    tensor = store.read(sel.set_name, "tensor_lca")[sel.rows].astype(np.float64)  # (n, K)
    out = {}
    for name, (_, idx) in zip(names, store.layout.layers(), strict=True):
        part = tensor[:, idx]
        out[name] = (float(np.minimum(part, 0).sum()), float(np.maximum(part, 0).sum()))
    return out


def helped_fraction_per_iteration(store: LcaStore, sel: Selection) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of parameters that helped on each iteration: helped / (helped + hurt); exact zeros excluded.

    Args:
        store: The store.
        sel: The iterations.

    Returns:
        ``(fraction, helped, hurt)``: float64 ``(n,)`` (NaN where no parameter moved the loss) and the two
        int64 ``(n,)`` counts summed over tensors.

    """
    helped = store.read(sel.set_name, "tensor_helped")[sel.rows].sum(axis=1).astype(np.int64)
    hurt = store.read(sel.set_name, "tensor_hurt")[sel.rows].sum(axis=1).astype(np.int64)
    return helped_of_moved(helped, hurt), helped, hurt


def helped_of_moved(helped: np.ndarray, hurt: np.ndarray) -> np.ndarray:
    """``helped / (helped + hurt)`` elementwise, float64; NaN where nothing moved the loss (both zero)."""
    total = helped + hurt
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, helped / np.maximum(total, 1), np.nan)


@dataclass(frozen=True)
class Composition:
    """How many parameters helped, did nothing and hurt on each counted iteration.

    The authors' convention is shares of *all* parameters (helped + zero + hurt = 1); the "excluding zeros"
    fraction ``helped / (helped + hurt)`` is the other one (see :data:`lca_cli.store.lcastore.HELPED_RULE`).

    Attributes:
        helped: int64 ``(n,)`` parameters with LCA < 0.
        hurt: int64 ``(n,)`` parameters with LCA > 0.
        n_params: Parameters of the network.

    """

    helped: np.ndarray
    hurt: np.ndarray
    n_params: int

    @property
    def zero(self) -> np.ndarray:
        """int64 ``(n,)`` parameters whose LCA is exactly 0 (did not move, or zero gradient)."""
        return self.n_params - self.helped - self.hurt

    def shares(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(helped, zero, hurt)`` as float64 ``(n,)`` shares of all parameters (they sum to 1)."""
        p = float(max(self.n_params, 1))
        return self.helped / p, self.zero / p, self.hurt / p

    def nonzero_fraction(self) -> np.ndarray:
        """``helped / (helped + hurt)``, float64 ``(n,)``; NaN where no parameter moved the loss."""
        return helped_of_moved(self.helped, self.hurt)


def composition(store: LcaStore, sel: Selection) -> Composition:
    """Helped / zero / hurt counts per counted iteration, from the per-tensor counts (no streaming).

    Args:
        store: The store.
        sel: The iterations.

    Returns:
        The counts.

    """
    helped = store.read(sel.set_name, "tensor_helped")[sel.rows].sum(axis=1).astype(np.int64)
    hurt = store.read(sel.set_name, "tensor_hurt")[sel.rows].sum(axis=1).astype(np.int64)
    return Composition(helped, hurt, store.layout.size)


@dataclass(frozen=True)
class LayerComposition:
    """Helped / zero / hurt entries of each layer over the counted iterations (parameter-iterations).

    Attributes:
        names: Layer names, model order.
        params: int64 ``(L,)`` parameters per layer.
        helped: int64 ``(L,)`` parameter-iterations with LCA < 0.
        hurt: int64 ``(L,)`` parameter-iterations with LCA > 0.
        n_iterations: Iterations counted.

    """

    names: list[str]
    params: np.ndarray
    helped: np.ndarray
    hurt: np.ndarray
    n_iterations: int

    def shares(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(helped, zero, hurt)`` float64 ``(L,)``: shares of the layer's parameters x iterations."""
        cells = np.maximum(self.params * self.n_iterations, 1).astype(np.float64)
        zero = self.params * self.n_iterations - self.helped - self.hurt
        return self.helped / cells, zero / cells, self.hurt / cells

    def nonzero_fraction(self) -> np.ndarray:
        """``helped / (helped + hurt)`` per layer, float64 ``(L,)`` (NaN for a layer that never moved)."""
        return helped_of_moved(self.helped, self.hurt)


def layer_composition(store: LcaStore, sel: Selection) -> LayerComposition:
    """Per-layer helped / zero / hurt counts over the counted iterations, from the per-tensor counts.

    Args:
        store: The store.
        sel: The iterations.

    Returns:
        The counts.

    """
    layout = store.layout
    helped_t = store.read(sel.set_name, "tensor_helped")[sel.rows].sum(axis=0).astype(np.int64)  # (K,)
    hurt_t = store.read(sel.set_name, "tensor_hurt")[sel.rows].sum(axis=0).astype(np.int64)
    layers = layout.layers()
    params = np.array([sum(layout.params[i].numel for i in idx) for _, idx in layers], dtype=np.int64)
    helped = np.array([helped_t[idx].sum() for _, idx in layers], dtype=np.int64)
    hurt = np.array([hurt_t[idx].sum() for _, idx in layers], dtype=np.int64)
    return LayerComposition([n for n, _ in layers], params, helped, hurt, sel.n)


def learning_milestones(values: np.ndarray, fractions: Sequence[float] = (0.5, 0.9)) -> np.ndarray:
    """When each column's cumulative learning first reached a fraction of its total learning.

    Learning is ``-LCA`` (what lowered the loss). For a column whose total learning over the window is
    positive, the milestone of fraction ``f`` is the first position ``i`` (0-based, into the rows of
    ``values``) at which ``-sum(values[: i + 1])`` reaches ``f`` times that total: the iteration *ending*
    at that checkpoint completed it. Columns that did not learn overall (total LCA >= 0) get -1.

    Args:
        values: float ``(n, L)`` LCA per iteration and layer.
        fractions: Fractions in ``(0, 1]``.

    Returns:
        int64 ``(len(fractions), L)`` positions, -1 where undefined.

    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    learned = -np.cumsum(v, axis=0)  # (n, L)
    out = np.full((len(fractions), v.shape[1]), -1, dtype=np.int64)
    if v.shape[0] == 0:
        return out
    total = learned[-1]
    for fi, f in enumerate(fractions):
        for j in np.flatnonzero(total > 0):
            out[fi, j] = int(np.argmax(learned[:, j] >= f * total[j]))
    return out


def integration_error(store: LcaStore, sel: Selection) -> float:
    """The run's accumulated integration error over the counted iterations: ``sum |residual|`` (loss units).

    The residual of a pair is what the quadrature failed to allocate; summed in absolute value over a window
    it bounds how far any window total of the whole network can be off, and it is the scale below which a
    layer's total is not distinguishable from zero: a layer *helps* or *hurts* only when ``|total|``
    exceeds it.

    Args:
        store: The store.
        sel: The iterations.

    Returns:
        ``sum_t |residual_t|`` over ``sel``.

    """
    residual = store.read(sel.set_name, "residual")[sel.rows].astype(np.float64)
    return float(np.abs(residual).sum())


def significance(totals: np.ndarray, error: float) -> list[str]:
    """``"helps"``, ``"hurts"`` or ``"within error"`` for each total against the integration error.

    Args:
        totals: float ``(L,)`` totals (loss units; negative = helped).
        error: :func:`integration_error` of the window.

    Returns:
        One word per total.

    """
    return ["within error" if abs(float(t)) <= error else ("helps" if t < 0 else "hurts") for t in np.asarray(totals)]


def cumulative(values: np.ndarray) -> np.ndarray:
    """Cumulative sums along axis 0 with a leading zero row: ``(n, ...) -> (n + 1, ...)``.

    Args:
        values: Per-iteration values.

    Returns:
        ``out[0] = 0``, ``out[i] = values[:i].sum(0)``.

    """
    v = np.asarray(values, dtype=np.float64)
    return np.concatenate([np.zeros((1, *v.shape[1:])), np.cumsum(v, axis=0)], axis=0)


# --------------------------------------------------------------------------------------------------------
# binning


def bin_edges(n: int, max_bins: int) -> np.ndarray:
    """Split ``0..n-1`` into at most ``max_bins`` contiguous, nearly equal bins.

    Args:
        n: Number of items (>= 0).
        max_bins: Bin cap (>= 1).

    Returns:
        int64 edges ``(b + 1,)`` with ``edges[0] = 0``, ``edges[-1] = n``, strictly increasing;
        ``b = min(n, max_bins)``.

    """
    b = max(1, min(n, max_bins)) if n > 0 else 0
    if b == 0:
        return np.zeros(1, dtype=np.int64)
    return (np.arange(b + 1, dtype=np.int64) * n) // b


# --------------------------------------------------------------------------------------------------------
# the streaming passes over ``lca``


def _iter_selected(
    store: LcaStore, sel: Selection, label: str, progress: Progress | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(positions in sel.rows, rows)`` chunk by chunk, with rows that do not count dropped."""
    if sel.n == 0:
        return
    seen, reported = 0, -1
    # Stream only from the first to the last counted row: the window's ends may be unfinished.
    for t0, block in store.iter_lca(sel.set_name, int(sel.rows[0]), int(sel.rows[-1]) + 1):
        t = np.arange(t0, t0 + block.shape[0])
        pos = np.minimum(np.searchsorted(sel.rows, t), sel.n - 1)
        keep = sel.rows[pos] == t
        if not keep.any():
            continue
        rows = block if keep.all() else block[keep]
        seen += int(keep.sum())
        if progress is not None and (10 * seen) // sel.n > reported:  # about every 10%
            reported = (10 * seen) // sel.n
            progress(f"{label}: {seen}/{sel.n} iterations")
        yield pos[keep], rows


#: Bins of :class:`ValueHistogram` per sign: float32 exponent (8 bits) and the top mantissa bit.
HIST_BINS = 512


def _hist_edges() -> np.ndarray:
    """Lower edges of the |value| bins of :class:`ValueHistogram`, float64 ``(HIST_BINS + 1,)``."""
    idx = np.arange(HIST_BINS + 1)
    exponent, half = idx // 2, idx % 2
    with np.errstate(over="ignore"):
        return np.ldexp(1.0 + 0.5 * half, exponent - 127)


@dataclass
class ValueHistogram:
    """Counts of all LCA values by sign and magnitude, in bins of a factor 1.5 or 1.33 (half an octave).

    A float32's bits hold its sign, its binary exponent and its mantissa; the top 10 bits (sign, exponent,
    first mantissa bit) are the bin, so counting needs one shift and one ``bincount`` per block, with bins
    that do not depend on the data (chunk-, order- and process-independent). Bin 0 of each sign also holds
    exact zeros and values below 1.2e-38 (float32 subnormals); :attr:`zeros` counts the exact zeros.

    Attributes:
        negative: int64 ``(HIST_BINS,)`` counts of LCA < 0 by |value| bin (helped).
        positive: int64 ``(HIST_BINS,)`` counts of LCA > 0 by bin (hurt).
        zeros: Exact zeros.

    """

    negative: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, np.int64))
    positive: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, np.int64))
    zeros: int = 0

    #: Lower edge of each |value| bin (and the upper edge of the last), float64 ``(HIST_BINS + 1,)``.
    EDGES = _hist_edges()

    def add(self, rows: np.ndarray) -> None:
        """Count a block of LCA rows ``(r, P)`` (any float dtype; rounded to float32 like the store)."""
        bits = np.ascontiguousarray(rows, dtype=np.float32).reshape(-1).view(np.uint32)
        counts = np.bincount(bits >> 22, minlength=2 * HIST_BINS)
        self.positive += counts[:HIST_BINS]
        self.negative += counts[HIST_BINS:]
        n_zero = int(np.count_nonzero((bits << 1) == 0))  # +0 and -0
        self.zeros += n_zero
        # zeros sit in bin 0 of either sign: keep them out of the signed counts
        pos_zero = int(np.count_nonzero(bits == 0))
        self.positive[0] -= pos_zero
        self.negative[0] -= n_zero - pos_zero

    @property
    def total(self) -> int:
        """All values counted."""
        return int(self.negative.sum() + self.positive.sum()) + self.zeros


@dataclass
class ParameterStats:
    """Per-parameter sums and counts over the counted iterations (first streaming pass).

    Attributes:
        neg: float64 ``(P,)``: sum of the negative parts of LCA (helping; <= 0).
        pos: float64 ``(P,)``: sum of the positive parts (hurting; >= 0).
        helped: int64 ``(P,)``: iterations with LCA < 0.
        hurt: int64 ``(P,)``: iterations with LCA > 0.
        n_iterations: Iterations counted.
        histogram: Every LCA value counted by sign and magnitude (:class:`ValueHistogram`).

    """

    neg: np.ndarray
    pos: np.ndarray
    helped: np.ndarray
    hurt: np.ndarray
    n_iterations: int = 0
    histogram: ValueHistogram = field(default_factory=ValueHistogram)

    @classmethod
    def zeros(cls, n_params: int) -> ParameterStats:
        """Empty accumulators for ``n_params`` parameters."""
        return cls(
            np.zeros(n_params, np.float64),
            np.zeros(n_params, np.float64),
            np.zeros(n_params, np.int64),
            np.zeros(n_params, np.int64),
        )

    def add(self, rows: np.ndarray) -> None:
        """Accumulate a block of LCA rows ``(r, P)``."""
        self.neg += np.minimum(rows, 0).sum(axis=0, dtype=np.float64)
        self.pos += np.maximum(rows, 0).sum(axis=0, dtype=np.float64)
        helped, hurt = column_counts(rows)
        self.helped += helped
        self.hurt += hurt
        self.n_iterations += int(rows.shape[0])
        self.histogram.add(rows)

    @property
    def total(self) -> np.ndarray:
        """Net LCA per parameter, ``(P,)``."""
        return self.neg + self.pos

    @property
    def helped_fraction(self) -> np.ndarray:
        """Fraction of its nonzero iterations on which each parameter helped; NaN if it never moved the loss."""
        n = self.helped + self.hurt
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.helped / np.maximum(n, 1), np.nan)

    def by_layer(self, layout: Layout) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Sum the negative and positive parts over each layer's parameters.

        Args:
            layout: The store's layout.

        Returns:
            ``(layer names, neg (L,), pos (L,))``.

        """
        layers = layout.layers()
        neg = np.zeros(len(layers))
        pos = np.zeros(len(layers))
        for li, (_, idx) in enumerate(layers):
            for i in idx:
                p = layout.params[i]
                neg[li] += self.neg[p.offset : p.stop].sum()
                pos[li] += self.pos[p.offset : p.stop].sum()
        return [name for name, _ in layers], neg, pos


def scan_parameters(
    store: LcaStore, sel: Selection, progress: Progress | None = None, label: str = "pass 1/2 (per-parameter totals)"
) -> ParameterStats:
    """First streaming pass: per-parameter negative/positive sums, helped/hurt counts and the value histogram.

    Args:
        store: The store.
        sel: The iterations.
        progress: Optional progress callback.
        label: Progress label of the pass.

    Returns:
        The accumulated statistics.

    """
    stats = ParameterStats.zeros(store.columns.size)  # lca's columns: parameters, or neurons / tensors
    for _, rows in _iter_selected(store, sel, label, progress):
        stats.add(rows)
    return stats


def neuron_groups(layout: Layout) -> list[tuple[str, list[tuple[int, int]]]]:
    """The neuron groups of a layout (``Layout.neurons()``): ``[(name, [(tensor index, units)])]``."""
    return layout.neurons()


def neuron_totals(layout: Layout, total: np.ndarray, group: int) -> np.ndarray:
    """Net LCA of each unit of one neuron group (``layout.neurons()[group]``): float64 ``(n0,)``.

    Args:
        layout: The store's layout.
        total: float ``(P,)`` per-parameter totals.
        group: Index into ``layout.neurons()``.

    Returns:
        Per-unit totals (unit ``i`` of every tensor of the group, see ``Layout.neurons``).

    """
    _, members = layout.neurons()[group]
    out: np.ndarray | None = None
    for ti, _ in members:
        p = layout.params[ti]
        part = p.unit_sums(np.asarray(total[p.offset : p.stop], dtype=np.float64))
        out = part if out is None else out + part
    assert out is not None
    return out


def rank_neuron_groups(layout: Layout, stats: ParameterStats) -> list[tuple[int, float]]:
    """Order neuron groups (layers) by their total absolute allocation ``sum_t sum_p |LCA|``.

    Args:
        layout: The store's layout.
        stats: First-pass statistics (``pos - neg`` is the per-parameter ``sum_t |LCA|``).

    Returns:
        ``[(group index into layout.neurons(), sum |LCA|)]``, largest first.

    """
    absolute = stats.pos - stats.neg
    out = []
    for gi, (_, members) in enumerate(layout.neurons()):
        spans = [layout.params[i] for i, _ in members]
        out.append((gi, float(sum(absolute[p.offset : p.stop].sum() for p in spans))))
    return sorted(out, key=lambda x: -x[1])


@dataclass
class NeuronMap:
    """LCA of one layer's neurons over iterations, binned (sums: loss units).

    Attributes:
        name: Layer (or tensor) name.
        n_neurons: Output units of the layer.
        matrix: float64 ``(neuron bins, iteration bins)``: LCA summed over the neurons and iterations of each
            bin.
        neuron_edges: ``(neuron bins + 1,)``, unit indices.
        iteration_edges: ``(iteration bins + 1,)``, positions into the selection's rows.
        step_edges: ``(iteration bins + 1,)``: start step of each bin's first iteration, and the end step of
            the last iteration.
        order: ``(n_neurons,)`` unit shown at each row position before binning (e.g. sorted most helpful
            first); None = units in their own order.

    """

    name: str
    n_neurons: int
    matrix: np.ndarray
    neuron_edges: np.ndarray
    iteration_edges: np.ndarray
    step_edges: np.ndarray
    order: np.ndarray | None = None


def _neuron_sums(rows: np.ndarray, layout: Layout, members: Sequence[tuple[int, int]]) -> np.ndarray:
    """Per-neuron sums of a block of rows: ``(r, P) -> (r, n0)`` float64."""
    out: np.ndarray | None = None
    for ti, _ in members:
        p = layout.params[ti]
        part = p.unit_sums(rows[:, p.offset : p.stop], dtype=np.float64)
        out = part if out is None else out + part
    assert out is not None
    return out


def scan_selected(
    store: LcaStore,
    sel: Selection,
    columns: Sequence[int] | np.ndarray = (),
    groups: Sequence[int] = (),
    *,
    max_bins: int = 400,
    max_neurons: int = 200,
    progress: Progress | None = None,
    orders: Sequence[np.ndarray | None] | None = None,
    label: str = "pass 2/2 (trajectories, heat maps)",
) -> tuple[np.ndarray, list[NeuronMap]]:
    """Second streaming pass: per-iteration LCA of chosen parameters and binned neuron x iteration maps.

    Args:
        store: The store.
        sel: The iterations.
        columns: Flat parameter indices whose per-iteration LCA to keep.
        groups: Indices into ``layout.neurons()`` of the layers to map.
        max_bins: Cap on iteration bins of the maps.
        max_neurons: Cap on neuron bins (consecutive rows are summed beyond it).
        progress: Optional progress callback.
        orders: Per group, a permutation of its units giving the row order (before binning), or None.
        label: Progress label of the pass.

    Returns:
        ``(trajectories, maps)``: float64 ``(n, len(columns))`` LCA per iteration (not cumulated) and one
        :class:`NeuronMap` per group, in the order given.

    """
    layout = store.column_layout  # the columns as stored (parameters, or neurons / tensors)
    cols = np.asarray(list(columns), dtype=np.int64)
    traj = np.zeros((sel.n, len(cols)), dtype=np.float64)
    all_groups = layout.neurons()
    it_edges = bin_edges(sel.n, max_bins)
    n_bins = len(it_edges) - 1
    bin_of_pos = np.repeat(np.arange(n_bins), np.diff(it_edges))
    step_edges = np.concatenate([sel.start_steps[it_edges[:-1]], sel.end_steps[-1:]]) if sel.n else np.zeros(1)
    maps: list[NeuronMap] = []
    members: list[list[tuple[int, int]]] = []
    order_list = list(orders) if orders is not None else [None] * len(groups)
    for gi, order in zip(groups, order_list, strict=True):
        name, group = all_groups[gi]
        n0 = group[0][1]
        ne = bin_edges(n0, max_neurons)
        o = None if order is None else np.asarray(order, dtype=np.int64)
        maps.append(NeuronMap(name, n0, np.zeros((len(ne) - 1, n_bins)), ne, it_edges, step_edges, o))
        members.append(list(group))
    if len(cols) == 0 and not maps:
        return traj, maps
    for pos, rows in _iter_selected(store, sel, label, progress):
        if len(cols):
            traj[pos] = rows[:, cols]
        bins = bin_of_pos[pos]
        for m, group in zip(maps, members, strict=True):
            per_neuron = _neuron_sums(rows, layout, group)  # (r, n0)
            if m.order is not None:
                per_neuron = per_neuron[:, m.order]
            per_bin = np.add.reduceat(per_neuron, m.neuron_edges[:-1], axis=1)  # (r, neuron bins)
            np.add.at(m.matrix.T, bins, per_bin)
    return traj, maps


# --------------------------------------------------------------------------------------------------------
# choosing parameters


def select_parameters(
    stats: ParameterStats, k_best: int = 5, k_worst: int = 5, k_random: int = 5, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """The most helpful (most negative total), most harmful (most positive total) and random parameters.

    Random ones are drawn with ``numpy.random.default_rng(seed)`` among parameters that moved the loss at
    least once and are not already chosen. Fewer are returned when the model is small.

    Args:
        stats: First-pass statistics.
        k_best: Number of most helpful parameters.
        k_worst: Number of most harmful parameters.
        k_random: Number of random parameters.
        seed: Seed of the random draw.

    Returns:
        ``(columns, kinds)``: flat indices and ``"helpful" | "harmful" | "random"`` for each.

    """
    total = stats.total
    order = np.argsort(total, kind="stable")
    best = [int(i) for i in order[:k_best] if total[i] < 0]
    worst = [int(i) for i in order[::-1][:k_worst] if total[i] > 0 and int(i) not in best]
    chosen = set(best) | set(worst)
    moved = np.flatnonzero((stats.helped + stats.hurt) > 0)
    pool = np.setdiff1d(moved, np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
    rng = np.random.default_rng(seed)
    rand = sorted(int(i) for i in rng.choice(pool, size=min(k_random, len(pool)), replace=False)) if len(pool) else []
    cols = np.asarray(best + worst + rand, dtype=np.int64)
    kinds = ["helpful"] * len(best) + ["harmful"] * len(worst) + ["random"] * len(rand)
    return cols, kinds


@dataclass(frozen=True)
class Concentration:
    """How few parameters do most of the learning.

    Parameters are ranked by their net LCA over the window, most helpful first. The learning to share out
    is the summed net LCA of the parameters that helped overall (``-sum(total[total < 0])``); a parameter
    that hurt overall is never counted as doing learning.

    Attributes:
        n_params: Parameters considered.
        learning: ``-sum(total[total < 0])`` (loss units, >= 0).
        fractions: The learning fractions asked for, e.g. ``(0.5, 0.9)``.
        shares: float64, per fraction: the smallest share of all ``n_params`` parameters whose learning
            reaches that fraction (NaN when nothing learned).
        curve_x: Share of parameters (ranked), ``(k,)`` from 0 to 1, subsampled for plotting.
        curve_y: Share of the learning those parameters do, ``(k,)``.

    """

    n_params: int
    learning: float
    fractions: tuple[float, ...]
    shares: np.ndarray
    curve_x: np.ndarray
    curve_y: np.ndarray


def concentration(total: np.ndarray, fractions: Sequence[float] = (0.5, 0.9), max_points: int = 400) -> Concentration:
    """Concentration of learning over parameters (the paper's "few parameters do most of the learning").

    Args:
        total: float ``(P,)`` net LCA per parameter over the window (e.g. :attr:`ParameterStats.total`).
        fractions: Fractions of the learning to report.
        max_points: Points of the curve kept.

    Returns:
        The shares and the curve.

    """
    t = np.asarray(total, dtype=np.float64).reshape(-1)
    p = t.size
    gains = np.sort(-t[t < 0])[::-1]  # learning done by each helpful parameter, largest first
    learning = float(gains.sum())
    fr = tuple(float(f) for f in fractions)
    if p == 0 or learning <= 0:
        nan = np.full(len(fr), np.nan)
        return Concentration(p, 0.0, fr, nan, np.array([0.0, 1.0]), np.array([0.0, 0.0]))
    cum = np.cumsum(gains) / learning  # (h,) share of learning done by the top k + 1
    shares = np.array([(int(np.searchsorted(cum, f - 1e-12)) + 1) / p for f in fr])
    # The curve: (0, 0), each helpful parameter, then flat to (1, 1) over the rest.
    x = np.concatenate([[0.0], np.arange(1, gains.size + 1) / p, [1.0]])
    y = np.concatenate([[0.0], cum, [1.0 if gains.size else 0.0]])
    if x.size > max_points:
        keep = np.unique(np.concatenate([np.linspace(0, x.size - 1, max_points).astype(np.int64), [gains.size]]))
        x, y = x[keep], y[keep]
    return Concentration(p, learning, fr, shares, x, y)


def layer_concentration(
    layout: Layout, total: np.ndarray, fractions: Sequence[float] = (0.5, 0.9)
) -> tuple[list[str], np.ndarray]:
    """:func:`concentration` within each layer: the share of the layer's parameters doing its learning.

    Args:
        layout: The store's layout.
        total: float ``(P,)`` net LCA per parameter.
        fractions: Fractions of the learning.

    Returns:
        ``(layer names, shares)`` with ``shares`` float64 ``(len(fractions), L)`` (NaN: the layer did not learn).

    """
    layers = layout.layers()
    out = np.full((len(fractions), len(layers)), np.nan)
    for li, (_, idx) in enumerate(layers):
        part = np.concatenate([total[layout.params[i].offset : layout.params[i].stop] for i in idx])
        out[:, li] = concentration(part, fractions, max_points=2).shares
    return [n for n, _ in layers], out


def parameter_label(layout: Layout, column: int) -> str:
    """Name of a flat parameter index as ``tensor[i, j, ...]``.

    Args:
        layout: The store's layout.
        column: Flat index in ``0..P-1``.

    Returns:
        For example ``"fc1.weight[3, 17]"`` (a scalar tensor gives its bare name).

    Raises:
        IndexError: If ``column`` is out of range.

    """
    for p in layout.params:
        if p.offset <= column < p.stop:
            if not p.shape:
                return p.name
            idx = np.unravel_index(column - p.offset, p.shape)
            return f"{p.name}[{', '.join(str(int(i)) for i in idx)}]"
    raise IndexError(f"parameter index {column} outside 0..{layout.size - 1}")


# --------------------------------------------------------------------------------------------------------
# peaks and synchronisation


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

    """

    names: list[str]
    learning: np.ndarray
    peaks: list[np.ndarray]
    shift: SyncResult
    controlled: np.ndarray
    controlled_peaks: list[np.ndarray]
    controlled_shift: SyncResult
    rule: str


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
    kw = {"tolerance": tolerance, "n_shuffles": n_shuffles, "seed": seed}
    return SyncAnalysis(
        list(names),
        learning,
        peaks,
        synchronisation(peaks, n, **kw),
        controlled,
        cpeaks,
        synchronisation(cpeaks, n, **kw),
        rule,
    )
