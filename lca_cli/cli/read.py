"""The commands that read a store: ``lca summarize``, ``lca report`` and ``lca verify``."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import click

from lca_cli.errors import (
    StoreError,
    UsageError,
)

__all__ = ["report", "summarize", "verify"]

from lca_cli.cli.common import READ_EXIT_CODES, STEPS_HELP, epilog, err


@click.command(
    epilog=epilog(
        "lca summarize runs/exp1/lca.zarr                    # by layer",
        "lca summarize runs/exp1/lca.zarr --concentration --set val",
        "lca summarize runs/exp1/lca.zarr --by neuron --top 20 --sort hurt",
        "lca summarize runs/exp1/lca.zarr --by iteration --steps 0:50 --format csv",
        "lca summarize runs/exp1/lca.zarr --min-abs 1e-10    # noise floor",
        "lca summarize runs/exp1/lca.zarr --series --format csv > series.csv",
        "lca summarize runs/seed*/lca.zarr --format json     # mean, sd, n",
        exit_codes=READ_EXIT_CODES,
    )
)
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--by", type=click.Choice(["layer", "tensor", "neuron", "iteration"]), default="layer", show_default=True,
              help="layer = parameter name minus its last component; neuron = output unit (dim 0; columns of weights "
                   "stored (in, out), as transformers' Conv1D).")  # fmt: skip
@click.option("--set", "set_name", help="Evaluation set [default: train, else the first].")
@click.option("--steps", help=STEPS_HELP)
@click.option("--top", type=int, help="Show only the first N rows (after sorting).")
@click.option("--sort", type=click.Choice(["model", "helped", "hurt", "abs"]),
              help="Row order: model order, most helpful first, most harmful first, or by |LCA| "
              "[default: model; --by neuron: helped].")  # fmt: skip
@click.option("--concentration", is_flag=True,
              help="With --by layer|tensor: also the share of each group's parameters that does 50% / 90% of its "
              "learning (streams the lca array once; the other columns read only small arrays).")  # fmt: skip
@click.option("--min-abs", type=float, metavar="X",
              help="Noise floor: |LCA| <= X counts as zero in the helped / hurt counts and shares (totals "
              "unchanged); adds below_resolution_share, the share of entries below the float resolution of the run's "
              "dtype (0 keeps the counts and adds it). Streams lca once.")  # fmt: skip
@click.option("--series", is_flag=True,
              help="With --by layer|tensor: a layer x iteration table in long format, one row per step and layer: "
              "step, layer, lca, neg (Σ of negative entries), pos (Σ of positive). Streams lca once.")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json (as compute and verify spell it).")
def summarize(
    stores: tuple[Path, ...],
    by: str,
    set_name: str | None,
    steps: str | None,
    top: int | None,
    sort: str | None,
    concentration: bool,
    min_abs: float | None,
    series: bool,
    fmt: str,
    as_json: bool,
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

    Several stores (seeds of one configuration: same tensors, same sets) give each statistic's mean, sd
    (sample sd, ddof = 1) and n over the stores per row: columns <stat>_mean, <stat>_sd, <stat>_n, and the
    number of stores in which the row helps / hurts / is within error.
    """
    from lca_cli.analysis.reduce import parse_window
    from lca_cli.api import flag_spelling, open_group, open_store
    from lca_cli.cli.tables import render_summary

    if as_json and fmt not in ("table", "json"):
        raise UsageError(f"--json is --format json; it cannot go with --format {fmt}")
    fmt = "json" if as_json else fmt
    options: dict[str, Any] = {"by": by, "set": set_name, "top": top, "sort": sort, "concentration": concentration}
    if min_abs is not None:  # only when given: the library's defaults stay the one place they are written
        options["min_abs"] = min_abs
    with flag_spelling():
        window = parse_window(steps)  # before opening the store: a bad --steps is reported first
        if len(stores) > 1:
            if series:
                raise UsageError("--series takes one store (a series per seed: run it once per store)")
            summary: Any = open_group(stores).summarize(steps=window, **options)
        else:
            summary = open_store(stores[0]).summarize(steps=window, series=series, **options)
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict(), indent=1))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=summary.columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(summary.rows)
    else:
        click.echo(render_summary(summary), nl=False)


class _GroupsCommand(click.Command):
    """A command whose ``--vs`` takes every path after it: ``--vs B1 B2 B3`` is ``--vs B1 --vs B2 --vs B3``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Spell ``--vs B1 B2 ...`` as repeated options (the values run up to the next option), then parse."""
        out: list[str] = []
        rest = iter(args)
        vs = False
        for arg in rest:
            if arg == "--":  # everything after is positional: leave it alone
                out += [arg, *rest]
                break
            if arg.startswith("-"):
                vs = arg == "--vs"
                if vs:
                    continue
                out.append(arg)
            elif vs:
                out += ["--vs", arg]
            else:
                out.append(arg)
        return super().parse_args(ctx, out)


@click.command(
    cls=_GroupsCommand,
    epilog=epilog(
        "lca report runs/exp1/lca.zarr --out exp1.html",
        "lca report runs/exp1/lca.zarr --out early.html --steps :200 --set train",
        "lca report a.zarr b.zarr --out cmp.html --label normal --label frozen",
        "lca report a1.zarr a2.zarr a3.zarr --vs b1.zarr b2.zarr b3.zarr --out g.html",
        exit_codes=(0, 1, *READ_EXIT_CODES[1:]),
        notes={1: "matplotlib missing: pip install 'lca-cli[report]'"},
    ),
)
@click.argument("stores", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="HTML page to write.")
@click.option("--set", "set_names", multiple=True,
              help="Evaluation set to show (repeat for several) [default: every set of the store, side by "
              "side].")  # fmt: skip
@click.option("--steps", help=STEPS_HELP)
@click.option("--label", "labels", multiple=True,
              help="Names of the two runs in a comparison (give twice) [default: the stores' folder "
              "names].")  # fmt: skip
@click.option(
    "--png-dir", type=click.Path(path_type=Path), help="Where the PNG figures go [default: <OUT stem>_files/]."
)
@click.option("--view", "views", multiple=True,
              help="Draw only this view (repeat for several): loss, composition, helped_hist, values, layers, "
              "layer_shares, cumulative, milestones, concentration, heatmaps, input_maps, trajectories, sync "
              "[default: all].")  # fmt: skip
@click.option("--vs", "vs", multiple=True, type=click.Path(path_type=Path), metavar="B1 B2 ...",
              help="Compare two seed groups: the STORES (group A) against these stores (group B): per layer "
              "and set, each group's mean / sd / n and B - A with its standard error.")  # fmt: skip
@click.option("--min-abs", type=float, metavar="X",
              help="Noise floor: |LCA| <= X counts as zero in the helped / hurt counts and shares (totals "
              "unchanged); the numbers add the share of entries below float resolution.")  # fmt: skip
@click.option("--figures", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True,
              help="Also write every figure as SVG or PDF beside its PNG (vector figures for a paper); the page "
              "embeds the PNGs.")  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")
def report(
    stores: tuple[Path, ...],
    out: Path,
    set_names: tuple[str, ...],
    steps: str | None,
    labels: tuple[str, ...],
    png_dir: Path | None,
    views: tuple[str, ...],
    vs: tuple[Path, ...],
    min_abs: float | None,
    figures: str,
    quiet: bool,
) -> None:
    """Write a self-contained HTML report (and PNG figures) of one LCA store, or compare two.

    One store: a table of verdicts against the paper (each computed by a stated rule, per set and
    convention) and the layer totals without the starting transient and per phase; true vs reconstructed
    loss; helped / zero / hurt shares per iteration with the loss; the helped fraction's histograms; all
    LCA values on a log scale; per-layer totals with each layer's error estimate, helped shares,
    concentration and when each layer learned; cumulative LCA per layer; neuron x
    iteration maps (rows sorted, output units by class) and first-layer input maps for image nets;
    single-parameter trajectories; synchronisation of per-layer learning peaks with two baselines. Every
    evaluation set side by side (train beside held-out). Captions are computed from the run ("paper: X;
    this run: Y").

    Two stores (A B): the runs side by side per layer (matched by name; unmatched layers are listed) and
    over time, e.g. normal training vs the last layer frozen. The page needs no network to open. Needs
    matplotlib: pip install 'lca-cli[report]'.

    Seed groups (A1 A2 A3 --vs B1 B2 B3): every store of a group must have the same tensors and sets, and
    the two groups the same layers and sets; per layer and set, each group's mean, sample sd (ddof = 1) and
    n, and B - A with its standard error sqrt(sd_A²/n_A + sd_B²/n_B), on every set.
    """
    from lca_cli.analysis.reduce import parse_window
    from lca_cli.api import flag_spelling
    from lca_cli.api import report as write

    with flag_spelling():
        result = write(
            list(stores), out, sets=set_names or None, steps=parse_window(steps), labels=labels or None,
            png_dir=png_dir, views=views or None, progress=None if quiet else err, vs=list(vs) or None, figures=figures,
            **({"min_abs": min_abs} if min_abs is not None else {}),
        )  # fmt: skip
    click.echo(str(result.html))


@click.command(
    epilog=epilog(
        "lca verify runs/exp1/lca.zarr          # every chunk's size and checksum",
        "lca verify runs/exp1/lca.zarr --json   # the same as one JSON object",
        exit_codes=READ_EXIT_CODES,
    )
)
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
    from lca_cli.api import flag_spelling
    from lca_cli.api import verify as run_verify

    with flag_spelling():
        report = run_verify(store)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for line in report.lines():
            click.echo(line)
    if not report.ok:
        if as_json:  # the report object says so ("ok": false): no second object
            err(f"Error: {report.summary()}")
            raise click.exceptions.Exit(StoreError.exit_code)
        raise StoreError(report.summary())
