"""``lca report A1 A2 A3 --vs B1 B2 B3``: two seed groups compared per layer, on every evaluation set.

Each group is summarised by :func:`lca_cli.analysis.groups.summarize_group` (per layer: mean, sample sd and n
over its stores) and the two are set side by side by :func:`lca_cli.analysis.groups.compare_groups` (B − A with
its standard error, :data:`~lca_cli.analysis.groups.DIFFERENCE_RULE`). The premise is checked before anything is
drawn: every store of a group has the same tensors and sets, and the two groups the same layers and sets
(:func:`~lca_cli.analysis.groups.check_comparable`). Every set is shown (``train`` first), not train only.

Like the two-store comparison, this reads only the small per-iteration arrays (unless ``--min-abs`` asks for the
noise floor, which streams ``lca`` once per store and set).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli import __version__
from lca_cli.analysis.groups import (
    DIFFERENCE_RULE,
    SD_RULE,
    GroupSummary,
    check_comparable,
    compare_groups,
    summarize_group,
)
from lca_cli.analysis.reduce import SIGNIFICANCE_RULE, Window, open_store
from lca_cli.errors import UsageError
from lca_cli.reporting.gather import resolve_sets
from lca_cli.reporting.html import CSS, ReportResult, View, output_folders, sections, table
from lca_cli.reporting.plots import RUN_COLORS, STYLE, figure, fmt, require_matplotlib, save_png, vector_copies

__all__ = ["write_group_comparison"]

#: Per set: the two groups' summaries and their comparison.
PerSet = list[tuple[str, GroupSummary, GroupSummary, dict[str, Any]]]

#: Header statistics listed per set on the page: key, what it is, digits.
_HEADLINE = (
    ("delta_loss", "ΔL over the window"),
    ("helped_share_mean", "helped share per iteration (of all parameters)"),
    ("hurt_share_mean", "hurt share per iteration (of all parameters)"),
    ("integration_error", "integration error Σ|residual|"),
    ("below_resolution_share", "entries below float resolution"),
)


def _g(x: float, digits: int = 2) -> str:
    """``x`` to ``digits`` significant digits: a nonzero spread never prints as 0."""
    return f"{x:.{digits}g}"


def _ms(s: dict[str, Any]) -> str:
    """``mean ± sd (n = k)`` of a ``{"mean", "sd", "n"}`` statistic."""
    sd = "" if s["sd"] is None else f" ± {_g(s['sd'])}"
    return f"{fmt(s['mean'])}{sd} (n = {s['n']})"


def _diff(d: dict[str, Any]) -> str:
    """``B − A = d ± se (t = ...)``; the se is missing when a group has fewer than 2 values."""
    if d["diff"] is None:
        return "n/a"
    if d["se"] is None:
        return f"{_g(d['diff'], 3)} (no se: a group has n < 2)"
    t = "" if d["t"] is None else f", t = {d['t']:.2f}"
    return f"{_g(d['diff'], 3)} ± {_g(d['se'])}{t}"


def write_group_comparison(
    group_a: Sequence[str | Path],
    group_b: Sequence[str | Path],
    out_html: str | Path,
    *,
    labels: Sequence[str] | None = None,
    set_names: Sequence[str] | None = None,
    steps: Window | None = None,
    png_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    min_abs: float | None = None,
) -> ReportResult:
    """Write an HTML page comparing two groups of stores (seeds of two conditions) per layer.

    Args:
        group_a: The stores of group A.
        group_b: The stores of group B.
        out_html: The page to write.
        labels: Names of the two groups (default ``A`` and ``B``).
        set_names: Evaluation sets (default every set, ``train`` first).
        steps: Window over start steps, in every store.
        png_dir: Where the PNG figures go (default ``<out_html stem>_files/``).
        progress: Called with one-line messages.
        min_abs: A noise floor for the helped / hurt shares (:mod:`lca_cli.analysis.floor`).

    Returns:
        The page, its figures and the numbers: ``per_set[set]`` is :func:`compare_groups`'s result.

    Raises:
        UsageError: Stores that are not comparable, labels not two, a set or window no store has.
        StoreError: A store that cannot be read or has nothing finished in the window.
        LcaError: If matplotlib is not installed.

    """
    say = progress or (lambda _msg: None)
    if labels and len(labels) != 2:
        raise UsageError(f"--label: give one per group (2), got {len(labels)}")
    la, lb = (list(labels) if labels else ["A", "B"])[:2]
    a = [open_store(p) for p in group_a]
    b = [open_store(p) for p in group_b]
    if not a or not b:
        raise UsageError("a group comparison needs at least one store on each side of --vs")
    check_comparable(a)
    check_comparable(b)
    check_comparable([a[0], b[0]], layers_only=True)
    if sorted(a[0].sets) != sorted(b[0].sets):
        raise UsageError(
            f"the groups are not comparable: {la} has sets {', '.join(a[0].sets)}, {lb} {', '.join(b[0].sets)}"
        )
    sets, _ = resolve_sets(a[0], set_names)
    mpl = require_matplotlib()
    t0 = time.perf_counter()
    say(f"comparing {la} ({len(a)} stores) with {lb} ({len(b)} stores) on set(s) {', '.join(sets)}")
    per_set: PerSet = []
    for s in sets:
        ga = summarize_group(a, by="layer", set_name=s, window=steps, min_abs=min_abs)
        gb = summarize_group(b, by="layer", set_name=s, window=steps, min_abs=min_abs)
        per_set.append((s, ga, gb, compare_groups(ga, gb, (la, lb))))
    out, pdir = output_folders(out_html, png_dir)
    with mpl.rc_context(STYLE):
        views = [
            _view_stat(pdir, per_set, la, lb, "lca", "01_layers.png"),
            _view_stat(pdir, per_set, la, lb, "helped_share", "02_helped.png"),
        ]
    numbers: dict[str, Any] = {
        "labels": [la, lb],
        "stores": [[str(st.path) for st in a], [str(st.path) for st in b]],
        "sets": sets,
        "layers": [str(r["name"]) for r in per_set[0][1].rows],
        "min_abs": min_abs,
        "sd_rule": SD_RULE,
        "difference_rule": DIFFERENCE_RULE,
        "per_set": {s: cmp for s, _, _, cmp in per_set},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    out.write_text(_page(la, lb, per_set, numbers, views), encoding="utf-8")
    say(f"wrote {out} ({len(views)} figures in {pdir})")
    pngs = [v.png for v in views if v.png is not None]
    return ReportResult(out, pngs, numbers, vector_copies(pngs))


_STAT_TEXT = {
    "lca": ("Per-layer total LCA", "total LCA over the window (← helped · hurt →)"),
    "helped_share": ("Per-layer helped share", "helped share of the layer's parameters x iterations"),
}


def _view_stat(pdir: Path, per_set: PerSet, la: str, lb: str, stat: str, name: str) -> View:
    """Per layer and set: each group's mean with its sd as error bar, and every store's own value as a dot."""
    from matplotlib.lines import Line2D

    title, xlabel = _STAT_TEXT[stat]
    names = [str(r["name"]) for r in per_set[0][1].rows]
    n = len(per_set)
    fig = figure(3.8 * n + 2.0, max(2.6, 0.34 * len(names) + 1.5))
    axes = list(np.atleast_1d(fig.subplots(1, n, squeeze=False, sharey=True)[0]))
    y = np.arange(len(names))
    for col, (ax, (s, ga, gb, _)) in enumerate(zip(axes, per_set, strict=True)):
        for g, color, dy in ((ga, RUN_COLORS[0], -0.2), (gb, RUN_COLORS[1], 0.2)):
            mean = np.array([np.nan if r[f"{stat}_mean"] is None else r[f"{stat}_mean"] for r in g.rows])
            sd = np.array([0.0 if r[f"{stat}_sd"] is None else r[f"{stat}_sd"] for r in g.rows])
            scale = 100.0 if stat == "helped_share" else 1.0
            ax.barh(y + dy, np.nan_to_num(mean) * scale, height=0.38, color=color, alpha=0.55,
                    xerr=sd * scale, error_kw={"lw": 0.9, "capsize": 2})  # fmt: skip
            for m in g.members:  # (L,) each store's own value: the spread the bars summarise
                vals = np.array([np.nan if r[stat] is None else r[stat] for r in m.rows], dtype=float)
                ax.plot(vals * scale, y + dy, "o", color=color, ms=3.2, mec="white", mew=0.4)
        ax.axvline(50.0 if stat == "helped_share" else 0.0, color="black", lw=0.8)
        ax.set_xlabel(xlabel + (" (%)" if stat == "helped_share" else ""))
        ax.set_title(f"set '{s}'", fontsize=9)
        if col == 0:
            ax.set_yticks(y, names)
            ax.set_ylim(len(names) - 0.5, -0.5)
            ax.grid(axis="y", visible=False)
    handles = [
        Line2D([], [], color=RUN_COLORS[0], lw=6, alpha=0.55, label=f"{la} mean ± sd"),
        Line2D([], [], color=RUN_COLORS[1], lw=6, alpha=0.55, label=f"{lb} mean ± sd"),
        Line2D([], [], color="black", marker="o", ls="", ms=3.2, label="one store"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    png = save_png(fig, pdir / name)
    caption = (
        f"{title} of every evaluation set: each group's mean over its stores (bars) with the sample sd "
        f"(ddof = 1) as error bar, and every store's own value (dots). {_largest(per_set, stat, la, lb)}"
    )
    return View(stat, f"{title}, {la} vs {lb}", png, caption, _stat_table(per_set, stat, la, lb))


def _largest(per_set: PerSet, stat: str, la: str, lb: str) -> str:
    """A sentence per set on the layer whose difference is largest relative to its standard error."""
    parts = []
    for s, _, _, cmp in per_set:
        rated = [(r["name"], r["stats"][stat]) for r in cmp["rows"] if r["stats"][stat]["t"] is not None]
        if not rated:
            parts.append(f"On set '{s}' no difference has a standard error (a group has fewer than 2 stores).")
            continue
        name, d = max(rated, key=lambda x: abs(x[1]["t"]))
        parts.append(f"On set '{s}' the largest |t| is {name}'s: {lb} − {la} = {_diff(d)}.")
    return " ".join(parts)


def _stat_table(per_set: PerSet, stat: str, la: str, lb: str) -> str:
    rows: list[tuple[str, str]] = []
    for s, _, _, cmp in per_set:
        for r in cmp["rows"]:
            d = r["stats"][stat]
            rows.append((f"{s}: {r['name']}", f"{la} {_ms(d['a'])} · {lb} {_ms(d['b'])} · {lb} − {la} = {_diff(d)}"))
    return table(rows)


def _page(la: str, lb: str, per_set: PerSet, nb: dict[str, Any], views: list[View]) -> str:
    e = html.escape
    layers = nb["layers"]
    rows: list[tuple[str, str]] = [
        (f"group {la} ({len(nb['stores'][0])} stores)", ", ".join(nb["stores"][0])),
        (f"group {lb} ({len(nb['stores'][1])} stores)", ", ".join(nb["stores"][1])),
        (
            "premise (checked)",
            f"every store of a group has the same tensors and sets; both groups have the same {len(layers)} layers "
            f"({', '.join(layers)}) and sets ({', '.join(nb['sets'])})",
        ),
    ]
    if nb["min_abs"] is not None:
        rows.append(("noise floor", f"|lca| <= {nb['min_abs']:g} counts as zero in helped / hurt (totals unchanged)"))
    for s, _, _, cmp in per_set:
        for key, what in _HEADLINE:
            if key in cmp["stats"]:
                d = cmp["stats"][key]
                rows.append((f"set {s}: {what}", f"{la} {_ms(d['a'])} · {lb} {_ms(d['b'])} · {lb} − {la} = {_diff(d)}"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>LCA group comparison: {e(la)} vs {e(lb)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>Loss Change Allocation: {e(la)} vs {e(lb)}, seed groups</h1>",
        f'<p class="sub">generated by lca {e(__version__)} on {e(time.strftime("%Y-%m-%d %H:%M"))} in '
        f'{e(fmt(nb["seconds"], 3))} s · group colours: <b style="color:{RUN_COLORS[0]}">{e(la)}</b>, '
        f'<b style="color:{RUN_COLORS[1]}">{e(lb)}</b></p>',
        table(rows),
        f"<blockquote>Spread: {e(SD_RULE)}. Differences: {e(DIFFERENCE_RULE)}. Within one store: "
        f"{e(SIGNIFICANCE_RULE)}.</blockquote>",
    ]
    parts.extend(sections(views))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
