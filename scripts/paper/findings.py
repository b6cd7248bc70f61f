"""The paper's four findings, measured from the stores with the streaming reductions of ``lca_cli.analysis``.

1. noise: helped / zero / hurt shares of all parameters per iteration, the helped fraction without zeros,
   per-parameter fractions and the concentration of learning;
2. layers that hurt: per-layer totals against the run's integration error, when each layer learned, and the
   freeze-the-last-layer experiments (the FC net over several seeds, the ResNet-20 stand-in);
3. synchronisation of per-layer learning peaks against circular shifts and a step-size-controlled baseline;
4. method accuracy: first order, Simpson and adaptive Simpson against a float64 32-interval reference.

Each finding is a plain dict of numbers (finding 4's is saved as JSON for ``--reuse``); the verdicts and the
checks a reader makes on them (conventions, noise floor, seeds, transient, windows) are in ``checks``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli.analysis.parameters import concentration
from lca_cli.analysis.passes import scan_parameters
from lca_cli.analysis.selection import select_rows
from lca_cli.analysis.series import composition, integration_error, layer_series, learning_milestones, significance
from lca_cli.analysis.sync import sync_analysis
from lca_cli.analysis.verdicts import overfitting
from lca_cli.store import LcaStore

from .experiments import NETWORK_DTYPE, tol_text
from .runs import Log, RunResult, compute_store, fingerprint

#: Coincidence tolerance and seed of finding 3 (the peak rule is lca report's: ``sync_analysis``).
SYNC_TOLERANCE = 1
SYNC_SEED = 0

#: Per-iteration accuracy reference of finding 4.
REFERENCE = {"dtype": "float64", "max_splits": 32, "tolerance": 0.0, "rtol": 0.0}


@dataclass
class Findings:
    """Everything the page and the figures are drawn from.

    Attributes:
        mode: The mode's name.
        argv: This process's arguments (quoted on the page).
        runs: Every run, by key.
        noise: Finding 1 per run with the ``noise`` role.
        layers: Finding 2 per run.
        sync: Finding 3 per run with the ``sync`` role.
        freeze: The freeze-the-last-layer comparison on the FC net (empty without the runs).
        accuracy: Finding 4 (None without a run with the ``acc`` role).
        figures: ``{name: path relative to the page}`` of the figures drawn.
        freeze_resnet: The same comparison on the ResNet-20 stand-in (empty without the runs).
        floors: :func:`paper.checks.floor_check` per run.
        noise_checks: :func:`paper.checks.noise_verdicts` per run of finding 1 (and per seed run).
        layer_checks: :func:`paper.checks.layer_check` per run.
        sync_checks: :func:`paper.checks.sync_windows` per run of finding 3 (and per seed run).
        seeds: Findings 1 and 3 over the seeds of the FC MNIST net (empty with one seed): ``keys``, ``noise``
            (:func:`paper.checks.seed_noise`) and ``sync`` (``{key: sync check}``).
        figure_numbers: ``{name: N}``: figure N of the page, drawn into ``figures/figN_NAME.png``.

    """

    mode: str
    argv: list[str]
    runs: dict[str, RunResult]
    noise: dict[str, dict[str, Any]]
    layers: dict[str, dict[str, Any]]
    sync: dict[str, dict[str, Any]]
    freeze: dict[str, Any] = field(default_factory=dict)
    accuracy: dict[str, Any] | None = None
    figures: dict[str, str] = field(default_factory=dict)
    freeze_resnet: dict[str, Any] = field(default_factory=dict)
    floors: dict[str, dict[str, Any]] = field(default_factory=dict)
    noise_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    layer_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sync_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: dict[str, Any] = field(default_factory=dict)
    figure_numbers: dict[str, int] = field(default_factory=dict)


def noise_finding(store: LcaStore) -> dict[str, Any]:
    """Finding 1: helped / zero / hurt shares, the helped fraction without zeros, per parameter, concentration.

    Args:
        store: An open store.

    Returns:
        Shares (means over iterations, whole run and second half), per-iteration and per-parameter fractions,
        parameters never nonzero (and in which layers), and the concentration of learning at 50% / 90%.

    """
    sel = select_rows(store, "train")
    comp = composition(store, sel)
    helped, zero, hurt = comp.shares()
    frac = comp.nonzero_fraction()
    stats = scan_parameters(store, sel)
    pfrac = stats.helped_fraction
    moved = np.isfinite(pfrac)
    n_params = store.layout.size
    cells = n_params * sel.n
    zero_layers: list[tuple[str, int]] = []
    never = ~moved
    for name, idx in store.layout.layers():
        c = sum(int(never[store.layout.params[i].offset : store.layout.params[i].stop].sum()) for i in idx)
        if c:
            zero_layers.append((name, c))
    pf = pfrac[moved]
    half = len(frac) // 2
    conc = concentration(stats.total, (0.5, 0.9))
    return {
        "iterations": sel.n,
        "params": n_params,
        "helped_share": float(helped.mean()),
        "zero_share": float(zero.mean()),
        "hurt_share": float(hurt.mean()),
        "helped_share_late": float(helped[half:].mean()),
        "iter_mean": float(np.nanmean(frac)),
        "iter_mean_late": float(np.nanmean(frac[half:])),
        "iter_sd": float(np.nanstd(frac)),
        "iter_min": float(np.nanmin(frac)),
        "iter_max": float(np.nanmax(frac)),
        "zero_cells": cells - int(comp.helped.sum() + comp.hurt.sum()),
        "zero_cell_share": (cells - int(comp.helped.sum() + comp.hurt.sum())) / cells if cells else float("nan"),
        "never_moved": int(never.sum()),
        "zero_layers": zero_layers,
        "param_mean": float(pf.mean()) if pf.size else float("nan"),
        "param_share_40_60": float(np.mean((pf >= 0.4) & (pf <= 0.6))) if pf.size else float("nan"),
        "conc50": float(conc.shares[0]),
        "conc90": float(conc.shares[1]),
        "shares": np.stack([helped, zero, hurt], axis=1),
        "iter_fracs": frac,
        "param_fracs": pf,
        "param_helped": stats.helped,
        "param_hurt": stats.hurt,
    }


def layer_finding(store: LcaStore) -> dict[str, Any]:
    """Finding 2: per-layer totals against the integration error, milestones, per-iteration series.

    Args:
        store: An open store.

    Returns:
        Layer names, sizes, totals, the ``(n, L)`` series, verdicts against the integration error, the steps by
        which each layer did 50% / 90% of its learning, losses and the conservation error.

    """
    sel = select_rows(store, "train")
    names, values = layer_series(store, sel)  # (n, L) LCA per layer per iteration
    totals = values.sum(axis=0)
    loss = store.read("train", "loss")
    sizes = [sum(store.layout.params[i].numel for i in idx) for _, idx in store.layout.layers()]
    residual = store.read("train", "residual")[sel.rows]
    dl = np.diff(loss)[sel.rows]
    error = integration_error(store, sel)
    ms = learning_milestones(values, (0.5, 0.9))
    ends = sel.end_steps
    val_loss = None
    if "val" in store.sets:
        vl = store.read("val", "loss")
        val_loss = (float(vl[0]), float(vl[-1]))
    return {
        "residual": residual,
        "l1_change": store.read("train", "l1_change")[sel.rows],
        "dl": dl,
        "train_loss": loss,
        "val_curve": store.read("val", "loss") if "val" in store.sets else None,
        "conservation": float(np.abs(residual).sum() / max(float(np.abs(dl).sum()), 1e-300)),
        "names": names,
        "sizes": sizes,
        "totals": totals,
        "series": values,
        "steps": np.concatenate([sel.start_steps[:1], ends]),
        "error": error,
        "verdicts": significance(totals, error),
        "positive": [n for n, v in zip(names, totals, strict=True) if v > 0],
        "hurting": [n for n, v in zip(names, significance(totals, error), strict=True) if v == "hurts"],
        "step50": [int(ends[p]) if p >= 0 else None for p in ms[0]],
        "step90": [int(ends[p]) if p >= 0 else None for p in ms[1]],
        "loss0": float(loss[0]),
        "loss_end": float(loss[-1]),
        "val_loss": val_loss,
        "delta": float(loss[-1] - loss[0]),
    }


def sync_finding(layers: dict[str, Any], shuffles: int) -> dict[str, Any]:
    """Finding 3: peaks of per-layer learning and their coincidence against two baselines.

    The baselines are circular shifts and the step-size-controlled series (``sync_analysis``, exactly what
    ``lca report`` shows).

    Args:
        layers: The run's :func:`layer_finding`.
        shuffles: Baseline samples.

    Returns:
        Iterations ``n``, the ``analysis``, and how many iterations have peaks in ≥ 2 layers (``multi``) and in
        any layer (``any``).

    """
    sa = sync_analysis(layers["names"], layers["series"], tolerance=SYNC_TOLERANCE, n_shuffles=shuffles, seed=SYNC_SEED)
    learning = sa.learning
    ind = np.zeros((len(sa.peaks), learning.shape[0]), dtype=bool)
    for j, p in enumerate(sa.peaks):
        ind[j, p] = True
    counts = ind.sum(axis=0)
    return {
        "n": learning.shape[0],
        "analysis": sa,
        "multi": int((counts >= 2).sum()),
        "any": int((counts >= 1).sum()),
    }


def freeze_finding(
    runs: dict[str, RunResult],
    layers: dict[str, Any],
    seeds: Sequence[int],
    base_key: str = "fc_mnist",
    frozen_key: str = "fc_mnist_frozen",
) -> dict[str, Any]:
    """The freeze-the-last-layer comparison over seeds.

    Args:
        runs: Every run, by key.
        layers: :func:`layer_finding` per run.
        seeds: Seeds of the mode (runs ``BASE[_sN]`` and ``FROZEN[_sN]``).
        base_key: Key of the normal runs (seed 0).
        frozen_key: Key of the runs with the last layer frozen (seed 0).

    Returns:
        Final losses, per-layer totals and integration errors per seed (normal and frozen), held-out losses, the
        overfitting fact of seed 0 (None without a held-out set), and the largest |LCA| of the frozen layer
        (exactly 0 expected); empty when no seed has both runs.

    """
    pairs = []
    for seed in seeds:
        sfx = f"_s{seed}" if seed else ""
        base, frozen = f"{base_key}{sfx}", f"{frozen_key}{sfx}"
        if base in layers and frozen in layers:
            pairs.append((seed, base, frozen))
    if not pairs:
        return {}
    last = layers[pairs[0][2]]["names"][-1]
    names = layers[pairs[0][1]]["names"]
    base_tot = np.array([layers[b]["totals"] for _, b, _ in pairs])  # (seeds, L)
    frozen_tot = np.array([[layers[f]["totals"][layers[f]["names"].index(n)] for n in names] for _, _, f in pairs])
    val = [
        (layers[b]["val_loss"], layers[f]["val_loss"])
        for _, b, f in pairs
        if layers[b]["val_loss"] is not None and layers[f]["val_loss"] is not None
    ]
    return {
        "last": last,
        "names": names,
        "seeds": [s for s, _, _ in pairs],
        "keys": pairs,
        "base_totals": base_tot,
        "frozen_totals": frozen_tot,
        "base_loss": np.array([layers[b]["loss_end"] for _, b, _ in pairs]),
        "frozen_loss": np.array([layers[f]["loss_end"] for _, _, f in pairs]),
        "base_error": np.array([layers[b]["error"] for _, b, _ in pairs]),
        "frozen_error": np.array([layers[f]["error"] for _, _, f in pairs]),
        "val": val,
        "overfit": {
            which: overfitting(layers[key]["train_loss"], layers[key]["val_curve"])
            for which, key in (("normal", pairs[0][1]), ("frozen", pairs[0][2]))
            if layers[key]["val_curve"] is not None
        },
        "config": runs[pairs[0][2]].exp.source,
        "max_abs_frozen": _max_abs_layer(runs, layers, [f for _, _, f in pairs], last),
    }


def _max_abs_layer(runs: dict[str, RunResult], layers: dict[str, Any], keys: list[str], layer: str) -> float:
    """The largest |LCA| of ``layer``'s parameters over the runs ``keys`` (streamed over chunks)."""
    mx = 0.0
    for key in keys:
        st = LcaStore.open(runs[key].store)
        li = layers[key]["names"].index(layer)
        cols = [st.layout.params[i] for i in st.layout.layers()[li][1]]
        for _, rows in st.iter_lca("train"):
            for p in cols:
                mx = max(mx, float(np.abs(rows[:, p.offset : p.stop]).max()))
    return mx


def accuracy_finding(
    run: RunResult, work: Path, pairs: int, device: str, log: Log, reuse: bool = False
) -> dict[str, Any]:
    """Finding 4: euler / Simpson / adaptive vs a float64 32-interval reference on the first and last pairs.

    With ``reuse``, a result saved earlier for the same run and settings (``work/accuracy.json``) is read back.

    Args:
        run: The FC run (role ``acc``).
        work: The work directory (the windows' stores go to ``work/KEY_acc_A_B``).
        pairs: Pairs in each window.
        device: Torch device.
        log: Progress lines.
        reuse: Read back a saved result with the same key.

    Returns:
        The ``windows`` (first and last checkpoint index), number of ``pairs`` and the ``table``: per method its
        relative L1 error, conservation error, largest relative residual, mean sub-intervals and seconds.

    """
    ckpts = sorted(run.run_dir.glob("step_*.safetensors"))
    t = len(ckpts) - 1
    windows = [(0, min(pairs, t))]
    if t - pairs > pairs:
        windows.append((t - pairs, t))
    methods = accuracy_methods(run)
    record = work / "accuracy.json"
    key = {"run": fingerprint(run.exp, device), "windows": windows, "methods": methods}
    key = json.loads(json.dumps(key, default=str))
    if reuse and record.is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            log(f"  method accuracy: reusing {record}")
            return dict(saved["result"], windows=[tuple(w) for w in saved["result"]["windows"]])
    out = _method_stores(run, ckpts, windows, methods, work, device)
    table = _accuracy_table(out)
    n_pairs = sum(b - a for a, b in windows)
    log(f"  method accuracy: {n_pairs} pairs x {len(methods)} methods")
    result = {"windows": windows, "pairs": n_pairs, "table": table}
    record.write_text(json.dumps({"key": key, "result": result}, indent=1), encoding="utf-8")
    return result


def accuracy_methods(run: RunResult) -> dict[str, dict[str, Any]]:
    """The methods finding 4 compares, by table label, as compute overrides; the reference comes last."""
    methods: dict[str, dict[str, Any]] = {
        "euler (first order)": {"method": "euler"},
        "Simpson, n = 2 (max_splits 2)": {"max_splits": 2},
    }
    main = {k: v for k, v in run.exp.compute.items() if k in ("tolerance", "rtol", "max_splits", "l1_tol")}
    if main:
        methods[f"adaptive Simpson, this mode's main setting ({tol_text(main)})"] = main
    methods[f"adaptive Simpson, defaults ({tol_text({})})"] = {}
    methods["reference (float64, n = 32 on every pair)"] = dict(REFERENCE)
    return methods


def _method_stores(
    run: RunResult,
    ckpts: list[Path],
    windows: list[tuple[int, int]],
    methods: dict[str, dict[str, Any]],
    work: Path,
    device: str,
) -> dict[str, dict[str, Any]]:
    """Compute every method on every window; per method the LCA rows, residuals, ΔL, splits and seconds."""
    out: dict[str, dict[str, Any]] = {m: {"lca": [], "res": [], "dl": [], "splits": [], "sec": 0.0} for m in methods}
    for a, b in windows:
        # a run directory of the window's checkpoints only, linked, so the main store is not touched
        sub = work / f"{run.exp.key}_acc_{a}_{b}"
        if sub.exists():
            shutil.rmtree(sub)
        sub.mkdir(parents=True)
        (sub / "lca.toml").symlink_to(run.run_dir / "lca.toml")
        for p in ckpts[a : b + 1]:
            os.symlink(p, sub / p.name)
        for i, (m, over) in enumerate(methods.items()):
            cfg = run.exp.config.with_overrides(device=device, **{**NETWORK_DTYPE, **over})
            # the train set only: the accuracy of the quadrature does not depend on which set it is
            cfg = dataclasses.replace(cfg, data={"train": cfg.data["train"]})
            store_path = sub / f"method{i}.zarr"
            t0 = time.perf_counter()
            compute_store(sub, cfg, store_path)
            out[m]["sec"] += time.perf_counter() - t0
            st = LcaStore.open(store_path)
            rows = [r for _, r in st.iter_lca("train")]
            out[m]["lca"].append(np.concatenate(rows).astype(np.float64))
            loss = st.read("train", "loss")
            out[m]["dl"].append(np.diff(loss))
            out[m]["res"].append(st.read("train", "residual"))
            out[m]["splits"].append(st.read("train", "splits"))
    return out


def _accuracy_table(out: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method of :func:`_method_stores`' output, measured against the last method (the reference)."""
    ref = np.concatenate(out[list(out)[-1]]["lca"])
    ref_l1 = float(np.abs(ref).sum())
    table = []
    for m in out:
        lca = np.concatenate(out[m]["lca"])
        res = np.concatenate(out[m]["res"])
        dl = np.concatenate(out[m]["dl"])
        splits = np.concatenate(out[m]["splits"])
        table.append(
            {
                "method": m,
                "rel_l1": float(np.abs(lca - ref).sum() / ref_l1) if ref_l1 > 0 else float("nan"),
                "conservation": float(np.abs(res).sum() / np.abs(dl).sum()),
                "max_rel_residual": float(np.max(np.abs(res) / np.maximum(np.abs(dl), 1e-300))),
                "mean_splits": float(splits.mean()),
                "seconds": out[m]["sec"],
            }
        )
    return table
