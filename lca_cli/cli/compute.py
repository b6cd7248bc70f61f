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

from lca_cli.cli.common import SECURITY_HELP, epilog, err
from lca_cli.computation.options import OPTIONS, Option
from lca_cli.errors import (
    EXIT_INTERRUPTED,
    EXIT_SIGHUP,
    EXIT_SIGTERM,
    Interrupted,
)

__all__ = ["compute"]

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


def _click_option(option: Option) -> Any:
    """The click option of one entry of the option spec (``[compute]`` keys default to None: the config wins)."""
    kwargs: dict[str, Any] = {"help": option.help_text}
    if option.metavar:
        kwargs["metavar"] = option.metavar
    if option.type is bool and option.switch:
        flag = option.cli_flag
        return click.option(f"{flag}/--no-{flag[2:]}", option.name, default=None, **kwargs)
    if option.type is bool:
        return click.option(option.cli_flag, option.name, is_flag=True, **kwargs)
    if option.type is tuple:
        return click.option(option.cli_flag, option.name, multiple=True, **kwargs)
    if option.choices:
        kwargs["type"] = click.Choice(list(option.choices))
    elif option.type == "threads":
        kwargs["type"] = _THREADS
    elif option.type is not str:
        kwargs["type"] = option.type
    return click.option(option.cli_flag, option.name, **kwargs)


def _spec_options(config_keys: bool) -> Any:
    """Decorate a command with the spec's options: the ``[compute]`` keys, or the options of one call."""

    def decorate(f: Any) -> Any:
        for option in reversed([o for o in OPTIONS if o.config_key == config_keys]):
            f = _click_option(option)(f)
        return f

    return decorate


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
        "lca compute runs/exp1                  # -> runs/exp1/lca.zarr; resumes",
        "lca compute runs/exp1 --dtype float32 --rtol 1e-3 --threads 1",
        "lca compute runs/exp1 --config exp.toml --out /data/exp1.zarr --json",
        "torchrun --standalone --nproc-per-node 4 -m lca_cli compute runs/exp1",
        "lca compute runs/exp1 --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT",
        "lca compute runs/exp1 --follow --prune # beside training, bounded disk",
        "lca compute runs/exp1 --dry-run --granularity neuron",
        before_exit_codes=SECURITY_HELP,
    )
)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path), help="Config TOML [default: RUN_DIR/lca.toml]."
)
@click.option("--out", type=click.Path(path_type=Path), help="Store path [default: RUN_DIR/lca.zarr].")
@_spec_options(config_keys=True)
@_spec_options(config_keys=False)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Compute the first pairs (up to 3, 60 s) into a temporary store and print what was measured (gradients "
    "per pair, time per pair, peak memory), the store's size and a time estimate; nothing is kept.",
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
    dry_run: bool,
    as_json: bool,
    progress_mode: str,
    quiet: bool,
    **options: Any,
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
    planned: Any = None
    # stdout is lca's: the user's factories, forward passes and losses run inside this call, and whatever they
    # print goes to stderr, so that stdout holds only what lca prints after it (one JSON document with --json).
    with _stop_signals(stop, received), contextlib.redirect_stdout(sys.stderr):
        from lca_cli.analysis.reduce import parse_window
        from lca_cli.computation.distributed import env_rank
        from lca_cli.computation.entry import check_strict, plan_of, prepare_call
        from lca_cli.computation.runner import compute as run_compute

        window = parse_window(options.pop("steps"))
        rank = env_rank()
        quiet = quiet or bool(rank)  # the other ranks of a torchrun job are quiet: rank 0 reports
        call = prepare_call(
            run_dir, out, config=config_path, dry_run=dry_run, stop=stop, steps=(window.start, window.stop), **options
        )
        if dry_run:
            from lca_cli.computation.dryrun import dry_run as measure

            planned = measure(plan_of(call))
        else:
            result = run_compute(
                call.run_dir,
                call.config,
                call.out,
                overwrite=call.overwrite,
                repair=call.repair,
                progress=_reporter(quiet, progress_mode),
                stop=stop,
                unsafe_pickle=call.unsafe_pickle,
                note=None if quiet else (lambda message: err(f"Note: {message}")),
                schedule=call.schedule,
            )
    if planned is not None:
        if rank:
            return  # under torchrun, rank 0 prints the plan
        if as_json:
            click.echo(json.dumps(planned.to_dict(), indent=1))
        else:
            for line in planned.lines():
                click.echo(line)
        return
    if rank:  # a torchrun rank other than 0: rank 0 prints the job's result
        if result.interrupted:
            sys.exit(_STOP_SIGNALS[signal.Signals(received[0])][0] if received else EXIT_INTERRUPTED)
        return

    if as_json:
        click.echo(json.dumps(_result_json(result)))
    # Stopped before a store was opened (a signal during start-up, or a helper stopped while it waited): no counts.
    before_store = result.interrupted and result.n_pairs == 0
    if not quiet and not before_store:
        _summary(result)
    for line in _flag_warnings(result):
        err(line)
    if result.interrupted:
        code, name = _STOP_SIGNALS[signal.Signals(received[0])] if received else (EXIT_INTERRUPTED, "Interrupted")
        if before_store:
            err(f"{name} during start-up: nothing was computed or written; rerun the same command to start.")
        else:
            err(f"{name}: {result.store} is resumable; rerun the same command to continue.")
        sys.exit(code)
    if call.strict:
        check_strict(result)


def _reporter(quiet: bool, mode: str) -> Any:
    """The progress reporter ``--progress`` and ``--quiet`` ask for (None: no progress)."""
    from lca_cli.cli.progress import BarProgress, PlainProgress

    if quiet or mode == "none":
        return None
    if mode == "bar" or (mode == "auto" and sys.stderr.isatty()):
        return BarProgress()
    return PlainProgress()


def _summary(result: Any) -> None:
    """The one-line summary on stderr: counts, rate, device, repairs, pruning; why following ended."""
    rate = f"{result.computed / result.seconds:.2f} pairs/s on " if result.computed and result.seconds > 0 else ""
    repaired = f", {result.repaired} damaged row(s) recomputed" if result.repaired else ""
    procs = f" in {result.processes} processes" if result.processes > 1 else ""
    others = f", {result.by_others} by other processes meanwhile" if result.by_others else ""
    scope = f" ({result.scope})" if result.scope != "every pair" else ""
    pruned = f"; {result.pruned} checkpoint(s) pruned" if result.pruned else ""
    total = f"{result.n_pairs} in total"
    if result.interrupted:  # done and planned apart: "in total" read as done after a SIGTERM
        left = result.n_pairs - result.computed - result.skipped - result.by_others
        total = f"{result.n_pairs} planned" + (f", {left} not done" if result.scope == "every pair" else "")
    err(
        f"{result.store}: {result.computed} pair(s) computed{procs}{scope}{others}, {result.skipped} already done, "
        f"{total} ({rate}{result.device}){repaired}{pruned}"
    )
    if result.ended:
        err(f"Note: {result.ended}")


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
        "gradients": result.gradients,
        "gradients_per_pair": round(result.gradients_per_pair, 4),
        "reused": result.reused,
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
