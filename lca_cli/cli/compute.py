"""``lca compute``: the options, signal handling and result rendering of the one command that computes."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from lca_cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_SIGHUP,
    EXIT_SIGTERM,
    Interrupted,
    ToleranceError,
)

__all__ = ["compute"]

from lca_cli.cli.common import SECURITY_HELP, epilog, err

#: Stop signals handled like Ctrl-C, with their exit codes and names.
_STOP_SIGNALS = {
    signal.SIGINT: (EXIT_INTERRUPTED, "Interrupted"),
    signal.SIGTERM: (EXIT_SIGTERM, "Terminated (SIGTERM)"),
    **({signal.SIGHUP: (EXIT_SIGHUP, "Hung up (SIGHUP)")} if hasattr(signal, "SIGHUP") else {}),
}


class _ThreadsType(click.ParamType):
    """``auto`` or a non-negative integer."""

    name = "auto|N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not auto or an integer", param, ctx)


_THREADS = _ThreadsType()


def _compute_options(f: Any) -> Any:
    opts = [
        click.option(
            "--method",
            type=click.Choice(["rk4", "euler"]),
            help="rk4: adaptive composite Simpson (the paper's 'RK4'; default). euler: first order, for comparison.",
        ),
        click.option(
            "--refine",
            type=click.Choice(["local", "doubling"]),
            help="local: split only the sub-intervals whose per-parameter error estimate is large (default). "
            "doubling: double every sub-interval while the residual is over tolerance (the former default).",
        ),
        click.option(
            "--l1-tol",
            type=float,
            help="Per-parameter accuracy target: refine until a row's estimated L1 error is at most this times "
            "its L1 norm, or the run's scale when that is larger (--l1-scope), so the run's relative L1 "
            "error per parameter is about this [default 1e-3; --refine doubling: 0 = off, else the relative L1 "
            "change of the last doubling].",
        ),
        click.option(
            "--l1-scope",
            type=click.Choice(["run", "pair"]),
            help="What --l1-tol is relative to. run: a pair's own L1 norm or the run's scale, whichever is larger "
            "(0.8 x the mean L1 norm of 8 pairs spread over the run, measured when the store is created and "
            "recorded in it), so pairs that hardly move are not refined for their own sake (default). pair: "
            "every pair to its own row (costlier on ReLU nets; what stores made before this option used).",
        ),
        click.option(
            "--tolerance",
            type=float,
            help="Absolute residual tolerance per pair, in loss units: also refine until |residual| <= tolerance "
            "+ rtol*|ΔL| [default: none; --refine doubling: 1e-9 in float64, 1e-7 in float32].",
        ),
        click.option(
            "--rtol",
            type=float,
            help="Relative residual tolerance per pair (see --tolerance) [default: none; --refine doubling: 1e-4].",
        ),
        click.option(
            "--max-splits",
            type=int,
            help="Cap on sub-intervals (power of two) [default 32]; 2 = plain Simpson, no refinement.",
        ),
        click.option("--batch-size", type=int, help="Evaluation chunk size in samples [default 1024]."),
        click.option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N [default auto]."),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "float64"]),
            help="Network dtype; sums are float64 either way [default auto: the checkpoints' dtype].",
        ),
        click.option(
            "--bn-mode",
            type=click.Choice(["batch", "running"]),
            help="BatchNorm: batch = statistics of each evaluation chunk (the paper; default); running = "
            "checkpoint running statistics, interpolated, their share stored as buffer_lca.",
        ),
        click.option(
            "--allow-tf32/--no-allow-tf32", default=None, help="Allow TF32 on GPU (faster, less exact) [off]."
        ),
        click.option("--compile/--no-compile", default=None, help="torch.compile the model (opt-in) [off]."),
        click.option("--rows-per-chunk", type=int, help="Store rows per chunk (0 = about 8 MiB per chunk)."),
        click.option(
            "--threads",
            type=_THREADS,
            help="CPU threads for torch: auto = time one thread against every usable core at start-up (and "
            "again when pairs slow down) and keep the faster; N fixes the count; 0 = torch's default [auto].",
        ),
        click.option(
            "--state-dict-key",
            help="Entry of the saved checkpoint dicts holding the model's state_dict (a/b for a deeper one) "
            "[found automatically: state_dict, model, model_state_dict or module].",
        ),
        click.option(
            "--granularity",
            type=click.Choice(["parameter", "neuron", "tensor"]),
            help="What a stored lca column holds: one parameter, one neuron (output unit of a layer) or one "
            "tensor; neuron and tensor rows take orders of magnitude less disk. Pairs are integrated over every "
            "parameter either way [parameter].",
        ),
        click.option(
            "--params",
            "params",
            multiple=True,
            metavar="GLOB",
            help="Store the columns of the tensors whose names match (repeatable, e.g. 'encoder.*'); the rest "
            "is stored as one '(other)' column, so rows still sum to the loss change [every tensor]. With "
            "--granularity neuron a match keeps its whole layer (a neuron sums every tensor of it).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@contextlib.contextmanager
def _stop_signals(stop: threading.Event, received: list[int]) -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP set ``stop`` (finish the current pair, save rows); a second one aborts.

    Signals a parent set to be ignored (``nohup`` ignores SIGHUP) stay ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        code, name = _STOP_SIGNALS[signal.Signals(signum)]
        if stop.is_set():
            raise Interrupted(code)
        received.append(signum)
        stop.set()
        again = "Ctrl-C" if signum == signal.SIGINT else "send it"
        err(f"{name}: finishing the current pair and saving finished rows ({again} again to abort)...")

    previous = {}
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@click.command(
    epilog=epilog(
        "lca compute runs/exp1                          # -> runs/exp1/lca.zarr (resumes if it exists)",
        "lca compute runs/exp1 --dtype float32 --rtol 1e-3 --threads 1",
        "lca compute runs/exp1 --config exp.toml --out /data/exp1.zarr --json",
        "torchrun --standalone --nproc-per-node 4 -m lca_cli compute runs/exp1   # 4 GPUs or processes",
        "lca compute runs/exp1 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
        "lca compute runs/exp1 --follow --prune          # beside training, under a disk budget",
        "lca compute runs/exp1 --dry-run --granularity neuron",
        before_exit_codes=SECURITY_HELP,
    )
)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config TOML [RUN_DIR/lca.toml].")
@click.option("--out", type=click.Path(path_type=Path), help="Store path [RUN_DIR/lca.zarr].")
@_compute_options
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace an existing lca store instead of resuming it (only an lca store or an empty folder is ever "
    "replaced; the old store stays until the new one has its first rows).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Verify every chunk's checksum and recompute the rows of damaged chunks (see `lca verify`).",
)
@click.option(
    "--unsafe-pickle",
    is_flag=True,
    help="Allow torch checkpoints that need pickle (it can run any code: only for files you trust) [off: "
    "weights_only=True].",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Exit with code 8 when a pair computed by this call stays over tolerance at the cap (pairs flagged by "
    "earlier calls are reported, not judged again).",
)
@click.option(
    "--steps",
    "steps_window",
    metavar="A:B",
    help="Compute only the pairs whose start step is in A:B (half-open; either end may be omitted) [all].",
)
@click.option(
    "--shard",
    metavar="I/N",
    help="Compute the I-th of N contiguous parts of the pairs (Slurm array tasks, machines without torchrun); "
    "parts may run at once (implies --cooperate) or one after another.",
)
@click.option(
    "--cooperate",
    is_flag=True,
    help="When another lca compute holds the store, compute the chunks it has not claimed instead of exiting 9.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep computing pairs as checkpoints arrive (beside training); stops at --until, at the end marker "
    "lca.end the lca writer and callbacks leave, or after --idle-timeout.",
)
@click.option("--until", type=int, metavar="STEP", help="With --follow: stop once every pair before STEP is done.")
@click.option(
    "--idle-timeout",
    type=float,
    metavar="SECONDS",
    help="With --follow: stop after this long without a new checkpoint [1800].",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Delete each checkpoint once every pair needing it is stored (never the newest; only the run's "
    "checkpoint files and folders). Only when no other store is still to be computed from the run.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the plan (pairs, gradients per pair, a time estimate from one measured gradient, disk sizes) "
    "and exit; nothing is written.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result object on stdout (for scripts).")
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(["auto", "bar", "plain", "none"]),
    default="auto",
    show_default=True,
    help="Progress on stderr: a bar, plain lines (start, every 30 s, end: for logs), or none; auto = bar on a "
    "terminal, plain otherwise.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress or summary on stderr (warnings still shown).")
def compute(
    run_dir: Path,
    config_path: Path | None,
    out: Path | None,
    overwrite: bool,
    repair: bool,
    unsafe_pickle: bool,
    strict: bool,
    steps_window: str | None,
    shard: str | None,
    cooperate: bool,
    follow: bool,
    until: int | None,
    idle_timeout: float | None,
    prune: bool,
    dry_run: bool,
    as_json: bool,
    progress_mode: str,
    quiet: bool,
    **flags: Any,
) -> None:
    """Compute the LCA of every consecutive checkpoint pair of RUN_DIR into a Zarr store.

    RUN_DIR holds one checkpoint per iteration, in any layout training code writes: *.safetensors,
    *.pt/*.pth/*.bin/*.ckpt files (loaded without pickle), or per-step folders (Hugging Face checkpoint-N/,
    accelerate checkpoint_N/, step_N/, sharded or not); nested state dicts, DDP/compile/Lightning key
    prefixes and tied weights are handled. Checkpoints are ordered by step (metadata, the framework's record,
    else the digits in the name). RUN_DIR/lca.toml says how to rebuild the model, the fixed evaluation
    set(s) and the loss (see README). Flags override the config's [compute] table.

    Rerunning on an existing store resumes: finished pairs are never recomputed and checkpoints that
    arrived since are appended (safe for cron; checkpoints deleted after their rows were stored are fine).
    Ctrl-C, SIGTERM and SIGHUP stop after the current pair and keep every finished row (exit 130, 143,
    129); run the same command again to continue. One lca compute at a time per store (exit 9 otherwise),
    unless --cooperate (or --shard): then the processes share the store's chunks (see README, "Many GPUs and
    nodes").
    """
    stop = threading.Event()
    received: list[int] = []
    with _stop_signals(stop, received):  # before the slow imports: a SIGTERM during start-up is handled too
        from lca_cli.analysis.reduce import parse_window
        from lca_cli.cli.progress import BarProgress, PlainProgress
        from lca_cli.computation.config import load_config
        from lca_cli.computation.distributed import Scope, env_rank, parse_shard
        from lca_cli.computation.follow import IDLE_TIMEOUT_SECONDS, wait_for_file
        from lca_cli.computation.pipeline import Schedule
        from lca_cli.computation.pipeline import compute as run_compute

        window = parse_window(steps_window)
        part, parts = parse_shard(shard)
        schedule = Schedule(
            Scope(window.start, window.stop, part, parts), cooperate=cooperate, follow=follow, until=until,
            idle_timeout=IDLE_TIMEOUT_SECONDS if idle_timeout is None else idle_timeout, prune=prune,
        )  # fmt: skip
        rank = env_rank()
        quiet = quiet or bool(rank)  # the other ranks of a torchrun job are quiet: rank 0 reports
        flags["params"] = tuple(flags.get("params") or ()) or None
        config_file = config_path or run_dir / "lca.toml"
        if config_path is None and not follow and not run_dir.is_dir():  # a mistyped RUN_DIR, not a missing config
            from lca_cli.errors import RunDirError

            raise RunDirError(f"run directory {run_dir} does not exist (or is not a directory)")
        if follow and not dry_run:  # training may not have written lca.toml yet
            wait_for_file(config_file, schedule.idle_timeout, stop)
        config = load_config(config_file)
        config = config.with_overrides(**flags)
        config.compute.validate()
        if dry_run:
            from lca_cli.computation.dryrun import plan

            planned = plan(run_dir, config, out, schedule, unsafe_pickle=unsafe_pickle)
            if rank:
                return  # under torchrun, rank 0 prints the plan
            if as_json:
                click.echo(json.dumps(planned.to_dict(), indent=1))
            else:
                for line in planned.lines():
                    click.echo(line)
            return
        if quiet or progress_mode == "none":
            reporter: Any = None
        elif progress_mode == "bar" or (progress_mode == "auto" and sys.stderr.isatty()):
            reporter = BarProgress()
        else:
            reporter = PlainProgress()
        result = run_compute(
            run_dir,
            config,
            out,
            overwrite=overwrite,
            repair=repair,
            progress=reporter,
            stop=stop,
            unsafe_pickle=unsafe_pickle,
            note=None if quiet else (lambda message: err(f"Note: {message}")),
            schedule=schedule,
        )
    if rank:  # a torchrun rank other than 0: rank 0 prints the job's result
        if result.interrupted:
            sys.exit(_STOP_SIGNALS[signal.Signals(received[0])][0] if received else EXIT_INTERRUPTED)
        return

    if as_json:
        click.echo(json.dumps(_result_json(result)))
    # Stopped before a store was opened (a signal during start-up, or a helper stopped while it waited): no counts.
    before_store = result.interrupted and result.n_pairs == 0
    if not quiet and not before_store:
        rate = f"{result.computed / result.seconds:.2f} pairs/s on " if result.computed and result.seconds > 0 else ""
        repaired = f", {result.repaired} damaged row(s) recomputed" if result.repaired else ""
        procs = f" in {result.processes} processes" if result.processes > 1 else ""
        others = f", {result.by_others} by other processes meanwhile" if result.by_others else ""
        scope = f" ({result.scope})" if result.scope != "every pair" else ""
        pruned = f"; {result.pruned} checkpoint(s) pruned" if result.pruned else ""
        err(
            f"{result.store}: {result.computed} pair(s) computed{procs}{scope}{others}, {result.skipped} already done, "
            f"{result.n_pairs} in total ({rate}{result.device}){repaired}{pruned}"
        )
        if result.ended:
            err(f"Note: {result.ended}")
    for line in _flag_warnings(result):
        err(line)
    if result.interrupted:
        code, name = _STOP_SIGNALS[signal.Signals(received[0])] if received else (EXIT_INTERRUPTED, "Interrupted")
        if before_store:
            err(f"{name} during start-up: nothing was computed or written; rerun the same command to start.")
        else:
            err(f"{name}: {result.store} is resumable; rerun the same command to continue.")
        sys.exit(code)
    new_flagged = {s: len(a.flagged_new) for s, a in result.accuracy.items() if a.flagged_new}
    if strict and new_flagged:
        counts = " and ".join(f"{n} of set {s}" for s, n in new_flagged.items())
        raise ToleranceError(f"pairs computed by this call over tolerance (--strict): {counts}")


def _result_json(result: Any) -> dict[str, Any]:
    """The ``--json`` object of ``lca compute``: counts, flags per set (cumulative, and this call's), settings."""
    acc = {s: a.to_dict() for s, a in result.accuracy.items()}
    return {
        "store": str(result.store),
        "pairs": result.n_pairs,
        "computed": result.computed,
        "skipped": result.skipped,
        "flagged": {s: a["flagged"] for s, a in acc.items()},
        "flagged_new": {s: a["flagged_new"] for s, a in acc.items()},
        "accuracy": acc,
        "max_abs_residual": result.max_abs_residual,
        "settings": result.settings,
        "threads": result.threads,
        "seconds": round(result.seconds, 3),
        "device": result.device,
        "interrupted": result.interrupted,
        "repaired": result.repaired,
        "processes": result.processes,
        "by_others": result.by_others,
        "role": result.role,
        "scope": result.scope,
        "pruned": result.pruned,
        "ended": result.ended,
    }


def _flag_warnings(result: Any) -> list[str]:
    """Warnings for sets with flagged pairs: counts, the worst residual on the run's scale, the fix."""
    lines = []
    for s, a in result.accuracy.items():
        if not a.flagged:
            continue
        scale = (
            f"{abs(a.worst_residual) / a.mean_abs_delta:.2g}x the run's mean |ΔL| per pair ({a.mean_abs_delta:.3g})"
            if a.mean_abs_delta > 0
            else "the loss never moved"
        )
        own = f", {abs(a.worst_residual / a.worst_delta):.2g}x its own |ΔL|" if a.worst_delta else ""
        fix = a.suggestion(result.settings)
        lines.append(
            f"Warning: set {s}: {len(a.flagged)} pair(s) over tolerance ({len(a.flagged_new)} computed now; first "
            f"steps {a.flagged[:5]}); the worst, step {a.worst_step} at {a.worst_splits} sub-interval(s), has "
            f"|residual| {abs(a.worst_residual):.3g} = {scale}{own}; the run conserves to {a.conservation:.2g} "
            "of Σ|ΔL|" + (f"; {fix}" if fix else "") + f"; see `lca summarize {result.store} --by iteration`"
        )
    return lines
