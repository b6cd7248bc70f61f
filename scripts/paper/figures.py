"""The page's figures, in the style of ``lca report`` (its plotting helpers): one function per figure family.

Each ``*_figure`` function draws one figure from the findings and returns it (None when it has nothing to
draw); :func:`make_figures` saves them as small true-colour PNGs. matplotlib is optional: without it the page
has no figures.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli import LcaError
from lca_cli.reporting.plots import (
    HELPED_COLOR,
    HURT_COLOR,
    NET_COLOR,
    NEUTRAL_COLOR,
    RUN_COLORS,
    STYLE,
    ZERO_COLOR,
    cumulative_layers,
    figure,
    helped_hurt_handles,
    highlighted_layers,
    layer_colors,
    require_matplotlib,
    save_png,
)

from .findings import Findings
from .runs import Log, RunResult

#: ``lca report`` views pictured in the README, and the file name each gets in docs/figures/.
README_VIEWS = {
    "composition": "02_composition.png",
    "values": "04_values.png",
    "layers": "05_layers.png",
    "layer_shares": "06_layer_shares.png",
    "cumulative": "07_cumulative.png",
    "milestones": "08_milestones.png",
    "concentration": "09_concentration.png",
    "heatmaps": "10_heatmaps.png",
    "input_maps": "11_input_maps.png",
    "trajectories": "12_trajectories.png",
    "sync": "13_sync.png",
}

#: The page's figures as they were named before they were numbered (removed when the page is redrawn).
UNNUMBERED = ("helped_fraction", "cumulative_layer_lca", "layer_totals", "layer_learning_peaks", "freeze_last_layer")

#: Figures larger than this are worth a warning (the tests allow 500 KB per committed figure).
LARGE_FIGURE = 450_000


def make_figures(found: Findings, figdir: Path, work: Path, log: Log) -> dict[str, str]:
    """Draw and save every figure into ``figdir``.

    Empty when matplotlib is missing. Besides the findings' figures, pictures of ``lca report``'s views on the
    FC MNIST run (and of the comparison normal vs last layer frozen) are copied here as ``report_*.png`` for the
    README, in the modes that produce the committed page.

    Args:
        found: The findings.
        figdir: Where the PNGs go (``OUT/figures``).
        work: The work directory (the HTML reports go there).
        log: Progress lines.

    Returns:
        ``{name: path relative to the page}`` of the figures written.

    """
    try:
        mpl = require_matplotlib()
    except LcaError as exc:
        log(f"  {exc}: no figures")
        return {}
    figdir.mkdir(parents=True, exist_ok=True)
    # A figure of an earlier page that this one does not draw would stay linked to nothing under a stale number.
    for old in [*figdir.glob("fig[0-9]*_*.png"), *(figdir / f"{name}.png" for name in UNNUMBERED)]:
        old.unlink(missing_ok=True)
    out: dict[str, str] = {}
    found.figure_numbers = {}
    with mpl.rc_context(STYLE):
        for name, draw in PAGE_FIGURES:
            fig = draw(found)
            if fig is not None:
                # numbered in page order over the figures drawn, so "Figure N" and figN_NAME.png stay in step
                n = len(found.figure_numbers) + 1
                save_png(fig, figdir / figure_file(n, name))
                out[name] = f"figures/{figure_file(n, name)}"
                found.figure_numbers[name] = n
    if found.mode in ("cpu-scale", "full"):  # the README's pictures come from the committed page's runs
        out.update(report_figures(found.runs, figdir, work, log))
    for name, rel in out.items():
        size = (figdir.parent / rel).stat().st_size
        if size > LARGE_FIGURE:
            log(f"  warning: figure {name} is {size // 1000} KB")
    return out


def helped_fraction_figure(found: Findings) -> Any:
    """Finding 1: helped / zero / hurt shares per iteration, one panel per run, with the zeros-excluded fraction."""
    from matplotlib.lines import Line2D

    noise = found.noise
    keys = list(noise)
    fig = figure(8.5, 2.1 * math.ceil(len(keys) / 2) + 0.8)
    axes = np.atleast_1d(fig.subplots(math.ceil(len(keys) / 2), 2, squeeze=False).ravel())
    for ax, k in zip(axes, keys, strict=False):
        sh = noise[k]["shares"]
        x = np.arange(1, len(sh) + 1)
        ax.stackplot(x, 100 * sh[:, 0], 100 * sh[:, 1], 100 * sh[:, 2],
                     colors=[HELPED_COLOR, ZERO_COLOR, HURT_COLOR], lw=0)  # fmt: skip
        ax.plot(x, 100 * noise[k]["iter_fracs"], color=NET_COLOR, lw=0.7, ls="--")
        ax.axhline(50, color="white", lw=0.8, ls=":")
        ax.set_ylim(0, 100)
        ax.set_xscale("log")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("iteration (log scale)")
        ax.set_ylabel("% of parameters")
        ax.grid(False)
    for ax in axes[len(keys) :]:
        ax.set_axis_off()
    dashed = Line2D([], [], color=NET_COLOR, lw=0.7, ls="--", label="helped / (helped + hurt), zeros excluded")
    fig.legend(handles=[*helped_hurt_handles(zero=True), dashed], loc="outside lower center", ncol=4, fontsize=7.5)
    return fig


def cumulative_figure(found: Findings) -> Any:
    """Finding 2: cumulative LCA per layer from 0, first and last layer always shown, colour = depth."""
    layers = found.layers
    keys = [k for k in ("fc_mnist", "fc_fashion", "lenet_mnist", "resnet20_standin") if k in layers]
    fig = figure(8.5, 2.3 * len(keys) + 0.4)
    axes = np.atleast_1d(fig.subplots(len(keys), 1, squeeze=False)[:, 0])
    for ax, k in zip(axes, keys, strict=True):
        lay = layers[k]
        cum = np.concatenate([np.zeros((1, len(lay["names"]))), np.cumsum(lay["series"], axis=0)])
        cumulative_layers(ax, lay["steps"], cum, lay["names"], highlighted_layers(lay["totals"], 8))
        ax.set_title(k, fontsize=9)
        ax.set_ylabel("cumulative LCA")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, title="layer (dark = input)",
                  title_fontsize=7)  # fmt: skip
        if len(lay["steps"]) > 400:
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlim(0, float(lay["steps"][-1]))
            ax.set_xlabel("iteration (step; linear to 10, then log)", fontsize=8)
        else:
            ax.set_xlabel("iteration (step)", fontsize=8)
    return fig


def layer_totals_figure(found: Findings) -> Any:
    """Finding 2: per-layer totals with each layer's error estimate, for the run with most layers."""
    layers = found.layers
    k = max(layers, key=lambda q: (len(layers[q]["names"]), q in found.noise))
    lay, lc = layers[k], found.layer_checks[k]
    verdicts, errors = lc["robust"].verdicts["whole"], lc["errors"]  # per-layer error estimates, (L,)
    n_l = len(lay["names"])
    fig = figure(6.5, 0.18 * n_l + 1.2)
    ax = fig.subplots()
    y = np.arange(n_l)
    colors = [HURT_COLOR if v == "hurts" else HELPED_COLOR if v == "helps" else NEUTRAL_COLOR for v in verdicts]
    ax.barh(y, lay["totals"], color=colors, height=0.7, xerr=errors, error_kw={"lw": 0.8, "capsize": 1.5})
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, lay["names"], fontsize=6.5 if n_l > 20 else 8)
    for lab, v in zip(ax.get_yticklabels(), verdicts, strict=True):
        if v == "within error":
            lab.set_color(NEUTRAL_COLOR)
            lab.set_fontstyle("italic")
        elif v == "hurts":
            lab.set_color(HURT_COLOR)
    ax.set_ylim(n_l - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("total LCA over the run ± the layer's error estimate")
    ax.set_title(f"{k}: per-layer totals (grey italic: within the layer's error)", fontsize=9)
    return fig


def peaks_figure(found: Findings) -> Any:
    """Finding 3: learning per layer and its step-size-controlled part with their peaks (the first FC run)."""
    sync = found.sync
    k0 = "fc_mnist" if "fc_mnist" in sync else next(iter(sync))
    sa = sync[k0]["analysis"]
    names = found.layers[k0]["names"]
    n_show = min(sa.learning.shape[0], 400)
    fig = figure(8.5, 2.8)
    axs = np.atleast_1d(fig.subplots(1, 2, squeeze=False)[0])
    colors_l = layer_colors(len(names))
    for ax, series, peaks, title in (
        (axs[0], sa.learning, sa.peaks, "learning = −LCA per layer"),
        (axs[1], sa.controlled, sa.controlled_peaks, "step-size controlled"),
    ):
        for j, name in enumerate(names):
            s = series[:n_show, j]
            scale = float(np.quantile(np.abs(series[:, j]), 0.99)) or 1.0  # one scale per layer: rows stay apart
            base = len(names) - 1 - j
            ax.plot(np.arange(n_show), base + 0.42 * s / scale, color=colors_l[j], lw=0.8, label=name)
            p = peaks[j][peaks[j] < n_show]
            ax.plot(p, base + 0.42 * s[p] / scale, "v", color=NET_COLOR, ms=3)
        ax.set_yticks(np.arange(len(names)), names[::-1])
        ax.set_title(f"{k0}: {title}, first {n_show} iterations", fontsize=8.5)
        ax.set_xlabel("iteration")
        ax.grid(axis="y", visible=False)
    return fig


def figure_file(n: int, name: str) -> str:
    """The file of the page's figure ``n``: ``figN_NAME.png``."""
    return f"fig{n}_{name}.png"


def freeze_figure(found: Findings) -> Any:
    """Freezing the last layer of the FC net (None without the runs)."""
    return freeze_pair_figure(found.freeze)


def freeze_resnet_figure(found: Findings) -> Any:
    """Freezing the last layer of the ResNet-20 stand-in (None without the runs)."""
    return freeze_pair_figure(found.freeze_resnet)


def freeze_pair_figure(fz: dict[str, Any]) -> Any:
    """Freezing the last layer: final loss per seed and per-layer totals (mean ± sd over seeds); None without it."""
    if not fz:
        return None
    fig = figure(8.5, max(2.8, 0.16 * len(fz["names"]) + 1.0))  # one row per layer (ResNet-20: 22)
    a1, a2 = fig.subplots(1, 2, width_ratios=[1, 1.6])
    seeds = fz["seeds"]
    xs = np.arange(len(seeds))
    a1.bar(xs - 0.2, fz["base_loss"], width=0.38, color=RUN_COLORS[0], label="normal")
    a1.bar(xs + 0.2, fz["frozen_loss"], width=0.38, color=RUN_COLORS[1], label=f"{fz['last']} frozen")
    a1.set_xticks(xs, [f"seed {s}" for s in seeds])
    a1.set_ylabel("final training loss")
    a1.set_title("final loss per seed", fontsize=9)
    yl = np.arange(len(fz["names"]))
    for tot, color, dy, lab in ((fz["base_totals"], RUN_COLORS[0], -0.2, "normal"),
                                (fz["frozen_totals"], RUN_COLORS[1], 0.2, f"{fz['last']} frozen")):  # fmt: skip
        sd = tot.std(axis=0, ddof=1) if len(seeds) > 1 else np.zeros(tot.shape[1])
        a2.barh(yl + dy, tot.mean(axis=0), height=0.38, color=color, xerr=sd,
                error_kw={"lw": 0.9, "capsize": 2}, label=lab)  # fmt: skip
    a2.set_yticks(yl, fz["names"], fontsize=6.5 if len(yl) > 12 else 8)
    a2.set_ylim(len(yl) - 0.5, -0.5)
    a2.axvline(0, color="black", lw=0.8)
    a2.set_xlabel(f"total LCA, mean ± sd over {len(seeds)} seed(s)")
    a2.set_title("per-layer totals", fontsize=9)
    a2.grid(axis="y", visible=False)
    a2.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7.5)
    return fig


#: The page's figures in page order (each drawing function returns None when it has nothing to draw).
PAGE_FIGURES = (
    ("helped_fraction", helped_fraction_figure),
    ("cumulative_layer_lca", cumulative_figure),
    ("layer_totals", layer_totals_figure),
    ("freeze_last_layer", freeze_figure),
    ("freeze_resnet", freeze_resnet_figure),
    ("layer_learning_peaks", peaks_figure),
)


def report_figures(runs: dict[str, RunResult], figdir: Path, work: Path, log: Log) -> dict[str, str]:
    """Draw ``lca report`` (and ``lca report A B``) on the FC MNIST runs and copy the README's pictures.

    Args:
        runs: Every run, by key (``fc_mnist`` and ``fc_mnist_frozen`` are used).
        figdir: Where the PNGs go, as ``report_*.png``.
        work: The HTML reports go to ``work/report/``.
        log: Progress lines.

    Returns:
        ``{name: path relative to the page}`` of the pictures copied.

    """
    from lca_cli.reporting import write_comparison, write_report

    out: dict[str, str] = {}
    if "fc_mnist" not in runs:
        return out
    res = write_report(runs["fc_mnist"].store, work / "report" / "fc_mnist.html", views=list(README_VIEWS))
    log(f"  lca report of fc_mnist: {res.html}")
    for view, png in README_VIEWS.items():
        src = res.html.parent / "fc_mnist_files" / png
        if src.is_file():
            shutil.copyfile(src, figdir / f"report_{view}.png")
            out[f"report_{view}"] = f"figures/report_{view}.png"
    if "fc_mnist_frozen" in runs:
        cmp = write_comparison(
            runs["fc_mnist"].store, runs["fc_mnist_frozen"].store, work / "report" / "compare.html",
            labels=["normal", "fc3 frozen"],
        )  # fmt: skip
        log(f"  lca report A B: {cmp.html}")
        for name in ("02_layers.png", "03_cumulative.png"):
            src = cmp.html.parent / "compare_files" / name
            key = f"report_compare_{name[3:-4]}"
            shutil.copyfile(src, figdir / f"{key}.png")
            out[key] = f"figures/{key}.png"
    return out
