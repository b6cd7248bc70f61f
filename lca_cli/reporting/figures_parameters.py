"""Figures of single parameters: how often they help, the size of every LCA value, single trajectories.

Each ``draw_*`` function draws one view for every evaluation set side by side and writes its PNG into
``pdir`` (its caption is :mod:`lca_cli.reporting.captions`'). matplotlib is imported when drawing only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli.analysis.series import cumulative
from lca_cli.reporting.gather import SetData
from lca_cli.reporting.plots import (
    HELPED_COLOR,
    HURT_COLOR,
    NET_COLOR,
    column_axes,
    figure,
    helped_hurt_handles,
    save_png,
    step_axis,
    thinned,
)
from lca_cli.reporting.text import pct, set_title

__all__ = ["draw_helped_histograms", "draw_trajectories", "draw_values"]

#: Panel titles of the three kinds of followed parameters.
KIND_TITLE = {
    "helpful": "most helpful (most negative total)",
    "harmful": "most harmful (most positive total)",
    "random": "random parameters",
}


def draw_helped_histograms(pdir: Path, data: Sequence[SetData]) -> Path:
    """How the share of parameters helping is spread over iterations and over parameters: ``03_helped_histograms.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
    n = len(data)
    fig = figure(4.0 * n + 1.0, 4.6)
    axes = fig.subplots(2, n, squeeze=False)
    for col, d in enumerate(data):
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
        a1.set_title(f"{set_title(d.name)}: per iteration", fontsize=9)
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
    return save_png(fig, pdir / "03_helped_histograms.png")


def draw_values(pdir: Path, data: Sequence[SetData]) -> Path:
    """Every LCA value by magnitude on a log scale, helped and hurt apart: ``04_values.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
    n = len(data)
    fig = figure(4.0 * n + 1.0, 3.2)
    axes = column_axes(fig, n, sharey=True)
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
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
        ax.set_title(f"{set_title(d.name)}: {h.total:,} values, {pct(zero_share)} exactly 0", fontsize=9)
        if col == 0:
            ax.set_ylabel("% of all values\nper decade of |LCA|")
    handles = helped_hurt_handles()
    fig.legend(handles=handles, loc="outside lower center", ncol=2)
    return save_png(fig, pdir / "04_values.png")


def draw_trajectories(pdir: Path, data: Sequence[SetData], labels: Sequence[str], kinds: Sequence[str]) -> Path:
    """Running totals of single parameters per kind and set; per-iteration LCA of two: ``12_trajectories.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.
        labels: Name of each followed parameter.
        kinds: ``helpful`` / ``harmful`` / ``random`` of each.

    Returns:
        The PNG written.

    """
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
            ax = axes[r, col]
            x = np.concatenate([d.sel.start_steps[:1], d.sel.end_steps])
            xs, cs = thinned(x, cumulative(d.traj[:, idx]))
            for i, j in enumerate(idx):
                shade = shades[k](0.95 - 0.5 * i / max(1, len(idx) - 1))
                ax.plot(xs, cs[:, i], color=shade, lw=1.2, label=labels[j])
            ax.axhline(0, color="black", lw=0.6)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
            ax.set_title(f"{KIND_TITLE[k]} · {set_title(d.name)}", fontsize=8.5)
            if col == 0:
                ax.set_ylabel("cumulative LCA")
            if r == len(present) - 1:
                step_axis(ax)
        axes[r, -1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, handlelength=1.6)
    # Oscillation: per-iteration LCA of the most helpful and of the first random parameter (first set).
    main = data[0]
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
    return save_png(fig, pdir / "12_trajectories.png")
