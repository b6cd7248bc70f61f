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
repair) is prepared by :mod:`lca_cli.opening`.

Memory is bounded by a few point vectors (``(P + B,)`` float64), the gradient sums of the integrator, one
block of float32 rows and the evaluation set: never all checkpoints, never all rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
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

from lca_cli.config import Config, build_model, call_factory, import_path
from lca_cli.errors import RunDirError, UsageError
from lca_cli.integrate import Evaluation, integrate_pair
from lca_cli.layout import Layout
from lca_cli.objective import (
    EvalSet,
    Objective,
    config_loss,
    interpolated_buffer_names,
    make_chunks,
    prepare_model,
    split_state,
)
from lca_cli.opening import prepare
from lca_cli.placement import inspect_path
from lca_cli.sources import (
    CheckpointRef,
    CheckpointSource,
    ModelSpec,
    check_state_dict,
    describe_folder,
    find_checkpoints,
    read_checkpoint,
)
from lca_cli.store import BlockRows, LcaStore

__all__ = [
    "FLUSH_SECONDS",
    "STOP_GRACE_SECONDS",
    "CheckpointLoader",
    "ComputeResult",
    "PairEngine",
    "ProgressInfo",
    "ProgressReporter",
    "build_engine",
    "compute",
    "plan_blocks",
    "resolve_device",
]

#: ``progress(pairs_done_this_run, pairs_to_do)``, called after every pair.
ProgressFn = Callable[[int, int], None]
#: ``note(message)``: a one-line note for the user (how checkpoints were found and mapped onto the model).
NoteFn = Callable[[str], None]

#: A block's finished rows are written at least this often, so a long run's rows show up in the store.
FLUSH_SECONDS = 30.0
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

    """

    done: int
    total: int
    skipped: int
    gradients: int
    flagged: int
    elapsed: float
    store: Path
    device: str


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


def resolve_device(spec: str) -> torch.device:
    """Turn ``--device`` into a torch device.

    Args:
        spec: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:i``.

    Returns:
        The device.

    Raises:
        UsageError: If CUDA is asked for but not available, or the index does not exist.

    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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
        assert ref is not None, "a pair to compute lost a checkpoint (lca_cli.opening checks this)"
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
        for j in [j for j in self._futures if j < i]:
            self._futures.pop(j).cancel()
        return self._futures.pop(i).result()

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
        tolerance: Absolute residual tolerance.
        rtol: Relative residual tolerance.
        device: Compute device.
        l1_tol: Optional per-parameter refinement criterion (0 = off).

    """

    layout: Layout
    vlayout: Layout
    objectives: dict[str, Objective]
    method: str
    max_splits: int
    tolerance: float
    rtol: float
    device: torch.device
    l1_tol: float = 0.0
    _bounds: list[tuple[int, int]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Column ranges of the tensors, for per-tensor sums over each block of rows at once.
        self._bounds = [(p.offset, p.stop) for p in self.layout.params]

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
        names = list(self.objectives)
        # Per pair, the float32 row goes straight into the block's host buffer (the array the writer gets: one
        # copy of the block in memory, so peak memory is a few store chunks whatever the run's length), and the
        # per-tensor sums and helped / hurt counts are reduced on the device from the float64 row, a few small
        # ops per tensor (an index_add over the row was 3 x 0.4 ms per pair for MNIST-FC).
        alloc = buffers or (lambda rows, cols: np.empty((rows, cols), dtype=np.float32))
        bases = {s: alloc(len(block), n_params) for s in names}
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
                        return obj.value_and_grad(v0 + x * d, fx)

                    check_stop()
                    res = integrate_pair(
                        point,
                        delta,
                        cache.evals[s],
                        self._evaluate(s, v1, fixed1),
                        method=self.method,
                        max_splits=self.max_splits,
                        tolerance=self.tolerance,
                        rtol=self.rtol,
                        l1_tol=self.l1_tol,
                        label=f"steps {steps[t]} -> {steps[t + 1]} (set {s})",
                    )
                    results.append((s, res))
                    evals_end[s] = res.end
                    grads += calls[0] + 1
                    flagged |= int(bool(res.flagged))
                # Stored only once every set has its row: an abandoned or failed pair leaves no trace.
                for s, res in results:
                    lca_p = res.lca[:n_params]  # (P,) parameters; res.lca[n_params:] are the buffers
                    torch.from_numpy(rows32[s][i]).copy_(lca_p)
                    r = per_pair[s]
                    r["tensor"].append(self._tensor_reductions(lca_p))
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

        Counts are exact in float64 (below 2**53); sums run over each tensor's contiguous slice.
        """
        neg, pos = lca_p < 0, lca_p > 0
        sums = torch.stack([lca_p[a:b].sum() for a, b in self._bounds])
        helped = torch.stack([neg[a:b].sum() for a, b in self._bounds])
        hurt = torch.stack([pos[a:b].sum() for a, b in self._bounds])
        return torch.stack([sums, helped.to(sums.dtype), hurt.to(sums.dtype)])


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
    assert opts.tolerance is not None  # resolved above
    engine = PairEngine(
        layout, vlayout, objectives, opts.method, opts.max_splits, opts.tolerance, opts.rtol, device, opts.l1_tol
    )
    details = {
        "sets": evaluation,
        "bn_mode": opts.bn_mode,
        "dtype": opts.dtype,
        "accumulation": "float64",
        "buffers": [{"name": n, "shape": list(buffers[n].shape)} for n in buf_names],
        "dropout": "off (model.eval())",
    }
    return engine, details, expected


@dataclass(frozen=True)
class ComputeResult:
    """What a ``compute`` call did.

    Attributes:
        store: Store path.
        n_pairs: Pairs in the store (T).
        computed: Pairs computed by this call.
        skipped: Pairs already done before this call.
        flagged: Per set, the steps (start of the pair) still over tolerance at the cap.
        max_abs_residual: Per set, the largest |residual| over all done pairs.
        seconds: Wall time of the pair loop.
        device: Device used.
        interrupted: True when stopped early (Ctrl-C, SIGTERM, SIGHUP); finished rows are saved.
        repaired: Damaged rows marked for recomputation (``repair``), summed over sets.

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
    ``before`` runs before each write (the lock check) and ``after`` after it (the swap of a new store into
    place, the ``updated`` attribute). After a failed write nothing more is written; the error is raised by
    the next ``submit`` or by ``close``.
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
        self._q: queue.Queue[tuple[dict[str, BlockRows], list[np.ndarray]] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lca-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                rows, release = item
                if self._error is None and rows:
                    if self.before is not None:
                        self.before()
                    for s, block in rows.items():
                        self.store.write_block(s, block)
                    if self.after is not None:
                        self.after()
                if self.buffers is not None:
                    for array in release:
                        self.buffers.give(array)
            except BaseException as exc:  # surfaced in the main thread by submit/close
                self._error = exc
            finally:
                self._q.task_done()

    def submit(self, rows: dict[str, BlockRows], release: Sequence[np.ndarray] = ()) -> None:
        """Queue rows to write (and buffers to give back once written); raise an earlier write's error."""
        self._q.join()  # the previous piece is written
        if self._error is not None:
            raise self._error
        if rows or release:
            self._q.put((rows, list(release)))

    def close(self) -> None:
        """Write what is queued, stop the thread, raise a write's error."""
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    # torch's intra-op thread count is process-global: set it for this call only.
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
    config: Config, details: dict[str, Any], device: torch.device, tied: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Attributes of a new store: the settings and evaluation details its numbers depend on."""
    opts = config.compute
    return {
        "method": opts.method,
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
) -> ComputeResult:
    """Compute (or resume, or extend, or repair) the LCA store of a run.

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
            step 0.

    Returns:
        What was done.

    Raises:
        LcaError: For every user-facing problem (see :mod:`lca_cli.errors`).

    """
    config.compute.validate()
    if overwrite and repair:
        raise UsageError("--repair and --overwrite exclude each other (--overwrite recomputes everything)")
    run = Path(run_dir)
    say: NoteFn = note or (lambda message: None)
    found_notes: list[str] = []
    refs = find_checkpoints(run, unsafe_pickle=unsafe_pickle, notes=found_notes)
    out_path = Path(out) if out is not None else run / "lca.zarr"
    # Rotation may leave fewer than two checkpoints beside a store whose rows are all done: no error then.
    if len(refs) < 2 and (overwrite or inspect_path(out_path, deep=False).kind != "store"):
        raise RunDirError(
            f"{run} holds {len(refs)} checkpoint(s); LCA needs at least two, one per iteration ({describe_folder(run)};"
            " checkpoints are *.safetensors/*.pt/*.pth/*.bin/*.ckpt files with the step in their name or metadata,"
            " or checkpoint-N/ step_N/ folders holding model.safetensors or pytorch_model.bin)"
        )
    for message in found_notes:
        say(message)
    if refs and refs[0].step != 0 and inspect_path(out_path, deep=False).kind != "store":
        say(
            f"the first checkpoint is step {refs[0].step}: the iterations before it are not in the store (save the "
            "initial weights as step 0; the lca callbacks for Hugging Face and Lightning do)"
        )
    device = resolve_device(config.compute.device)
    # Concrete dtype and tolerance for this device: they are what the store records and a resume must match.
    opts = config.compute.resolved(device.type)
    config = dataclasses.replace(config, compute=opts)
    # The config's folder stays on the import path while factories run and while the model runs (a factory or a
    # forward may import lazily), wherever lca is run from.
    with _tf32(opts.allow_tf32), _threads(opts.threads), import_path(config.base_dir):
        engine, details, expected = build_engine(config, device)
        source = CheckpointSource(
            expected, state_dict_key=opts.state_dict_key or None, unsafe_pickle=unsafe_pickle, note=say
        )
        if refs:
            # Pre-flight: data or a loss that does not fit the model fails here, in one line, before any pair.
            v0, fixed0 = split_state(source.read(refs[0]), engine.vlayout, device)
            for obj in engine.objectives.values():
                obj.check(v0, fixed0, f"step {refs[0].step}")
            del v0, fixed0
        target = prepare(
            out_path, run, refs, identity=config.identity(), layout=engine.layout, sets=list(engine.objectives),
            attrs=_store_attrs(config, details, device, expected.aliases), rows_per_chunk=opts.rows_per_chunk,
            overwrite=overwrite, repair=repair, device=str(device), durable=durable,
        )  # fmt: skip
        try:
            store = target.store
            steps = target.alignment.steps
            done = store.done()
            skipped = int(done.sum())
            blocks = plan_blocks(done, store.rows_per_chunk)
            total = sum(len(b) for b in blocks)
            counts = {"done": 0, "gradients": 0, "flagged": 0}
            t0 = time.perf_counter()
            reporter = progress if isinstance(progress, ProgressReporter) else None

            def info() -> ProgressInfo:
                return ProgressInfo(counts["done"], total, skipped, counts["gradients"], counts["flagged"],
                                    time.perf_counter() - t0, target.out, str(device))  # fmt: skip

            def tick(gradients: int, flagged: int) -> None:
                counts["done"] += 1
                counts["gradients"] += gradients
                counts["flagged"] += flagged
                if reporter is not None:
                    reporter.update(info())
                elif progress is not None:
                    progress(counts["done"], total)  # type: ignore[operator]

            if reporter is not None:
                reporter.start(info())
            interrupted = False
            try:
                if blocks:
                    loader = CheckpointLoader(target.alignment.refs, expected, engine.vlayout, device, read=source.read)
                    buffers = _BlockBuffers()
                    writer = _Writer(store, buffers, target.before_write, target.after_write)
                    cache = None
                    try:
                        for block in blocks:
                            _, cache = engine.run_block(
                                block, loader, steps, cache, tick, stop, buffers.take, writer.submit, flush_seconds
                            )
                            if stop is not None and stop.is_set():
                                interrupted = True
                                break
                    finally:
                        loader.close()
                        writer.close()
            finally:
                seconds = time.perf_counter() - t0
                if reporter is not None:
                    reporter.finish(info())
            # Consolidated metadata (one read for xarray and other readers), written only when this compute is
            # done and changed the store: any change (a write, an append) dropped it, so it is never trusted
            # while one runs. A finished store on a read-only file system is left as it is.
            if not target.read_only and not store.has_consolidated():
                store.consolidate()
        finally:
            target.close()

    flagged, max_res = {}, {}
    done_all = store.done()
    for s in store.sets:
        f = store.read(s, "flagged") & done_all
        flagged[s] = [int(x) for x in store.steps[:-1][f]]
        res = store.read(s, "residual")[done_all]
        max_res[s] = float(np.abs(res).max()) if res.size else 0.0
    return ComputeResult(
        target.out, store.n_pairs, counts["done"], skipped, flagged, max_res, seconds, str(device), interrupted,
        sum(len(r) for r in target.repaired.values()),
    )  # fmt: skip
