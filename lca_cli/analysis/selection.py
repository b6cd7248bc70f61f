"""Which iterations of a store count: one evaluation set, a window of start steps, done rows only.

A window of steps ``[A, B)`` selects iterations by the step they *start* from; only iterations whose ``done``
flag is set count. The result of that choice is a :class:`Selection`, which every other function of
:mod:`lca_cli.analysis` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lca_cli.errors import StoreError, UsageError
from lca_cli.store.lcastore import LcaStore

__all__ = ["Selection", "require_set", "select_rows"]


@dataclass(frozen=True)
class Selection:
    """The iterations of one set that a report covers.

    Attributes:
        set_name: Evaluation set.
        rows: int64 ``(n,)``: pair indices t, increasing, all done and inside the window.
        start: First row of the window (``rows`` lie in ``start .. stop - 1``).
        stop: One past the last row of the window.
        steps: All checkpoint steps of the store, ``(T + 1,)``.
        window: The step window ``(A, B)`` asked for (None = open end).

    """

    set_name: str
    rows: np.ndarray
    start: int
    stop: int
    steps: np.ndarray
    window: tuple[int | None, int | None] = (None, None)

    @property
    def n(self) -> int:
        """Number of iterations that count."""
        return int(self.rows.shape[0])

    @property
    def start_steps(self) -> np.ndarray:
        """Step each counted iteration starts from, ``(n,)``."""
        return self.steps[self.rows]

    @property
    def end_steps(self) -> np.ndarray:
        """Step each counted iteration ends at, ``(n,)``."""
        return self.steps[self.rows + 1]

    @property
    def n_skipped(self) -> int:
        """Iterations inside the window that are not done (excluded everywhere)."""
        return (self.stop - self.start) - self.n


def require_set(store: LcaStore, set_name: str) -> None:
    """Refuse an evaluation set the store does not hold (``--set``), naming the ones it does.

    Raises:
        UsageError: If ``set_name`` is not one of ``store.sets`` (a bad option value: exit 2).

    """
    if set_name not in store.sets:
        raise UsageError(f"--set {set_name}: {store.path} has no such evaluation set (sets: {', '.join(store.sets)})")


def select_rows(store: LcaStore, set_name: str, steps: tuple[int | None, int | None] | None = None) -> Selection:
    """Choose the iterations of ``set_name`` that start at a step in ``[A, B)`` and are done.

    Args:
        store: The store.
        set_name: Evaluation set.
        steps: ``(A, B)``; None (or a None end) leaves that end open.

    Returns:
        The selection.

    Raises:
        UsageError: If the set does not exist, ``A >= B``, or no iteration starts inside the window.
        StoreError: If no iteration inside the window is done yet.

    """
    require_set(store, set_name)
    lo, hi = steps if steps is not None else (None, None)
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(f"--steps {lo}:{hi}: the window is empty (A must be < B)")
    all_steps = store.steps
    starts = all_steps[:-1]
    # steps are increasing, so the window is a contiguous range of rows.
    a = 0 if lo is None else int(np.searchsorted(starts, lo, side="left"))
    b = len(starts) if hi is None else int(np.searchsorted(starts, hi, side="left"))
    if b <= a:
        raise UsageError(
            f"--steps {'' if lo is None else lo}:{'' if hi is None else hi}: no iteration starts in that window "
            f"(the store's iterations start at steps {int(starts[0]) if len(starts) else '-'}.."
            f"{int(starts[-1]) if len(starts) else '-'})"
        )
    done = store.read(set_name, "done").astype(bool)[: len(starts)]
    rows = a + np.flatnonzero(done[a:b])
    if rows.size == 0:
        raise StoreError(
            f"{store.path}: no finished iteration of set {set_name!r} in steps {int(starts[a])}..{int(starts[b - 1])}; "
            "run `lca compute` first"
        )
    return Selection(set_name, rows.astype(np.int64), a, b, all_steps, (lo, hi))
