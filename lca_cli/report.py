"""``lca report``: one self-contained HTML page of plots built from a store only.

The page embeds every figure as a base64 PNG (a copy of each is also written beside it) and carries its
CSS inline: no scripts, no fonts, no links out, so it opens anywhere without a network. The numbers come
from :mod:`lca_cli.views` (two streaming passes over ``lca``, everything else from the small arrays);
this module only draws and writes.

Colours mean the same in every figure: blue = helped (LCA < 0, the loss went down because of it),
red = hurt (LCA > 0); the heat maps use the matching diverging map centred at 0. Layers are coloured by
depth (viridis: dark = input side) wherever one line per layer is drawn.

matplotlib is optional (``pip install 'lca-cli[report]'``); it is imported inside the functions that
draw, always through the Agg canvas and a style context, so importing this module or the CLI never needs
it and the caller's matplotlib state is left as it was.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli import __version__
from lca_cli.errors import LcaError, StoreError, UsageError
from lca_cli.store import HELPED_RULE, LcaStore
from lca_cli.views import (
    LossCurves,
    NeuronMap,
    ParameterStats,
    Selection,
    SyncResult,
    bin_edges,
    cumulative,
    detect_peaks,
    helped_fraction_per_iteration,
    layer_series,
    layer_split_from_tensors,
    loss_curves,
    parameter_label,
    rank_neuron_groups,
    scan_parameters,
    scan_selected,
    select_parameters,
    select_rows,
    synchronisation,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

__all__ = ["HELPED_COLOR", "HURT_COLOR", "MATPLOTLIB_MISSING", "ReportResult", "write_report"]

MATPLOTLIB_MISSING = "matplotlib is needed for lca report: pip install 'lca-cli[report]'"

#: Helped (LCA < 0) and hurt (LCA > 0): the two ends of matplotlib's ``RdBu_r``, used in every figure.
HELPED_COLOR = "#2166ac"
HURT_COLOR = "#b2182b"
NET_COLOR = "#222222"
RECON_COLOR = "#7b3294"
NEUTRAL_COLOR = "#7f7f7f"
DIVERGING_CMAP = "RdBu_r"  # negative (helped) blue, positive (hurt) red
DPI = 110
#: Half-width (iterations) of the window whose mean + 1 sd a peak of layer learning must exceed.
PEAK_WINDOW = 25
#: Points drawn per line at most (longer series are averaged in bins; cumulative ones subsampled).
MAX_LINE_POINTS = 1500

_STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": True,
    "legend.framealpha": 0.85,
    "legend.edgecolor": "#dddddd",
    "savefig.dpi": DPI,
    "figure.dpi": DPI,
    "image.interpolation": "nearest",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote.

    Attributes:
        html: The HTML page.
        pngs: The figures, in page order (the same images are embedded in the page).
        numbers: Headline numbers (JSON-serialisable): loss change, residuals, helped fractions, per-layer
            totals, synchronisation statistic, ...

    """

    html: Path
    pngs: list[Path] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)


@dataclass
class _View:
    key: str
    title: str
    png: Path
    caption: str
    extra_html: str = ""


# --------------------------------------------------------------------------------------------------------
# entry point


def write_report(
    store_path: str | Path,
    out_html: str | Path,
    *,
    set_name: str | None = None,
    steps: tuple[int | None, int | None] | None = None,
    png_dir: str | Path | None = None,
    heatmap_layers: int = 6,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write the HTML report of a store (and its figures as PNG files).

    Args:
        store_path: The lca store.
        out_html: The page to write (parent directories are created).
        set_name: Evaluation set of the per-set views (default ``train`` when present, else the first).
        steps: Window ``(A, B)`` over the start step of each iteration, ``[A, B)``; None ends are open.
        png_dir: Where the PNGs go (default ``<out_html stem>_files/`` beside the page).
        heatmap_layers: Number of layers (those with the most ``sum |LCA|``) given a neuron x iteration map.
        seed: Seed of the random parameters and of the synchronisation baseline.
        progress: Called with one-line messages while working.

    Returns:
        The paths written and the headline numbers.

    Raises:
        LcaError: If matplotlib is not installed.
        StoreError: If the store cannot be read or has no finished iteration in the window.
        UsageError: For a bad set name, window, or option value.

    """
    mpl = _require_matplotlib()
    say = progress or (lambda _msg: None)
    if heatmap_layers < 0:
        raise UsageError(f"heatmap_layers={heatmap_layers} must be >= 0")
    if steps is not None and (len(steps) != 2):
        raise UsageError(f"--steps must be A:B (got {steps!r})")
    store = LcaStore.open(store_path)
    if set_name is None:
        set_name = "train" if "train" in store.sets else store.sets[0]
    t_start = time.perf_counter()
    sel = select_rows(store, set_name, steps)
    out = Path(out_html)
    pdir = Path(png_dir) if png_dir is not None else out.with_name(f"{out.stem}_files")
    for d in (out.parent, pdir):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create directory {d}: {exc.strerror or exc}") from None

    # -- numbers ----------------------------------------------------------------------------------------
    say(f"set {set_name}: {sel.n} iterations (steps {int(sel.start_steps[0])}..{int(sel.end_steps[-1])})")
    curves = loss_curves(store, sel)
    layer_names, per_layer = layer_series(store, sel)
    frac_iter, helped_iter, hurt_iter = helped_fraction_per_iteration(store, sel)
    stats = scan_parameters(store, sel, progress=say)
    # lca's columns may be neurons or tensors (--granularity) or some tensors and the rest (--params): the
    # views that read them work on the column layout, at the resolution stored.
    columns = store.column_layout
    c_names, c_neg, c_pos = stats.by_layer(columns)
    by_layer = dict(zip(c_names, zip(c_neg, c_pos, strict=True), strict=True))
    if any(n not in by_layer for n in layer_names):  # layers left out by --params: their per-tensor split
        by_layer = {**layer_split_from_tensors(store, sel), **by_layer}
    layer_neg = np.array([by_layer.get(n, (np.nan, np.nan))[0] for n in layer_names])
    layer_pos = np.array([by_layer.get(n, (np.nan, np.nan))[1] for n in layer_names])
    cols, kinds = select_parameters(stats, 5, 5, 5, seed)
    ranked = rank_neuron_groups(columns, stats)
    chosen = sorted(gi for gi, _ in ranked[:heatmap_layers])
    traj, maps = scan_selected(store, sel, cols, chosen, progress=say)
    labels = [parameter_label(columns, int(c)) for c in cols]
    learning = -per_layer  # (n, L)
    peaks = [detect_peaks(learning[:, j], window=PEAK_WINDOW) for j in range(learning.shape[1])]
    global_peaks = [detect_peaks(learning[:, j]) for j in range(learning.shape[1])]
    say("synchronisation baseline")
    sync = synchronisation(peaks, sel.n, tolerance=1, n_shuffles=1000, seed=seed)
    sync_global = synchronisation(global_peaks, sel.n, tolerance=1, n_shuffles=1000, seed=seed)
    others: dict[str, tuple[Selection, np.ndarray] | str] = {}
    for s in [set_name, *[x for x in store.sets if x != set_name]]:
        try:
            s_sel = sel if s == set_name else select_rows(store, s, steps)
            others[s] = (s_sel, layer_series(store, s_sel)[1])
        except (StoreError, UsageError) as exc:
            others[s] = str(exc)
    sets_drawn = [s for s, v in others.items() if not isinstance(v, str)]
    numbers = _numbers(
        store, sel, curves, layer_names, layer_neg, layer_pos, per_layer, frac_iter, stats, cols, kinds, labels,
        traj, maps, sync, peaks,
    )  # fmt: skip
    numbers["sets_drawn"] = sets_drawn
    numbers.update(
        sync_global_observed=_f(sync_global.observed),
        sync_global_baseline_mean=_f(sync_global.baseline_mean),
        sync_global_baseline_sd=_f(sync_global.baseline_sd),
        sync_global_p_value=_f(sync_global.p_value),
    )

    # -- figures ----------------------------------------------------------------------------------------
    views: list[_View] = []
    with mpl.rc_context(_STYLE):
        say("drawing")
        views.append(_view_loss(pdir, sel, curves, numbers))
        views.append(_view_layers(pdir, sel, layer_names, layer_neg, layer_pos))
        views.append(_view_helped(pdir, sel, frac_iter, helped_iter, hurt_iter, stats, numbers))
        views.append(_view_cumulative(pdir, store, set_name, layer_names, others))
        if maps:
            views.append(_view_heatmaps(pdir, sel, maps, ranked))
        views.append(_view_trajectories(pdir, sel, traj, labels, kinds, numbers))
        views.append(_view_sync(pdir, sel, layer_names, learning, peaks, sync, sync_global))
    numbers["seconds"] = round(time.perf_counter() - t_start, 3)
    page = _page(store, sel, numbers, views)
    out.write_text(page, encoding="utf-8")
    say(f"wrote {out} ({len(views)} figures in {pdir})")
    return ReportResult(out, [v.png for v in views], numbers)


def _require_matplotlib() -> Any:
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise LcaError(MATPLOTLIB_MISSING) from None
    return matplotlib


# --------------------------------------------------------------------------------------------------------
# numbers


def _f(x: float | np.floating[Any]) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _numbers(
    store: LcaStore,
    sel: Selection,
    curves: LossCurves,
    layer_names: list[str],
    layer_neg: np.ndarray,
    layer_pos: np.ndarray,
    per_layer: np.ndarray,
    frac_iter: np.ndarray,
    stats: ParameterStats,
    cols: np.ndarray,
    kinds: list[str],
    labels: list[str],
    traj: np.ndarray,
    maps: list[NeuronMap],
    sync: SyncResult,
    peaks: Sequence[np.ndarray],
) -> dict[str, Any]:
    frac_param = stats.helped_fraction
    moved = np.isfinite(frac_param)
    totals = per_layer.sum(axis=0)
    flagged_steps = [int(x) for x in sel.start_steps[curves.flagged]]
    flips = []
    for j, k in enumerate(kinds):
        v = traj[:, j]
        nz = v[v != 0]
        if k == "random" and len(nz) > 1:
            flips.append(float(np.mean(np.sign(nz[1:]) != np.sign(nz[:-1]))))
    return {
        "store": str(store.path),
        "set": sel.set_name,
        "sets": list(store.sets),
        "n_iterations": sel.n,
        "n_not_done_in_window": sel.n_skipped,
        "first_step": int(sel.start_steps[0]),
        "last_step": int(sel.end_steps[-1]),
        "window": [sel.window[0], sel.window[1]],
        "n_params": store.layout.size,
        "delta_loss": float(curves.delta_loss.sum()),
        "sum_lca": float(curves.lca_sum.sum()),
        "sum_buffer_lca": float(curves.buffer_lca.sum()),
        "sum_residual": float(curves.residual.sum()),
        "max_abs_residual": float(np.abs(curves.residual).max()),
        "flagged": len(flagged_steps),
        "flagged_steps": flagged_steps[:50],
        "mean_splits": float(curves.splits.mean()),
        "helped_fraction_mean": _f(np.nanmean(frac_iter)) if np.isfinite(frac_iter).any() else None,
        "helped_fraction_per_parameter_median": _f(np.median(frac_param[moved])) if moved.any() else None,
        "params_never_moved": int((~moved).sum()),
        "layer_totals": {n: float(t) for n, t in zip(layer_names, totals, strict=True)},
        "layer_helped": {n: float(t) for n, t in zip(layer_names, layer_neg, strict=True)},
        "layer_hurt": {n: float(t) for n, t in zip(layer_names, layer_pos, strict=True)},
        "layers_hurting": [n for n, t in zip(layer_names, totals, strict=True) if t > 0],
        "heatmap_layers": [m.name for m in maps],
        "parameters": [
            {"name": lab, "kind": k, "column": int(c), "total": float(traj[:, j].sum())}
            for j, (lab, k, c) in enumerate(zip(labels, kinds, cols, strict=True))
        ],
        "random_sign_flip_rate": _f(np.mean(flips)) if flips else None,
        "peaks_per_layer": {n: len(p) for n, p in zip(layer_names, peaks, strict=True)},
        "sync_observed": _f(sync.observed),
        "sync_baseline_mean": _f(sync.baseline_mean),
        "sync_baseline_sd": _f(sync.baseline_sd),
        "sync_p_value": _f(sync.p_value),
        "sync_shuffles": sync.n_shuffles,
        "sync_tolerance": sync.tolerance,
        "sync_peak_rule": f"local maxima of -LCA above mean + 1 sd over ±{PEAK_WINDOW} iterations",
        "sync_pairs": sync.pairs,
        "helped_rule": str(store.attrs.get("helped_rule", HELPED_RULE)),
    }


# --------------------------------------------------------------------------------------------------------
# drawing helpers


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(target: Any, ax: Axes, **kw: Any) -> None:
    """Draw ``ax``'s labelled artists as a legend on ``target`` (an axes, figure or subfigure), if any."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        target.legend(handles, labels, **kw)


def _two_rows(fig: Figure, ratios: list[float]) -> tuple[SubFigure, SubFigure]:
    subs: Any = fig.subfigures(2, 1, height_ratios=ratios)
    return subs[0], subs[1]


def _save(fig: Figure, path: Path) -> Path:
    from PIL import Image  # a dependency of matplotlib

    buf = io.BytesIO()
    # No "Software" text chunk: keeps files free of any URL.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    buf.seek(0)
    # A 256-colour palette (no dithering) looks the same for plots and makes the files ~3x smaller.
    with Image.open(buf) as im:
        pal = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        pal.save(path, format="PNG", optimize=True)
    return path


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
    """Every k-th point (and the last) of a smooth series such as a cumulative sum."""
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.concatenate([np.linspace(0, len(x) - 1, max_points).astype(np.int64), [len(x) - 1]]))
    return x[idx], y[idx]


def _layer_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in (np.linspace(0.0, 0.9, n) if n > 1 else [0.0])]


def _helped_hurt_legend_handles() -> list[Any]:
    from matplotlib.patches import Patch

    return [
        Patch(color=HELPED_COLOR, label="helped (LCA < 0)"),
        Patch(color=HURT_COLOR, label="hurt (LCA > 0)"),
    ]


def _sign_hints(ax: Axes) -> None:
    """Small blue/red notes saying which way is helped and hurt on an LCA y axis."""
    kw: dict[str, Any] = {"transform": ax.transAxes, "fontsize": 7, "ha": "left"}
    ax.text(0.005, 0.985, "↑ hurt (LCA > 0)", color=HURT_COLOR, va="top", **kw)
    ax.text(0.005, 0.015, "↓ helped (LCA < 0)", color=HELPED_COLOR, va="bottom", **kw)


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 1 else f"{x:.{digits}f}".rstrip("0").rstrip(".")


def _short(name: str, n: int = 28) -> str:
    return name if len(name) <= n else "…" + name[-(n - 1) :]


# --------------------------------------------------------------------------------------------------------
# the views


def _view_loss(pdir: Path, sel: Selection, c: LossCurves, numbers: dict[str, Any]) -> _View:
    fig = _figure(7, 4.6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    for g in np.unique(c.segment):
        m = c.segment == g
        xs, ys = _thinned(c.steps[m], np.stack([c.true_loss[m], c.reconstructed[m]], axis=1))
        ax1.plot(xs, ys[:, 0], color=NET_COLOR, lw=1.6, label="true loss" if g == 0 else None)
        recon_label = "loss[start] + cumulative Σ LCA" if g == 0 else None
        ax1.plot(xs, ys[:, 1], color=RECON_COLOR, lw=1.2, ls="--", label=recon_label)
    ax1.set_ylabel(f"loss on '{sel.set_name}' (loss units)")
    ax1.set_title(f"True vs reconstructed loss ({sel.set_name}; ΔL = {_fmt(numbers['delta_loss'])})")
    _legend(ax1, ax1, loc="upper right")
    x = sel.start_steps
    xr, rr = _binned(x, c.residual)
    ax2.plot(xr, rr, color=NEUTRAL_COLOR, lw=0.8, marker="." if len(xr) <= 200 else None, ms=3, label="residual")
    ax2.axhline(0, color="black", lw=0.6)
    if c.flagged.any():
        many = int(c.flagged.sum()) > 40
        ax2.plot(
            x[c.flagged], c.residual[c.flagged], ls="none", marker="." if many else "x", color=HURT_COLOR,
            ms=4 if many else 6,
            label=f"flagged: over tolerance at the cap ({int(c.flagged.sum())})",
        )  # fmt: skip
    ax2.set_ylabel("residual (loss units)")
    ax2.set_xlabel("iteration (step)")
    ax2.set_title(f"Residual per iteration: ΔL − Σ LCA − buffer share (max |r| = {_fmt(numbers['max_abs_residual'])})")
    _legend(ax2, ax2, loc="upper right")
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    png = _save(fig, pdir / "1_loss.png")
    caption = (
        "Top: the loss on the evaluation set at every checkpoint (black) and the loss rebuilt from the "
        "allocations alone, the starting loss plus the running sum of all parameters' LCA (dashed). The two "
        "curves should lie on top of each other: LCA is complete, its terms add up to the loss change. Bottom: "
        "what is left over on each iteration (the integration error); red marks are iterations still over "
        "tolerance when refinement hit its cap. A residual that is small compared with the per-iteration loss "
        "changes means the per-parameter numbers in the other views can be trusted."
    )
    if numbers["n_not_done_in_window"]:
        caption += (
            f" {numbers['n_not_done_in_window']} unfinished iterations in the window are left out; the "
            "reconstruction restarts from the true loss after each gap."
        )
    return _View("loss", "True vs reconstructed loss", png, caption)


def _view_layers(pdir: Path, sel: Selection, names: list[str], neg: np.ndarray, pos: np.ndarray) -> _View:
    n = len(names)
    fig = _figure(7, max(2.6, 0.32 * n + 1.3))
    ax = fig.subplots()
    y = np.arange(n)
    net = neg + pos
    ax.barh(y, neg, color=HELPED_COLOR, height=0.7, label="helped: Σ of negative LCA")
    ax.barh(y, pos, color=HURT_COLOR, height=0.7, label="hurt: Σ of positive LCA")
    ax.plot(net, y, ls="none", marker="D", color=NET_COLOR, ms=5, label="net total (helped + hurt)")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [_short(s) for s in names])
    for lab, t in zip(ax.get_yticklabels(), net, strict=True):
        if t > 0:
            lab.set_color(HURT_COLOR)
            lab.set_fontweight("bold")
    ax.invert_yaxis()
    span = float(max(np.abs(neg).max(initial=0), pos.max(initial=0))) or 1.0
    ax.set_xlim(-1.45 * span, 1.45 * span)
    for yi, t in zip(y.tolist(), net, strict=True):
        ax.text(1.43 * span, yi, f"net {_fmt(float(t), 3)}", va="center", ha="right", fontsize=7,
                color=HURT_COLOR if t > 0 else NET_COLOR)  # fmt: skip
    ax.set_xlabel("LCA summed over iterations and the layer's parameters (loss units)")
    ax.set_ylabel("layer (input side at top)")
    ax.set_title(f"Per-layer LCA ({sel.set_name}, {sel.n} iterations): helped, hurt and net")
    ax.grid(axis="y", visible=False)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3)
    png = _save(fig, pdir / "2_layers.png")
    hurting = [s for s, t in zip(names, net, strict=True) if t > 0]
    caption = (
        "For each layer, the blue bar is the sum over iterations and parameters of the negative LCA (everything "
        "that lowered the loss), the red bar the sum of the positive LCA (everything that raised it), and the "
        "diamond their net, the layer's total contribution to ΔL. These are exact per-parameter sums from a "
        "streaming pass over the stored LCA (not per-iteration layer totals, which would cancel inside each "
        "iteration). Bars much longer than the net show how much of the work cancels out (the paper's noise "
        "finding). Layers whose net is positive (red, bold labels) hurt overall; the paper found this for the "
        "first and last layer of ResNet-20 on CIFAR-10."
    )
    if hurting:
        caption += f" Here: {', '.join(hurting)} {'hurts' if len(hurting) == 1 else 'hurt'} overall."
    else:
        caption += " Here no layer hurts overall."
    return _View("layers", "Per-layer totals: helped, hurt, net", png, caption)


def _view_helped(
    pdir: Path,
    sel: Selection,
    frac: np.ndarray,
    helped: np.ndarray,
    hurt: np.ndarray,
    stats: ParameterStats,
    numbers: dict[str, Any],
) -> _View:
    fig = _figure(7, 5.2)
    top, bottom = _two_rows(fig, [1.1, 1])
    ax = top.subplots()
    x = sel.start_steps
    xb, fb = _binned(x, frac)  # NaN (no parameter moved the loss) leaves a gap
    ax.plot(xb, fb, color=HELPED_COLOR, lw=0.9, label="fraction of parameters helping")
    ax.axhline(0.5, color=NET_COLOR, ls=":", lw=1, label="0.5 (a coin flip)")
    mean = numbers["helped_fraction_mean"]
    ok = frac[np.isfinite(frac)]
    lo, hi = (float(ok.min()), float(ok.max())) if ok.size else (0.5, 0.5)
    ax.set_ylim(min(0.3, lo - 0.02), max(0.7, hi + 0.02))
    ax.set_xlabel("iteration (step)")
    ax.set_ylabel("helped / (helped + hurt)")
    ax.set_title(f"Fraction of parameters helping on each iteration (mean {_fmt(mean, 3)})")
    _legend(ax, ax, loc="upper right", ncol=2)
    a1, a2 = bottom.subplots(1, 2)
    a1.hist(ok, bins=min(40, max(5, len(ok) // 5)), color=HELPED_COLOR, alpha=0.85, histtype="stepfilled")
    a1.axvline(0.5, color=NET_COLOR, ls=":", lw=1)
    a1.set_xlabel("fraction of parameters helping")
    a1.set_ylabel("iterations")
    a1.set_title("Per iteration")
    fp = stats.helped_fraction
    fp = fp[np.isfinite(fp)]
    a2.hist(fp, bins=40, range=(0, 1), color=HELPED_COLOR, alpha=0.85, histtype="stepfilled")
    a2.axvline(0.5, color=NET_COLOR, ls=":", lw=1)
    a2.set_xlabel("fraction of its iterations a parameter helped")
    a2.set_ylabel("parameters")
    a2.set_title(f"Per parameter ({len(fp)} that moved the loss)")
    png = _save(fig, pdir / "3_helped.png")
    caption = (
        "Top: on each iteration, the share of parameters whose LCA was negative among those whose LCA was not "
        "exactly zero. Bottom left: how that share is distributed over iterations; bottom right: for each "
        "parameter, the share of its iterations on which it helped. The paper found both close to one half, "
        "barely above it per iteration: training is noisy, nearly as many parameters hurt as help on any "
        "iteration, and a typical parameter helps about half the time. Exact zeros (parameters that did not "
        f"move, or inputs that are constant) count as neither: {numbers['params_never_moved']} parameters "
        "never moved the loss and are left out of the right histogram."
    )
    return _View("helped", "How many parameters help", png, caption)


def _view_cumulative(
    pdir: Path,
    store: LcaStore,
    set_name: str,
    names: list[str],
    series: dict[str, tuple[Selection, np.ndarray] | str],
) -> _View:
    sets = list(series)
    fig = _figure(7 if len(sets) == 1 else 9.5, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(sets), sharey=True))
    colors = _layer_colors(len(names))
    for ax, s in zip(axes, sets, strict=True):
        entry = series[s]
        if isinstance(entry, str):
            ax.text(0.5, 0.5, f"set {s}: nothing to draw\n{entry}", ha="center", va="center", wrap=True,
                    transform=ax.transAxes, fontsize=8)  # fmt: skip
            ax.set_title(f"set '{s}'")
            continue
        sel, values = entry
        x = np.concatenate([sel.start_steps[:1], sel.end_steps])
        cum = cumulative(values)
        xs, cs = _thinned(x, cum)
        for j, name in enumerate(names):
            ax.plot(xs, cs[:, j], color=colors[j], lw=1.3, label=_short(name, 22))
        ax.plot(xs, cs.sum(axis=1), color=NET_COLOR, lw=1.2, ls="--", label="all layers (Σ LCA)")
        ax.axhline(0, color="black", lw=0.6)
        role = "training set" if s == "train" else ("held-out set" if s != set_name else "")
        ax.set_title(f"set '{s}'" + (f" ({role})" if role else ""))
        ax.set_xlabel("iteration (step)")
        _sign_hints(ax)
    axes[0].set_ylabel("cumulative LCA (loss units)")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles and len(axes) > 1:
        handles, labels = axes[1].get_legend_handles_labels()
    if len(names) <= 14:
        fig.legend(handles, labels, loc="outside right upper", title="layer (input → output)")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        sm = ScalarMappable(norm=Normalize(0, len(names) - 1), cmap="viridis")
        fig.colorbar(sm, ax=list(axes), label="layer index (0 = input side)", shrink=0.8)
    fig.suptitle("Cumulative LCA per layer" + (": training vs held-out" if len(sets) > 1 else ""))
    png = _save(fig, pdir / "4_cumulative.png")
    caption = (
        "Each line is one layer's running total of LCA; lines going down are layers lowering the loss "
        "(dark = input side, yellow = output side), the dashed black line is the whole network (it follows "
        "the loss curve). Where the line flattens, that layer has stopped contributing; a line that ends above "
        "zero belongs to a layer that hurt overall."
    )
    if len(sets) > 1:
        caption += (
            " Side by side, the same parameters' allocations of the loss change on each evaluation set: a layer "
            "that keeps helping the training loss while it flattens or rises on the held-out set is where "
            "learning stops generalising."
        )
    return _View("cumulative", "Cumulative LCA per layer over time", png, caption)


def _view_heatmaps(pdir: Path, sel: Selection, maps: list[NeuronMap], ranked: list[tuple[int, float]]) -> _View:
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    n = len(maps)
    fig = _figure(7, 1.55 * n + 0.8)
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True))
    for ax, m in zip(axes, maps, strict=True):
        mat = m.matrix
        vmax = float(np.quantile(np.abs(mat), 0.99)) if mat.size else 0.0
        vmax = vmax if vmax > 0 else float(np.abs(mat).max(initial=0)) or 1e-12
        x0, x1 = float(m.step_edges[0]), float(m.step_edges[-1])
        im = ax.imshow(
            mat, aspect="auto", cmap=DIVERGING_CMAP, norm=Normalize(-vmax, vmax), interpolation="nearest",
            extent=(x0, x1, m.n_neurons - 0.5, -0.5), origin="upper",
        )  # fmt: skip
        per_bin_it = int(np.ceil(sel.n / max(1, mat.shape[1])))
        per_bin_n = int(np.ceil(m.n_neurons / max(1, mat.shape[0])))
        group = f" ({per_bin_n} per row)" if per_bin_n > 1 else ""
        cols = "one iteration per column" if per_bin_it == 1 else f"≤{per_bin_it} iterations per column"
        units = "1 neuron" if m.n_neurons == 1 else f"{m.n_neurons} neurons"
        ax.set_title(f"{m.name}: {units}{group}, {cols}", fontsize=9)
        ax.set_ylabel("neuron")
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        ax.grid(False)
        cb = fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04)
        cb.ax.tick_params(labelsize=7)
        cb.ax.ticklabel_format(style="sci", scilimits=(-2, 3))
        cb.set_label("LCA", fontsize=7)
    axes[-1].set_xlabel("iteration (step)")
    fig.legend(handles=_helped_hurt_legend_handles(), loc="outside upper right", ncol=2)
    fig.suptitle("Neuron × iteration LCA (loss units, summed per cell)", x=0.02, ha="left")
    png = _save(fig, pdir / "5_heatmaps.png")
    caption = (
        f"The {n} layers with the largest total |LCA| (Σ over iterations and parameters; shown in network "
        "order), one row per output unit (the unit's weights and bias together). Each cell is that unit's "
        "LCA summed over a bin of consecutive iterations; blue = helped, red = hurt, white = nothing. Colours "
        "are clipped at the 99th percentile of |cell| per layer, so single outliers do not wash out the rest. "
        "Look for vertical stripes (many units learning on the same iterations, the paper's synchronisation), "
        "horizontal stripes (a few units doing most of the work, or consistently hurting) and red-blue "
        "alternation along a row (oscillation)."
    )
    return _View("heatmaps", "Neuron × iteration heat maps", png, caption)


def _view_trajectories(
    pdir: Path, sel: Selection, traj: np.ndarray, labels: list[str], kinds: list[str], numbers: dict[str, Any]
) -> _View:
    from matplotlib import colormaps

    fig = _figure(7, 6.4)
    top, bottom = _two_rows(fig, [1.5, 1])
    ax = top.subplots()
    x = np.concatenate([sel.start_steps[:1], sel.end_steps])
    cum = cumulative(traj)
    xs, cs = _thinned(x, cum)
    shades = {
        "helpful": colormaps["Blues"],
        "harmful": colormaps["Reds"],
        "random": colormaps["Greys"],
    }
    counts = {k: kinds.count(k) for k in shades}
    seen: dict[str, int] = dict.fromkeys(shades, 0)
    for j, (lab, k) in enumerate(zip(labels, kinds, strict=True)):
        i = seen[k]
        seen[k] += 1
        c = shades[k](0.95 - 0.45 * i / max(1, counts[k] - 1))
        ax.plot(xs, cs[:, j], color=c, lw=1.4 if k != "random" else 1.0, ls="-" if k != "random" else "--",
                label=f"{k}: {_short(lab, 24)}")  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("iteration (step)")
    ax.set_ylabel("cumulative LCA (loss units)")
    ax.set_title("Cumulative LCA of single parameters: most helpful, most harmful, random")
    _sign_hints(ax)
    _legend(top, ax, loc="outside right center", fontsize=6.5, handlelength=1.6)
    # Oscillation: per-iteration LCA of the top helpful parameter and the first random one.
    picks = [kinds.index(k) for k in ("helpful", "random") if k in kinds]
    axs = np.atleast_1d(bottom.subplots(1, max(1, len(picks)), sharex=True))
    n_show = min(sel.n, 120)
    for a, j in zip(axs, picks, strict=False):
        v = traj[:n_show, j]
        # vlines: one collection instead of a patch per bar (much faster to draw).
        a.vlines(sel.start_steps[:n_show], 0, v, colors=np.where(v < 0, HELPED_COLOR, HURT_COLOR).tolist(), lw=1.6)
        a.axhline(0, color="black", lw=0.6)
        a.set_title(f"{kinds[j]}: {_short(labels[j], 30)}", fontsize=8.5, loc="right")
        a.set_xlabel(f"iteration (step), first {n_show}")
        a.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    axs[0].set_ylabel("LCA per iteration\n(loss units)")
    bottom.legend(handles=_helped_hurt_legend_handles(), loc="outside right center", fontsize=7)
    png = _save(fig, pdir / "6_trajectories.png")
    flip = numbers["random_sign_flip_rate"]
    caption = (
        "Top: running totals of LCA for the 5 parameters with the most negative total (blue: did the most "
        "for the loss), the 5 with the most positive total (red: did the most against it) and 5 random ones "
        "(grey, dashed), named tensor[index]. Bottom: per-iteration LCA of the most helpful and of a random "
        "parameter over the first iterations, blue when it helped and red when it hurt. The paper found that "
        "parameters oscillate, alternating between helping and hurting, and suggested phase lag of momentum "
        "as the cause; even the most helpful parameter hurts on many iterations."
    )
    if flip is not None:
        caption += (
            f" Among the random parameters, the sign of LCA flips between consecutive nonzero iterations "
            f"{_fmt(100 * flip, 3)}% of the time (50% would be independent coin flips; more is oscillation)."
        )
    return _View("trajectories", "Single-parameter trajectories", png, caption)


def _view_sync(
    pdir: Path,
    sel: Selection,
    names: list[str],
    learning: np.ndarray,
    peaks: Sequence[np.ndarray],
    sync: SyncResult,
    sync_global: SyncResult,
) -> _View:
    n_l = len(names)
    fig = _figure(7, max(3.2, 0.3 * n_l + 1.6) + 2.4)
    top, bottom = _two_rows(fig, [max(3.2, 0.3 * n_l + 1.6), 2.4])
    ax = top.subplots()
    colors = _layer_colors(n_l)
    x = sel.start_steps
    for j in range(n_l):
        s = learning[:, j]
        scale = float(np.abs(s).max()) or 1.0
        xb, yb = _binned(x, s / scale)
        base = n_l - 1 - j
        ax.plot(xb, base + 0.45 * yb, color=colors[j], lw=0.8)
        p = peaks[j]
        ax.plot(x[p], base + 0.45 * s[p] / scale, ls="none", marker="v", ms=3.2, color=NET_COLOR,
                label="peak" if j == 0 else None)  # fmt: skip
    # Iterations where at least half of the layers (and 2) peak together (within the tolerance).
    if sel.n and n_l > 1:
        hits = np.zeros(sel.n, dtype=np.int64)
        for p in peaks:
            mark = np.zeros(sel.n, dtype=bool)
            for d in range(-sync.tolerance, sync.tolerance + 1):
                q = p + d
                mark[q[(q >= 0) & (q < sel.n)]] = True
            hits += mark
        joint = np.flatnonzero((hits >= max(2, math.ceil(n_l / 2))) & np.isin(np.arange(sel.n), np.concatenate(peaks)))
        for t in joint:
            ax.axvline(x[t], color="#e0a800", lw=1.0, alpha=0.35, zorder=0)
        if len(joint):
            ax.plot([], [], color="#e0a800", lw=3, alpha=0.5, label="≥ half of the layers peak together")
    ax.set_yticks(np.arange(n_l), [_short(s) for s in names[::-1]])
    ax.set_ylim(-0.8, n_l - 0.2)
    ax.set_xlabel("iteration (step)")
    ax.set_ylabel("layer: learning = −LCA, scaled per layer")
    ax.set_title("Per-layer learning per iteration and its peaks")
    ax.grid(axis="y", visible=False)
    _legend(top, ax, loc="outside lower center", ncol=2)
    a1, a2 = bottom.subplots(1, 2, width_ratios=[1.3, 1])
    if sync.n_shuffles:
        a1.hist(sync.baseline, bins=30, color=NEUTRAL_COLOR, alpha=0.8, histtype="stepfilled",
                label=f"shifted peaks ({sync.n_shuffles}×)")  # fmt: skip
    if math.isfinite(sync.observed):
        a1.axvline(sync.observed, color=NET_COLOR, lw=2, label=f"observed {sync.observed:.3f}")
    a1.set_xlabel("mean pairwise peak overlap (Jaccard, ±1 iteration)")
    a1.set_ylabel("shuffles")
    a1.set_title(f"Observed vs chance (p = {_fmt(sync.p_value, 3)})", fontsize=9)
    _legend(a1, a1, loc="upper right", fontsize=7)
    if sync.pairs == 0:
        a1.text(0.5, 0.5, "needs two layers with peaks", transform=a1.transAxes, ha="center", va="center")
    mat = np.where(np.eye(n_l, dtype=bool), np.nan, sync.matrix)
    im = a2.imshow(mat, cmap="cividis", vmin=0, vmax=max(0.05, float(np.nanmax(mat)) if np.isfinite(mat).any() else 1))
    a2.grid(False)
    if n_l <= 12:
        a2.set_xticks(np.arange(n_l), [_short(s, 10) for s in names], rotation=60, fontsize=6.5, ha="right")
        a2.set_yticks(np.arange(n_l), [_short(s, 12) for s in names], fontsize=6.5)
    else:
        a2.set_xlabel("layer index")
        a2.set_ylabel("layer index")
    a2.set_title("Pairwise peak overlap", fontsize=9)
    bottom.colorbar(im, ax=a2, label="Jaccard (±1 iteration)", shrink=0.9)
    png = _save(fig, pdir / "7_sync.png")
    caption = (
        "Top: each layer's learning on each iteration (−LCA of the layer, so up = the layer lowered the loss), "
        "scaled to its own maximum, with its peaks marked: local maxima above the mean + 1 standard deviation "
        f"of the layer's learning over the surrounding ±{PEAK_WINDOW} iterations (a local threshold, so that "
        "the early phase in which every layer learns most does not by itself put all peaks in the same place). "
        "Shaded iterations are where at least half of the layers peak within ±1 iteration of each other. The "
        "paper found learning synchronised across layers: peaks coincide more often than chance. Bottom left: "
        "the statistic, the mean over layer pairs of the overlap of their peak sets (Jaccard index allowing ±1 "
        "iteration), against a baseline in which each layer's peak train is shifted circularly by its own "
        "random offset (keeps each layer's peak count and spacing, destroys alignment); p is the share of "
        "shifts that overlap at least as much. Bottom right: the overlap of each pair of layers. The table "
        "also gives the statistic with one global threshold per layer (mean + 1 sd of the whole series); "
        "where that is much higher than the local one, shared slow trends rather than single iterations "
        "drive the coincidence."
    )
    table = _sync_table(sync, sync_global, names, peaks)
    return _View("sync", "Synchronisation of learning across layers", png, caption, table)


def _sync_table(sync: SyncResult, sync_global: SyncResult, names: list[str], peaks: Sequence[np.ndarray]) -> str:
    rows = [
        ("observed mean pairwise overlap", _fmt(sync.observed)),
        ("baseline (circular shifts) mean ± sd", f"{_fmt(sync.baseline_mean)} ± {_fmt(sync.baseline_sd)}"),
        ("observed / baseline", _fmt(sync.ratio, 3)),
        ("permutation p-value (one-sided)", _fmt(sync.p_value, 3)),
        ("shuffles · tolerance · layer pairs counted", f"{sync.n_shuffles} · ±{sync.tolerance} · {sync.pairs}"),
        ("peaks per layer", ", ".join(f"{n} {len(p)}" for n, p in zip(names, peaks, strict=True))),
        (
            "with a global threshold: observed vs baseline (p)",
            f"{_fmt(sync_global.observed)} vs {_fmt(sync_global.baseline_mean)} ± {_fmt(sync_global.baseline_sd)} "
            f"(p = {_fmt(sync_global.p_value, 3)})",
        ),
    ]
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


def _page(store: LcaStore, sel: Selection, nb: dict[str, Any], views: list[_View]) -> str:
    e = html.escape
    window = sel.window
    win = "all" if window == (None, None) else f"[{'' if window[0] is None else window[0]}, "
    if window != (None, None):
        win += f"{'' if window[1] is None else window[1]})"
    flagged = str(nb["flagged"])
    if nb["flagged"]:
        shown = ", ".join(str(s) for s in nb["flagged_steps"][:20])
        flagged += f" (start steps {shown}{', …' if nb['flagged'] > 20 else ''})"
    sets_note = f" (store sets: {', '.join(store.sets)})" if len(store.sets) > 1 else ""
    skipped = nb["n_not_done_in_window"]
    skipped_note = f" ({skipped} in the window not finished, left out)" if skipped else ""
    sync_line = (
        f"{_fmt(nb['sync_observed'], 3)} vs {_fmt(nb['sync_baseline_mean'], 3)} ± "
        f"{_fmt(nb['sync_baseline_sd'], 2)} (p = {_fmt(nb['sync_p_value'], 3)})"
    )
    head = [
        ("store", str(store.path)),
        ("evaluation set", sel.set_name + sets_note),
        ("iterations counted", f"{nb['n_iterations']}{skipped_note}"),
        ("steps", f"{nb['first_step']} → {nb['last_step']} (window {win})"),
        ("parameters", f"{nb['n_params']:,}"),
        ("ΔL (true loss change)", _fmt(nb["delta_loss"], 6)),
        ("Σ LCA (all parameters)", _fmt(nb["sum_lca"], 6)),
        ("Σ buffer share", _fmt(nb["sum_buffer_lca"], 6)),
        ("Σ residual · max |residual|", f"{_fmt(nb['sum_residual'], 3)} · {_fmt(nb['max_abs_residual'], 3)}"),
        ("flagged pairs (over tolerance at cap)", flagged),
        ("mean sub-intervals per pair", _fmt(nb["mean_splits"], 3)),
        ("mean fraction of parameters helping", _fmt(nb["helped_fraction_mean"], 4)),
        ("layers hurting overall", ", ".join(nb["layers_hurting"]) or "none"),
        ("synchronisation: observed vs baseline", sync_line),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>LCA report: {e(store.path.name)} ({e(sel.set_name)})</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f"<h1>Loss Change Allocation report: {e(store.path.name)}</h1>",
        f'<p class="sub">{e(str(store.path))} · set <b>{e(sel.set_name)}</b> · generated by lca {e(__version__)} '
        f"on {e(time.strftime('%Y-%m-%d %H:%M'))} in {e(_fmt(nb['seconds'], 3))} s</p>",
        '<p class="key">Colours in every figure:'
        f'<span style="background:{HELPED_COLOR}"></span>helped (LCA &lt; 0, lowered the loss)'
        f'<span style="background:{HURT_COLOR}"></span>hurt (LCA &gt; 0, raised the loss)</p>',
        _table(head),
    ]
    if nb["flagged"]:
        parts.append(
            f'<p class="warn">{nb["flagged"]} iteration(s) stayed over the residual tolerance at the split cap; '
            "their per-parameter numbers are less accurate (see the first figure).</p>"
        )
    parts.append("<h2>Helped / hurt rule</h2>")
    parts.append(f"<blockquote>{e(nb['helped_rule'])}</blockquote>")
    parts.append("<h2>Evaluation</h2>")
    parts.append(_table(_describe_evaluation(store.attrs, sel.set_name)))
    parts.append("<nav><ol>")
    parts.extend(f'<li><a href="#{v.key}">{e(v.title)}</a></li>' for v in views)
    parts.append("</ol></nav>")
    for i, v in enumerate(views, 1):
        parts.append(f'<section id="{v.key}"><h2>{i}. {e(v.title)}</h2>')
        parts.append(f'<figure><img src="{_data_uri(v.png)}" alt="{e(v.title)}">')
        parts.append(f"<figcaption>{e(v.caption)}</figcaption></figure>")
        if v.extra_html:
            parts.append(v.extra_html)
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
