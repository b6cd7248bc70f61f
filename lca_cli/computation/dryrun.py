"""``lca compute --dry-run``: what a compute would do and cost, before a long run; nothing is written.

It takes compute's own plan (:func:`~lca_cli.computation.plan.build_plan`), builds the model and evaluation
sets, times a few full-set gradients at the newest checkpoint (after one warm-up), reads an existing store's
done rows and sub-interval counts, and reports the pairs to compute (within ``--steps`` / ``--shard``), the
gradients per pair expected, a time estimate, and the disk the checkpoints take and the store will take once
complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lca_cli.computation.engine import build_engine, preflight
from lca_cli.computation.plan import ComputePlan, environment
from lca_cli.core.columns import Columns
from lca_cli.core.vectors import split_state
from lca_cli.errors import RunDirError
from lca_cli.sources import CheckpointSource, describe_folder
from lca_cli.store import LcaStore, choose_rows_per_chunk
from lca_cli.store.identity import align
from lca_cli.store.placement import inspect_path

__all__ = ["DryRun", "dry_run", "store_bytes"]

#: Gradients timed per evaluation set (the fastest counts: the first calls warm caches up).
TIMED_CALLS = 3
#: Bytes per row of the per-row arrays of one set besides ``lca`` and the per-tensor arrays: loss, loss_end,
#: residual, l1_change, buffer_lca (float64), splits (int32), flagged, done (bool).
_ROW_BYTES = 5 * 8 + 4 + 2
#: Bytes per row and tensor: tensor_lca (float64), tensor_helped and tensor_hurt (int64).
_TENSOR_BYTES = 3 * 8


def store_bytes(n_pairs: int, columns: int, tensors: int, sets: int, rows_per_chunk: int) -> tuple[int, int]:
    """Disk a complete store takes: ``(all arrays, lca alone)``, chunk padding included (chunks are uncompressed).

    Args:
        n_pairs: Pairs T.
        columns: Columns of ``lca`` (P, or fewer with ``--granularity`` / ``--params``).
        tensors: Parameter tensors K.
        sets: Evaluation sets.
        rows_per_chunk: Rows per chunk.

    """
    rows = math.ceil(n_pairs / rows_per_chunk) * rows_per_chunk
    lca = rows * columns * 4
    per_set = lca + rows * (_ROW_BYTES + tensors * _TENSOR_BYTES)
    return sets * per_set, sets * lca


@dataclass
class DryRun:
    """What ``lca compute`` would do (see the module docstring); sizes in bytes, times in seconds."""

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
    gradients_per_pair: dict[str, float]
    gradients_basis: str
    seconds_per_gradient: dict[str, float]
    device: str
    dtype: str
    threads: int
    estimate_seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        out = dataclasses.asdict(self)
        out["run"], out["store"] = str(self.run), str(self.store)
        return out

    def lines(self) -> list[str]:
        """The human-readable plan."""
        grads = ", ".join(f"{s} {1000 * t:.3g} ms" for s, t in self.seconds_per_gradient.items())
        per_pair = ", ".join(f"{s} {g:.3g}" for s, g in self.gradients_per_pair.items())
        smaller = (
            f" (per-parameter rows would take {_size(self.parameter_store_bytes)})"
            if self.parameter_store_bytes != self.store_bytes
            else ""
        )
        # Before any pair is done the time is known only at plain Simpson's 2 gradients per pair: say so.
        minimum = self.gradients_basis.startswith("the minimum")
        duration = _duration(self.estimate_seconds)
        if minimum:
            duration = "at least " + duration.removeprefix("about ")
        more = "; ReLU nets often need 3-5 gradients per pair with the default refinement" if minimum else ""
        out = [
            f"run        {self.run}: {self.checkpoints} checkpoints, steps {self.first_step}..{self.last_step}, "
            f"{_size(self.checkpoint_bytes)} on disk",
            f"store      {self.store} ({self.store_state}): {self.pairs:,} pairs x {self.columns:,} columns "
            f"({self.granularity}; {self.parameters:,} parameters) x {len(self.sets)} set(s): "
            f"{_size(self.store_bytes)} when complete, lca {_size(self.lca_bytes)}{smaller}",
            f"pairs      {self.pairs:,} in total, {self.done:,} done, {self.to_compute:,} to compute ({self.scope}: "
            f"{self.in_scope:,} pairs)",
            f"gradients  per pair and set: {per_pair} ({self.gradients_basis})",
            f"timing     one full-set gradient: {grads} (on {self.device}, {self.dtype}, {self.threads} thread(s); "
            "measured at the first checkpoint)",
            f"estimate   {duration} for {self.to_compute:,} pairs in one process "
            f"(start-up not included{more}; N processes or GPUs take about 1/N of it)",
        ]
        return out + [f"note       {n}" for n in self.notes]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} TB"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"about {seconds:.2g} s"
    if seconds < 3600:
        return f"about {seconds / 60:.2g} min"
    return f"about {seconds / 3600:.3g} h"


def _time_gradient(obj: Any, v: torch.Tensor, fixed: Any, device: torch.device) -> float:
    best = math.inf
    for k in range(TIMED_CALLS + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        obj.value_and_grad(v, fixed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if k:  # the first call warms up
            best = min(best, time.perf_counter() - t0)
    return best


def dry_run(plan: ComputePlan) -> DryRun:
    """Measure and describe what ``compute`` would do with a plan; nothing is written, nothing is locked.

    The plan is the one ``compute`` builds (:func:`~lca_cli.computation.plan.build_plan`): the same checkpoints,
    device, dtype (``auto``: the checkpoints' own), tolerances and columns, so the timing is of what compute runs.

    Args:
        plan: The call's plan.

    Returns:
        What compute would do and cost.

    Raises:
        LcaError: The errors ``lca compute`` would raise before its first pair (config, checkpoints, store).

    """
    run, out_path, refs, device, opts = plan.run_dir, plan.out, list(plan.refs), plan.device, plan.options
    if len(refs) < 2:  # beside a store (rotation): compute has nothing to do, and there is nothing to time
        raise RunDirError(f"{run} holds {len(refs)} checkpoint(s); LCA needs at least two ({describe_folder(run)})")
    notes: list[str] = []
    with environment(opts, plan.config.base_dir):
        engine, _, expected = build_engine(plan.config, device)
        key = opts.state_dict_key or None
        source = CheckpointSource(expected, state_dict_key=key, unsafe_pickle=plan.unsafe_pickle)
        v, fixed = preflight(engine, lambda ref: split_state(source.read(ref), engine.vlayout, device), refs)
        timing = {s: _time_gradient(obj, v, fixed, device) for s, obj in engine.objectives.items()}
        threads = torch.get_num_threads()
    layout = engine.layout
    columns = Columns.build(layout, opts.granularity, opts.params)
    sets = list(engine.objectives)
    steps = [r.step for r in refs]
    done = np.zeros(len(steps) - 1, dtype=bool)
    state = inspect_path(out_path, deep=False).kind
    splits: dict[str, np.ndarray] = {}
    rows_per_chunk = choose_rows_per_chunk(columns.size, opts.rows_per_chunk)
    if state == "store":
        store = LcaStore.open(out_path)
        al = align(store.steps, refs, out_path, run)
        steps = al.steps
        done = np.concatenate([store.done(), np.zeros(len(steps) - 1 - store.n_pairs, dtype=bool)])
        rows_per_chunk = store.rows_per_chunk
        if store.columns.size != columns.size or store.sets != sets:
            notes.append("the store was made with other settings: compute would refuse it (use --overwrite or --out)")
        for s in store.sets:
            splits[s] = store.read(s, "splits")[store.done()]
        store_state = f"exists: {int(done.sum())} of {store.n_pairs} pairs done" + (
            f", {len(steps) - 1 - store.n_pairs} new checkpoint(s) to append" if len(steps) - 1 > store.n_pairs else ""
        )
    else:
        store_state = "new" if state in ("missing", "empty", "half") else f"cannot be used: {state}"
    n_pairs = len(steps) - 1
    scope = plan.schedule.window
    in_scope = scope.mask(np.asarray(steps), rows_per_chunk)
    to_compute = int((in_scope & ~done).sum())
    gpp, basis = _gradients_per_pair(opts.method, opts.max_splits, sets, splits)
    estimate = to_compute * sum(gpp[s] * timing[s] for s in sets)
    total, lca = store_bytes(n_pairs, columns.size, len(layout.params), len(sets), rows_per_chunk)
    per_param, _ = store_bytes(
        n_pairs, layout.size, len(layout.params), len(sets), choose_rows_per_chunk(layout.size, opts.rows_per_chunk)
    )
    ckpt_bytes = 0
    for ref in refs:
        for f in ref.weight_files:
            with contextlib.suppress(OSError):  # deleted meanwhile
                ckpt_bytes += f.stat().st_size
    return DryRun(
        run, out_path, store_state, len(refs), refs[0].step, refs[-1].step, ckpt_bytes, n_pairs, int(done.sum()),
        int(in_scope.sum()), to_compute, scope.describe(), columns.granularity, columns.size, layout.size, sets,
        total, lca, per_param, gpp, basis, timing, str(device), opts.dtype, threads, estimate, notes,
    )  # fmt: skip


def _gradients_per_pair(
    method: str, max_splits: int, sets: list[str], splits: dict[str, np.ndarray]
) -> tuple[dict[str, float], str]:
    """Gradients per pair and set a compute is expected to take, and what that is based on."""
    if method == "euler":
        return dict.fromkeys(sets, 1.0), "--method euler: one gradient per pair"
    if any(len(x) for x in splits.values()):
        gpp = {s: float(np.mean(splits[s])) if len(splits.get(s, ())) else 2.0 for s in sets}
        return gpp, "the mean sub-intervals of the pairs already done, about one gradient each"
    if max_splits == 2:
        return dict.fromkeys(sets, 2.0), "plain Simpson, --max-splits 2: exactly 2, the end gradient being reused"
    return dict.fromkeys(sets, 2.0), (
        f"the minimum: plain Simpson with the end gradient reused; refinement adds more where needed, up to "
        f"{max_splits}: 2 to about 10 on the nets of the README's Accuracy table"
    )
