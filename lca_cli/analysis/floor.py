"""A noise floor for the helped / hurt counts, the entries below float resolution, and Σneg / Σpos per tensor.

The counts stored with every row (``tensor_helped``, ``tensor_hurt``) count *every* nonzero entry: an entry of
1e-23 helps as much as one of 1e-3. Two things let a reader see how much of a helped share rests on such
entries, both computed by one streaming pass over ``lca`` (:func:`tensor_counts`):

* ``--min-abs X`` (:data:`FLOOR_RULE`): an entry with ``|lca| <= X`` counts as zero, so helped means
  ``lca < -X`` and hurt ``lca > X``. Totals (``lca``, ΔL, shares of Σ LCA) never change: the floor only moves
  entries from helped / hurt to zero.
* The share of entries *below float resolution* (:data:`RESOLUTION_RULE`): nonzero entries no larger than
  ``eps(dtype)`` times the largest ``|lca|`` of their iteration, ``eps`` being the machine epsilon of the dtype
  the run was computed in (:func:`run_dtype`). Added to its iteration's largest entry in that dtype, such an
  entry changes nothing: its sign is float noise as far as that iteration's loss change is concerned.

Both need one column per parameter (``--granularity parameter`` without ``--params``): a neuron or tensor column
is a sum of entries, whose signs and sizes the floor is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lca_cli.errors import UsageError
from lca_cli.store import LcaStore

__all__ = [
    "FLOOR_RULE",
    "RESOLUTION_RULE",
    "RowCounts",
    "add_floor",
    "add_resolution",
    "below_resolution",
    "floor_column_counts",
    "floor_header",
    "require_full_columns",
    "run_dtype",
    "tensor_counts",
]

#: What ``--min-abs X`` does to the helped / hurt counts (and what it leaves alone).
FLOOR_RULE = (
    "with a noise floor X (--min-abs X) an entry with |lca| <= X counts as zero: helped when lca < -X, hurt when "
    "lca > X; totals (lca, ΔL, shares of Σ LCA) are unchanged"
)

#: Which entries count as below the float resolution of the run's dtype.
RESOLUTION_RULE = (
    "an entry is below float resolution when 0 < |lca| <= eps x the largest |lca| of its iteration, eps being the "
    "machine epsilon of the dtype the run was computed in (float32: 1.19e-07): added to that largest entry in "
    "that dtype it changes nothing; below_resolution_share is the share of all entries (parameters x iterations) "
    "below it, counted whatever the floor"
)


def run_dtype(store: LcaStore) -> np.dtype:
    """The floating dtype the run's gradients were computed in: float64 when the store says so, else float32.

    Read from the store's evaluation details (``attrs["evaluation"]["dtype"]``) or its identity; half precision
    (bfloat16, float16) is replayed in float32 and ``auto`` or a store that does not say is taken as float32
    (the stored ``lca`` is float32 whatever the run's dtype).
    """
    attrs = store.attrs
    named = (attrs.get("evaluation") or {}).get("dtype") or (
        ((attrs.get("identity") or {}).get("compute") or {}).get("dtype")
    )
    return np.dtype(np.float64) if str(named) in ("float64", "double") else np.dtype(np.float32)


def require_full_columns(store: LcaStore, flag: str) -> None:
    """Refuse a store without one ``lca`` column per parameter for an option that counts entries.

    Raises:
        UsageError: If the store was made with ``--granularity neuron|tensor`` or ``--params``.

    """
    if not store.columns.full:
        how = f"--granularity {store.columns.granularity}" if store.columns.granularity != "parameter" else "--params"
        raise UsageError(
            f"{flag} needs one lca column per parameter, and {store.path} was made with {how} (its columns are "
            "sums of parameters); recompute with the default --granularity parameter, or leave the option out"
        )


def floor_column_counts(rows: np.ndarray, min_abs: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column of a block of LCA rows, the rows below ``-min_abs`` (helped) and above ``min_abs`` (hurt).

    Args:
        rows: float ``(r, P)``.
        min_abs: The noise floor X >= 0 (0 gives the stored counts' rule).

    Returns:
        ``(helped, hurt)``: int32 ``(P,)`` each.

    """
    helped = (rows < -min_abs).view(np.uint8).sum(axis=0, dtype=np.int32)
    hurt = (rows > min_abs).view(np.uint8).sum(axis=0, dtype=np.int32)
    return helped, hurt


def below_resolution(rows: np.ndarray, eps: float) -> np.ndarray:
    """Bool ``(r, P)``: the nonzero entries of each row no larger than ``eps`` x the row's largest ``|lca|``."""
    mag = np.abs(rows)
    return (mag > 0) & (mag <= eps * mag.max(axis=1, keepdims=True))


@dataclass(frozen=True)
class RowCounts:
    """Per iteration and tensor, what one streaming pass over ``lca`` counted and summed.

    Rows of the store outside the mask it was computed for hold zeros.

    Attributes:
        helped: int64 ``(T, K)``: entries with ``lca < -min_abs``.
        hurt: int64 ``(T, K)``: entries with ``lca > min_abs``.
        tiny: int64 ``(T, K)``: entries below float resolution (:data:`RESOLUTION_RULE`).
        neg: float64 ``(T, K)``: the sum of the negative entries (what the tensor helped).
        pos: float64 ``(T, K)``: the sum of the positive entries (what it hurt).
        min_abs: The floor the counts used (0: every nonzero entry counts).
        dtype: The run's dtype (:func:`run_dtype`), whose epsilon is the resolution.

    """

    helped: np.ndarray
    hurt: np.ndarray
    tiny: np.ndarray
    neg: np.ndarray
    pos: np.ndarray
    min_abs: float
    dtype: np.dtype

    @property
    def eps(self) -> float:
        """Machine epsilon of the run's dtype."""
        return float(np.finfo(self.dtype).eps)


def _per_tensor(values: np.ndarray, starts: np.ndarray, dtype: type) -> np.ndarray:
    """``(r, P)`` -> ``(r, K)``: sums over each tensor's contiguous columns (``starts``: their first columns)."""
    return np.add.reduceat(values, starts, axis=1, dtype=dtype)


def tensor_counts(store: LcaStore, set_name: str, mask: np.ndarray, min_abs: float | None) -> RowCounts:
    """Stream ``lca`` once over the masked rows: per iteration and tensor, counts above the floor and Σneg / Σpos.

    Args:
        store: The store (one column per parameter: :func:`require_full_columns`).
        set_name: Evaluation set.
        mask: ``(T,)`` bool: the rows to count.
        min_abs: The noise floor X (None or 0: every nonzero entry counts, as the stored counts do).

    Returns:
        The counts and sums.

    Raises:
        UsageError: A negative or non-finite floor, or a store without one column per parameter.

    """
    x = 0.0 if min_abs is None else float(min_abs)
    if not np.isfinite(x) or x < 0:
        raise UsageError(f"--min-abs {min_abs}: must be a finite number >= 0")
    layout = store.layout
    dtype = run_dtype(store)
    eps = float(np.finfo(dtype).eps)
    sizes = np.array([p.numel for p in layout.params], dtype=np.int64)
    k, t = len(sizes), store.n_pairs
    helped, hurt, tiny = (np.zeros((t, k), dtype=np.int64) for _ in range(3))
    neg, pos = np.zeros((t, k)), np.zeros((t, k))
    # reduceat needs non-empty segments: sum over the tensors that have parameters, leave the others 0.
    live = np.flatnonzero(sizes > 0)
    starts = np.array([layout.params[i].offset for i in live], dtype=np.int64)
    rows = np.flatnonzero(mask)
    if rows.size and live.size:
        for first, block in store.iter_lca(set_name, int(rows[0]), int(rows[-1]) + 1):
            keep = mask[first : first + block.shape[0]]
            if not keep.any():
                continue
            b = block if keep.all() else block[keep]  # (r, P) float32
            at = first + np.flatnonzero(keep)  # (r,) store rows
            helped[np.ix_(at, live)] = _per_tensor((b < -x).view(np.uint8), starts, np.int64)
            hurt[np.ix_(at, live)] = _per_tensor((b > x).view(np.uint8), starts, np.int64)
            tiny[np.ix_(at, live)] = _per_tensor(below_resolution(b, eps).view(np.uint8), starts, np.int64)
            neg[np.ix_(at, live)] = _per_tensor(np.minimum(b, 0), starts, np.float64)
            pos[np.ix_(at, live)] = _per_tensor(np.maximum(b, 0), starts, np.float64)
    return RowCounts(helped, hurt, tiny, neg, pos, x, dtype)


def floor_header(floor: RowCounts, mask: np.ndarray, n_params: int) -> dict[str, Any]:
    """Header keys of a summary counted above a floor: the floor, its rule, the dtype, the resolution share.

    Args:
        floor: The counts.
        mask: ``(T,)`` bool: the rows summarised.
        n_params: Parameters of the network.

    Returns:
        ``min_abs``, ``floor_rule``, ``dtype``, ``eps``, ``resolution_rule``, ``below_resolution_share`` (of
        all parameters x iterations of the window).

    """
    cells = max(n_params * int(mask.sum()), 1)
    return {
        "min_abs": floor.min_abs,
        "floor_rule": FLOOR_RULE,
        "dtype": str(floor.dtype),
        "eps": floor.eps,
        "resolution_rule": RESOLUTION_RULE,
        "below_resolution_share": float(floor.tiny[mask].sum() / cells),
    }


def add_resolution(rows: list[dict[str, Any]], tiny: np.ndarray, n_iterations: int) -> None:
    """Add ``below_resolution_share`` to group rows: entries below resolution / (parameters x iterations).

    Args:
        rows: Group rows (each with ``parameters``), in the order of ``tiny``.
        tiny: ``(G,)`` entries below resolution per group over the window.
        n_iterations: Iterations in the window.

    """
    for row, k in zip(rows, tiny, strict=True):
        cells = row["parameters"] * n_iterations
        row["below_resolution_share"] = float(k / cells) if cells else None


def add_floor(
    store: LcaStore, header: dict[str, Any], rows: list[dict[str, Any]], floor: RowCounts, mask: np.ndarray, by: str
) -> None:
    """Add the floor's header keys (:func:`floor_header`) and each layer / tensor / iteration row's resolution share.

    Neuron rows get theirs where they are counted (column by column); rows must still be in model order.

    Args:
        store: The store.
        header: The summary's header (updated).
        rows: The summary's rows (updated).
        floor: The counts over ``mask``.
        mask: ``(T,)`` bool: the rows summarised.
        by: What a row is.

    """
    n_params = store.layout.size
    header.update(floor_header(floor, mask, n_params))
    if by == "iteration":
        tiny = floor.tiny.sum(axis=1)  # (T,)
        for row, t in zip(rows, np.flatnonzero(mask), strict=True):
            row["below_resolution_share"] = float(tiny[t] / max(n_params, 1))
    elif by in ("layer", "tensor"):
        per_tensor = floor.tiny[mask].sum(axis=0)  # (K,)
        if by == "layer":
            idx = store.layout.tensor_to_layer()
            per_tensor = np.bincount(idx, weights=per_tensor, minlength=len(store.layout.layers()))
        add_resolution(rows, per_tensor, int(mask.sum()))
