"""The streaming passes over ``lca``: one row chunk at a time, bounded memory.

The big ``lca`` array is read only through :meth:`LcaStore.iter_lca`; a pass keeps at most ``O(P)``
per-parameter accumulators (:func:`scan_parameters`), ``O(bins x neurons)`` heat-map matrices and
``O(T x k)`` trajectories of ``k`` chosen parameters (:func:`scan_selected`): memory never grows with
``T x P``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from lca_cli.analysis.selection import Selection
from lca_cli.core.layout import Layout
from lca_cli.store import LcaStore, column_counts

__all__ = [
    "HIST_BINS",
    "NeuronMap",
    "ParameterStats",
    "Progress",
    "ValueHistogram",
    "bin_edges",
    "neuron_groups",
    "neuron_totals",
    "rank_neuron_groups",
    "scan_parameters",
    "scan_selected",
]

#: ``progress(message)``: one line describing the streaming pass under way.
Progress = Callable[[str], None]


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
    store: LcaStore,
    sel: Selection,
    progress: Progress | None = None,
    label: str = "pass 1/2 (per-parameter totals)",
    on_rows: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> ParameterStats:
    """First streaming pass: per-parameter negative/positive sums, helped/hurt counts and the value histogram.

    Args:
        store: The store.
        sel: The iterations.
        progress: Optional progress callback.
        label: Progress label of the pass.
        on_rows: Also called with ``(positions in sel.rows, rows (r, C))`` of each block, for per-iteration
            sums read in the same pass.

    Returns:
        The accumulated statistics.

    """
    stats = ParameterStats.zeros(store.columns.size)  # lca's columns: parameters, or neurons / tensors
    for pos, rows in _iter_selected(store, sel, label, progress):
        stats.add(rows)
        if on_rows is not None:
            on_rows(pos, rows)
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
