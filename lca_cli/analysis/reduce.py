"""Reduce a store: by layer, tensor, neuron or iteration, over a window of iterations.

Layer, tensor and iteration summaries read only the small per-iteration arrays (``tensor_lca``,
``tensor_helped``, ``tensor_hurt``, ``loss``, ``residual``, ...); neuron summaries, and the concentration
columns when asked for, stream ``lca`` one row chunk at a time. Nothing here loads the whole ``lca`` array,
so stores larger than memory work.

Two conventions for "how many helped", both reported and labelled: ``helped_fraction`` excludes exact zeros
(:data:`lca_cli.store.lcastore.HELPED_RULE`: helped / (helped + hurt)); ``helped_share``, ``zero_share`` and
``hurt_share`` are shares of *all* parameters (x iterations), the authors' convention, and sum to 1.

Significance: a group *helps* or *hurts* only when ``|its total|`` exceeds the window's accumulated
integration error ``sum |residual|`` (:func:`lca_cli.analysis.series.integration_error`); otherwise it is
"within error".
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli.analysis import floor
from lca_cli.analysis.longform import check_series, series_columns, series_rows
from lca_cli.analysis.parameters import concentration
from lca_cli.analysis.selection import require_set
from lca_cli.analysis.series import learning_milestones, significance
from lca_cli.errors import LcaError, StoreError, UsageError
from lca_cli.store import HELPED_RULE, LcaStore, column_counts

__all__ = [
    "BY_CHOICES",
    "PANDAS_MISSING",
    "SIGNIFICANCE_RULE",
    "SORT_CHOICES",
    "XARRAY_MISSING",
    "Summary",
    "Window",
    "open_store",
    "parse_window",
    "summarize",
    "window_mask",
]

#: What "helps" / "hurts" / "within error" mean in summaries and reports.
SIGNIFICANCE_RULE = (
    "a layer (tensor, neuron) helps or hurts only when |its total LCA| exceeds the window's integration "
    "error, the sum of |residual| over its iterations; otherwise it is within error"
)

#: One line each for a summary converted without the library it needs.
PANDAS_MISSING = "Summary.to_pandas needs pandas: pip install pandas (or 'lca-cli[xarray]', which brings it)"
XARRAY_MISSING = "Summary.to_xarray needs xarray: pip install 'lca-cli[xarray]'"

BY_CHOICES = ("layer", "tensor", "neuron", "iteration")
SORT_CHOICES = ("model", "helped", "hurt", "abs")


@dataclass(frozen=True)
class Window:
    """Iterations whose start step lies in ``[start, stop)``; None leaves that end open."""

    start: int | None = None
    stop: int | None = None

    def __str__(self) -> str:
        return f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"


def open_store(path: str | Path, check: bool = True) -> LcaStore:
    """Open a store for reading; a run directory gets a hint at the store inside it.

    Args:
        path: The store (usually ``RUN_DIR/lca.zarr``).
        check: Passed to :meth:`LcaStore.open` (False for ``lca verify``, which checks everything itself).

    Returns:
        The store.

    Raises:
        StoreError: If ``path`` is not an lca store; when it is a run directory the message names the store
            to use (``RUN_DIR/lca.zarr``) or says how to make it.

    """
    p = Path(path)
    try:
        return LcaStore.open(p, check=check)
    except StoreError:
        if not p.is_dir():
            raise
        stores = sorted(q for q in p.glob("*.zarr") if (q / "zarr.json").is_file())
        if stores:
            hint = p / "lca.zarr" if (p / "lca.zarr") in stores else stores[0]
            raise StoreError(f"{p} is a run directory, not an lca store; did you mean {hint}?") from None
        if (p / "lca.toml").is_file() or any(p.glob("*.safetensors")):
            raise StoreError(
                f"{p} is a run directory, not an lca store, and holds no store yet; run `lca compute {p}` "
                f"(it writes {p / 'lca.zarr'})"
            ) from None
        raise


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
    bad = UsageError(f"--steps {text!r}: expected A:B with integer steps (either may be omitted), e.g. 0:100")
    if len(parts) not in (1, 2):
        raise bad
    try:
        ends = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise bad from None
    if len(ends) == 1:
        if ends[0] is None:
            raise bad
        return Window(ends[0], ends[0] + 1)
    a, b = ends
    # (checked outside the try: UsageError is a ValueError, and this message must not be swallowed)
    if a is not None and b is not None and b <= a:
        hint = f" (did you mean --steps {b}:{a}?)" if b < a else f" (for iteration {a} alone: --steps {a})"
        raise UsageError(
            f"--steps {text}: the window is empty: A:B keeps the iterations whose start step s has "
            f"A <= s < B, so B must be greater than A{hint}"
        )
    return Window(a, b)


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


def _delta_loss(store: LcaStore, set_name: str) -> np.ndarray:
    """Loss change of each pair, ``(T,)``: ``loss_end[t] - loss[t]``, where row t stored its end loss.

    A done row always holds both its start loss and its end loss (``loss_end``), whereas ``loss[t + 1]`` is the
    next block's to write: on a partly computed store it is missing (NaN) for the last finished row of a block
    whose next rows are not done. Rows without an end loss (not done) fall back to ``loss[t + 1] - loss[t]``.
    """
    loss = store.read(set_name, "loss")
    end = store.read(set_name, "loss_end")
    return np.where(np.isfinite(end), end - loss[: len(end)], loss[1 : len(end) + 1] - loss[: len(end)])


def _fraction(helped: np.ndarray | float, hurt: np.ndarray | float) -> Any:
    helped_a, hurt_a = np.asarray(helped, dtype=np.float64), np.asarray(hurt, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return helped_a / (helped_a + hurt_a)


def _num(x: float) -> float | None:
    """JSON-friendly float: NaN becomes None, and -0.0 (a frozen layer's 0 over a negative total) 0.0."""
    x = float(x)
    return None if math.isnan(x) else x + 0.0


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
        """JSON form: ``{"header": ..., "columns": ..., "rows": [...]}`` (what ``lca summarize --json`` prints)."""
        return {"header": self.header, "columns": self.columns, "rows": self.rows}

    @property
    def by(self) -> str:
        """What a row is: ``layer``, ``tensor``, ``neuron`` or ``iteration``."""
        return str(self.header.get("by", "layer"))

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame``: indexed by ``name`` (by ``step`` for iterations), header in ``attrs``.

        Missing values (``None`` in :meth:`to_dict`: a helped fraction with nothing moved, a milestone never
        reached) become NaN.

        Returns:
            A ``pandas.DataFrame`` with the columns of :attr:`columns` (less the index).

        Raises:
            LcaError: If pandas is not installed (one line saying how to install it).

        """
        try:
            import pandas as pd
        except ImportError:
            raise LcaError(PANDAS_MISSING) from None
        if self.header.get("series"):  # long format (--series): indexed by (step, layer)
            frame = pd.DataFrame(self.rows, columns=self.columns).set_index(["step", self.by])
        else:
            index = "step" if self.by == "iteration" else "name"
            columns = [c for c in self.columns if c != "name"] if index == "step" else self.columns
            frame = pd.DataFrame(self.rows, columns=columns).set_index(index)
            frame.index.name = "step" if index == "step" else self.by
        frame.attrs.update(self.header)
        return frame

    def to_xarray(self) -> Any:
        """The rows as an ``xarray.Dataset``: one variable per column along a dimension named by :attr:`by`.

        The coordinate is the row names (the start steps for iterations); the header goes into ``attrs``, with
        ``None`` entries left out and lists and maps as JSON text, so that the dataset saves to netCDF or Zarr.

        Returns:
            An ``xarray.Dataset``.

        Raises:
            LcaError: If xarray (or pandas) is not installed (one line saying how to install it).

        """
        try:
            import xarray as xr
        except ImportError:
            raise LcaError(XARRAY_MISSING) from None
        frame = self.to_pandas()
        frame.attrs = {}
        dataset = xr.Dataset.from_dataframe(frame if self.header.get("series") else frame.rename_axis(self.by))
        if self.by == "iteration":
            dataset = dataset.rename({"iteration": "step"}).swap_dims({"step": "iteration"})
        dataset.attrs = {
            k: (json.dumps(v) if isinstance(v, list | dict) else v) for k, v in self.header.items() if v is not None
        }
        return dataset


def _tensor_counts(store: LcaStore, set_name: str, counts: floor.RowCounts | None) -> tuple[np.ndarray, np.ndarray]:
    """Helped and hurt entries per iteration and tensor, ``(T, K)`` each: stored, or above ``counts``' floor X."""
    if counts is not None:
        return counts.helped, counts.hurt
    return store.read(set_name, "tensor_helped"), store.read(set_name, "tensor_hurt")


def _header(
    store: LcaStore, set_name: str, mask: np.ndarray, window: Window, counts: floor.RowCounts | None = None
) -> dict[str, Any]:
    dl = _delta_loss(store, set_name)
    tensor_lca = store.read(set_name, "tensor_lca")[mask]  # (t, K)
    helped_t, hurt_t = _tensor_counts(store, set_name, counts)
    helped, hurt = helped_t[mask].sum(axis=1), hurt_t[mask].sum(axis=1)
    frac = _fraction(helped, hurt)
    frac = frac[~np.isnan(frac)]
    n_params = store.layout.size
    residual = store.read(set_name, "residual")[mask]
    flagged = store.read(set_name, "flagged").astype(bool) & mask
    buffer_lca = float(store.read(set_name, "buffer_lca")[mask].sum())
    starts = store.steps[:-1]
    sel = starts[mask]
    shares = (helped / n_params, (n_params - helped - hurt) / n_params, hurt / n_params) if n_params else ()
    return {
        "store": str(store.path),
        "set": set_name,
        "window": str(window),
        "iterations": int(mask.sum()),
        "iterations_total": store.n_pairs,
        "first_step": int(sel[0]) if sel.size else None,
        "last_step": int(store.steps[1:][mask][-1]) if sel.size else None,
        "parameters": n_params,
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
        "helped_share_mean": _num(shares[0].mean()) if shares and sel.size else None,
        "zero_share_mean": _num(shares[1].mean()) if shares and sel.size else None,
        "hurt_share_mean": _num(shares[2].mean()) if shares and sel.size else None,
        "integration_error": float(np.abs(residual).sum()),
        "significance_rule": SIGNIFICANCE_RULE,
    }


def _group_rows(
    names: Sequence[str],
    counts: np.ndarray,
    lca: np.ndarray,
    helped: np.ndarray,
    hurt: np.ndarray,
    total: float,
    n_iterations: int,
    error: float,
    counted: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    # ``counted``: the values per iteration that ``helped`` and ``hurt`` count (the parameters, unless the store
    # holds coarser columns: one per neuron in a neuron store).
    counted = counts if counted is None else counted
    frac = _fraction(helped, hurt)
    cells = np.maximum(np.asarray(counted, dtype=np.float64) * n_iterations, 1.0)
    verdicts = significance(np.asarray(lca, dtype=np.float64), error)
    return [
        {
            "name": n,
            "parameters": int(c),
            "lca": float(v),
            "share": _num(v / total) if total != 0 else None,
            "helped_fraction": _num(f),
            "helped_share": _num(h / x) if n_iterations else None,
            "zero_share": _num((k * n_iterations - h - u) / x) if n_iterations else None,
            "hurt_share": _num(u / x) if n_iterations else None,
            "significance": sig,
        }
        for n, c, k, v, f, h, u, x, sig in zip(
            names, counts, counted, lca, frac, helped, hurt, cells, verdicts, strict=True
        )
    ]


def _milestones(rows: list[dict[str, Any]], per_iteration: np.ndarray, end_steps: np.ndarray) -> None:
    """Add ``step_50`` / ``step_90``: the checkpoint at which each group had done 50% / 90% of its learning."""
    pos = learning_milestones(per_iteration, (0.5, 0.9))  # (2, G)
    for g, row in enumerate(rows):
        for key, p in (("step_50", pos[0, g]), ("step_90", pos[1, g])):
            row[key] = int(end_steps[p]) if p >= 0 else None


def _by_tensor_or_layer(
    store: LcaStore, set_name: str, mask: np.ndarray, by: str, error: float, counts: floor.RowCounts | None = None
) -> list[dict[str, Any]]:
    layout = store.layout
    per_it = store.read(set_name, "tensor_lca")[mask]  # (t, K)
    tl = per_it.sum(axis=0)  # (K,)
    helped_t, hurt_t = _tensor_counts(store, set_name, counts)
    th, tu = helped_t[mask].sum(axis=0), hurt_t[mask].sum(axis=0)
    sizes = np.array([p.numel for p in layout.params])
    total = float(tl.sum())
    n_it = int(mask.sum())
    end_steps = store.steps[1:][mask]
    if by == "tensor":
        rows = _group_rows(layout.names, sizes, tl, th, tu, total, n_it, error)
        _milestones(rows, per_it, end_steps)
        return rows
    groups = layout.layers()
    idx = layout.tensor_to_layer()
    nl = len(groups)
    onehot = np.zeros((len(idx), nl))
    onehot[np.arange(len(idx)), idx] = 1.0
    rows = _group_rows(
        [g for g, _ in groups],
        np.bincount(idx, weights=sizes, minlength=nl),
        np.bincount(idx, weights=tl, minlength=nl),
        np.bincount(idx, weights=th, minlength=nl),
        np.bincount(idx, weights=tu, minlength=nl),
        total,
        n_it,
        error,
    )
    _milestones(rows, per_it @ onehot, end_steps)  # (t, K) @ (K, L): per-layer LCA per iteration
    return rows


def _column_totals(store: LcaStore, set_name: str, mask: np.ndarray) -> np.ndarray:
    """Net LCA per column of ``lca`` over the masked rows, streamed chunk by chunk: float64 ``(C,)``."""
    colsum = np.zeros(store.columns.size, dtype=np.float64)
    rows = np.flatnonzero(mask)
    if rows.size:
        for first, block in store.iter_lca(set_name, int(rows[0]), int(rows[-1]) + 1):
            keep = mask[first : first + block.shape[0]]
            if keep.any():
                colsum += (block if keep.all() else block[keep]).sum(axis=0, dtype=np.float64)
    return colsum


def _add_concentration(store: LcaStore, rows: list[dict[str, Any]], colsum: np.ndarray, by: str) -> None:
    """Add ``params_50`` / ``params_90``: the share of a group's parameters doing 50% / 90% of its learning.

    At the resolution stored (:attr:`LcaStore.column_layout`): in a neuron store the share of a layer's neurons
    (the table says so); a tensor store, and a group with no columns of its own (left out by ``--params``, or a
    tensor of a neuron store), get None.
    """
    layout = store.column_layout
    if store.columns.granularity == "tensor":  # a layer's tensors: too few units for a share to say anything
        for row in rows:
            row["params_50"] = row["params_90"] = None
        return
    if by == "layer":
        groups = {name: [layout.params[i] for i in idx] for name, idx in layout.layers()}
    else:
        groups = {p.name: [p] for p in layout.params} if store.columns.granularity == "parameter" else {}
    for row in rows:
        ps = groups.get(row["name"])
        if ps is None:
            row["params_50"] = row["params_90"] = None
            continue
        part = np.concatenate([colsum[p.offset : p.stop] for p in ps])
        shares = concentration(part, (0.5, 0.9), max_points=2).shares
        row["params_50"], row["params_90"] = _num(shares[0]), _num(shares[1])


def neuron_index(store: LcaStore) -> tuple[list[str], np.ndarray]:
    """Map every column of ``lca`` to its neuron (output unit of its layer's tensors, see ``Layout.neurons``).

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
        for ti, _ in members:
            p = layout.params[ti]
            col2neuron[p.offset : p.stop] = base + p.unit_index()
    return names, col2neuron


def _by_neuron(
    store: LcaStore, set_name: str, mask: np.ndarray, error: float, min_abs: float | None = None
) -> list[dict[str, Any]]:
    names, col2neuron = neuron_index(store)
    n = len(names)
    width = store.columns.size
    colsum = np.zeros(width, dtype=np.float64)
    colhelped = np.zeros(width, dtype=np.int64)
    colhurt = np.zeros(width, dtype=np.int64)
    coltiny = np.zeros(width, dtype=np.int64)
    eps = float(np.finfo(floor.run_dtype(store)).eps)
    rows = np.flatnonzero(mask)
    if rows.size:
        for first, block in store.iter_lca(set_name, int(rows[0]), int(rows[-1]) + 1):
            keep = mask[first : first + block.shape[0]]
            if not keep.any():
                continue
            b = block if keep.all() else block[keep]  # (r, P) float32; a mask copies, so only when needed
            colsum += b.sum(axis=0, dtype=np.float64)
            helped, hurt = column_counts(b) if min_abs is None else floor.floor_column_counts(b, min_abs)
            colhelped += helped
            colhurt += hurt
            if min_abs is not None:
                coltiny += floor.below_resolution(b, eps).sum(axis=0)
    total = float(colsum.sum())
    rows_out = _group_rows(
        names,
        np.bincount(col2neuron, weights=store.columns.parameter_counts(store.layout), minlength=n).astype(np.int64),
        np.bincount(col2neuron, weights=colsum, minlength=n),
        np.bincount(col2neuron, weights=colhelped, minlength=n),
        np.bincount(col2neuron, weights=colhurt, minlength=n),
        total,
        int(mask.sum()),
        error,
        counted=np.bincount(col2neuron, minlength=n),  # stored columns per neuron: what the counts count
    )
    if min_abs is not None:
        floor.add_resolution(rows_out, np.bincount(col2neuron, weights=coltiny, minlength=n), int(mask.sum()))
    return rows_out


def _by_iteration(
    store: LcaStore, set_name: str, mask: np.ndarray, counts: floor.RowCounts | None = None
) -> list[dict[str, Any]]:
    dl = _delta_loss(store, set_name)
    steps = store.steps
    tl = store.read(set_name, "tensor_lca").sum(axis=1)
    helped_t, hurt_t = _tensor_counts(store, set_name, counts)
    helped, hurt = helped_t.sum(axis=1), hurt_t.sum(axis=1)
    frac = _fraction(helped, hurt)
    n_params = max(store.layout.size, 1)
    residual = store.read(set_name, "residual")
    splits = store.read(set_name, "splits")
    flagged = store.read(set_name, "flagged")
    l1_change = store.read(set_name, "l1_change")
    return [
        {
            "name": str(int(steps[t])),
            "step": int(steps[t]),
            "next_step": int(steps[t + 1]),
            "delta_loss": float(dl[t]),
            "lca": float(tl[t]),
            "residual": float(residual[t]),
            "splits": int(splits[t]),
            "flagged": bool(flagged[t]),
            "l1_change": _num(l1_change[t]),
            "helped_fraction": _num(frac[t]),
            "helped_share": float(helped[t] / n_params),
            "zero_share": float((n_params - helped[t] - hurt[t]) / n_params),
            "hurt_share": float(hurt[t] / n_params),
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
        "helped_share",
        "zero_share",
        "hurt_share",
    ],
}
#: Columns of layer / tensor / neuron rows; the first five are the original contract, the rest were added.
_GROUP_COLUMNS = [
    "name",
    "parameters",
    "lca",
    "share",
    "helped_fraction",
    "helped_share",
    "zero_share",
    "hurt_share",
    "significance",
]
_MILESTONE_COLUMNS = ["step_50", "step_90"]
_CONCENTRATION_COLUMNS = ["params_50", "params_90"]


def _check_window(store: LcaStore, set_name: str, window: Window, mask: np.ndarray) -> None:
    """Explain an empty selection: a window outside the store's steps, or iterations not computed yet."""
    if mask.any():
        return
    starts = store.steps[:-1]
    inside = np.ones(len(starts), dtype=bool)
    if window.start is not None:
        inside &= starts >= window.start
    if window.stop is not None:
        inside &= starts < window.stop
    span = f"{int(starts[0])}..{int(starts[-1])}" if len(starts) else "none"
    if not inside.any():
        raise UsageError(
            f"--steps {window}: no iteration starts in that window; the iterations of {store.path} start at "
            f"steps {span} (A:B keeps start steps A <= s < B; either end may be left out)"
        )
    raise StoreError(
        f"{store.path}: none of the {int(inside.sum())} iteration(s) of set {set_name!r} in --steps {window} is "
        "computed yet; run `lca compute` (it resumes) and summarise again"
    )


def summarize(
    store: LcaStore,
    *,
    by: str = "layer",
    set_name: str | None = None,
    window: Window | None = None,
    top: int | None = None,
    sort: str | None = None,
    concentration: bool = False,
    min_abs: float | None = None,
    series: bool = False,
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
        concentration: For ``layer`` and ``tensor``: also the share of each group's parameters that does
            50% and 90% of its learning (``params_50``, ``params_90``). Needs per-parameter totals, so it
            streams ``lca`` once (the other columns read only the small arrays).
        min_abs: A noise floor X: entries with ``|lca| <= X`` count as zero in the helped / hurt counts and
            shares (:data:`lca_cli.analysis.floor.FLOOR_RULE`; totals unchanged), and every helped / hurt figure
            gains ``below_resolution_share`` (:data:`~lca_cli.analysis.floor.RESOLUTION_RULE`). Streams ``lca``
            once; 0 keeps the counts and adds the resolution shares.
        series: With ``by="layer"`` or ``"tensor"``: rows ``step, <by>, lca, neg, pos``, one per iteration and
            group (:mod:`lca_cli.analysis.longform`; streams ``lca`` once).

    Returns:
        The summary.

    Raises:
        UsageError: On an unknown set, ``by`` or ``sort``, a non-positive ``top``, ``concentration`` with
            another ``by``, ``series`` with another ``by`` or with ``top``, ``sort`` or ``concentration``, a
            negative ``min_abs``, ``min_abs`` or ``series`` on a store without one column per parameter, or a
            window in which no iteration starts.
        StoreError: If no iteration of the window is computed yet.

    """
    if by not in BY_CHOICES:
        raise UsageError(f"--by {by!r}: expected one of {', '.join(BY_CHOICES)}")
    check_series(series, by, top, sort, concentration)
    sort = sort or ("helped" if by == "neuron" else "model")
    if sort not in SORT_CHOICES:
        raise UsageError(f"--sort {sort!r}: expected one of {', '.join(SORT_CHOICES)}")
    if top is not None and top < 1:
        raise UsageError(f"--top {top}: must be >= 1")
    if concentration and by not in ("layer", "tensor"):
        raise UsageError(f"--concentration works with --by layer or --by tensor, not --by {by}")
    set_name = set_name or ("train" if "train" in store.sets else store.sets[0])
    window = window or Window()
    require_set(store, set_name)
    mask = window_mask(store, window, set_name)
    _check_window(store, set_name, window, mask)
    counts = None
    if min_abs is not None or series:
        floor.require_full_columns(store, "--min-abs" if min_abs is not None else "--series")
        counts = floor.tensor_counts(store, set_name, mask, min_abs)  # (--by neuron counts its columns in a 2nd pass)
    header = _header(store, set_name, mask, window, counts)
    header["by"] = by
    error = header["integration_error"]
    if series and counts is not None:
        header["series"] = True
        rows, columns = series_rows(store, set_name, mask, by, counts), series_columns(by)
    elif by == "iteration":
        rows = _by_iteration(store, set_name, mask, counts)
        columns = ["name", *_COLUMNS["iteration"]]
    elif by == "neuron":
        rows = _by_neuron(store, set_name, mask, error, min_abs)
        columns = list(_GROUP_COLUMNS)
    else:
        rows = _by_tensor_or_layer(store, set_name, mask, by, error, counts)
        columns = [*_GROUP_COLUMNS, *_MILESTONE_COLUMNS]
        if concentration:
            _add_concentration(store, rows, _column_totals(store, set_name, mask), by)
            columns += _CONCENTRATION_COLUMNS
    if counts is not None and min_abs is not None:
        floor.add_floor(store, header, rows, counts, mask, "series" if series else by)
        columns += [] if series else ["below_resolution_share"]
    if sort == "helped":
        rows.sort(key=lambda r: r["lca"])
    elif sort == "hurt":
        rows.sort(key=lambda r: -r["lca"])
    elif sort == "abs":
        rows.sort(key=lambda r: -abs(r["lca"]))
    if top is not None:
        rows = rows[:top]
    return Summary(header, columns, rows)
