"""Training an experiment and computing its LCA store, or taking a run finished earlier in ``--work`` as it is."""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lca_cli.computation import compute_run
from lca_cli.computation.config import Config
from lca_cli.training.train import train_run

from .experiments import NETWORK_DTYPE, Experiment

Log = Callable[[str], None]


@dataclass
class RunResult:
    """A trained and computed experiment.

    Attributes:
        exp: The experiment.
        run_dir: Its checkpoints (``work/KEY``).
        store: Its LCA store (``work/KEY/lca.zarr``).
        train_s: Seconds of training, measured when the run was made.
        compute_s: Seconds of LCA, measured when the run was made.
        flagged: (pair, set) rows still over tolerance at the cap.
        max_abs_residual: Largest |residual| of a pair on the ``train`` set.
        command: The command line that made the run.
        finished: When it finished (``YYYY-MM-DD HH:MM``).
        threads: Torch CPU threads it used (0 when not recorded).
        reused: Taken from an earlier process with ``--reuse``.
        resumed: Its training (and part of its LCA) came from an earlier process that stopped: ``compute_s`` is
            the last process's part only.

    """

    exp: Experiment
    run_dir: Path
    store: Path
    train_s: float
    compute_s: float
    flagged: int
    max_abs_residual: float
    command: str = ""
    finished: str = ""
    threads: int = 0
    reused: bool = False
    resumed: bool = False


def command_line(argv: list[str]) -> str:
    """The command line of this script with ``argv``, as the page and ``run.json`` quote it."""
    return "python scripts/reproduce_paper.py " + " ".join(argv)


def main_config(exp: Experiment, device: str) -> Config:
    """The config ``exp``'s main store is computed with: float32 network, its ``[compute]`` overrides."""
    return exp.config.with_overrides(device=device, **{**NETWORK_DTYPE, **exp.compute})


def fingerprint(exp: Experiment, device: str) -> dict[str, Any]:
    """What makes a finished run reusable: its config (training included) and integration settings."""
    cfg = main_config(exp, device)
    return json.loads(json.dumps({"identity": cfg.identity(), "train": dict(cfg.train)}, default=str))


def compute_store(run_dir: Path, cfg: Config, store: Path) -> Any:
    """Compute the LCA store of the checkpoints in ``run_dir`` afresh (one place that calls the library).

    ``compute_run`` is ``lca compute`` as a function that also takes a loaded config: the experiments' configs are
    built in memory (cut evaluation sets, seeds), so there is no file to name.
    """
    return compute_run(run_dir, store, config=cfg, overwrite=True)


def run_experiment(
    exp: Experiment, work: Path, device: str, log: Log, reuse: bool = False, command: str = ""
) -> RunResult:
    """Train ``exp`` into ``work/KEY`` and compute its store ``work/KEY/lca.zarr``.

    With ``reuse``, a run finished earlier with the same config (``work/KEY/run.json``, written last) is
    taken as it is, with the times measured when it was made; a run whose process stopped after training
    (``work/KEY/train.json``) is completed; anything else is trained and computed afresh.

    Args:
        exp: The experiment.
        work: The work directory.
        device: Torch device of training and LCA.
        log: Progress lines (stderr).
        reuse: Take a finished run with the same fingerprint as it is.
        command: The command line to record with a new run.

    Returns:
        The run and its store.

    """
    run_dir = work / exp.key
    record = run_dir / "run.json"
    fp = fingerprint(exp, device)
    if reuse and record.is_file():
        reused = _reusable_run(exp, run_dir, fp, log)
        if reused is not None:
            return reused
        log(f"  {exp.key}: {record} is from another config; recomputing")
    return _train_and_compute(exp, run_dir, device, fp, log, command, resume=reuse)


def _reusable_run(exp: Experiment, run_dir: Path, fp: dict[str, Any], log: Log) -> RunResult | None:
    """The run recorded in ``run_dir/run.json`` when it has fingerprint ``fp`` and its store exists, else None."""
    saved = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    if saved.get("fingerprint") != fp or not (run_dir / "lca.zarr").is_dir():
        return None
    log(f"  {exp.key}: reusing the run finished on {saved['finished']} ({saved['compute_s']:.0f} s of LCA)")
    return RunResult(
        exp, run_dir, run_dir / "lca.zarr", saved["train_s"], saved["compute_s"], saved["flagged"],
        saved["max_abs_residual"], saved.get("command", ""), saved["finished"], saved.get("threads", 0), True,
        bool(saved.get("resumed", False)),
    )  # fmt: skip


def _trained(exp: Experiment, run_dir: Path, fp: dict[str, Any]) -> float | None:
    """Seconds of training of a run in ``run_dir`` whose training finished with fingerprint ``fp``, else None.

    Training finished when ``lca.end`` is there with every checkpoint and ``train.json`` (written after training)
    has the same fingerprint; its seconds are NaN when it was recorded without them.
    """
    record = run_dir / "train.json"
    if not (run_dir / "lca.end").is_file() or not record.is_file():
        return None
    if len(list(run_dir.glob("step_*.safetensors"))) != int(exp.config.train["iterations"]) + 1:
        return None
    saved = json.loads(record.read_text(encoding="utf-8"))
    return float(saved.get("train_s", float("nan"))) if saved.get("fingerprint") == fp else None


def _train_and_compute(
    exp: Experiment, run_dir: Path, device: str, fp: dict[str, Any], log: Log, command: str, resume: bool = False
) -> RunResult:
    """Train and compute ``exp``, then write ``run_dir/run.json`` (last, so it marks a finished run).

    With ``resume`` (``--reuse``), a run whose training finished with the same fingerprint (``train.json``) is
    not trained again, and its store, if a process was stopped while computing it, is completed rather than
    recomputed (``lca compute`` resumes); ``compute_s`` is then only this process's part and the run is marked
    ``resumed``.
    """
    t0 = time.perf_counter()
    train_s = _trained(exp, run_dir, fp) if resume else None
    resumed = train_s is not None
    if train_s is None:
        train_run(exp.config, run_dir, device=device, overwrite=True)
        train_s = time.perf_counter() - t0
        (run_dir / "train.json").write_text(json.dumps({"fingerprint": fp, "train_s": train_s}), encoding="utf-8")
    t1 = time.perf_counter()
    store = run_dir / "lca.zarr"
    if resumed and store.exists():
        log(f"  {exp.key}: training finished earlier; completing its store {store}")
        res = compute_run(run_dir, store, config=main_config(exp, device), overwrite=False)
    else:
        res = compute_store(run_dir, main_config(exp, device), store)
    t2 = time.perf_counter()
    flagged = sum(len(v) for v in res.flagged.values())
    log(
        f"  {exp.key}: trained {exp.config.train['iterations']} iterations in {train_s:.1f} s, "
        f"LCA in {t2 - t1:.1f} s{' (this process; resumed)' if resumed else ''} ({flagged} pairs over "
        "tolerance at the cap)"
    )
    finished = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    result = RunResult(
        exp, run_dir, store, train_s, t2 - t1, flagged, res.max_abs_residual["train"], command, finished,
        torch.get_num_threads(), resumed=resumed,
    )  # fmt: skip
    record = {
        "fingerprint": fp,
        "command": command,
        "finished": finished,
        "train_s": result.train_s,
        "compute_s": result.compute_s,
        "flagged": flagged,
        "max_abs_residual": result.max_abs_residual,
        "threads": torch.get_num_threads(),
        "resumed": resumed,
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return result
