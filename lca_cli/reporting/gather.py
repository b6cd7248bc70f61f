"""Gathering: everything a report page shows, read from a store into complete, immutable data.

Two stages, in the order ``lca report`` runs them (so a bad set or window fails before any folder is made):

1. :func:`gather_sets` reads the small arrays of each evaluation set (loss curves, per-layer series,
   helped / zero / hurt counts, milestones) into a :class:`SetSummary`; a comparison of two runs needs no more.
2. :func:`gather_report` runs the two streaming passes over ``lca`` per set and the synchronisation test,
   and returns one :class:`ReportData`: every set's :class:`SetData` (a summary plus its streamed numbers),
   the parameters followed, the layers mapped and the first layer's image shape. Each object is built once,
   complete: the figures, captions, numbers and page read it and never fill anything in.

The numbers themselves come from :mod:`lca_cli.analysis`; this module decides what is read, in which order,
and what is handed to the page. No matplotlib, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from lca_cli.analysis.floor import floor_header, require_full_columns, tensor_counts
from lca_cli.analysis.parameters import (
    Concentration,
    concentration,
    layer_concentration,
    parameter_label,
    select_parameters,
)
from lca_cli.analysis.passes import (
    NeuronMap,
    ParameterStats,
    neuron_totals,
    rank_neuron_groups,
    scan_parameters,
    scan_selected,
)
from lca_cli.analysis.selection import Selection, require_set, select_rows
from lca_cli.analysis.series import (
    Composition,
    LayerComposition,
    LossCurves,
    composition,
    integration_error,
    layer_composition,
    layer_series,
    layer_split_from_tensors,
    learning_milestones,
    loss_curves,
    significance,
)
from lca_cli.analysis.sync import SyncAnalysis, sync_analysis
from lca_cli.analysis.verdicts import apportion_errors, layer_verdicts
from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError, UsageError
from lca_cli.store import LcaStore

__all__ = [
    "InputImage",
    "ReportData",
    "SetData",
    "SetSummary",
    "gather_report",
    "gather_set",
    "gather_sets",
    "input_image",
    "resolve_sets",
]

#: ``progress(message)``: one line on the work under way.
Progress = Callable[[str], None]

#: Windows over start steps, ``(A, B)`` with open ends as None.
Steps = tuple[int | None, int | None] | None


@dataclass(frozen=True, eq=False)
class SetSummary:
    """The small-array numbers of one evaluation set (no streaming pass over ``lca``).

    Attributes:
        name: Evaluation set.
        sel: Its iterations.
        curves: True vs reconstructed loss.
        layer_names: Layer names, model order.
        per_layer: float64 ``(n, L)`` LCA per iteration and layer.
        comp: Helped / zero / hurt counts per iteration.
        lcomp: Helped / zero / hurt counts per layer.
        error: Integration error ``sum |residual|`` of the window.
        milestones: int64 ``(2, L)`` positions at which each layer had done 50% / 90% of its learning.
        floor: With a noise floor (``--min-abs``): :func:`lca_cli.analysis.floor.floor_header`'s keys (the floor,
            its rule, the share of entries below float resolution), and ``comp`` and ``lcomp`` count above it;
            empty without one.

    """

    name: str
    sel: Selection
    curves: LossCurves
    layer_names: list[str]
    per_layer: np.ndarray
    comp: Composition
    lcomp: LayerComposition
    error: float
    milestones: np.ndarray
    floor: dict[str, Any] = field(default_factory=dict, kw_only=True)

    @property
    def totals(self) -> np.ndarray:
        """Per-layer totals over the window, ``(L,)``."""
        return self.per_layer.sum(axis=0)

    @property
    def verdicts(self) -> list[str]:
        """``helps`` / ``hurts`` / ``within error`` per layer (:func:`lca_cli.analysis.series.significance`)."""
        return significance(self.totals, self.error)


@dataclass(frozen=True, eq=False)
class SetData(SetSummary):
    """Everything drawn for one evaluation set: its :class:`SetSummary` plus the streamed numbers.

    Attributes:
        stats: First-pass per-parameter statistics.
        conc: Concentration of learning over all parameters.
        layer_neg: ``(L,)`` per-layer sums of the negative LCA entries (everything the layer helped).
        layer_pos: ``(L,)`` per-layer sums of the positive LCA entries (everything it hurt).
        layer_conc: float64 ``(2, L)`` shares of each layer's parameters doing 50% / 90% of its learning.
        spans: Per layer, the ``(offset, stop)`` column ranges of its tensors (None: not stored per column).
        traj: float64 ``(n, k)`` per-iteration LCA of the followed parameters.
        maps: Neuron x iteration maps of the mapped layers.
        sync: Synchronisation analysis of per-layer learning.
        layer_abs: float64 ``(n, L)`` Σ|LCA| of each layer's entries per iteration (from ``lca``'s columns; for a
            layer without columns of its own, ``|net|`` of the layer, a lower bound).
        layer_err: float64 ``(n, L)`` per-layer error estimate of each iteration
            (:func:`lca_cli.analysis.verdicts.apportion_errors`).

    """

    stats: ParameterStats
    conc: Concentration
    layer_neg: np.ndarray
    layer_pos: np.ndarray
    layer_conc: np.ndarray
    spans: list[list[tuple[int, int]] | None]
    traj: np.ndarray
    maps: list[NeuronMap]
    sync: SyncAnalysis
    layer_abs: np.ndarray
    layer_err: np.ndarray

    @property
    def layer_errors(self) -> np.ndarray:
        """``(L,)`` each layer's error estimate over the window (the sum of its per-iteration estimates)."""
        return self.layer_err.sum(axis=0)

    @property
    def verdicts(self) -> list[str]:
        """``helps`` / ``hurts`` / ``within error`` per layer against its own error estimate (not the network's)."""
        return layer_verdicts(self.totals, self.layer_errors)

    def layer_curve(self, j: int) -> Concentration | None:
        """Concentration curve of layer ``j`` from the per-parameter totals (None when it has no columns)."""
        spans = self.spans[j]
        if spans is None:
            return None
        part = np.concatenate([self.stats.total[a:b] for a, b in spans])
        return concentration(part, (0.5, 0.9))


class InputImage(NamedTuple):
    """The first layer's weight read as an image.

    Attributes:
        tensor: The weight's name.
        shape: ``(channels, height, width)`` of its input.
        span: ``(first column, stop)`` of the weight in ``lca``.

    """

    tensor: str
    shape: tuple[int, int, int]
    span: tuple[int, int]


@dataclass(frozen=True, eq=False)
class ReportData:
    """What one report page shows, complete.

    Attributes:
        sets: Per evaluation set shown, the first one heading the page.
        notes: Sets of the store left out, with the reason (not computed yet in the window).
        columns: int64 ``(k,)`` columns of the followed parameters.
        kinds: ``helpful`` / ``harmful`` / ``random`` per followed parameter.
        labels: Name (``tensor[index]``) per followed parameter.
        groups: Neuron groups (layers) given a heat map, network order.
        output_group: The output layer's neuron group (its units are classes).
        image: The first layer's input as an image, when it reads one.

    """

    sets: list[SetData]
    notes: dict[str, str]
    columns: np.ndarray
    kinds: list[str]
    labels: list[str]
    groups: list[int]
    output_group: int
    image: InputImage | None

    @property
    def main(self) -> SetData:
        """The headline set (the first shown)."""
        return self.sets[0]


def resolve_sets(store: LcaStore, set_names: Sequence[str] | str | None) -> tuple[list[str], bool]:
    """The sets to show, the first heading the page, and whether the caller chose them.

    Args:
        store: The store.
        set_names: Sets asked for (None: every set of the store, ``train`` first when present).

    Returns:
        The sets, and True when ``set_names`` named them.

    Raises:
        UsageError: A named set that the store does not have.

    """
    if isinstance(set_names, str):
        set_names = [set_names]
    if set_names:
        for s in set_names:
            require_set(store, s)
        return list(dict.fromkeys(set_names)), True
    ordered = (["train"] if "train" in store.sets else []) + [s for s in store.sets if s != "train"]
    return ordered, False


def gather_set(store: LcaStore, set_name: str, steps: Steps, min_abs: float | None = None) -> SetSummary:
    """The small-array numbers of one set (no streaming): loss curves, layer series, counts, milestones.

    Args:
        store: The store.
        set_name: Evaluation set.
        steps: Window ``(A, B)`` over start steps.
        min_abs: A noise floor: the helped / hurt counts are taken above it, from one streaming pass over
            ``lca`` (:func:`lca_cli.analysis.floor.tensor_counts`), and ``floor`` says so.

    Returns:
        The set's summary.

    Raises:
        UsageError: Unknown set or empty window.
        StoreError: Nothing finished in the window.

    """
    sel = select_rows(store, set_name, steps)
    names, per_layer = layer_series(store, sel)
    comp, lcomp, floor = composition(store, sel), layer_composition(store, sel), {}
    if min_abs is not None:
        require_full_columns(store, "--min-abs")
        mask = np.zeros(store.n_pairs, dtype=bool)
        mask[sel.rows] = True
        counts = tensor_counts(store, set_name, mask, min_abs)
        floor = floor_header(counts, mask, store.layout.size)
        helped, hurt = counts.helped[sel.rows], counts.hurt[sel.rows]  # (n, K)
        comp = Composition(helped.sum(axis=1), hurt.sum(axis=1), store.layout.size)
        idx = [i for _, i in store.layout.layers()]
        lcomp = LayerComposition(
            lcomp.names, lcomp.params, np.array([helped[:, i].sum() for i in idx], dtype=np.int64),
            np.array([hurt[:, i].sum() for i in idx], dtype=np.int64), sel.n,
        )  # fmt: skip
    return SetSummary(
        name=set_name,
        sel=sel,
        curves=loss_curves(store, sel),
        layer_names=names,
        per_layer=per_layer,
        comp=comp,
        lcomp=lcomp,
        error=integration_error(store, sel),
        milestones=learning_milestones(per_layer, (0.5, 0.9)),
        floor=floor,
    )


def gather_sets(
    store: LcaStore, set_names: Sequence[str] | str | None, steps: Steps, min_abs: float | None = None
) -> tuple[list[SetSummary], dict[str, str]]:
    """The summaries of the sets to show (:func:`resolve_sets`), and the sets left out with the reason.

    A held-out set that has nothing finished in the window yet is left out with a note when the sets were
    not named; the headline set, or any named set, raises instead.

    Args:
        store: The store.
        set_names: Sets asked for (None: every set).
        steps: Window ``(A, B)`` over start steps.
        min_abs: A noise floor for the helped / hurt counts (:func:`gather_set`).

    Returns:
        The summaries, headline first, and ``{set: why it is not shown}``.

    Raises:
        UsageError: Unknown set or empty window.
        StoreError: Nothing finished in the window of the headline (or a named) set.

    """
    sets, chosen = resolve_sets(store, set_names)
    summaries: list[SetSummary] = []
    notes: dict[str, str] = {}
    for i, s in enumerate(sets):
        try:
            summaries.append(gather_set(store, s, steps, min_abs))
        except (StoreError, UsageError) as exc:
            if i == 0 or chosen:
                raise
            notes[s] = str(exc)  # a held-out set not computed yet: shown as a note, not an error
    return summaries, notes


class _FirstPass(NamedTuple):
    """What the first streaming pass gives one set (the :class:`SetData` fields of the same names)."""

    stats: ParameterStats
    conc: Concentration
    layer_neg: np.ndarray
    layer_pos: np.ndarray
    layer_conc: np.ndarray
    spans: list[list[tuple[int, int]] | None]
    layer_abs: np.ndarray
    layer_err: np.ndarray


def _first_pass(store: LcaStore, s: SetSummary, layout: Layout, say: Progress) -> _FirstPass:
    """Per-parameter totals of a set, with its per-layer helped / hurt sums, concentration and column spans.

    ``layout`` is the store's column layout (:attr:`LcaStore.column_layout`). Its layers are matched to the
    model's by name: on a per-parameter store they are the same; a layer that ``--params`` left out (in the
    ``(other)`` column) keeps its per-tensor helped / hurt split (``tensor_lca`` is stored for every tensor) and
    has no concentration curve.
    """
    say(f"set {s.name}: {s.sel.n} iterations (steps {int(s.sel.start_steps[0])}..{int(s.sel.end_steps[-1])})")
    layers = layout.layers()
    where = {name: j for j, (name, _) in enumerate(layers)}
    pick = [where.get(n) for n in s.layer_names]
    tensor_spans = [[(layout.params[i].offset, layout.params[i].stop) for i in idx] for _, idx in layers]
    abs_cols = np.zeros((s.sel.n, len(layers)))  # (n, L of the column layout): Σ|LCA| per iteration and layer

    def add_abs(pos: np.ndarray, rows: np.ndarray) -> None:
        a = np.abs(rows)  # (r, C)
        for j, spans in enumerate(tensor_spans):
            abs_cols[pos, j] += sum(a[:, lo:hi].sum(axis=1, dtype=np.float64) for lo, hi in spans)

    label = f"set {s.name}: pass 1/2 (per-parameter totals)"
    stats = scan_parameters(store, s.sel, progress=say, label=label, on_rows=add_abs)
    conc = concentration(stats.total)
    layer_abs = np.stack(
        [np.abs(s.per_layer[:, k]) if j is None else abs_cols[:, j] for k, j in enumerate(pick)], axis=1
    ).reshape(s.sel.n, len(pick))
    l1 = store.read(s.name, "l1_change")[s.sel.rows].astype(np.float64)
    _, neg, pos = stats.by_layer(layout)
    layer_conc = layer_concentration(layout, stats.total)[1]
    split = layer_split_from_tensors(store, s.sel) if None in pick else {}
    return _FirstPass(
        stats=stats,
        conc=conc,
        layer_neg=np.array([split[n][0] if j is None else neg[j] for n, j in zip(s.layer_names, pick, strict=True)]),
        layer_pos=np.array([split[n][1] if j is None else pos[j] for n, j in zip(s.layer_names, pick, strict=True)]),
        layer_conc=np.stack([[np.nan if j is None else row[j] for j in pick] for row in layer_conc]),
        spans=[None if j is None else tensor_spans[j] for j in pick],
        layer_abs=layer_abs,
        layer_err=apportion_errors(s.curves.residual, l1, layer_abs),
    )


def gather_report(
    store: LcaStore,
    summaries: Sequence[SetSummary],
    notes: dict[str, str],
    *,
    heatmap_layers: int,
    seed: int,
    progress: Progress,
) -> ReportData:
    """Stream the sets' ``lca`` (two passes per set) and test synchronisation: the page's data, complete.

    The parameters to follow and the layers to map are chosen on the headline set, and followed and mapped
    (rows in the headline set's order) on every set, so that panels side by side compare.

    Args:
        store: The store.
        summaries: The sets' summaries (:func:`gather_sets`), headline first.
        notes: Sets left out, with the reason.
        heatmap_layers: Layers (those with the most ``sum |LCA|``) given a neuron x iteration map.
        seed: Seed of the random parameters and of the synchronisation baselines.
        progress: Called with one-line messages.

    Returns:
        The report's data.

    """
    say = progress
    # lca's columns as stored: one per parameter, or per neuron / tensor (--granularity), or some tensors' and an
    # (other) column (--params). The views that read them use this layout, at the resolution stored.
    layout = store.column_layout
    first = [_first_pass(store, s, layout, say) for s in summaries]
    main_stats = first[0].stats
    cols, kinds = select_parameters(main_stats, 5, 5, 5, seed)
    ranked = rank_neuron_groups(layout, main_stats)
    groups = sorted(gi for gi, _ in ranked[:heatmap_layers])
    # Rows of every map sorted by the headline set's per-unit totals, most helpful first, in every set.
    orders = [np.argsort(neuron_totals(layout, main_stats.total, g), kind="stable") for g in groups]
    second = []
    for s in summaries:
        label = f"set {s.name}: pass 2/2 (trajectories, heat maps)"
        second.append(scan_selected(store, s.sel, cols, groups, orders=orders, progress=say, label=label))
    say("synchronisation baselines")
    syncs = [sync_analysis(s.layer_names, s.per_layer, tolerance=1, n_shuffles=1000, seed=seed) for s in summaries]
    sets = [
        _set_data(s, p, traj, maps, sy) for s, p, (traj, maps), sy in zip(summaries, first, second, syncs, strict=True)
    ]
    return ReportData(
        sets=sets,
        notes=dict(notes),
        columns=cols,
        kinds=list(kinds),
        labels=[parameter_label(layout, int(c)) for c in cols],
        groups=groups,
        output_group=len(layout.neurons()) - 1,
        image=input_image(store),
    )


def _set_data(s: SetSummary, p: _FirstPass, traj: np.ndarray, maps: list[NeuronMap], sync: SyncAnalysis) -> SetData:
    """One set's data from its summary and what the passes and the synchronisation test gave it."""
    return SetData(
        name=s.name,
        sel=s.sel,
        curves=s.curves,
        layer_names=s.layer_names,
        per_layer=s.per_layer,
        comp=s.comp,
        lcomp=s.lcomp,
        error=s.error,
        milestones=s.milestones,
        floor=s.floor,
        stats=p.stats,
        conc=p.conc,
        layer_neg=p.layer_neg,
        layer_pos=p.layer_pos,
        layer_conc=p.layer_conc,
        spans=p.spans,
        traj=traj,
        maps=maps,
        sync=sync,
        layer_abs=p.layer_abs,
        layer_err=p.layer_err,
    )


def input_image(store: LcaStore) -> InputImage | None:
    """The first layer's weight when it reads a square image (in_features = c x s x s, s >= 8), else None.

    Only when its parameters are stored one per column (a neuron or tensor store has no pixels).

    Args:
        store: The store.

    Returns:
        The weight's name, its input's ``(channels, height, width)`` and its columns, or None.

    """
    layout = store.column_layout
    _, idx = layout.layers()[0]
    for i in idx:
        p = layout.params[i]
        if len(p.shape) == 2 and p.name.endswith("weight"):
            k = int(p.shape[1])
            for c in (1, 3):
                if k % c == 0 and k // c >= 64 and math.isqrt(k // c) ** 2 == k // c:
                    s = math.isqrt(k // c)
                    return InputImage(p.name, (c, s, s), (p.offset, p.stop))
    return None
