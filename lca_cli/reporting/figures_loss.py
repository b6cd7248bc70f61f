"""Figures of the whole network per iteration: the loss and its reconstruction, helped / zero / hurt shares.

Each ``draw_*`` function draws one view for every evaluation set side by side and writes its PNG into
``pdir`` (its caption is :mod:`lca_cli.reporting.captions`'). matplotlib is imported when drawing only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lca_cli.reporting.gather import SetData
from lca_cli.reporting.plots import (
    HELPED_COLOR,
    HURT_COLOR,
    NET_COLOR,
    NEUTRAL_COLOR,
    RECON_COLOR,
    ZERO_COLOR,
    binned,
    column_axes,
    figure,
    fmt,
    helped_hurt_handles,
    save_png,
    step_axis,
    thinned,
)
from lca_cli.reporting.text import set_title

__all__ = ["draw_composition", "draw_loss"]


def draw_loss(pdir: Path, data: Sequence[SetData]) -> Path:
    """True vs reconstructed loss per set (top) and the residual of each iteration (bottom): ``01_loss.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
    n = len(data)
    fig = figure(4.2 * n + 1.4, 4.6)
    axes = fig.subplots(2, n, squeeze=False, sharex="col", height_ratios=[2, 1])
    for col, d in enumerate(data):
        ax1, ax2 = axes[0, col], axes[1, col]
        c = d.curves
        for g in np.unique(c.segment):
            m = c.segment == g
            xs, ys = thinned(c.steps[m], np.stack([c.true_loss[m], c.reconstructed[m]], axis=1))
            ax1.plot(xs, ys[:, 0], color=NET_COLOR, lw=1.6, label="true loss" if g == 0 else None)
            ax1.plot(xs, ys[:, 1], color=RECON_COLOR, lw=1.2, ls="--",
                     label="loss[start] + cumulative Σ LCA" if g == 0 else None)  # fmt: skip
        ax1.set_title(f"{set_title(d.name)}: ΔL = {fmt(float(c.delta_loss.sum()))}")
        if col == 0:
            ax1.set_ylabel("loss (loss units)")
        x = d.sel.start_steps
        xr, rr = binned(x, c.residual)
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
    return save_png(fig, pdir / "01_loss.png")


def draw_composition(pdir: Path, data: Sequence[SetData]) -> Path:
    """Helped / zero / hurt shares of all parameters per iteration, with the loss: ``02_composition.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
    n = len(data)
    fig = figure(4.2 * n + 1.6, 3.8)
    axes = column_axes(fig, n, sharey=True)
    for col, (ax, d) in enumerate(zip(axes, data, strict=True)):
        helped, zero, hurt = d.comp.shares()
        x = d.sel.start_steps
        # Shares averaged in at most 300 bins: per-iteration noise over thousands of iterations hides the trend.
        xb, yb = binned(x, np.stack([helped, zero, hurt], axis=1), 300)
        ax.stackplot(xb, 100 * yb[:, 0], 100 * yb[:, 1], 100 * yb[:, 2],
                     colors=[HELPED_COLOR, ZERO_COLOR, HURT_COLOR], alpha=0.85, lw=0)  # fmt: skip
        xf, ff = binned(x, d.comp.nonzero_fraction(), 300)
        ax.plot(xf, 100 * ff, color="white", lw=1.4, ls="--")
        ax.plot(xf, 100 * ff, color=NET_COLOR, lw=0.8, ls="--", label="helped / (helped + hurt), zeros excluded")
        ax.axhline(50, color="white", lw=0.8, ls=":")
        ax.set_ylim(0, 100)
        step_axis(ax)
        ax.set_title(set_title(d.name))
        ax.grid(False)
        if col == 0:
            ax.set_ylabel("% of all parameters")
        twin = ax.twinx()
        c = d.curves
        xs, ls = thinned(c.steps, c.true_loss)
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
    return save_png(fig, pdir / "02_composition.png")
