#!/usr/bin/env python
"""Reproduce the LCA paper's findings (Lan et al., NeurIPS 2019) with this tool and write docs/paper.md.

    python scripts/reproduce_paper.py --quick            # a few minutes on a laptop CPU (CI)
    python scripts/reproduce_paper.py --cpu-scale --threads 1   # docs/paper.md: hours on a 2-core CPU
    python scripts/reproduce_paper.py --full --device auto   # closer to the paper: a GPU or a patient CPU

Every network is trained with :func:`lca_cli.training.train.train_run` from a committed config in ``configs/``
(with mode-dependent iterations and evaluation-set sizes), its LCA is computed with
:func:`lca_cli.computation.compute_run`, and the findings are measured from the stores with the streaming
reductions of :mod:`lca_cli.analysis` (helped fractions, per-layer series, peak detection and the
synchronisation statistic):

1. noise: both of the paper's helped claims (share per iteration, fraction per parameter) under each convention
   (all entries, nonzero entries, above a noise floor) with the share of entries below float resolution, over
   the FC net's seeds (mean ± sd, n);
2. layers that hurt: per-layer totals against per-layer error estimates, with and without the starting
   transient and per third of the run, the cancellation statistics, and the freeze-the-last-layer experiments
   on the FC net (over 3 seeds in ``--cpu-scale``) and on the ResNet-20 stand-in;
3. synchronisation of per-layer learning peaks against circular shifts over the run, within the window holding
   the peaks and per third, beside the step-size-controlled test;
4. method accuracy: first order, Simpson and adaptive Simpson against a float64 32-interval reference.

Every verdict is computed by the rules of :mod:`lca_cli.analysis.verdicts` (``paper/checks.py``), and the page
ends with each finding's verdict and the list of where the runs disagree with the paper.

``--only KEYS`` trains and computes some runs into ``--work`` (parallel processes can share it); ``--reuse``
takes finished runs (and the accuracy runs) with the same config as they are, with the times measured when
they were made, so the page can be rebuilt from them in minutes.

Runs and stores go to ``--work`` (default: a fresh directory under /tmp), never into the repository;
only ``OUT/paper.md`` and small PNGs in ``OUT/figures/`` are written there. ``--smoke`` runs tiny
synthetic stand-ins of every experiment in seconds (for the tests, not for conclusions).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from lca_cli import LcaError
from lca_cli.analysis.selection import select_rows
from lca_cli.store import LcaStore

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:  # the paper/ package beside this script, also when it is loaded by file path
    sys.path.insert(0, str(SCRIPTS))

from paper.checks import FLOORS, floor_check, layer_check, noise_verdicts, seed_noise, sync_windows  # noqa: E402
from paper.experiments import FREEZE_SEEDS, MODES, Experiment, Mode, experiments  # noqa: E402
from paper.figures import make_figures  # noqa: E402
from paper.findings import (  # noqa: E402
    Findings,
    accuracy_finding,
    freeze_finding,
    layer_finding,
    noise_finding,
    sync_finding,
)
from paper.markdown import write_markdown  # noqa: E402
from paper.runs import RunResult, command_line, run_experiment  # noqa: E402

REPO = SCRIPTS.parent


def log(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def default_out(mode: str) -> Path:
    """Where a mode's page goes without ``--out``: the committed ``docs/`` for ``--cpu-scale`` only.

    A quick or smoke run (the README's first command) wrote over the committed page and figures before.
    """
    return REPO / "docs" if mode == "cpu-scale" else Path(f"paper-{mode}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line; ``mode`` is None for the default (quick) and ``out`` None for :func:`default_out`."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="minutes on a CPU (default)")
    g.add_argument(
        "--cpu-scale", dest="mode", action="store_const", const="cpu-scale",
        help="thousands of iterations on full evaluation sets (hours on a CPU; see docs/paper.md)",
    )  # fmt: skip
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="closer to the paper (GPU)")
    g.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="seconds; synthetic (tests)")
    ap.add_argument(
        "--out", type=Path,
        help="where paper.md and figures/ go [docs/ for --cpu-scale, the committed page; else ./paper-MODE, so that "
        "a quick or smoke run never overwrites it]",
    )  # fmt: skip
    ap.add_argument("--work", type=Path, help="runs and stores [a new directory under /tmp]")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    ap.add_argument("--report-html", action="store_true", help="also write lca report HTML of the FC run to --work")
    ap.add_argument("--clean", action="store_true", help="delete --work at the end")
    ap.add_argument(
        "--reuse", action="store_true",
        help="take runs already finished in --work with the same config as they are (with their measured times)",
    )  # fmt: skip
    ap.add_argument(
        "--only", help="comma-separated run keys: train and compute only these into --work, write no report "
        "(several processes can share the work); then rerun without --only and with --reuse",
    )  # fmt: skip
    return ap.parse_args(argv)


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when there is a GPU, else the CPU; anything else as given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def compute_only(exps: list[Experiment], only: str, mode: Mode, work: Path, device: str, reuse: bool,
                 argv: list[str], t0: float) -> int:  # fmt: skip
    """``--only``: train and compute the named runs into ``work`` and write no page; returns the exit code."""
    keys = [k.strip() for k in only.split(",") if k.strip()]
    unknown = sorted(set(keys) - {e.key for e in exps})
    if unknown:
        log(f"Error: --only {','.join(unknown)}: no such run in mode {mode.name} "
            f"(runs: {', '.join(e.key for e in exps)})")  # fmt: skip
        return 2
    for exp in exps:
        if exp.key in keys:
            run_experiment(exp, work, device, log, reuse=reuse, command=command_line(argv))
    log(f"computed {', '.join(keys)} into {work} in {time.perf_counter() - t0:.0f} s")
    return 0


def measure(runs: dict[str, RunResult], mode: Mode, work: Path, device: str, reuse: bool, argv: list[str]) -> Findings:
    """The four findings of every run, by role, and the checks on them (figures not drawn yet)."""
    noise, layers, sync = {}, {}, {}
    found = Findings(mode.name, argv, runs, noise, layers, sync)
    seed_keys = [k for k, r in runs.items() if k == "fc_mnist" or "seed" in r.exp.roles]
    for k, r in runs.items():
        store = LcaStore.open(r.store)
        layers[k] = layer_finding(store)
        wants_noise = "noise" in r.exp.roles or k in seed_keys
        sel = select_rows(store, "train")
        found.floors[k] = floor_check(store, sel, FLOORS if wants_noise else ())
        found.layer_checks[k] = layer_check(layers[k], found.floors[k])
        if wants_noise:
            nz = noise_finding(store)
            if "noise" in r.exp.roles:
                noise[k] = nz
            found.noise_checks[k] = noise_verdicts(found.floors[k], nz["params"], nz["param_helped"], nz["param_hurt"])
        if "sync" in r.exp.roles or k in seed_keys:
            s = sync_finding(layers[k], mode.shuffles)
            if "sync" in r.exp.roles:
                sync[k] = s
            found.sync_checks[k] = sync_windows(s["analysis"])
    if len(seed_keys) > 1:
        found.seeds = {
            "keys": seed_keys,
            "noise": seed_noise(
                {k: found.noise_checks[k] for k in seed_keys}, {k: found.floors[k] for k in seed_keys},
                LcaStore.open(runs[seed_keys[0]].store).layout.size,
            ),
            "sync": {k: found.sync_checks[k] for k in seed_keys},
        }  # fmt: skip
    found.freeze = freeze_finding(runs, layers, FREEZE_SEEDS.get(mode.name, (0,)))
    found.freeze_resnet = freeze_finding(runs, layers, (0,), "resnet20_standin", "resnet20_standin_frozen")
    acc_run = next((r for r in runs.values() if "acc" in r.exp.roles), None)
    if acc_run is not None:
        found.accuracy = accuracy_finding(acc_run, work, mode.accuracy_pairs, device, log, reuse=reuse)
    return found


def write_html_report(runs: dict[str, RunResult], work: Path) -> None:
    """``--report-html``: ``lca report`` of the FC run into ``work`` (a note instead when it cannot be drawn)."""
    acc_run = next((r for r in runs.values() if "acc" in r.exp.roles), None)
    if acc_run is None:
        return
    try:
        from lca_cli.reporting import write_report

        write_report(acc_run.store, work / "fc_mnist_report.html")
        log(f"  HTML report: {work / 'fc_mnist_report.html'}")
    except (ImportError, LcaError) as exc:
        log(f"  no HTML report: {exc}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    mode = MODES[args.mode or "quick"]
    out: Path = args.out or default_out(mode.name)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="lca-reproduce-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        log(f"reproduce_paper: mode {mode.name}, device {device}, work dir {work}")
        exps = experiments(mode.name)
        if args.only:
            return compute_only(exps, args.only, mode, work, device, args.reuse, argv, t0)
        runs = {e.key: run_experiment(e, work, device, log, reuse=args.reuse, command=command_line(argv)) for e in exps}
        found = measure(runs, mode, work, device, args.reuse, argv)
        out.mkdir(parents=True, exist_ok=True)
        found.figures = {} if args.no_figures else make_figures(found, out / "figures", work, log)
        if args.report_html:
            write_html_report(runs, work)
        total = time.perf_counter() - t0
        write_markdown(out / "paper.md", mode, device, found, total)
        log(f"wrote {out / 'paper.md'} in {total:.0f} s")
    except LcaError as exc:
        log(f"Error: {exc}")
        return exc.exit_code
    finally:
        if args.clean:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
