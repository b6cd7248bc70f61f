"""Walk the checkpoint pairs of a run, compute their LCA rows, and write them to the store.

The work is cut into *blocks*: runs of consecutive pairs that are not done yet, cut at the store's row
chunks. A block depends only on its own checkpoints and writes only its own rows, so blocks could go to
independent workers; inside one process they run in order and the end gradient of one block is reused as
the start of the next when they are contiguous. Checkpoints are read ahead in a background thread and
finished blocks are written by a background writer, so that the two gradients per pair dominate the time.

Finished rows are never held back for long: a block's finished rows are written every ``flush_seconds``
(so a long run's rows become visible while it runs), and when it ends early (an error at pair k keeps the
pairs before k; a stop request keeps every finished pair). Each write rewrites only the block's own chunks,
so a partial block is continued bit-identically by a later run. The store itself (lock, creation, identity,
repair) is prepared by :mod:`lca_cli.computation.opening`.

Memory is bounded by a few point vectors (``(P + B,)`` float64), the gradient sums of the integrator, one
block of float32 rows and the evaluation set: never all checkpoints, never all rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from lca_cli.computation.config import Config, build_model, call_factory, config_loss, import_path
from lca_cli.computation.distributed import Board, ChunkQueue, Scope, Team
from lca_cli.computation.follow import IDLE_TIMEOUT_SECONDS, SETTLE_SECONDS, Follower, Pruner
from lca_cli.computation.opening import Target, open_helper, prepare
from lca_cli.computation.tuning import ThreadTuner, checkpoint_dtype, usable_cores
from lca_cli.core.accuracy import SetAccuracy, set_accuracy
from lca_cli.core.columns import ColumnReducer, Columns
from lca_cli.core.integrate import Evaluation, integrate_pair
from lca_cli.core.layout import Layout
from lca_cli.core.objective import (
    EvalSet,
    Objective,
    interpolated_buffer_names,
    make_chunks,
    prepare_model,
    split_state,
)
from lca_cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    Interrupted,
    PeerFailed,
    RunDirError,
    StoreBusyError,
    StoreError,
    UsageError,
)
from lca_cli.sources import (
    CheckpointRef,
    CheckpointSource,
    ModelSpec,
    check_state_dict,
    describe_folder,
    find_checkpoints,
    read_checkpoint,
)
from lca_cli.store.claims import read_claim, store_lock_path
from lca_cli.store.lcastore import BlockRows, LcaStore
from lca_cli.store.placement import inspect_path, new_token

__all__ = [
    "FLUSH_SECONDS",
    "POLL_SECONDS",
    "SCALE_FRACTION",
    "SCALE_PAIRS",
    "STOP_GRACE_SECONDS",
    "CheckpointLoader",
    "ComputeResult",
    "PairEngine",
    "ProgressInfo",
    "ProgressReporter",
    "Schedule",
    "build_engine",
    "compute",
    "l1_scales_of",
    "measure_l1_scales",
    "plan_blocks",
    "resolve_device",
    "scale_pairs",
]

#: ``progress(pairs_done_this_run, pairs_to_do)``, called after every pair.
ProgressFn = Callable[[int, int], None]
#: ``note(message)``: a one-line note for the user (how checkpoints were found and mapped onto the model).
NoteFn = Callable[[str], None]

#: A block's finished rows are written at least this often, so a long run's rows show up in the store.
FLUSH_SECONDS = 30.0
#: Seconds between looks while waiting: for new checkpoints (--follow), for chunks other processes hold.
POLL_SECONDS = 0.5
#: After a stop request (Ctrl-C, SIGTERM, SIGHUP), a pair still running this much later is abandoned (it is
#: recomputed by the next run), so that stopping fits in a scheduler's grace period even for a large model.
STOP_GRACE_SECONDS = 5.0


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


class _Abandoned(Exception):
    """A stop request outlived :data:`STOP_GRACE_SECONDS` inside a pair: drop the pair, keep the rest."""


def resolve_device(spec: str, team: Team | None = None) -> torch.device:
    """Turn ``--device`` into a torch device.

    Args:
        spec: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:i``.
        team: A ``torchrun`` job: ``auto`` and ``cuda`` mean the device of this process's local rank
            (``cuda:LOCAL_RANK``, modulo the devices visible, so several processes may share one).

    Returns:
        The device.

    Raises:
        UsageError: If CUDA is asked for but not available, or the index does not exist.

    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and team is not None and torch.cuda.is_available():
        spec = f"cuda:{team.local_rank % torch.cuda.device_count()}"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: CUDA is not available here; use --device cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return dev
    return torch.device(spec)


def plan_blocks(done: np.ndarray, rows_per_chunk: int) -> list[range]:
    """Cut the not-done pairs into blocks of consecutive pairs that do not cross a row chunk.

    Args:
        done: ``(T,)`` bool mask of finished pairs.
        rows_per_chunk: Rows per store chunk.

    Returns:
        Blocks in increasing order; their union is exactly the not-done pairs.

    """
    blocks: list[range] = []
    start: int | None = None
    for t in range(len(done) + 1):
        boundary = t % rows_per_chunk == 0
        if start is not None and (t == len(done) or done[t] or boundary):
            blocks.append(range(start, t))
            start = None
        if t < len(done) and not done[t] and start is None:
            start = t
    return blocks


class CheckpointLoader:
    """Reads checkpoints by index, ahead of use, in a background thread.

    Args:
        refs: The run's checkpoints in step order (None where one was deleted; never read).
        expected: ``name -> shape`` of the model's ``state_dict()`` (every checkpoint is checked).
        vlayout: Layout of the point vector.
        device: Compute device.
        ahead: How many checkpoints to read ahead.
        read: Reads one checkpoint as the model's state_dict, checked (:meth:`CheckpointSource.read`); by default
            a :class:`CheckpointSource` of ``expected`` when it is a :class:`ModelSpec`, else the file is read as a
            flat state_dict and checked against ``expected``.

    """

    def __init__(
        self,
        refs: Sequence[CheckpointRef | Any],
        expected: Mapping[str, tuple[int, ...]],
        vlayout: Layout,
        device: torch.device,
        ahead: int = 2,
        *,
        read: Callable[[CheckpointRef], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.refs = list(refs)
        self.expected = expected
        if read is None and isinstance(expected, ModelSpec):
            read = CheckpointSource(expected).read  # nested dicts, prefixes and tied aliases mapped as in compute
        self.read = read
        self.vlayout = vlayout
        self.device = device
        self.ahead = ahead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lca-read")
        self._futures: dict[int, Future[tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {}

    def _load(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ref = self.refs[i]
        assert ref is not None, "a pair to compute lost a checkpoint (lca_cli.computation.opening checks this)"
        if self.read is not None:
            state = self.read(ref)
        else:
            state = read_checkpoint(ref)
            check_state_dict(state, self.expected, ref.path)
        # On CUDA, split_state flattens into pinned memory and copies asynchronously (this thread's queue).
        return split_state(state, self.vlayout, self.device)

    def get(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Point vector and fixed tensors of checkpoint ``i``; schedules the next ones.

        Args:
            i: Checkpoint index.

        Returns:
            ``(v, fixed)`` on the compute device.

        """
        for j in range(i, min(len(self.refs), i + 1 + self.ahead)):
            if j not in self._futures and (j == i or self.refs[j] is not None):  # None: deleted (rotation)
                self._futures[j] = self._pool.submit(self._load, j)
        # Only the window ahead of i is kept: a process that moves on to a chunk elsewhere (claims) drops the rest.
        for j in [j for j in self._futures if j < i or j > i + self.ahead]:
            self._futures.pop(j).cancel()
        return self._futures.pop(i).result()

    def set_refs(self, refs: Sequence[CheckpointRef | Any]) -> None:
        """The run's checkpoints changed (appended while following; deleted by pruning)."""
        self.refs = list(refs)

    def close(self) -> None:
        """Stop the reader thread."""
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True)


@dataclass
class _Cache:
    """The end of the last pair computed: reused as the start of the next one when contiguous."""

    index: int
    v: torch.Tensor
    fixed: dict[str, torch.Tensor]
    evals: dict[str, Evaluation]


@dataclass
class PairEngine:
    """Everything needed to turn checkpoint pairs into LCA rows on one device.

    Attributes:
        layout: Parameter layout (P columns).
        vlayout: Point-vector layout: parameters, then interpolated buffers (B more entries).
        objectives: One objective per evaluation set.
        method: ``"rk4"`` or ``"euler"``.
        max_splits: Cap on sub-intervals.
        tolerance: Absolute residual tolerance, or None (see :class:`~lca_cli.computation.config.ComputeOptions`).
        rtol: Relative residual tolerance, or None.
        device: Compute device.
        l1_tol: Per-parameter accuracy target (0 = off).
        refine: ``"local"`` or ``"doubling"``.
        columns: Reduces each row to the store's columns (``--granularity``, ``--params``); None: one per
            parameter.
        l1_scales: Per set, the run's scale of ``||lca||_1`` that ``l1_tol`` is also relative to
            (``l1_scope="run"``: :func:`measure_l1_scales`, read from the store); a set absent here: none.

    """

    layout: Layout
    vlayout: Layout
    objectives: dict[str, Objective]
    method: str
    max_splits: int
    tolerance: float | None
    rtol: float | None
    device: torch.device
    l1_tol: float = 0.0
    refine: str = "local"
    columns: ColumnReducer | None = None
    l1_scales: dict[str, float] = field(default_factory=dict)
    _bounds: list[tuple[int, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Column ranges of the tensors, for per-tensor sums over each block of rows at once.
        self._bounds = [(p.offset, p.stop) for p in self.layout.params]

    @property
    def width(self) -> int:
        """Columns of a stored row: P, or the reduced column count."""
        return self.layout.size if self.columns is None else self.columns.size

    def _evaluate(self, name: str, v: torch.Tensor, fixed: Mapping[str, torch.Tensor]) -> Evaluation:
        return Evaluation(*self.objectives[name].value_and_grad(v, fixed))

    def run_block(
        self,
        block: range,
        loader: CheckpointLoader,
        steps: Sequence[int],
        cache: _Cache | None = None,
        on_pair: Callable[[int, int], None] | None = None,
        stop: threading.Event | None = None,
        buffers: Callable[[int, int], np.ndarray] | None = None,
        emit: Callable[[dict[str, BlockRows], list[np.ndarray]], None] | None = None,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> tuple[int, _Cache | None]:
        """Compute the rows of one block of pairs, handing finished rows to ``emit`` as they accumulate.

        Rows go to ``emit`` every ``flush_seconds``, at the end of the block, and when the block ends early:
        after a stop request (the current pair is finished, or abandoned if it is still running
        :data:`STOP_GRACE_SECONDS` later) or an error (the pairs before the failing one are emitted, then the
        error propagates). Every emitted piece starts where the previous one ended.

        Args:
            block: Pair indices ``t`` (pair t goes from checkpoint t to t + 1).
            loader: Checkpoint reader.
            steps: Steps of all checkpoints (for messages).
            cache: End of the previous block, reused when it is checkpoint ``block.start``.
            on_pair: Called after each pair with ``(gradients computed for it, 1 if flagged in any set)``.
            stop: When set, the block ends early after the current pair (its finished rows are emitted).
            buffers: ``(rows, P) -> float32 array`` of at least that shape for the block's ``lca`` rows (a pool
                that reuses the arrays already written); a new array per block when None.
            emit: ``(rows per set, arrays to give back once written)``; the last call of a block gives back its
                ``lca`` buffers (possibly with no rows). None: rows are dropped (benchmarks of the loop alone).
            flush_seconds: Emit finished rows at least this often.

        Returns:
            ``(pairs computed, cache for the next block)``; fewer than ``len(block)`` if stopped.

        """
        n_params = self.layout.size
        width = self.width
        names = list(self.objectives)
        # Per pair, the float32 row goes straight into the block's host buffer (the array the writer gets: one
        # copy of the block in memory, so peak memory is a few store chunks whatever the run's length), and the
        # per-tensor sums and helped / hurt counts are reduced on the device from the float64 row, a few small
        # ops per tensor (an index_add over the row was 3 x 0.4 ms per pair for MNIST-FC).
        alloc = buffers or (lambda rows, cols: np.empty((rows, cols), dtype=np.float32))
        bases = {s: alloc(len(block), width) for s in names}
        rows32 = {s: bases[s][: len(block)] for s in names}
        per_pair: dict[str, dict[str, list[Any]]] = {
            s: {k: [] for k in ("loss", "residual", "splits", "flagged", "l1", "tensor", "buffer")} for s in names
        }
        count = flushed = 0
        last_flush = time.monotonic()
        stop_seen: list[float] = []

        def flush(final: bool) -> None:
            nonlocal flushed, last_flush
            out = self._rows(block.start, flushed, count, rows32, per_pair) if count > flushed else {}
            flushed, last_flush = count, time.monotonic()
            if emit is not None and (out or final):
                emit(out, list(bases.values()) if final else [])

        def check_stop() -> None:
            if stop is not None and stop.is_set():
                if not stop_seen:
                    stop_seen.append(time.monotonic())
                elif time.monotonic() - stop_seen[0] >= STOP_GRACE_SECONDS:
                    raise _Abandoned

        try:
            if stop is not None and stop.is_set():  # stopped before this block began: no pair starts
                flush(final=True)
                return 0, cache
            if cache is None or cache.index != block.start:
                v0, fixed0 = loader.get(block.start)
                cache = _Cache(block.start, v0, fixed0, {s: self._evaluate(s, v0, fixed0) for s in names})
                grads_start = len(names)
            else:
                grads_start = 0
            for s in names:
                per_pair[s]["loss"].append(float(cache.evals[s].loss))
            for i, t in enumerate(block):
                v1, fixed1 = loader.get(t + 1)
                delta = v1 - cache.v  # (D,) float64, exact difference of the stored values
                evals_end: dict[str, Evaluation] = {}
                grads, flagged = grads_start, 0
                grads_start = 0
                results = []
                for s in names:
                    obj, v0, fixed0 = self.objectives[s], cache.v, cache.fixed
                    calls = [0]

                    def point(
                        x: float,
                        obj: Objective = obj,
                        v0: torch.Tensor = v0,
                        d: torch.Tensor = delta,
                        fx: Any = fixed0,
                        calls: list[int] = calls,
                    ) -> Any:
                        check_stop()
                        calls[0] += 1
                        return obj.value_and_grad(torch.add(v0, d, alpha=x), fx)  # one (D,) temporary, not two

                    check_stop()
                    res = integrate_pair(
                        point,
                        delta,
                        cache.evals[s],
                        self._evaluate(s, v1, fixed1),
                        method=self.method,
                        refine=self.refine,
                        max_splits=self.max_splits,
                        tolerance=self.tolerance,
                        rtol=self.rtol,
                        l1_tol=self.l1_tol,
                        l1_scale=self.l1_scales.get(s, 0.0),
                        loss_rounding=obj.loss_rounding,  # known once the start and end were evaluated
                        label=f"steps {steps[t]} -> {steps[t + 1]} (set {s})",
                    )
                    results.append((s, res))
                    evals_end[s] = res.end
                    grads += calls[0] + 1
                    flagged |= int(bool(res.flagged))
                # Stored only once every set has its row: an abandoned or failed pair leaves no trace.
                for s, res in results:
                    lca_p = res.lca[:n_params]  # (P,) parameters; res.lca[n_params:] are the buffers
                    reductions = self._tensor_reductions(lca_p)  # (3, K)
                    # (C,) stored columns: the parameters themselves, or their neuron / tensor sums.
                    row = lca_p if self.columns is None else self.columns.apply(lca_p, reductions[0])
                    torch.from_numpy(rows32[s][i]).copy_(row)
                    r = per_pair[s]
                    r["tensor"].append(reductions)
                    r["buffer"].append(res.lca[n_params:].sum())
                    r["loss"].append(res.loss1)
                    r["residual"].append(res.residual)
                    r["splits"].append(res.splits)
                    r["flagged"].append(res.flagged)
                    r["l1"].append(res.l1_change)
                cache = _Cache(t + 1, v1, fixed1, evals_end)
                count += 1
                if on_pair is not None:
                    on_pair(grads, flagged)
                if stop is not None and stop.is_set():
                    break
                if count < len(block) and time.monotonic() - last_flush >= flush_seconds:
                    flush(final=False)
        except _Abandoned:
            cache = None  # the abandoned pair's end was never reached
        except BaseException:
            flush(final=True)  # the pairs before the failing one are kept
            raise
        flush(final=True)
        return count, cache

    def _rows(
        self, start: int, a: int, b: int, rows32: dict[str, np.ndarray], per_pair: dict[str, dict[str, list[Any]]]
    ) -> dict[str, BlockRows]:
        """Rows ``a .. b - 1`` of a block starting at pair ``start``, per set, ready to write."""
        out: dict[str, BlockRows] = {}
        for s, r in per_pair.items():
            tensor = torch.stack(r["tensor"][a:b]).cpu()  # (k, 3, K) float64: sums, helped, hurt
            out[s] = BlockRows(
                start=start + a,
                lca=rows32[s][a:b],
                loss=np.asarray(r["loss"][a : b + 1], dtype=np.float64),
                residual=np.asarray(r["residual"][a:b], dtype=np.float64),
                splits=np.asarray(r["splits"][a:b], dtype=np.int32),
                flagged=np.asarray(r["flagged"][a:b], dtype=bool),
                tensor_lca=tensor[:, 0].numpy(),
                tensor_helped=tensor[:, 1].to(torch.int64).numpy(),
                tensor_hurt=tensor[:, 2].to(torch.int64).numpy(),
                buffer_lca=torch.stack(r["buffer"][a:b]).cpu().numpy(),
                l1_change=np.asarray(r["l1"][a:b], dtype=np.float64),
            )
        return out

    def _tensor_reductions(self, lca_p: torch.Tensor) -> torch.Tensor:
        """``(3, K)`` float64: per-tensor sum of the row, count of entries < 0 and count of entries > 0.

        One sign pass gives both counts: per tensor, ``Σ sign = hurt - helped`` and the nonzero count is
        ``helped + hurt`` (exact in float64 below 2**53). Sums run over each tensor's contiguous slice. About 2.4x
        faster than three comparisons and boolean sums per tensor (0.42 against 1.0 ms for a 301k row).
        """
        sign = torch.sign(lca_p)
        sums = torch.stack([lca_p[a:b].sum() for a, b in self._bounds])
        net = torch.stack([sign[a:b].sum() for a, b in self._bounds])
        moved = torch.stack([torch.count_nonzero(sign[a:b]) for a, b in self._bounds]).to(sums.dtype)
        return torch.stack([sums, (moved - net) / 2, (moved + net) / 2])


def build_engine(config: Config, device: torch.device) -> tuple[PairEngine, dict[str, Any], ModelSpec]:
    """Build the model, evaluation sets and objectives a config describes.

    Args:
        config: The resolved config.
        device: Compute device.

    Returns:
        ``(engine, evaluation details for the store, what the model expects of a checkpoint)``; the spec is also
        the mapping of expected ``state_dict`` shapes.

    Raises:
        ConfigError: If a factory fails or returns something unusable.

    """
    opts = config.compute.resolved(device.type)
    dtype = torch.float64 if opts.dtype == "float64" else torch.float32
    model = prepare_model(build_model(config), opts.bn_mode).to(device=device, dtype=dtype)
    layout = Layout.from_module(model)
    buffers = dict(model.named_buffers())
    buf_names = interpolated_buffer_names(model, opts.bn_mode)
    vlayout = Layout.from_shapes(
        [(p.name, p.shape) for p in layout.params] + [(n, tuple(buffers[n].shape)) for n in buf_names]
    )
    expected = ModelSpec.from_module(model)
    loss_fn = config_loss(config)
    forward = None
    if opts.compile:
        from torch.func import functional_call

        forward = torch.compile(lambda tensors, args, kwargs: functional_call(model, dict(tensors), args, kwargs))
    objectives, evaluation = {}, {}
    for name, spec in config.data.items():
        data = call_factory(spec, config.base_dir, f"[data.{name}]")
        evalset: EvalSet = make_chunks(name, data, opts.batch_size, device, dtype, loss_fn)
        objectives[name] = Objective(model, vlayout, evalset, loss_fn, dtype, forward)
        sizes = evalset.chunk_sizes
        evaluation[name] = {
            "n_samples": evalset.n_samples,
            "batch_size": opts.batch_size,
            "n_chunks": len(sizes),
            "last_chunk": sizes[-1],
        }
    assert opts.l1_tol is not None  # resolved above
    columns = Columns.build(layout, opts.granularity, opts.params)
    engine = PairEngine(
        layout, vlayout, objectives, opts.method, opts.max_splits, opts.tolerance, opts.rtol, device, opts.l1_tol,
        opts.refine, None if columns.full else ColumnReducer(columns, layout),
    )  # fmt: skip
    details = {
        "sets": evaluation,
        "bn_mode": opts.bn_mode,
        "dtype": opts.dtype,
        "accumulation": "float64",
        "buffers": [{"name": n, "shape": list(buffers[n].shape)} for n in buf_names],
        "dropout": "off (model.eval())",
    }
    return engine, details, expected


#: Pairs whose rows estimate a run's mean ``||lca||_1`` when its store is created (``l1_scope="run"``).
SCALE_PAIRS = 8
#: The run scale is this fraction of the estimated mean ``||lca||_1``. Measured on ten ReLU, tanh and CNN runs
#: (BENCHMARKS.md): at 0.8 the run's relative L1 error was <= 0.88e-3 on all ten, and <= 0.93e-3 on the five
#: replayed with 7 other choices of the sampled pairs; at 1.0 the tests' Adam CNN (rows all of about the same
#: size, so that most of them took the looser budget) reached 1.04-1.12e-3.
SCALE_FRACTION = 0.8
#: A run scale expected to take longer than this is announced in a note.
SLOW_SCALE_SECONDS = 5.0


def preflight(
    engine: PairEngine,
    point: Callable[[CheckpointRef], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    refs: Sequence[CheckpointRef],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Check every evaluation set against the model on the newest checkpoint, before any pair (compute, dry-run).

    Data or a loss that does not fit the model fails here in one line. The newest checkpoint, because pruning and
    rotation delete the oldest, maybe while this call starts beside a running one (see :func:`_auto_dtype`).

    Args:
        engine: The pair engine.
        point: ``ref -> (point vector, fixed buffers)`` on the engine's device.
        refs: The run's checkpoints (at least one).

    Returns:
        The newest checkpoint's point, for a caller that times a gradient on it.

    Raises:
        ConfigError: If a set does not fit the model.

    """
    v, fixed = point(refs[-1])
    for obj in engine.objectives.values():
        obj.check(v, fixed, f"step {refs[-1].step}")
    return v, fixed


def step_gaps(steps: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive checkpoints further apart than the run's usual spacing (its most common step difference).

    Args:
        steps: Checkpoint steps, increasing.

    Returns:
        ``[(step, next step)]`` of the pairs wider than the usual spacing (a checkpoint missing in between).

    """
    diffs = np.diff(np.asarray(steps, dtype=np.int64))
    if diffs.size < 2:
        return []
    values, counts = np.unique(diffs, return_counts=True)
    usual = int(values[np.argmax(counts)])
    return [(int(a), int(b)) for a, b, d in zip(steps[:-1], steps[1:], diffs, strict=True) if d > usual]


def scale_pairs(n_pairs: int, count: int = SCALE_PAIRS) -> list[int]:
    """The pairs, spread evenly over a run of ``n_pairs``, that estimate its scale (the middle of each slice).

    Args:
        n_pairs: Pairs of the run (checkpoints - 1).
        count: How many to take (all of them when the run has fewer).

    Returns:
        Increasing pair indices.

    """
    m = min(count, n_pairs)
    return [((2 * j + 1) * n_pairs) // (2 * m) for j in range(m)]


def measure_l1_scales(
    engine: PairEngine,
    read: Callable[[int], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    n_pairs: int,
    note: NoteFn | None = None,
    stop: threading.Event | None = None,
) -> dict[str, float] | None:
    """Per set, a run's scale of ``||lca||_1``: a fraction of the mean of ``||Δ ⊙ ∇L(v_t)||_1`` over a few pairs.

    :data:`SCALE_FRACTION` of the mean over :func:`scale_pairs`. That norm is the Euler row's, one gradient per
    sampled pair; its mean was 0.95-1.13 times the mean plain-Simpson ``||lca||_1`` on the bench's runs (1.82 on
    one SGD CNN, where a few pairs are far larger than the rest; a larger scale loosens the budget of the
    smaller pairs only; BENCHMARKS.md). It is measured once, when the store is created, and recorded in it, so
    every row depends only on its pair and the store.

    Args:
        engine: The pair engine (its objectives evaluate the gradients).
        read: ``i -> (point vector, fixed buffers)`` of checkpoint ``i``, on the engine's device.
        n_pairs: Pairs of the run.
        note: Told, when the first gradient says the rest will take more than :data:`SLOW_SCALE_SECONDS`, what
            is being done (before the progress display starts, a big model would otherwise sit silent).
        stop: When set, the measurement ends before its next gradient (a big model's take minutes).

    Returns:
        ``{set: scale}`` in loss units (0.0 when the run has no pair; pairs whose norm is not finite are left out);
        None when stopped.

    """
    norms: dict[str, list[float]] = {s: [] for s in engine.objectives}
    picked = scale_pairs(n_pairs)
    t0, done = time.perf_counter(), 0
    for t in picked:
        v0, fixed0 = read(t)
        delta = read(t + 1)[0] - v0  # (D,) float64
        for s, obj in engine.objectives.items():
            if stop is not None and stop.is_set():
                return None
            grad = obj.value_and_grad(v0, fixed0)[1]  # (D,) float64
            norm = float(torch.linalg.vector_norm(delta * grad, 1))
            if np.isfinite(norm):  # a diverged checkpoint is the pair loop's to report, in one line
                norms[s].append(norm)
            done += 1
            if note is not None and done == 1:
                rest = (time.perf_counter() - t0) * (len(picked) * len(norms) - 1)
                if rest > SLOW_SCALE_SECONDS:
                    note(
                        f"measuring the run scale of --l1-tol on {len(picked)} pair(s) ({len(picked) * len(norms)} "
                        f"gradients, about {rest:.0f} s more; once per store, --l1-scope pair skips it)"
                    )
    return {s: SCALE_FRACTION * float(np.mean(v)) if v else 0.0 for s, v in norms.items()}


def l1_scales_of(store: LcaStore, scope: str) -> dict[str, float]:
    """The run scales a store recorded (``l1_scope="run"``), per set; empty for ``"pair"``.

    Raises:
        StoreError: If the store's settings say ``"run"`` and it holds no scale.

    """
    if scope != "run":
        return {}
    recorded = store.attrs.get("l1_scale")
    if not isinstance(recorded, dict) or set(recorded) != set(store.sets):
        raise StoreError(
            f"{store.path} was made with --l1-scope run but records no run scale (l1_scale): recompute it with "
            "--overwrite, or pass --l1-scope pair to a new store"
        )
    return {str(k): float(v) for k, v in recorded.items()}


@dataclass(frozen=True)
class ComputeResult:
    """What a ``compute`` call did.

    Attributes:
        store: Store path.
        n_pairs: Pairs in the store (T).
        computed: Pairs computed by this call (every rank of a ``torchrun`` job, on rank 0; this process else).
        skipped: Pairs already done before this call.
        flagged: Per set, the steps (start of the pair) still over tolerance at the cap.
        max_abs_residual: Per set, the largest |residual| over all done pairs.
        seconds: Wall time of the pair loop.
        device: Device used.
        interrupted: True when stopped early (Ctrl-C, SIGTERM, SIGHUP); finished rows are saved.
        repaired: Damaged rows marked for recomputation (``repair``), summed over sets.
        processes: Processes of this call (the ``torchrun`` job's size; 1 otherwise).
        by_others: Pairs in this call's scope that other processes (``--cooperate``, shards) finished meanwhile.
        role: ``"owner"`` (held the store lock), or ``"helper"`` (computed into another process's store).
        pruned: Checkpoints deleted by ``--prune``.
        ended: Why ``--follow`` stopped following (None without it).
        scope: The pairs this call was responsible for (``--steps``, ``--shard``).
        accuracy: Per set, conservation, flags (all, and this call's) and the worst flagged pair.
        settings: The resolved result settings the store holds (method, refine, tolerances, dtype, ...), and
            ``l1_scale`` per set with ``l1_scope="run"``.
        threads: torch's intra-op thread count at the end (chosen by measurement with ``--threads auto``).

    """

    store: Path
    n_pairs: int
    computed: int
    skipped: int
    flagged: dict[str, list[int]]
    max_abs_residual: dict[str, float]
    seconds: float
    device: str
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


@dataclass(frozen=True)
class Schedule:
    """How a ``compute`` call shares the work and follows the run (none of it changes a store's numbers).

    Attributes:
        scope: The pairs to compute (``--steps``, ``--shard``).
        cooperate: When another live ``lca compute`` holds the store, compute the chunks it has not claimed
            instead of refusing (exit 9). Implied by a shard.
        follow: Keep computing pairs as checkpoints arrive (:mod:`lca_cli.computation.follow`).
        until: With ``follow``: stop once the pairs starting before this step are done.
        idle_timeout: With ``follow``: stop after this many seconds without a new checkpoint.
        prune: Delete checkpoints once every pair needing them is stored (never the newest).
        settle: With ``follow``: seconds a checkpoint's files (other than a flat ``.safetensors``) must be
            unchanged before it is used.
        poll: Seconds between looks while waiting (for checkpoints, for other processes' chunks).

    """

    scope: Scope = field(default_factory=Scope)
    cooperate: bool = False
    follow: bool = False
    until: int | None = None
    idle_timeout: float = IDLE_TIMEOUT_SECONDS
    prune: bool = False
    settle: float = SETTLE_SECONDS
    poll: float = POLL_SECONDS

    def check(self, *, overwrite: bool, repair: bool, team: Team | None) -> None:
        """Refuse combinations that cannot work, in one line.

        Raises:
            UsageError: For ``--follow`` with several processes or a shard, or options of ``--follow``
                without it.

        """
        if not self.follow and (self.until is not None or self.idle_timeout != IDLE_TIMEOUT_SECONDS):
            raise UsageError("--until and --idle-timeout go with --follow")
        if self.follow and (team is not None or self.scope.shards > 1 or self.cooperate):
            raise UsageError("--follow runs in one process: drop torchrun, --shard and --cooperate")
        if self.follow and (overwrite or repair):
            raise UsageError("--follow computes into the store as it is: drop --overwrite / --repair")
        if self.idle_timeout <= 0:
            raise UsageError(f"--idle-timeout {self.idle_timeout:g}: must be > 0 seconds")

    @property
    def joins(self) -> bool:
        """Whether a busy store is joined rather than refused."""
        return self.cooperate or self.scope.shards > 1


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


class _BlockBuffers:
    """Reusable float32 block arrays: taken by ``run_block``, given back by the writer once written.

    A fresh multi-MiB array per block makes the allocator keep several freed ones around (measured: peak RSS
    +60 MiB after 300 MNIST-FC pairs with 16 MiB chunks, against +4 MiB when arrays are reused), so peak memory
    would grow with the run's length for a while; with reuse it is a fixed few blocks.
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, rows: int, cols: int) -> np.ndarray:
        with self._lock:
            for i, a in enumerate(self._free):
                if a.shape[0] >= rows and a.shape[1] == cols:
                    return self._free.pop(i)
        return np.empty((rows, cols), dtype=np.float32)

    def give(self, array: np.ndarray) -> None:
        base = array.base if isinstance(array.base, np.ndarray) else array
        with self._lock:
            if len(self._free) < 8:  # two blocks per set in use at most (see _Writer); a bound all the same
                self._free.append(base)


class _Writer:
    """Writes finished rows to the store from a background thread, in submission order.

    ``submit`` first waits until the previous piece is written, so at most two blocks are in memory: the one
    being written and the one being computed (the write, ~0.1 s, overlaps the next block's pairs, seconds).
    ``before`` runs before each write (the lock and claim checks) and ``after`` after it (the swap of a new
    store into place, the ``updated`` attribute); a piece's own ``then`` runs once it is written (releasing a
    chunk's claim, pruning). After a failed write nothing more is written; the error is raised by the next
    ``submit`` or by ``close``.
    """

    def __init__(
        self,
        store: LcaStore,
        buffers: _BlockBuffers | None = None,
        before: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.buffers = buffers
        self.before = before
        self.after = after
        self._q: queue.Queue[tuple[dict[str, BlockRows], list[np.ndarray], Callable[[], None] | None] | None] = (
            queue.Queue(maxsize=1)
        )
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lca-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                rows, release, then = item
                if self._error is None and rows:
                    if self.before is not None:
                        self.before()
                    for s, block in rows.items():
                        self.store.write_block(s, block)
                    if self.after is not None:
                        self.after()
                if self._error is None and then is not None:
                    then()
                if self.buffers is not None:
                    for array in release:
                        self.buffers.give(array)
            except BaseException as exc:  # surfaced in the main thread by submit/close
                self._error = exc
            finally:
                self._q.task_done()

    def submit(
        self, rows: dict[str, BlockRows], release: Sequence[np.ndarray] = (), then: Callable[[], None] | None = None
    ) -> None:
        """Queue rows to write (buffers to give back and ``then`` to call once written); raise an earlier error.

        Rows wait until the previous piece is written (at most two blocks in memory). A bare ``then`` holds no
        memory and is queued at once behind what is queued: waiting there would stop the pair loop until the
        block just submitted is written (an 8 MiB durable write per chunk on a small evaluation set).
        """
        if rows or release:
            self._q.join()  # the previous piece is written
        if self._error is not None:
            raise self._error
        if rows or release or then is not None:
            self._q.put((rows, list(release), then))

    def drain(self) -> None:
        """Wait until everything submitted is written; raise a write's error."""
        self._q.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Write what is queued, stop the thread, raise a write's error."""
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def _threads(n: int | str) -> Iterator[None]:
    # torch's intra-op thread count is process-global: set it for this call only ("auto" is set later, by
    # _choose_threads, inside this context).
    old = torch.get_num_threads()
    if isinstance(n, int) and n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _choose_threads(
    engine: PairEngine, threads: int | str, note: NoteFn, local_processes: int = 1
) -> ThreadTuner | None:
    """``--threads auto`` on CPU: time one evaluation chunk at one thread and at every usable core.

    With ``local_processes`` processes of one ``torchrun`` job on this machine, each one's share of the cores
    stands for "every usable core" (so the ranks do not oversubscribe the machine).

    Returns the tuner (for re-checks when pairs slow down), or None when the count is fixed: an explicit
    ``--threads``, a CUDA device (CPU threads do not carry the work there) or ``OMP_NUM_THREADS`` set by the user.
    """
    if threads != "auto" or engine.device.type != "cpu":
        return None
    if os.environ.get("OMP_NUM_THREADS"):
        note(f"threads: {torch.get_num_threads()} (OMP_NUM_THREADS)")
        return None
    obj = next(iter(engine.objectives.values()))
    head = obj.head(1)
    model_state = {k: t.detach().cpu() for k, t in obj.model.state_dict().items()}
    v, fixed = split_state(model_state, engine.vlayout, engine.device)
    cores = max(1, usable_cores() // max(1, local_processes))
    tuner = ThreadTuner(lambda: head.value_and_grad(v, fixed), sorted({1, cores}), note)
    tuner.choose()
    return tuner


def _auto_dtype(
    refs: Sequence[CheckpointRef], out: Path, overwrite: bool, unsafe_pickle: bool, state_dict_key: str | None
) -> str:
    """What ``--dtype auto`` means for this run: the checkpoints' dtype (:func:`checkpoint_dtype`).

    Read from the newest checkpoint: ``--prune`` and keep-last-N rotation delete the oldest ones, maybe while this
    call starts beside a running one (which it must then meet at the store's lock, exit 9, not at a checkpoint
    that vanished, exit 5). With no checkpoint left to read (rotation beside a finished store), the dtype the
    store was made with.
    """
    if refs:
        return checkpoint_dtype(read_checkpoint(refs[-1], unsafe_pickle, state_dict_key))
    if not overwrite and inspect_path(out, deep=False).kind == "store":
        dtype = LcaStore.open(out).attrs.get("identity", {}).get("compute", {}).get("dtype")
        if dtype in ("float32", "float64"):
            return str(dtype)
    return "float32"


@contextlib.contextmanager
def _tf32(allow: bool) -> Iterator[None]:
    # cuDNN convolutions default to TF32 on Ampere+; LCA wants strict fp32 unless asked.
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _store_attrs(
    config: Config,
    details: dict[str, Any],
    device: torch.device,
    tied: Mapping[str, str] | None = None,
    l1_scales: Mapping[str, float] | None = None,
    loss_rounding: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Attributes of a new store: the settings, evaluation details and run scales its numbers depend on."""
    opts = config.compute
    scale = {"l1_scale": dict(l1_scales), "l1_scale_pairs": SCALE_PAIRS} if l1_scales is not None else {}
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
) -> ComputeResult:
    """Compute (or resume, or extend, or repair) the LCA store of a run.

    Under ``torchrun`` with several processes every rank calls this; rank 0 prepares the store and reports, and
    the ranks share the work by claiming chunks (:mod:`lca_cli.computation.distributed`). Several independent calls
    share a store the same way when they may (``schedule.cooperate``, a shard).

    Args:
        run_dir: Directory of checkpoints (any layout :mod:`lca_cli.sources` finds).
        config: Resolved config (``config.compute`` holds the options).
        out: Store path (default ``RUN_DIR/lca.zarr``).
        overwrite: Replace an existing lca store (swapped in once the new one has its first rows).
        repair: Verify every chunk's checksum first and recompute the rows of damaged chunks.
        progress: Called after every pair with ``(done, total)`` for this call, or a :class:`ProgressReporter`.
        stop: When set (Ctrl-C, SIGTERM, SIGHUP), finish the current pair (abandon it after
            :data:`STOP_GRACE_SECONDS`), save finished rows and return.
        flush_seconds: Write a block's finished rows at least this often.
        durable: fsync rows before marking them done (off only for benchmarks of the loop).
        unsafe_pickle: Allow torch checkpoints that need pickle (``--unsafe-pickle``; trusted files only).
        note: Receives one-line notes: where checkpoints were found, a nested entry or prefix used, a missing
            step 0, why following ended.
        schedule: Which pairs, with whom, and whether to follow the run (default: every pair, alone).

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
    job = _Compute(
        Path(run_dir), config, out, overwrite, repair, progress, stop if stop is not None else threading.Event(),
        flush_seconds, durable, unsafe_pickle, note, schedule, team,
    )  # fmt: skip
    if team is not None:
        team.start()
    try:
        return job.run()
    finally:
        if team is not None:
            team.close()


def _failure(exc: BaseException) -> dict[str, Any]:
    """A failure as rank 0 broadcasts it to the other ranks of a ``torchrun`` job."""
    code = getattr(exc, "exit_code", EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else EXIT_INTERNAL)
    return {"ok": False, "code": int(code), "message": str(exc) or type(exc).__name__}


class _Compute:
    """One ``compute`` call: set-up, the store (owned or joined), the pair loop over claimed chunks, the end."""

    def __init__(
        self,
        run: Path,
        config: Config,
        out: str | Path | None,
        overwrite: bool,
        repair: bool,
        progress: ProgressFn | ProgressReporter | None,
        stop: threading.Event,
        flush_seconds: float,
        durable: bool,
        unsafe_pickle: bool,
        note: NoteFn | None,
        schedule: Schedule,
        team: Team | None,
    ) -> None:
        self.run_dir = run
        self.config = config
        self.out = Path(out) if out is not None else run / "lca.zarr"
        self.overwrite, self.repair = overwrite, repair
        self.progress, self.stop = progress, stop
        self.flush_seconds, self.durable, self.unsafe_pickle = flush_seconds, durable, unsafe_pickle
        self.schedule, self.team = schedule, team
        self.lead = team is None or team.rank == 0
        # Other ranks of a torchrun job are quiet: rank 0 says what is to be said.
        self.say: NoteFn = (note if self.lead else None) or (lambda message: None)
        self.board = Board(self.out)
        self.follower: Follower | None = None
        self.role = "owner"
        self.target: Target | None = None
        self.device = torch.device("cpu")
        self.token = ""  # the owner's lock token (what the ready marker names)
        self.job = ""  # a torchrun job's id (its abort marker)

    # -- set-up -----------------------------------------------------------------------------------------

    def _discover(self) -> list[CheckpointRef]:
        run, sch = self.run_dir, self.schedule
        found_notes: list[str] = []
        if sch.follow:
            self.follower = Follower(
                run, until=sch.until, idle_timeout=sch.idle_timeout, stop=self.stop, unsafe_pickle=self.unsafe_pickle,
                settle=sch.settle, poll=sch.poll, notes=self.say,
            )  # fmt: skip
            refs = self.follower.wait_for_start()
        else:
            refs = find_checkpoints(run, unsafe_pickle=self.unsafe_pickle, notes=found_notes)
        # Rotation may leave fewer than two checkpoints beside a store whose rows are all done: no error then.
        if len(refs) < 2 and (self.overwrite or inspect_path(self.out, deep=False).kind != "store"):
            raise RunDirError(
                f"{run} holds {len(refs)} checkpoint(s); LCA needs at least two, one per iteration ("
                f"{describe_folder(run)}; checkpoints are *.safetensors/*.pt/*.pth/*.bin/*.ckpt files with the step "
                "in their name or metadata, or checkpoint-N/ step_N/ folders holding model.safetensors or "
                "pytorch_model.bin)"
            )
        for message in found_notes:
            self.say(message)
        if refs and refs[0].step != 0 and inspect_path(self.out, deep=False).kind != "store":
            self.say(
                f"the first checkpoint is step {refs[0].step}: the iterations before it are not in the store (save "
                "the initial weights as step 0; the lca callbacks for Hugging Face and Lightning do)"
            )
        gaps = step_gaps([r.step for r in refs])
        if gaps and inspect_path(self.out, deep=False).kind != "store":
            a, b = gaps[0]
            more = f" and {len(gaps) - 1} more" if len(gaps) > 1 else ""
            self.say(
                f"steps {a} -> {b}{more} span more iterations than the run's other pairs: checkpoints missing? Such a "
                "pair's row is the LCA of every iteration between its checkpoints"
            )
        return refs

    def run(self) -> ComputeResult:
        """Do it (see :func:`compute`)."""
        deferred: BaseException | None = None  # a rank other than 0 reports its own set-up error after rank 0's
        refs: list[CheckpointRef] = []
        device = torch.device("cpu")
        try:
            refs = self._discover()
            device = resolve_device(self.config.compute.device, self.team)
        except BaseException as exc:
            if self.lead:
                self._share_failure(exc)
                raise
            deferred = exc
        # Concrete dtype and tolerances: they are what the store records and a resume must match. dtype "auto" is
        # the checkpoints' own dtype (every rank reads the same first checkpoint).
        ckpt_dtype = "float32"
        if self.config.compute.dtype == "auto" and deferred is None:
            try:
                ckpt_dtype = _auto_dtype(
                    refs, self.out, self.overwrite, self.unsafe_pickle, self.config.compute.state_dict_key or None
                )
            except BaseException as exc:
                if self.lead:
                    self._share_failure(exc)
                    raise
                deferred = exc
        opts = self.config.compute.resolved(device.type, ckpt_dtype)
        self.config = dataclasses.replace(self.config, compute=opts)
        self.device = device
        # The config's folder stays on the import path while factories run and while the model runs (a factory or
        # a forward may import lazily), wherever lca is run from.
        with _tf32(opts.allow_tf32), _threads(opts.threads), import_path(self.config.base_dir):
            try:
                return self._run(refs, deferred)
            finally:
                if self.target is not None and self.target.lock is not None:
                    self.board.withdraw(self.token)  # no helper may join once the owner leaves
                self.board.close(self.job)
                if self.target is not None:
                    self.target.close()

    def _share_failure(self, exc: BaseException) -> None:
        if self.team is not None and self.lead:
            self.team.share(_failure(exc))

    def _run(self, refs: list[CheckpointRef], deferred: BaseException | None) -> ComputeResult:
        if deferred is None:
            try:
                self._build(refs)
                if self.lead and self._open(refs) is None:
                    self._share_failure(Interrupted(EXIT_INTERRUPTED))
                    return self._stopped_early()
            except BaseException as exc:
                if self.lead:
                    self._share_failure(exc)
                    raise
                deferred = exc
        if self.team is not None:
            # A new store that replaces an old one is swapped into place at rank 0's first write: the other ranks
            # wait for its ready marker then; otherwise the store is ready now.
            pending = self.target is not None and self.target.pending is not None
            status = self.team.share(
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
                    if self._join_team(refs, str(status["token"]), bool(status["pending"])) is None:
                        return self._stopped_early()
                except BaseException as exc:
                    self._abort(exc)
                    raise
            self.job = str(status["job"])
        try:
            return self._work()
        except BaseException as exc:
            self._abort(exc)
            raise

    def _abort(self, exc: BaseException) -> None:
        """Tell the other ranks of a torchrun job to stop (this one failed)."""
        if self.team is not None and self.job and not isinstance(exc, PeerFailed):
            f = _failure(exc)
            self.board.abort(self.job, self.team.rank, f["code"], f["message"])

    def _build(self, refs: list[CheckpointRef]) -> None:
        opts = self.config.compute
        self.engine, self.details, self.expected = build_engine(self.config, self.device)
        self.source = CheckpointSource(
            self.expected, state_dict_key=opts.state_dict_key or None, unsafe_pickle=self.unsafe_pickle, note=self.say
        )
        if refs and self.lead:
            preflight(self.engine, self._point, refs)

    def _point(self, ref: CheckpointRef) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A checkpoint as the engine's point vector and fixed buffers, on the device."""
        return split_state(self.source.read(ref), self.engine.vlayout, self.device)

    def _stopped_early(self) -> ComputeResult:
        return ComputeResult(self.out, 0, 0, 0, {}, {}, 0.0, str(self.device), interrupted=True, role="helper")

    # -- the store --------------------------------------------------------------------------------------

    def _open(self, refs: list[CheckpointRef]) -> Target | None:
        """Own the store (lock, prepare) or, when allowed and it is busy, join its owner; None when stopped."""
        engine, config = self.engine, self.config
        purpose = "lca compute --follow" if self.schedule.follow else "lca compute"
        if self.stop.is_set():  # a signal during start-up: stop now, nothing created
            return None
        scales: dict[str, float] | None = None
        if config.compute.l1_scope == "run" and (self.overwrite or inspect_path(self.out, deep=False).kind != "store"):
            # A new store: its run scale is measured now, from the checkpoints on disk, and recorded in it.
            scales = measure_l1_scales(engine, lambda i: self._point(refs[i]), len(refs) - 1, self.say, self.stop)
            if scales is None:
                return None
            if len(refs) - 1 < SCALE_PAIRS:
                self.say(
                    f"the run scale of --l1-tol (--l1-scope run) is measured over the {len(refs) - 1} pair(s) on "
                    "disk and kept by every append; if the run will grow far beyond them, pass --l1-scope pair to "
                    "hold every pair to its own row"
                )
        while True:
            try:
                target = prepare(
                    self.out, self.run_dir, refs, identity=config.identity(), layout=engine.layout,
                    sets=list(engine.objectives), attrs=_store_attrs(config, self.details, self.device,
                    self.expected.aliases, scales, {s: o.loss_rounding for s, o in engine.objectives.items()}),
                    rows_per_chunk=config.compute.rows_per_chunk,
                    overwrite=self.overwrite, repair=self.repair, device=str(self.device), durable=self.durable,
                    columns=None if engine.columns is None else engine.columns.columns, busy=self.board.busy,
                    purpose=purpose,
                )  # fmt: skip
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
                return self._open_helper(refs, token)
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

    def _open_helper(self, refs: list[CheckpointRef], token: str) -> Target:
        engine = self.engine
        target = open_helper(
            self.out, self.run_dir, refs, identity=self.config.identity(), layout=engine.layout,
            sets=list(engine.objectives), durable=self.durable,
        )  # fmt: skip
        self.target, self.role, self.token = target, "helper", token
        return target

    def _join_team(self, refs: list[CheckpointRef], token: str, pending: bool) -> Target | None:
        """A rank other than 0: compute into rank 0's store as a helper (once it is in place, when ``pending``)."""
        if pending and self._wait_ready(token, team=True) is None:
            return None
        return self._open_helper(refs, token)

    # -- the pair loop ----------------------------------------------------------------------------------

    def _queue(self, scope: Scope, first: bool) -> ChunkQueue:
        team = self.team
        assert self.target is not None
        return ChunkQueue(
            self.target.store, self.board, scope, wait=self.role == "owner" or team is not None,
            start=(team.rank, team.size) if team is not None and first else None, stop=self.stop,
            idle=self._idle, poll=self.schedule.poll,
        )  # fmt: skip

    def _idle(self) -> None:
        if self._reporter is not None:
            self._reporter.update(self._info())

    def _info(self) -> ProgressInfo:
        c = self._counts
        # Pairs other processes finished count too (the queue's view of done rows includes this one's).
        done = c["done"] + max(0, self._queue_now.done_now - self._queue_now.done_at_start - c["done"])
        # Gradients of the others' pairs are not known here: this process's own rate stands for them.
        gradients = round(c["gradients"] * done / c["done"]) if c["done"] else 0
        return ProgressInfo(
            done, c["total"], self._skipped, gradients, c["flagged"],
            time.perf_counter() - self._t0, self.out if self.target is None else self.target.out, str(self.device),
        )  # fmt: skip

    def _work(self) -> ComputeResult:
        target, engine, sch = self.target, self.engine, self.schedule
        assert target is not None
        store = target.store
        # The run scale every row is held to, as the store recorded it when it was made (owner and helpers alike).
        engine.l1_scales = l1_scales_of(store, self.config.compute.l1_scope)
        if engine.columns is not None:
            # Neuron or tensor columns are summed as the store recorded them when it was made: a store made before
            # the units' axes were recorded (GPT-2's Conv1D weights summed by input row) keeps its columns.
            engine.columns = ColumnReducer(store.columns, store.layout)
        self._reporter = self.progress if isinstance(self.progress, ProgressReporter) else None
        scope = sch.scope if sch.until is None else dataclasses.replace(sch.scope, stop=sch.until)
        self._skipped = int(store.done().sum())
        self._counts = {"done": 0, "gradients": 0, "flagged": 0, "total": 0}
        self._mine: list[range] = []  # rows this process computed (--strict judges this call's pairs)
        self._t0 = time.perf_counter()
        pruner = Pruner(store, target.alignment, self.say) if sch.prune and self.role == "owner" else None
        interrupted = failed = False
        ended: str | None = None
        watcher = _AbortWatcher(self.board, self.job, self.stop, sch.poll) if self.team is not None else None

        tuner: ThreadTuner | None = None
        last_pair = 0.0

        def tick(gradients: int, flagged: int) -> None:
            nonlocal last_pair
            c = self._counts
            c["done"] += 1
            c["gradients"] += gradients
            c["flagged"] += flagged
            if tuner is not None:  # seconds per gradient of this pair: a sudden slowdown re-checks the threads
                tuner.observe(time.perf_counter() - last_pair, gradients)
                last_pair = time.perf_counter()
            if self._reporter is not None:
                self._reporter.update(self._info())
            elif self.progress is not None:
                self.progress(c["done"], c["total"])  # type: ignore[operator]

        def before() -> None:
            target.before_write()
            self.board.check()

        def after() -> None:
            pending = target.pending
            target.after_write()
            if pending is not None and target.pending is None and target.lock is not None:
                self.board.publish(self.token, accepts=not sch.follow)  # the new store is in place: helpers may come

        def written(chunk: int, rows: list[range]) -> None:  # in the writer thread, once they are durable
            self.board.release(chunk)
            if pruner is not None:
                pruner.written(rows)

        queue = self._queue_now = self._queue(scope, first=True)
        self._counts["total"] = queue.total - queue.done_at_start
        steps = store.steps
        if (
            queue.total == 0
            and (scope.start is not None or scope.stop is not None)
            and len(steps) > 1
            and not sch.follow
        ):
            lo = "" if scope.start is None else scope.start
            hi = "" if scope.stop is None else scope.stop
            self.say(
                f"--steps {lo}:{hi} holds no pair of this run (its pairs start at steps {int(steps[0])}.."
                f"{int(steps[-2])}): nothing to compute"
            )
        if self._counts["total"] and not target.read_only:
            local = self.team.local_size if self.team is not None else 1
            tuner = _choose_threads(engine, self.config.compute.threads, self.say, local)
        last_pair = time.perf_counter()
        if self._reporter is not None:
            self._reporter.start(self._info())
        try:
            if not target.read_only:
                loader = CheckpointLoader(target.alignment.refs, self.expected, engine.vlayout, self.device,
                                          read=self.source.read)  # fmt: skip
                buffers = _BlockBuffers()
                writer = _Writer(store, buffers, before, after)
                cache: _Cache | None = None
                try:
                    while True:
                        after_chunk: int | None = None
                        while (item := queue.next(after_chunk)) is not None:
                            last_pair = time.perf_counter()  # a wait for a chunk or a checkpoint is not a slow pair
                            rows: list[range] = []
                            for block in item.blocks:
                                n, cache = engine.run_block(
                                    block, loader, target.alignment.steps, cache, tick, self.stop, buffers.take,
                                    writer.submit, self.flush_seconds,
                                )  # fmt: skip
                                rows.append(range(block.start, block.start + n))
                                self._mine.append(rows[-1])
                                queue.mark(rows[-1])
                                if self.stop.is_set():
                                    break
                            writer.submit({}, (), then=functools.partial(written, item.chunk, rows))
                            after_chunk = item.chunk
                            if self.stop.is_set():
                                break
                        if self.stop.is_set():
                            interrupted = True
                            break
                        if self.follower is None:
                            break
                        writer.drain()  # (pruning happened as each chunk was written)
                        # Nobody else computes into a followed store: this process's view of done rows is exact.
                        more = self.follower.wait_for_more(target.alignment.steps, lambda: queue.done | ~queue.in_scope)
                        if isinstance(more, str):
                            interrupted = more == "stopped"
                            ended = None if interrupted else more
                            break
                        target.refresh(more, self.run_dir)
                        loader.set_refs(target.alignment.refs)
                        if pruner is not None:
                            pruner.update(target.alignment)
                        queue.extend()
                        self._counts["total"] = queue.total - queue.done_at_start
                finally:
                    loader.close()
                    writer.close()
            if pruner is not None and not interrupted:
                pruner.prune()
        except BaseException:
            failed = True
            raise
        finally:
            seconds = time.perf_counter() - self._t0
            self._threads_used = torch.get_num_threads()
            if watcher is not None:
                watcher.close()
            if self._reporter is not None:
                self._reporter.finish(dataclasses.replace(self._info(), failed=failed))
        return self._finish(interrupted, seconds, pruner, ended)

    # -- the end ----------------------------------------------------------------------------------------

    def _finish(self, interrupted: bool, seconds: float, pruner: Pruner | None, ended: str | None) -> ComputeResult:
        target, team = self.target, self.team
        assert target is not None
        store = target.store
        if team is not None and self.job:
            failed = self.board.aborted(self.job)
            if failed is not None and failed.get("rank") != team.rank:
                raise PeerFailed(
                    f"rank {failed.get('rank')} failed ({failed.get('message')}); every rank stopped after its "
                    f"current pair and finished rows are kept: fix the cause and rerun the same command",
                    int(failed.get("code", 1)),
                )
        computed = self._counts["done"]
        processes = 1
        mine = [(r.start, r.stop) for r in self._mine]
        if team is not None and not interrupted:
            everyone = team.gather({"computed": computed, "rows": mine})
            computed = sum(int(r["computed"]) for r in everyone) if self.lead else computed
            if self.lead:  # this call's pairs are the job's
                mine = [tuple(r) for e in everyone for r in e["rows"]]
            processes = team.size
        # Consolidated metadata (one read for xarray and other readers), written only when this compute is
        # done and changed the store: any change (a write, an append) dropped it, so it is never trusted
        # while one runs. A finished store on a read-only file system is left as it is; helpers never write
        # metadata.
        if self.role == "owner" and not target.read_only and not store.has_consolidated():
            store.consolidate()
        new = np.zeros(store.n_pairs, dtype=bool)
        for a, b in mine:
            new[a:b] = True
        accuracy = _accuracy(store, new, self.engine.l1_scales)
        max_res = {}
        done_all = store.done()
        for s in store.sets:
            res = store.read(s, "residual")[done_all]
            max_res[s] = float(np.abs(res).max()) if res.size else 0.0
        own = self._counts["done"]
        by_others = max(0, self._queue_now.done_now - self._queue_now.done_at_start - self._counts["done"])
        if team is not None and self.lead:
            by_others = max(0, by_others - (computed - own))
        settings = self.config.compute.result_settings()
        if self.engine.l1_scales:  # the run scale the rows were held to (recorded when the store was made)
            settings["l1_scale"] = dict(self.engine.l1_scales)
        return ComputeResult(
            target.out, store.n_pairs, computed, self._skipped, {s: a.flagged for s, a in accuracy.items()}, max_res,
            seconds, str(self.device), interrupted, sum(len(r) for r in target.repaired.values()), processes,
            by_others, self.role, 0 if pruner is None else pruner.deleted, ended, self.schedule.scope.describe(),
            accuracy, settings, self._threads_used,
        )  # fmt: skip


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


def _accuracy(store: LcaStore, new: np.ndarray, scales: Mapping[str, float]) -> dict[str, SetAccuracy]:
    """Per set, :func:`~lca_cli.core.accuracy.set_accuracy` over the store's done pairs (``new``: this call's).

    ``scales`` are the run scales ``l1_tol`` is also relative to: a row's target norm is the larger of the two.
    """
    done = store.done()
    out = {}
    for s in store.sets:

        def row_l1(t: int, s: str = s) -> float:
            norm = float(np.abs(np.asarray(store.array(s, "lca")[t], dtype=np.float64)).sum())
            return max(norm, scales.get(s, 0.0))

        out[s] = set_accuracy(
            store.steps,
            store.read(s, "loss"),
            store.read(s, "residual"),
            store.read(s, "flagged"),
            store.read(s, "splits"),
            done,
            new & done,
            row_l1,
        )
    return out
