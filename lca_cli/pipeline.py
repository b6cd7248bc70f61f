"""Walk the checkpoint pairs of a run, compute their LCA rows, and write them to the store.

The work is cut into *blocks*: runs of consecutive pairs that are not done yet, cut at the store's row
chunks. A block depends only on its own checkpoints and writes only its own rows, so blocks could go to
independent workers; inside one process they run in order and the end gradient of one block is reused as
the start of the next when they are contiguous. Checkpoints are read ahead in a background thread and
finished blocks are written by a background writer, so that the two gradients per pair dominate the time.

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
from typing import Any

import numpy as np
import torch

from lca_cli.config import Config, build_model, call_factory, import_path
from lca_cli.errors import RunDirError, StoreError, UsageError
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
    "CheckpointLoader",
    "ComputeResult",
    "PairEngine",
    "build_engine",
    "compute",
    "plan_blocks",
    "resolve_device",
]

#: ``progress(pairs_done_this_run, pairs_to_do)``, called after every pair.
ProgressFn = Callable[[int, int], None]
#: ``note(message)``: a one-line note for the user (how checkpoints were found and mapped onto the model).
NoteFn = Callable[[str], None]


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
        refs: The run's checkpoints in step order.
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
        refs: Sequence[CheckpointRef],
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
            if j not in self._futures:
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
        on_pair: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
        buffers: Callable[[int, int], np.ndarray] | None = None,
    ) -> tuple[dict[str, BlockRows], _Cache | None]:
        """Compute the rows of one block of pairs.

        Args:
            block: Pair indices ``t`` (pair t goes from checkpoint t to t + 1).
            loader: Checkpoint reader.
            steps: Steps of all checkpoints (for messages).
            cache: End of the previous block, reused when it is checkpoint ``block.start``.
            on_pair: Called after each pair.
            stop: When set, the block ends early after the current pair (its finished rows are returned).
            buffers: ``(rows, P) -> float32 array`` of at least that shape for the block's ``lca`` rows (a pool
                that reuses the arrays already written); a new array per block when None.

        Returns:
            ``(rows per set, cache for the next block)``; rows may be fewer than ``len(block)`` if stopped.

        """
        n_params = self.layout.size
        names = list(self.objectives)
        # Per pair, the float32 row goes straight into the block's host buffer (the array the writer gets: one
        # copy of the block in memory, so peak memory is a few store chunks whatever the run's length), and the
        # per-tensor sums and helped / hurt counts are reduced on the device from the float64 row, a few small
        # ops per tensor (an index_add over the row was 3 x 0.4 ms per pair for MNIST-FC).
        alloc = buffers or (lambda rows, cols: np.empty((rows, cols), dtype=np.float32))
        rows32 = {s: alloc(len(block), n_params)[: len(block)] for s in names}
        per_pair: dict[str, dict[str, list[Any]]] = {
            s: {k: [] for k in ("loss", "residual", "splits", "flagged", "l1", "tensor", "buffer")} for s in names
        }
        if cache is None or cache.index != block.start:
            v0, fixed0 = loader.get(block.start)
            cache = _Cache(block.start, v0, fixed0, {s: self._evaluate(s, v0, fixed0) for s in names})
        for s in names:
            per_pair[s]["loss"].append(float(cache.evals[s].loss))
        count = 0
        for i, t in enumerate(block):
            v1, fixed1 = loader.get(t + 1)
            delta = v1 - cache.v  # (D,) float64, exact difference of the stored values
            evals_end: dict[str, Evaluation] = {}
            for s in names:
                obj, v0, fixed0 = self.objectives[s], cache.v, cache.fixed

                def point(
                    x: float, obj: Objective = obj, v0: torch.Tensor = v0, d: torch.Tensor = delta, fx: Any = fixed0
                ) -> Any:
                    return obj.value_and_grad(v0 + x * d, fx)

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
                evals_end[s] = res.end
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
                on_pair()
            if stop is not None and stop.is_set():
                break
        out: dict[str, BlockRows] = {}
        if count == 0:
            return out, cache
        for s in names:
            r = per_pair[s]
            tensor = torch.stack(r["tensor"]).cpu()  # (k, 3, K) float64: sums, helped, hurt
            out[s] = BlockRows(
                start=block.start,
                lca=rows32[s][:count],
                loss=np.asarray(r["loss"], dtype=np.float64),
                residual=np.asarray(r["residual"], dtype=np.float64),
                splits=np.asarray(r["splits"], dtype=np.int32),
                flagged=np.asarray(r["flagged"], dtype=bool),
                tensor_lca=tensor[:, 0].numpy(),
                tensor_helped=tensor[:, 1].to(torch.int64).numpy(),
                tensor_hurt=tensor[:, 2].to(torch.int64).numpy(),
                buffer_lca=torch.stack(r["buffer"]).cpu().numpy(),
                l1_change=np.asarray(r["l1"], dtype=np.float64),
            )
        return out, cache

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
        interrupted: True when stopped early (Ctrl-C); finished rows are saved.

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
    """Writes finished blocks to the store from a background thread, in submission order.

    ``submit`` first waits until the previous block is written, so at most two blocks are in memory: the one
    being written and the one being computed (the write, ~0.1 s, overlaps the next block's pairs, seconds).
    """

    def __init__(self, store: LcaStore, buffers: _BlockBuffers | None = None) -> None:
        self.store = store
        self.buffers = buffers
        self._q: queue.Queue[dict[str, BlockRows] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lca-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if self._error is not None:
                    continue
                for s, rows in item.items():
                    self.store.write_block(s, rows)
                    if self.buffers is not None:
                        self.buffers.give(rows.lca)
            except BaseException as exc:  # surfaced in the main thread by submit/close
                self._error = exc
            finally:
                self._q.task_done()

    def submit(self, rows: dict[str, BlockRows]) -> None:
        self._q.join()  # the previous block is written
        if self._error is not None:
            raise self._error
        if rows:
            self._q.put(rows)

    def close(self) -> None:
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


def _open_or_create(
    out: Path,
    config: Config,
    engine: PairEngine,
    details: dict[str, Any],
    steps: list[int],
    overwrite: bool,
    device: torch.device,
    tied: Mapping[str, str] | None = None,
) -> tuple[LcaStore, int]:
    identity = _normalise(config.identity())
    if out.exists() and not overwrite:
        store = LcaStore.open(out, mode="r+")
        if _normalise(store.attrs.get("identity")) != identity or store.layout != engine.layout:
            raise StoreError(
                f"{out} was computed from another model, data, loss or compute settings than this config; "
                "pass --overwrite to replace it, or --out to write elsewhere"
            )
        if store.sets != list(engine.objectives):
            raise StoreError(f"{out} holds sets {store.sets}, the config {list(engine.objectives)}; use --overwrite")
        store.extend(steps)
        done_before = int(store.done().sum())
        store.update_attrs({"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": str(device)})
        return store, done_before
    opts = config.compute
    attrs = {
        "method": opts.method,
        "tolerance": opts.tolerance,
        "rtol": opts.rtol,
        "l1_tol": opts.l1_tol,
        "max_splits": opts.max_splits,
        "identity": identity,
        # Tied parameters (alias -> owner): the layout holds the owner only, and its LCA is the shared tensor's.
        "tied": dict(tied or {}),
        "config": _normalise({**config.identity(), "base_dir": str(config.base_dir) if config.base_dir else None}),
        "evaluation": details,
        "device": str(device),
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    store = LcaStore.create(
        out,
        layout=engine.layout,
        sets=list(engine.objectives),
        steps=steps,
        attrs=attrs,
        rows_per_chunk=opts.rows_per_chunk,
    )
    return store, 0


def compute(
    run_dir: str | Path,
    config: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    unsafe_pickle: bool = False,
    note: NoteFn | None = None,
) -> ComputeResult:
    """Compute (or resume, or extend) the LCA store of a run.

    Args:
        run_dir: Directory of checkpoints (any layout :mod:`lca_cli.sources` finds).
        config: Resolved config (``config.compute`` holds the options).
        out: Store path (default ``RUN_DIR/lca.zarr``).
        overwrite: Replace an existing store instead of resuming it.
        progress: Called after every pair with ``(done, total)`` for this call.
        stop: When set (e.g. on Ctrl-C), finish the current pair, save finished rows and return.
        unsafe_pickle: Allow torch checkpoints that need pickle (``--unsafe-pickle``; trusted files only).
        note: Receives one-line notes: where checkpoints were found, a nested entry or prefix used, a missing
            step 0.

    Returns:
        What was done.

    Raises:
        LcaError: For every user-facing problem (see :mod:`lca_cli.errors`).

    """
    config.compute.validate()
    run = Path(run_dir)
    say: NoteFn = note or (lambda message: None)
    found_notes: list[str] = []
    refs = find_checkpoints(run, unsafe_pickle=unsafe_pickle, notes=found_notes)
    if len(refs) < 2:
        raise RunDirError(
            f"{run} holds {len(refs)} checkpoint(s); LCA needs at least two, one per iteration ({describe_folder(run)};"
            " checkpoints are *.safetensors/*.pt/*.pth/*.bin/*.ckpt files with the step in their name or metadata,"
            " or checkpoint-N/ step_N/ folders holding model.safetensors or pytorch_model.bin)"
        )
    for message in found_notes:
        say(message)
    if refs[0].step != 0:
        say(
            f"the first checkpoint is step {refs[0].step}: the iterations before it are not in the store (save the "
            "initial weights as step 0; the lca callbacks for Hugging Face and Lightning do)"
        )
    device = resolve_device(config.compute.device)
    # Concrete dtype and tolerance for this device: they are what the store records and a resume must match.
    opts = config.compute.resolved(device.type)
    config = dataclasses.replace(config, compute=opts)
    out_path = Path(out) if out is not None else run / "lca.zarr"
    # The config's folder stays on the import path while factories run and while the model runs (a factory or a
    # forward may import lazily), wherever lca is run from.
    with _tf32(opts.allow_tf32), _threads(opts.threads), import_path(config.base_dir):
        engine, details, expected = build_engine(config, device)
        source = CheckpointSource(
            expected, state_dict_key=opts.state_dict_key or None, unsafe_pickle=unsafe_pickle, note=say
        )
        # Pre-flight: data or a loss that does not fit the model fails here, in one line, before any pair.
        v0, fixed0 = split_state(source.read(refs[0]), engine.vlayout, device)
        for obj in engine.objectives.values():
            obj.check(v0, fixed0, f"step {refs[0].step}")
        del v0, fixed0
        steps = [r.step for r in refs]
        store, _ = _open_or_create(out_path, config, engine, details, steps, overwrite, device, expected.aliases)
        done = store.done()
        skipped = int(done.sum())
        blocks = plan_blocks(done, store.rows_per_chunk)
        total = sum(len(b) for b in blocks)
        loader = CheckpointLoader(refs, expected, engine.vlayout, device, read=source.read)
        buffers = _BlockBuffers()
        writer = _Writer(store, buffers)
        computed = 0

        def tick() -> None:
            nonlocal computed
            computed += 1
            if progress is not None:
                progress(computed, total)

        t0 = time.perf_counter()
        cache = None
        interrupted = False
        try:
            for block in blocks:
                rows, cache = engine.run_block(block, loader, steps, cache, tick, stop, buffers.take)
                writer.submit(rows)
                if stop is not None and stop.is_set():
                    interrupted = True
                    break
        finally:
            loader.close()
            writer.close()
        seconds = time.perf_counter() - t0
        # Consolidated metadata (one read for xarray and other readers), written only now that this compute is
        # done; it was dropped when the store was opened for writing, so it is never trusted while one runs.
        store.consolidate()

    flagged, max_res = {}, {}
    done_all = store.done()
    for s in store.sets:
        f = store.read(s, "flagged") & done_all
        flagged[s] = [int(x) for x in store.steps[:-1][f]]
        res = store.read(s, "residual")[done_all]
        max_res[s] = float(np.abs(res).max()) if res.size else 0.0
    return ComputeResult(
        out_path, store.n_pairs, computed, skipped, flagged, max_res, seconds, str(device), interrupted
    )
