"""Figures per layer: totals, helped / zero / hurt shares, cumulative LCA, milestones, concentration.

Each ``draw_*`` function draws one view for every evaluation set side by side and writes its PNG into
``pdir`` (its caption is :mod:`lca_cli.reporting.captions`'). Layers keep the model's order, input side at
the top, and one colour by depth in every panel. matplotlib is imported when drawing only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli.analysis.series import cumulative
from lca_cli.reporting.gather import SetData
from lca_cli.reporting.plots import (
    HELPED_COLOR,
    HURT_COLOR,
    NET_COLOR,
    NEUTRAL_COLOR,
    ZERO_COLOR,
    column_axes,
    cumulative_layers,
    figure,
    helped_hurt_handles,
    highlighted_layers,
    layer_colors,
    save_png,
    sign_hints,
    step_axis,
    thinned,
)
from lca_cli.reporting.text import pct, set_title

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["draw_concentration", "draw_cumulative", "draw_layer_shares", "draw_layers", "draw_milestones"]


def _net_label_colours(ax: Axes, verdicts: Sequence[str]) -> None:
    """Layer names in red bold where the layer hurts, grey italic where its total is within error."""
    for lab, v in zip(ax.get_yticklabels(), verdicts, strict=True):
        if v == "hurts":
            lab.set_color(HURT_COLOR)
            lab.set_fontweight("bold")
        elif v == "within error":
            lab.set_color(NEUTRAL_COLOR)
            lab.set_fontstyle("italic")


def _layer_axes(n_sets: int, n_layers: int, extra_width: float = 0.0) -> tuple[Any, list[Axes]]:
    """A figure with one column of axes per set, sharing the layer axis, tall enough for every layer name."""
    fig = figure(3.6 * n_sets + 1.6 + extra_width, max(2.6, 0.24 * n_layers + 1.5))
    return fig, column_axes(fig, n_sets, sharey=True)


def _layer_ticks(ax: Axes, names: Sequence[str], verdicts: Sequence[str] | None = None) -> None:
    """Layer names on the y axis, input side at the top (coloured by verdict when given)."""
    y = np.arange(len(names))
    ax.set_yticks(y, list(names))
    if verdicts is not None:
        _net_label_colours(ax, verdicts)
    ax.set_ylim(len(names) - 0.5, -0.5)  # input side at the top
    ax.grid(axis="y", visible=False)


def draw_layers(pdir: Path, data: Sequence[SetData]) -> Path:
    """Per layer, the sums of its helped and hurt entries and its net total ± its error estimate: ``05_layers.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
    names = data[0].layer_names
    fig, axes = _layer_axes(len(data), len(names), 0.6)
    y = np.arange(len(names))
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        neg, pos = np.asarray(d.layer_neg), np.asarray(d.layer_pos)
        net = d.totals
        ax.barh(y, neg, color=HELPED_COLOR, height=0.7, label="helped: Σ of all negative LCA entries")
        ax.barh(y, pos, color=HURT_COLOR, height=0.7, label="hurt: Σ of all positive LCA entries")
        ax.errorbar(net, y, xerr=d.layer_errors, fmt="D", color=NET_COLOR, ms=4, capsize=2.5, lw=1,
                    label="net total ± the layer's error estimate")  # fmt: skip
        ax.axvline(0, color="black", lw=0.8)
        if col == 0:
            _layer_ticks(ax, names, d.verdicts)
            ax.set_ylabel("layer (input side at top)")
        ax.set_xlabel("LCA over the window (loss units)")
        ax.set_title(set_title(d.name), fontsize=9)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2)
    return save_png(fig, pdir / "05_layers.png")


def draw_layer_shares(pdir: Path, data: Sequence[SetData]) -> Path:
    """Per layer, the helped / zero / hurt shares of its parameter-iterations: ``06_layer_shares.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
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
        ax.set_title(set_title(d.name), fontsize=9)
        if col == 0:
            _layer_ticks(ax, names)
    fig.legend(handles=[*helped_hurt_handles(zero=True), *axes[0].get_legend_handles_labels()[0]],
               loc="outside lower center", ncol=4)  # fmt: skip
    return save_png(fig, pdir / "06_layer_shares.png")


def draw_cumulative(pdir: Path, data: Sequence[SetData]) -> Path:
    """Each layer's running total of LCA over the steps: ``07_cumulative.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
    names = data[0].layer_names
    n = len(data)
    fig = figure(3.9 * n + 2.6, 4.2)
    axes = column_axes(fig, n, sharey=True)
    keep = highlighted_layers(data[0].totals)
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        x = np.concatenate([d.sel.start_steps[:1], d.sel.end_steps])
        xs, cs = thinned(x, cumulative(d.per_layer))
        cumulative_layers(ax, xs, cs, names, keep)
        ax.set_title(set_title(d.name), fontsize=9)
        step_axis(ax)
        sign_hints(ax)
        if col == 0:
            ax.set_ylabel("cumulative LCA (loss units)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper",
               title="layer (dark = input side)", fontsize=7.5)  # fmt: skip
    return save_png(fig, pdir / "07_cumulative.png")


def draw_milestones(pdir: Path, data: Sequence[SetData]) -> Path:
    """The steps by which each layer had done 50% and 90% of its learning: ``08_milestones.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
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
        ax.set_title(set_title(d.name), fontsize=9)
        if col == 0:
            _layer_ticks(ax, names, d.verdicts)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], ls="none", marker="o", mfc="white", mec=NET_COLOR, label="50% of the layer's learning done"),
        Line2D([], [], ls="none", marker="o", color=NET_COLOR, label="90% done"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    return save_png(fig, pdir / "08_milestones.png")


def draw_concentration(pdir: Path, data: Sequence[SetData]) -> Path:
    """How much of the learning the top x% of parameters do, overall and per layer: ``09_concentration.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
    names = data[0].layer_names
    n = len(data)
    fig = figure(3.6 * n + 2.6, 3.8)
    axes = column_axes(fig, n, sharey=True)
    colors = layer_colors(len(names))
    keep = highlighted_layers(data[0].totals)
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        c = d.conc
        ax.plot(100 * c.curve_x, 100 * c.curve_y, color=NET_COLOR, lw=2, label="whole network")
        for j in keep:
            lc = d.layer_curve(j)
            if lc is not None:
                ax.plot(100 * lc.curve_x, 100 * lc.curve_y, color=colors[j], lw=1.1, label=names[j])
        for f, share in zip(c.fractions, c.shares, strict=True):
            if math.isfinite(share):
                ax.plot([100 * share], [100 * f], "o", color=NET_COLOR, ms=4)
                ax.annotate(f"{pct(float(share), 0)} do {int(100 * f)}%", (100 * share, 100 * f),
                            textcoords="offset points", xytext=(6, -10), fontsize=7.5)  # fmt: skip
        ax.plot([0, 100], [0, 100], color=NEUTRAL_COLOR, lw=0.8, ls=":", label="equal shares")
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 101)
        ax.set_xlabel("% of parameters, most helpful first")
        ax.set_title(set_title(d.name), fontsize=9)
        if col == 0:
            ax.set_ylabel("% of the learning they do")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=7.5,
               title="curve (layers: dark = input side)")  # fmt: skip
    return save_png(fig, pdir / "09_concentration.png")
