"""Per-iteration series and per-layer counts from the store's small arrays: no streaming of ``lca``.

Everything here reads ``loss``, ``residual``, ``tensor_lca``, ``tensor_helped``, ``tensor_hurt``, ... whole
(each is ``O(T x tensors)``), plus pure helpers over such series (milestones, significance, cumulative sums).

Conventions: LCA < 0 means a parameter *helped* (lowered the loss), LCA > 0 that it *hurt*; "learning" of
a layer on an iteration is ``-LCA`` of the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lca_cli.analysis.selection import Selection
from lca_cli.store.lcastore import LcaStore

__all__ = [
    "Composition",
    "LayerComposition",
    "LossCurves",
    "composition",
    "cumulative",
    "helped_fraction_per_iteration",
    "helped_of_moved",
    "integration_error",
    "layer_composition",
    "layer_series",
    "layer_split_from_tensors",
    "learning_milestones",
    "loss_curves",
    "significance",
]


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
