"""Automatic compute choices made at start-up: the network dtype and the number of CPU threads.

``--dtype auto`` is the checkpoints' own dtype (:func:`checkpoint_dtype`): a float32 training run is replayed in
float32 (gradients are still accumulated in float64), a float64 one in float64.

``--threads auto`` is chosen by measurement (:class:`ThreadTuner`): one evaluation chunk's forward and backward
pass is timed at one thread and at every usable core, alternately, and the faster count is kept. On a machine
that other jobs share, OpenMP threads wait for each other at every parallel region while a busy core runs
someone else, and one thread was measured 10-28x faster than torch's default of one thread per core; on an
idle machine the cores help large chunks. The choice is checked again when pairs suddenly take much longer
per gradient than the first pairs after the last check (another job started), at most every
:data:`RECHECK_MIN_SECONDS`, and every :data:`PERIODIC_SECONDS` of compute (the machine may have become idle).

Float reductions may round differently with another number of threads, so rows computed at different counts
can differ in their last bits (BENCHMARKS.md, "Threads"); an explicit ``--threads N`` fixes the count.

The probe runs the model like every pair does: on a point made by :func:`model_point`, whose tensors pass through
the same name mapping as a checkpoint's (:func:`lca_cli.sources.keys.to_model_state`), so that a tied
parameter is given once, under its owner's name (``functional_call`` refuses both names of one tied tensor).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lca_cli.core.layout import Layout
from lca_cli.core.vectors import split_state
from lca_cli.sources import ModelSpec
from lca_cli.sources.keys import to_model_state

__all__ = ["ThreadTuner", "checkpoint_dtype", "model_point", "usable_cores"]

#: A re-check happens when the last :data:`SLOW_PAIRS` pairs each took more than this multiple of the baseline
#: (seconds per gradient: the median of the first :data:`WINDOW` pairs after the last check) ...
SLOWDOWN = 2.0
SLOW_PAIRS = 3
WINDOW = 5
#: ... and at least this many seconds of compute passed since the last check.
RECHECK_MIN_SECONDS = 20.0
#: The choice is also re-checked after this many seconds of compute (the machine may have become idle).
PERIODIC_SECONDS = 600.0
#: The probe is timed until every candidate has this many timings, or ...
MAX_TIMINGS = 3
#: ... until this many seconds were spent timing (every candidate gets at least one timing after its warm-up).
PROBE_BUDGET_SECONDS = 1.0
#: More threads must be at least this much faster than one thread to be chosen (one thread degrades gracefully
#: when other jobs arrive later; several threads do not).
MARGIN = 0.95


def checkpoint_dtype(state: Mapping[str, torch.Tensor]) -> str:
    """The network dtype ``--dtype auto`` picks for a run: the dtype of its checkpoints.

    Args:
        state: One checkpoint's ``name -> tensor`` map.

    Returns:
        ``"float64"`` when every floating-point tensor is float64, else ``"float32"`` (float16 and bfloat16
        checkpoints are replayed in float32: LCA sums per-parameter products whose half-precision rounding would
        exceed most pairs' loss change).

    """
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    return "float64" if floating and all(d == torch.float64 for d in floating) else "float32"


def model_point(
    model: torch.nn.Module, spec: ModelSpec, vlayout: Layout, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's own weights as a point of the pair engine, for timing a gradient without reading a checkpoint.

    The model's ``state_dict()`` lists a tied tensor under every name; it goes through the mapping every checkpoint
    goes through (:func:`~lca_cli.sources.keys.to_model_state`: aliases dropped, the owner kept), so the probe
    calls the model exactly as the pairs do.

    Args:
        model: The engine's model (its weights stand for a checkpoint's: only the timing matters).
        spec: What the model expects of a checkpoint (its tied aliases).
        vlayout: Layout of the point vector.
        device: Compute device.

    Returns:
        ``(v, fixed)`` as :func:`~lca_cli.core.vectors.split_state` makes them from a checkpoint.

    """
    state = {k: t.detach().cpu() for k, t in model.state_dict().items()}
    mapped, _ = to_model_state(state, spec, "the model's own weights")
    return split_state(mapped, vlayout, device)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


@dataclass
class ThreadTuner:
    """Chooses torch's intra-op thread count by timing a probe, and re-checks it when pairs slow down.

    Args:
        probe: One representative unit of work (an evaluation chunk's forward and backward pass).
        candidates: Thread counts to compare (e.g. ``[1, usable_cores()]``); duplicates are ignored.
        log: Receives one line per choice (the first and every change).
        clock: Time source (seconds).

    """

    probe: Callable[[], object]
    candidates: Sequence[int]
    log: Callable[[str], None] | None = None
    clock: Callable[[], float] = time.perf_counter
    chosen: int = 0
    timings: dict[int, float] = field(default_factory=dict)
    _first: list[float] = field(default_factory=list)  # seconds per gradient of the first pairs after a check
    _slow: int = 0  # consecutive pairs over SLOWDOWN x the baseline
    _since_check: float = 0.0

    def choose(self, reason: str = "start-up") -> int:
        """Time the probe at every candidate count, set torch's thread count to the fastest and return it.

        Args:
            reason: Why the choice is made (for the log line).

        Returns:
            The chosen count.

        """
        counts = sorted(set(self.candidates))
        if len(counts) == 1:
            self.chosen = counts[0]
            torch.set_num_threads(self.chosen)
            return self.chosen
        times: dict[int, list[float]] = {n: [] for n in counts}
        for n in counts:  # warm-up: the first parallel region at a new count starts its thread pool
            torch.set_num_threads(n)
            self.probe()
        spent = 0.0
        while True:
            for n in counts:
                torch.set_num_threads(n)
                t0 = self.clock()
                self.probe()
                elapsed = self.clock() - t0
                times[n].append(elapsed)
                spent += elapsed
            if len(times[counts[0]]) >= MAX_TIMINGS or spent >= PROBE_BUDGET_SECONDS:
                break
        self.timings = {n: min(v) for n, v in times.items()}
        one = self.timings[counts[0]]
        best = min(counts, key=lambda n: self.timings[n])
        choice = best if self.timings[best] <= MARGIN * one else counts[0]
        changed = choice != self.chosen
        self.chosen = choice
        torch.set_num_threads(choice)
        self._first.clear()
        self._slow = 0
        self._since_check = 0.0
        if self.log is not None and (changed or reason == "start-up"):
            detail = ", ".join(f"{1e3 * t:.1f} ms at {n}" for n, t in self.timings.items())
            self.log(f"threads: {choice} (--threads auto, {reason}: one evaluation chunk took {detail})")
        return choice

    def observe(self, seconds: float, gradients: int) -> bool:
        """Record one pair's time; re-choose when pairs became much slower per gradient, or periodically.

        Args:
            seconds: Wall time of the pair.
            gradients: Gradients the pair cost (its sub-intervals), at least 1.

        Returns:
            True when the choice was re-checked.

        """
        per = seconds / max(1, gradients)
        self._since_check += seconds
        if len(self._first) < WINDOW:
            self._first.append(per)
            return False
        baseline = statistics.median(self._first)
        self._slow = self._slow + 1 if per > SLOWDOWN * baseline else 0
        if self._slow >= SLOW_PAIRS and self._since_check >= RECHECK_MIN_SECONDS:
            self.choose("re-checked after a slowdown")
            return True
        if self._since_check >= PERIODIC_SECONDS:
            self.choose("re-checked periodically")
            return True
        return False
