"""How accurate a store's rows are, per evaluation set: what ``lca compute`` reports after it ran.

Everything here is computed from the store's per-pair arrays (no torch): the run's conservation error
``Σ|residual| / Σ|ΔL|``, the pairs flagged over tolerance (all of them, and those computed by this call, which
is what ``--strict`` judges), and for the worst flagged pair how large its residual is against the run's loss
movement and which setting would fix it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_LISTED", "SetAccuracy", "set_accuracy"]

#: Flagged steps listed per set in results and JSON; longer lists are cut (and say so).
MAX_LISTED = 1000


@dataclass(frozen=True)
class SetAccuracy:
    """Accuracy figures of one evaluation set.

    Attributes:
        flagged: Start steps of every done pair flagged over tolerance, in order.
        flagged_new: Those computed by this call.
        pairs: Done pairs.
        conservation: ``Σ|residual| / Σ|ΔL|`` over the done pairs (0 when the loss never moved).
        mean_abs_delta: Mean ``|ΔL|`` per done pair: the run's loss movement per iteration.
        mean_splits: Mean sub-intervals (= gradients, with the end point reused) per pair computed by this call.
        worst_step: Start step of the flagged pair with the largest ``|residual|`` (None when none is flagged).
        worst_residual: Its residual.
        worst_delta: Its ``ΔL``.
        worst_splits: Its sub-intervals.
        worst_l1: The L1 norm its target is relative to: its row's ``||lca||_1``, or the run's scale when that
            is larger (``l1_scope="run"``); None when not read.

    """

    flagged: list[int]
    flagged_new: list[int]
    pairs: int
    conservation: float
    mean_abs_delta: float
    mean_splits: float
    worst_step: int | None = None
    worst_residual: float = 0.0
    worst_delta: float = 0.0
    worst_splits: int = 0
    worst_l1: float | None = None

    def suggestion(self, settings: Mapping[str, Any]) -> str:
        """The settings that would stop the worst flagged pair from being flagged, as CLI flags.

        Args:
            settings: The store's resolved result settings (``refine``, ``tolerance``, ``rtol``, ``l1_tol``,
                ``max_splits``).

        Returns:
            A short phrase (empty when nothing is flagged).

        """
        if self.worst_step is None:
            return ""
        cap = int(settings.get("max_splits", 32))
        r = abs(self.worst_residual)
        accept = []
        if settings.get("tolerance") is not None or settings.get("rtol") is not None:
            accept.append(f"--tolerance {_round_up(r)}")
        if float(settings.get("l1_tol") or 0.0) > 0 and self.worst_l1:
            accept.append(f"--l1-tol {_round_up(r / self.worst_l1)}")
        refine = f"refine further with --max-splits {2 * cap}" if self.worst_splits >= cap else ""
        loosen = f"accept it with {' and '.join(accept)}" if accept else ""
        return ", or ".join(p for p in (refine, loosen) if p)

    def to_dict(self) -> dict[str, Any]:
        """JSON form; lists longer than :data:`MAX_LISTED` are cut and say so."""
        return {
            "flagged": self.flagged[:MAX_LISTED],
            "flagged_count": len(self.flagged),
            "flagged_new": self.flagged_new[:MAX_LISTED],
            "flagged_new_count": len(self.flagged_new),
            "lists_cut": len(self.flagged) > MAX_LISTED or len(self.flagged_new) > MAX_LISTED,
            "pairs": self.pairs,
            "conservation": self.conservation,
            "mean_abs_delta_loss": self.mean_abs_delta,
            "mean_splits_this_call": self.mean_splits,
        }


def _round_up(x: float) -> str:
    """``x`` rounded up to one significant digit, as a flag value (``2.1e-06`` -> ``3e-06``)."""
    if x <= 0:
        return "0"
    exp = int(np.floor(np.log10(x)))
    lead = int(np.ceil(x / 10.0**exp - 1e-9))
    if lead >= 10:
        lead, exp = 1, exp + 1
    return f"{lead}e{exp:+03d}"


def set_accuracy(
    steps: np.ndarray,
    loss: np.ndarray,
    residual: np.ndarray,
    flagged: np.ndarray,
    splits: np.ndarray,
    done: np.ndarray,
    new: np.ndarray,
    row_l1: Any = None,
) -> SetAccuracy:
    """Accuracy figures of one set from its per-pair arrays.

    Args:
        steps: int ``(T + 1,)`` checkpoint steps.
        loss: float64 ``(T + 1,)``.
        residual: float64 ``(T,)``.
        flagged: bool ``(T,)``.
        splits: int ``(T,)``.
        done: bool ``(T,)``: pairs complete in the store.
        new: bool ``(T,)``: pairs computed by this call.
        row_l1: Optional ``t -> ||lca[t]||_1`` (reads one row; or the run scale when larger), used for the worst
            flagged pair's suggestion.

    Returns:
        The figures.

    """
    done = np.asarray(done, dtype=bool)
    new = np.asarray(new, dtype=bool) & done
    flagged = np.asarray(flagged, dtype=bool) & done
    dl = np.abs(np.diff(np.asarray(loss, dtype=np.float64)))[done]
    res = np.abs(np.asarray(residual, dtype=np.float64))
    moved = float(dl.sum())
    conservation = float(res[done].sum()) / moved if moved > 0 else 0.0
    starts = np.asarray(steps)[:-1]
    mean_splits = float(np.asarray(splits)[new].mean()) if new.any() else 0.0
    out: dict[str, Any] = {
        "flagged": [int(x) for x in starts[flagged]],
        "flagged_new": [int(x) for x in starts[flagged & new]],
        "pairs": int(done.sum()),
        "conservation": conservation,
        "mean_abs_delta": float(dl.mean()) if dl.size else 0.0,
        "mean_splits": mean_splits,
    }
    if flagged.any():
        t = int(np.flatnonzero(flagged)[np.argmax(res[flagged])])
        out.update(
            worst_step=int(starts[t]),
            worst_residual=float(residual[t]),
            worst_delta=float(loss[t + 1] - loss[t]),
            worst_splits=int(splits[t]),
            worst_l1=float(row_l1(t)) if row_l1 is not None else None,
        )
    return SetAccuracy(**out)
