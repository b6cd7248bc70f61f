"""The checks a paper's reader makes, measured from the stores and judged by ``lca_cli.analysis.verdicts``' rules.

Finding 1 under three conventions (all entries, nonzero entries, above a noise floor) with the share of entries
below float resolution (:func:`floor_check`, streamed by :func:`lca_cli.analysis.floor.tensor_counts`); the
per-parameter claim; seeds (mean, sd, n over the seed runs of one condition: :func:`seed_spread`); layer
verdicts with and without the starting transient and per phase, and the cancellation statistics
(:func:`layer_check`); the synchronisation tests within the active window and per phase (:func:`sync_windows`);
and the list of the paper's claims each run does not reproduce (:func:`disagreements`).

Each function returns plain numbers and :class:`~lca_cli.analysis.verdicts.Finding` objects; the page only
prints them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lca_cli.analysis.floor import RESOLUTION_RULE, tensor_counts
from lca_cli.analysis.groups import stat
from lca_cli.analysis.selection import Selection
from lca_cli.analysis.sync import FEW_COINCIDENCES, SyncAnalysis, coinciding_iterations
from lca_cli.analysis.verdicts import (
    AGREES,
    ERROR_RULE,
    Finding,
    apportion_errors,
    cancellation,
    first_last_verdict,
    helped_share_verdict,
    layer_robustness,
    per_parameter_verdict,
    sync_verdict,
    whole_vs_late,
)
from lca_cli.store import LcaStore

#: Noise floors of finding 1: |LCA| at or below X counts as zero (``lca summarize --min-abs X``).
FLOORS = (1e-12, 1e-10)


def _layer_sums(per_tensor: np.ndarray, layers: Sequence[tuple[str, list[int]]]) -> np.ndarray:
    """``(n, K)`` per tensor -> ``(n, L)`` per layer (tensor indices grouped as ``layout.layers()``)."""
    return np.stack([per_tensor[:, idx].sum(axis=1) for _, idx in layers], axis=1)


def floor_check(store: LcaStore, sel: Selection, floors: Sequence[float] = FLOORS) -> dict[str, Any]:
    """Helped / hurt counts per iteration at floor 0 and at each floor, entries below resolution, Σneg / Σpos.

    One streaming pass per floor (:func:`~lca_cli.analysis.floor.tensor_counts`).

    Args:
        store: An open store with one column per parameter.
        sel: The iterations (``train``).
        floors: Noise floors X > 0.

    Returns:
        ``helped`` / ``hurt`` int ``(n,)`` at floor 0, ``floors`` ``{X: (helped (n,), hurt (n,))}``,
        ``tiny_share`` (share of all entries below float resolution, :data:`RESOLUTION_RULE`), ``eps``,
        ``neg`` / ``pos`` float ``(n, L)`` per layer (sums of the negative / positive entries).

    """
    mask = np.zeros(store.n_pairs, dtype=bool)
    mask[sel.rows] = True
    base = tensor_counts(store, sel.set_name, mask, None)
    rows = sel.rows
    layers = store.layout.layers()
    out: dict[str, Any] = {
        "helped": base.helped[rows].sum(axis=1),
        "hurt": base.hurt[rows].sum(axis=1),
        "tiny_share": float(base.tiny[rows].sum()) / max(1, store.layout.size * sel.n),
        "eps": base.eps,
        "neg": _layer_sums(base.neg[rows], layers),
        "pos": _layer_sums(base.pos[rows], layers),
        "floors": {},
    }
    for x in floors:
        c = tensor_counts(store, sel.set_name, mask, x)
        out["floors"][x] = (c.helped[rows].sum(axis=1), c.hurt[rows].sum(axis=1))
    return out


def noise_verdicts(fl: dict[str, Any], n_params: int, helped: np.ndarray, hurt: np.ndarray) -> dict[str, Any]:
    """Both of the paper's helped claims, by the rules, under each convention.

    Args:
        fl: :func:`floor_check` of the run.
        n_params: Parameters of the network (entries per iteration).
        helped: int ``(P,)`` iterations each parameter helped on.
        hurt: int ``(P,)`` iterations each parameter hurt on.

    Returns:
        ``all`` / ``nonzero`` / ``floor`` (``{X: Finding}``) share verdicts, ``per_param`` (the per-parameter
        claim), ``halves`` (whole window vs second half of the all-entries share, a computed sentence) and
        ``tiny_share``.

    """
    h, u = fl["helped"], fl["hurt"]
    share = h / n_params
    return {
        "all": helped_share_verdict(h, n_params, "all entries", "train"),
        "nonzero": helped_share_verdict(h, h + u, "nonzero entries", "train"),
        "floor": {
            x: helped_share_verdict(fh, n_params, f"all entries, |LCA| ≤ {x:g} counted as zero", "train")
            for x, (fh, _) in fl["floors"].items()
        },
        "per_param": per_parameter_verdict(helped, hurt, "train"),
        "halves": whole_vs_late(share, "the helped share", "all entries"),
        "tiny_share": fl["tiny_share"],
    }


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (ddof 1) and count of one statistic over the seeds of one condition."""

    mean: float
    sd: float
    n: int

    def text(self, pct: bool = True) -> str:
        """``52.1% ± 0.4% (n = 3)`` (or plain numbers); the sd is left out for one seed."""
        f = (lambda v: "n/a" if not math.isfinite(v) else f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.4g}")
        if self.n < 2:
            return f"{f(self.mean)} (n = {self.n})"
        return f"{f(self.mean)} ± {f(self.sd)} (n = {self.n})"


def seed_spread(values: Sequence[float]) -> Spread:
    """Mean, sd (ddof 1; NaN for one value) and n over seed runs (:func:`lca_cli.analysis.groups.stat`)."""
    st = stat(list(values))
    nan = float("nan")
    return Spread(nan if st["mean"] is None else st["mean"], nan if st["sd"] is None else st["sd"], st["n"])


def seed_noise(checks: dict[str, dict[str, Any]], fls: dict[str, dict[str, Any]], n_params: int) -> dict[str, Any]:
    """Finding 1 over the seeds of one condition: the spreads of each statistic and the verdicts on all seeds.

    The verdict of a claim over seeds applies the same rule to every iteration of every seed together (equal
    lengths, so the mean of the seeds' means).

    Args:
        checks: :func:`noise_verdicts` per seed run key.
        fls: :func:`floor_check` per seed run key.
        n_params: Parameters of the network.

    Returns:
        ``keys``, ``spread`` ``{statistic: Spread}``, ``all`` / ``nonzero`` / ``floor`` pooled verdicts.

    """
    keys = list(checks)
    h = np.concatenate([fls[k]["helped"] for k in keys])
    u = np.concatenate([fls[k]["hurt"] for k in keys])
    spread = {
        "all": seed_spread([checks[k]["all"].measured.get("mean", math.nan) for k in keys]),
        "nonzero": seed_spread([checks[k]["nonzero"].measured.get("mean", math.nan) for k in keys]),
        "per_param": seed_spread([checks[k]["per_param"].measured.get("mean", math.nan) for k in keys]),
        "tiny": seed_spread([checks[k]["tiny_share"] for k in keys]),
    }
    for x in FLOORS:
        spread[f"floor {x:g}"] = seed_spread([checks[k]["floor"][x].measured.get("mean", math.nan) for k in keys])
    return {
        "keys": keys,
        "spread": spread,
        "all": helped_share_verdict(h, n_params, f"all entries, {len(keys)} seeds pooled", "train"),
        "nonzero": helped_share_verdict(h, h + u, f"nonzero entries, {len(keys)} seeds pooled", "train"),
        "floor": {x: _pooled_floor(fls, keys, x, n_params) for x in FLOORS},
    }


def _pooled_floor(fls: dict[str, dict[str, Any]], keys: list[str], x: float, n_params: int) -> Finding:
    """The helped-share verdict at floor ``x`` over every iteration of the seed runs ``keys`` together."""
    helped = np.concatenate([fls[k]["floors"][x][0] for k in keys])
    conv = f"all entries, |LCA| ≤ {x:g} counted as zero, {len(keys)} seeds pooled"
    return helped_share_verdict(helped, n_params, conv, "train")


def layer_check(lay: dict[str, Any], fl: dict[str, Any] | None) -> dict[str, Any]:
    """Layer verdicts against per-layer errors, with and without the starting transient and per phase; cancellation.

    A layer's error per pair is its share of the pair's error estimate (:data:`ERROR_RULE`,
    :func:`~lca_cli.analysis.verdicts.apportion_errors`) when the per-layer Σ|LCA| is known (``fl``); without
    it every layer gets the whole network's |residual| (a bound, not an estimate).

    Args:
        lay: :func:`~paper.findings.layer_finding` of the run (``series``, ``residual``, ``l1_change`` and
            ``dl`` per pair).
        fl: :func:`floor_check` of the run (None: no per-layer errors and no cancellation statistics).

    Returns:
        ``robust`` (:class:`~lca_cli.analysis.verdicts.LayerRobustness`), ``errors`` ``(L,)`` each layer's error
        over the whole run, ``per_layer_errors`` (False for the network bound), ``hurt_iters`` (share of
        iterations each layer's net LCA was positive), ``pos_over_neg`` per layer and ``abs_over_dl`` (median,
        min, max of Σ|LCA| / abs(ΔL) per iteration), both None without ``fl``, ``first_last`` (whole run) and
        ``first_last_late`` (without the transient; None when there is none).

    """
    series, dl = lay["series"], lay["dl"]  # (n, L), (n,)
    n_layers = series.shape[1]
    if fl is not None:
        layer_abs = fl["pos"] - fl["neg"]  # (n, L) Σ|LCA| of each layer's entries per pair
        errors = apportion_errors(lay["residual"], lay.get("l1_change"), layer_abs)
    else:
        errors = np.repeat(np.abs(lay["residual"])[:, None], n_layers, axis=1)
    robust = layer_robustness(lay["names"], series, errors, dl)
    out: dict[str, Any] = {
        "robust": robust,
        "errors": errors.sum(axis=0),
        "per_layer_errors": fl is not None,
        "hurt_iters": (series > 0).mean(axis=0),
        "pos_over_neg": None,
        "abs_over_dl": None,
        "first_last": first_last_verdict(lay["names"], robust.verdicts["whole"], "whole run", "train"),
        "first_last_late": None,
    }
    late = next((lab for lab in robust.windows if lab.startswith("without first")), None)
    if late is not None:
        out["first_last_late"] = first_last_verdict(lay["names"], robust.verdicts[late], late, "train")
    if fl is not None:
        c = cancellation(series, fl["neg"].sum(axis=0), fl["pos"].sum(axis=0), layer_abs.sum(axis=1), dl)
        out["hurt_iters"], out["pos_over_neg"] = c["hurt_iterations"], c["pos_over_neg"]
        ratio = np.asarray(c["abs_over_delta"])
        ratio = ratio[np.isfinite(ratio)]
        if ratio.size:
            out["abs_over_dl"] = (float(c["abs_over_delta_median"]), float(ratio.min()), float(ratio.max()))
    return out


def sync_windows(sa: SyncAnalysis) -> dict[str, Any]:
    """The synchronisation verdict from the tests within the active window, and each window's coincidences.

    Args:
        sa: The run's analysis (with ``windows``).

    Returns:
        ``verdict`` (:func:`~lca_cli.analysis.verdicts.sync_verdict` on the active window), ``coincide``
        ``{label: iterations in the window where ≥ 2 layers peak}``, ``fragile`` (the active window's verdict
        rests on fewer than :data:`FEW_COINCIDENCES` such iterations) and ``active`` (its
        :class:`~lca_cli.analysis.sync.PhaseSync`, None without one).

    """
    coincide = {w.label: coinciding_iterations(sa.peaks, w.span) for w in sa.windows}
    act = sa.active
    if act is None or not act.raw.tested:
        verdict = sync_verdict(None, None, act.raw.reason if act is not None else "no windows", "train")
    else:
        detail = (
            f"within iterations {act.span[0]}-{act.span[1] - 1}: observed {act.raw.observed:.3g} vs baseline "
            f"{act.raw.baseline_mean:.3g} ± {act.raw.baseline_sd:.3g} ({act.raw.p_text()}); step-size controlled "
            + (
                f"{act.controlled.observed:.3g} vs {act.controlled.baseline_mean:.3g} ({act.controlled.p_text()})"
                if act.controlled.tested
                else "no test"
            )
        )
        verdict = sync_verdict(act.raw.passes, act.controlled.passes if act.controlled.tested else None, detail,
                               "train")  # fmt: skip
    fragile = bool(act is not None and act.raw.tested and coincide.get("active", 0) < FEW_COINCIDENCES)
    return {"verdict": verdict, "coincide": coincide, "fragile": fragile, "active": act}


def disagreements(verdicts: Sequence[tuple[str, str, Finding]]) -> list[tuple[str, str, Finding]]:
    """The ``(section, run, finding)`` rows whose verdict is not ``agrees``, in page order."""
    return [row for row in verdicts if row[2].verdict != AGREES]


__all__ = [
    "ERROR_RULE",
    "FEW_COINCIDENCES",
    "FLOORS",
    "RESOLUTION_RULE",
    "Spread",
    "disagreements",
    "floor_check",
    "layer_check",
    "noise_verdicts",
    "seed_noise",
    "seed_spread",
    "sync_windows",
]
