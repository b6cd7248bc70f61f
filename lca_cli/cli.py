"""The ``lca`` command line: parse, call one library function, render. Nothing else.

Data goes to stdout; progress, warnings and errors go to stderr. Every :class:`~lca_cli.errors.LcaError`
becomes one ``Error: ...`` line and its exit code, in :func:`main` only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from lca_cli import __version__
from lca_cli.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_SIGHUP,
    EXIT_SIGTERM,
    Interrupted,
    LcaError,
    StoreError,
    ToleranceError,
)

__all__ = ["cli", "main"]

EXIT_CODES_HELP = """\b
Exit codes:
  0 success   1 other error (e.g. report without matplotlib)
  2 bad option value      3 config error
  4 run directory error   5 checkpoint error
  6 store error (not an lca store, another run's or config's, damaged)
  7 non-finite loss       8 over tolerance (--strict)
  9 store busy (another lca compute holds it)
  10 storage refused (disk full, read-only, permission)
  70 internal error (a bug; traceback shown)
  130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (finished rows kept; rerun resumes)"""

SECURITY_HELP = """\b
Security: a run folder is code. lca.toml names factories that are imported
and called, and .py files beside it are importable, so run lca only on run
folders you trust, as you would run their training script. Checkpoints are
read without pickle (safetensors; .pt/.pth with torch.load(weights_only=True));
unpickling arbitrary objects is opt-in only (--unsafe-pickle)."""

#: Stop signals handled like Ctrl-C, with their exit codes and names.
_STOP_SIGNALS = {
    signal.SIGINT: (EXIT_INTERRUPTED, "Interrupted"),
    signal.SIGTERM: (EXIT_SIGTERM, "Terminated (SIGTERM)"),
    **({signal.SIGHUP: (EXIT_SIGHUP, "Hung up (SIGHUP)")} if hasattr(signal, "SIGHUP") else {}),
}


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(__version__, prog_name="lca")
def cli() -> None:
    r"""Loss Change Allocation: which parameters did the learning, from saved checkpoints.

    \b
    Typical use:
      lca compute runs/exp1                       # checkpoints -> runs/exp1/lca.zarr
      lca summarize runs/exp1/lca.zarr --by layer # who helped, who hurt
      lca report runs/exp1/lca.zarr --out exp1.html

    Each iteration's loss change L(θ_t+1) - L(θ_t) on a fixed evaluation set is split exactly among the
    parameters (negative LCA = helped, positive = hurt), by integrating the gradient along the straight
    segment between consecutive checkpoints.
    """


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
            "its L1 norm, so the run's relative L1 error per parameter is about this too [default 1e-3; "
            "--refine doubling: 0 = off, else the relative L1 change of the last doubling].",
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
        _err(f"{name}: finishing the current pair and saving finished rows ({again} again to abort)...")

    previous = {}
    for sig in _STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@cli.command(epilog=SECURITY_HELP + "\n\n" + EXIT_CODES_HELP)
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
    129); run the same command again to continue. One lca compute at a time per store (exit 9 otherwise).
    """
    stop = threading.Event()
    received: list[int] = []
    with _stop_signals(stop, received):  # before the slow imports: a SIGTERM during start-up is handled too
        from lca_cli.config import load_config
        from lca_cli.pipeline import compute as run_compute
        from lca_cli.progress import BarProgress, PlainProgress

        config = load_config(config_path or run_dir / "lca.toml")
        config = config.with_overrides(**flags)
        config.compute.validate()
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
            note=None if quiet else (lambda message: _err(f"Note: {message}")),
        )

    if as_json:
        click.echo(json.dumps(_result_json(result)))
    if not quiet:
        rate = result.computed / result.seconds if result.seconds > 0 else 0.0
        repaired = f", {result.repaired} damaged row(s) recomputed" if result.repaired else ""
        _err(
            f"{result.store}: {result.computed} pair(s) computed, {result.skipped} already done, "
            f"{result.n_pairs} in total ({rate:.2f} pairs/s on {result.device}){repaired}"
        )
    for line in _flag_warnings(result):
        _err(line)
    if result.interrupted:
        code, name = _STOP_SIGNALS[signal.Signals(received[0])] if received else (EXIT_INTERRUPTED, "Interrupted")
        _err(f"{name}: {result.store} is resumable; rerun the same command to continue.")
        sys.exit(code)
    new_flagged = sum(len(a.flagged_new) for a in result.accuracy.values())
    if strict and new_flagged:
        raise ToleranceError(f"{new_flagged} pair(s) computed by this call over tolerance (--strict)")


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


def _render_table(summary: Any, tied: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    h = summary.header
    console = Console(soft_wrap=False)

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else ""
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    helped = (
        f"{h['helped_fraction_mean']:.3f} ± {h['helped_fraction_sd']:.3f}"
        if h["helped_fraction_mean"] is not None
        else "-"
    )
    lines = [
        f"[bold]{h['store']}[/bold]  set [bold]{h['set']}[/bold]  steps {fmt(h['first_step'])}..{fmt(h['last_step'])}"
        f"  ({h['iterations']} of {h['iterations_total']} iterations, {h['parameters']:,} parameters)",
        f"ΔL {h['delta_loss']:.6g}   Σ LCA {h['sum_lca']:.6g}"
        + (f"   buffers {h['buffer_lca']:.3g}" if h["buffer_lca"] else "")
        + f"   max |residual| {h['max_abs_residual']:.3g}   flagged pairs {h['flagged']}",
        f"helped fraction per iteration {helped}  (exact zeros excluded)",
    ]
    if tied:
        ties = ", ".join(f"{alias} = {owner}" for alias, owner in tied.items())
        lines.append(f"tied parameters (one tensor, its LCA listed under the second name): {ties}")
    for line in lines:
        console.print(line, highlight=False)
    table = Table(show_header=True, header_style="bold")
    for col in summary.columns:
        table.add_column(col, justify="left" if col == "name" else "right")
    for row in summary.rows:
        table.add_row(*(fmt(row.get(c)) for c in summary.columns))
    console.print(table)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--by", type=click.Choice(["layer", "tensor", "neuron", "iteration"]), default="layer", show_default=True,
              help="layer = parameter name minus its last component; neuron = output unit (dim 0).")  # fmt: skip
@click.option("--set", "set_name", help="Evaluation set [train, else the first].")
@click.option("--steps", help="Window of iterations by start step, A:B (half-open; either end optional).")
@click.option("--top", type=int, help="Show only the first N rows (after sorting).")
@click.option("--sort", type=click.Choice(["model", "helped", "hurt", "abs"]),
              help="model order (default; neurons: helped), most helpful first, most harmful first, "
              "or by |LCA|.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def summarize(
    store: Path, by: str, set_name: str | None, steps: str | None, top: int | None, sort: str | None, fmt: str
) -> None:
    """Summarise an LCA store: totals and who helped (LCA < 0) or hurt (LCA > 0).

    The header gives the total loss change ΔL, the sum of all LCA (equal to ΔL up to the residual), the
    largest |residual|, the pairs flagged over tolerance, and the mean ± sd fraction of parameters that
    helped per iteration (parameters with LCA exactly 0 count as neither). Rows give, per group, its
    parameter count, LCA (loss units), share of the total Σ LCA and helped fraction (over its non-zero
    entries). --format json prints one object {"header", "columns", "rows"}; csv prints the rows only.
    """
    from lca_cli.reduce import parse_window
    from lca_cli.reduce import summarize as run_summarize
    from lca_cli.store import LcaStore

    opened = LcaStore.open(store)
    summary = run_summarize(opened, by=by, set_name=set_name, window=parse_window(steps), top=top, sort=sort)
    # Tied parameters (alias -> owner) are one tensor: its allocation is the owner's row; say so.
    tied = {str(k): str(v) for k, v in dict(opened.attrs.get("tied") or {}).items()}
    if fmt == "json":
        doc = summary.to_dict()
        doc["header"]["tied"] = tied
        click.echo(json.dumps(doc, indent=1))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=summary.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(summary.rows)
    else:
        _render_table(summary, tied)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="HTML page to write.")
@click.option("--set", "set_name", help="Evaluation set [train, else the first].")
@click.option("--steps", help="Window of iterations by start step, A:B.")
@click.option("--png-dir", type=click.Path(path_type=Path), help="Where the PNG figures go [<OUT stem>_files/].")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def report(store: Path, out: Path, set_name: str | None, steps: str | None, png_dir: Path | None, quiet: bool) -> None:
    """Write a self-contained HTML report (and PNG figures) of an LCA store.

    Views: true vs reconstructed loss with residuals; per-layer totals split into helped and hurt; the
    fraction of parameters helping per iteration and its histograms; cumulative LCA per layer (train
    beside held-out sets); neuron x iteration heat maps; trajectories of the most helpful, most harmful
    and random parameters; and a synchronisation view of per-layer learning peaks. The page needs no
    network to open. Needs matplotlib: pip install 'lca-cli[report]'.
    """
    from lca_cli.reduce import parse_window
    from lca_cli.report import write_report

    window = parse_window(steps)
    result = write_report(
        store,
        out,
        set_name=set_name,
        steps=(window.start, window.stop),
        png_dir=png_dir,
        progress=None if quiet else _err,
    )
    click.echo(str(result.html))


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def verify(store: Path, as_json: bool) -> None:
    """Check a store's integrity: every chunk present, of the right size, with a matching checksum.

    Reads the whole store once. Prints what was checked and, per evaluation set, the damaged rows (rows
    of missing, truncated or garbled chunks); exits 6 when anything is damaged. `lca compute RUN_DIR
    --out STORE --repair` recomputes exactly those rows while their checkpoints exist. (`compute`,
    `summarize` and `report` run a cheap version of this check every time: a chunk missing for a done
    row is an error, and every read verifies checksums.)
    """
    from lca_cli.integrity import verify as run_verify
    from lca_cli.store import LcaStore

    report = run_verify(LcaStore.open(store, check=False))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for line in report.lines():
            click.echo(line)
    if not report.ok:
        raise StoreError(report.summary())


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lca`` console script: maps errors to one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="lca", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort as exc:
        # click turns a KeyboardInterrupt (a second Ctrl-C, SIGTERM or SIGHUP) into Abort; keep its exit code.
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            _err("Interrupted; finished rows are saved and a rerun resumes.")
            sys.exit(cause.exit_code if isinstance(cause, Interrupted) else EXIT_INTERRUPTED)
        _err("Aborted.")
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt as exc:
        _err("Interrupted; finished rows are saved and a rerun resumes.")
        sys.exit(exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED)
    except LcaError as exc:
        _err(f"Error: {exc}")
        sys.exit(exc.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except Exception:
        traceback.print_exc()
        _err("Error: internal error in lca (a bug); please report it with the traceback above.")
        sys.exit(EXIT_INTERNAL)
    sys.exit(0)
