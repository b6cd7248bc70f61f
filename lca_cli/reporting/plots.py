"""Drawing helpers shared by ``lca report``, the run comparison and ``scripts/reproduce_paper.py``.

One colour meaning per figure family, the same wherever the family appears:

* sign of LCA: blue = helped (LCA < 0, lowered the loss), red = hurt (LCA > 0), light grey = exactly zero;
  heat maps use the matching diverging map centred at 0;
* layers: depth along the network, viridis from dark (input side) to yellow (output side), so a layer keeps
  its colour in every panel of a figure; beyond :data:`MAX_LABELLED_LAYERS` layers only the first, the last
  and the largest are coloured and named, the rest are thin grey lines;
* runs of a comparison: :data:`RUN_COLORS` (A dark grey, B orange), never blue or red.

Figures are saved at twice their display resolution (:data:`SCALE`) as true-colour PNGs: no palette
reduction, which turned the red half of a diverging colour bar into a grey-brown band that is not in the
colour map. Legends sit outside the data; layer and parameter names are never shortened. matplotlib is
imported inside the functions only (``pip install 'lca-cli[report]'``), always through the Agg canvas.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli.analysis.passes import bin_edges
from lca_cli.errors import LcaError, UsageError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DIVERGING_CMAP",
    "DPI",
    "FIGURE_FORMATS",
    "HELPED_COLOR",
    "HURT_COLOR",
    "MATPLOTLIB_MISSING",
    "MAX_LABELLED_LAYERS",
    "MAX_LINE_POINTS",
    "NET_COLOR",
    "RUN_COLORS",
    "SCALE",
    "STYLE",
    "ZERO_COLOR",
    "binned",
    "column_axes",
    "cumulative_layers",
    "figure",
    "fmt",
    "helped_hurt_handles",
    "highlighted_layers",
    "layer_colors",
    "png_info",
    "require_matplotlib",
    "save_png",
    "sign_hints",
    "step_axis",
    "thinned",
    "vector_figures",
]

MATPLOTLIB_MISSING = "matplotlib is needed for lca report: pip install 'lca-cli[report]'"

#: Helped (LCA < 0) and hurt (LCA > 0): the two ends of matplotlib's ``RdBu_r``.
HELPED_COLOR = "#2166ac"
HURT_COLOR = "#b2182b"
#: Exactly zero LCA (a parameter that did not move, or had zero gradient).
ZERO_COLOR = "#cfcfcf"
NET_COLOR = "#222222"
RECON_COLOR = "#7b3294"
NEUTRAL_COLOR = "#7f7f7f"
#: Run A and run B of a comparison.
RUN_COLORS = ("#404040", "#e08214")
DIVERGING_CMAP = "RdBu_r"  # negative (helped) blue, positive (hurt) red
#: Display resolution (dots per inch of the figure size); files are written at ``SCALE`` times it.
DPI = 100
SCALE = 2
#: Layers drawn in their own colour and named in a legend; more layers are drawn grey except highlighted ones.
MAX_LABELLED_LAYERS = 12
#: Points drawn per line at most (longer series are averaged in bins; cumulative ones subsampled).
MAX_LINE_POINTS = 1500

#: rc settings applied (in a context) to every figure: no text below 7 pt at display size.
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "savefig.dpi": DPI * SCALE,
    "figure.dpi": DPI,
    "image.interpolation": "nearest",
}


#: ``lca report --figures``: PNG only (the default), or a vector copy of every figure beside its PNG.
FIGURE_FORMATS = ("png", "svg", "pdf")
#: The vector format :func:`save_png` also writes (None: PNG only); set by :func:`vector_figures`.
_VECTOR: ContextVar[str | None] = ContextVar("lca_vector_figures", default=None)


@contextlib.contextmanager
def vector_figures(kind: str | None) -> Iterator[None]:
    """Within the block, :func:`save_png` also writes each figure as ``kind`` (``svg`` or ``pdf``) beside its PNG.

    The page still embeds the PNGs (a browser shows them at once); the vector files are for a paper.

    Args:
        kind: ``png`` or None (PNG only), ``svg`` or ``pdf``.

    Raises:
        UsageError: Another format.

    """
    if kind is not None and kind not in FIGURE_FORMATS:
        raise UsageError(f"--figures {kind}: expected one of {', '.join(FIGURE_FORMATS)}")
    token = _VECTOR.set(None if kind in (None, "png") else kind)
    try:
        yield
    finally:
        _VECTOR.reset(token)


def vector_copies(pngs: Sequence[Path]) -> list[Path]:
    """The vector copies :func:`save_png` writes beside ``pngs`` inside :func:`vector_figures` (else none)."""
    kind = _VECTOR.get()
    return [p.with_suffix(f".{kind}") for p in pngs] if kind else []


def require_matplotlib() -> Any:
    """Import matplotlib (Agg canvas), or raise an :class:`~lca_cli.errors.LcaError` saying how to install it."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise LcaError(MATPLOTLIB_MISSING) from None
    return matplotlib


def figure(width: float, height: float) -> Figure:
    """A new figure on its own Agg canvas (no pyplot state), constrained layout, size in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a true-colour PNG at ``SCALE`` times its display resolution (and a vector copy, if asked).

    Within :func:`vector_figures` the same figure is also written as SVG or PDF beside the PNG (same stem).

    The figure is rendered once by Agg at the higher resolution and encoded once by Pillow: RGB (colour
    type 2; no palette, no alpha) at zlib level 6, and without text chunks (no software name or URL in the
    file). Saving through ``savefig`` and re-encoding with ``optimize`` took twice as long for files a few
    percent smaller.

    Args:
        fig: The figure (on an Agg canvas, as :func:`figure` makes them).
        path: The file to write.

    Returns:
        ``path``.

    """
    from PIL import Image  # a dependency of matplotlib

    fig.set_dpi(DPI * SCALE)
    try:
        canvas: Any = fig.canvas
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())  # (height, width, 4) uint8
        Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(path, format="PNG", compress_level=6)
    finally:
        fig.set_dpi(DPI)
    kind = _VECTOR.get()
    if kind is not None:
        # No dates in the file: the same figure gives the same bytes (vector backends write a creation date).
        meta = {"Date": None} if kind == "svg" else {"CreationDate": None}
        fig.savefig(path.with_suffix(f".{kind}"), format=kind, dpi=DPI, metadata=meta)
    return path


def png_info(path: Path) -> tuple[int, int, int, int]:
    """``(width, height, bit depth, colour type)`` from a PNG's header (colour type 3 = palette)."""
    data = Path(path).read_bytes()[:29]
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return (
        int.from_bytes(data[16:20], "big"),
        int.from_bytes(data[20:24], "big"),
        data[24],
        data[25],
    )


def fmt(x: float | None, digits: int = 4) -> str:
    """Compact number for captions and tables, ``digits`` significant digits; ``n/a`` for None or non-finite.

    A nonzero value never prints as 0: below 1 the decimals grow with the magnitude (``fmt(0.0017, 2)`` is
    ``0.0017``; a fixed number of decimals printed it as 0), below 1e-3 and from 1e5 on it is in exponent form.

    Args:
        x: The number (or None).
        digits: Significant digits (at least 1).

    Returns:
        The text.

    """
    if x is None or not math.isfinite(x):
        return "n/a"
    digits = max(1, int(digits))
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    if abs(x) >= 1:
        return f"{x:.{digits}g}"
    decimals = digits - 1 - math.floor(math.log10(abs(x)))  # significant digits, not decimals, below 1
    return f"{x:.{decimals}f}".rstrip("0").rstrip(".")


def layer_colors(n: int) -> list[Any]:
    """Colour of each of ``n`` layers by depth (viridis; dark = input side)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(v) for v in (np.linspace(0.0, 0.9, n) if n > 1 else [0.0])]


def helped_hurt_handles(zero: bool = False) -> list[Any]:
    """Legend patches for the sign colours."""
    from matplotlib.patches import Patch

    out = [Patch(color=HELPED_COLOR, label="helped (LCA < 0)")]
    if zero:
        out.append(Patch(color=ZERO_COLOR, label="zero (LCA = 0)"))
    out.append(Patch(color=HURT_COLOR, label="hurt (LCA > 0)"))
    return out


def sign_hints(ax: Axes) -> None:
    """Small blue/red notes inside the axes' corners saying which way is helped and hurt on an LCA y axis."""
    kw: dict[str, Any] = {"transform": ax.transAxes, "fontsize": 7, "ha": "right"}
    ax.text(0.995, 0.985, "↑ hurt (LCA > 0)", color=HURT_COLOR, va="top", **kw)
    ax.text(0.995, 0.015, "↓ helped (LCA < 0)", color=HELPED_COLOR, va="bottom", **kw)


def step_axis(ax: Axes, label: str = "iteration (step)", **kw: Any) -> None:
    """Label an x axis of training steps, with whole-number ticks only (a short run showed steps 2.5, 7.5)."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(label, **kw)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def highlighted_layers(totals: np.ndarray, k: int = MAX_LABELLED_LAYERS) -> list[int]:
    """Layers to colour and name when there are too many: the first, the last and the largest ``|total|``.

    Args:
        totals: ``(L,)`` per-layer totals.
        k: How many at most.

    Returns:
        Sorted layer indices (all of them when ``L <= k``).

    """
    n = len(totals)
    if n <= k:
        return list(range(n))
    chosen = {0, n - 1}
    for j in np.argsort(-np.abs(np.asarray(totals, dtype=np.float64)), kind="stable"):
        if len(chosen) >= k:
            break
        chosen.add(int(j))
    return sorted(chosen)


def cumulative_layers(
    ax: Axes,
    x: np.ndarray,
    cum: np.ndarray,
    names: Sequence[str],
    highlight: Sequence[int] | None = None,
    *,
    total_line: bool = True,
) -> None:
    """Cumulative LCA per layer: one line per layer, coloured by depth, starting at ``cum[0] = 0``.

    Args:
        ax: Target axes.
        x: ``(m,)`` steps: the first checkpoint, then the end of each iteration.
        cum: ``(m, L)`` cumulative LCA with a leading zero row.
        names: Layer names (whole, used as legend labels).
        highlight: Layers to colour and label (default all when few, else :func:`highlighted_layers`).
        total_line: Also draw the whole network's running total (dashed black).

    """
    n_l = len(names)
    colors = layer_colors(n_l)
    keep = list(highlight) if highlight is not None else highlighted_layers(cum[-1] if len(cum) else np.zeros(n_l))
    shown = set(keep)
    for j in range(n_l):
        if j not in shown:
            ax.plot(x, cum[:, j], color="#bdbdbd", lw=0.6, zorder=1)
    for j in keep:
        ax.plot(x, cum[:, j], color=colors[j], lw=1.4, label=names[j], zorder=3)
    if n_l > len(keep):
        ax.plot([], [], color="#bdbdbd", lw=0.6, label=f"{n_l - len(keep)} other layers")
    if total_line:
        ax.plot(x, cum.sum(axis=1), color=NET_COLOR, lw=1.1, ls="--", label="all layers (Σ LCA)", zorder=2)
    ax.axhline(0, color="black", lw=0.6)


def column_axes(fig: Any, n: int, **kw: Any) -> list[Axes]:
    """A row of ``n`` axes on ``fig`` (one per evaluation set), as a list even when ``n`` is 1.

    Args:
        fig: The figure (or subfigure).
        n: Number of columns.
        **kw: Passed to ``subplots`` (``sharey=True``, ...).

    Returns:
        The axes, left to right.

    """
    return list(np.atleast_1d(fig.subplots(1, n, squeeze=False, **kw)[0]))


def binned(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``y`` (and ``x``) in at most ``max_points`` bins along axis 0 (unchanged when shorter).

    Args:
        x: ``(n,)`` positions.
        y: ``(n,)`` or ``(n, k)`` values.
        max_points: Bins at most.

    Returns:
        The binned ``x`` and ``y``.

    """
    if len(x) <= max_points:
        return x, y
    e = bin_edges(len(x), max_points)
    cnt = np.diff(e).astype(np.float64)
    xs = np.add.reduceat(np.asarray(x, np.float64), e[:-1]) / cnt
    ys = np.add.reduceat(np.asarray(y, np.float64), e[:-1], axis=0) / (cnt if y.ndim == 1 else cnt[:, None])
    return xs, ys


def thinned(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Every k-th point (always the first and the last) of a smooth series such as a cumulative sum.

    Args:
        x: ``(n,)`` positions.
        y: ``(n,)`` or ``(n, k)`` values.
        max_points: Points kept at most (about).

    Returns:
        The kept ``x`` and ``y`` (unchanged when short enough).

    """
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.concatenate([np.linspace(0, len(x) - 1, max_points).astype(np.int64), [0, len(x) - 1]]))
    return x[idx], y[idx]
