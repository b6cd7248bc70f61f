"""``lca report``: one self-contained HTML page of plots built from a store only.

The numbers come from :mod:`lca_cli.analysis` through :mod:`~lca_cli.reporting.gather` (two streaming passes
over ``lca`` per evaluation set, everything else from the small arrays); each view is a figure
(``figures_*`` modules), a caption computed from the same data (:mod:`~lca_cli.reporting.captions`) and, for
one, a table; :mod:`~lca_cli.reporting.html` assembles the page. This module names the views and runs them.

Every view shows each evaluation set side by side (train beside held-out), colours follow
:mod:`lca_cli.reporting.plots` (blue = helped, red = hurt, grey = exactly zero; layers by depth), and every caption
states what the paper found next to what this run shows, with the run's integration error (the summed
|residual|) as the scale below which a layer's total is not distinguishable from zero.

matplotlib is optional (``pip install 'lca-cli[report]'``); it is imported inside the functions that
draw, always through the Agg canvas and a style context, so importing this module or the CLI never needs
it and the caller's matplotlib state is left as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from lca_cli.analysis.reduce import open_store
from lca_cli.errors import UsageError
from lca_cli.reporting import captions
from lca_cli.reporting.figures_layers import (
    draw_concentration,
    draw_cumulative,
    draw_layer_shares,
    draw_layers,
    draw_milestones,
)
from lca_cli.reporting.figures_loss import draw_composition, draw_loss
from lca_cli.reporting.figures_maps import draw_heatmaps, draw_input_maps
from lca_cli.reporting.figures_parameters import draw_helped_histograms, draw_trajectories, draw_values
from lca_cli.reporting.figures_sync import draw_sync
from lca_cli.reporting.gather import ReportData, gather_report, gather_sets
from lca_cli.reporting.html import ReportResult, View, output_folders, report_page, sync_table
from lca_cli.reporting.numbers import report_numbers
from lca_cli.reporting.plots import STYLE, require_matplotlib, vector_figures
from lca_cli.store import LcaStore

__all__ = ["TITLES", "VIEWS", "write_report"]

#: The views of a report in page order (``write_report(views=...)``, ``lca report --view``), with their headings.
TITLES = {
    "loss": "True vs reconstructed loss",
    "composition": "Helped, zero and hurt per iteration, with the loss",
    "helped_hist": "How often parameters help",
    "values": "All LCA values (log scale)",
    "layers": "Per-layer totals: helped, hurt, net (with the integration error)",
    "layer_shares": "Helped, zero and hurt per layer",
    "cumulative": "Cumulative LCA per layer over time",
    "milestones": "When each layer learned",
    "concentration": "How concentrated learning is",
    "heatmaps": "Neuron × iteration heat maps (rows sorted, output units by class)",
    "input_maps": "First-layer input maps (pixels)",
    "trajectories": "Single-parameter trajectories",
    "sync": "Synchronisation of learning across layers",
}
#: The views' keys, in page order.
VIEWS = tuple(TITLES)


def _not_drawn(store: LcaStore, key: str) -> str:
    """Why view ``key`` does not apply to this store (the note shown in its place)."""
    match key:
        case "heatmaps":
            return "no layer was asked for (heatmap_layers=0)."
        case "input_maps":
            if not store.columns.full:
                return "the store's columns are not one per parameter (--granularity), so there are no pixels."
            layout = store.layout
            name, idx = layout.layers()[0]
            shapes = ", ".join(f"{layout.params[i].name} {tuple(layout.params[i].shape)}" for i in idx)
            return (
                f"the first layer ({name}: {shapes}) does not read a flattened image (a fully connected weight "
                "over c x s x s inputs, s >= 8); a convolution's kernels are shared over every position, so "
                "they have no pixel of their own to map."
            )
        case "trajectories":
            return "no parameter moved the loss in the window, so there is none to follow."
    return "it does not apply to this store."


def _view(key: str, pdir: Path, r: ReportData) -> View | None:
    """Draw view ``key`` and caption it from the same data; None where the view does not apply to this store."""
    d, extra = r.sets, ""
    match key:
        case "loss":
            png, caption = draw_loss(pdir, d), captions.loss_caption(r)
        case "composition":
            png, caption = draw_composition(pdir, d), captions.composition_caption(r)
        case "helped_hist":
            png, caption = draw_helped_histograms(pdir, d), captions.helped_hist_caption(r)
        case "values":
            png, caption = draw_values(pdir, d), captions.values_caption(r)
        case "layers":
            png, caption = draw_layers(pdir, d), captions.layers_caption(r)
        case "layer_shares":
            png, caption = draw_layer_shares(pdir, d), captions.layer_shares_caption(r)
        case "cumulative":
            png, caption = draw_cumulative(pdir, d), captions.cumulative_caption(r)
        case "milestones":
            png, caption = draw_milestones(pdir, d), captions.milestones_caption(r)
        case "concentration":
            png, caption = draw_concentration(pdir, d), captions.concentration_caption(r)
        case "heatmaps":
            if not r.main.maps:  # no layer asked for (heatmap_layers=0)
                return None
            png, caption = draw_heatmaps(pdir, d, r.groups, r.output_group), captions.heatmaps_caption(r)
        case "input_maps":
            if r.image is None:  # the first layer does not read an image
                return None
            png, caption = draw_input_maps(pdir, d, r.image), captions.input_maps_caption(r, r.image)
        case "trajectories":
            if not r.kinds:  # no parameter to follow when none moved (the composition caption says so)
                return None
            png, caption = draw_trajectories(pdir, d, r.labels, r.kinds), captions.trajectories_caption(r)
        case "sync":
            png, caption, extra = draw_sync(pdir, d), captions.sync_caption(r), sync_table(d)
        case _:
            raise ValueError(f"unknown view {key!r}")
    return View(key, TITLES[key], png, caption, extra, number=VIEWS.index(key) + 1)


def write_report(
    store_path: str | Path,
    out_html: str | Path,
    *,
    set_names: Sequence[str] | str | None = None,
    steps: tuple[int | None, int | None] | None = None,
    png_dir: str | Path | None = None,
    heatmap_layers: int = 6,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    views: Sequence[str] | None = None,
    min_abs: float | None = None,
    figures: str = "png",
) -> ReportResult:
    """Write the HTML report of a store (and its figures as PNG files, with vector copies if asked).

    Args:
        store_path: The lca store.
        out_html: The page to write (parent directories are created).
        set_names: Evaluation sets to show, side by side; the first one's numbers head the page (default:
            every set of the store, ``train`` first when present).
        steps: Window ``(A, B)`` over the start step of each iteration, ``[A, B)``; None ends are open.
        png_dir: Where the PNGs go (default ``<out_html stem>_files/`` beside the page).
        heatmap_layers: Number of layers (those with the most ``sum |LCA|``) given a neuron x iteration map.
        seed: Seed of the random parameters and of the synchronisation baselines.
        progress: Called with one-line messages while working.
        views: Keys of the views to draw (:data:`VIEWS`; default all). The numbers are computed in full
            either way; a view that does not apply (input maps of a conv net) keeps its number with a note why.
        min_abs: A noise floor for the helped / hurt counts (``--min-abs``); ``numbers["floor"]`` then gives,
            per set, the floor and the share of entries below float resolution.
        figures: ``png`` (default), or ``svg`` / ``pdf``: also a vector copy of every figure beside its PNG.

    Returns:
        The paths written and the headline numbers.

    Raises:
        LcaError: If matplotlib is not installed.
        StoreError: If the store cannot be read or has no finished iteration in the window.
        UsageError: For a bad set name, window, view, or option value.

    """
    mpl = require_matplotlib()
    with vector_figures(figures):  # checks the format before any work
        pass
    only = None if views is None else set(views)
    if only is not None and only - set(VIEWS):
        raise UsageError(f"--view {sorted(only - set(VIEWS))[0]}: expected one of {', '.join(VIEWS)}")
    say = progress or (lambda _msg: None)
    if heatmap_layers < 0:
        raise UsageError(f"heatmap_layers={heatmap_layers} must be >= 0")
    if steps is not None and (len(steps) != 2):
        raise UsageError(f"--steps must be A:B (got {steps!r})")
    store = open_store(store_path)
    t_start = time.perf_counter()
    # Sets and window are checked on the small arrays before any folder is made or any pass runs.
    summaries, notes = gather_sets(store, set_names, steps, min_abs)
    out, pdir = output_folders(out_html, png_dir)
    report = gather_report(store, summaries, notes, heatmap_layers=heatmap_layers, seed=seed, progress=say)
    numbers = report_numbers(store, report)
    if min_abs is not None:  # the page's summary table states the floor per set (html._summary_rows)
        numbers["floor"] = {s.name: s.floor for s in report.sets}
        for s in report.sets:
            numbers["per_set"][s.name]["floor"] = s.floor
    drawn: list[View] = []
    with mpl.rc_context(STYLE), vector_figures(figures):
        say("drawing")
        for number, key in enumerate(VIEWS, 1):
            if only is None or key in only:
                view = _view(key, pdir, report)
                drawn.append(view or View(key, TITLES[key], None, _not_drawn(store, key), number=number))
    numbers["seconds"] = round(time.perf_counter() - t_start, 3)
    out.write_text(report_page(store, report, numbers, drawn), encoding="utf-8")
    pngs = [v.png for v in drawn if v.png is not None]
    vectors = [p.with_suffix(f".{figures}") for p in pngs] if figures != "png" else []
    say(f"wrote {out} ({len(pngs)} figures in {pdir}{f', each also as {figures}' if vectors else ''})")
    return ReportResult(out, pngs, numbers, vectors)
