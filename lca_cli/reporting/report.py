"""``lca report``: one self-contained HTML page of plots built from a store only.

The page embeds every figure as a base64 PNG (a copy of each is also written beside it) and carries its
CSS inline: no scripts, no fonts, no links out, so it opens anywhere without a network. The numbers come
from :mod:`lca_cli.analysis.views` (two streaming passes over ``lca`` per evaluation set, everything else from the
small arrays); this module draws, writes the captions from those numbers and assembles the page.

Every view shows each evaluation set side by side (train beside held-out), colours follow
:mod:`lca_cli.reporting.plots` (blue = helped, red = hurt, grey = exactly zero; layers by depth), and every caption
states what the paper found next to what this run shows, with the run's integration error (the summed
|residual|) as the scale below which a layer's total is not distinguishable from zero.

matplotlib is optional (``pip install 'lca-cli[report]'``); it is imported inside the functions that
draw, always through the Agg canvas and a style context, so importing this module or the CLI never needs
it and the caller's matplotlib state is left as it was.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli import __version__
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
    bin_edges,
    neuron_totals,
    rank_neuron_groups,
    scan_parameters,
    scan_selected,
)
from lca_cli.analysis.reduce import SIGNIFICANCE_RULE, open_store
from lca_cli.analysis.selection import Selection, require_set, select_rows
from lca_cli.analysis.series import (
    Composition,
    LayerComposition,
    LossCurves,
    composition,
    cumulative,
    integration_error,
    layer_composition,
    layer_series,
    layer_split_from_tensors,
    learning_milestones,
    loss_curves,
    significance,
)
from lca_cli.analysis.sync import PEAK_WINDOW, SyncAnalysis, SyncResult, sync_analysis
from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError, UsageError
from lca_cli.reporting.plots import (
    DIVERGING_CMAP,
    HELPED_COLOR,
    HURT_COLOR,
    MATPLOTLIB_MISSING,
    NET_COLOR,
    NEUTRAL_COLOR,
    RECON_COLOR,
    SCALE,
    STYLE,
    ZERO_COLOR,
    cumulative_layers,
    figure,
    fmt,
    helped_hurt_handles,
    highlighted_layers,
    layer_colors,
    png_info,
    require_matplotlib,
    save_png,
    sign_hints,
    step_axis,
)
from lca_cli.store.lcastore import HELPED_RULE, LcaStore

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "HELPED_COLOR",
    "HURT_COLOR",
    "MATPLOTLIB_MISSING",
    "PEAK_WINDOW",
    "VIEWS",
    "ReportResult",
    "SetData",
    "gather_set",
    "write_report",
]

#: The views of a report, in page order (``write_report(views=...)``, ``lca report --view``).
VIEWS = (
    "loss",
    "composition",
    "helped_hist",
    "values",
    "layers",
    "layer_shares",
    "cumulative",
    "milestones",
    "concentration",
    "heatmaps",
    "input_maps",
    "trajectories",
    "sync",
)
#: Points drawn per line at most (longer series are averaged in bins; cumulative ones subsampled).
MAX_LINE_POINTS = 1500

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` (or :func:`lca_cli.reporting.compare.write_comparison`) wrote.

    Attributes:
        html: The HTML page.
        pngs: The figures, in page order (the same images are embedded in the page).
        numbers: Headline numbers (JSON-serialisable): loss change, residuals, helped shares, per-layer
            totals, synchronisation statistics, ..., for the first set shown, and ``per_set`` for all.

    """

    html: Path
    pngs: list[Path] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class View:
    """One section of a page: a figure, its caption and optional extra HTML (a table)."""

    key: str
    title: str
    png: Path
    caption: str
    extra_html: str = ""


@dataclass
class SetData:
    """Everything drawn for one evaluation set (numbers only; no plotting objects).

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
        stats: First-pass per-parameter statistics (None until the streaming pass has run).
        conc: Concentration of learning over all parameters.
        layer_conc: float64 ``(2, L)`` shares of each layer's parameters doing 50% / 90% of its learning.
        traj: float64 ``(n, k)`` per-iteration LCA of the chosen parameters.
        maps: Neuron x iteration maps of the chosen layers.
        sync: Synchronisation analysis of per-layer learning.
        layer_neg: ``(L,)`` per-layer sums of the negative LCA entries (everything the layer helped).
        layer_pos: ``(L,)`` per-layer sums of the positive LCA entries (everything it hurt).
        spans: Per layer, the ``(offset, stop)`` column ranges of its tensors.

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
    stats: ParameterStats | None = None
    conc: Concentration | None = None
    layer_conc: np.ndarray | None = None
    traj: np.ndarray | None = None
    maps: list[NeuronMap] = field(default_factory=list)
    sync: SyncAnalysis | None = None
    layer_neg: np.ndarray | None = None
    layer_pos: np.ndarray | None = None
    spans: list[list[tuple[int, int]] | None] | None = None

    @property
    def totals(self) -> np.ndarray:
        """Per-layer totals over the window, ``(L,)``."""
        return self.per_layer.sum(axis=0)

    @property
    def verdicts(self) -> list[str]:
        """``helps`` / ``hurts`` / ``within error`` per layer (:func:`lca_cli.analysis.views.significance`)."""
        return significance(self.totals, self.error)


def gather_set(store: LcaStore, set_name: str, steps: tuple[int | None, int | None] | None) -> SetData:
    """The small-array numbers of one set (no streaming): loss curves, layer series, counts, milestones.

    Args:
        store: The store.
        set_name: Evaluation set.
        steps: Window ``(A, B)`` over start steps.

    Returns:
        The set's data, with the streaming fields still empty.

    Raises:
        UsageError: Unknown set or empty window.
        StoreError: Nothing finished in the window.

    """
    sel = select_rows(store, set_name, steps)
    names, per_layer = layer_series(store, sel)
    return SetData(
        name=set_name,
        sel=sel,
        curves=loss_curves(store, sel),
        layer_names=names,
        per_layer=per_layer,
        comp=composition(store, sel),
        lcomp=layer_composition(store, sel),
        error=integration_error(store, sel),
        milestones=learning_milestones(per_layer, (0.5, 0.9)),
    )


def _resolve_sets(store: LcaStore, set_names: Sequence[str] | str | None) -> tuple[list[str], bool]:
    """The sets to show, first = the headline set; and whether the caller chose them."""
    if isinstance(set_names, str):
        set_names = [set_names]
    if set_names:
        for s in set_names:
            require_set(store, s)
        return list(dict.fromkeys(set_names)), True
    ordered = (["train"] if "train" in store.sets else []) + [s for s in store.sets if s != "train"]
    return ordered, False


# --------------------------------------------------------------------------------------------------------
# entry point


def write_report(
    store_path: str | Path,
    out_html: str | Path,
    *,
    set_names: Sequence[str] | str | None = None,
    steps: tuple[int | None, int | None] | None = None,
    png_dir: str | Path | None = None,
    heatmap_layers: int = 6,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    views: Sequence[str] | None = None,
) -> ReportResult:
    """Write the HTML report of a store (and its figures as PNG files).

    Args:
        store_path: The lca store.
        out_html: The page to write (parent directories are created).
        set_names: Evaluation sets to show, side by side; the first one's numbers head the page (default:
            every set of the store, ``train`` first when present).
        steps: Window ``(A, B)`` over the start step of each iteration, ``[A, B)``; None ends are open.
        png_dir: Where the PNGs go (default ``<out_html stem>_files/`` beside the page).
        heatmap_layers: Number of layers (those with the most ``sum |LCA|``) given a neuron x iteration map.
        seed: Seed of the random parameters and of the synchronisation baselines.
        progress: Called with one-line messages while working.
        views: Keys of the views to draw (:data:`VIEWS`; default all). The numbers are computed in full
            either way; views that do not apply (input maps of a net that does not read images) are skipped.

    Returns:
        The paths written and the headline numbers.

    Raises:
        LcaError: If matplotlib is not installed.
        StoreError: If the store cannot be read or has no finished iteration in the window.
        UsageError: For a bad set name, window, view, or option value.

    """
    mpl = require_matplotlib()
    only = None if views is None else set(views)
    if only is not None and only - set(VIEWS):
        raise UsageError(f"--view {sorted(only - set(VIEWS))[0]}: expected one of {', '.join(VIEWS)}")
    say = progress or (lambda _msg: None)
    if heatmap_layers < 0:
        raise UsageError(f"heatmap_layers={heatmap_layers} must be >= 0")
    if steps is not None and (len(steps) != 2):
        raise UsageError(f"--steps must be A:B (got {steps!r})")
    store = open_store(store_path)
    sets, chosen = _resolve_sets(store, set_names)
    t_start = time.perf_counter()
    data: list[SetData] = []
    notes: dict[str, str] = {}
    for i, s in enumerate(sets):
        try:
            data.append(gather_set(store, s, steps))
        except (StoreError, UsageError) as exc:
            if i == 0 or chosen:
                raise
            notes[s] = str(exc)  # a held-out set not computed yet: shown as a note, not an error
    out, pdir = _output_folders(out_html, png_dir)

    # -- streaming passes -------------------------------------------------------------------------------
    main = data[0]
    # lca's columns as stored: one per parameter, or per neuron / tensor (--granularity), or some tensors' and an
    # (other) column (--params). The views that read them use this layout, at the resolution stored.
    layout = store.column_layout
    for d in data:
        say(f"set {d.name}: {d.sel.n} iterations (steps {int(d.sel.start_steps[0])}..{int(d.sel.end_steps[-1])})")
        d.stats = scan_parameters(store, d.sel, progress=say, label=f"set {d.name}: pass 1/2 (per-parameter totals)")
        d.conc = concentration(d.stats.total)
        _layer_statistics(store, d, layout)
    assert main.stats is not None
    cols, kinds = select_parameters(main.stats, 5, 5, 5, seed)
    ranked = rank_neuron_groups(layout, main.stats)
    groups = sorted(gi for gi, _ in ranked[:heatmap_layers])
    # Rows of every map sorted by the headline set's per-unit totals, most helpful first, in every set.
    orders = [np.argsort(neuron_totals(layout, main.stats.total, g), kind="stable") for g in groups]
    for d in data:
        d.traj, d.maps = scan_selected(
            store, d.sel, cols, groups, orders=orders, progress=say,
            label=f"set {d.name}: pass 2/2 (trajectories, heat maps)",
        )  # fmt: skip
    say("synchronisation baselines")
    for d in data:
        d.sync = sync_analysis(d.layer_names, d.per_layer, tolerance=1, n_shuffles=1000, seed=seed)
    labels = [parameter_label(layout, int(c)) for c in cols]
    numbers = _numbers(store, data, cols, kinds, labels, notes)

    # -- figures ----------------------------------------------------------------------------------------
    output_group = len(layout.neurons()) - 1
    inputs = _input_maps(store)
    makers: dict[str, Callable[[], View | None]] = {
        "loss": lambda: _view_loss(pdir, data),
        "composition": lambda: _view_composition(pdir, data),
        "helped_hist": lambda: _view_helped_histograms(pdir, data),
        "values": lambda: _view_values(pdir, data),
        "layers": lambda: _view_layers(pdir, data),
        "layer_shares": lambda: _view_layer_shares(pdir, data),
        "cumulative": lambda: _view_cumulative(pdir, data),
        "milestones": lambda: _view_milestones(pdir, data),
        "concentration": lambda: _view_concentration(pdir, data),
        "heatmaps": lambda: _view_heatmaps(pdir, data, groups, output_group) if main.maps else None,
        "input_maps": lambda: _view_input_maps(pdir, data, *inputs) if inputs is not None else None,
        # No parameter to follow when none moved (every LCA exactly 0; the composition caption says so).
        "trajectories": lambda: _view_trajectories(pdir, data, labels, kinds) if kinds else None,
        "sync": lambda: _view_sync(pdir, data),
    }
    drawn: list[View] = []
    with mpl.rc_context(STYLE):
        say("drawing")
        for key in VIEWS:
            if only is None or key in only:
                view = makers[key]()
                if view is not None:
                    drawn.append(view)
    numbers["seconds"] = round(time.perf_counter() - t_start, 3)
    page = _page(store, data, numbers, drawn, notes)
    out.write_text(page, encoding="utf-8")
    say(f"wrote {out} ({len(drawn)} figures in {pdir})")
    return ReportResult(out, [v.png for v in drawn], numbers)


# --------------------------------------------------------------------------------------------------------
# numbers


def _f(x: float | np.floating[Any] | None) -> float | None:
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _sync_numbers(r: SyncResult, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}_tested": r.tested,
        f"{prefix}_reason": r.reason,
        f"{prefix}_observed": _f(r.observed),
        f"{prefix}_baseline_mean": _f(r.baseline_mean),
        f"{prefix}_baseline_sd": _f(r.baseline_sd),
        f"{prefix}_p_value": _f(r.p_value),
        f"{prefix}_p_text": r.p_text(),
        f"{prefix}_shuffles": r.n_shuffles,
        f"{prefix}_pairs": r.pairs,
        f"{prefix}_passes": r.passes,
    }


def _set_numbers(store: LcaStore, d: SetData) -> dict[str, Any]:
    """JSON-ready numbers of one set."""
    assert d.stats is not None and d.conc is not None and d.sync is not None and d.layer_conc is not None
    c = d.curves
    helped, zero, hurt = d.comp.shares()
    frac_nz = d.comp.nonzero_fraction()
    frac_param = d.stats.helped_fraction
    moved = np.isfinite(frac_param)
    totals = d.totals
    flagged_steps = [int(x) for x in d.sel.start_steps[c.flagged]]
    h = d.stats.histogram
    lh, lz, lu = d.lcomp.shares()
    sync = d.sync
    out = {
        "set": d.name,
        "n_iterations": d.sel.n,
        "n_not_done_in_window": d.sel.n_skipped,
        "first_step": int(d.sel.start_steps[0]),
        "last_step": int(d.sel.end_steps[-1]),
        "window": [d.sel.window[0], d.sel.window[1]],
        "n_params": store.layout.size,
        "delta_loss": float(c.delta_loss.sum()),
        "sum_lca": float(c.lca_sum.sum()),
        "sum_buffer_lca": float(c.buffer_lca.sum()),
        "sum_residual": float(c.residual.sum()),
        "max_abs_residual": float(np.abs(c.residual).max()),
        "integration_error": d.error,
        "flagged": len(flagged_steps),
        "flagged_steps": flagged_steps[:50],
        "mean_splits": float(c.splits.mean()),
        "helped_share_mean": _f(helped.mean()),
        "zero_share_mean": _f(zero.mean()),
        "hurt_share_mean": _f(hurt.mean()),
        "helped_fraction_mean": _f(_nanmean(frac_nz)),
        "helped_fraction_per_parameter_median": _f(np.median(frac_param[moved])) if moved.any() else None,
        "params_never_moved": int((~moved).sum()),
        "zero_entries": h.zeros,
        "concentration_50": _f(d.conc.shares[0]),
        "concentration_90": _f(d.conc.shares[1]),
        "layer_totals": {n: float(t) for n, t in zip(d.layer_names, totals, strict=True)},
        "layer_helped": dict(zip(d.layer_names, np.asarray(d.layer_neg).tolist(), strict=True)),
        "layer_hurt": dict(zip(d.layer_names, np.asarray(d.layer_pos).tolist(), strict=True)),
        "layer_verdicts": dict(zip(d.layer_names, d.verdicts, strict=True)),
        "layers_hurting": [n for n, v in zip(d.layer_names, d.verdicts, strict=True) if v == "hurts"],
        "layers_positive": [n for n, t in zip(d.layer_names, totals, strict=True) if t > 0],
        "layer_helped_share": dict(zip(d.layer_names, lh.tolist(), strict=True)),
        "layer_zero_share": dict(zip(d.layer_names, lz.tolist(), strict=True)),
        "layer_hurt_share": dict(zip(d.layer_names, lu.tolist(), strict=True)),
        "layer_step_50": {
            n: (int(d.sel.end_steps[p]) if p >= 0 else None)
            for n, p in zip(d.layer_names, d.milestones[0], strict=True)
        },
        "layer_step_90": {
            n: (int(d.sel.end_steps[p]) if p >= 0 else None)
            for n, p in zip(d.layer_names, d.milestones[1], strict=True)
        },
        "layer_concentration_90": {n: _f(v) for n, v in zip(d.layer_names, d.layer_conc[1], strict=True)},
        "peaks_per_layer": {n: len(p) for n, p in zip(d.layer_names, sync.peaks, strict=True)},
        "sync_peak_rule": sync.rule,
        "sync_tolerance": sync.shift.tolerance,
        **_sync_numbers(sync.shift, "sync"),
        **_sync_numbers(sync.controlled_shift, "sync_controlled"),
    }
    return out


def _numbers(
    store: LcaStore,
    data: list[SetData],
    cols: np.ndarray,
    kinds: list[str],
    labels: list[str],
    notes: dict[str, str],
) -> dict[str, Any]:
    per_set = {d.name: _set_numbers(store, d) for d in data}
    main = data[0]
    assert main.traj is not None
    flips, hurt_shares = [], []
    for j, k in enumerate(kinds):
        v = main.traj[:, j]
        nz = v[v != 0]
        if k == "random" and len(nz) > 1:
            flips.append(float(np.mean(np.sign(nz[1:]) != np.sign(nz[:-1]))))
            hurt_shares.append(float(np.mean(nz > 0)))
    params = []
    for j, (lab, k, c) in enumerate(zip(labels, kinds, cols, strict=True)):
        v = main.traj[:, j]
        params.append(
            {
                "name": lab,
                "kind": k,
                "column": int(c),
                "total": float(v.sum()),
                "helped_iterations": int((v < 0).sum()),
                "hurt_iterations": int((v > 0).sum()),
                "zero_iterations": int((v == 0).sum()),
            }
        )
    return {
        **per_set[main.name],
        "store": str(store.path),
        "sets": list(store.sets),
        "sets_drawn": [d.name for d in data],
        "sets_not_drawn": notes,
        "heatmap_layers": [m.name for m in main.maps],
        "parameters": params,
        "random_sign_flip_rate": _f(np.mean(flips)) if flips else None,
        "random_hurt_share_median": _f(np.median(hurt_shares)) if hurt_shares else None,
        "helped_rule": str(store.attrs.get("helped_rule", HELPED_RULE)),
        "significance_rule": SIGNIFICANCE_RULE,
        "per_set": per_set,
    }


# --------------------------------------------------------------------------------------------------------
# drawing helpers


def _columns(fig: Any, n: int, **kw: Any) -> list[Axes]:
    return list(np.atleast_1d(fig.subplots(1, n, squeeze=False, **kw)[0]))


def _binned(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` (and ``x``) in at most ``max_points`` bins along axis 0."""
    if len(x) <= max_points:
        return x, y
    e = bin_edges(len(x), max_points)
    cnt = np.diff(e).astype(np.float64)
    xs = np.add.reduceat(np.asarray(x, np.float64), e[:-1]) / cnt
    ys = np.add.reduceat(np.asarray(y, np.float64), e[:-1], axis=0) / (cnt if y.ndim == 1 else cnt[:, None])
    return xs, ys


def _thinned(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point (always the first and the last) of a smooth series such as a cumulative sum."""
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.concatenate([np.linspace(0, len(x) - 1, max_points).astype(np.int64), [0, len(x) - 1]]))
    return x[idx], y[idx]


#: Roles of the usual evaluation-set names, shown beside them in titles.
_ROLES = {"train": "training set", "val": "held-out set", "valid": "held-out set", "test": "held-out set"}


def _set_title(d: SetData, first: str) -> str:
    """``set 'val' (held-out set)``; ``first`` (the headline set) is accepted for symmetry and unused."""
    del first
    role = _ROLES.get(d.name, "")
    return f"set '{d.name}'" + (f" ({role})" if role else "")


def _nanmean(x: np.ndarray) -> float:
    """Mean ignoring NaN entries; NaN (without numpy's warning) when every entry is NaN, e.g. when nothing moved."""
    return float(np.nanmean(x)) if not np.isnan(x).all() else float("nan")


def _pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _by_set(data: list[SetData], text: Callable[[SetData], str]) -> str:
    """``train: X; val: Y`` (or just ``X`` for one set)."""
    if len(data) == 1:
        return text(data[0])
    return "; ".join(f"{d.name}: {text(d)}" for d in data)


def _paper(paper: str, run: str) -> str:
    return f"Paper: {paper} This run: {run}"


# --------------------------------------------------------------------------------------------------------
# the views


def _view_loss(pdir: Path, data: list[SetData]) -> View:
    n = len(data)
    fig = figure(4.2 * n + 1.4, 4.6)
    axes = fig.subplots(2, n, squeeze=False, sharex="col", height_ratios=[2, 1])
    for col, d in enumerate(data):
        ax1, ax2 = axes[0, col], axes[1, col]
        c = d.curves
        for g in np.unique(c.segment):
            m = c.segment == g
            xs, ys = _thinned(c.steps[m], np.stack([c.true_loss[m], c.reconstructed[m]], axis=1))
            ax1.plot(xs, ys[:, 0], color=NET_COLOR, lw=1.6, label="true loss" if g == 0 else None)
            ax1.plot(xs, ys[:, 1], color=RECON_COLOR, lw=1.2, ls="--",
                     label="loss[start] + cumulative Σ LCA" if g == 0 else None)  # fmt: skip
        ax1.set_title(f"{_set_title(d, data[0].name)}: ΔL = {fmt(float(c.delta_loss.sum()))}")
        if col == 0:
            ax1.set_ylabel("loss (loss units)")
        x = d.sel.start_steps
        xr, rr = _binned(x, c.residual)
        ax2.plot(xr, rr, color=NEUTRAL_COLOR, lw=0.8, marker="." if len(xr) <= 200 else None, ms=3,
                 label="residual per iteration")  # fmt: skip
        ax2.axhline(0, color="black", lw=0.6)
        if c.flagged.any():
            many = int(c.flagged.sum()) > 40
            ax2.plot(x[c.flagged], c.residual[c.flagged], ls="none", marker="." if many else "x", color=HURT_COLOR,
                     ms=4 if many else 6, label="over tolerance at the cap")  # fmt: skip
        step_axis(ax2)
        ax2.set_title(f"Σ|residual| = {fmt(d.error, 3)}, max |r| = {fmt(float(np.abs(c.residual).max()), 3)}",
                      fontsize=9)  # fmt: skip
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if col == 0:
            ax2.set_ylabel("residual\nΔL − Σ LCA")
    handles, labs = axes[0, 0].get_legend_handles_labels()
    h2, l2 = [], []
    for ax in axes[1]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in l2:
                h2.append(h)
                l2.append(lab)
    fig.legend(handles + h2, labs + l2, loc="outside lower center", ncol=4)
    png = save_png(fig, pdir / "01_loss.png")
    main = data[0]
    run = _by_set(
        data,
        lambda d: (
            f"ΔL {fmt(float(d.curves.delta_loss.sum()))}, Σ LCA {fmt(float(d.curves.lca_sum.sum()))}, "
            f"integration error Σ|residual| {fmt(d.error, 3)} "
            f"({_pct(d.error / max(abs(float(d.curves.delta_loss.sum())), 1e-300), 2)} of |ΔL|), "
            f"{int(d.curves.flagged.sum())} pairs over tolerance"
        ),
    )
    caption = (
        "Top: the loss on each evaluation set at every checkpoint (black) and the loss rebuilt from the "
        "allocations alone, the starting loss plus the running sum of all parameters' LCA (dashed). LCA is "
        "complete: its terms add up to the loss change, so the curves should coincide. Bottom: what is left "
        "over on each iteration (the integration error); red marks are iterations still over tolerance when "
        "refinement hit its cap. The summed |residual| is this run's scale of significance: a layer's total "
        "smaller than it cannot be told from zero. "
        + _paper(
            "the allocations add up to the loss change to within an absolute tolerance of 1e-3 per iteration "
            "(up to 32 sub-intervals; iterations still above it at the cap were accepted silently).",
            run + ".",
        )
    )
    if main.sel.n_skipped:
        caption += (
            f" {main.sel.n_skipped} unfinished iterations in the window are left out; the reconstruction "
            "restarts from the true loss after each gap."
        )
    return View("loss", "True vs reconstructed loss", png, caption)


def _view_composition(pdir: Path, data: list[SetData]) -> View:
    n = len(data)
    fig = figure(4.2 * n + 1.6, 3.8)
    axes = _columns(fig, n, sharey=True)
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        helped, zero, hurt = d.comp.shares()
        x = d.sel.start_steps
        # Shares averaged in at most 300 bins: per-iteration noise over thousands of iterations hides the trend.
        xb, yb = _binned(x, np.stack([helped, zero, hurt], axis=1), 300)
        ax.stackplot(xb, 100 * yb[:, 0], 100 * yb[:, 1], 100 * yb[:, 2],
                     colors=[HELPED_COLOR, ZERO_COLOR, HURT_COLOR], alpha=0.85, lw=0)  # fmt: skip
        xf, ff = _binned(x, d.comp.nonzero_fraction(), 300)
        ax.plot(xf, 100 * ff, color="white", lw=1.4, ls="--")
        ax.plot(xf, 100 * ff, color=NET_COLOR, lw=0.8, ls="--", label="helped / (helped + hurt), zeros excluded")
        ax.axhline(50, color="white", lw=0.8, ls=":")
        ax.set_ylim(0, 100)
        step_axis(ax)
        ax.set_title(_set_title(d, data[0].name))
        ax.grid(False)
        if col == 0:
            ax.set_ylabel("% of all parameters")
        twin = ax.twinx()
        c = d.curves
        xs, ls = _thinned(c.steps, c.true_loss)
        twin.plot(xs, ls, color="black", lw=1.6, label="loss (right axis)")
        twin.set_ylim(bottom=0)
        twin.grid(False)
        twin.spines["right"].set_visible(True)
        if col == n - 1:
            twin.set_ylabel("loss")
    handles = helped_hurt_handles(zero=True)
    extra = [*axes[0].get_legend_handles_labels()[0]]
    from matplotlib.lines import Line2D

    extra.append(Line2D([], [], color="black", lw=1.6, label="loss (right axis)"))
    fig.legend(handles=handles + extra, loc="outside lower center", ncol=5, fontsize=7.5)
    png = save_png(fig, pdir / "02_composition.png")
    run = _by_set(
        data,
        lambda d: (
            f"on an average iteration {_pct(float(d.comp.shares()[0].mean()))} of all parameters helped, "
            f"{_pct(float(d.comp.shares()[1].mean()))} were exactly zero and {_pct(float(d.comp.shares()[2].mean()))} "
            f"hurt; of the nonzero ones {_pct(_nanmean(d.comp.nonzero_fraction()))} helped"
        ),
    )
    main = data[0]
    frac = _nanmean(main.comp.nonzero_fraction())
    late_mean = _nanmean(main.comp.nonzero_fraction()[main.sel.n // 2 :])
    verdict = (
        " — no parameter moved"
        if not math.isfinite(frac)
        else " — close to the paper's barely-over-half"
        if 0.5 < frac < 0.6
        else (
            " — more than the paper's barely-over-half; short runs weigh the steep early phase, when most "
            f"parameters move downhill together (second half of this window: {_pct(late_mean)})"
            if frac >= 0.6
            else " — not more than half"
        )
    )
    caption = (
        "On each iteration, the share of all parameters that helped (blue, LCA < 0), did nothing (grey, LCA "
        "exactly 0: did not move, or zero gradient, such as weights of always-black input pixels) and hurt "
        "(red), stacked to 100%; the dashed line is the other convention, the helped fraction among nonzero "
        "parameters; the black line is the loss (right axis). Runs longer than 300 iterations are shown as "
        "means over bins of consecutive iterations. "
        + _paper(
            "barely over 50% of parameters help on any iteration (shares of all parameters).",
            run + verdict + ".",
        )
    )
    return View("composition", "Helped, zero and hurt per iteration, with the loss", png, caption)


def _view_helped_histograms(pdir: Path, data: list[SetData]) -> View:
    n = len(data)
    fig = figure(4.0 * n + 1.0, 4.6)
    axes = fig.subplots(2, n, squeeze=False)
    for col, d in enumerate(data):
        assert d.stats is not None
        a1, a2 = axes[0, col], axes[1, col]
        helped, _, _ = d.comp.shares()
        frac = d.comp.nonzero_fraction()
        ok = frac[np.isfinite(frac)]
        bins = np.linspace(0, 1, 41)
        a1.hist(helped, bins=bins, color=HELPED_COLOR, alpha=0.5, histtype="stepfilled",
                label="share of all parameters")  # fmt: skip
        a1.hist(ok, bins=bins, color=HELPED_COLOR, histtype="step", lw=1.4, label="share of nonzero ones")
        a1.axvline(0.5, color=NET_COLOR, ls=":", lw=1)
        a1.set_xlabel("parameters helping on an iteration")
        a1.set_title(f"{_set_title(d, data[0].name)}: per iteration", fontsize=9)
        fp = d.stats.helped_fraction
        fp = fp[np.isfinite(fp)]
        a2.hist(fp, bins=bins, color=HELPED_COLOR, alpha=0.85, histtype="stepfilled")
        a2.axvline(0.5, color=NET_COLOR, ls=":", lw=1)
        a2.set_xlabel("share of its nonzero iterations a parameter helped")
        a2.set_title(f"per parameter ({len(fp):,} that moved the loss)", fontsize=9)
        if col == 0:
            a1.set_ylabel("iterations")
            a2.set_ylabel("parameters")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
    png = save_png(fig, pdir / "03_helped_histograms.png")

    def per_param(d: SetData) -> str:
        assert d.stats is not None
        fp = d.stats.helped_fraction
        fp = fp[np.isfinite(fp)]
        mid = float(np.mean((fp >= 0.4) & (fp <= 0.6))) if fp.size else float("nan")
        med = float(np.median(fp)) if fp.size else float("nan")
        return f"median parameter helped on {_pct(med)} of its nonzero iterations, {_pct(mid)} of parameters in 40-60%"

    caption = (
        "Top: how the share of parameters helping is distributed over iterations, in both conventions (all "
        "parameters, filled; nonzero ones, outline). Bottom: for each parameter, the share of its nonzero "
        "iterations on which it helped (parameters that never moved the loss are left out). "
        + _paper(
            "each parameter helps on about half of the iterations (a noisy, coin-flip-like process).",
            _by_set(data, per_param) + ".",
        )
    )
    return View("helped_hist", "How often parameters help", png, caption)


def _view_values(pdir: Path, data: list[SetData]) -> View:
    n = len(data)
    fig = figure(4.0 * n + 1.0, 3.2)
    axes = _columns(fig, n, sharey=True)
    edges = None
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        assert d.stats is not None
        h = d.stats.histogram
        edges = h.EDGES
        total = max(h.total, 1)
        nz = np.flatnonzero((h.negative + h.positive)[1:]) + 1  # bin 0 holds zeros/subnormals
        if nz.size:
            lo, hi = int(nz[0]), int(nz[-1]) + 1
            # Bins alternate between factors 1.5 and 1.33: divide by each bin's width in decades (a density).
            decades = np.log10(edges[lo + 1 : hi + 1] / edges[lo:hi])
            x = np.repeat(edges[lo : hi + 1], 2)[1:-1]  # stairs drawn from the exact bin edges
            for counts, color, lab in ((h.negative, HELPED_COLOR, "helped (LCA < 0)"),
                                       (h.positive, HURT_COLOR, "hurt (LCA > 0)")):  # fmt: skip
                dens = np.repeat(100 * counts[lo:hi] / total / decades, 2)
                ax.plot(x, dens, color=color, lw=1.3, label=lab)
            ax.set_xscale("log")
        ax.set_xlabel("|LCA| of one parameter on one iteration (loss units)")
        zero_share = h.zeros / total
        ax.set_title(f"{_set_title(d, data[0].name)}: {h.total:,} values, {_pct(zero_share)} exactly 0", fontsize=9)
        if col == 0:
            ax.set_ylabel("% of all values\nper decade of |LCA|")
    handles = helped_hurt_handles()
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    png = save_png(fig, pdir / "04_values.png")

    def describe(d: SetData) -> str:
        assert d.stats is not None
        h = d.stats.histogram
        m = h.negative + h.positive
        if not m[1:].any() or edges is None:
            return "no nonzero values"
        cdf = np.cumsum(m) / m.sum()
        med = edges[int(np.searchsorted(cdf, 0.5)) + 1]
        p99 = edges[int(np.searchsorted(cdf, 0.99)) + 1]
        zeros = _pct(h.zeros / max(h.total, 1))
        return f"median |LCA| about {fmt(float(med), 2)}, 99% below {fmt(float(p99), 2)}, {zeros} exactly 0"

    caption = (
        "Every LCA value of the window (one per parameter and iteration) by magnitude on a log scale, helped "
        "(blue) and hurt (red) apart; exact zeros are counted separately in the titles. Values span many "
        "orders of magnitude, so a few large allocations carry most of each iteration's loss change while most "
        "are tiny. This run: " + _by_set(data, describe) + "."
    )
    return View("values", "All LCA values (log scale)", png, caption)


def _net_label_colours(ax: Axes, verdicts: Sequence[str]) -> None:
    for lab, v in zip(ax.get_yticklabels(), verdicts, strict=True):
        if v == "hurts":
            lab.set_color(HURT_COLOR)
            lab.set_fontweight("bold")
        elif v == "within error":
            lab.set_color(NEUTRAL_COLOR)
            lab.set_fontstyle("italic")


def _layer_height(n_layers: int) -> float:
    return max(2.6, 0.24 * n_layers + 1.5)


def _layer_axes(n_sets: int, n_layers: int, extra_width: float = 0.0) -> tuple[Any, list[Axes]]:
    fig = figure(3.6 * n_sets + 1.6 + extra_width, _layer_height(n_layers))
    return fig, _columns(fig, n_sets, sharey=True)


def _layer_ticks(ax: Axes, names: Sequence[str], verdicts: Sequence[str] | None = None) -> None:
    y = np.arange(len(names))
    ax.set_yticks(y, list(names))
    if verdicts is not None:
        _net_label_colours(ax, verdicts)
    ax.set_ylim(len(names) - 0.5, -0.5)  # input side at the top
    ax.grid(axis="y", visible=False)


def _view_layers(pdir: Path, data: list[SetData]) -> View:
    names = data[0].layer_names
    fig, axes = _layer_axes(len(data), len(names), 0.6)
    y = np.arange(len(names))
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        neg, pos = np.asarray(d.layer_neg), np.asarray(d.layer_pos)
        net = d.totals
        ax.barh(y, neg, color=HELPED_COLOR, height=0.7, label="helped: Σ of all negative LCA entries")
        ax.barh(y, pos, color=HURT_COLOR, height=0.7, label="hurt: Σ of all positive LCA entries")
        ax.errorbar(net, y, xerr=d.error, fmt="D", color=NET_COLOR, ms=4, capsize=2.5, lw=1,
                    label="net total ± integration error Σ|residual|")  # fmt: skip
        ax.axvline(0, color="black", lw=0.8)
        if col == 0:
            _layer_ticks(ax, names, d.verdicts)
            ax.set_ylabel("layer (input side at top)")
        ax.set_xlabel("LCA over the window (loss units)")
        ax.set_title(_set_title(d, data[0].name), fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
    png = save_png(fig, pdir / "05_layers.png")

    def run(d: SetData) -> str:
        v = d.verdicts
        hurting = [n for n, x in zip(d.layer_names, v, strict=True) if x == "hurts"]
        unclear = [n for n, x in zip(d.layer_names, v, strict=True) if x == "within error"]
        first, last = d.layer_names[0], d.layer_names[-1]
        t = d.totals
        text = (
            f"first layer {first} {fmt(float(t[0]), 3)} ({v[0]}), last layer {last} {fmt(float(t[-1]), 3)} "
            f"({v[-1]}); layers that hurt beyond the integration error {fmt(d.error, 2)}: "
            f"{', '.join(hurting) if hurting else 'none'}"
        )
        if unclear:
            text += f"; within error (no sign can be given): {', '.join(unclear)}"
        return text

    caption = (
        "For each layer, the blue bar sums every negative LCA entry of its parameters over the window "
        "(everything that lowered the loss), the red bar every positive one, and the diamond is the layer's net "
        "total, with the "
        "run's integration error (summed |residual|) as error bar. A layer helps or hurts only when its net "
        "total exceeds that error; names in red bold hurt, grey italic are within error. Bars much longer than "
        "the net show how much of the work cancels out. "
        + _paper("in ResNet-20 on CIFAR-10 the first and the last layer hurt overall.", _by_set(data, run) + ".")
    )
    return View("layers", "Per-layer totals: helped, hurt, net (with the integration error)", png, caption)


def _view_layer_shares(pdir: Path, data: list[SetData]) -> View:
    names = data[0].layer_names
    fig, axes = _layer_axes(len(data), len(names))
    y = np.arange(len(names))
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        h, z, u = d.lcomp.shares()
        ax.barh(y, 100 * h, color=HELPED_COLOR, height=0.75)
        ax.barh(y, 100 * z, left=100 * h, color=ZERO_COLOR, height=0.75)
        ax.barh(y, 100 * u, left=100 * (h + z), color=HURT_COLOR, height=0.75)
        ax.plot(100 * d.lcomp.nonzero_fraction(), y, ls="none", marker="|", ms=9, mew=2, color="black",
                label="helped / (helped + hurt), zeros excluded")  # fmt: skip
        ax.axvline(50, color="white", lw=1, ls=":")
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of the layer's parameters x iterations")
        ax.set_title(_set_title(d, data[0].name), fontsize=9)
        if col == 0:
            _layer_ticks(ax, names)
    fig.legend(handles=[*helped_hurt_handles(zero=True), *axes[0].get_legend_handles_labels()[0]],
               loc="outside lower center", ncol=4)  # fmt: skip
    png = save_png(fig, pdir / "06_layer_shares.png")

    def run(d: SetData) -> str:
        f = d.lcomp.nonzero_fraction()
        ok = np.isfinite(f)
        if not ok.any():
            return "no layer moved the loss"
        lo, hi = int(np.nanargmin(f)), int(np.nanargmax(f))
        _, z, _ = d.lcomp.shares()
        zmax = int(np.argmax(z))
        return (
            f"helped (nonzero) from {_pct(float(f[lo]))} ({d.layer_names[lo]}) to {_pct(float(f[hi]))} "
            f"({d.layer_names[hi]}); most exact zeros in {d.layer_names[zmax]} ({_pct(float(z[zmax]))})"
        )

    caption = (
        "Per layer, the share of its parameter-iterations that helped (blue), were exactly zero (grey) and hurt "
        "(red); the black tick is the helped fraction among the nonzero ones. "
        + _paper(
            "barely over half of all parameters help on an iteration (reported for the network as a whole).",
            _by_set(data, run) + ".",
        )
    )
    return View("layer_shares", "Helped, zero and hurt per layer", png, caption)


def _view_cumulative(pdir: Path, data: list[SetData]) -> View:
    names = data[0].layer_names
    n = len(data)
    fig = figure(3.9 * n + 2.6, 4.2)
    axes = _columns(fig, n, sharey=True)
    keep = highlighted_layers(data[0].totals)
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        x = np.concatenate([d.sel.start_steps[:1], d.sel.end_steps])
        xs, cs = _thinned(x, cumulative(d.per_layer))
        cumulative_layers(ax, xs, cs, names, keep)
        ax.set_title(_set_title(d, data[0].name), fontsize=9)
        step_axis(ax)
        sign_hints(ax)
        if col == 0:
            ax.set_ylabel("cumulative LCA (loss units)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper",
               title="layer (dark = input side)", fontsize=7.5)  # fmt: skip
    png = save_png(fig, pdir / "07_cumulative.png")
    many = len(names) > len(keep)
    caption = (
        "Each line is one layer's running total of LCA from 0 at the first checkpoint; going down = lowering the "
        "loss. Colour is depth (dark = input side, yellow = output side), the same in every panel; the dashed "
        "black line is the whole network (it follows the loss). Where a line flattens that layer has stopped "
        "contributing; a line ending above zero belongs to a layer that hurt overall (see the previous figure "
        "for whether that exceeds the integration error)."
        + (
            f" With {len(names)} layers, only the first, the last and the largest ({len(keep)}) are coloured and "
            "named; the others are thin grey lines."
            if many
            else ""
        )
    )
    if n > 1:
        caption += (
            " Side by side, the same parameters' allocations on each evaluation set: a layer that keeps lowering "
            "the training loss while its held-out line flattens or rises is where learning stops generalising."
        )
        main, other = data[0], data[1]
        caption += (
            " This run: Σ LCA "
            + "; ".join(f"{d.name} {fmt(float(d.totals.sum()), 3)}" for d in data)
            + f"; the layer with the largest gap ({main.name} − {other.name}): "
            + (lambda gap: f"{names[int(np.argmax(np.abs(gap)))]} ({fmt(float(gap[int(np.argmax(np.abs(gap)))]), 3)})")(
                main.totals - other.totals
            )
            + "."
        )
    return View("cumulative", "Cumulative LCA per layer over time", png, caption)


def _view_milestones(pdir: Path, data: list[SetData]) -> View:
    names = data[0].layer_names
    fig, axes = _layer_axes(len(data), len(names))
    colors = layer_colors(len(names))
    y = np.arange(len(names))
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        ends = d.sel.end_steps
        p50, p90 = d.milestones
        ok = p50 >= 0
        s50 = np.where(ok, ends[np.maximum(p50, 0)], np.nan).astype(np.float64)
        s90 = np.where(ok, ends[np.maximum(p90, 0)], np.nan).astype(np.float64)
        ax.hlines(y[ok], s50[ok], s90[ok], color=[colors[j] for j in np.flatnonzero(ok)], lw=2.5)
        ax.scatter(s50[ok], y[ok], facecolors="white", edgecolors=[colors[j] for j in np.flatnonzero(ok)], s=30,
                   zorder=3, label="50% of its learning done")  # fmt: skip
        ax.scatter(s90[ok], y[ok], c=[colors[j] for j in np.flatnonzero(ok)], s=30, zorder=3,
                   label="90% done")  # fmt: skip
        for j in np.flatnonzero(~ok):
            ax.text(float(ends[0]), float(j), "  did not learn overall", va="center", fontsize=7, color=HURT_COLOR)
        ax.set_xlim(float(d.sel.start_steps[0]), float(ends[-1]))
        step_axis(ax, "step")
        ax.set_title(_set_title(d, data[0].name), fontsize=9)
        if col == 0:
            _layer_ticks(ax, names, d.verdicts)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="none", marker="o", mfc="white", mec=NET_COLOR, label="50% of the layer's learning done"),
        Line2D([], [], ls="none", marker="o", color=NET_COLOR, label="90% done"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    png = save_png(fig, pdir / "08_milestones.png")

    def run(d: SetData) -> str:
        p50, p90 = d.milestones
        ends = d.sel.end_steps
        ok = np.flatnonzero(p50 >= 0)
        if not ok.size:
            return "no layer learned overall"
        early = ok[int(np.argmin(p90[ok]))]
        late = ok[int(np.argmax(p90[ok]))]
        return (
            f"90% reached first by {names[early]} (step {int(ends[p90[early]])}) and last by {names[late]} "
            f"(step {int(ends[p90[late]])}); median 50% / 90% at steps {int(np.median(ends[p50[ok]]))} / "
            f"{int(np.median(ends[p90[ok]]))}"
        )

    caption = (
        "For each layer, the step by which it had done half (open dot) and 90% (filled) of its net learning "
        "over the window (learning = −LCA, accumulated from the first iteration); layers whose total did not "
        "lower the loss have no milestones. Colour is depth. This run: " + _by_set(data, run) + "."
    )
    return View("milestones", "When each layer learned", png, caption)


def _view_concentration(pdir: Path, data: list[SetData]) -> View:
    names = data[0].layer_names
    n = len(data)
    fig = figure(3.6 * n + 2.6, 3.8)
    axes = _columns(fig, n, sharey=True)
    colors = layer_colors(len(names))
    keep = highlighted_layers(data[0].totals)
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        assert d.conc is not None and d.stats is not None and d.layer_conc is not None
        c = d.conc
        ax.plot(100 * c.curve_x, 100 * c.curve_y, color=NET_COLOR, lw=2, label="whole network")
        for j in keep:
            lc = _layer_curve(d, j)
            if lc is not None:
                ax.plot(100 * lc.curve_x, 100 * lc.curve_y, color=colors[j], lw=1.1, label=names[j])
        for f, share in zip(c.fractions, c.shares, strict=True):
            if math.isfinite(share):
                ax.plot([100 * share], [100 * f], "o", color=NET_COLOR, ms=4)
                ax.annotate(f"{_pct(float(share), 0)} do {int(100 * f)}%", (100 * share, 100 * f),
                            textcoords="offset points", xytext=(6, -10), fontsize=7.5)  # fmt: skip
        ax.plot([0, 100], [0, 100], color=NEUTRAL_COLOR, lw=0.8, ls=":", label="equal shares")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 101)
        ax.set_xlabel("% of parameters, most helpful first")
        ax.set_title(_set_title(d, data[0].name), fontsize=9)
        if col == 0:
            ax.set_ylabel("% of the learning they do")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7.5,
               title="curve (layers: dark = input side)")  # fmt: skip
    png = save_png(fig, pdir / "09_concentration.png")

    def run(d: SetData) -> str:
        assert d.conc is not None and d.layer_conc is not None
        c = d.conc
        lc = d.layer_conc[1]  # (L,) shares of each layer's parameters doing 90% of its learning
        ok = np.isfinite(lc)
        most = int(np.nanargmin(np.where(ok, lc, np.nan))) if ok.any() else None
        text = (
            f"{_pct(float(c.shares[1]))} of the parameters do 90% of the learning, {_pct(float(c.shares[0]))} do half"
        )
        if most is not None:
            text += f"; most concentrated layer {names[most]} ({_pct(float(lc[most]))} of it do 90%)"
        return text

    caption = (
        "Parameters ranked by their net LCA over the window, most helpful first: how much of the learning (the "
        "summed net LCA of the parameters that helped overall) the top x% do, for the whole network (black) "
        "and within each layer (colour = depth). The further a curve bows above the diagonal, the fewer "
        "parameters do the learning. This run: " + _by_set(data, run) + "."
    )
    return View("concentration", "How concentrated learning is", png, caption)


def _layer_curve(d: SetData, j: int) -> Concentration | None:
    """Concentration curve of layer ``j`` from the set's per-parameter totals (None without statistics)."""
    assert d.stats is not None
    spans = d.spans[j] if d.spans is not None else None
    if spans is None:
        return None
    part = np.concatenate([d.stats.total[a:b] for a, b in spans])
    return concentration(part, (0.5, 0.9))


def _view_heatmaps(pdir: Path, data: list[SetData], groups: list[int], output_group: int) -> View:
    from matplotlib.colors import Normalize

    main = data[0]
    n_maps, n = len(main.maps), len(data)
    heights = [max(1.3, min(3.2, 0.02 * m.matrix.shape[0] + 1.0)) for m in main.maps]
    fig = figure(3.9 * n + 1.4, sum(heights) + 1.0)
    axes = fig.subplots(n_maps, n, squeeze=False, height_ratios=heights)
    for r in range(n_maps):
        # One colour scale per layer across the sets, so that train and held-out compare cell by cell.
        vmax = max(float(np.quantile(np.abs(d.maps[r].matrix), 0.99)) if d.maps[r].matrix.size else 0.0 for d in data)
        vmax = vmax or max(float(np.abs(d.maps[r].matrix).max(initial=0)) for d in data) or 1e-12
        is_output = groups[r] == output_group
        for col, d in enumerate(data):
            ax = axes[r, col]
            m = d.maps[r]
            x0, x1 = float(m.step_edges[0]), float(m.step_edges[-1])
            im = ax.imshow(m.matrix, aspect="auto", cmap=DIVERGING_CMAP, norm=Normalize(-vmax, vmax),
                           interpolation="nearest", extent=(x0, x1, m.matrix.shape[0] - 0.5, -0.5))  # fmt: skip
            ax.grid(False)
            per_bin_it = int(np.ceil(d.sel.n / max(1, m.matrix.shape[1])))
            rows_per = int(np.ceil(m.n_neurons / max(1, m.matrix.shape[0])))
            what = "class" if is_output else "unit"
            if m.matrix.shape[0] <= 24 and rows_per == 1 and m.order is not None:
                ticks = [f"{what} {int(u)}" for u in m.order]
                ax.set_yticks(np.arange(len(ticks)), ticks, fontsize=7 if len(ticks) <= 12 else 6.5)
            else:
                ax.set_yticks([])
                ax.set_ylabel(f"{m.n_neurons} {what}s\n(most helpful at top)", fontsize=7.5)
            cols_txt = "1 iteration/column" if per_bin_it == 1 else f"≤{per_bin_it} iterations/column"
            grp = f", {rows_per} units/row" if rows_per > 1 else ""
            ax.set_title(f"{m.name} · set '{d.name}': {cols_txt}{grp}", fontsize=8.5)
            if r == n_maps - 1:
                step_axis(ax)
        cb = fig.colorbar(im, ax=list(axes[r]), pad=0.01, fraction=0.03)
        cb.ax.tick_params(labelsize=7)
        cb.ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        cb.set_label("LCA", fontsize=7.5)
    fig.legend(handles=helped_hurt_handles(), loc="outside lower center", ncol=2)
    png = save_png(fig, pdir / "10_heatmaps.png")

    def run(d: SetData) -> str:
        parts = []
        for r, m in enumerate(d.maps):
            if groups[r] != output_group or m.order is None:
                continue
            per_unit = m.matrix.sum(axis=1)
            if m.matrix.shape[0] == m.n_neurons:
                best, worst = int(m.order[int(np.argmin(per_unit))]), int(m.order[int(np.argmax(per_unit))])
                parts.append(
                    f"output class {best} helped most ({fmt(float(per_unit.min()), 3)}), class {worst} least "
                    f"({fmt(float(per_unit.max()), 3)})"
                )
        return "; ".join(parts) or "see the maps"

    caption = (
        f"The {n_maps} layers with the largest total |LCA| (network order), one row per output unit (its "
        "weights and bias together), rows sorted by the unit's net LCA on the first set shown, most helpful at "
        "the top, in the same order in every panel; the output layer's units are its classes. Each cell is the "
        "unit's LCA summed over a bin of consecutive iterations; blue = helped, red = hurt, white = nothing, "
        "on one scale per layer (clipped at the 99th percentile of |cell|) shared by the sets. Vertical stripes "
        "are many units learning on the same iterations (synchronisation), horizontal stripes a few units "
        "doing most of the work, red-blue alternation along a row oscillation. "
        + _paper(
            "parameters oscillate between helping and hurting (red-blue alternation along a row).",
            _by_set(data, run) + ".",
        )
    )
    return View("heatmaps", "Neuron × iteration heat maps (rows sorted, output units by class)", png, caption)


def _layer_statistics(store: LcaStore, d: SetData, layout: Layout) -> None:
    """Per-layer helped / hurt sums, concentration and column spans of a set, in the model's layer order.

    ``layout`` is the store's column layout (:attr:`LcaStore.column_layout`). Its layers are matched to the
    model's by name: on a per-parameter store they are the same; a layer that ``--params`` left out (in the
    ``(other)`` column) keeps its per-tensor helped / hurt split (``tensor_lca`` is stored for every tensor) and
    has no concentration curve.
    """
    assert d.stats is not None
    layers = layout.layers()
    where = {name: j for j, (name, _) in enumerate(layers)}
    pick = [where.get(n) for n in d.layer_names]
    _, neg, pos = d.stats.by_layer(layout)
    conc = layer_concentration(layout, d.stats.total)[1]
    split = layer_split_from_tensors(store, d.sel) if None in pick else {}
    d.layer_neg = np.array([split[n][0] if j is None else neg[j] for n, j in zip(d.layer_names, pick, strict=True)])
    d.layer_pos = np.array([split[n][1] if j is None else pos[j] for n, j in zip(d.layer_names, pick, strict=True)])
    d.layer_conc = np.stack([[np.nan if j is None else row[j] for j in pick] for row in conc])
    d.spans = [
        None if j is None else [(layout.params[i].offset, layout.params[i].stop) for i in layers[j][1]] for j in pick
    ]


def _input_maps(store: LcaStore) -> tuple[str, tuple[int, int, int], tuple[int, int]] | None:
    """The first layer's weight when it reads a square image (in_features = c x s x s, s >= 8), else None.

    Only when its parameters are stored one per column (a neuron or tensor store has no pixels).

    Returns:
        ``(tensor name, (channels, height, width), (first column, stop))`` of that weight.

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
                    return p.name, (c, s, s), (p.offset, p.stop)
    return None


def _view_input_maps(
    pdir: Path, data: list[SetData], tensor: str, shape: tuple[int, int, int], span: tuple[int, int]
) -> View:
    from matplotlib.colors import Normalize

    c, h, w = shape
    a, b = span
    n = len(data)
    fig = figure(2.9 * n + 1.2, 3.2)
    axes = _columns(fig, n)
    pix: list[np.ndarray] = []
    zero_pixels: list[int] = []
    for d in data:
        assert d.stats is not None
        tot = d.stats.total[a:b].reshape(-1, c * h * w)  # (units, inputs) row-major like the weight
        pix.append(tot.sum(axis=0).reshape(c, h, w).sum(axis=0))  # (h, w): summed over units and channels
        moved = (d.stats.helped + d.stats.hurt)[a:b].reshape(-1, c * h * w).sum(axis=0)
        zero_pixels.append(int((moved.reshape(c, h, w).sum(axis=0) == 0).sum()))
    vmax = max(float(np.abs(p).max()) for p in pix) or 1e-12
    im = None
    for ax, d, img, zp in zip(axes, data, pix, zero_pixels, strict=True):
        im = ax.imshow(img, cmap=DIVERGING_CMAP, norm=Normalize(-vmax, vmax), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"{_set_title(d, data[0].name)}\n{zp} of {h * w} pixels never moved", fontsize=8.5)
    assert im is not None
    cb = fig.colorbar(im, ax=axes, fraction=0.04, pad=0.02)
    cb.set_label("LCA summed over the pixel's weights", fontsize=7.5)
    cb.ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    png = save_png(fig, pdir / "11_input_maps.png")
    main = pix[0].reshape(-1)
    gains = np.sort(-main[main < 0])[::-1]
    k = max(1, main.size // 10)
    share = float(gains[:k].sum() / gains.sum()) if gains.size else float("nan")
    caption = (
        f"The first layer ({tensor}) read as an image ({h}x{w}"
        + (f", {c} channels summed" if c > 1 else "")
        + ", a layout inferred from its input size): each pixel's LCA summed over all the weights attached to "
        "it, over the window, on one colour scale for all sets. Blue pixels are where the first layer's "
        "learning came from; white ones did nothing (the always-black border of MNIST digits has LCA exactly "
        f"0). This run: the 10% most helpful pixels carry {_pct(share)} of the first layer's helpful learning "
        f"on set '{data[0].name}'."
    )
    return View("input_maps", "First-layer input maps (pixels)", png, caption)


_KIND_TITLE = {
    "helpful": "most helpful (most negative total)",
    "harmful": "most harmful (most positive total)",
    "random": "random parameters",
}


def _view_trajectories(pdir: Path, data: list[SetData], labels: list[str], kinds: list[str]) -> View:
    from matplotlib import colormaps

    present = [k for k in ("helpful", "harmful", "random") if k in kinds]
    n = len(data)
    fig = figure(3.1 * n + 2.5, 1.6 * len(present) + 2.0)
    subs: Any = fig.subfigures(2, 1, height_ratios=[1.6 * len(present), 1.9])
    top, bottom = subs[0], subs[1]
    axes = top.subplots(len(present), n, squeeze=False, sharex=True)
    shades = {"helpful": colormaps["Blues"], "harmful": colormaps["Reds"], "random": colormaps["Greys"]}
    for r, k in enumerate(present):
        idx = [j for j, kk in enumerate(kinds) if kk == k]
        for col, d in enumerate(data):
            assert d.traj is not None
            ax = axes[r, col]
            x = np.concatenate([d.sel.start_steps[:1], d.sel.end_steps])
            xs, cs = _thinned(x, cumulative(d.traj[:, idx]))
            for i, j in enumerate(idx):
                shade = shades[k](0.95 - 0.5 * i / max(1, len(idx) - 1))
                ax.plot(xs, cs[:, i], color=shade, lw=1.2, label=labels[j])
            ax.axhline(0, color="black", lw=0.6)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            ax.set_title(f"{_KIND_TITLE[k]} · {_set_title(d, data[0].name)}", fontsize=8.5)
            if col == 0:
                ax.set_ylabel("cumulative LCA")
            if r == len(present) - 1:
                step_axis(ax)
        axes[r, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, handlelength=1.6)
    # Oscillation: per-iteration LCA of the most helpful and of the first random parameter (first set).
    main = data[0]
    assert main.traj is not None
    picks = [kinds.index(k) for k in ("helpful", "random") if k in kinds]
    bax = list(np.atleast_1d(bottom.subplots(1, max(1, len(picks)))))
    n_show = min(main.sel.n, 150)
    for a, j in zip(bax, picks, strict=False):
        v = main.traj[:n_show, j]
        a.vlines(main.sel.start_steps[:n_show], 0, v, colors=np.where(v < 0, HELPED_COLOR, HURT_COLOR).tolist(),
                 lw=1.4)  # fmt: skip
        a.axhline(0, color="black", lw=0.6)
        a.set_title(f"{kinds[j]}: {labels[j]} ({main.name}), per iteration", fontsize=8.5)
        step_axis(a, f"iteration (step), first {n_show}")
        a.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    bax[0].set_ylabel("LCA per iteration")
    bottom.legend(handles=helped_hurt_handles(), loc="outside right center", fontsize=7.5)
    png = save_png(fig, pdir / "12_trajectories.png")

    def run(d: SetData) -> str:
        assert d.traj is not None
        parts = []
        if "helpful" in kinds:
            j = kinds.index("helpful")
            v = d.traj[:, j]
            parts.append(
                f"the most helpful parameter {labels[j]} hurt on {int((v > 0).sum())} of {len(v)} iterations "
                f"(helped on {int((v < 0).sum())})"
            )
        rand = [j for j, k in enumerate(kinds) if k == "random"]
        flips, hurts = [], []
        for j in rand:
            nz = d.traj[:, j][d.traj[:, j] != 0]
            if len(nz) > 1:
                flips.append(float(np.mean(np.sign(nz[1:]) != np.sign(nz[:-1]))))
                hurts.append(float(np.mean(nz > 0)))
        if flips:
            parts.append(
                f"the random parameters hurt on {_pct(float(np.median(hurts)), 0)} of their nonzero iterations "
                "(median) and their sign flips between consecutive nonzero iterations "
                f"{_pct(float(np.mean(flips)), 0)} of the time (50% would be coin flips, more is oscillation)"
            )
        return "; ".join(parts) or "no parameter moved"

    caption = (
        "Running totals of LCA of single parameters, named tensor[index] in full: the 5 with the most negative "
        "total, the 5 with the most positive and 5 random ones that moved, each kind on its own scale (they "
        "differ by orders of magnitude), the same parameters on every set. Bottom: the per-iteration LCA of the "
        "most helpful and of a random parameter, blue when it helped and red when it hurt. "
        + _paper(
            "parameters oscillate, alternating between helping and hurting (phase lag of momentum suggested as the "
            "cause).",
            _by_set(data, run) + ".",
        )
    )
    return View("trajectories", "Single-parameter trajectories", png, caption)


def _view_sync(pdir: Path, data: list[SetData]) -> View:
    names = data[0].layer_names
    n_l, n = len(names), len(data)
    h_top = max(2.6, 0.22 * n_l + 1.2)
    fig = figure(4.0 * n + 1.8, h_top + 2.6)
    subs: Any = fig.subfigures(2, 1, height_ratios=[h_top, 2.6])
    top, bottom = subs[0], subs[1]
    axes = list(np.atleast_1d(top.subplots(1, n, sharey=True, squeeze=False)[0]))
    baxes = list(np.atleast_1d(bottom.subplots(1, n, squeeze=False)[0]))
    colors = layer_colors(n_l)
    for col, d in enumerate(data):
        assert d.sync is not None
        sy = d.sync
        ax = axes[col]
        x = d.sel.start_steps
        tested = set(sy.shift.layers)
        labelled: set[bool] = set()
        for j in range(n_l):
            s = sy.learning[:, j]
            scale = float(np.quantile(np.abs(s), 0.99)) or 1.0
            xb, yb = _binned(x, s / scale)
            base = n_l - 1 - j
            ax.plot(xb, base + 0.42 * np.clip(yb, -1.2, 1.2), color=colors[j], lw=0.8)
            p = sy.peaks[j]
            if not len(p):
                continue
            ok = j in tested
            label = None if ok in labelled else ("peak" if ok else "peak, layer left out (< 3 peaks)")
            ax.plot(x[p], base + 0.42 * np.clip(s[p] / scale, -1.2, 1.2), ls="none", marker="v", ms=3.5,
                    color=NET_COLOR if ok else NEUTRAL_COLOR, label=label)  # fmt: skip
            labelled.add(ok)
        if col == 0:
            ax.set_yticks(np.arange(n_l), names[::-1] if n_l <= 45 else [""] * n_l,
                          fontsize=7 if n_l > 16 else 8)  # fmt: skip
        ax.set_ylim(-0.8, n_l - 0.2)
        ax.grid(axis="y", visible=False)
        step_axis(ax)
        ax.set_title(f"{_set_title(d, data[0].name)}: learning = −LCA per layer, own scale", fontsize=8.5)
        b = baxes[col]
        drew = False
        for r, color, lab in ((sy.shift, NEUTRAL_COLOR, "circular shifts"),
                              (sy.controlled_shift, RECON_COLOR, "step-size controlled, shifts")):  # fmt: skip
            if r.tested and r.n_shuffles:
                b.hist(r.baseline, bins=30, color=color, alpha=0.55, histtype="stepfilled", label=f"baseline: {lab}")
                b.axvline(
                    r.observed,
                    color=color,
                    lw=2.2,
                    label=f"observed ({lab.split(',')[0]}) {r.observed:.3f}, {r.p_text()}",
                )
                drew = True
        if not drew:
            b.text(0.5, 0.5, "no test:\n" + sy.shift.reason.removeprefix("no test: ").replace(" (", "\n("),
                   transform=b.transAxes, ha="center", va="center", fontsize=8.5)  # fmt: skip
            b.set_axis_off()
        else:
            b.legend(loc="upper left", bbox_to_anchor=(0.0, -0.28), fontsize=7, ncol=1)
        b.set_xlabel("mean pairwise peak overlap (Jaccard, ±1 iteration)")
        b.set_title(f"{d.name}: observed vs chance", fontsize=8.5)
    handles, labels = [], []
    for ax in axes:
        for hnd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(hnd)
                labels.append(lab)
    if handles:
        top.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7.5)
    png = save_png(fig, pdir / "13_sync.png")
    main = data[0]
    assert main.sync is not None

    def run(d: SetData) -> str:
        assert d.sync is not None
        s, c = d.sync.shift, d.sync.controlled_shift
        if not s.tested:
            return s.reason
        return (
            f"observed {s.observed:.3f} vs {s.baseline_mean:.3f} ± {s.baseline_sd:.3f} by chance ({s.p_text()}, "
            f"{'passes' if s.passes else 'does not pass'}); step-size controlled: "
            + (
                f"{c.observed:.3f} vs {c.baseline_mean:.3f} ({c.p_text()}, {'passes' if c.passes else 'does not pass'})"
                if c.tested
                else c.reason
            )
        )

    caption = (
        "Top: each layer's learning on each iteration (−LCA of the layer: up = the layer lowered the loss), "
        f"scaled to its own 99th percentile, with its peaks: {main.sync.rule}. Layers with fewer than 3 peaks "
        "are left out of the test (grey marks), and with fewer than 3 layers left there is no test: the "
        "statistic could then take only a few values. Bottom: the statistic, the mean over layer pairs of the "
        "overlap of their peak sets (Jaccard index allowing ±1 iteration), against two baselines. Circular "
        "shifts move each layer's peak train by its own random offset (keeping each layer's peak count and "
        "spacing): they test alignment beyond chance, but not beyond the one driver all layers share, the "
        "optimizer's step, which makes every layer learn much on the same large-step iterations. The "
        "step-size-controlled test removes that: each layer's learning minus its least-squares fit on the "
        "summed learning of all other layers on the same iteration, then the same peaks and shifts; it passes "
        "when groups of layers learn together beyond what the iteration's overall size explains (a burst "
        "shared by every layer looks like a large step and is removed too: a conservative test). p at its "
        "floor is shown as p < 1/(1 + shuffles). "
        + _paper(
            "per-layer learning peaks on the same iterations across layers (synchronisation).", _by_set(data, run) + "."
        )
    )
    table = _sync_table(data)
    return View("sync", "Synchronisation of learning across layers", png, caption, table)


def _sync_table(data: list[SetData]) -> str:
    rows: list[tuple[str, str]] = []
    for d in data:
        assert d.sync is not None
        for label, r, peaks in (
            ("peaks of learning, circular shifts", d.sync.shift, d.sync.peaks),
            ("step-size controlled, circular shifts", d.sync.controlled_shift, d.sync.controlled_peaks),
        ):
            key = f"{d.name}: {label}"
            if not r.tested:
                rows.append((key, r.reason))
                continue
            rows.append(
                (
                    key,
                    f"observed {fmt(r.observed)} vs baseline {fmt(r.baseline_mean)} ± {fmt(r.baseline_sd)} "
                    f"(ratio {fmt(r.ratio, 3)}, {r.p_text()}, {r.n_shuffles} shuffles, {r.pairs} layer pairs); "
                    f"{'passes' if r.passes else 'does not pass'} (p < 0.05 and above the baseline); peaks per layer: "
                    + ", ".join(str(len(p)) for p in peaks),
                )
            )
    return _table(rows)


# --------------------------------------------------------------------------------------------------------
# the page


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;
  background:#fafafa;line-height:1.45}
main{max-width:980px;margin:0 auto;padding:16px 24px 48px;background:#fff}
h1{font-size:1.5em;margin:.4em 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0 0 1em;word-break:break-all}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
td,th{padding:3px 10px;border-bottom:1px solid #eee;vertical-align:top;text-align:left}
th{font-weight:600;color:#444;white-space:nowrap}
td.num{font-variant-numeric:tabular-nums}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;margin-top:.3em}
blockquote{margin:.5em 0;padding:.4em .8em;border-left:4px solid #2166ac;background:#f3f6fa;font-size:.92em}
.key span{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;margin:0 .3em 0 .8em}
nav ol{columns:2;font-size:.92em}
.warn{color:#b2182b;font-weight:600}
code{font-size:.92em}
"""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td class=num>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _describe_evaluation(attrs: dict[str, Any], set_name: str) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    ev = attrs.get("evaluation") or {}
    sets = ev.get("sets") or {}
    for s, d in sets.items():
        if isinstance(d, dict):
            desc = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items())
            rows.append((f"evaluation set '{s}'" + (" (shown)" if s == set_name else ""), desc))
    for key in ("bn_mode", "dtype", "accumulation", "dropout"):
        if key in ev:
            rows.append((key.replace("_", " "), str(ev[key])))
    if ev.get("buffers"):
        rows.append(("interpolated buffers", ", ".join(str(b.get("name", b)) for b in ev["buffers"])))
    method = attrs.get("method")
    if method is not None:
        integ = f"{method}; tolerance {attrs.get('tolerance')}, rtol {attrs.get('rtol')}, "
        integ += f"max splits {attrs.get('max_splits')}"
        compute = (attrs.get("identity") or {}).get("compute") or {}
        if compute.get("refine") == "local" and compute.get("l1_tol"):
            integ += f"; local refinement to l1_tol {compute['l1_tol']:g}"
            scale = (attrs.get("l1_scale") or {}).get(set_name)
            if compute.get("l1_scope") == "run" and scale is not None:
                integ += f" of max(row L1 norm, run scale {float(scale):.3g})"
            else:
                integ += " of each row's L1 norm"
        rows.append(("integration", integ))
    cfg = attrs.get("config") or {}
    if isinstance(cfg, dict):
        model = cfg.get("model")
        if isinstance(model, dict) and model.get("factory"):
            kw = model.get("kwargs") or {}
            args = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(kw.items())) if isinstance(kw, dict) else ""
            rows.append(("model", f"{model['factory']}({args})"))
        loss = cfg.get("loss")
        if isinstance(loss, dict):
            rows.append(("loss", str(loss.get("name") or loss.get("factory"))))
    for key in ("device", "created", "updated", "torch_version", "lca_cli_version"):
        if attrs.get(key):
            rows.append((key.replace("_", " "), str(attrs[key])))
    return rows


def _output_folders(out_html: str | Path, png_dir: str | Path | None) -> tuple[Path, Path]:
    """The page's path and its figures' folder (default ``PAGE_files`` beside it), both folders created.

    Raises:
        UsageError: If the page's path is a directory, or a folder cannot be created (one line naming it).

    """
    out = Path(out_html)
    if out.is_dir():  # checked before any work: the page would fail to be written only after every figure
        raise UsageError(f"--out {out} is a directory; give the page's file name, e.g. --out {out / 'report.html'}")
    pdir = Path(png_dir) if png_dir is not None else out.with_name(f"{out.stem}_files")
    for folder in (out.parent, pdir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create directory {folder}: {exc.strerror or exc}") from None
    return out, pdir


def _sections(views: Sequence[View]) -> list[str]:
    """The HTML of the views, numbered in order: heading, figure with its caption, any extra HTML."""
    e = html.escape
    parts = []
    for i, v in enumerate(views, 1):
        parts.append(f'<section id="{v.key}"><h2>{i}. {e(v.title)}</h2>')
        parts.append(f"<figure>{_img(v.png, v.title)}")
        parts.append(f"<figcaption>{e(v.caption)}</figcaption></figure>")
        if v.extra_html:
            parts.append(v.extra_html)
        parts.append("</section>")
    return parts


def _img(path: Path, alt: str) -> str:
    """An embedded PNG shown at its display size (the file holds ``SCALE`` x as many pixels)."""
    width, height, _, _ = png_info(path)
    return f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}" width="{width // SCALE}" height="{height // SCALE}">'


def _set_table(rows: Sequence[tuple[str, Sequence[str]]], sets: Sequence[str]) -> str:
    e = html.escape
    head = "<tr><th></th>" + "".join(f"<th>set {e(s)}</th>" for s in sets) + "</tr>" if len(sets) > 1 else ""
    body = "".join(
        f"<tr><th>{e(k)}</th>" + "".join(f"<td class=num>{e(v)}</td>" for v in vals) + "</tr>" for k, vals in rows
    )
    return f"<table>{head}{body}</table>"


def _window_text(sel: Selection) -> str:
    w = sel.window
    if w == (None, None):
        return "all"
    return f"[{'' if w[0] is None else w[0]}, {'' if w[1] is None else w[1]})"


def _resolution_note(store: LcaStore) -> str:
    """What a store's columns hold when they are not every parameter (the figures work on those columns)."""
    cols = store.columns
    if cols.full:
        return ""
    held = {"neuron": "one column per neuron", "tensor": "one column per tensor"}.get(
        cols.granularity, "the columns of some tensors only"
    )
    kept = f" (--params {' '.join(cols.params)}; the rest in one '(other)' column)" if cols.params else ""
    return (
        f"This store holds {held}{kept} (--granularity {cols.granularity}): the figures and numbers below that speak "
        "of parameters (trajectories, how few do most of the learning, how often one helped) are about those "
        "columns; the totals per layer and per tensor are exact."
    )


def _page(store: LcaStore, data: list[SetData], nb: dict[str, Any], views: list[View], notes: dict[str, str]) -> str:
    e = html.escape
    main = data[0]
    per = [nb["per_set"][d.name] for d in data]

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> tuple[str, list[str]]:
        return label, [fn(x) for x in per]

    def flagged(x: dict[str, Any]) -> str:
        if not x["flagged"]:
            return "0"
        shown = ", ".join(str(s) for s in x["flagged_steps"][:12])
        return f"{x['flagged']} (start steps {shown}{', …' if x['flagged'] > 12 else ''})"

    def sync_line(x: dict[str, Any], prefix: str) -> str:
        if not x[f"{prefix}_tested"]:
            return x[f"{prefix}_reason"]
        return (
            f"{fmt(x[prefix + '_observed'], 3)} vs {fmt(x[prefix + '_baseline_mean'], 3)} ± "
            f"{fmt(x[prefix + '_baseline_sd'], 2)} ({x[prefix + '_p_text']}; "
            f"{'passes' if x[prefix + '_passes'] else 'does not pass'})"
        )

    rows = [
        row("iterations counted", lambda x: f"{x['n_iterations']}"
            + (f" ({x['n_not_done_in_window']} in the window not finished)" if x["n_not_done_in_window"] else "")),
        row("steps", lambda x: f"{x['first_step']} → {x['last_step']}"),
        row("ΔL (true loss change)", lambda x: fmt(x["delta_loss"], 6)),
        row("Σ LCA (all parameters)", lambda x: fmt(x["sum_lca"], 6)),
        row("Σ buffer share", lambda x: fmt(x["sum_buffer_lca"], 6)),
        row("integration error Σ|residual| · max |residual|",
            lambda x: f"{fmt(x['integration_error'], 3)} · {fmt(x['max_abs_residual'], 3)}"),
        row("flagged pairs (over tolerance at cap)", flagged),
        row("mean sub-intervals per pair", lambda x: fmt(x["mean_splits"], 3)),
        row("per iteration, of all parameters: helped · zero · hurt",
            lambda x: f"{_pct(x['helped_share_mean'])} · {_pct(x['zero_share_mean'])} · {_pct(x['hurt_share_mean'])}"),
        row("helped fraction, exact zeros excluded", lambda x: _pct(x["helped_fraction_mean"])),
        row("parameters doing 50% · 90% of the learning",
            lambda x: f"{_pct(x['concentration_50'])} · {_pct(x['concentration_90'])}"),
        row("layers hurting beyond the integration error", lambda x: ", ".join(x["layers_hurting"]) or "none"),
        row("layers with a positive total", lambda x: ", ".join(x["layers_positive"]) or "none"),
        row("synchronisation (circular shifts)", lambda x: sync_line(x, "sync")),
        row("synchronisation (step-size controlled)", lambda x: sync_line(x, "sync_controlled")),
    ]  # fmt: skip
    sets_note = f" · store sets: {', '.join(store.sets)}" if len(store.sets) > 1 else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>LCA report: {e(store.path.name)} ({e(', '.join(d.name for d in data))})</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Loss Change Allocation report: {e(store.path.name)}</h1>",
        f'<p class="sub">{e(str(store.path))} · sets shown: <b>{e(", ".join(d.name for d in data))}</b>'
        f"{e(sets_note)} · "
        f"window {e(_window_text(main.sel))} · {nb['n_params']:,} parameters · generated by lca {e(__version__)} "
        f"on {e(time.strftime('%Y-%m-%d %H:%M'))} in {e(fmt(nb['seconds'], 3))} s</p>",
        '<p class="key">Colours in every figure:'
        f'<span style="background:{HELPED_COLOR}"></span>helped (LCA &lt; 0, lowered the loss)'
        f'<span style="background:{ZERO_COLOR}"></span>exactly zero'
        f'<span style="background:{HURT_COLOR}"></span>hurt (LCA &gt; 0, raised the loss); '
        "layers by depth, dark = input side.</p>",
        _set_table(rows, [d.name for d in data]),
    ]
    for s, why in notes.items():
        parts.append(f'<p class="warn">set {e(s)} not shown: {e(why)}</p>')
    resolution = _resolution_note(store)
    if resolution:
        parts.append(f'<p class="warn">{e(resolution)}</p>')
    n_flagged = sum(x["flagged"] for x in per)
    if n_flagged:
        parts.append(
            f'<p class="warn">{n_flagged} iteration(s) stayed over the residual tolerance at the split cap; '
            "their per-parameter numbers are less accurate (see the first figure).</p>"
        )
    parts.append("<h2>Rules</h2>")
    parts.append(f"<blockquote>Helped / hurt: {e(nb['helped_rule'])}. Shares of all parameters count exact "
                 "zeros as a third group (the authors' convention).</blockquote>")  # fmt: skip
    parts.append(f"<blockquote>Significance: {e(nb['significance_rule'])}.</blockquote>")
    parts.append("<h2>Evaluation</h2>")
    parts.append(_table(_describe_evaluation(store.attrs, main.name)))
    parts.append("<nav><ol>")
    parts.extend(f'<li><a href="#{v.key}">{e(v.title)}</a></li>' for v in views)
    parts.append("</ol></nav>")
    parts.extend(_sections(views))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
