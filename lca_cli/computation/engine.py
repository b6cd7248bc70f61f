"""The pair engine: checkpoint pairs in, LCA rows out, on one device; it knows no store, file or flag.

The work is cut into *blocks*: runs of consecutive pairs that are not done yet, cut at the store's row chunks
(:func:`plan_blocks`). A block depends only on its own checkpoints and writes only its own rows; inside one
process blocks run in order and the end gradient of one block is reused as the start of the next when they
are contiguous. Checkpoints are read ahead in a background thread (:class:`CheckpointLoader`), so that the
two gradients per pair dominate the time. Finished rows are handed to an ``emit`` callback every
``flush_seconds`` and when a block ends, early or not (:mod:`lca_cli.computation.writer` writes them).

Memory is bounded by a few point vectors, the gradients and rows of the integrator, two blocks of float32 rows
and the evaluation set: never all checkpoints, never all rows. :data:`MEMORY_BUDGET` lists every parameter-sized
buffer; parameter-sized work vectors come from one :class:`~lca_cli.core.vectors.BufferPool`, so that no pair and
no gradient allocates (and page-faults in) a fresh one.

For benchmarks of the loop alone, :func:`preload_points` and :func:`run_pairs` run every pair of a run with
nothing read during the loop and nothing written.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from lca_cli.computation.config import Config, build_model, call_factory, config_loss
from lca_cli.computation.reuse import ProbeReuse
from lca_cli.core.columns import Columns
from lca_cli.core.evalset import EvalSet, make_chunks
from lca_cli.core.integrate import JUMP_FACTOR, Evaluation, PairResult, integrate_pair
from lca_cli.core.layout import Layout
from lca_cli.core.model import bind_parameters, interpolated_buffer_names, prepare_model
from lca_cli.core.objective import SCRATCH, Objective
from lca_cli.core.vectors import BufferPool, ColumnReducer, split_state, sum64
from lca_cli.sources import CheckpointRef, CheckpointSource, ModelSpec, check_state_dict, read_checkpoint
from lca_cli.store.lcastore import BlockRows

__all__ = [
    "FLUSH_SECONDS",
    "MEMORY_BUDGET",
    "READ_AHEAD",
    "READ_AHEAD_BYTES",
    "STOP_GRACE_SECONDS",
    "CheckpointLoader",
    "PairEngine",
    "Point",
    "Points",
    "build_engine",
    "plan_blocks",
    "preflight",
    "preload_points",
    "run_pairs",
]

#: A block's finished rows are emitted at least this often, so a long run's rows show up in the store.
FLUSH_SECONDS = 30.0
#: After a stop request (Ctrl-C, SIGTERM, SIGHUP), a pair still running this much later is abandoned (it is
#: recomputed by the next run), so that stopping fits in a scheduler's grace period even for a large model.
STOP_GRACE_SECONDS = 5.0
#: Checkpoints read ahead of the one in use, by default, within :data:`READ_AHEAD_BYTES`.
READ_AHEAD = 2
#: Point vectors read ahead hold at most this many bytes (at least one is always read ahead, so that reading
#: overlaps the gradients; one is enough wherever a pair takes longer than a read): two for small models, one
#: from about 8M float32 parameters up.
READ_AHEAD_BYTES = 64 << 20

#: Every parameter-sized buffer of the pair loop, in bytes per parameter (``D = P + B``), float32 checkpoints and
#: network: ``a`` is the accumulation dtype's size (4 or 8), ``k`` the gradients a pair holds at once (3 for plain
#: Simpson, 2 more per level of refinement depth). README.md, *What it costs*, gives the measured totals.
MEMORY_BUDGET = {
    "checkpoints v0, v1 (point vectors in the checkpoints' dtype, float32 or float64)": "2 x 4",
    "read-ahead (READ_AHEAD_BYTES: one point vector from 8M parameters up), the checkpoint being read": "4 + 4",
    "delta = v1 - v0 (accumulation dtype)": "a",
    "the point v0 + s delta, in the network's dtype (the model's own parameters point into it)": "4",
    "gradients held by the integrator (pooled, accumulation dtype)": "k x a",
    "gradients autograd returns for one evaluation chunk (as in any backward pass)": "4",
    "the running row and the panel temporaries (pooled, accumulation dtype)": "2-3 x a",
    "the stored float32 row: the block being computed and the block being written": "2 x 4 x rows per block / P",
    "the survey's gradients kept for the loop (ProbeReuse), until their pair is computed": "reuse.REUSE_BYTES at most",
}

#: A checkpoint as the engine uses it: the point vector ``(P + B,)`` and the fixed (not interpolated) tensors.
Point = tuple[torch.Tensor, dict[str, torch.Tensor]]


class Points(Protocol):
    """What the pair loop reads checkpoints from: :class:`CheckpointLoader`, or preloaded points."""

    def get(self, i: int) -> Point:
        """The point of checkpoint ``i`` on the compute device."""
        ...


class _Abandoned(Exception):
    """A stop request outlived :data:`STOP_GRACE_SECONDS` inside a pair: drop the pair, keep the rest."""


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
        ahead: How many checkpoints to read ahead (0: each one when it is needed, for benchmarks of the overlap).
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
        ahead: int = READ_AHEAD,
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
        self._futures: dict[int, Future[Point]] = {}
        self._point_bytes = 0  # of the last point read: read-ahead is bounded in bytes (READ_AHEAD_BYTES)
        self._host = BufferPool()  # point vectors the pair loop let go, refilled (used by the reader thread only)

    @property
    def window(self) -> int:
        """Checkpoints read ahead now: ``ahead``, cut to :data:`READ_AHEAD_BYTES` (at least one when ``ahead``)."""
        if self.ahead <= 0:
            return 0
        size = self._point_bytes or 4 * self.vlayout.size  # float32 until the first point says otherwise
        return max(1, min(self.ahead, READ_AHEAD_BYTES // size))

    def _load(self, i: int) -> Point:
        ref = self.refs[i]
        assert ref is not None, "a pair to compute lost a checkpoint (lca_cli.computation.opening checks this)"
        if self.read is not None:
            state = self.read(ref)
        else:
            state = read_checkpoint(ref)
            check_state_dict(state, self.expected, ref.path)
        # On CUDA, split_state flattens into pinned memory and copies asynchronously (this thread's queue).
        v, fixed = split_state(state, self.vlayout, self.device, self._host)
        del state  # the checkpoint as read: gone before the point is handed over
        self._point_bytes = v.nbytes + sum(t.nbytes for t in fixed.values())
        return v, fixed

    def get(self, i: int) -> Point:
        """Point vector and fixed tensors of checkpoint ``i``; schedules the next ones.

        Args:
            i: Checkpoint index.

        Returns:
            ``(v, fixed)`` on the compute device.

        """
        ahead = self.window
        for j in range(i, min(len(self.refs), i + 1 + ahead)):
            if j not in self._futures and (j == i or self.refs[j] is not None):  # None: deleted (rotation)
                self._futures[j] = self._pool.submit(self._load, j)
        # Only the window ahead of i is kept: a process that moves on to a chunk elsewhere (claims) drops the rest.
        for j in [j for j in self._futures if j < i or j > i + ahead]:
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


class _StopClock:
    """Ends a pair that is still running :data:`STOP_GRACE_SECONDS` after a stop request."""

    def __init__(self, stop: threading.Event | None) -> None:
        self.stop = stop
        self._seen: float | None = None

    def check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            if self._seen is None:
                self._seen = time.monotonic()
            elif time.monotonic() - self._seen >= STOP_GRACE_SECONDS:
                raise _Abandoned

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()


class _BlockRows:
    """The rows of one block as its pairs finish: host buffers, per-pair values, what was already emitted."""

    _KEYS = ("loss", "residual", "splits", "flagged", "l1", "tensor", "buffer")

    def __init__(
        self,
        engine: PairEngine,
        block: range,
        buffers: Callable[[int, int], np.ndarray] | None,
        emit: Callable[[dict[str, BlockRows], list[np.ndarray]], None] | None,
    ) -> None:
        alloc = buffers or (lambda rows, cols: np.empty((rows, cols), dtype=np.float32))
        names = list(engine.objectives)
        self.engine, self.start, self.emit = engine, block.start, emit
        # Per pair, the float32 row goes straight into the block's host buffer (the array the writer gets: one
        # copy of the block in memory, so peak memory is a few store chunks whatever the run's length).
        self.bases = {s: alloc(len(block), engine.width) for s in names}
        self.rows32 = {s: self.bases[s][: len(block)] for s in names}
        self.per_pair: dict[str, dict[str, list[Any]]] = {s: {k: [] for k in self._KEYS} for s in names}
        self.count = self.flushed = 0
        self.last_flush = time.monotonic()

    def add(self, i: int, results: list[tuple[str, PairResult]]) -> None:
        """Store pair ``i`` of the block (every set's row at once: an abandoned pair leaves no trace)."""
        n_params = self.engine.layout.size
        for s, res in results:
            lca_p = res.lca[:n_params]  # (P,) parameters; res.lca[n_params:] are the buffers
            reductions = self.engine.tensor_reductions(lca_p)  # (3, K)
            columns = self.engine.columns
            # (C,) stored columns: the parameters themselves, or their neuron / tensor sums.
            row = lca_p if columns is None else columns.apply(lca_p, reductions[0])
            torch.from_numpy(self.rows32[s][i]).copy_(row)
            r = self.per_pair[s]
            r["tensor"].append(reductions)
            r["buffer"].append(sum64(res.lca[n_params:]))
            r["loss"].append(res.loss1)
            r["residual"].append(res.residual)
            r["splits"].append(res.splits)
            r["flagged"].append(res.flagged)
            r["l1"].append(res.l1_change)
        self.count += 1

    def flush(self, final: bool) -> None:
        """Emit the rows finished since the last flush; ``final`` also gives the block's buffers back."""
        a, b = self.flushed, self.count
        out = self._rows(a, b) if b > a else {}
        self.flushed, self.last_flush = b, time.monotonic()
        if self.emit is not None and (out or final):
            self.emit(out, list(self.bases.values()) if final else [])

    def _rows(self, a: int, b: int) -> dict[str, BlockRows]:
        """Rows ``a .. b - 1`` of the block, per set, ready to write."""
        out: dict[str, BlockRows] = {}
        for s, r in self.per_pair.items():
            tensor = torch.stack(r["tensor"][a:b]).cpu()  # (k, 3, K) float64: sums, helped, hurt
            out[s] = BlockRows(
                start=self.start + a,
                lca=self.rows32[s][a:b],
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
        columns: Reduces each row to the store's columns (``granularity``, ``params``); None: one per parameter.
        l1_scales: Per set, the run's scale of ``||lca||_1`` that ``l1_tol`` is also relative to
            (``l1_scope="run"``: :func:`~lca_cli.computation.scale.measure_l1_scales`, read from the store); a set
            absent here: none.
        first_factors: Per set, the local scheme's first-panel factor calibrated on the run (read from the
            store, :mod:`lca_cli.computation.scale`); a set absent here: the fixed ``JUMP_FACTOR``.
        deep_factors: Per set, the deeper panels' factor calibrated on the run; absent: uncalibrated (the fixed
            ``JUMP_FACTOR`` and shares proportional to the width).
        pool: The parameter-sized work vectors of the objectives and the integrator.
        reuse: The survey's probe evaluations, taken by the pairs they belong to.

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
    first_factors: dict[str, float] = field(default_factory=dict)
    deep_factors: dict[str, float] = field(default_factory=dict)
    pool: BufferPool = field(default_factory=BufferPool)
    reuse: ProbeReuse = field(default_factory=ProbeReuse)
    _bounds: list[tuple[int, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Column ranges of the tensors, for per-tensor sums over each block of rows at once.
        self._bounds = [(p.offset, p.stop) for p in self.layout.params]

    @property
    def accumulate(self) -> torch.dtype:
        """The dtype gradients and rows are accumulated in (:mod:`lca_cli.computation.precision` decides it)."""
        return next(iter(self.objectives.values())).accumulate if self.objectives else torch.float64

    @accumulate.setter
    def accumulate(self, dtype: torch.dtype) -> None:
        if dtype != self.accumulate:
            self.pool.clear()  # buffers of the other dtype are not reused: let them go
        for obj in self.objectives.values():
            obj.accumulate = dtype

    @property
    def width(self) -> int:
        """Columns of a stored row: P, or the reduced column count."""
        return self.layout.size if self.columns is None else self.columns.size

    def _at_checkpoint(self, i: int, name: str, v: torch.Tensor, fixed: Mapping[str, Any]) -> tuple[Evaluation, int]:
        """Set ``name``'s evaluation at checkpoint ``i``: the survey's, or a new one; 1 when it was computed."""
        kept = self.reuse.take_checkpoint(i, name, v, self.accumulate)
        return (kept, 0) if kept is not None else (Evaluation(*self.objectives[name].value_and_grad(v, fixed)), 1)

    def run_block(
        self,
        block: range,
        loader: Points,
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
            loader: Checkpoint reader (a :class:`CheckpointLoader`, or preloaded :class:`Points`).
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
        rows = _BlockRows(self, block, buffers, emit)
        clock = _StopClock(stop)
        try:
            if clock.stopped:  # stopped before this block began: no pair starts
                rows.flush(final=True)
                return 0, cache
            grads_start = 0
            if cache is None or cache.index != block.start:
                v0, fixed0 = loader.get(block.start)
                starts = {s: self._at_checkpoint(block.start, s, v0, fixed0) for s in self.objectives}
                grads_start = sum(computed for _, computed in starts.values())
                cache = _Cache(block.start, v0, fixed0, {s: starts.pop(s)[0] for s in list(starts)})  # one holder
            for s in self.objectives:
                rows.per_pair[s]["loss"].append(float(cache.evals[s].loss))
            for i, t in enumerate(block):
                v1, fixed1 = loader.get(t + 1)
                label = f"steps {steps[t]} -> {steps[t + 1]}"
                results, grads, flagged = self._pair(cache, v1, fixed1, clock, label, t)
                rows.add(i, results)
                cache = _Cache(t + 1, v1, fixed1, {s: res.end for s, res in results})
                del results, v1, fixed1  # rows copied out: their vectors go back to the pool before the next pair
                if on_pair is not None:
                    on_pair(grads + grads_start, flagged)
                grads_start = 0
                if clock.stopped:
                    break
                if rows.count < len(block) and time.monotonic() - rows.last_flush >= flush_seconds:
                    rows.flush(final=False)
        except _Abandoned:
            cache = None  # the abandoned pair's end was never reached
        except BaseException:
            rows.flush(final=True)  # the pairs before the failing one are kept
            raise
        rows.flush(final=True)
        return rows.count, cache

    def _pair(
        self, cache: _Cache, v1: torch.Tensor, fixed1: dict[str, torch.Tensor], clock: _StopClock, label: str, t: int
    ) -> tuple[list[tuple[str, PairResult]], int, int]:
        """Pair ``t`` in every set: ``(results per set, gradients computed, 1 if flagged in any set)``."""
        delta = self.delta(cache.v, v1)  # (D,) accumulation dtype
        mark = ProbeReuse.fingerprint(cache.v, delta) if self.reuse.pending(t) else None
        results: list[tuple[str, PairResult]] = []
        grads = flagged = 0
        for s, obj in self.objectives.items():
            calls = [0]
            kept = {} if mark is None else self.reuse.take(t, s, mark)  # a probe pair: the survey's inner points

            def point(
                x: float,
                obj: Objective = obj,
                v0: torch.Tensor = cache.v,
                d: torch.Tensor = delta,
                fx: Any = cache.fixed,
                calls: list[int] = calls,
                kept: dict[float, Evaluation] = kept,
            ) -> Any:
                clock.check()
                if (got := kept.pop(x, None)) is not None:
                    self.reuse.count_used(1)
                    return got.loss, got.grad
                calls[0] += 1
                return obj.value_and_grad_at(v0, d, x, fx)  # v0 + x d written into the point buffer in place

            clock.check()
            end, computed = self._at_checkpoint(t + 1, s, v1, fixed1)
            calls[0] += computed
            res = integrate_pair(
                point,
                delta,
                cache.evals[s],
                end,
                method=self.method,
                refine=self.refine,
                max_splits=self.max_splits,
                tolerance=self.tolerance,
                rtol=self.rtol,
                l1_tol=self.l1_tol,
                l1_scale=self.l1_scales.get(s, 0.0),
                loss_rounding=obj.loss_rounding,  # known once the start and end were evaluated
                label=f"{label} (set {s})",
                first_factor=self.first_factors.get(s, JUMP_FACTOR),
                deep_factor=self.deep_factors.get(s),
                work=self.pool.like,
            )
            kept.clear()  # points the pair did not need (it kept plain Simpson): not held any longer
            results.append((s, res))
            grads += calls[0]
            flagged |= int(bool(res.flagged))
        return results, grads, flagged

    def delta(self, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
        """``v1 - v0`` in the accumulation dtype, in a pooled buffer.

        In float64 it is exact (the points hold float32 or float64 values); in float32 it is rounded once. A
        float32 ``v0`` is widened block by block on CPU: a mixed-dtype subtraction would make a float64 copy of it.
        """
        delta = self.pool.take(v1.numel(), self.accumulate, v1.device)
        if v0.dtype == v1.dtype == delta.dtype:
            return torch.sub(v1, v0, out=delta)
        delta.copy_(v1)  # cast exactly (a float32 point into a float64 difference)
        if v0.dtype == delta.dtype or delta.device.type != "cpu":  # GPU kernels cast on the fly, without a copy
            return delta.sub_(v0)
        scratch = self.pool.take(min(v0.numel(), SCRATCH), delta.dtype, delta.device)
        for a in range(0, v0.numel(), SCRATCH):
            b = min(v0.numel(), a + SCRATCH)
            delta[a:b].sub_(scratch[: b - a].copy_(v0[a:b]))
        return delta

    def tensor_reductions(self, lca_p: torch.Tensor) -> torch.Tensor:
        """``(3, K)`` float64: per-tensor sum of the row, count of entries < 0 and count of entries > 0.

        One sign pass gives both counts: per tensor, ``Σ sign = hurt - helped`` and the nonzero count is
        ``helped + hurt`` (exact in float64 below 2**53). Sums run over each tensor's contiguous slice. About 2.4x
        faster than three comparisons and boolean sums per tensor (0.42 against 1.0 ms for a 301k row).

        Args:
            lca_p: ``(P,)`` float64 row of one pair.

        Returns:
            The sums, helped and hurt counts per tensor.

        """
        sign = torch.sign(lca_p, out=self.pool.like(lca_p))
        sums = torch.stack([sum64(lca_p[a:b]) for a, b in self._bounds])  # float64 sums, also of float32 rows
        net = torch.stack([_count_sum(sign[a:b]) for a, b in self._bounds])
        moved = torch.stack([torch.count_nonzero(sign[a:b]) for a, b in self._bounds]).to(sums.dtype)
        return torch.stack([sums, (moved - net) / 2, (moved + net) / 2])


def _count_sum(signs: torch.Tensor) -> torch.Tensor:
    """``Σ signs`` (entries -1, 0, 1) exactly, as a float64 scalar: float32 holds integers only up to 2**24."""
    step = 1 << 24
    if signs.dtype == torch.float64 or signs.numel() <= step:
        return signs.sum().double()
    return torch.stack([signs[a : a + step].sum() for a in range(0, signs.numel(), step)]).double().sum()


def build_engine(config: Config, device: torch.device) -> tuple[PairEngine, dict[str, Any], ModelSpec]:
    """Build the model, evaluation sets and objectives a config describes.

    Args:
        config: The config; its compute options resolved (a ``ComputePlan``'s), else resolved here with the
            dtype ``auto`` taken as float32.
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
    # One point buffer for every set, and the model's own parameters point into it (no dead copy of them).
    pool, point = BufferPool(), torch.empty(vlayout.size, dtype=dtype, device=device)
    bind_parameters(model, vlayout, point)
    for name, spec in config.data.items():
        data = call_factory(spec, config.base_dir, f"[data.{name}]")
        evalset: EvalSet = make_chunks(name, data, opts.batch_size, device, dtype, loss_fn)
        objectives[name] = Objective(model, vlayout, evalset, loss_fn, dtype, forward, pool, point)
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
        opts.refine, None if columns.full else ColumnReducer(columns, layout), pool=pool,
    )  # fmt: skip
    details = {
        "sets": evaluation,
        "bn_mode": opts.bn_mode,
        "dtype": opts.dtype,
        "accumulation": "float64",
        "buffers": [{"name": n, "shape": list(buffers[n].shape)} for n in buf_names],
        "dropout": "off (model.eval())",
    }
    frozen = getattr(model, "lca_frozen", None)  # a PEFT adapter run: which parameters stay fixed (hf_models)
    if frozen:
        details["frozen"] = frozen
    return engine, details, expected


def preflight(engine: PairEngine, point: Callable[[CheckpointRef], Point], refs: Sequence[CheckpointRef]) -> Point:
    """Check every evaluation set against the model on the newest checkpoint, before any pair (compute, dry-run).

    Data or a loss that does not fit the model fails here in one line. The newest checkpoint, because pruning and
    rotation delete the oldest, maybe while this call starts beside a running one.

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


class _Preloaded:
    def __init__(self, points: Sequence[Point]) -> None:
        self.points = points

    def get(self, i: int) -> Point:
        return self.points[i]


def preload_points(
    engine: PairEngine, expected: ModelSpec, refs: Sequence[CheckpointRef], device: torch.device
) -> list[Point]:
    """Read every checkpoint of a run as the engine's points (for :func:`run_pairs`; memory: all of them).

    Args:
        engine: The pair engine (its point layout).
        expected: What the model expects of a checkpoint (:func:`build_engine`'s third value).
        refs: The checkpoints, in step order.
        device: The engine's device.

    Returns:
        One point per checkpoint.

    """
    loader = CheckpointLoader(refs, expected, engine.vlayout, device)
    try:
        return [loader.get(i) for i in range(len(refs))]
    finally:
        loader.close()


def run_pairs(engine: PairEngine, points: Sequence[Point], steps: Sequence[int] | None = None) -> int:
    """The pair loop alone: every consecutive pair of preloaded points, rows computed and dropped.

    What ``compute`` costs beyond the gradients, before its reader thread, its writer thread and the store add
    theirs (``scripts/bench.py``, ``compute-loop``): nothing is read or written while it runs.

    Args:
        engine: The pair engine (:func:`build_engine`).
        points: Every checkpoint's point (:func:`preload_points`).
        steps: The checkpoints' steps, for messages (default: their indices).

    Returns:
        Pairs computed.

    """
    done, _ = engine.run_block(range(len(points) - 1), _Preloaded(points), list(steps or range(len(points))))
    return done
