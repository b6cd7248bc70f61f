"""The work loop of one ``compute`` call: claimed chunks through the pair engine into the store, then the result.

Given a plan, a built engine and the store it owns or joins (:mod:`lca_cli.computation.runner`), the loop
claims chunks (:class:`~lca_cli.computation.distributed.ChunkQueue`), computes their blocks
(:meth:`~lca_cli.computation.engine.PairEngine.run_block`) with checkpoints read ahead and rows written behind
(:mod:`lca_cli.computation.writer`), follows the run as checkpoints arrive and prunes used ones
(:mod:`lca_cli.computation.follow`), and ends with the call's :class:`~lca_cli.computation.result.ComputeResult`.

Finished rows are never held back for long: a block's finished rows are written every ``flush_seconds`` (so a
long run's rows become visible while it runs), and when it ends early (an error at pair k keeps the pairs
before k; a stop request keeps every finished pair). Each write rewrites only the block's own chunks, so a
partial block is continued bit-identically by a later run.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from lca_cli.computation.distributed import Board, ChunkQueue, Scope, Team
from lca_cli.computation.engine import CheckpointLoader, PairEngine, _Cache
from lca_cli.computation.follow import Follower, Pruner
from lca_cli.computation.opening import Target
from lca_cli.computation.plan import ComputePlan
from lca_cli.computation.precision import accumulation_of
from lca_cli.computation.result import (
    ComputeResult,
    NoteFn,
    ProgressFn,
    ProgressInfo,
    ProgressReporter,
    accuracy_of,
)
from lca_cli.computation.scale import (
    deep_factors_of,
    first_factors_of,
    l1_scales_of,
    needs_survey,
    record_rows,
    survey_attrs,
    survey_run,
)
from lca_cli.computation.staging import MISSING_ATTR, missing_rows, record_missing
from lca_cli.computation.tuning import ThreadTuner, model_point, usable_cores
from lca_cli.computation.writer import BlockBuffers, RowWriter
from lca_cli.core.vectors import ColumnReducer, split_state
from lca_cli.errors import PeerFailed
from lca_cli.sources import CheckpointRef, CheckpointSource, ModelSpec
from lca_cli.sources.base import listing

__all__ = ["Crew", "run_work"]


@dataclass
class Crew:
    """Where this process stands among those computing into the store.

    Attributes:
        board: The store's claims folder and markers.
        team: The ``torchrun`` job, or None.
        job: The job's id (its abort marker); empty without a job.
        token: The owner's lock token (what the ready marker names).
        role: ``"owner"`` or ``"helper"``.
        lead: Rank 0 of a job, or a process on its own: it reports.

    """

    board: Board
    team: Team | None
    job: str
    token: str
    role: str
    lead: bool


class _AbortWatcher:
    """Sets ``stop`` when another rank of the job leaves an abort marker (it failed)."""

    def __init__(self, board: Board, job: str, stop: threading.Event, poll: float) -> None:
        self.board, self.job, self.stop, self.poll = board, job, stop, poll
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lca-abort-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.poll):
            if self.job and self.board.aborted(self.job) is not None:
                self.stop.set()
                return

    def close(self) -> None:
        """Stop watching."""
        self._done.set()
        self._thread.join()


def choose_threads(
    engine: PairEngine, threads: int | str, note: NoteFn, spec: ModelSpec, local_processes: int = 1
) -> ThreadTuner | None:
    """``threads="auto"`` on CPU: time one evaluation chunk at one thread and at every usable core.

    With ``local_processes`` processes of one ``torchrun`` job on this machine, each one's share of the cores
    stands for "every usable core" (so the ranks do not oversubscribe the machine).

    Args:
        engine: The pair engine.
        threads: The ``threads`` option.
        note: Told the choice.
        spec: What the model expects of a checkpoint: the probe maps the model's weights as a checkpoint's
            (tied parameters under one name).
        local_processes: Processes of this job on this machine.

    Returns:
        The tuner (for re-checks when pairs slow down), or None when the count is fixed: an explicit count, a
        CUDA device (CPU threads do not carry the work there) or ``OMP_NUM_THREADS`` set by the user.

    """
    if threads != "auto" or engine.device.type != "cpu":
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        note(f"threads: {torch.get_num_threads()} (OMP_NUM_THREADS)")
        return None
    obj = next(iter(engine.objectives.values()))
    head = obj.head(1)
    v, fixed = model_point(obj.model, spec, engine.vlayout, engine.device)
    cores = max(1, usable_cores() // max(1, local_processes))
    tuner = ThreadTuner(lambda: head.value_and_grad(v, fixed), sorted({1, cores}), note)
    tuner.choose()
    return tuner


class _Work:
    """One call's loop over claimed chunks (see :func:`run_work`)."""

    def __init__(
        self,
        plan: ComputePlan,
        engine: PairEngine,
        target: Target,
        crew: Crew,
        source: CheckpointSource,
        stop: threading.Event,
        say: NoteFn,
        progress: ProgressFn | ProgressReporter | None,
        follower: Follower | None,
        tune: Callable[[], ThreadTuner | None],
    ) -> None:
        self.plan, self.engine, self.target, self.crew = plan, engine, target, crew
        self.source, self.stop, self.say, self.follower = source, stop, say, follower
        self.progress = progress
        self.reporter = progress if isinstance(progress, ProgressReporter) else None
        self.store = target.store
        self.scope: Scope = plan.schedule.window
        self.skipped = int(self.store.done().sum())
        self.done_before = self.store.done().copy()  # rows computed under the survey in force are those done since
        self.counts = {"done": 0, "gradients": 0, "flagged": 0, "total": 0}
        self.mine: list[range] = []  # rows this process computed (strict judges this call's pairs)
        self.t0 = time.perf_counter()
        self.last_pair = self.t0
        self.tune = tune
        self.tuner: ThreadTuner | None = None
        self.cache: _Cache | None = None
        self.threads_used = 0
        owner = crew.role == "owner"
        self.pruner = None
        if owner and (plan.schedule.prune or (follower is not None and follower.staging is not None)):
            # Following: held checkpoints are released as their pairs are stored; --prune deletes the run's own.
            self.pruner = Pruner(
                self.store, target.alignment, say, run=plan.run_dir, prune=plan.schedule.prune,
                release=None if follower is None else follower.release,
            )  # fmt: skip
        self.queue = ChunkQueue(
            self.store, crew.board, self.scope, wait=crew.role == "owner" or crew.team is not None,
            start=(crew.team.rank, crew.team.size) if crew.team is not None else None, stop=stop, idle=self._idle,
            poll=plan.schedule.poll,
        )  # fmt: skip
        self.counts["total"] = self.queue.total - self.queue.done_at_start
        self._missing(frozenset(), report=True)

    def _missing(self, holes: frozenset[int], report: bool = False) -> None:
        """Leave out pairs whose checkpoints were lost while following, recording them in the store.

        Args:
            holes: Steps the follower saw but could not hold.
            report: Say which pairs the store records as missing (a later call reports them).

        """
        rows = np.flatnonzero(missing_rows(self.target.alignment, self.store, self.queue.done, holes))
        if not len(rows):
            return
        self.queue.exclude(rows.tolist())
        if self.target.read_only or self.crew.role != "owner":
            return
        new = record_missing(self.store, rows.tolist())
        steps = self.target.alignment.steps
        pairs = [f"{steps[t]}->{steps[t + 1]}" for t in rows]
        if new and not report:
            self.say(
                f"--follow: {len(new)} pair(s) recorded as missing in {self.target.out} (their checkpoints were lost "
                f"before they could be held): {listing(pairs)}"
            )
        elif report:
            self.say(
                f"{self.target.out}: {len(rows)} pair(s) are missing (their checkpoints were lost while following, "
                f"recorded in '{MISSING_ATTR}'): {listing(pairs)}; they are left uncomputed"
            )

    # -- progress ---------------------------------------------------------------------------------------

    def _idle(self) -> None:
        if self.reporter is not None:
            self.reporter.update(self.info())

    def info(self) -> ProgressInfo:
        """Where the call stands (pairs other processes finished count too)."""
        c = self.counts
        # Pairs other processes finished count too (the queue's view of done rows includes this one's).
        done = c["done"] + max(0, self.queue.done_now - self.queue.done_at_start - c["done"])
        # Gradients of the others' pairs are not known here: this process's own rate stands for them.
        gradients = round(c["gradients"] * done / c["done"]) if c["done"] else 0
        return ProgressInfo(
            done, c["total"], self.skipped, gradients, c["flagged"], time.perf_counter() - self.t0, self.target.out,
            str(self.plan.device),
        )  # fmt: skip

    def tick(self, gradients: int, flagged: int) -> None:
        """After each pair: counts, the thread tuner, progress."""
        c = self.counts
        c["done"] += 1
        c["gradients"] += gradients
        c["flagged"] += flagged
        if self.tuner is not None:  # seconds per gradient of this pair: a sudden slowdown re-checks the threads
            self.tuner.observe(time.perf_counter() - self.last_pair, gradients)
            self.last_pair = time.perf_counter()
        if self.reporter is not None:
            self.reporter.update(self.info())
        elif self.progress is not None:
            self.progress(c["done"], c["total"])  # type: ignore[operator]

    # -- writes -----------------------------------------------------------------------------------------

    def _before(self) -> None:
        self.target.before_write()
        self.crew.board.check()

    def _after(self) -> None:
        target = self.target
        pending = target.pending
        target.after_write()
        if pending is not None and target.pending is None and target.lock is not None:
            # The new store is in place: helpers may come.
            self.crew.board.publish(self.crew.token, accepts=not self.plan.schedule.follow)

    def _written(self, chunk: int, rows: list[range]) -> None:  # in the writer thread, once they are durable
        self.crew.board.release(chunk)
        if self.pruner is not None:
            self.pruner.written(rows)

    # -- the loop ---------------------------------------------------------------------------------------

    def run(self) -> ComputeResult:
        """Compute every pair in scope (following the run when asked), then the result."""
        crew, target = self.crew, self.target
        watcher = None
        if crew.team is not None:
            watcher = _AbortWatcher(crew.board, crew.job, self.stop, self.plan.schedule.poll)
        self._say_empty_window()
        if self.counts["total"] and not target.read_only:
            self.tuner = self.tune()  # the call's choice (made already when it surveyed the run)
        self.last_pair = time.perf_counter()
        if self.reporter is not None:
            self.reporter.start(self.info())
        interrupted, failed, ended = False, False, None
        try:
            if not target.read_only:
                interrupted, ended = self._compute()
            if self.pruner is not None and not interrupted:
                self.pruner.prune()
        except BaseException:
            failed = True
            raise
        finally:
            seconds = time.perf_counter() - self.t0
            self.threads_used = torch.get_num_threads()
            if watcher is not None:
                watcher.close()
            if self.reporter is not None:
                self.reporter.finish(dataclasses.replace(self.info(), failed=failed))
        return self._finish(interrupted, seconds, ended)

    def _say_empty_window(self) -> None:
        scope, steps = self.scope, self.store.steps
        if (
            self.queue.total == 0
            and (scope.start is not None or scope.stop is not None)
            and len(steps) > 1
            and not self.plan.schedule.follow
        ):
            lo = "" if scope.start is None else scope.start
            hi = "" if scope.stop is None else scope.stop
            self.say(
                f"--steps {lo}:{hi} holds no pair of this run (its pairs start at steps {int(steps[0])}.."
                f"{int(steps[-2])}): nothing to compute"
            )

    def _compute(self) -> tuple[bool, str | None]:
        """Chunks until the scope is done, stopped, or (following) the run ends: ``(interrupted, ended)``."""
        target, hooks = self.target, self.plan.hooks
        loader = CheckpointLoader(
            target.alignment.refs, self.source.spec, self.engine.vlayout, self.plan.device, hooks.read_ahead,
            read=self.source.read,
        )  # fmt: skip
        buffers = BlockBuffers()
        writer = RowWriter(self.store, buffers, self._before, self._after, synchronous=hooks.sync_writes)
        try:
            while True:
                self._chunks(loader, writer, buffers)
                if self.stop.is_set():
                    return True, None
                if self.follower is None:
                    return False, None
                writer.drain()  # (pruning happened as each chunk was written)
                # Nobody else computes into a followed store: this process's view of done rows is exact.
                more = self.follower.wait_for_more(target.alignment.steps, self._settled)
                if isinstance(more, str):
                    interrupted = more == "stopped"
                    return interrupted, None if interrupted else more
                target.refresh(more, self.plan.run_dir)
                loader.set_refs(target.alignment.refs)
                self._resurvey()
                if self.pruner is not None:
                    self.pruner.update(target.alignment)
                self.queue.extend()
                self._missing(self.follower.holes)
                self.counts["total"] = self.queue.total - self.queue.done_at_start
        finally:
            loader.close()
            writer.close()

    def _record_rows(self) -> None:
        """Record the rows done since the survey in force began, and which scale and factor they met."""
        if not self.engine.l1_scales:
            return
        done = self.store.done()
        before = np.zeros_like(done)
        before[: len(self.done_before)] = self.done_before[: len(done)]
        record_rows(
            self.store, done & ~before, self.engine.l1_scales, self.engine.first_factors,
            int(self.store.attrs.get("l1_scale_over") or 0), self.engine.deep_factors,
        )  # fmt: skip
        self.done_before = done

    def _resurvey(self) -> None:
        """Following: once the run has grown enough, survey it again; later pairs meet the new scale and factor.

        Only this process computes into a followed store, so changing the engine between chunks is safe. Pairs
        the store holds count with their stored rows (their checkpoints may be gone); stopped part-way, the
        survey in force stays.
        """
        store, engine, refs = self.store, self.engine, self.target.alignment.refs
        if not engine.l1_scales or not needs_survey(store, len(refs) - 1, self.plan.options.l1_scope):
            return
        done = store.done()
        device = self.plan.device

        def read(i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
            ref = refs[i]
            return (
                None if ref is None else split_state(self.source.read(cast(CheckpointRef, ref)), engine.vlayout, device)
            )

        def stored(s: str, t: int) -> float | None:
            if engine.columns is not None or not done[t]:
                return None
            return float(np.abs(np.asarray(store.array(s, "lca")[t], dtype=np.float64)).sum())

        survey = survey_run(engine, read, len(refs) - 1, self.say, self.stop, stored, engine.reuse)
        if survey is None:
            return
        self._record_rows()  # the rows so far met the survey in force until now
        store.update_attrs(survey_attrs(survey))
        engine.l1_scales, engine.first_factors = dict(survey.scales), dict(survey.factors)
        engine.deep_factors = dict(survey.deep_factors)
        self.say(
            f"--follow: the run has grown to {survey.over} pairs: its scale of --l1-tol is now "
            + ", ".join(f"{s} {v:.3g}" for s, v in survey.scales.items())
        )

    def _settled(self) -> np.ndarray:
        """``(T,)`` rows that need nothing more from this call: done, or out of its scope."""
        return self.queue.done | ~self.queue.in_scope

    def _chunks(self, loader: CheckpointLoader, writer: RowWriter, buffers: BlockBuffers) -> None:
        """Claim chunks and compute their blocks until none is left (or a stop request)."""
        steps = self.target.alignment.steps
        after_chunk: int | None = None
        while (item := self.queue.next(after_chunk)) is not None:
            self.last_pair = time.perf_counter()  # a wait for a chunk or a checkpoint is not a slow pair
            rows: list[range] = []
            for block in item.blocks:
                n, self.cache = self.engine.run_block(
                    block, loader, steps, self.cache, self.tick, self.stop, buffers.take, writer.submit,
                    self.plan.hooks.flush_seconds,
                )  # fmt: skip
                rows.append(range(block.start, block.start + n))
                self.mine.append(rows[-1])
                self.queue.mark(rows[-1])
                if self.stop.is_set():
                    break
            writer.submit({}, (), then=functools.partial(self._written, item.chunk, rows))
            after_chunk = item.chunk
            if self.stop.is_set():
                break

    # -- the end ----------------------------------------------------------------------------------------

    def _job_totals(self, interrupted: bool) -> tuple[int, list[tuple[int, int]], int]:
        """``(pairs computed, rows this call computed, processes)``: the job's on rank 0 of ``torchrun``."""
        team, crew = self.crew.team, self.crew
        if team is not None and crew.job:
            failed = crew.board.aborted(crew.job)
            if failed is not None and failed.get("rank") != team.rank:
                raise PeerFailed(
                    f"rank {failed.get('rank')} failed ({failed.get('message')}); every rank stopped after its "
                    f"current pair and finished rows are kept: fix the cause and rerun the same command",
                    int(failed.get("code", 1)),
                )
        computed = self.counts["done"]
        mine = [(r.start, r.stop) for r in self.mine]
        if team is None or interrupted:
            return computed, mine, 1
        everyone = team.gather({"computed": computed, "rows": mine})
        if crew.lead:  # this call's pairs are the job's
            computed = sum(int(r["computed"]) for r in everyone)
            mine = [tuple(r) for e in everyone for r in e["rows"]]
        return computed, mine, team.size

    def _finish(self, interrupted: bool, seconds: float, ended: str | None) -> ComputeResult:
        target, store, crew = self.target, self.store, self.crew
        computed, mine, processes = self._job_totals(interrupted)
        # Consolidated metadata (one read for xarray and other readers), written only when this compute is
        # done and changed the store: any change (a write, an append) dropped it, so it is never trusted
        # while one runs. A finished store on a read-only file system is left as it is; helpers never write
        # metadata.
        if crew.role == "owner" and not target.read_only:
            self._record_rows()
        if crew.role == "owner" and not target.read_only and not store.has_consolidated():
            if computed:  # rows were written: ``updated`` becomes this compute's end (the first write's was its start)
                store.update_attrs({"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            store.consolidate()
        new = np.zeros(store.n_pairs, dtype=bool)
        for a, b in mine:
            new[a:b] = True
        accuracy = accuracy_of(store, new, self.engine.l1_scales)
        max_res = {}
        done_all = store.done()
        for s in store.sets:
            res = store.read(s, "residual")[done_all]
            max_res[s] = float(np.abs(res).max()) if res.size else 0.0
        own = self.counts["done"]
        by_others = max(0, self.queue.done_now - self.queue.done_at_start - own)
        if crew.team is not None and crew.lead:
            by_others = max(0, by_others - (computed - own))
        settings = self.plan.options.result_settings()
        if self.engine.l1_scales:  # the run scale the rows were held to (recorded when the store was made)
            settings["l1_scale"] = dict(self.engine.l1_scales)
        return ComputeResult(
            store=target.out, n_pairs=store.n_pairs, computed=computed, skipped=self.skipped,
            flagged={s: a.flagged for s, a in accuracy.items()}, max_abs_residual=max_res, seconds=seconds,
            device=str(self.plan.device), gradients_per_pair=self.counts["gradients"] / own if own else 0.0,
            interrupted=interrupted, repaired=sum(len(r) for r in target.repaired.values()), processes=processes,
            by_others=by_others, role=crew.role, pruned=0 if self.pruner is None else self.pruner.deleted,
            ended=ended, scope=self.plan.schedule.scope.describe(), accuracy=accuracy, settings=settings,
            threads=self.threads_used, gradients=sum(o.gradients for o in self.engine.objectives.values()),
            reused=self.engine.reuse.used, reuse_entries=self.engine.reuse.entries,
        )  # fmt: skip


def run_work(
    plan: ComputePlan,
    engine: PairEngine,
    target: Target,
    crew: Crew,
    source: CheckpointSource,
    *,
    stop: threading.Event,
    say: NoteFn,
    progress: ProgressFn | ProgressReporter | None = None,
    follower: Follower | None = None,
    tune: Callable[[], ThreadTuner | None],
) -> ComputeResult:
    """Compute a call's pairs into the store it owns or joined, and say what was done.

    Args:
        plan: The call's plan.
        engine: The pair engine built for it.
        target: The store (owned or joined).
        crew: This process's place among those computing into the store.
        source: Reads the run's checkpoints as the model's state_dict.
        stop: When set, finish the current pair, write finished rows and return.
        say: Receives one-line notes.
        progress: Called after every pair with ``(done, total)``, or a :class:`ProgressReporter`.
        follower: Watches the run for new checkpoints (``follow``), or None.
        tune: Chooses the call's thread count once (:func:`choose_threads`) and returns its tuner (None for a
            fixed count): the call may have chosen it before its survey; called here before the first pair.

    Returns:
        The call's result.

    """
    store = target.store
    # The run scale every row is held to, as the store recorded it when it was made (owner and helpers alike).
    engine.l1_scales = l1_scales_of(store, plan.options.l1_scope)
    # The first panel's factor its last survey calibrated on the run (none: the fixed factor).
    engine.first_factors = first_factors_of(store) if engine.l1_scales else {}
    engine.deep_factors = deep_factors_of(store) if engine.l1_scales else {}
    # Gradients and rows in the dtype the store chose when it was made (its recorded bound), or forced float64.
    engine.accumulate = accumulation_of(store, plan.options.accumulate)
    if engine.columns is not None:
        # Neuron or tensor columns are summed as the store recorded them when it was made.
        engine.columns = ColumnReducer(store.columns, store.layout)
    return _Work(plan, engine, target, crew, source, stop, say, progress, follower, tune).run()
