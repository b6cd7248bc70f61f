"""Shared drawing helpers: true-colour PNGs at twice the display size, cumulative lines from 0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from lca_cli.reporting.plots import (
    DPI,
    SCALE,
    binned,
    column_axes,
    cumulative_layers,
    figure,
    highlighted_layers,
    png_info,
    save_png,
    step_axis,
    thinned,
)


def test_save_png_is_true_colour_at_twice_the_resolution(tmp_path: Path) -> None:
    fig = figure(3, 2)
    ax = fig.subplots()
    ax.imshow(np.linspace(-1, 1, 400).reshape(20, 20), cmap="RdBu_r")  # many colours: a palette would lose them
    path = save_png(fig, tmp_path / "f.png")
    w, h, depth, colour_type = png_info(path)
    assert (w, h) == (3 * DPI * SCALE, 2 * DPI * SCALE)
    assert (depth, colour_type) == (8, 2)
    assert b"tEXt" not in path.read_bytes()  # no software name or URL
    assert fig.dpi == DPI  # the figure is left at its display resolution
    with pytest.raises(ValueError, match="not a PNG"):
        png_info(Path(__file__))


def test_cumulative_lines_start_at_zero_and_keep_their_colour() -> None:
    fig = figure(4, 3)
    ax = fig.subplots()
    values = np.array([[-1.0, 0.5], [-2.0, 0.25], [-0.5, -0.25]])
    cum = np.concatenate([np.zeros((1, 2)), np.cumsum(values, axis=0)])
    cumulative_layers(ax, np.array([10, 11, 12, 13]), cum, ["first", "last"])
    lines = {line.get_label(): line for line in ax.get_lines()}
    for name in ("first", "last", "all layers (Σ LCA)"):
        assert lines[name].get_xdata()[0] == 10 and lines[name].get_ydata()[0] == 0.0
    assert lines["first"].get_color() != lines["last"].get_color()


def test_highlighted_layers_keep_the_first_the_last_and_the_largest() -> None:
    totals = np.zeros(41)
    totals[[5, 17, 30]] = [-3.0, 2.0, -1.0]
    assert highlighted_layers(totals, 5) == [0, 5, 17, 30, 40]
    assert highlighted_layers(np.ones(4), 12) == [0, 1, 2, 3]


def test_step_axes_tick_whole_steps_only() -> None:
    # Three iterations over steps 0..3: matplotlib's default locator ticks 0.5 steps apart.
    fig = figure(3, 2)
    ax = fig.subplots()
    ax.plot([0, 1, 2, 3], [0.0, 1.0, 0.5, 0.2])
    ax.set_xlim(0, 3)
    fig.canvas.draw()
    assert any(t != int(t) for t in ax.get_xticks())  # the default, so the test can fail
    step_axis(ax)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 0 <= t <= 3]
    assert ticks and all(t == int(t) for t in ticks) and ax.get_xlabel() == "iteration (step)"


def test_long_series_are_binned_or_thinned() -> None:
    x = np.arange(10)
    y = np.arange(10.0) * 2
    assert binned(x, y, 20)[0] is x and thinned(x, y, 20)[1] is y  # short series unchanged
    xb, yb = binned(x, np.stack([y, -y], 1), 5)  # means over 5 bins of 2
    np.testing.assert_array_equal(xb, [0.5, 2.5, 4.5, 6.5, 8.5])
    np.testing.assert_array_equal(yb, np.stack([2 * xb, -2 * xb], 1))
    xt, yt = thinned(x, y, 4)  # every third point, the first and the last always kept
    np.testing.assert_array_equal(xt, [0, 3, 6, 9])
    np.testing.assert_array_equal(yt, 2 * xt)


def test_column_axes_are_a_list_even_for_one_column() -> None:
    assert len(column_axes(figure(3, 2), 1)) == 1
    axes = column_axes(figure(6, 2), 3, sharey=True)
    assert len(axes) == 3 and axes[1].get_shared_y_axes().joined(axes[0], axes[1])
