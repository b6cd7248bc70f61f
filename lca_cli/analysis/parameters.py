"""Single parameters: choosing the ones to follow, naming them, and how few of them do most of the learning."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lca_cli.analysis.passes import ParameterStats
from lca_cli.core.layout import Layout

__all__ = ["Concentration", "concentration", "layer_concentration", "parameter_label", "select_parameters"]


def select_parameters(
    stats: ParameterStats, k_best: int = 5, k_worst: int = 5, k_random: int = 5, seed: int = 0
) -> tuple[np.ndarray, list[str]]:
    """The most helpful (most negative total), most harmful (most positive total) and random parameters.

    Random ones are drawn with ``numpy.random.default_rng(seed)`` among parameters that moved the loss at
    least once and are not already chosen. Fewer are returned when the model is small.

    Args:
        stats: First-pass statistics.
        k_best: Number of most helpful parameters.
        k_worst: Number of most harmful parameters.
        k_random: Number of random parameters.
        seed: Seed of the random draw.

    Returns:
        ``(columns, kinds)``: flat indices and ``"helpful" | "harmful" | "random"`` for each.

    """
    total = stats.total
    order = np.argsort(total, kind="stable")
    best = [int(i) for i in order[:k_best] if total[i] < 0]
    worst = [int(i) for i in order[::-1][:k_worst] if total[i] > 0 and int(i) not in best]
    chosen = set(best) | set(worst)
    moved = np.flatnonzero((stats.helped + stats.hurt) > 0)
    pool = np.setdiff1d(moved, np.fromiter(chosen, dtype=np.int64, count=len(chosen)))
    rng = np.random.default_rng(seed)
    rand = sorted(int(i) for i in rng.choice(pool, size=min(k_random, len(pool)), replace=False)) if len(pool) else []
    cols = np.asarray(best + worst + rand, dtype=np.int64)
    kinds = ["helpful"] * len(best) + ["harmful"] * len(worst) + ["random"] * len(rand)
    return cols, kinds


@dataclass(frozen=True)
class Concentration:
    """How few parameters do most of the learning.

    Parameters are ranked by their net LCA over the window, most helpful first. The learning to share out
    is the summed net LCA of the parameters that helped overall (``-sum(total[total < 0])``); a parameter
    that hurt overall is never counted as doing learning.

    Attributes:
        n_params: Parameters considered.
        learning: ``-sum(total[total < 0])`` (loss units, >= 0).
        fractions: The learning fractions asked for, e.g. ``(0.5, 0.9)``.
        shares: float64, per fraction: the smallest share of all ``n_params`` parameters whose learning
            reaches that fraction (NaN when nothing learned).
        curve_x: Share of parameters (ranked), ``(k,)`` from 0 to 1, subsampled for plotting.
        curve_y: Share of the learning those parameters do, ``(k,)``.

    """

    n_params: int
    learning: float
    fractions: tuple[float, ...]
    shares: np.ndarray
    curve_x: np.ndarray
    curve_y: np.ndarray


def concentration(total: np.ndarray, fractions: Sequence[float] = (0.5, 0.9), max_points: int = 400) -> Concentration:
    """Concentration of learning over parameters (the paper's "few parameters do most of the learning").

    Args:
        total: float ``(P,)`` net LCA per parameter over the window (e.g. :attr:`ParameterStats.total`).
        fractions: Fractions of the learning to report.
        max_points: Points of the curve kept.

    Returns:
        The shares and the curve.

    """
    t = np.asarray(total, dtype=np.float64).reshape(-1)
    p = t.size
    gains = np.sort(-t[t < 0])[::-1]  # learning done by each helpful parameter, largest first
    learning = float(gains.sum())
    fr = tuple(float(f) for f in fractions)
    if p == 0 or learning <= 0:
        nan = np.full(len(fr), np.nan)
        return Concentration(p, 0.0, fr, nan, np.array([0.0, 1.0]), np.array([0.0, 0.0]))
    cum = np.cumsum(gains) / learning  # (h,) share of learning done by the top k + 1
    shares = np.array([(int(np.searchsorted(cum, f - 1e-12)) + 1) / p for f in fr])
    # The curve: (0, 0), each helpful parameter, then flat to (1, 1) over the rest.
    x = np.concatenate([[0.0], np.arange(1, gains.size + 1) / p, [1.0]])
    y = np.concatenate([[0.0], cum, [1.0 if gains.size else 0.0]])
    if x.size > max_points:
        keep = np.unique(np.concatenate([np.linspace(0, x.size - 1, max_points).astype(np.int64), [gains.size]]))
        x, y = x[keep], y[keep]
    return Concentration(p, learning, fr, shares, x, y)


def layer_concentration(
    layout: Layout, total: np.ndarray, fractions: Sequence[float] = (0.5, 0.9)
) -> tuple[list[str], np.ndarray]:
    """:func:`concentration` within each layer: the share of the layer's parameters doing its learning.

    Args:
        layout: The store's layout.
        total: float ``(P,)`` net LCA per parameter.
        fractions: Fractions of the learning.

    Returns:
        ``(layer names, shares)`` with ``shares`` float64 ``(len(fractions), L)`` (NaN: the layer did not learn).

    """
    layers = layout.layers()
    out = np.full((len(fractions), len(layers)), np.nan)
    for li, (_, idx) in enumerate(layers):
        part = np.concatenate([total[layout.params[i].offset : layout.params[i].stop] for i in idx])
        out[:, li] = concentration(part, fractions, max_points=2).shares
    return [n for n, _ in layers], out


def parameter_label(layout: Layout, column: int) -> str:
    """Name of a flat parameter index as ``tensor[i, j, ...]``.

    Args:
        layout: The store's layout.
        column: Flat index in ``0..P-1``.

    Returns:
        For example ``"fc1.weight[3, 17]"`` (a scalar tensor gives its bare name).

    Raises:
        IndexError: If ``column`` is out of range.

    """
    for p in layout.params:
        if p.offset <= column < p.stop:
            if not p.shape:
                return p.name
            idx = np.unravel_index(column - p.offset, p.shape)
            return f"{p.name}[{', '.join(str(int(i)) for i in idx)}]"
    raise IndexError(f"parameter index {column} outside 0..{layout.size - 1}")
