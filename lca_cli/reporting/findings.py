"""The report's verdicts against the paper, layer robustness and cancellation, per set, as numbers and HTML.

Every verdict here is computed by a rule of :mod:`lca_cli.analysis.verdicts` from one set's
:class:`~lca_cli.reporting.gather.SetData` and printed next to that set's name and the convention it counted
(all entries / nonzero entries): nothing is written by hand. The page shows three tables: the verdicts, the
layer verdicts with and without the starting transient and per phase (flips said), and each layer's error
estimate and cancellation statistics.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from lca_cli.analysis.sync import FEW_COINCIDENCES, PhaseSync, SyncResult, coinciding_iterations
from lca_cli.analysis.verdicts import (
    ERROR_RULE,
    TRANSIENT_SHARE,
    Finding,
    LayerRobustness,
    cancellation,
    first_last_verdict,
    helped_share_verdict,
    layer_robustness,
    oscillation_verdict,
    per_parameter_verdict,
    sync_verdict,
)
from lca_cli.reporting.gather import ReportData, SetData
from lca_cli.reporting.plots import fmt
from lca_cli.reporting.text import pct

__all__ = [
    "cancellation_of",
    "finding_numbers",
    "findings_html",
    "random_sign_changes",
    "robustness",
    "set_findings",
    "steps_text",
    "sync_window_text",
]


def random_sign_changes(traj: np.ndarray, kinds: list[str]) -> tuple[list[float], list[float]]:
    """For each random parameter that moved on two iterations or more: how often its sign flips, how often it hurt.

    Args:
        traj: ``(n, k)`` per-iteration LCA of the followed parameters.
        kinds: ``helpful`` / ``harmful`` / ``random`` per followed parameter.

    Returns:
        The share of consecutive nonzero iterations on which the sign changed, and the share of nonzero
        iterations on which it hurt (LCA > 0), one entry per random parameter counted.

    """
    flips, hurts = [], []
    for j, k in enumerate(kinds):
        nz = traj[:, j][traj[:, j] != 0]
        if k == "random" and len(nz) > 1:
            flips.append(float(np.mean(np.sign(nz[1:]) != np.sign(nz[:-1]))))
            hurts.append(float(np.mean(nz > 0)))
    return flips, hurts


def steps_text(d: SetData, span: tuple[int, int]) -> str:
    """Positions ``[a, b)`` of a set's iterations as the steps they cover: ``steps 40-2000``."""
    a, b = span
    if b <= a:
        return "no iterations"
    return f"steps {int(d.sel.start_steps[a])}-{int(d.sel.end_steps[b - 1])}"


def robustness(d: SetData) -> LayerRobustness:
    """Layer verdicts of a set with and without its starting transient and per phase, on per-layer errors."""
    return layer_robustness(d.layer_names, d.per_layer, d.layer_err, d.curves.delta_loss)


def cancellation_of(d: SetData) -> dict[str, Any]:
    """:func:`~lca_cli.analysis.verdicts.cancellation` of a set (Σ|LCA| per iteration from its first pass)."""
    return cancellation(d.per_layer, d.layer_neg, d.layer_pos, d.layer_abs.sum(axis=1), d.curves.delta_loss)


def sync_window_text(r: SyncResult) -> str:
    """One test's result in words: observed vs baseline ± sd, effect size, p, passes or not (or why no test)."""
    if not r.tested:
        return r.reason
    return (
        f"{fmt(r.observed, 3)} vs {fmt(r.baseline_mean, 3)} ± {fmt(r.baseline_sd, 2)} "
        f"(effect {fmt(r.effect_size, 2)} sd, ratio {fmt(r.ratio, 3)}, {r.p_text()}; "
        f"{'passes' if r.passes else 'does not pass'})"
    )


def _active(d: SetData) -> PhaseSync | None:
    return d.sync.active


def set_findings(r: ReportData, d: SetData) -> list[Finding]:
    """The verdicts on the paper's claims for one set, each by its rule, in the order of the paper's findings.

    Args:
        r: The report's data (the followed parameters' kinds).
        d: The set.

    Returns:
        Helped share per iteration (all entries, then nonzero entries), fraction per parameter, first and last
        layer (whole window, then without the starting transient when there is one), oscillation,
        synchronisation (within the active window).

    """
    comp = d.comp
    out = [
        helped_share_verdict(comp.helped, comp.n_params, "all entries", d.name),
        helped_share_verdict(comp.helped, comp.helped + comp.hurt, "nonzero entries", d.name),
        per_parameter_verdict(d.stats.helped, d.stats.hurt, d.name),
    ]
    rob = robustness(d)
    out.append(first_last_verdict(d.layer_names, rob.verdicts["whole"], "whole window", d.name))
    if rob.transient:
        lab = f"without first {rob.transient}"
        out.append(first_last_verdict(d.layer_names, rob.verdicts[lab], lab, d.name))
    flips, _ = random_sign_changes(d.traj, r.kinds)
    out.append(oscillation_verdict(flips, d.name))
    act = _active(d)
    if act is None or not act.raw.tested:
        reason = act.raw.reason if act is not None else "no test"
        out.append(sync_verdict(None, None, reason, d.name))
    else:
        span = steps_text(d, act.span)
        detail = f"{span}: raw {sync_window_text(act.raw)}; step-size controlled {sync_window_text(act.controlled)}"
        k = coinciding_iterations(d.sync.peaks, act.span)
        detail += f"; {k} iterations with two or more layers peaking together" + (
            f" (fewer than {FEW_COINCIDENCES}: a fragile result)" if k < FEW_COINCIDENCES else ""
        )
        ctrl = act.controlled.passes if act.controlled.tested else None
        out.append(sync_verdict(act.raw.passes, ctrl, detail, d.name))
    return out


def finding_numbers(f: Finding) -> dict[str, Any]:
    """A finding as JSON-ready numbers (``ReportResult.numbers["per_set"][set]["verdicts"]``)."""
    return {
        "claim": f.claim,
        "verdict": f.verdict,
        "convention": f.convention,
        "rule": f.rule,
        "summary": f.summary,
        "measured": {k: (float(v) if np.isfinite(v) else None) for k, v in f.measured.items()},
    }


def _table(head: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    h = "<tr>" + "".join(f"<th>{e(x)}</th>" for x in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td class=num>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{h}{body}</table>"


def findings_html(r: ReportData) -> str:
    """The page's verdicts, layer-robustness and per-layer cancellation tables, every set's rows under its name.

    Args:
        r: The report's data.

    Returns:
        HTML (escaped), starting with its ``<h2>`` headings.

    """
    e = html.escape
    parts = ["<h2>Verdicts against the paper (computed by the rules below)</h2>"]
    rows, rules = [], {}
    for d in r.sets:
        for f in set_findings(r, d):
            rows.append([f"set '{d.name}'", f.claim, f.convention, f.verdict, f.summary])
            rules[f.claim] = f.rule
    parts.append(_table(["set", "paper", "counted as", "verdict", "this run"], rows))
    parts.append(
        "<blockquote>"
        + "<br>".join(f"<b>{e(claim)}</b>: {e(rule)}." for claim, rule in rules.items())
        + "<br>The first and last layer's claim is the paper's for ResNet-20 on CIFAR-10 only; for another net "
        "the verdict says whether this net behaves the same way.</blockquote>"
    )
    parts.append("<h2>Layers: with and without the starting transient, per phase, error estimates, cancellation</h2>")
    parts.append(
        "<blockquote>"
        + e(
            f"Starting transient: the leading iterations each holding more than {100 * TRANSIENT_SHARE:g}% of the "
            f"|loss change| from them on (at most 10% of the window). Error estimates: {ERROR_RULE}. A verdict "
            "is given only where |total| exceeds the layer's error over that window; a flip is a layer that "
            "helps in one window and hurts in another."
        )
        + "</blockquote>"
    )
    for d in r.sets:
        rob = robustness(d)
        can = cancellation_of(d)
        labels = list(rob.windows)
        head = ["layer"] + [f"{lab} ({steps_text(d, w)})" for lab, w in rob.windows.items()]
        head += ["error estimate", "Σpos / |Σneg|", "iterations hurt"]
        body = []
        for j, name in enumerate(d.layer_names):
            row = [name] + [f"{fmt(float(rob.totals[lab][j]), 3)} {rob.verdicts[lab][j]}" for lab in labels]
            row += [fmt(float(d.layer_errors[j]), 2), fmt(float(can["pos_over_neg"][j]), 3),
                    pct(float(can["hurt_iterations"][j]))]  # fmt: skip
            body.append(row)
        parts.append(f"<h3>set '{e(d.name)}'</h3>")
        parts.append(_table(head, body))
        flips = rob.sentences()
        parts.append(
            "<p>"
            + e(
                (f"Starting transient: {rob.transient} iteration(s). " if rob.transient else "No starting transient. ")
                + ("Verdicts that flip: " + "; ".join(flips) + "." if flips else "No layer's verdict flips.")
                + f" Σ|LCA| / |ΔL| per iteration: median {fmt(float(can['abs_over_delta_median']), 3)}; over the "
                f"window Σ|LCA| / |Σ ΔL| = {fmt(float(can['abs_over_delta_window']), 3)} (1 = nothing cancels)."
            )
            + "</p>"
        )
    return "\n".join(parts)
