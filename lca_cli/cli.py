"""The ``lca`` command line: parse, call one library function, render. Nothing else.

Data goes to stdout; progress, warnings and errors go to stderr. Every :class:`~lca_cli.errors.LcaError`
becomes one ``Error: ...`` line and its exit code, in :func:`main` only.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import click

from lca_cli import __version__
from lca_cli.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, LcaError, ToleranceError

__all__ = ["cli", "main"]

EXIT_CODES_HELP = """\b
Exit codes:
  0 success               2 bad option value    3 config error
  4 run directory error   5 checkpoint error    6 store error
  7 non-finite loss       8 over tolerance (--strict)
  70 internal error (a bug; traceback shown)    130 interrupted (store resumable)"""


def _epilog(*examples: str) -> str:
    """Examples, then the exit codes: blocks that click prints unwrapped (each starts with a backspace line)."""
    return "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + EXIT_CODES_HELP


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_epilog(
        "lca compute runs/exp1                         # checkpoints -> runs/exp1/lca.zarr",
        "lca summarize runs/exp1/lca.zarr --by layer   # who helped, who hurt",
        "lca report runs/exp1/lca.zarr --out exp1.html # figures, one self-contained page",
    ),
)
@click.version_option(__version__, prog_name="lca")
def cli() -> None:
    """Loss Change Allocation: which parameters did the learning, from saved checkpoints.

    Each iteration's loss change L(θ_t+1) - L(θ_t) on a fixed evaluation set is split exactly among the
    parameters (negative LCA = helped, positive = hurt), by integrating the gradient along the straight
    segment between consecutive checkpoints.
    """


def _compute_options(f: Any) -> Any:
    opts = [
        click.option(
            "--method",
            type=click.Choice(["rk4", "euler"]),
            help="rk4: adaptive composite Simpson (the paper's 'RK4'; default). euler: first order, for comparison.",
        ),
        click.option(
            "--tolerance",
            type=float,
            help="Absolute residual tolerance per pair, in loss units [default 1e-9 in float64, 1e-7 in "
            "float32]. A pair passes when |residual| <= tolerance + rtol*|ΔL|; otherwise its sub-intervals "
            "are doubled.",
        ),
        click.option("--rtol", type=float, help="Relative residual tolerance per pair [default 1e-4]."),
        click.option(
            "--l1-tol",
            type=float,
            help="Also refine until the last doubling changed the row by at most this relative L1 amount "
            "(per-parameter accuracy, which the residual cannot see) [default 0 = off].",
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
            help="Network dtype; sums are float64 either way [default auto: float64 on CPU, float32 on CUDA].",
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
        click.option("--threads", type=int, help="CPU threads for torch (0 = torch's default; 1 suits small models)."),
        click.option(
            "--state-dict-key",
            help="Entry of the saved checkpoint dicts holding the model's state_dict (a/b for a deeper one) "
            "[found automatically: state_dict, model, model_state_dict or module].",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


class _Progress:
    """A rich progress bar on stderr with pairs/s and ETA."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]lca compute"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("pairs"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._progress is None:
            return
        if self._task is None:
            self._task = self._progress.add_task("compute", total=total, rate="")
        task = self._progress.tasks[0]
        speed = task.speed
        self._progress.update(self._task, completed=done, rate=f"{speed:.2f}/s" if speed else "")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)


@cli.command(
    epilog=_epilog(
        "lca compute runs/exp1                          # -> runs/exp1/lca.zarr (resumes if it exists)",
        "lca compute runs/exp1 --dtype float32 --rtol 1e-3 --threads 1",
        "lca compute runs/exp1 --config exp.toml --out /data/exp1.zarr --json",
    )
)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Config TOML [RUN_DIR/lca.toml].")
@click.option("--out", type=click.Path(path_type=Path), help="Store path [RUN_DIR/lca.zarr].")
@_compute_options
@click.option("--overwrite", is_flag=True, help="Replace an existing store instead of resuming/appending to it.")
@click.option(
    "--unsafe-pickle",
    is_flag=True,
    help="Allow torch checkpoints that need pickle (it can run any code: only for files you trust) [off: "
    "weights_only=True].",
)
@click.option("--strict", is_flag=True, help="Exit with code 8 when any pair stays over tolerance at the cap.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result object on stdout (for scripts).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary on stderr (warnings still shown).")
def compute(
    run_dir: Path,
    config_path: Path | None,
    out: Path | None,
    overwrite: bool,
    unsafe_pickle: bool,
    strict: bool,
    as_json: bool,
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

    Security: lca.toml names Python factories that lca imports and runs, and .py files beside it are
    imported: a run folder is code, so run lca only on run folders you trust. Checkpoints are loaded
    without pickle unless --unsafe-pickle is given.

    Rerunning on an existing store resumes: finished pairs are never recomputed and checkpoints that
    arrived since are appended (safe for cron). Ctrl-C stops after the current pair and keeps every
    finished row; run the same command again to continue.
    """
    from lca_cli.config import load_config
    from lca_cli.pipeline import compute as run_compute

    config = load_config(config_path or run_dir / "lca.toml")
    config = config.with_overrides(**flags)
    config.compute.validate()
    stop = threading.Event()

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        _err("Interrupted: finishing the current pair and saving finished rows (Ctrl-C again to abort)...")

    previous = (
        signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        with _Progress(enabled=not quiet) as progress:
            result = run_compute(
                run_dir,
                config,
                out,
                overwrite=overwrite,
                progress=progress,
                stop=stop,
                unsafe_pickle=unsafe_pickle,
                note=None if quiet else (lambda message: _err(f"Note: {message}")),
            )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

    flagged_total = sum(len(v) for v in result.flagged.values())
    if as_json:
        click.echo(
            json.dumps(
                {
                    "store": str(result.store),
                    "pairs": result.n_pairs,
                    "computed": result.computed,
                    "skipped": result.skipped,
                    "flagged": result.flagged,
                    "max_abs_residual": result.max_abs_residual,
                    "seconds": round(result.seconds, 3),
                    "device": result.device,
                    "interrupted": result.interrupted,
                }
            )
        )
    if not quiet:
        rate = result.computed / result.seconds if result.seconds > 0 else 0.0
        _err(
            f"{result.store}: {result.computed} pair(s) computed, {result.skipped} already done, "
            f"{result.n_pairs} in total ({rate:.2f} pairs/s on {result.device})"
        )
    if flagged_total:
        worst = ", ".join(f"{s}: {len(v)}" for s, v in result.flagged.items() if v)
        first = next(v for v in result.flagged.values() if v)[:5]
        _err(
            f"Warning: {flagged_total} pair(s) still over tolerance at {config.compute.max_splits} sub-intervals "
            f"({worst}; first steps {first}); see `lca summarize {result.store} --by iteration`"
        )
    if result.interrupted:
        _err(f"Interrupted: {result.store} is resumable; rerun the same command to continue.")
        sys.exit(EXIT_INTERRUPTED)
    if strict and flagged_total:
        raise ToleranceError(f"{flagged_total} pair(s) over tolerance (--strict)")


_STEPS_HELP = (
    "Window A:B: the iterations whose start step s has A <= s < B (either end may be left out: 100: or :500); "
    "a single step A is the one iteration starting there. B must be greater than A; a window holding no "
    "iteration of the store is an error that names the store's steps."
)


@cli.command(
    epilog=_epilog(
        "lca summarize runs/exp1/lca.zarr                    # by layer",
        "lca summarize runs/exp1/lca.zarr --concentration --set val",
        "lca summarize runs/exp1/lca.zarr --by neuron --top 20 --sort hurt",
        "lca summarize runs/exp1/lca.zarr --by iteration --steps 0:50 --format csv",
    )
)
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--by", type=click.Choice(["layer", "tensor", "neuron", "iteration"]), default="layer", show_default=True,
              help="layer = parameter name minus its last component; neuron = output unit (dim 0).")  # fmt: skip
@click.option("--set", "set_name", help="Evaluation set [train, else the first].")
@click.option("--steps", help=_STEPS_HELP)
@click.option("--top", type=int, help="Show only the first N rows (after sorting).")
@click.option("--sort", type=click.Choice(["model", "helped", "hurt", "abs"]),
              help="model order (default; neurons: helped), most helpful first, most harmful first, "
              "or by |LCA|.")  # fmt: skip
@click.option("--concentration", is_flag=True,
              help="With --by layer|tensor: also the share of each group's parameters that does 50% / 90% of its "
              "learning (streams the lca array once; the other columns read only small arrays).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
def summarize(
    store: Path,
    by: str,
    set_name: str | None,
    steps: str | None,
    top: int | None,
    sort: str | None,
    concentration: bool,
    fmt: str,
) -> None:
    """Summarise an LCA store: totals and who helped (LCA < 0) or hurt (LCA > 0).

    The header gives the total loss change ΔL, the sum of all LCA (equal to ΔL up to the residual), the
    largest |residual|, the pairs flagged over tolerance, and how many parameters helped per iteration in
    both conventions: helped / zero / hurt as shares of all parameters (the paper's), and the helped
    fraction with exact zeros excluded. Layer, tensor and neuron rows give the parameter count, LCA (loss
    units), share of Σ LCA, both helped conventions and a significance verdict: a group helps or hurts only
    when |its total| exceeds the window's integration error Σ|residual|. Layer and tensor rows add the steps
    by which the group had done 50% and 90% of its learning. --format json prints one object
    {"header", "columns", "rows"}; csv prints the rows only.
    """
    from lca_cli.reduce import open_store, parse_window
    from lca_cli.reduce import summarize as run_summarize
    from lca_cli.tables import render_summary

    window = parse_window(steps)
    opened = open_store(store)
    summary = run_summarize(
        opened, by=by, set_name=set_name, window=window, top=top, sort=sort, concentration=concentration
    )
    # Tied parameters (alias -> owner) are one tensor: its allocation is the owner's row; say so.
    tied = {str(k): str(v) for k, v in dict(opened.attrs.get("tied") or {}).items()}
    summary.header["tied"] = tied
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict(), indent=1))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=summary.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(summary.rows)
    else:
        click.echo(render_summary(summary), nl=False)


@cli.command(
    epilog=_epilog(
        "lca report runs/exp1/lca.zarr --out exp1.html",
        "lca report runs/exp1/lca.zarr --out early.html --steps :200 --set train",
        "lca report runs/normal/lca.zarr runs/frozen/lca.zarr --out cmp.html --label normal --label frozen",
    )
)
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="HTML page to write.")
@click.option("--set", "set_names", multiple=True,
              help="Evaluation set to show (repeat for several) [every set of the store, side by side].")  # fmt: skip
@click.option("--steps", help=_STEPS_HELP)
@click.option("--label", "labels", multiple=True,
              help="Names of the two runs in a comparison (give twice) [the stores' folder names].")  # fmt: skip
@click.option("--png-dir", type=click.Path(path_type=Path), help="Where the PNG figures go [<OUT stem>_files/].")
@click.option("--view", "views", multiple=True,
              help="Draw only this view (repeat for several): loss, composition, helped_hist, values, layers, "
              "layer_shares, cumulative, milestones, concentration, heatmaps, input_maps, trajectories, sync "
              "[all].")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def report(
    stores: tuple[Path, ...],
    out: Path,
    set_names: tuple[str, ...],
    steps: str | None,
    labels: tuple[str, ...],
    png_dir: Path | None,
    views: tuple[str, ...],
    quiet: bool,
) -> None:
    """Write a self-contained HTML report (and PNG figures) of one LCA store, or compare two.

    One store: true vs reconstructed loss; helped / zero / hurt shares per iteration with the loss; the
    helped fraction's histograms; all LCA values on a log scale; per-layer totals with the integration
    error, helped shares, concentration and when each layer learned; cumulative LCA per layer; neuron x
    iteration maps (rows sorted, output units by class) and first-layer input maps for image nets;
    single-parameter trajectories; synchronisation of per-layer learning peaks with two baselines. Every
    evaluation set side by side (train beside held-out). Captions are computed from the run ("paper: X;
    this run: Y").

    Two stores (A B): the runs side by side per layer (matched by name; unmatched layers are listed) and
    over time, e.g. normal training vs the last layer frozen. The page needs no network to open. Needs
    matplotlib: pip install 'lca-cli[report]'.
    """
    from lca_cli.errors import UsageError
    from lca_cli.reduce import parse_window

    window = parse_window(steps)
    if len(stores) > 2:
        raise UsageError(f"lca report takes one store, or two to compare (got {len(stores)})")
    if labels and len(labels) != len(stores):
        raise UsageError(f"--label: give one per store ({len(stores)}), got {len(labels)}")
    if views and len(stores) == 2:
        raise UsageError("--view applies to the report of one store, not to a comparison")
    progress = None if quiet else _err
    if len(stores) == 2:
        from lca_cli.compare import write_comparison

        result = write_comparison(
            stores[0], stores[1], out, labels=labels or None, set_names=set_names or None,
            steps=(window.start, window.stop), png_dir=png_dir, progress=progress,
        )  # fmt: skip
    else:
        from lca_cli.report import write_report

        result = write_report(
            stores[0], out, set_names=set_names or None, steps=(window.start, window.stop), png_dir=png_dir,
            progress=progress, views=views or None,
        )  # fmt: skip
    click.echo(str(result.html))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``lca`` console script: maps errors to one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="lca", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _err("Aborted.")
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        _err("Interrupted; finished rows are saved and a rerun resumes.")
        sys.exit(EXIT_INTERRUPTED)
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
