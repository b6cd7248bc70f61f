"""The compute plan: everything a ``compute`` call resolves before its first pair, once, in one frozen object.

:func:`build_plan` lists the run's checkpoints, resolves the device, reads the dtype of ``dtype="auto"`` from the
newest checkpoint, fills in the tolerances and the scale policy the scheme implies, and notes where the store
goes. ``lca compute``, ``lca compute --dry-run``, every ``torchrun`` rank and every cooperating process build
their plan with it, so what a dry run plans and times is what compute does. The engine
(:mod:`lca_cli.computation.engine`) and the runner (:mod:`lca_cli.computation.runner`) take a plan and know
nothing of click or the CLI's flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lca_cli.computation.config import ComputeOptions, Config, import_path
from lca_cli.computation.distributed import Scope, Team
from lca_cli.computation.engine import FLUSH_SECONDS, READ_AHEAD
from lca_cli.computation.follow import SETTLE_SECONDS
from lca_cli.computation.options import IDLE_TIMEOUT_SECONDS
from lca_cli.computation.result import NoteFn
from lca_cli.computation.staging import BACKLOG_CHECKPOINTS
from lca_cli.computation.tuning import checkpoint_dtype
from lca_cli.errors import RunDirError, UsageError
from lca_cli.sources import CheckpointRef, describe_folder, find_checkpoints, read_checkpoint
from lca_cli.store.lcastore import LcaStore
from lca_cli.store.placement import inspect_path

__all__ = [
    "POLL_SECONDS",
    "ComputePlan",
    "Hooks",
    "Schedule",
    "build_plan",
    "default_out",
    "environment",
    "resolve_device",
    "step_gaps",
]

#: Seconds between looks while waiting: for new checkpoints (follow), for chunks other processes hold.
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Schedule:
    """How a ``compute`` call shares the work and follows the run (none of it changes a store's numbers).

    Attributes:
        scope: The pairs to compute (``steps``, ``shard``).
        cooperate: When another live ``lca compute`` holds the store, compute the chunks it has not claimed
            instead of refusing (exit 9). Implied by a shard.
        follow: Keep computing pairs as checkpoints arrive (:mod:`lca_cli.computation.follow`).
        until: With ``follow``: stop once the pairs starting before this step are done.
        idle_timeout: With ``follow``: stop after this many seconds without a new checkpoint.
        prune: Delete checkpoints once every pair needing them is stored (never the newest).
        settle: With ``follow``: seconds a checkpoint's files (other than a flat ``.safetensors``) must be
            unchanged before it is used.
        poll: Seconds between looks while waiting (for checkpoints, for other processes' chunks).
        backlog: With ``follow``: checkpoints held at most for pairs not yet stored
            (:mod:`lca_cli.computation.staging`).

    """

    scope: Scope = field(default_factory=Scope)
    cooperate: bool = False
    follow: bool = False
    until: int | None = None
    idle_timeout: float = IDLE_TIMEOUT_SECONDS
    prune: bool = False
    settle: float = SETTLE_SECONDS
    poll: float = POLL_SECONDS
    backlog: int = BACKLOG_CHECKPOINTS

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

    @property
    def window(self) -> Scope:
        """The pairs in scope, ``until`` included (a followed run's pairs after it are not this call's)."""
        return self.scope if self.until is None else dataclasses.replace(self.scope, stop=self.until)


@dataclass(frozen=True)
class Hooks:
    """Switches that change how a call runs, never what it computes: for benchmarks and tests.

    Attributes:
        read_ahead: Checkpoints read ahead of the pair in use, in a background thread (0: each one when needed).
        sync_writes: Write rows in the pair loop's thread instead of a background writer (no overlap).
        durable: fsync rows before marking them done (off only for benchmarks of the loop).
        flush_seconds: Write a block's finished rows at least this often.
        reuse_probes: Let the pair loop take the survey's probe gradients (off: it evaluates them again; the
            store is the same either way).

    """

    read_ahead: int = READ_AHEAD
    sync_writes: bool = False
    durable: bool = True
    flush_seconds: float = FLUSH_SECONDS
    reuse_probes: bool = True


@dataclass(frozen=True)
class ComputePlan:
    """Everything a ``compute`` call resolved before its first pair (:func:`build_plan`).

    Attributes:
        run_dir: The run directory.
        out: The store path.
        config: The config, its compute options resolved: a concrete dtype, the scheme's tolerances and the
            scale policy (what the store records and a resume must match).
        refs: The run's checkpoints in step order, as listed at planning (following lists more later).
        device: The compute device.
        store_state: What was at ``out`` when planned (:func:`~lca_cli.store.placement.inspect_path`'s kind:
            ``"store"``, ``"missing"``, ``"empty"``, ``"half"`` ...).
        schedule: Which pairs, with whom, and whether to follow the run.
        overwrite: Replace an existing store.
        repair: Verify every chunk and recompute damaged rows first.
        unsafe_pickle: Allow torch checkpoints that need pickle.
        hooks: How the call runs (read-ahead, writes, flushing).

    """

    run_dir: Path
    out: Path
    config: Config
    refs: tuple[CheckpointRef, ...]
    device: torch.device
    store_state: str
    schedule: Schedule = field(default_factory=Schedule)
    overwrite: bool = False
    repair: bool = False
    unsafe_pickle: bool = False
    hooks: Hooks = field(default_factory=Hooks)

    @property
    def options(self) -> ComputeOptions:
        """The resolved compute options."""
        return self.config.compute

    @property
    def sets(self) -> tuple[str, ...]:
        """The evaluation sets, in the config's order."""
        return tuple(self.config.data)

    @property
    def dtype(self) -> torch.dtype:
        """The network's dtype (sums are float64 either way)."""
        return torch.float64 if self.options.dtype == "float64" else torch.float32

    @property
    def steps(self) -> list[int]:
        """The listed checkpoints' steps."""
        return [r.step for r in self.refs]


def default_out(run_dir: str | Path, out: str | Path | None) -> Path:
    """The store path: ``out``, or ``RUN_DIR/lca.zarr``."""
    return Path(out) if out is not None else Path(run_dir) / "lca.zarr"


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


#: Checkpoint dtypes below float32, replayed in float32 by ``dtype="auto"`` (:func:`_auto_dtype` notes it).
_HALF_DTYPES = (torch.bfloat16, torch.float16)


def _auto_dtype(
    refs: Sequence[CheckpointRef],
    out: Path,
    overwrite: bool,
    unsafe_pickle: bool,
    state_dict_key: str | None,
    say: NoteFn,
) -> str:
    """What ``dtype="auto"`` means for this run: the checkpoints' dtype (:func:`checkpoint_dtype`).

    Read from the newest checkpoint: pruning and keep-last-N rotation delete the oldest ones, maybe while this
    call starts beside a running one (which it must then meet at the store's lock, exit 9, not at a checkpoint
    that vanished, exit 5). With no checkpoint left to read (rotation beside a finished store), the dtype the
    store was made with. Half-precision checkpoints (bfloat16, float16) are replayed in float32, and ``say``
    gets a note saying so.
    """
    if refs:
        state = read_checkpoint(refs[-1], unsafe_pickle, state_dict_key)
        dtype = checkpoint_dtype(state)
        half = sorted({str(t.dtype).removeprefix("torch.") for t in state.values() if t.dtype in _HALF_DTYPES})
        if half:
            say(
                f"checkpoints are {' and '.join(half)}; evaluated in {dtype} (their values are exact in {dtype}; "
                "losses and gradients are summed in float64; --dtype float64 runs a float64 network)"
            )
        return dtype
    if not overwrite and inspect_path(out, deep=False).kind == "store":
        dtype = LcaStore.open(out).attrs.get("identity", {}).get("compute", {}).get("dtype")
        if dtype in ("float32", "float64"):
            return str(dtype)
    return "float32"


def _checkpoints(
    run: Path, refs: Sequence[CheckpointRef] | None, state: str, overwrite: bool, unsafe_pickle: bool, say: NoteFn
) -> list[CheckpointRef]:
    """The run's checkpoints (``refs`` when the caller listed them: following), checked and described."""
    found_notes: list[str] = []
    listed = list(refs) if refs is not None else find_checkpoints(run, unsafe_pickle=unsafe_pickle, notes=found_notes)
    # Rotation may leave fewer than two checkpoints beside a store whose rows are all done: no error then.
    if len(listed) < 2 and (overwrite or state != "store"):
        raise RunDirError(
            f"{run} holds {len(listed)} checkpoint(s); LCA needs at least two, one per iteration ("
            f"{describe_folder(run)}; checkpoints are *.safetensors/*.pt/*.pth/*.bin/*.ckpt files with the step "
            "in their name or metadata, or checkpoint-N/ step_N/ folders holding model.safetensors or "
            "pytorch_model.bin)"
        )
    for message in found_notes:
        say(message)
    if listed and listed[0].step != 0 and state != "store":
        say(
            f"the first checkpoint is step {listed[0].step}: the iterations before it are not in the store (save "
            "the initial weights as step 0; the lca callbacks for Hugging Face and Lightning do)"
        )
    gaps = step_gaps([r.step for r in listed])
    if gaps and state != "store":
        a, b = gaps[0]
        more = f" and {len(gaps) - 1} more" if len(gaps) > 1 else ""
        say(
            f"steps {a} -> {b}{more} span more iterations than the run's other pairs: checkpoints missing? Such a "
            "pair's row is the LCA of every iteration between its checkpoints"
        )
    return listed


def build_plan(
    run_dir: str | Path,
    config: Config,
    out: str | Path | None = None,
    *,
    schedule: Schedule | None = None,
    overwrite: bool = False,
    repair: bool = False,
    unsafe_pickle: bool = False,
    hooks: Hooks | None = None,
    team: Team | None = None,
    refs: Sequence[CheckpointRef] | None = None,
    note: NoteFn | None = None,
) -> ComputePlan:
    """Resolve everything a ``compute`` call needs before its first pair (the one place it is done).

    Args:
        run_dir: The run directory.
        config: The config (its compute options validated or not; automatic ones are resolved here).
        out: The store path (default ``RUN_DIR/lca.zarr``).
        schedule: Which pairs, with whom, whether to follow (default: every pair, alone).
        overwrite: Replace an existing store.
        repair: Verify and repair the store first.
        unsafe_pickle: Allow torch checkpoints that need pickle.
        hooks: How the call runs (default :class:`Hooks`).
        team: This process's ``torchrun`` job (its local rank picks the CUDA device), or None.
        refs: The checkpoints when the caller listed them (a follower waited for them); else they are found.
        note: Receives one-line notes (how checkpoints were found, a missing step 0, a gap in the steps).

    Returns:
        The plan.

    Raises:
        RunDirError: If the run holds fewer than two checkpoints (and no store of it exists).
        UsageError: If an option is invalid or the device is not available.
        CheckpointError: If the newest checkpoint cannot be read (its dtype picks ``dtype="auto"``).

    """
    config.compute.validate()
    run = Path(run_dir)
    target = default_out(run, out)
    state = inspect_path(target, deep=False).kind
    listed = _checkpoints(run, refs, state, overwrite, unsafe_pickle, note or (lambda message: None))
    device = resolve_device(config.compute.device, team)
    # Concrete dtype and tolerances: they are what the store records and a resume must match. dtype "auto" is the
    # checkpoints' own dtype (every rank reads the same checkpoint).
    ckpt_dtype = "float32"
    if config.compute.dtype == "auto":
        key = config.compute.state_dict_key or None
        ckpt_dtype = _auto_dtype(listed, target, overwrite, unsafe_pickle, key, note or (lambda message: None))
    resolved = dataclasses.replace(config, compute=config.compute.resolved(device.type, ckpt_dtype))
    return ComputePlan(
        run_dir=run, out=target, config=resolved, refs=tuple(listed), device=device, store_state=state,
        schedule=schedule or Schedule(), overwrite=overwrite, repair=repair, unsafe_pickle=unsafe_pickle,
        hooks=hooks or Hooks(),
    )  # fmt: skip


@contextlib.contextmanager
def environment(options: ComputeOptions, base_dir: Path | None) -> Iterator[None]:
    """The process-wide settings a computation runs under, restored afterwards.

    TF32 as ``allow_tf32`` says (cuDNN convolutions default to TF32 on Ampere+; LCA wants strict fp32 unless
    asked), torch's thread count when fixed (``threads="auto"`` is chosen later, by measurement, inside this
    context), and the config's folder on the import path (a factory or a forward may import lazily).

    Args:
        options: The compute options (resolved or not: neither setting depends on the resolution).
        base_dir: The config file's folder.

    """
    old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    old_threads = torch.get_num_threads()
    torch.backends.cuda.matmul.allow_tf32 = options.allow_tf32
    torch.backends.cudnn.allow_tf32 = options.allow_tf32
    try:
        if isinstance(options.threads, int) and options.threads > 0:
            torch.set_num_threads(options.threads)
        with import_path(base_dir):
            yield
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32
