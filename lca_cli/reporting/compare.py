"""``lca report A B``: two runs side by side, per layer and over time, in one self-contained page.

The paper's experiment of this kind is normal training against training with the last layer frozen at
initialisation; any two stores compare, for example two seeds, two learning rates or two architectures.
Layers are matched by name; layers that only one run has are listed (and drawn for that run alone).
Everything here reads only the small per-iteration arrays (``tensor_lca``, ``loss``, ``residual``,
counts), so a comparison costs seconds whatever the size of the stores.

Colours: run A dark grey, run B orange (:data:`lca_cli.reporting.plots.RUN_COLORS`) in every figure of the page.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli import __version__
from lca_cli.analysis.reduce import SIGNIFICANCE_RULE, open_store
from lca_cli.analysis.selection import require_set
from lca_cli.analysis.series import cumulative
from lca_cli.errors import UsageError
from lca_cli.reporting.gather import SetSummary, gather_set
from lca_cli.reporting.html import CSS, ReportResult, View, output_folders, sections, table
from lca_cli.reporting.plots import (
    NEUTRAL_COLOR,
    RUN_COLORS,
    STYLE,
    figure,
    fmt,
    highlighted_layers,
    require_matplotlib,
    save_png,
    step_axis,
    thinned,
    vector_copies,
)
from lca_cli.reporting.text import pct
from lca_cli.store import LcaStore

__all__ = ["LayerMatch", "frozen_premises", "match_layers", "run_labels", "write_comparison"]

#: Per evaluation set compared, the two runs' summaries (A, B).
Pairs = list[tuple[SetSummary, SetSummary]]


class LayerMatch:
    """Layers of two runs matched by name.

    Attributes:
        names: The union, A's order first, then the layers only B has.
        matched: Names in both runs.
        only_a: Names only run A has.
        only_b: Names only run B has.

    """

    def __init__(self, a: Sequence[str], b: Sequence[str]) -> None:
        in_b = set(b)
        in_a = set(a)
        self.matched = [n for n in a if n in in_b]
        self.only_a = [n for n in a if n not in in_b]
        self.only_b = [n for n in b if n not in in_a]
        self.names = list(a) + self.only_b

    def values(self, names: Sequence[str], values: np.ndarray) -> np.ndarray:
        """``values`` (per layer of one run, in ``names`` order) on the union order, NaN where absent."""
        where = {n: i for i, n in enumerate(names)}
        return np.array([values[where[n]] if n in where else np.nan for n in self.names], dtype=np.float64)

    def describe(self, label_a: str, label_b: str) -> str:
        """One sentence on what did not match."""
        if not self.only_a and not self.only_b:
            return f"All {len(self.matched)} layers match by name."
        parts = [f"{len(self.matched)} layers match by name"]
        if self.only_a:
            parts.append(f"only in {label_a}: {', '.join(self.only_a)}")
        if self.only_b:
            parts.append(f"only in {label_b}: {', '.join(self.only_b)}")
        return "; ".join(parts) + "."


def match_layers(a: Sequence[str], b: Sequence[str]) -> LayerMatch:
    """Match two runs' layers by name (see :class:`LayerMatch`)."""
    return LayerMatch(a, b)


def _common_sets(a: LcaStore, b: LcaStore, set_names: Sequence[str] | None) -> list[str]:
    if set_names:
        for s in set_names:
            for st in (a, b):
                require_set(st, s)
        return list(dict.fromkeys(set_names))
    common = [s for s in a.sets if s in b.sets]
    if not common:
        raise UsageError(
            f"{a.path} (sets {', '.join(a.sets)}) and {b.path} (sets {', '.join(b.sets)}) share no evaluation set; "
            "a comparison needs the same set in both"
        )
    return (["train"] if "train" in common else []) + [s for s in common if s != "train"]


def _label(path: Path) -> str:
    p = Path(path)
    return p.parent.name if p.name.endswith(".zarr") and p.parent.name else p.name


def run_labels(a: Path, b: Path, labels: Sequence[str] | None = None) -> tuple[str, str]:
    """The two runs' names on the page: ``labels``, else their folders' names, else the stores' own names.

    Two stores of one run folder (``lca.zarr`` and ``other.zarr``) are told apart by their names; two stores
    that still share a name get ``A:`` and ``B:`` in front.
    """
    la, lb = (list(labels) if labels else [_label(a), _label(b)])[:2]
    if la == lb and not labels and Path(a).name != Path(b).name:
        la, lb = Path(a).name, Path(b).name
    return (f"A: {la}", f"B: {lb}") if la == lb else (la, lb)


def write_comparison(
    store_a: str | Path,
    store_b: str | Path,
    out_html: str | Path,
    *,
    labels: Sequence[str] | None = None,
    set_names: Sequence[str] | None = None,
    steps: tuple[int | None, int | None] | None = None,
    png_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    min_abs: float | None = None,
) -> ReportResult:
    """Write an HTML page comparing two runs (and its figures as PNG files).

    Args:
        store_a: Store of run A.
        store_b: Store of run B.
        out_html: The page to write.
        labels: Names of the two runs (default: the stores' folder names, e.g. the run directories).
        set_names: Evaluation sets to compare (default: every set both stores have, ``train`` first).
        steps: Window ``(A, B)`` over start steps, applied to both runs.
        png_dir: Where the PNGs go (default ``<out_html stem>_files/``).
        progress: Called with one-line messages.
        min_abs: A noise floor for the helped / hurt shares (``--min-abs``); ``per_set[set]["floor"]`` then
            gives each run's floor and share of entries below float resolution.

    Returns:
        The paths written and the numbers (per set: per-layer totals of both runs, matched and unmatched
        layers, final losses, integration errors).

    Raises:
        LcaError: If matplotlib is not installed.
        StoreError: If a store cannot be read or has no finished iteration in the window.
        UsageError: Bad labels, sets or window.

    """
    mpl = require_matplotlib()
    say = progress or (lambda _msg: None)
    a, b = open_store(store_a), open_store(store_b)
    la, lb = run_labels(a.path, b.path, labels)
    if a.path.resolve() == b.path.resolve():
        say(f"note: {a.path} is compared with itself")
    sets = _common_sets(a, b, set_names)
    t0 = time.perf_counter()
    pairs = [(gather_set(a, s, steps, min_abs), gather_set(b, s, steps, min_abs)) for s in sets]
    match = match_layers(pairs[0][0].layer_names, pairs[0][1].layer_names)
    out, pdir = output_folders(out_html, png_dir)
    say(f"comparing {la} ({a.path}) with {lb} ({b.path}) on set(s) {', '.join(sets)}")
    numbers = _numbers(a, b, la, lb, pairs, match)
    premises = frozen_premises(pairs, la, lb)
    numbers["premise"] = [p["sentence"] for p in premises]
    views: list[View] = []
    with mpl.rc_context(STYLE):
        views.append(_view_loss(pdir, pairs, la, lb, " ".join(numbers["premise"])))
        views.append(_view_layers(pdir, pairs, match, la, lb))
        views.append(_view_cumulative(pdir, pairs, match, la, lb))
        views.append(_view_shares(pdir, pairs, la, lb))
        views.append(_view_milestones(pdir, pairs, match, la, lb))
    numbers["seconds"] = round(time.perf_counter() - t0, 3)
    out.write_text(_page(a, b, la, lb, pairs, match, numbers, views), encoding="utf-8")
    say(f"wrote {out} ({len(views)} figures in {pdir})")
    pngs = [v.png for v in views if v.png is not None]
    return ReportResult(out, pngs, numbers, vector_copies(pngs))


# --------------------------------------------------------------------------------------------------------
# numbers


def _numbers(a: LcaStore, b: LcaStore, la: str, lb: str, pairs: Pairs, match: LayerMatch) -> dict[str, Any]:
    per_set: dict[str, Any] = {}
    for da, db in pairs:
        ta = match.values(da.layer_names, da.totals)
        tb = match.values(db.layer_names, db.totals)
        per_set[da.name] = {
            "iterations": [da.sel.n, db.sel.n],
            "final_loss": [float(da.curves.true_loss[-1]), float(db.curves.true_loss[-1])],
            "delta_loss": [float(da.curves.delta_loss.sum()), float(db.curves.delta_loss.sum())],
            "integration_error": [da.error, db.error],
            "helped_share_mean": [float(da.comp.shares()[0].mean()), float(db.comp.shares()[0].mean())],
            **({"floor": [da.floor, db.floor]} if da.floor else {}),
            "layer_totals": {
                n: [None if np.isnan(x) else float(x), None if np.isnan(y) else float(y)]
                for n, x, y in zip(match.names, ta, tb, strict=True)
            },
            "layer_verdicts": {
                n: [
                    dict(zip(da.layer_names, da.verdicts, strict=True)).get(n),
                    dict(zip(db.layer_names, db.verdicts, strict=True)).get(n),
                ]
                for n in match.names
            },
        }
    return {
        "stores": [str(a.path), str(b.path)],
        "labels": [la, lb],
        "sets": [p[0].name for p in pairs],
        "matched_layers": match.matched,
        "only_a": match.only_a,
        "only_b": match.only_b,
        "per_set": per_set,
        "significance_rule": SIGNIFICANCE_RULE,
    }


# --------------------------------------------------------------------------------------------------------
# views


def _legend_runs(fig: Any, la: str, lb: str, extra: Sequence[Any] = ()) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=RUN_COLORS[0], lw=2, label=la), Line2D([], [], color=RUN_COLORS[1], lw=2, label=lb)]
    fig.legend(handles=[*handles, *extra], loc="outside lower center", ncol=2 + len(extra))


def frozen_premises(pairs: Pairs, la: str, lb: str) -> list[dict[str, Any]]:
    """The freeze experiment's premise, computed: each layer frozen in one run and what it did in the other.

    A layer is *frozen* in a run when its LCA is exactly 0 on every iteration of the window (its parameters never
    moved) while the other run's same layer moved. The paper froze a last layer that hurt overall; whether the
    comparison is that situation is the other run's verdict on the layer (helps / hurts / within its
    integration error, :func:`lca_cli.analysis.series.significance`).

    Args:
        pairs: ``(A's set, B's set)`` summaries, one pair per evaluation set.
        la: Label of run A.
        lb: Label of run B.

    Returns:
        Per frozen layer and set: ``set``, ``layer``, ``frozen_in``, ``verdict`` in the other run, ``total``,
        ``error`` and the ``sentence`` said on the page (none when no layer is frozen).

    """
    out: list[dict[str, Any]] = []
    for da, db in pairs:
        for x, y, lx, ly in ((da, db, la, lb), (db, da, lb, la)):
            verdicts = x.verdicts
            for j, name in enumerate(y.layer_names):
                if name not in x.layer_names or np.any(y.per_layer[:, j] != 0):
                    continue
                i = x.layer_names.index(name)
                if not np.any(x.per_layer[:, i] != 0):
                    continue  # frozen in both: nothing to compare
                total, verdict = float(x.totals[i]), verdicts[i]
                situation = (
                    "the situation the paper froze a layer in"
                    if verdict == "hurts"
                    else "not the paper's situation (it froze a last layer that hurt overall)"
                )
                sentence = (
                    f"Premise, set '{x.name}': {name} is frozen in {ly} (its LCA is exactly 0 on every iteration); "
                    f"in {lx} it {verdict} (total {fmt(total)}, integration error {fmt(x.error)}): {situation}."
                )
                out.append({"set": x.name, "layer": name, "frozen_in": ly, "verdict": verdict, "total": total,
                            "error": x.error, "sentence": sentence})  # fmt: skip
    return out


def _view_loss(pdir: Path, pairs: Pairs, la: str, lb: str, premise: str = "") -> View:
    n = len(pairs)
    fig = figure(4.2 * n + 1.0, 3.4)
    axes = list(np.atleast_1d(fig.subplots(1, n, squeeze=False)[0]))
    for ax, (da, db) in zip(axes, pairs, strict=True):
        for d, color in ((da, RUN_COLORS[0]), (db, RUN_COLORS[1])):
            xs, ys = thinned(d.curves.steps, d.curves.true_loss)
            ax.plot(xs, ys, color=color, lw=1.6)
        ax.set_title(f"set '{da.name}'", fontsize=9)
        step_axis(ax)
    axes[0].set_ylabel("loss")
    _legend_runs(fig, la, lb)
    png = save_png(fig, pdir / "01_loss.png")
    run = "; ".join(
        f"{da.name}: final loss {la} {fmt(float(da.curves.true_loss[-1]))}, {lb} {fmt(float(db.curves.true_loss[-1]))}"
        for da, db in pairs
    )
    caption = (
        "The loss on each evaluation set at every checkpoint of both runs. Paper: the authors froze the last "
        f"layer at its initial values to study a last layer that hurt overall. This comparison: {run}."
        + (f" {premise}" if premise else " No layer is frozen (exactly 0 on every iteration) in either run.")
    )
    return View("loss", "Loss of both runs", png, caption)


def _view_layers(pdir: Path, pairs: Pairs, match: LayerMatch, la: str, lb: str) -> View:
    names = match.names
    n = len(pairs)
    fig = figure(3.8 * n + 2.0, max(2.6, 0.3 * len(names) + 1.5))
    axes = list(np.atleast_1d(fig.subplots(1, n, squeeze=False, sharey=True)[0]))
    y = np.arange(len(names))
    for col, (ax, (da, db)) in enumerate(zip(axes, pairs, strict=True)):
        ta = match.values(da.layer_names, da.totals)
        tb = match.values(db.layer_names, db.totals)
        ax.barh(y - 0.2, np.nan_to_num(ta), height=0.38, color=RUN_COLORS[0], xerr=np.where(np.isnan(ta), 0, da.error),
                error_kw={"lw": 0.8, "capsize": 2})  # fmt: skip
        ax.barh(y + 0.2, np.nan_to_num(tb), height=0.38, color=RUN_COLORS[1], xerr=np.where(np.isnan(tb), 0, db.error),
                error_kw={"lw": 0.8, "capsize": 2})  # fmt: skip
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel("total LCA over the window (← helped · hurt →)")
        ax.set_title(f"set '{da.name}'", fontsize=9)
        if col == 0:
            labels = [nm + ("" if nm in match.matched else f" (only {la if nm in match.only_a else lb})")
                      for nm in names]  # fmt: skip
            ax.set_yticks(y, labels)
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.grid(axis="y", visible=False)
    _legend_runs(fig, la, lb)
    png = save_png(fig, pdir / "02_layers.png")
    da, db = pairs[0]
    ta = match.values(da.layer_names, da.totals)
    tb = match.values(db.layer_names, db.totals)
    diff = tb - ta
    scale = da.error + db.error
    both = [i for i, nm in enumerate(names) if nm in match.matched]
    sig = [names[i] for i in both if abs(diff[i]) > scale]
    big = max(both, key=lambda i: abs(diff[i])) if both else None
    text = (
        f"on set '{da.name}', layers whose totals differ by more than the two runs' integration errors together "
        f"({fmt(scale, 2)}): {', '.join(sig) if sig else 'none'}"
    )
    if big is not None:
        text += f"; largest difference {names[big]} ({lb} − {la} = {fmt(float(diff[big]), 3)})"
    caption = (
        f"Each layer's total LCA in both runs, matched by name ({la} dark, {lb} orange), with each run's "
        "integration error (summed |residual|) as error bar: a difference smaller than the two errors together "
        f"is not a difference. {match.describe(la, lb)} This comparison: {text}."
    )
    return View("layers", "Per-layer totals side by side", png, caption, _layer_table(pairs, match, la, lb))


def _layer_table(pairs: Pairs, match: LayerMatch, la: str, lb: str) -> str:
    rows: list[tuple[str, str]] = []
    for da, db in pairs:
        ta = match.values(da.layer_names, da.totals)
        tb = match.values(db.layer_names, db.totals)
        va = dict(zip(da.layer_names, da.verdicts, strict=True))
        vb = dict(zip(db.layer_names, db.verdicts, strict=True))
        for nm, x, y in zip(match.names, ta, tb, strict=True):
            diff = "" if np.isnan(x) or np.isnan(y) else f"; {lb} − {la} = {fmt(float(y - x), 3)}"
            text_a = f"{la} {fmt(float(x), 4)} ({va.get(nm, 'absent')})"
            text_b = f"{lb} {fmt(float(y), 4)} ({vb.get(nm, 'absent')})"
            rows.append((f"{da.name}: {nm}", f"{text_a}, {text_b}{diff}"))
    return table(rows)


def _view_cumulative(pdir: Path, pairs: Pairs, match: LayerMatch, la: str, lb: str) -> View:
    da, db = pairs[0]
    ta = match.values(da.layer_names, da.totals)
    tb = match.values(db.layer_names, db.totals)
    gap = np.where(np.isnan(ta) | np.isnan(tb), np.nan_to_num(ta) + np.nan_to_num(tb), tb - ta)
    keep = highlighted_layers(gap, 9)
    chosen = [match.names[i] for i in keep]
    ncols = min(3, len(chosen) + 1)
    nrows = int(np.ceil((len(chosen) + 1) / ncols))
    fig = figure(3.1 * ncols + 0.4, 2.3 * nrows + 0.6)
    axes = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel()))
    panels = [("all layers (Σ LCA)", None), *((nm, nm) for nm in chosen)]
    for ax, (title, nm) in zip(axes, panels, strict=False):
        for d, color, ls in ((da, RUN_COLORS[0], "-"), (db, RUN_COLORS[1], "-")):
            x = np.concatenate([d.sel.start_steps[:1], d.sel.end_steps])
            if nm is None:
                series = d.per_layer.sum(axis=1)
            elif nm in d.layer_names:
                series = d.per_layer[:, d.layer_names.index(nm)]
            else:
                continue
            xs, cs = thinned(x, cumulative(series))
            ax.plot(xs, cs, color=color, lw=1.4, ls=ls)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(title, fontsize=8.5)
        step_axis(ax, "iteration (step)", fontsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    _legend_runs(fig, la, lb)
    png = save_png(fig, pdir / "03_cumulative.png")
    caption = (
        f"Cumulative LCA over time on set '{da.name}', one panel per layer ({la} dark, {lb} orange), for the "
        "whole network and for the first, the last and the layers whose totals differ most"
        + (f" ({len(chosen)} of {len(match.names)})" if len(chosen) < len(match.names) else "")
        + ". Going down = lowering the loss; where the lines part, the two runs allocate learning differently."
    )
    return View("cumulative", "Cumulative LCA per layer, both runs", png, caption)


def _view_shares(pdir: Path, pairs: Pairs, la: str, lb: str) -> View:
    from matplotlib.lines import Line2D

    n = len(pairs)
    fig = figure(4.2 * n + 1.0, 3.2)
    axes = list(np.atleast_1d(fig.subplots(1, n, squeeze=False, sharey=True)[0]))
    for ax, (da, db) in zip(axes, pairs, strict=True):
        for d, color in ((da, RUN_COLORS[0]), (db, RUN_COLORS[1])):
            h, z, _ = d.comp.shares()
            ax.plot(d.sel.start_steps, 100 * h, color=color, lw=1.0)
            ax.plot(d.sel.start_steps, 100 * z, color=color, lw=0.9, ls=":")
        ax.axhline(50, color=NEUTRAL_COLOR, lw=0.8, ls="--")
        ax.set_ylim(0, 100)
        step_axis(ax)
        ax.set_title(f"set '{da.name}'", fontsize=9)
    axes[0].set_ylabel("% of all parameters")
    extra = [
        Line2D([], [], color="black", lw=1.0, label="helped"),
        Line2D([], [], color="black", lw=0.9, ls=":", label="exactly zero"),
    ]
    _legend_runs(fig, la, lb, extra)
    png = save_png(fig, pdir / "04_shares.png")
    run = "; ".join(
        f"{da.name}: helped on average {la} {pct(float(da.comp.shares()[0].mean()))}, "
        f"{lb} {pct(float(db.comp.shares()[0].mean()))}"
        for da, db in pairs
    )
    floor = pairs[0][0].floor
    if floor:  # --min-abs: the counts are above the floor; say so, and what is below resolution
        below = "; ".join(
            f"{da.name}: {la} {pct(da.floor['below_resolution_share'])}, {lb} {pct(db.floor['below_resolution_share'])}"
            for da, db in pairs
            if da.floor and db.floor
        )
        run += (
            f". Noise floor {floor['min_abs']:g}: |LCA| <= {floor['min_abs']:g} counts as zero (dotted includes it); "
            f"entries below {floor['dtype']} resolution (0 < |LCA| <= eps x the iteration's largest): {below}"
        )
    caption = (
        "The share of all parameters that helped on each iteration (solid) and that were exactly zero (dotted), "
        f"both runs ({la} dark, {lb} orange). A frozen layer's parameters are exactly zero on every iteration. "
        f"This comparison: {run}."
    )
    return View("shares", "Helped and zero shares over time", png, caption)


def _view_milestones(pdir: Path, pairs: Pairs, match: LayerMatch, la: str, lb: str) -> View:
    names = match.names
    da, db = pairs[0]
    fig = figure(6.4, max(2.4, 0.28 * len(names) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(names))
    for d, color, dy in ((da, RUN_COLORS[0], -0.15), (db, RUN_COLORS[1], 0.15)):
        ends = d.sel.end_steps
        for j, nm in enumerate(names):
            if nm not in d.layer_names:
                continue
            k = d.layer_names.index(nm)
            p50, p90 = d.milestones[0, k], d.milestones[1, k]
            if p50 < 0:
                continue
            ax.plot([ends[p50], ends[p90]], [j + dy, j + dy], color=color, lw=2)
            ax.plot([ends[p50]], [j + dy], "o", mfc="white", mec=color, ms=5)
            ax.plot([ends[p90]], [j + dy], "o", color=color, ms=5)
    ax.set_yticks(y, names)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    step_axis(ax, "step")
    ax.set_title(f"set '{da.name}': when each layer had done 50% (open) and 90% (filled) of its learning", fontsize=9)
    _legend_runs(fig, la, lb)
    png = save_png(fig, pdir / "05_milestones.png")
    caption = (
        "For each layer of each run, the step by which it had done half (open) and 90% (filled) of its net "
        "learning over the window; layers that did not lower the loss overall have no milestones."
    )
    return View("milestones", "When each layer learned, both runs", png, caption)


# --------------------------------------------------------------------------------------------------------
# page


def _page(
    a: LcaStore,
    b: LcaStore,
    la: str,
    lb: str,
    pairs: Pairs,
    match: LayerMatch,
    nb: dict[str, Any],
    views: list[View],
) -> str:
    e = html.escape
    rows: list[tuple[str, str]] = [
        (f"run {la}", str(a.path)),
        (f"run {lb}", str(b.path)),
        ("sets compared", ", ".join(p[0].name for p in pairs)),
        ("layers", match.describe(la, lb)),
    ]
    for da, db in pairs:
        rows.append(
            (
                f"set {da.name}: iterations · final loss · integration error",
                f"{la} {da.sel.n} · {fmt(float(da.curves.true_loss[-1]))} · {fmt(da.error, 3)}; "
                f"{lb} {db.sel.n} · {fmt(float(db.curves.true_loss[-1]))} · {fmt(db.error, 3)}",
            )
        )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>LCA comparison: {e(la)} vs {e(lb)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>Loss Change Allocation: {e(la)} vs {e(lb)}</h1>",
        f'<p class="sub">generated by lca {e(__version__)} on {e(time.strftime("%Y-%m-%d %H:%M"))} in '
        f'{e(fmt(nb["seconds"], 3))} s · run colours: <b style="color:{RUN_COLORS[0]}">{e(la)}</b>, '
        f'<b style="color:{RUN_COLORS[1]}">{e(lb)}</b></p>',
        table(rows),
        f"<blockquote>Significance: {e(SIGNIFICANCE_RULE)}; a difference between the runs counts only when it "
        "exceeds both runs' integration errors together.</blockquote>",
    ]
    parts.extend(sections(views))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
