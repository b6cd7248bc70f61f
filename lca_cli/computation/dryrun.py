"""``lca compute --dry-run``: what a compute would do and cost, measured on a few real pairs; nothing is kept.

It takes compute's own plan (:func:`~lca_cli.computation.plan.build_plan`) and runs compute itself
(:func:`~lca_cli.computation.runner.compute`: the same engine, estimator, reader, writer and store) on the first
pairs still to compute (up to :data:`PROBE_PAIRS`, or fewer once :data:`PROBE_SECONDS` have passed) into a
temporary store (in ``$TMPDIR``, deleted afterwards). From that call it reports what it measured: seconds per
gradient at the loop's steady rate (from the end of the first pair on) and per pair at that rate, gradients per
pair (the adaptive estimator's own count on those pairs), the call's start-up (all the call's time that rate does
not explain: building, the run's survey, the first pair's warm-up), and the process's peak memory during the call
(VmHWM, reset before it; on CUDA also the peak allocated device memory). The store size is the temporary store's,
complete (every array, the coordinates and metadata included; :mod:`lca_cli.store.sizing`); a later call that
surveys a grown run adds its record to the metadata (a few hundred bytes). What it cannot know is said: how many
gradients the other pairs need (refinement adapts per pair, so a run whose pairs differ needs a different count)
and how memory grows with the rows of a full chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lca_cli.computation.distributed import Scope
from lca_cli.computation.plan import ComputePlan, Schedule
from lca_cli.computation.result import ProgressInfo
from lca_cli.computation.runner import compute
from lca_cli.computation.scale import CALLS_ATTR, needs_survey
from lca_cli.errors import RunDirError
from lca_cli.sources import describe_folder
from lca_cli.store import LcaStore, choose_rows_per_chunk
from lca_cli.store.chunks import CHECKSUM_BYTES
from lca_cli.store.format import COORD_COLS, MAX_CHUNK_COLS
from lca_cli.store.identity import align
from lca_cli.store.placement import inspect_path
from lca_cli.store.sizing import complete_size

__all__ = ["PROBE_PAIRS", "PROBE_SECONDS", "DryRun", "dry_run"]

#: Pairs a dry run computes (fewer when the run has fewer to compute).
PROBE_PAIRS = 3
#: After this many seconds a dry run starts no further pair (it always finishes its first).
PROBE_SECONDS = 60.0


@dataclass
class DryRun:
    """What ``lca compute`` would do (see the module docstring); sizes in bytes, times in seconds.

    ``gradients_per_pair``, ``seconds_per_pair``, ``seconds_per_gradient``, ``startup_seconds``, ``peak_*`` and
    ``threads`` were measured on the ``measured_pairs`` pairs ``measured_steps`` (0 and empty: nothing was
    measured, the store being complete); ``peak_rss_bytes`` is None where the platform cannot reset or read it.
    ``reused``: the gradients the run's survey keeps for the loop over the pairs to compute (about: one per entry,
    in proportion to those pairs; 0 where the call does not survey); the estimate does not count them.
    """

    run: Path
    store: Path
    store_state: str
    checkpoints: int
    first_step: int
    last_step: int
    checkpoint_bytes: int
    pairs: int
    done: int
    in_scope: int
    to_compute: int
    scope: str
    granularity: str
    columns: int
    parameters: int
    sets: list[str]
    store_bytes: int
    lca_bytes: int
    parameter_store_bytes: int
    measured_pairs: int
    measured_steps: str
    gradients_per_pair: float
    seconds_per_pair: float
    seconds_per_gradient: float
    startup_seconds: float
    peak_rss_bytes: int | None
    peak_device_bytes: int | None
    device: str
    dtype: str
    threads: int
    reused: float
    estimate_seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        out = dataclasses.asdict(self)
        out["run"], out["store"] = str(self.run), str(self.store)
        return out

    def lines(self) -> list[str]:
        """The human-readable plan."""
        smaller = (
            f" (per-parameter rows would take {_size(self.parameter_store_bytes)})"
            if self.parameter_store_bytes != self.store_bytes
            else ""
        )
        out = [
            f"run        {self.run}: {self.checkpoints} checkpoints, steps {self.first_step}..{self.last_step}, "
            f"{_size(self.checkpoint_bytes)} on disk",
            f"store      {self.store} ({self.store_state}): {self.pairs:,} pairs x {self.columns:,} columns "
            f"({self.granularity}; {self.parameters:,} parameters) x {len(self.sets)} set(s): "
            f"{_size(self.store_bytes)} when complete (every array), lca {_size(self.lca_bytes)}{smaller}",
            f"pairs      {self.pairs:,} in total, {self.done:,} done, {self.to_compute:,} to compute ({self.scope}: "
            f"{self.in_scope:,} pairs)",
        ]
        if not self.measured_pairs:
            return [*out, "measured   nothing: no pair to compute"] + [f"note       {n}" for n in self.notes]
        peak = "" if self.peak_rss_bytes is None else f"; peak memory {_size(self.peak_rss_bytes)}"
        if self.peak_device_bytes is not None:
            peak += f", {_size(self.peak_device_bytes)} allocated on {self.device}"
        out += [
            f"measured   {self.measured_pairs} pair(s) ({self.measured_steps}) computed as compute does: "
            f"{self.gradients_per_pair:.3g} gradients per pair (all sets), {_seconds(self.seconds_per_pair)} per "
            f"pair, {_seconds(self.seconds_per_gradient)} per gradient; start-up {_seconds(self.startup_seconds)}"
            f"{peak} (on {self.device}, {self.dtype}, {self.threads} thread(s))",
            f"estimate   {_duration(self.estimate_seconds)} for {self.to_compute:,} pairs in one process, start-up "
            f"included, less {self.reused:.3g} gradients the run's survey keeps for the loop, if the other pairs "
            "need as many gradients as these (refinement adapts per pair); N processes or GPUs take about 1/N of "
            "the pairs' time",
        ]
        return out + [f"note       {n}" for n in self.notes]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} TB"


def _seconds(s: float) -> str:
    return f"{1000 * s:.3g} ms" if s < 1 else f"{s:.3g} s"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"about {seconds:.2g} s"
    if seconds < 3600:
        return f"about {seconds / 60:.2g} min"
    return f"about {seconds / 3600:.3g} h"


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux ``/proc/self/clear_refs``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int | None:
    """Peak resident memory of this process (VmHWM) in bytes, or None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class _Probe:
    """What compute did on the probe's pairs (see :class:`DryRun` for the fields)."""

    pairs: int
    steps: str
    gradients: int
    before_loop: int
    reused: int
    reuse_entries: int
    seconds: float
    seconds_per_gradient: float
    startup: float
    peak_rss: int | None
    peak_device: int | None
    threads: int
    flagged: int


class _Clock:
    """After each pair of the probe: when it ended and the gradients so far; no pair starts past the budget."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop, self.t0 = stop, time.perf_counter()
        self.ends: list[tuple[float, int]] = []  # (seconds into the pair loop, gradients so far) per pair

    def start(self, info: ProgressInfo) -> None:
        pass

    def update(self, info: ProgressInfo) -> None:
        self.ends.append((info.elapsed, info.gradients))
        if time.perf_counter() - self.t0 > PROBE_SECONDS:
            self.stop.set()

    def finish(self, info: ProgressInfo) -> None:
        pass

    def seconds_per_gradient(self, seconds: float, gradients: int) -> float:
        """The loop's steady rate: from the end of the first pair on, when there is more than one.

        The first pair of a process pays for its warm-up (the allocator's first buffers, the thread pool, the
        first touch of every activation): on a 1M-parameter MLP a 3-pair probe's average was 0.41 s per
        gradient against 0.22-0.27 s in a 9-pair call of the same run.
        """
        if len(self.ends) >= 2 and self.ends[-1][1] > self.ends[0][1]:
            return (self.ends[-1][0] - self.ends[0][0]) / (self.ends[-1][1] - self.ends[0][1])
        return seconds / max(1, gradients)


def _probe(plan: ComputePlan, out: Path, first: int, count: int) -> _Probe:
    """Compute pairs ``first .. first + count - 1`` into a new store at ``out``, as ``compute`` would."""
    steps, device = plan.steps, plan.device
    stop = threading.Event()
    clock = _Clock(stop)

    measure_rss = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    hooks = plan.hooks
    res = compute(
        plan.run_dir, plan.config, out, schedule=Schedule(Scope(start=steps[first], stop=steps[first + count])),
        progress=clock, stop=stop, flush_seconds=hooks.flush_seconds, durable=hooks.durable,
        unsafe_pickle=plan.unsafe_pickle, read_ahead=hooks.read_ahead, sync_writes=hooks.sync_writes,
    )  # fmt: skip
    wall = time.perf_counter() - clock.t0
    last = steps[first + max(1, res.computed)]
    gradients = round(res.gradients_per_pair * res.computed)  # those the loop evaluated
    spg = clock.seconds_per_gradient(res.seconds, gradients)
    return _Probe(
        pairs=res.computed,
        steps=f"steps {steps[first]} -> {last}",
        gradients=gradients,
        before_loop=res.gradients - gradients,  # the run's survey and the accumulation probe (a new store's)
        reused=res.reused,
        reuse_entries=res.reuse_entries,
        seconds=res.seconds,
        seconds_per_gradient=spg,
        # What the steady rate does not explain: building, the survey, the first pair's warm-up, closing.
        startup=max(0.0, wall - spg * gradients),
        peak_rss=_peak_rss() if measure_rss else None,
        peak_device=int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        threads=res.threads,
        flagged=sum(len(v) for v in res.flagged.values()),
    )


def _per_parameter_bytes(probe: LcaStore, total: int, lca: int, coordinate: int, n_pairs: int, requested: int) -> int:
    """What the store would take with one column per parameter: ``lca`` and its int32 coordinate replaced."""
    if probe.columns.full:
        return total
    p = probe.layout.size
    rows = choose_rows_per_chunk(p, requested, n_pairs)
    cols, coord_cols = min(p, MAX_CHUNK_COLS), min(p, COORD_COLS)  # lca's chunks, parameter_tensor's
    grid = math.ceil(max(1, n_pairs) / rows) * math.ceil(p / cols)
    coordinate_chunks = math.ceil(p / coord_cols) * (coord_cols * 4 + CHECKSUM_BYTES)
    per_set = grid * (rows * cols * 4 + CHECKSUM_BYTES) + coordinate_chunks
    return total - lca - coordinate + len(probe.sets) * per_set


def _forecast(
    measured: _Probe, n_sets: int, to_compute: int, n_pairs: int, surveys: bool
) -> tuple[float, float, float, float, float]:
    """``(gradients per pair, seconds per gradient, start-up, gradients reused, estimate)`` from the probe.

    The probe made a new store: it surveyed the run and probed the accumulation. A call on an existing store that
    does not survey again (``surveys`` False) does neither: their gradients leave its start-up, and it takes none.
    """
    # The gradients the measured pairs used: those the loop evaluated and those it took from the survey (its
    # sampled pairs' starts, its probes' points; on 3 measured pairs a third of them can be taken). The first
    # pair of a call also evaluates its start point (once per set): not a per-pair cost.
    gpp = (measured.gradients + measured.reused - n_sets) / measured.pairs
    spg = measured.seconds_per_gradient
    if not surveys:
        startup = max(0.0, measured.startup - spg * measured.before_loop)
        return gpp, spg, startup, 0.0, startup + spg * (gpp * to_compute + n_sets) if to_compute else 0.0
    # The survey (its time is in the start-up) kept gradients for the loop over every pair it sampled; a call
    # takes back those of its pairs (one gradient an entry at least), about in proportion to the pairs it computes.
    reused = measured.reuse_entries * to_compute / max(1, n_pairs)
    estimate = measured.startup + spg * max(0.0, gpp * to_compute + n_sets - reused) if to_compute else 0.0
    return gpp, spg, measured.startup, reused, estimate


def dry_run(plan: ComputePlan) -> DryRun:
    """Measure and describe what ``compute`` would do with a plan; nothing is kept, the store is not locked.

    Args:
        plan: The call's plan (:func:`~lca_cli.computation.plan.build_plan`).

    Returns:
        What compute would do and cost.

    Raises:
        LcaError: The errors ``lca compute`` would raise on its first pairs (config, checkpoints, evaluation sets).

    """
    run, out_path, refs, opts = plan.run_dir, plan.out, list(plan.refs), plan.options
    if len(refs) < 2:  # beside a store (rotation): compute has nothing to do, and there is nothing to time
        raise RunDirError(f"{run} holds {len(refs)} checkpoint(s); LCA needs at least two ({describe_folder(run)})")
    notes: list[str] = []
    steps = [r.step for r in refs]
    done = np.zeros(len(steps) - 1, dtype=bool)
    existing: LcaStore | None = None
    if inspect_path(out_path, deep=False).kind == "store" and not plan.overwrite:
        existing = LcaStore.open(out_path)
        steps = align(existing.steps, refs, out_path, run).steps
        done = np.concatenate([existing.done(), np.zeros(len(steps) - 1 - existing.n_pairs, dtype=bool)])
        store_state = f"exists: {int(done.sum())} of {existing.n_pairs} pairs done" + (
            f", {len(steps) - 1 - existing.n_pairs} new checkpoint(s) to append"
            if len(steps) - 1 > existing.n_pairs
            else ""
        )
        if done.any():
            splits = {s: existing.read(s, "splits")[existing.done()] for s in existing.sets}
            mean = ", ".join(f"{s} {float(np.mean(v)):.3g}" for s, v in splits.items() if len(v))
            notes.append(f"the {int(done.sum())} pairs done used {mean} sub-intervals per pair on average")
    else:
        state = inspect_path(out_path, deep=False).kind
        store_state = "new" if state in ("missing", "empty", "half") else f"cannot be used: {state}"
        if state == "store":
            store_state = "exists: replaced once the first new rows are written (--overwrite)"
    n_pairs = len(steps) - 1
    scope = plan.schedule.window
    if existing is not None:
        candidates = scope.mask(np.asarray(steps), existing.rows_per_chunk)
    else:  # a new store's chunks are not known before the probe creates one: a shard's pairs by steps alone
        candidates = dataclasses.replace(scope, shard=0, shards=1).mask(np.asarray(steps), max(1, n_pairs))
    todo = np.flatnonzero(candidates & ~done)
    measured = None
    size = None
    with tempfile.TemporaryDirectory(prefix="lca-dry-run-") as tmp:
        probe_path = Path(tmp) / "probe.lca.zarr"
        if len(todo) or existing is None:
            first = int(todo[0]) if len(todo) else 0
            measured = _probe(plan, probe_path, first, min(PROBE_PAIRS, n_pairs - first))
            probe = LcaStore.open(probe_path, "r+")
            calls = probe.attrs.get(CALLS_ATTR)
            if calls:  # complete under this survey, the store's record names every row, not the probe's few
                probe.update_attrs({CALLS_ATTR: [{**calls[-1], "rows": [[0, n_pairs]]}]})
                probe.consolidate()  # as a finished compute leaves it
        else:
            probe = existing
        size = complete_size(probe.path)
        rows_per_chunk = existing.rows_per_chunk if existing is not None else probe.rows_per_chunk
        coordinate = sum(v for k, v in size.arrays.items() if k.rsplit("/", 1)[-1] in ("parameter_tensor", "neuron"))
        per_param = _per_parameter_bytes(probe, size.total, size.lca, coordinate, n_pairs, opts.rows_per_chunk)
        columns, sets, parameters = probe.columns, list(probe.sets), probe.layout.size
    if existing is not None and (existing.columns.size != columns.size or existing.sets != sets):
        notes.append("the store was made with other settings: compute would refuse it (use --overwrite or --out)")
    in_scope = scope.mask(np.asarray(steps), rows_per_chunk)
    to_compute = int((in_scope & ~done).sum())
    if plan.schedule.follow:
        notes.append("--follow: the store grows by whole chunks as checkpoints arrive; the size is of the pairs now")
    gpp = spp = spg = startup = estimate = reused = 0.0
    if measured is not None and measured.pairs:
        surveys = existing is None or needs_survey(existing, n_pairs, opts.l1_scope)
        gpp, spg, startup, reused, estimate = _forecast(measured, len(sets), to_compute, n_pairs, surveys)
        spp = spg * gpp  # a pair at the steady rate, evaluating all it uses
        notes.append(
            "peak memory is of the measured pairs; a full chunk holds up to "
            f"{rows_per_chunk} rows x {columns.size:,} columns x 4 B ({_size(rows_per_chunk * columns.size * 4)}) "
            "per set in each of the two blocks in flight"
        )
        if measured.flagged:
            notes.append(f"{measured.flagged} of the measured pairs stayed over tolerance at --max-splits")
    ckpt_bytes = 0
    for ref in refs:
        for f in ref.weight_files:
            with contextlib.suppress(OSError):  # deleted meanwhile
                ckpt_bytes += f.stat().st_size
    m = measured
    return DryRun(
        run, out_path, store_state, len(refs), refs[0].step, refs[-1].step, ckpt_bytes, n_pairs, int(done.sum()),
        int(in_scope.sum()), to_compute, scope.describe(), columns.granularity, columns.size, parameters, sets,
        size.total, size.lca, per_param, m.pairs if m else 0, m.steps if m else "", gpp, spp, spg, startup,
        m.peak_rss if m else None, m.peak_device if m else None, str(plan.device), opts.dtype,
        m.threads if m else 0, reused, estimate, notes,
    )  # fmt: skip
