"""Figures below the layer: neuron x iteration heat maps and the first layer's input pixels.

Each ``draw_*`` function draws one view for every evaluation set side by side and writes its PNG into
``pdir`` (its caption is :mod:`lca_cli.reporting.captions`'). Maps use the diverging colour map centred at
0 (blue = helped, red = hurt), one scale shared by the sets. matplotlib is imported when drawing only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lca_cli.reporting.gather import InputImage, SetData
from lca_cli.reporting.numbers import input_pixels
from lca_cli.reporting.plots import (
    DIVERGING_CMAP,
    column_axes,
    figure,
    helped_hurt_handles,
    save_png,
    step_axis,
)
from lca_cli.reporting.text import set_title

__all__ = ["draw_heatmaps", "draw_input_maps"]


def draw_heatmaps(pdir: Path, data: Sequence[SetData], groups: Sequence[int], output_group: int) -> Path:
    """Neuron x iteration maps of the mapped layers, rows in the headline set's order: ``10_heatmaps.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.
        groups: Neuron group (layer) of each map.
        output_group: The output layer's group (its rows are classes).

    Returns:
        The PNG written.

    """
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
    return save_png(fig, pdir / "10_heatmaps.png")


def draw_input_maps(pdir: Path, data: Sequence[SetData], image: InputImage) -> Path:
    """Each input pixel's LCA summed over the first layer's weights on it: ``11_input_maps.png``.

    Args:
        pdir: Folder of the page's figures.
        data: The sets shown, headline first.
        image: The first layer's input image.

    Returns:
        The PNG written.

    """
    from matplotlib.colors import Normalize

    _, h, w = image.shape
    n = len(data)
    fig = figure(2.9 * n + 1.2, 3.2)
    axes = column_axes(fig, n)
    pixels = [input_pixels(d, image) for d in data]  # per set: (h, w) totals, pixels that never moved
    vmax = max(float(np.abs(p).max()) for p, _ in pixels) or 1e-12
    images = []
    for ax, d, (img, zp) in zip(axes, data, pixels, strict=True):
        images.append(ax.imshow(img, cmap=DIVERGING_CMAP, norm=Normalize(-vmax, vmax), interpolation="nearest"))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(f"{set_title(d.name)}\n{zp} of {h * w} pixels never moved", fontsize=8.5)
    cb = fig.colorbar(images[-1], ax=axes, fraction=0.04, pad=0.02)
    cb.set_label("LCA summed over the pixel's weights", fontsize=7.5)
    cb.ax.ticklabel_format(style="sci", scilimits=(-2, 3))
    return save_png(fig, pdir / "11_input_maps.png")
