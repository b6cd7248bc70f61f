"""``lca summarize --by layer --series``: a layer x iteration table in long format (one row per step and layer).

Each row is one iteration (its start step) and one layer (or tensor): ``lca``, the group's net LCA on that
iteration (the stored per-tensor float64 sums, as every other summary uses), and ``neg`` / ``pos``, the sums of
its negative (helped) and positive (hurt) entries, from one streaming pass over ``lca``
(:func:`lca_cli.analysis.floor.tensor_counts`) summed in float64. ``neg + pos`` equals ``lca`` up to float32
storage of the entries. Long format is what pandas, R and spreadsheets pivot: ``step, layer, lca, neg, pos``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lca_cli.analysis.floor import RowCounts
from lca_cli.errors import UsageError
from lca_cli.store import LcaStore

__all__ = ["SERIES_BY", "check_series", "series_columns", "series_rows"]

#: The groupings a series is given for.
SERIES_BY = ("layer", "tensor")


def check_series(series: bool, by: str, top: int | None, sort: str | None, concentration: bool) -> None:
    """Refuse options that do not go with ``--series`` (a long table of every iteration and group).

    Raises:
        UsageError: ``series`` with a ``by`` other than layer or tensor, or with ``top``, ``sort`` or
            ``concentration``.

    """
    if not series:
        return
    if by not in SERIES_BY:
        raise UsageError(f"--series works with --by layer or --by tensor, not --by {by}")
    for flag, given in (("--top", top is not None), ("--sort", sort is not None), ("--concentration", concentration)):
        if given:
            raise UsageError(f"--series lists every iteration and {by} in model order: it does not take {flag}")


def series_columns(by: str) -> list[str]:
    """Columns of a series: ``step``, the group (``layer`` or ``tensor``), ``lca``, ``neg``, ``pos``."""
    return ["step", by, "lca", "neg", "pos"]


def series_rows(store: LcaStore, set_name: str, mask: np.ndarray, by: str, counts: RowCounts) -> list[dict[str, Any]]:
    """One row per counted iteration and group, iterations in order, groups in model order.

    Args:
        store: The store.
        set_name: Evaluation set.
        mask: ``(T,)`` bool: the iterations.
        by: ``layer`` or ``tensor``.
        counts: The streamed sums (:func:`lca_cli.analysis.floor.tensor_counts` over ``mask``).

    Returns:
        Rows ``{"step", by, "lca", "neg", "pos"}``.

    """
    layout = store.layout
    rows = np.flatnonzero(mask)
    lca = store.read(set_name, "tensor_lca")[rows]  # (t, K)
    neg, pos = counts.neg[rows], counts.pos[rows]
    if by == "tensor":
        names = list(layout.names)
    else:
        groups = layout.layers()
        names = [g for g, _ in groups]
        # (K, L) one-hot: tensor k belongs to layer idx[k]; (t, K) @ (K, L) sums each layer's tensors.
        idx = layout.tensor_to_layer()
        onehot = np.zeros((len(idx), len(groups)))
        onehot[np.arange(len(idx)), idx] = 1.0
        lca, neg, pos = lca @ onehot, neg @ onehot, pos @ onehot
    steps = store.steps[rows]
    return [
        {"step": int(steps[i]), by: name, "lca": float(lca[i, j]), "neg": float(neg[i, j]), "pos": float(pos[i, j])}
        for i in range(len(rows))
        for j, name in enumerate(names)
    ]
