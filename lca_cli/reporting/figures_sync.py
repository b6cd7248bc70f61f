"""The synchronisation figure: each layer's learning with its peaks, and the test against two baselines.

:func:`draw_sync` writes its PNG into ``pdir`` (its caption is :mod:`lca_cli.reporting.captions`', its table
:func:`lca_cli.reporting.html.sync_table`). matplotlib is imported when drawing only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli.reporting.gather import SetData
from lca_cli.reporting.plots import (
    NET_COLOR,
    NEUTRAL_COLOR,
    RECON_COLOR,
    binned,
    figure,
    fmt,
    layer_colors,
    save_png,
    step_axis,
)
from lca_cli.reporting.text import set_title

__all__ = ["draw_sync"]


def _learning_panel(ax: Any, d: SetData, colors: Sequence[Any], names: Sequence[str] | None) -> None:
    """One set's per-layer learning, each layer on its own row and scale, with its peaks (names: first column)."""
    sy = d.sync
    n_l = len(colors)
    x = d.sel.start_steps
    tested = set(sy.shift.layers)
    labelled: set[bool] = set()
    for j in range(n_l):
        s = sy.learning[:, j]
        scale = float(np.quantile(np.abs(s), 0.99)) or 1.0
        xb, yb = binned(x, s / scale)
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
    if names is not None:
        ax.set_yticks(np.arange(n_l), names[::-1] if n_l <= 45 else [""] * n_l,
                      fontsize=7 if n_l > 16 else 8)  # fmt: skip
    ax.set_ylim(-0.8, n_l - 0.2)
    ax.grid(axis="y", visible=False)
    step_axis(ax)
    ax.set_title(f"{set_title(d.name)}: learning = −LCA per layer, own scale", fontsize=8.5)


def _test_panel(b: Any, d: SetData) -> None:
    """One set's statistic against both baselines' histograms, or why there is no test."""
    sy = d.sync
    drew = False
    for r, color, lab in ((sy.shift, NEUTRAL_COLOR, "circular shifts"),
                          (sy.controlled_shift, RECON_COLOR, "step-size controlled, shifts")):  # fmt: skip
        if r.tested and r.n_shuffles:
            b.hist(r.baseline, bins=30, color=color, alpha=0.55, histtype="stepfilled", label=f"baseline: {lab}")
            b.axvline(r.observed, color=color, lw=2.2,
                      label=f"observed ({lab.split(',')[0]}) {fmt(r.observed, 3)}, {r.p_text()}")  # fmt: skip
            drew = True
    if not drew:
        b.text(0.5, 0.5, "no test:\n" + sy.shift.reason.removeprefix("no test: ").replace(" (", "\n("),
               transform=b.transAxes, ha="center", va="center", fontsize=8.5)  # fmt: skip
        b.set_axis_off()
    else:
        b.legend(loc="upper left", bbox_to_anchor=(0.0, -0.28), fontsize=7, ncol=1)
    b.set_xlabel("mean pairwise peak overlap (Jaccard, ±1 iteration)")
    b.set_title(f"{d.name}: observed vs chance", fontsize=8.5)


def draw_sync(pdir: Path, data: Sequence[SetData]) -> Path:
    """Per-layer learning with its peaks (top) and the statistic against both baselines (bottom): ``13_sync.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.

    Returns:
        The PNG written.

    """
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
        _learning_panel(axes[col], d, colors, names if col == 0 else None)
        _test_panel(baxes[col], d)
    handles, labels = [], []
    for ax in axes:
        for hnd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(hnd)
                labels.append(lab)
    if handles:
        top.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=7.5)
    return save_png(fig, pdir / "13_sync.png")
