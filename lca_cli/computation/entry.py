"""The library entry point of the computation: :func:`compute_run`, options by keyword, errors that name them.

``compute_run(run_dir, out=None, **options)`` takes every option of ``lca compute`` under its Python name, with
the same defaults (:mod:`lca_cli.computation.options`), and the CLI turns its flags into the same call
(:func:`prepare_call`, then :func:`~lca_cli.computation.runner.compute`). Errors are the classes of
:mod:`lca_cli.errors`; from :func:`compute_run` their messages name arguments (``max_splits``), from the CLI
flags (``--max-splits``): an error raised here keeps the CLI's text in ``cli_message``.

Example::

    from lca_cli.computation.entry import compute_run

    result = compute_run("runs/exp1", max_splits=8, threads=1)
    print(result.store, result.computed, result.gradients_per_pair, result.flagged_pairs)
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lca_cli.computation.config import Config, FactorySpec, load_config
from lca_cli.computation.datafiles import data_spec
from lca_cli.computation.distributed import Scope, parse_shard
from lca_cli.computation.dryrun import DryRun, dry_run
from lca_cli.computation.follow import wait_for_file, wait_until
from lca_cli.computation.hf_models import auto_config, with_adapters
from lca_cli.computation.options import COMPUTE_KEYS, RUN_KEYS, default_of, speak_arguments
from lca_cli.computation.plan import ComputePlan, Hooks, Schedule, build_plan
from lca_cli.computation.result import ComputeResult, NoteFn, ProgressFn, ProgressReporter
from lca_cli.computation.runner import compute
from lca_cli.errors import LcaError, RunDirError, ToleranceError, UsageError

__all__ = ["Call", "check_strict", "compute_run", "plan_of", "plan_run", "prepare_call", "speaking_arguments"]

#: Flags of ``lca compute`` that are arguments of :func:`compute_run` but not options of the spec.
_ALIASES = {"--out": "out", "--config": "config", "--dry-run": "plan_run()"}


@dataclass(frozen=True)
class Call:
    """One ``compute`` call's arguments, resolved: the config with its overrides, the schedule, the switches.

    Attributes:
        run_dir: The run directory.
        out: The store path, or None for ``RUN_DIR/lca.zarr``.
        config: The config, ``[compute]`` overridden by the options given.
        schedule: Which pairs, with whom, whether to follow.
        overwrite: Replace an existing store.
        repair: Verify and repair the store first.
        unsafe_pickle: Allow torch checkpoints that need pickle.
        strict: Fail when a pair computed by this call stays over tolerance.

    """

    run_dir: Path
    out: Path | None
    config: Config
    schedule: Schedule
    overwrite: bool
    repair: bool
    unsafe_pickle: bool
    strict: bool


def _window(steps: Any) -> tuple[int | None, int | None]:
    if steps is None:
        return None, None
    if isinstance(steps, tuple | list) and len(steps) == 2 and all(s is None or isinstance(s, int) for s in steps):
        return steps[0], steps[1]
    raise UsageError(f"--steps {steps!r}: expected (A, B) with integer steps, either of them None")


def prepare_call(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    config: str | Path | Config | None = None,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    **options: Any,
) -> Call:
    """Resolve a call's options: load the config, apply the ``[compute]`` options given, build the schedule.

    Args:
        run_dir: The run directory.
        out: The store path (default ``RUN_DIR/lca.zarr``).
        config: A config file, a loaded :class:`Config`, or None for ``RUN_DIR/lca.toml``.
        dry_run: Only planning: with ``follow``, do not wait for the config file to appear.
        stop: Ends a wait for the config file (``follow``).
        **options: Options of :data:`~lca_cli.computation.options.OPTIONS` by name; None or absent: the config's
            value, else the default. ``steps`` is ``(A, B)`` (either None), ``shard`` ``"I/N"``.

    Returns:
        The call.

    Raises:
        UsageError: For an unknown option or a bad value.
        ConfigError: If the config cannot be loaded.
        RunDirError: If the run directory does not exist.

    """
    unknown = sorted(set(options) - set(COMPUTE_KEYS) - set(RUN_KEYS))
    if unknown:
        known = ", ".join((*COMPUTE_KEYS, *RUN_KEYS))
        raise UsageError(f"unknown option(s) {', '.join(unknown)} (options: {known})")
    given = {k: v for k, v in options.items() if v is not None}
    run: dict[str, Any] = {k: given.get(k, default_of(k)) for k in RUN_KEYS}
    start, stop_step = _window(run["steps"])
    part, parts = parse_shard(run["shard"])
    schedule = Schedule(
        Scope(start, stop_step, part, parts), cooperate=run["cooperate"], follow=run["follow"], until=run["until"],
        idle_timeout=run["idle_timeout"], prune=run["prune"],
    )  # fmt: skip
    run_path = Path(run_dir)
    data = None if run["data"] is None else data_spec(run["data"])
    zero_glue = None  # a Hugging Face run without lca.toml: the model from its checkpoints' config.json
    if config is None and not (run_path / "lca.toml").is_file() and run_path.is_dir():
        zero_glue = auto_config(run_path, data)
    if zero_glue is None and config is None and data is not None and run["follow"] and not dry_run:
        # Following a Hugging Face run from its start: its first checkpoint folder (with config.json) may come
        # before any lca.toml ever will; wait for whichever appears first.
        zero_glue = _wait_for_model(run_path, data, schedule.idle_timeout, stop)
    if isinstance(config, Config):
        loaded = config
    elif zero_glue is not None:
        loaded = zero_glue
    else:
        config_file = Path(config) if config is not None else run_path / "lca.toml"
        if config is None and not run["follow"] and not run_path.is_dir():  # a mistyped RUN_DIR, not a config
            raise RunDirError(f"run directory {run_path} does not exist (or is not a directory)")
        if run["follow"] and not dry_run:  # training may not have written lca.toml yet
            wait_for_file(config_file, schedule.idle_timeout, stop)
        loaded = load_config(config_file)
    if data is not None:  # --data replaces the config's evaluation sets
        loaded = dataclasses.replace(loaded, data={"train": data})
    if run_path.is_dir():  # adapter-only checkpoints: the config's model is the frozen base under the adapter
        loaded = with_adapters(loaded, run_path)
    overrides = {k: v for k, v in given.items() if k in COMPUTE_KEYS}
    if "params" in overrides:
        overrides["params"] = tuple(overrides["params"]) or None
    loaded = loaded.with_overrides(**overrides)
    loaded.compute.validate()
    return Call(
        run_path, None if out is None else Path(out), loaded, schedule, run["overwrite"], run["repair"],
        run["unsafe_pickle"], run["strict"],
    )  # fmt: skip


def check_strict(result: ComputeResult) -> None:
    """Fail when a pair computed by the call stays over tolerance at the cap (``strict``).

    Raises:
        ToleranceError: Naming the count per set.

    """
    new_flagged = {s: len(a.flagged_new) for s, a in result.accuracy.items() if a.flagged_new}
    if new_flagged:
        counts = " and ".join(f"{n} of set {s}" for s, n in new_flagged.items())
        raise ToleranceError(f"pairs computed by this call over tolerance (--strict): {counts}")


@contextlib.contextmanager
def speaking_arguments(aliases: Mapping[str, str] = _ALIASES) -> Iterator[None]:
    """Errors raised inside name arguments instead of flags; the CLI's text stays in ``cli_message``.

    Args:
        aliases: Flags that are arguments but no options of the spec (``--out`` -> ``out``).

    """
    try:
        yield
    except LcaError as exc:
        text = str(exc)
        spoken = speak_arguments(text, aliases)
        if spoken != text:
            exc.cli_message = text  # type: ignore[attr-defined]
            exc.args = (spoken, *exc.args[1:])
        raise


def compute_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    config: str | Path | Config | None = None,
    progress: ProgressFn | ProgressReporter | None = None,
    stop: threading.Event | None = None,
    note: NoteFn | None = None,
    hooks: Hooks | None = None,
    **options: Any,
) -> ComputeResult:
    """Compute (or resume, extend, repair) the LCA store of a run: ``lca compute`` as a function.

    Args:
        run_dir: Directory of checkpoints.
        out: Store path (default ``RUN_DIR/lca.zarr``).
        config: A config file, a loaded :class:`~lca_cli.computation.config.Config`, or None for
            ``RUN_DIR/lca.toml``.
        progress: Called after every pair with ``(done, total)``, or a
            :class:`~lca_cli.computation.result.ProgressReporter`.
        stop: When set, finish the current pair, save finished rows and return (``interrupted``).
        note: Receives one-line notes (how checkpoints were found, choices made); their text names arguments.
        hooks: How the call runs, never what it computes (:class:`~lca_cli.computation.plan.Hooks`: read-ahead,
            synchronous writes, durability, flushing), for benchmarks.
        **options: Every option of ``lca compute`` by its Python name (``method``, ``max_splits``, ``threads``,
            ``granularity``, ``params``, ``overwrite``, ``repair``, ``strict``, ``steps=(A, B)``, ``shard="I/N"``,
            ``cooperate``, ``follow``, ``until``, ``idle_timeout``, ``prune``, ...): see
            :data:`~lca_cli.computation.options.OPTIONS`; the config's ``[compute]`` table gives those not given.

    Returns:
        The result: ``store``, ``computed``, ``gradients_per_pair``, ``flagged`` / ``flagged_pairs``, accuracy.

    Raises:
        LcaError: Every user-facing problem, as :mod:`lca_cli.errors` classes whose messages name arguments.
        ToleranceError: With ``strict=True``, when a pair computed by this call stays over tolerance.

    """
    with speaking_arguments():
        call = prepare_call(run_dir, out, config=config, stop=stop, **options)
        hooks = hooks or Hooks()
        result = compute(
            call.run_dir, call.config, call.out, overwrite=call.overwrite, repair=call.repair, progress=progress,
            stop=stop, flush_seconds=hooks.flush_seconds, durable=hooks.durable, unsafe_pickle=call.unsafe_pickle,
            note=None if note is None else (lambda message: note(speak_arguments(message, _ALIASES))),
            schedule=call.schedule, read_ahead=hooks.read_ahead, sync_writes=hooks.sync_writes,
            reuse_probes=hooks.reuse_probes,
        )  # fmt: skip
        if call.strict:
            check_strict(result)
    return result


def plan_run(
    run_dir: str | Path, out: str | Path | None = None, *, config: str | Path | Config | None = None, **options: Any
) -> DryRun:
    """What :func:`compute_run` would do and cost (``lca compute --dry-run``), measured on the first pairs.

    Args:
        run_dir: Directory of checkpoints.
        out: Store path (default ``RUN_DIR/lca.zarr``).
        config: A config file, a loaded config, or None for ``RUN_DIR/lca.toml``.
        **options: As for :func:`compute_run`.

    Returns:
        The dry run's figures (:class:`~lca_cli.computation.dryrun.DryRun`).

    """
    with speaking_arguments():
        call = prepare_call(run_dir, out, config=config, dry_run=True, **options)
        return dry_run(plan_of(call))


def plan_of(call: Call) -> ComputePlan:
    """The compute plan of a call, as ``compute`` builds it (:func:`~lca_cli.computation.plan.build_plan`)."""
    return build_plan(
        call.run_dir, call.config, call.out, schedule=call.schedule, overwrite=call.overwrite, repair=call.repair,
        unsafe_pickle=call.unsafe_pickle,
    )  # fmt: skip


def _wait_for_model(run_path: Path, data: FactorySpec, timeout: float, stop: threading.Event | None) -> Config | None:
    """``--follow --data`` before training wrote anything: the zero-glue config of the first checkpoint folder.

    Args:
        run_path: The run directory (it may not exist yet).
        data: ``--data``'s factory.
        timeout: Seconds to wait at most (``idle_timeout``).
        stop: Ends the wait early.

    Returns:
        The config built from the first folder's ``config.json``, or None when ``lca.toml`` appeared first.

    """
    found: list[Config] = []

    def ready() -> bool:
        if (run_path / "lca.toml").is_file():
            return True
        config = auto_config(run_path, data) if run_path.is_dir() else None
        if config is not None:
            found.append(config)
        return config is not None

    wait_until(ready, timeout, stop, f"neither {run_path / 'lca.toml'} nor a checkpoint folder with config.json found")
    return found[0] if found else None
