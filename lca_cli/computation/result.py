"""What a ``compute`` call reports: progress while it runs (:class:`ProgressInfo`) and its result at the end."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lca_cli.core.accuracy import SetAccuracy, set_accuracy
from lca_cli.store.lcastore import LcaStore

__all__ = ["ComputeResult", "NoteFn", "ProgressFn", "ProgressInfo", "ProgressReporter", "accuracy_of"]

#: ``progress(pairs_done_this_run, pairs_to_do)``, called after every pair.
ProgressFn = Callable[[int, int], None]
#: ``note(message)``: a one-line note for the user (how checkpoints were found and mapped onto the model).
NoteFn = Callable[[str], None]


@dataclass(frozen=True)
class ProgressInfo:
    """Where a ``compute`` call stands.

    Attributes:
        done: Pairs computed by this call so far.
        total: Pairs this call has to compute.
        skipped: Pairs already done before this call.
        gradients: Full-evaluation-set gradients computed so far (every set, every point).
        flagged: Pairs computed by this call still over tolerance at the cap (in any set).
        elapsed: Seconds since the pair loop started.
        store: Store path.
        device: Compute device.
        failed: The call is ending with an error (its last line must not say "finished").

    """

    done: int
    total: int
    skipped: int
    gradients: int
    flagged: int
    elapsed: float
    store: Path
    device: str
    failed: bool = False


@runtime_checkable
class ProgressReporter(Protocol):
    """Receives :class:`ProgressInfo` at the start, after every pair and at the end of a ``compute`` call."""

    def start(self, info: ProgressInfo) -> None:
        """Before the first pair."""

    def update(self, info: ProgressInfo) -> None:
        """After each pair."""

    def finish(self, info: ProgressInfo) -> None:
        """After the last pair (also when stopped early)."""


@dataclass(frozen=True, kw_only=True)
class ComputeResult:
    """What a ``compute`` call did (built by keyword).

    Attributes:
        store: Store path.
        n_pairs: Pairs in the store (T).
        computed: Pairs computed by this call (every rank of a ``torchrun`` job, on rank 0; this process else).
        skipped: Pairs already done before this call.
        flagged: Per set, the steps (start of the pair) still over tolerance at the cap.
        max_abs_residual: Per set, the largest |residual| over all done pairs.
        seconds: Wall time of the pair loop.
        device: Device used.
        gradients_per_pair: Full-evaluation-set gradients per pair this process computed, every set together
            (0.0 when it computed none).
        gradients: Every full-evaluation-set gradient this process computed in the call, every set together:
            the pair loop's and those before it (the run's survey, the accumulation probe); not the pre-flight's
            one-chunk check nor ``--threads auto``'s one-chunk timings.
        reused: Gradients the pair loop took from the run's survey and the accumulation probe instead of
            evaluating them again (:class:`~lca_cli.computation.reuse.ProbeReuse`; not in ``gradients``).
        reuse_entries: What the survey kept for the loop, as entries (a checkpoint's gradient, or a probe pair's
            inner points in one set): the gradients a loop over every pair the survey saw saves at least.
        interrupted: True when stopped early (Ctrl-C, SIGTERM, SIGHUP); finished rows are saved.
        repaired: Damaged rows marked for recomputation (``repair``), summed over sets.
        processes: Processes of this call (the ``torchrun`` job's size; 1 otherwise).
        by_others: Pairs in this call's scope that other processes (``cooperate``, shards) finished meanwhile.
        role: ``"owner"`` (held the store lock), or ``"helper"`` (computed into another process's store).
        pruned: Checkpoints deleted by ``prune``.
        ended: Why ``follow`` stopped following (None without it).
        scope: The pairs this call was responsible for (``steps``, ``shard``).
        accuracy: Per set, conservation, flags (all, and this call's) and the worst flagged pair.
        settings: The resolved result settings the store holds (method, refine, tolerances, dtype, ...), and
            ``l1_scale`` per set with ``l1_scope="run"``.
        threads: torch's intra-op thread count at the end (chosen by measurement with ``threads="auto"``).

    """

    store: Path
    n_pairs: int
    computed: int
    skipped: int
    flagged: dict[str, list[int]]
    max_abs_residual: dict[str, float]
    seconds: float
    device: str
    gradients_per_pair: float = 0.0
    gradients: int = 0
    reused: int = 0
    reuse_entries: int = 0
    interrupted: bool = False
    repaired: int = 0
    processes: int = 1
    by_others: int = 0
    role: str = "owner"
    pruned: int = 0
    ended: str | None = None
    scope: str = "every pair"
    accuracy: dict[str, SetAccuracy] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    threads: int = 0

    @property
    def flagged_pairs(self) -> int:
        """Pairs of the store over tolerance at the cap, counted over every set."""
        return sum(len(steps) for steps in self.flagged.values())


def accuracy_of(store: LcaStore, new: np.ndarray, scales: Mapping[str, float]) -> dict[str, SetAccuracy]:
    """Per set, :func:`~lca_cli.core.accuracy.set_accuracy` over the store's done pairs (``new``: this call's).

    Args:
        store: The store.
        new: ``(T,)`` bool: the pairs this call computed.
        scales: The run scales ``l1_tol`` is also relative to: a row's target norm is the larger of the two.

    Returns:
        ``{set: accuracy}``.

    """
    done = store.done()
    out = {}
    for s in store.sets:

        def row_l1(t: int, s: str = s) -> float:
            return float(np.abs(np.asarray(store.array(s, "lca")[t], dtype=np.float64)).sum())

        out[s] = set_accuracy(
            store.steps,
            store.read(s, "loss"),
            store.read(s, "residual"),
            store.read(s, "flagged"),
            store.read(s, "splits"),
            done,
            new & done,
            row_l1,
            scales.get(s, 0.0),
            store.read(s, "l1_change"),
        )
    return out
