"""The report's headline numbers (``ReportResult.numbers``) and the small derived numbers the captions quote.

Everything here is computed from :class:`~lca_cli.reporting.gather.ReportData` alone: JSON-ready values
(floats, ints, lists, None for what is not defined, never NaN), the same for every set shown.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lca_cli.analysis.sync import SyncResult
from lca_cli.analysis.verdicts import ERROR_RULE, LAYER_SIGNIFICANCE_RULE
from lca_cli.reporting.findings import (
    cancellation_of,
    finding_numbers,
    random_sign_changes,
    robustness,
    set_findings,
)
from lca_cli.reporting.gather import InputImage, ReportData, SetData
from lca_cli.store import HELPED_RULE, LcaStore

__all__ = ["finite", "input_pixels", "nanmean", "random_sign_changes", "report_numbers", "set_numbers"]


def finite(x: float | np.floating[Any] | None) -> float | None:
    """``x`` as a float, or None when it is None or not finite (JSON has no NaN).

    Args:
        x: A number or None.

    Returns:
        The float, or None.

    """
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def nanmean(x: np.ndarray) -> float:
    """Mean ignoring NaN entries; NaN (without numpy's warning) when every entry is NaN, e.g. when nothing moved.

    Args:
        x: The values.

    Returns:
        The mean of the finite entries, or NaN.

    """
    return float(np.nanmean(x)) if not np.isnan(x).all() else float("nan")


def input_pixels(d: SetData, image: InputImage) -> tuple[np.ndarray, int]:
    """Each input pixel's LCA summed over the first layer's weights on it (units and channels), and the still ones.

    Args:
        d: One set's data.
        image: The first layer's input image.

    Returns:
        ``(height, width)`` totals over the window, and the number of pixels whose weights never moved.

    """
    c, h, w = image.shape
    a, b = image.span
    tot = d.stats.total[a:b].reshape(-1, c * h * w)  # (units, inputs) row-major like the weight
    moved = (d.stats.helped + d.stats.hurt)[a:b].reshape(-1, c * h * w).sum(axis=0)
    return tot.sum(axis=0).reshape(c, h, w).sum(axis=0), int((moved.reshape(c, h, w).sum(axis=0) == 0).sum())


def _sync_numbers(r: SyncResult, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}_tested": r.tested,
        f"{prefix}_reason": r.reason,
        f"{prefix}_observed": finite(r.observed),
        f"{prefix}_baseline_mean": finite(r.baseline_mean),
        f"{prefix}_baseline_sd": finite(r.baseline_sd),
        f"{prefix}_p_value": finite(r.p_value),
        f"{prefix}_p_text": r.p_text(),
        f"{prefix}_shuffles": r.n_shuffles,
        f"{prefix}_pairs": r.pairs,
        f"{prefix}_passes": r.passes,
        f"{prefix}_effect_size": finite(r.effect_size),
    }


def _layer_numbers(d: SetData) -> dict[str, Any]:
    """The per-layer entries of a set's numbers (``{layer: value}`` maps, model order)."""
    names = d.layer_names
    totals = d.totals
    lh, lz, lu = d.lcomp.shares()

    def steps_at(positions: np.ndarray) -> dict[str, int | None]:
        return {n: (int(d.sel.end_steps[p]) if p >= 0 else None) for n, p in zip(names, positions, strict=True)}

    return {
        "layer_totals": {n: float(t) for n, t in zip(names, totals, strict=True)},
        "layer_helped": dict(zip(names, np.asarray(d.layer_neg).tolist(), strict=True)),
        "layer_hurt": dict(zip(names, np.asarray(d.layer_pos).tolist(), strict=True)),
        "layer_verdicts": dict(zip(names, d.verdicts, strict=True)),
        "layers_hurting": [n for n, v in zip(names, d.verdicts, strict=True) if v == "hurts"],
        "layers_positive": [n for n, t in zip(names, totals, strict=True) if t > 0],
        "layer_helped_share": dict(zip(names, lh.tolist(), strict=True)),
        "layer_zero_share": dict(zip(names, lz.tolist(), strict=True)),
        "layer_hurt_share": dict(zip(names, lu.tolist(), strict=True)),
        "layer_step_50": steps_at(d.milestones[0]),
        "layer_step_90": steps_at(d.milestones[1]),
        "layer_concentration_90": {n: finite(v) for n, v in zip(names, d.layer_conc[1], strict=True)},
    }


def _robust_numbers(r: ReportData, d: SetData) -> dict[str, Any]:
    """Verdicts, layer robustness, per-layer errors, cancellation and windowed synchronisation of one set."""
    names = d.layer_names
    rob = robustness(d)
    can = cancellation_of(d)

    def per_layer(x: np.ndarray) -> dict[str, float | None]:
        return {n: finite(v) for n, v in zip(names, np.asarray(x, dtype=np.float64), strict=True)}

    return {
        "verdicts": [finding_numbers(f) for f in set_findings(r, d)],
        "layer_error_estimate": per_layer(d.layer_errors),
        "layer_error_rule": ERROR_RULE,
        "layer_pos_over_neg": per_layer(can["pos_over_neg"]),
        "layer_hurt_iteration_fraction": per_layer(can["hurt_iterations"]),
        "abs_over_delta_median": finite(can["abs_over_delta_median"]),
        "abs_over_delta_window": finite(can["abs_over_delta_window"]),
        "transient_iterations": rob.transient,
        "layer_windows": {lab: list(w) for lab, w in rob.windows.items()},
        "layer_totals_by_window": {lab: per_layer(t) for lab, t in rob.totals.items()},
        "layer_verdicts_by_window": {lab: dict(zip(names, v, strict=True)) for lab, v in rob.verdicts.items()},
        "layer_verdict_flips": rob.flips,
        "sync_windows": [
            {
                "window": w.label,
                "span": list(w.span),
                **_sync_numbers(w.raw, "sync"),
                **_sync_numbers(w.controlled, "sync_controlled"),
            }
            for w in d.sync.windows
        ],
    }


def set_numbers(store: LcaStore, d: SetData, r: ReportData | None = None) -> dict[str, Any]:
    """JSON-ready numbers of one set: loss change, residuals, shares, concentration, per layer, synchronisation.

    Args:
        store: The store.
        d: The set's data.
        r: The report's data (the followed parameters): adds the verdicts, layer robustness, per-layer error
            estimates, cancellation and windowed synchronisation.

    Returns:
        The numbers (the keys of ``ReportResult.numbers["per_set"][set]``).

    """
    c = d.curves
    helped, zero, hurt = d.comp.shares()
    frac_param = d.stats.helped_fraction
    moved = np.isfinite(frac_param)
    flagged_steps = [int(x) for x in d.sel.start_steps[c.flagged]]
    sync = d.sync
    return {
        "set": d.name,
        "n_iterations": d.sel.n,
        "n_not_done_in_window": d.sel.n_skipped,
        "first_step": int(d.sel.start_steps[0]),
        "last_step": int(d.sel.end_steps[-1]),
        "window": [d.sel.window[0], d.sel.window[1]],
        "n_params": store.layout.size,
        "delta_loss": float(c.delta_loss.sum()),
        "sum_lca": float(c.lca_sum.sum()),
        "sum_buffer_lca": float(c.buffer_lca.sum()),
        "sum_residual": float(c.residual.sum()),
        "max_abs_residual": float(np.abs(c.residual).max()),
        "integration_error": d.error,
        "flagged": len(flagged_steps),
        "flagged_steps": flagged_steps[:50],
        "mean_splits": float(c.splits.mean()),
        "helped_share_mean": finite(helped.mean()),
        "zero_share_mean": finite(zero.mean()),
        "hurt_share_mean": finite(hurt.mean()),
        "helped_fraction_mean": finite(nanmean(d.comp.nonzero_fraction())),
        "helped_fraction_per_parameter_median": finite(np.median(frac_param[moved])) if moved.any() else None,
        "params_never_moved": int((~moved).sum()),
        "zero_entries": d.stats.histogram.zeros,
        "concentration_50": finite(d.conc.shares[0]),
        "concentration_90": finite(d.conc.shares[1]),
        **_layer_numbers(d),
        "peaks_per_layer": {n: len(p) for n, p in zip(d.layer_names, sync.peaks, strict=True)},
        "sync_peak_rule": sync.rule,
        "sync_tolerance": sync.shift.tolerance,
        **_sync_numbers(sync.shift, "sync"),
        **_sync_numbers(sync.controlled_shift, "sync_controlled"),
        **(_robust_numbers(r, d) if r is not None else {}),
    }


def report_numbers(store: LcaStore, report: ReportData) -> dict[str, Any]:
    """The headline numbers of a report: the headline set's, the followed parameters', ``per_set`` for all.

    Args:
        store: The store.
        report: The report's data.

    Returns:
        The numbers (``ReportResult.numbers`` without ``seconds``).

    """
    per_set = {d.name: set_numbers(store, d, report) for d in report.sets}
    main = report.main
    flips, hurt_shares = random_sign_changes(main.traj, report.kinds)
    params = []
    for j, (lab, k, c) in enumerate(zip(report.labels, report.kinds, report.columns, strict=True)):
        v = main.traj[:, j]
        params.append(
            {
                "name": lab,
                "kind": k,
                "column": int(c),
                "total": float(v.sum()),
                "helped_iterations": int((v < 0).sum()),
                "hurt_iterations": int((v > 0).sum()),
                "zero_iterations": int((v == 0).sum()),
            }
        )
    return {
        **per_set[main.name],
        "store": str(store.path),
        "sets": list(store.sets),
        "sets_drawn": [d.name for d in report.sets],
        "sets_not_drawn": report.notes,
        "heatmap_layers": [m.name for m in main.maps],
        "parameters": params,
        "random_sign_flip_rate": finite(np.mean(flips)) if flips else None,
        "random_hurt_share_median": finite(np.median(hurt_shares)) if hurt_shares else None,
        "helped_rule": str(store.attrs.get("helped_rule", HELPED_RULE)),
        "significance_rule": LAYER_SIGNIFICANCE_RULE,
        "per_set": per_set,
    }
