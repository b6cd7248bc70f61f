"""One ``compute`` call: its plan, its place among other processes, and the store it owns or joins.

:func:`compute` builds the call's plan (:func:`~lca_cli.computation.plan.build_plan`) and engine, then either
*owns* the store (takes its lock and creates, extends, repairs or replaces it: :mod:`lca_cli.computation.opening`)
or, when it may cooperate and a live owner holds it, *joins* it as a helper; under ``torchrun`` rank 0 owns it
and shares the outcome, or its error, with the other ranks (:mod:`lca_cli.computation.distributed`). The pairs
are then computed by the work loop (:mod:`lca_cli.computation.work`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from lca_cli.computation.config import Config
from lca_cli.computation.distributed import Board, Team
from lca_cli.computation.engine import FLUSH_SECONDS, READ_AHEAD, PairEngine, Point, build_engine, preflight
from lca_cli.computation.follow import Follower
from lca_cli.computation.opening import Target, open_helper, prepare
from lca_cli.computation.options import SCALE_PAIRS
from lca_cli.computation.plan import ComputePlan, Hooks, Schedule, build_plan, default_out, environment
from lca_cli.computation.precision import accumulation_of, choose_accumulation
from lca_cli.computation.result import ComputeResult, NoteFn, ProgressFn, ProgressReporter
from lca_cli.computation.scale import RESURVEY_GROWTH, Survey, needs_survey, survey_attrs, survey_run
from lca_cli.computation.tuning import ThreadTuner
from lca_cli.computation.work import Crew, choose_threads, run_work
from lca_cli.core.vectors import split_state
from lca_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, Interrupted, PeerFailed, StoreBusyError, UsageError
from lca_cli.sources import CheckpointRef, CheckpointSource
from lca_cli.store.claims import read_claim, store_lock_path
from lca_cli.store.format import choose_rows_per_chunk
from lca_cli.store.placement import inspect_path, new_token

__all__ = ["compute", "store_attrs"]


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def store_attrs(
    config: Config,
    details: dict[str, Any],
    device: torch.device,
    tied: Mapping[str, str] | None = None,
    survey: Survey | None = None,
    loss_rounding: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Attributes of a new store: the settings, evaluation details and run scales its numbers depend on.

    Args:
        config: The plan's config (resolved options).
        details: The evaluation details :func:`~lca_cli.computation.engine.build_engine` returned.
        device: The compute device.
        tied: Tied parameters (alias -> owner).
        survey: The run's survey for the store (``l1_scope="run"``: scales, first-panel factors), or None.
        loss_rounding: Per set, the relative rounding bound of its losses.

    Returns:
        The attributes.

    """
    opts = config.compute
    scale = survey_attrs(survey) if survey is not None else {}
    return {
        **scale,
        # Per set, the relative rounding bound of its losses: a residual within it times |L0| + |L1| is rounding.
        "loss_rounding": dict(loss_rounding or {}),
        "method": opts.method,
        "refine": opts.refine,
        "tolerance": opts.tolerance,
        "rtol": opts.rtol,
        "l1_tol": opts.l1_tol,
        "max_splits": opts.max_splits,
        "identity": _normalise(config.identity()),
        # Tied parameters (alias -> owner): the layout holds the owner only, and its LCA is the shared tensor's.
        "tied": dict(tied or {}),
        "config": _normalise({**config.identity(), "base_dir": str(config.base_dir) if config.base_dir else None}),
        "evaluation": details,
        "device": str(device),
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _failure(exc: BaseException) -> dict[str, Any]:
    """A failure as rank 0 broadcasts it to the other ranks of a ``torchrun`` job."""
    code = getattr(exc, "exit_code", EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_INTERNAL)
    return {"ok": False, "code": int(code), "message": str(exc) or type(exc).__name__}


class _Built:
    """What a plan's engine is made of: the engine, the store's evaluation details, the checkpoint reader."""

    def __init__(self, plan: ComputePlan, say: NoteFn) -> None:
        self.engine: PairEngine
        self.engine, self.details, self.expected = build_engine(plan.config, plan.device)
        key = plan.options.state_dict_key or None
        self.source = CheckpointSource(self.expected, state_dict_key=key, unsafe_pickle=plan.unsafe_pickle, note=say)
        self.device = plan.device

    def point(self, ref: CheckpointRef) -> Point:
        """A checkpoint as the engine's point vector and fixed buffers, on the device."""
        return split_state(self.source.read(ref), self.engine.vlayout, self.device)


class _Runner:
    """One ``compute`` call: the plan, the store (owned or joined), the work, the end."""

    def __init__(
        self,
        run: Path,
        config: Config,
        out: str | Path | None,
        *,
        overwrite: bool,
        repair: bool,
        progress: ProgressFn | ProgressReporter | None,
        stop: threading.Event,
        hooks: Hooks,
        unsafe_pickle: bool,
        note: NoteFn | None,
        schedule: Schedule,
        team: Team | None,
    ) -> None:
        self.run_dir, self.config, self.out = run, config, default_out(run, out)
        self.overwrite, self.repair, self.unsafe_pickle = overwrite, repair, unsafe_pickle
        self.progress, self.stop, self.hooks = progress, stop, hooks
        self.schedule, self.team = schedule, team
        self.tuner: ThreadTuner | None = None
        self.tuned = False
        self.lead = team is None or team.rank == 0
        # Other ranks of a torchrun job are quiet: rank 0 says what is to be said.
        self.say: NoteFn = (note if self.lead else None) or (lambda message: None)
        self.board = Board(self.out)
        self.follower: Follower | None = None
        self.plan: ComputePlan | None = None
        self.built: _Built | None = None
        self.role = "owner"
        self.target: Target | None = None
        self.token = ""  # the owner's lock token (what the ready marker names)
        self.job = ""  # a torchrun job's id (its abort marker)

    @property
    def device(self) -> torch.device:
        """The compute device (CPU until planned)."""
        return torch.device("cpu") if self.plan is None else self.plan.device

    # -- set-up -----------------------------------------------------------------------------------------

    def _plan(self) -> ComputePlan:
        refs = None
        if self.schedule.follow:
            sch = self.schedule
            self.follower = Follower(
                self.run_dir, until=sch.until, idle_timeout=sch.idle_timeout, stop=self.stop,
                unsafe_pickle=self.unsafe_pickle, settle=sch.settle, poll=sch.poll, notes=self.say,
                backlog=sch.backlog,
            )  # fmt: skip
            refs = self.follower.wait_for_start()
        return build_plan(
            self.run_dir, self.config, self.out, schedule=self.schedule, overwrite=self.overwrite, repair=self.repair,
            unsafe_pickle=self.unsafe_pickle, hooks=self.hooks, team=self.team, refs=refs, note=self.say,
        )  # fmt: skip

    def run(self) -> ComputeResult:
        """Do it (see :func:`compute`)."""
        deferred: BaseException | None = None  # a rank other than 0 reports its own set-up error after rank 0's
        try:
            self.plan = self._plan()
        except BaseException as exc:
            if self.follower is not None:
                self.follower.close()
            if self.lead:
                self._share_failure(exc)
                raise
            deferred = exc
        options = self.config.compute if self.plan is None else self.plan.options
        with environment(options, self.config.base_dir):
            try:
                return self._run(deferred)
            finally:
                if self.target is not None and self.target.lock is not None:
                    self.board.withdraw(self.token)  # no helper may join once the owner leaves
                self.board.close(self.job)
                if self.target is not None:
                    self.target.close()
                if self.follower is not None:  # held checkpoints go (the store's pairs no longer need them)
                    self.follower.close()

    def _share_failure(self, exc: BaseException) -> None:
        if self.team is not None and self.lead:
            self.team.share(_failure(exc))

    def _set_up(self) -> bool:
        """Build the engine and (rank 0, a process alone) own or join the store; False when stopped."""
        assert self.plan is not None
        self.built = _Built(self.plan, self.say)
        if not self.hooks.reuse_probes:
            self.built.engine.reuse.limit_bytes = 0
        if self.plan.refs and self.lead:
            preflight(self.built.engine, self.built.point, self.plan.refs)
        return not self.lead or self._open() is not None

    def _run(self, deferred: BaseException | None) -> ComputeResult:
        if deferred is None:
            try:
                if not self._set_up():
                    self._share_failure(Interrupted(EXIT_INTERRUPTED))
                    return self._stopped_early()
            except BaseException as exc:
                if self.lead:
                    self._share_failure(exc)
                    raise
                deferred = exc
        if self.team is not None:
            stopped = self._meet_team(self.team, deferred)
            if stopped is not None:
                return stopped
        assert self.plan is not None and self.built is not None and self.target is not None
        crew = Crew(self.board, self.team, self.job, self.token, self.role, self.lead)
        try:
            return run_work(
                self.plan, self.built.engine, self.target, crew, self.built.source, stop=self.stop, say=self.say,
                progress=self.progress, follower=self.follower, tune=self._tune,
            )  # fmt: skip
        except BaseException as exc:
            self._abort(exc)
            raise

    def _meet_team(self, team: Team, deferred: BaseException | None) -> ComputeResult | None:
        """Rank 0 shares the store's outcome; the others join its store (or fail with it); None: go on."""
        # A new store that replaces an old one is swapped into place at rank 0's first write: the other ranks
        # wait for its ready marker then; otherwise the store is ready now.
        pending = self.target is not None and self.target.pending is not None
        status = team.share(
            {"ok": True, "token": self.token, "job": new_token(), "pending": pending} if self.lead else None
        )
        if not self.lead:
            if not status["ok"]:
                raise PeerFailed(f"rank 0 failed: {status['message']}", int(status["code"]))
            self.job = str(status["job"])
            if deferred is not None:
                self._abort(deferred)
                raise deferred
            try:
                if self._join_team(str(status["token"]), bool(status["pending"])) is None:
                    return self._stopped_early()
            except BaseException as exc:
                self._abort(exc)
                raise
        self.job = str(status["job"])
        return None

    def _abort(self, exc: BaseException) -> None:
        """Tell the other ranks of a torchrun job to stop (this one failed)."""
        if self.team is not None and self.job and not isinstance(exc, PeerFailed):
            f = _failure(exc)
            self.board.abort(self.job, self.team.rank, f["code"], f["message"])

    def _stopped_early(self) -> ComputeResult:
        return ComputeResult(
            store=self.out, n_pairs=0, computed=0, skipped=0, flagged={}, max_abs_residual={}, seconds=0.0,
            device=str(self.device), interrupted=True, role="helper",
        )  # fmt: skip

    # -- the store --------------------------------------------------------------------------------------

    def _tune(self) -> ThreadTuner | None:
        """``--threads auto``: the call's thread count, chosen once, before its first full-set gradient.

        A call that makes or surveys a store chooses it before the accumulation probe and the survey, so that
        they run at the loop's count and the probes' gradients have the loop's bits (the loop takes them:
        :class:`~lca_cli.computation.reuse.ProbeReuse`); any other call, before its first pair (``run_work``).

        Returns:
            The tuner (None for a fixed count).

        """
        if not self.tuned:
            assert self.plan is not None and self.built is not None
            local = self.team.local_size if self.team is not None else 1
            opts, built = self.plan.options, self.built
            self.tuner = choose_threads(built.engine, opts.threads, self.say, built.source.spec, local)
            self.tuned = True
        return self.tuner

    def _makes_store(self) -> bool:
        """Whether this call makes a new store (nothing there yet, or ``--overwrite``)."""
        return self.overwrite or inspect_path(self.out, deep=False).kind != "store"

    def _run_scales(self) -> tuple[bool, Survey | None]:
        """A new store's survey (scale, first-panel factor), made now from the checkpoints on disk."""
        plan, built = self.plan, self.built
        assert plan is not None and built is not None
        if plan.options.l1_scope != "run" or not self._makes_store():
            return False, None
        refs = plan.refs
        survey = survey_run(
            built.engine, lambda i: built.point(refs[i]), len(refs) - 1, self.say, self.stop, reuse=built.engine.reuse
        )
        if survey is not None and len(refs) - 1 < SCALE_PAIRS:
            self.say(
                f"the run scale of --l1-tol (--l1-scope run) is measured over the {len(refs) - 1} pair(s) on "
                f"disk, and again by a later call once the run has {RESURVEY_GROWTH:g} times as many; if every "
                "pair must meet the target on its own, pass --l1-scope pair to hold every pair to its own row"
            )
        return survey is None, survey

    def _resurvey(self, target: Target) -> None:
        """An existing store whose run has grown since its last survey is surveyed again, before anyone computes.

        Pairs the store holds count with their stored rows' norms (no gradient); the others, and the probes, are
        evaluated. Stopped part-way, the store keeps its last survey.
        """
        plan, built = self.plan, self.built
        assert plan is not None and built is not None
        store = target.store
        refs = target.alignment.refs
        if target.read_only or not needs_survey(store, len(refs) - 1, plan.options.l1_scope):
            return
        self._tune()
        # The survey's gradients in the dtype the store's rows use (recorded when it was made).
        built.engine.accumulate = accumulation_of(store, plan.options.accumulate)
        done = store.done()
        rows = None if built.engine.columns is not None else store  # column stores hold no parameter rows

        def stored(s: str, t: int) -> float | None:
            if rows is None or not done[t]:
                return None
            return float(np.abs(np.asarray(rows.array(s, "lca")[t], dtype=np.float64)).sum())

        def read(i: int) -> Point | None:
            ref = refs[i]
            return None if ref is None else built.point(cast(CheckpointRef, ref))

        survey = survey_run(built.engine, read, len(refs) - 1, self.say, self.stop, stored, built.engine.reuse)
        if survey is not None:
            store.update_attrs(survey_attrs(survey))

    def _accumulation(self) -> dict[str, Any] | None:
        """A new store's accumulation dtype and its bound (:mod:`lca_cli.computation.precision`); None: kept."""
        plan, built = self.plan, self.built
        assert plan is not None and built is not None
        if not self._makes_store():
            return None
        opts, refs = plan.options, plan.refs
        assert opts.l1_tol is not None
        return choose_accumulation(
            built.engine, lambda i: built.point(refs[i]), len(refs) - 1, requested=opts.accumulate,
            network_dtype=opts.dtype, l1_tol=opts.l1_tol, max_splits=opts.max_splits,
            explicit_tolerance=opts.tolerance is not None or opts.rtol is not None,
        )  # fmt: skip

    def _prepare(self, scales: Survey | None, accumulation: dict[str, Any] | None) -> Target:
        plan, built = self.plan, self.built
        assert plan is not None and built is not None
        engine, config = built.engine, plan.config
        details = built.details if accumulation is None else {**built.details, "accumulation": accumulation["dtype"]}
        attrs = store_attrs(
            config, details, plan.device, built.expected.aliases, scales,
            {s: o.loss_rounding for s, o in engine.objectives.items()},
        )  # fmt: skip
        if accumulation is not None:
            attrs["accumulation"] = accumulation
        rows = config.compute.rows_per_chunk
        if not rows and self.schedule.follow:  # a followed run grows: chunks for the run to come, not fitted to T
            rows = choose_rows_per_chunk(engine.width)
        return prepare(
            self.out, self.run_dir, list(plan.refs), identity=config.identity(), layout=engine.layout,
            sets=list(engine.objectives), attrs=attrs, rows_per_chunk=rows,
            overwrite=self.overwrite, repair=self.repair, device=str(plan.device), durable=plan.hooks.durable,
            columns=None if engine.columns is None else engine.columns.columns, busy=self.board.busy,
            purpose="lca compute --follow" if self.schedule.follow else "lca compute",
        )  # fmt: skip

    def _open(self) -> Target | None:
        """Own the store (lock, prepare) or, when allowed and it is busy, join its owner; None when stopped."""
        if self.stop.is_set():  # a signal during start-up: stop now, nothing created
            return None
        if self._makes_store():
            self._tune()  # the thread count first: the probe's and the survey's gradients run at the loop's
        # The accumulation dtype next: the run scale's gradients then use the pair loop's dtype and buffers.
        accumulation = self._accumulation()
        stopped, scales = self._run_scales()
        if stopped:
            return None
        while True:
            try:
                target = self._prepare(scales, accumulation)
                if scales is None:  # an existing store: surveyed again when its run has grown
                    self._resurvey(target)
            except StoreBusyError as exc:
                held = read_claim(store_lock_path(self.out))
                owned = held is not None and held[1] and held[0] is not None
                if owned and not self.schedule.joins and not self.schedule.follow:
                    hint = "or pass --cooperate to compute the chunks it has not claimed"
                    raise StoreBusyError(f"{exc}; {hint}") from None
                if not self.schedule.joins or not owned:
                    raise  # not asked to cooperate, or refused for another reason than a live owner
                assert held is not None and held[0] is not None
                token = self._wait_ready(held[0].token)
                if token is None:
                    if self.stop.is_set():
                        return None
                    continue  # the owner left: try to own the store
                return self._open_helper(token)
            self.target, self.role = target, "owner"
            if target.lock is not None:
                self.token = target.lock.holder.token
                if target.pending is None:
                    self.board.publish(self.token, accepts=not self.schedule.follow)
            return target

    def _wait_ready(self, token: str, *, team: bool = False) -> str | None:
        """Wait for the ready marker of the owner whose lock token is ``token``; None when stopped or it left."""
        lock = store_lock_path(self.out)
        while not self.stop.is_set():
            ready = self.board.ready()
            if ready is not None and ready.get("token") == token:
                if not ready.get("accepts", True):
                    raise StoreBusyError(
                        f"{self.out} is being followed by another lca compute (pid {ready.get('pid')}, --follow), "
                        "which computes alone: wait for it to finish"
                    )
                return token
            if team:
                failed = self.board.aborted(self.job) if self.job else None
                if failed is not None:
                    raise PeerFailed(f"rank {failed.get('rank')} failed ({failed.get('message')})", int(failed["code"]))
            else:
                held = read_claim(lock)
                if held is None or not held[1] or held[0] is None or held[0].token != token:
                    return None
            self.stop.wait(self.schedule.poll)
        return None

    def _open_helper(self, token: str) -> Target:
        assert self.plan is not None and self.built is not None
        engine = self.built.engine
        target = open_helper(
            self.out, self.run_dir, list(self.plan.refs), identity=self.plan.config.identity(), layout=engine.layout,
            sets=list(engine.objectives), durable=self.plan.hooks.durable,
        )  # fmt: skip
        self.target, self.role, self.token = target, "helper", token
        return target

    def _join_team(self, token: str, pending: bool) -> Target | None:
        """A rank other than 0: compute into rank 0's store as a helper (once it is in place, when ``pending``)."""
        if pending and self._wait_ready(token, team=True) is None:
            return None
        return self._open_helper(token)


def compute(
    run_dir: str | Path,
    config: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    repair: bool = False,
    progress: ProgressFn | ProgressReporter | None = None,
    stop: threading.Event | None = None,
    flush_seconds: float = FLUSH_SECONDS,
    durable: bool = True,
    unsafe_pickle: bool = False,
    note: NoteFn | None = None,
    schedule: Schedule | None = None,
    read_ahead: int = READ_AHEAD,
    sync_writes: bool = False,
    reuse_probes: bool = True,
) -> ComputeResult:
    """Compute (or resume, or extend, or repair) the LCA store of a run, from a loaded config.

    Under ``torchrun`` with several processes every rank calls this; rank 0 prepares the store and reports, and
    the ranks share the work by claiming chunks (:mod:`lca_cli.computation.distributed`). Several independent calls
    share a store the same way when they may (``schedule.cooperate``, a shard). Messages name the CLI's flags;
    :func:`lca_cli.computation.entry.compute_run` is the same with options by keyword and messages that name them.

    Args:
        run_dir: Directory of checkpoints (any layout :mod:`lca_cli.sources` finds).
        config: The config (``config.compute`` holds the options).
        out: Store path (default ``RUN_DIR/lca.zarr``).
        overwrite: Replace an existing lca store (swapped in once the new one has its first rows).
        repair: Verify every chunk's checksum first and recompute the rows of damaged chunks.
        progress: Called after every pair with ``(done, total)`` for this call, or a :class:`ProgressReporter`.
        stop: When set (Ctrl-C, SIGTERM, SIGHUP), finish the current pair (abandon it after
            :data:`~lca_cli.computation.engine.STOP_GRACE_SECONDS`), save finished rows and return.
        flush_seconds: Write a block's finished rows at least this often.
        durable: fsync rows before marking them done (off only for benchmarks of the loop).
        unsafe_pickle: Allow torch checkpoints that need pickle (``--unsafe-pickle``; trusted files only).
        note: Receives one-line notes: where checkpoints were found, a nested entry or prefix used, a missing
            step 0, why following ended.
        schedule: Which pairs, with whom, and whether to follow the run (default: every pair, alone).
        read_ahead: Checkpoints read ahead in a background thread (0: each one when needed; a benchmark hook).
        sync_writes: Write rows in the pair loop's thread, not a background writer (a benchmark hook).
        reuse_probes: Let the pair loop take the survey's gradients (its sampled pairs' starts, its probes'
            points; a benchmark, test and ``--dry-run`` hook: off, it evaluates them again and writes the same
            store).

    Returns:
        What was done.

    Raises:
        LcaError: For every user-facing problem (see :mod:`lca_cli.errors`).

    """
    config.compute.validate()
    if overwrite and repair:
        raise UsageError("--repair and --overwrite exclude each other (--overwrite recomputes everything)")
    schedule = schedule or Schedule()
    team = Team.from_env()
    schedule.check(overwrite=overwrite, repair=repair, team=team)
    hooks = Hooks(
        read_ahead=read_ahead, sync_writes=sync_writes, durable=durable, flush_seconds=flush_seconds,
        reuse_probes=reuse_probes,
    )  # fmt: skip
    job = _Runner(
        Path(run_dir), config, out, overwrite=overwrite, repair=repair, progress=progress,
        stop=stop if stop is not None else threading.Event(), hooks=hooks, unsafe_pickle=unsafe_pickle, note=note,
        schedule=schedule, team=team,
    )  # fmt: skip
    if team is not None:
        team.start()
    try:
        return job.run()
    finally:
        if team is not None:
            team.close()
