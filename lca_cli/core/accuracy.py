"""How accurate a store's rows are, per evaluation set: what ``lca compute`` reports after it ran.

Everything here is computed from the store's per-pair arrays (no torch): the run's conservation error
``Σ|residual| / Σ|ΔL|``, the pairs flagged over tolerance (all of them, and those computed by this call, which
is what ``--strict`` judges), and for the worst flagged pair how large its residual is against the run's loss
movement and which setting would fix it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ADVICE_MARGIN", "MAX_LISTED", "MAX_ROWS_READ", "SetAccuracy", "set_accuracy"]

#: Flagged steps listed per set in results and JSON; longer lists are cut (and say so).
MAX_LISTED = 1000


#: Rows read to find the ``--l1-tol`` that accepts every flagged pair; beyond it, flagged pairs count with an upper
#: bound of what they need (their row's L1 norm is at least ``|Σ lca| = |ΔL - residual|``), so the advice stays safe.
MAX_ROWS_READ = 256
#: Suggested values are this much above what the stored rows need before rounding up: the stored rows are float32,
#: and a looser setting refines less, which moves a residual a little.
ADVICE_MARGIN = 1.25


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
        accept_l1: The smallest ``l1_tol`` whose residual test passes every flagged pair (adaptive refinement:
            ``|residual| <= l1_tol max(||lca||_1, run scale)``); None when rows were not read.
        accept_l1_own: The same against each row's own norm (Euler's test, which has no run scale).
        accept_change: The largest relative L1 change of a flagged pair's last refinement (the doubling scheme's
            and Euler's ``l1_tol`` test); None when not recorded.

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
    accept_l1: float | None = None
    accept_l1_own: float | None = None
    accept_change: float | None = None

    def suggestion(self, settings: Mapping[str, Any]) -> str:
        """The flags that stop every flagged pair from being flagged, when the same call is run with them.

        Two ways: refine further (a larger ``--max-splits``, when the worst pair used the cap), or accept the
        residuals: loosen only the test that flagged them (``--tolerance`` when a residual tolerance was given and
        a residual exceeds it, ``--l1-tol`` when a pair misses the per-parameter target), never tighten one.
        Every flag changes the store's settings, so each way ends with ``--overwrite`` (the store is recomputed
        with them; ``--out`` elsewhere works too).

        Args:
            settings: The store's resolved result settings (``method``, ``refine``, ``tolerance``, ``rtol``,
                ``l1_tol``, ``max_splits``).

        Returns:
            A short phrase with each way's flags in backticks (empty when nothing is flagged).

        """
        if self.worst_step is None:
            return ""
        cap = int(settings.get("max_splits", 32))
        accept = self._accept_flags(settings)
        ways = []
        if self.worst_splits >= cap:
            ways.append(f"refine further with `--max-splits {2 * cap} --overwrite`")
        if accept:
            ways.append(f"accept it with `{' '.join(accept)} --overwrite`")
        return ", or ".join(ways)

    def _accept_flags(self, settings: Mapping[str, Any]) -> list[str]:
        """The loosened tolerances that pass every flagged pair (see :meth:`suggestion`)."""
        tolerance, rtol = settings.get("tolerance"), settings.get("rtol")
        l1_tol = float(settings.get("l1_tol") or 0.0)
        flags = []
        r = abs(self.worst_residual)  # the largest residual of a flagged pair
        explicit = tolerance is not None or rtol is not None
        # With no tolerance of any kind every nonzero residual is flagged: a residual tolerance accepts them.
        if (explicit and r > float(tolerance or 0.0)) or (not explicit and l1_tol <= 0):
            flags.append(f"--tolerance {_round_up(ADVICE_MARGIN * r)}")
        if l1_tol > 0:
            if settings.get("method") == "euler":
                parts = [self.accept_l1_own, self.accept_change]
            elif settings.get("refine") == "doubling":
                parts = [self.accept_change]
            else:
                parts = [self.accept_l1]
            known = [x for x in parts if x is not None and np.isfinite(x)]
            need = max(known) if known and len(known) == len(parts) else None
            if need is not None and need > l1_tol:  # never stricter than the setting the pairs were held to
                flags.append(f"--l1-tol {_round_up(ADVICE_MARGIN * need)}")
        return flags

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
    row_l1: Callable[[int], float] | None = None,
    l1_scale: float = 0.0,
    l1_change: np.ndarray | None = None,
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
        row_l1: Optional ``t -> ||lca[t]||_1`` (reads one row), for the settings that would accept the flagged
            pairs (:meth:`SetAccuracy.suggestion`).
        l1_scale: The run scale ``l1_tol`` is also relative to (0: none): a row's target norm is the larger.
        l1_change: float64 ``(T,)``: each pair's relative L1 change at its last refinement (NaN: not measured).

    Returns:
        The figures.

    """
    done = np.asarray(done, dtype=bool)
    new = np.asarray(new, dtype=bool) & done
    flagged = np.asarray(flagged, dtype=bool) & done
    loss = np.asarray(loss, dtype=np.float64)
    dl = np.abs(np.diff(loss))[done]
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
        )
        if row_l1 is not None:
            rows = np.flatnonzero(flagged)
            # Σ lca = ΔL - residual, so ||lca||_1 >= |ΔL - residual|: what a row's norm is at least, unread.
            signed = np.diff(loss)[rows] - np.asarray(residual, dtype=np.float64)[rows]
            norms = _flagged_norms(rows, res[rows], np.abs(signed), l1_scale, row_l1)
            out["worst_l1"] = max(float(norms[rows == t][0]), l1_scale)
            out["accept_l1"] = _max_ratio(res[rows], np.maximum(norms, l1_scale))
            out["accept_l1_own"] = _max_ratio(res[rows], norms)
        if l1_change is not None:
            changes = np.asarray(l1_change, dtype=np.float64)[flagged]
            out["accept_change"] = None if np.isnan(changes).any() else float(changes.max())
    return SetAccuracy(**out)


def _flagged_norms(
    rows: np.ndarray, res: np.ndarray, floor: np.ndarray, scale: float, row_l1: Callable[[int], float]
) -> np.ndarray:
    """``||lca||_1`` of the flagged rows: read for those that may need the loosest ``l1_tol``, else a lower bound.

    At most :data:`MAX_ROWS_READ` rows are read, those whose need ``|residual| / norm`` may be the largest (by
    their lower bound of the norm); the others keep that bound, which can only overstate what they need.
    """
    norms = floor.astype(np.float64).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.where(res > 0, res / np.maximum(floor, scale), 0.0)
    for i in np.argsort(-bound, kind="stable")[:MAX_ROWS_READ]:
        norms[i] = max(float(row_l1(int(rows[i]))), float(floor[i]))
    return norms


def _max_ratio(res: np.ndarray, norms: np.ndarray) -> float | None:
    """``max |residual| / norm`` (None when a residual is nonzero against a zero norm: no ``l1_tol`` passes it)."""
    if np.any((res > 0) & (norms <= 0)):
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max(np.where(res > 0, res / norms, 0.0)))
