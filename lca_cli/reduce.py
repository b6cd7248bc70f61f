"""Reduce a store: by layer, tensor, neuron or iteration, over a window of iterations.

Layer, tensor and iteration summaries read only the small per-iteration arrays (``tensor_lca``,
``tensor_helped``, ``tensor_hurt``, ``loss``, ``residual``, ...); neuron summaries stream ``lca`` one row
chunk at a time. Nothing here loads the whole ``lca`` array, so stores larger than memory work.

Helped fraction: see :data:`lca_cli.store.HELPED_RULE` (exact zeros count as neither helped nor hurt).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lca_cli.errors import UsageError
from lca_cli.store import HELPED_RULE, LcaStore, column_counts

__all__ = ["BY_CHOICES", "SORT_CHOICES", "Summary", "Window", "parse_window", "summarize", "window_mask"]

BY_CHOICES = ("layer", "tensor", "neuron", "iteration")
SORT_CHOICES = ("model", "helped", "hurt", "abs")


@dataclass(frozen=True)
class Window:
    """Iterations whose start step lies in ``[start, stop)``; None leaves that end open."""

    start: int | None = None
    stop: int | None = None

    def __str__(self) -> str:
        return f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"


def parse_window(text: str | None) -> Window:
    """Parse ``--steps A:B`` (either end may be omitted; a single ``A`` means just iteration ``A``).

    Args:
        text: The option value, or None for everything.

    Returns:
        The window.

    Raises:
        UsageError: If the text is not of that form or the window is empty.

    """
    if text is None or text.strip() in ("", ":"):
        return Window()
    parts = text.split(":")
    try:
        if len(parts) == 1:
            only = int(parts[0])
            return Window(only, only + 1)
        if len(parts) == 2:
            a = int(parts[0]) if parts[0].strip() else None
            b = int(parts[1]) if parts[1].strip() else None
            if a is not None and b is not None and b <= a:
                raise UsageError(f"--steps {text}: the window is empty (B must be greater than A)")
            return Window(a, b)
    except ValueError:
        pass
    raise UsageError(f"--steps {text!r}: expected A:B with integer steps (either may be omitted), e.g. 0:100")


def window_mask(store: LcaStore, window: Window, set_name: str) -> np.ndarray:
    """Rows (pairs) in the window that are done.

    Args:
        store: The store.
        window: Step window over each pair's start step.
        set_name: Evaluation set.

    Returns:
        ``(T,)`` bool mask.

    """
    starts = store.steps[:-1]
    mask = store.read(set_name, "done").astype(bool)
    if window.start is not None:
        mask &= starts >= window.start
    if window.stop is not None:
        mask &= starts < window.stop
    return mask


def _fraction(helped: np.ndarray | float, hurt: np.ndarray | float) -> Any:
    helped_a, hurt_a = np.asarray(helped, dtype=np.float64), np.asarray(hurt, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return helped_a / (helped_a + hurt_a)


def _num(x: float) -> float | None:
    """JSON-friendly float: NaN becomes None."""
    x = float(x)
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class Summary:
    """A reduced view of a store.

    Attributes:
        header: Totals over the window (ΔL, Σ LCA, residuals, flagged pairs, helped fraction...).
        columns: Column names of the rows, in display order.
        rows: One dict per row; each has at least ``name`` and ``lca``.

    """

    header: dict[str, Any]
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"header": ..., "columns": ..., "rows": [...]}``."""
        return {"header": self.header, "columns": self.columns, "rows": self.rows}


def _header(store: LcaStore, set_name: str, mask: np.ndarray, window: Window) -> dict[str, Any]:
    loss = store.read(set_name, "loss")
    dl = loss[1:] - loss[:-1]
    tensor_lca = store.read(set_name, "tensor_lca")[mask]  # (t, K)
    helped = store.read(set_name, "tensor_helped")[mask].sum(axis=1)
    hurt = store.read(set_name, "tensor_hurt")[mask].sum(axis=1)
    frac = _fraction(helped, hurt)
    frac = frac[~np.isnan(frac)]
    residual = store.read(set_name, "residual")[mask]
    flagged = store.read(set_name, "flagged").astype(bool) & mask
    buffer_lca = float(store.read(set_name, "buffer_lca")[mask].sum())
    starts = store.steps[:-1]
    sel = starts[mask]
    return {
        "store": str(store.path),
        "set": set_name,
        "window": str(window),
        "iterations": int(mask.sum()),
        "iterations_total": store.n_pairs,
        "first_step": int(sel[0]) if sel.size else None,
        "last_step": int(store.steps[1:][mask][-1]) if sel.size else None,
        "parameters": store.layout.size,
        # What lca's columns hold (--granularity, --params): neuron summaries work at that resolution.
        "granularity": store.columns.granularity,
        "columns": store.columns.size,
        "method": store.attrs.get("method"),
        "delta_loss": float(dl[mask].sum()),
        "sum_lca": float(tensor_lca.sum()),
        "buffer_lca": buffer_lca,
        "max_abs_residual": float(np.abs(residual).max()) if residual.size else 0.0,
        "flagged": int(flagged.sum()),
        "flagged_steps": [int(s) for s in starts[flagged][:20]],
        "helped_fraction_mean": _num(frac.mean()) if frac.size else None,
        "helped_fraction_sd": _num(frac.std()) if frac.size else None,
        "helped_rule": HELPED_RULE,
    }


def _group_rows(
    names: Sequence[str],
    counts: np.ndarray,
    lca: np.ndarray,
    helped: np.ndarray,
    hurt: np.ndarray,
    total: float,
) -> list[dict[str, Any]]:
    frac = _fraction(helped, hurt)
    return [
        {
            "name": n,
            "parameters": int(c),
            "lca": float(v),
            "share": _num(v / total) if total != 0 else None,
            "helped_fraction": _num(f),
        }
        for n, c, v, f in zip(names, counts, lca, frac, strict=True)
    ]


def _by_tensor_or_layer(store: LcaStore, set_name: str, mask: np.ndarray, by: str) -> list[dict[str, Any]]:
    layout = store.layout
    tl = store.read(set_name, "tensor_lca")[mask].sum(axis=0)  # (K,)
    th = store.read(set_name, "tensor_helped")[mask].sum(axis=0)
    tu = store.read(set_name, "tensor_hurt")[mask].sum(axis=0)
    sizes = np.array([p.numel for p in layout.params])
    total = float(tl.sum())
    if by == "tensor":
        return _group_rows(layout.names, sizes, tl, th, tu, total)
    groups = layout.layers()
    idx = layout.tensor_to_layer()
    nl = len(groups)
    return _group_rows(
        [g for g, _ in groups],
        np.bincount(idx, weights=sizes, minlength=nl),
        np.bincount(idx, weights=tl, minlength=nl),
        np.bincount(idx, weights=th, minlength=nl),
        np.bincount(idx, weights=tu, minlength=nl),
        total,
    )


def neuron_index(store: LcaStore) -> tuple[list[str], np.ndarray]:
    """Map every column of ``lca`` to its neuron (output unit along dim 0 of its layer's tensors).

    Works at the resolution stored (:attr:`LcaStore.column_layout`): a neuron store's columns are its neurons,
    a store with ``--params`` has an ``(other)`` neuron for the rest.

    Args:
        store: The store.

    Returns:
        ``(names, col2neuron)``: neuron names such as ``"fc1[3]"`` and an int64 ``(C,)`` map.

    Raises:
        UsageError: For a store of per-tensor rows (``--granularity tensor``): it holds no neurons.

    """
    if store.columns.granularity == "tensor":
        raise UsageError(
            f"{store.path} holds one LCA column per tensor (--granularity tensor): --by neuron needs a store made "
            "with --granularity neuron or parameter; --by tensor or layer work here"
        )
    layout = store.column_layout
    names: list[str] = []
    col2neuron = np.empty(layout.size, dtype=np.int64)
    for group, members in layout.neurons():
        base = len(names)
        n0 = members[0][1]
        names.extend(f"{group}[{i}]" for i in range(n0))
        for ti, size0 in members:
            p = layout.params[ti]
            per_row = p.numel // size0 if size0 else 0
            # Row-major flattening: the first `per_row` columns of the tensor are neuron 0, and so on.
            col2neuron[p.offset : p.stop] = base + np.repeat(np.arange(size0), per_row)
    return names, col2neuron


def _by_neuron(store: LcaStore, set_name: str, mask: np.ndarray) -> list[dict[str, Any]]:
    names, col2neuron = neuron_index(store)
    n = len(names)
    width = store.columns.size
    colsum = np.zeros(width, dtype=np.float64)
    colhelped = np.zeros(width, dtype=np.int64)
    colhurt = np.zeros(width, dtype=np.int64)
    rows = np.flatnonzero(mask)
    if rows.size:
        for first, block in store.iter_lca(set_name, int(rows[0]), int(rows[-1]) + 1):
            keep = mask[first : first + block.shape[0]]
            if not keep.any():
                continue
            b = block if keep.all() else block[keep]  # (r, P) float32; a mask copies, so only when needed
            colsum += b.sum(axis=0, dtype=np.float64)
            helped, hurt = column_counts(b)
            colhelped += helped
            colhurt += hurt
    total = float(colsum.sum())
    return _group_rows(
        names,
        np.bincount(col2neuron, weights=store.columns.parameter_counts(store.layout), minlength=n).astype(np.int64),
        np.bincount(col2neuron, weights=colsum, minlength=n),
        np.bincount(col2neuron, weights=colhelped, minlength=n),
        np.bincount(col2neuron, weights=colhurt, minlength=n),
        total,
    )


def _by_iteration(store: LcaStore, set_name: str, mask: np.ndarray) -> list[dict[str, Any]]:
    loss = store.read(set_name, "loss")
    steps = store.steps
    tl = store.read(set_name, "tensor_lca").sum(axis=1)
    helped = store.read(set_name, "tensor_helped").sum(axis=1)
    hurt = store.read(set_name, "tensor_hurt").sum(axis=1)
    frac = _fraction(helped, hurt)
    residual = store.read(set_name, "residual")
    splits = store.read(set_name, "splits")
    flagged = store.read(set_name, "flagged")
    l1_change = store.read(set_name, "l1_change")
    return [
        {
            "name": str(int(steps[t])),
            "step": int(steps[t]),
            "next_step": int(steps[t + 1]),
            "delta_loss": float(loss[t + 1] - loss[t]),
            "lca": float(tl[t]),
            "residual": float(residual[t]),
            "splits": int(splits[t]),
            "flagged": bool(flagged[t]),
            "l1_change": _num(l1_change[t]),
            "helped_fraction": _num(frac[t]),
        }
        for t in np.flatnonzero(mask)
    ]


_COLUMNS = {
    "iteration": [
        "step",
        "next_step",
        "delta_loss",
        "lca",
        "residual",
        "splits",
        "flagged",
        "l1_change",
        "helped_fraction",
    ],
}
_GROUP_COLUMNS = ["name", "parameters", "lca", "share", "helped_fraction"]


def summarize(
    store: LcaStore,
    *,
    by: str = "layer",
    set_name: str | None = None,
    window: Window | None = None,
    top: int | None = None,
    sort: str | None = None,
) -> Summary:
    """Summarise a store.

    Args:
        store: The store.
        by: ``layer``, ``tensor``, ``neuron`` or ``iteration``.
        set_name: Evaluation set (default: ``train`` if present, else the first).
        window: Iterations to include (default: all done ones).
        top: Keep only the first ``top`` rows after sorting.
        sort: ``model`` (model/iteration order), ``helped`` (most negative LCA first), ``hurt`` (most
            positive first) or ``abs`` (largest |LCA| first); default ``helped`` for neurons, else ``model``.

    Returns:
        The summary.

    Raises:
        UsageError: On an unknown ``by``/``sort``, or a non-positive ``top``.
        StoreError: If the set does not exist.

    """
    if by not in BY_CHOICES:
        raise UsageError(f"--by {by!r}: expected one of {', '.join(BY_CHOICES)}")
    sort = sort or ("helped" if by == "neuron" else "model")
    if sort not in SORT_CHOICES:
        raise UsageError(f"--sort {sort!r}: expected one of {', '.join(SORT_CHOICES)}")
    if top is not None and top < 1:
        raise UsageError(f"--top {top}: must be >= 1")
    set_name = set_name or ("train" if "train" in store.sets else store.sets[0])
    window = window or Window()
    store.array(set_name, "done")  # raises StoreError for an unknown set
    mask = window_mask(store, window, set_name)
    header = _header(store, set_name, mask, window)
    header["by"] = by
    if by == "iteration":
        rows = _by_iteration(store, set_name, mask)
        columns = ["name", *_COLUMNS["iteration"]]
    elif by == "neuron":
        rows = _by_neuron(store, set_name, mask)
        columns = _GROUP_COLUMNS
    else:
        rows = _by_tensor_or_layer(store, set_name, mask, by)
        columns = _GROUP_COLUMNS
    if sort == "helped":
        rows.sort(key=lambda r: r["lca"])
    elif sort == "hurt":
        rows.sort(key=lambda r: -r["lca"])
    elif sort == "abs":
        rows.sort(key=lambda r: -abs(r["lca"]))
    if top is not None:
        rows = rows[:top]
    return Summary(header, columns, rows)
