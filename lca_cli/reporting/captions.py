"""The captions of ``lca report``'s figures, computed from the report's data alone.

One function per view (the keys of :data:`lca_cli.reporting.report.VIEWS`), each taking the whole
:class:`~lca_cli.reporting.gather.ReportData` and returning plain text (the page escapes it). Every caption
says what the figure shows, then what the paper found next to what this run shows (:func:`~.text.paper`), with
the run's integration error as the scale below which a layer's total cannot be told from zero. No drawing:
the captions can be read and tested without matplotlib.
"""

from __future__ import annotations

import math

import numpy as np

from lca_cli.analysis.verdicts import (
    HELPED_SHARE_RULE,
    OSCILLATION_RULE,
    PAPER_FIRST_LAST,
    PAPER_HELPED_SHARE,
    PAPER_OSCILLATION,
    PAPER_PER_PARAMETER,
    PAPER_SYNC,
    PER_PARAMETER_RULE,
    SYNC_RULE,
    first_last_verdict,
    oscillation_verdict,
    per_parameter_verdict,
    whole_vs_late,
)
from lca_cli.reporting.findings import random_sign_changes, robustness, set_findings, steps_text, sync_window_text
from lca_cli.reporting.gather import InputImage, ReportData, SetData
from lca_cli.reporting.numbers import input_pixels, nanmean
from lca_cli.reporting.plots import fmt, highlighted_layers
from lca_cli.reporting.text import by_set, paper, pct

__all__ = [
    "composition_caption",
    "concentration_caption",
    "cumulative_caption",
    "heatmaps_caption",
    "helped_hist_caption",
    "input_maps_caption",
    "layer_shares_caption",
    "layers_caption",
    "loss_caption",
    "milestones_caption",
    "sync_caption",
    "trajectories_caption",
    "values_caption",
]


def loss_caption(r: ReportData) -> str:
    """Caption of the loss view: completeness of the allocations and the integration error."""
    run = by_set(
        r.sets,
        lambda d: (
            f"ΔL {fmt(float(d.curves.delta_loss.sum()))}, Σ LCA {fmt(float(d.curves.lca_sum.sum()))}, "
            f"integration error Σ|residual| {fmt(d.error, 3)} "
            f"({pct(d.error / max(abs(float(d.curves.delta_loss.sum())), 1e-300), 2)} of |ΔL|), "
            f"{int(d.curves.flagged.sum())} pairs over tolerance"
        ),
    )
    caption = (
        "Top: the loss on each evaluation set at every checkpoint (black) and the loss rebuilt from the "
        "allocations alone, the starting loss plus the running sum of all parameters' LCA (dashed). LCA is "
        "complete: its terms add up to the loss change, so the curves should coincide. Bottom: what is left "
        "over on each iteration (the integration error); red marks are iterations still over tolerance when "
        "refinement hit its cap. The summed |residual| is this run's scale of significance: a layer's total "
        "smaller than it cannot be told from zero. "
        + paper(
            "the allocations add up to the loss change to within an absolute tolerance of 1e-3 per iteration "
            "(up to 32 sub-intervals; iterations still above it at the cap were accepted silently).",
            run + ".",
        )
    )
    if r.main.sel.n_skipped:
        caption += (
            f" {r.main.sel.n_skipped} unfinished iterations in the window are left out; the reconstruction "
            "restarts from the true loss after each gap."
        )
    return caption


def composition_caption(r: ReportData) -> str:
    """Caption of the helped / zero / hurt shares per iteration, with each set's verdicts in both conventions.

    Each set's numbers, its verdicts against the paper's "barely over 50%" (all entries, then nonzero entries,
    by :data:`~lca_cli.analysis.verdicts.HELPED_SHARE_RULE`) and the comparison of its whole window with its
    second half are computed on that set and printed after its name.
    """

    def run(d: SetData) -> str:
        helped, zero, hurt = d.comp.shares()
        all_v, nz_v = set_findings(r, d)[:2]
        late = whole_vs_late(helped, "the helped share", "all entries")
        return (
            f"on an average iteration {pct(float(helped.mean()))} of all parameters helped, "
            f"{pct(float(zero.mean()))} were exactly zero and {pct(float(hurt.mean()))} hurt; of the nonzero ones "
            f"{pct(nanmean(d.comp.nonzero_fraction()))} helped. Verdict, all entries: {all_v.verdict}; nonzero "
            f"entries: {nz_v.verdict}. {late.text[0].upper() + late.text[1:]}"
        )

    return (
        "On each iteration, the share of all parameters that helped (blue, LCA < 0), did nothing (grey, LCA "
        "exactly 0: did not move, or zero gradient, such as weights of constant input pixels) and hurt "
        "(red), stacked to 100%; the dashed line is the other convention, the helped fraction among nonzero "
        "parameters; the black line is the loss (right axis). Runs longer than 300 iterations are shown as "
        "means over bins of consecutive iterations. "
        + paper(
            f"{PAPER_HELPED_SHARE} (shares of all parameters). Rule: {HELPED_SHARE_RULE}.",
            by_set(r.sets, run) + ".",
        )
    )


def helped_hist_caption(r: ReportData) -> str:
    """Caption of the histograms of how often parameters help, with each set's per-parameter verdict."""

    def per_param(d: SetData) -> str:
        f = per_parameter_verdict(d.stats.helped, d.stats.hurt, d.name)
        return f"{f.summary} — {f.verdict}"

    return (
        "Top: how the share of parameters helping is distributed over iterations, in both conventions (all "
        "parameters, filled; nonzero ones, outline). Bottom: for each parameter, the share of its nonzero "
        "iterations on which it helped (parameters that never moved the loss are left out). "
        + paper(
            f"{PAPER_PER_PARAMETER} (a noisy, coin-flip-like process). Rule: {PER_PARAMETER_RULE}.",
            by_set(r.sets, per_param) + ".",
        )
    )


def values_caption(r: ReportData) -> str:
    """Caption of the distribution of all LCA values by magnitude, with each set's spread and top-1% share."""

    def describe(d: SetData) -> str:
        h = d.stats.histogram
        m = h.negative + h.positive  # (bins,) counts by |value|
        if not m[1:].any():
            return "no nonzero values"
        cdf = np.cumsum(m) / m.sum()
        upper = h.EDGES[1:]  # each bin's upper edge
        p01, med, p99 = (float(upper[int(np.searchsorted(cdf, q))]) for q in (0.01, 0.5, 0.99))
        # The share of Σ|LCA| the largest 1% of nonzero values carry, each value at its bin's upper edge.
        desc, up = m[::-1].astype(np.float64), upper[::-1]  # largest magnitudes first
        before = np.cumsum(desc) - desc  # values in larger bins
        take = np.clip(0.01 * m.sum() - before, 0.0, desc)  # of each bin, the values among the largest 1%
        total = float((desc * up).sum())
        top_share = float((take * up).sum()) / total if total > 0 else float("nan")
        span = math.log10(p99 / p01) if p01 > 0 else float("nan")
        zeros = pct(h.zeros / max(h.total, 1))
        return (
            f"median |LCA| about {fmt(med, 2)}, 99% below {fmt(p99, 2)}, {fmt(span, 2)} orders of magnitude "
            f"between the 1st and 99th percentile, the largest 1% carry about {pct(top_share)} of Σ|LCA|, "
            f"{zeros} exactly 0"
        )

    return (
        "Every LCA value of the window (one per parameter and iteration) by magnitude on a log scale, helped "
        "(blue) and hurt (red) apart; exact zeros are counted separately in the titles. The wider the spread, "
        "the more a few large allocations carry each iteration's loss change. Magnitudes are to within a bin of "
        "the histogram. This run: " + by_set(r.sets, describe) + "."
    )


def layers_caption(r: ReportData) -> str:
    """Caption of the per-layer totals: which layers help or hurt beyond their own error estimate, and flips."""

    def run(d: SetData) -> str:
        v = d.verdicts
        hurting = [n for n, x in zip(d.layer_names, v, strict=True) if x == "hurts"]
        unclear = [n for n, x in zip(d.layer_names, v, strict=True) if x == "within error"]
        first, last = d.layer_names[0], d.layer_names[-1]
        t, err = d.totals, d.layer_errors
        text = (
            f"first layer {first} {fmt(float(t[0]), 3)} ± {fmt(float(err[0]), 2)} ({v[0]}), last layer {last} "
            f"{fmt(float(t[-1]), 3)} ± {fmt(float(err[-1]), 2)} ({v[-1]}); layers that hurt beyond their error: "
            f"{', '.join(hurting) if hurting else 'none'}"
        )
        if unclear:
            text += f"; within error (no sign can be given): {', '.join(unclear)}"
        rob = robustness(d)
        if rob.transient:
            lab = f"without first {rob.transient}"
            moved = [n for n, labs in rob.flips.items() if lab in labs]
            text += f"; without the starting transient ({rob.transient} iteration(s)) the verdict flips for " + (
                ", ".join(f"{n} ({rob.verdicts[lab][d.layer_names.index(n)]})" for n in moved) if moved else "no layer"
            )
        phase = [n for n, labs in rob.flips.items() if any(x in ("early", "middle", "late") for x in labs)]
        text += f"; {len(phase)} layer(s) flip between the thirds of the window" + (
            f" ({', '.join(phase[:8])}{', …' if len(phase) > 8 else ''}; see the tables above)" if phase else ""
        )
        f = first_last_verdict(d.layer_names, v, "whole window", d.name)
        return text + f" — first and last layer hurting: {f.verdict}"

    return (
        "For each layer, the blue bar sums every negative LCA entry of its parameters over the window "
        "(everything that lowered the loss), the red bar every positive one, and the diamond is the layer's net "
        "total with its own error estimate as error bar (each iteration's error shared among layers in "
        "proportion to their Σ|LCA|; see the rules above). A layer helps or hurts only when its net total "
        "exceeds that error; names in red bold hurt, grey italic are within error. Bars much longer than the "
        "net show how much of the work cancels out. The tables above give the totals without the starting "
        "transient and per phase. "
        + paper(PAPER_FIRST_LAST + " (a claim about ResNet-20 only).", by_set(r.sets, run) + ".")
    )


def layer_shares_caption(r: ReportData) -> str:
    """Caption of the helped / zero / hurt shares per layer."""

    def run(d: SetData) -> str:
        f = d.lcomp.nonzero_fraction()
        ok = np.isfinite(f)
        if not ok.any():
            return "no layer moved the loss"
        lo, hi = int(np.nanargmin(f)), int(np.nanargmax(f))
        _, z, _ = d.lcomp.shares()
        zmax = int(np.argmax(z))
        return (
            f"helped (nonzero) from {pct(float(f[lo]))} ({d.layer_names[lo]}) to {pct(float(f[hi]))} "
            f"({d.layer_names[hi]}); most exact zeros in {d.layer_names[zmax]} ({pct(float(z[zmax]))})"
        )

    return (
        "Per layer, the share of its parameter-iterations that helped (blue), were exactly zero (grey) and hurt "
        "(red); the black tick is the helped fraction among the nonzero ones. "
        + paper(
            "barely over half of all parameters help on an iteration (reported for the network as a whole).",
            by_set(r.sets, run) + ".",
        )
    )


def cumulative_caption(r: ReportData) -> str:
    """Caption of the cumulative LCA per layer; with two sets or more, the layer whose totals differ most."""
    data = r.sets
    names = r.main.layer_names
    keep = highlighted_layers(r.main.totals)
    caption = (
        "Each line is one layer's running total of LCA from 0 at the first checkpoint; going down = lowering the "
        "loss. Colour is depth (dark = input side, yellow = output side), the same in every panel; the dashed "
        "black line is the whole network (it follows the loss). Where a line flattens that layer has stopped "
        "contributing; a line ending above zero belongs to a layer that hurt overall (see the previous figure "
        "for whether that exceeds the integration error)."
        + (
            f" With {len(names)} layers, only the first, the last and the largest ({len(keep)}) are coloured and "
            "named; the others are thin grey lines."
            if len(names) > len(keep)
            else ""
        )
    )
    if len(data) > 1:
        main, other = data[0], data[1]
        gap = main.totals - other.totals
        widest = int(np.argmax(np.abs(gap)))
        caption += (
            " Side by side, the same parameters' allocations on each evaluation set: a layer that keeps lowering "
            "the training loss while its held-out line flattens or rises is where learning stops generalising."
            " This run: Σ LCA "
            + "; ".join(f"{d.name} {fmt(float(d.totals.sum()), 3)}" for d in data)
            + f"; the layer with the largest gap ({main.name} − {other.name}): "
            + f"{names[widest]} ({fmt(float(gap[widest]), 3)})"
            + "."
        )
    return caption


def milestones_caption(r: ReportData) -> str:
    """Caption of when each layer had done half and 90% of its learning."""
    names = r.main.layer_names

    def run(d: SetData) -> str:
        p50, p90 = d.milestones
        ends = d.sel.end_steps
        ok = np.flatnonzero(p50 >= 0)
        if not ok.size:
            return "no layer learned overall"
        early = ok[int(np.argmin(p90[ok]))]
        late = ok[int(np.argmax(p90[ok]))]
        return (
            f"90% reached first by {names[early]} (step {int(ends[p90[early]])}) and last by {names[late]} "
            f"(step {int(ends[p90[late]])}); median 50% / 90% at steps {int(np.median(ends[p50[ok]]))} / "
            f"{int(np.median(ends[p90[ok]]))}"
        )

    return (
        "For each layer, the step by which it had done half (open dot) and 90% (filled) of its net learning "
        "over the window (learning = −LCA, accumulated from the first iteration); layers whose total did not "
        "lower the loss have no milestones. Colour is depth. This run: " + by_set(r.sets, run) + "."
    )


def concentration_caption(r: ReportData) -> str:
    """Caption of how few parameters do most of the learning, overall and per layer."""
    names = r.main.layer_names

    def run(d: SetData) -> str:
        c = d.conc
        lc = d.layer_conc[1]  # (L,) shares of each layer's parameters doing 90% of its learning
        ok = np.isfinite(lc)
        most = int(np.nanargmin(np.where(ok, lc, np.nan))) if ok.any() else None
        text = f"{pct(float(c.shares[1]))} of the parameters do 90% of the learning, {pct(float(c.shares[0]))} do half"
        if most is not None:
            text += f"; most concentrated layer {names[most]} ({pct(float(lc[most]))} of it do 90%)"
        return text

    return (
        "Parameters ranked by their net LCA over the window, most helpful first: how much of the learning (the "
        "summed net LCA of the parameters that helped overall) the top x% do, for the whole network (black) "
        "and within each layer (colour = depth). The further a curve bows above the diagonal, the fewer "
        "parameters do the learning. This run: " + by_set(r.sets, run) + "."
    )


def heatmaps_caption(r: ReportData) -> str:
    """Caption of the neuron x iteration maps; for the output layer, the classes that helped most and least."""

    def run(d: SetData) -> str:
        parts = []
        for g, m in zip(r.groups, d.maps, strict=False):
            if g != r.output_group or m.order is None:
                continue
            per_unit = m.matrix.sum(axis=1)
            if m.matrix.shape[0] == m.n_neurons:
                best, worst = int(m.order[int(np.argmin(per_unit))]), int(m.order[int(np.argmax(per_unit))])
                parts.append(
                    f"output class {best} helped most ({fmt(float(per_unit.min()), 3)}), class {worst} least "
                    f"({fmt(float(per_unit.max()), 3)})"
                )
        return "; ".join(parts) or "see the maps"

    return (
        f"The {len(r.main.maps)} layers with the largest total |LCA| (network order), one row per output unit (its "
        "weights and bias together), rows sorted by the unit's net LCA on the first set shown, most helpful at "
        "the top, in the same order in every panel; the output layer's units are its classes. Each cell is the "
        "unit's LCA summed over a bin of consecutive iterations; blue = helped, red = hurt, white = nothing, "
        "on one scale per layer (clipped at the 99th percentile of |cell|) shared by the sets. Vertical stripes "
        "are many units learning on the same iterations (synchronisation), horizontal stripes a few units "
        "doing most of the work, red-blue alternation along a row oscillation. "
        + paper(
            "parameters oscillate between helping and hurting (red-blue alternation along a row).",
            by_set(r.sets, run) + ".",
        )
    )


def input_maps_caption(r: ReportData, image: InputImage) -> str:
    """Caption of the first layer's input maps (``image``: :attr:`ReportData.image`): where its learning came from."""
    c, h, w = image.shape
    pixels, still = input_pixels(r.main, image)
    main = pixels.reshape(-1)
    gains = np.sort(-main[main < 0])[::-1]
    k = max(1, main.size // 10)
    share = float(gains[:k].sum() / gains.sum()) if gains.size else float("nan")
    zero = int((main == 0).sum())
    return (
        f"The first layer ({image.tensor}) read as an image ({h}x{w}"
        + (f", {c} channels summed" if c > 1 else "")
        + ", a layout inferred from its input size): each pixel's LCA summed over all the weights attached to "
        "it, over the window, on one colour scale for all sets. Blue pixels are where the first layer's "
        "learning came from; white ones did nothing (a pixel that is constant over the evaluation set gives its "
        f"weights zero gradient). This run: on set '{r.main.name}', the 10% most helpful pixels carry {pct(share)} "
        f"of the first layer's helpful learning; {zero} of the {h * w} pixels have LCA exactly 0 ({still} whose "
        "weights never moved the loss)."
    )


def trajectories_caption(r: ReportData) -> str:
    """Caption of the single-parameter trajectories: how often the best parameter hurt, how often signs flip."""
    kinds, labels = r.kinds, r.labels

    def run(d: SetData) -> str:
        parts = []
        if "helpful" in kinds:
            j = kinds.index("helpful")
            v = d.traj[:, j]
            parts.append(
                f"the most helpful parameter {labels[j]} hurt on {int((v > 0).sum())} of {len(v)} iterations "
                f"(helped on {int((v < 0).sum())})"
            )
        flips, hurts = random_sign_changes(d.traj, kinds)
        if flips:
            parts.append(
                f"the random parameters hurt on {pct(float(np.median(hurts)), 0)} of their nonzero iterations "
                "(median) and their sign flips between consecutive nonzero iterations "
                f"{pct(float(np.median(flips)), 0)} of the time (median; 50% would be coin flips, more is "
                f"oscillation) — {oscillation_verdict(flips, d.name).verdict}"
            )
        return "; ".join(parts) or "no parameter moved"

    return (
        "Running totals of LCA of single parameters, named tensor[index] in full: the 5 with the most negative "
        "total, the 5 with the most positive and 5 random ones that moved, each kind on its own scale (they "
        "differ by orders of magnitude), the same parameters on every set. Bottom: the per-iteration LCA of the "
        "most helpful and of a random parameter, blue when it helped and red when it hurt. "
        + paper(
            f"{PAPER_OSCILLATION} (phase lag of momentum suggested as the cause). Rule: {OSCILLATION_RULE}.",
            by_set(r.sets, run) + ".",
        )
    )


def sync_caption(r: ReportData) -> str:
    """Caption of the synchronisation test: the peak rule, the baselines (whole run, windowed), each set's result."""

    def run(d: SetData) -> str:
        s, c = d.sync.shift, d.sync.controlled_shift
        if not s.tested:
            return s.reason
        act = d.sync.active
        text = f"shifts over the whole run: {sync_window_text(s)}; step-size controlled: {sync_window_text(c)}"
        if act is not None:
            text += f"; 95% of the peaks lie in {pct((act.span[1] - act.span[0]) / max(d.sel.n, 1))} of the window"
            text += (
                f"; shifts within {steps_text(d, act.span)} (95% of the peaks): "
                f"{sync_window_text(act.raw)}, step-size controlled {sync_window_text(act.controlled)}"
            )
        f = set_findings(r, d)[-1]
        rests = f.summary.rsplit("; ", 1)[-1] if "peaking together" in f.summary else ""
        return text + (f"; {rests}" if rests else "") + f" — {f.verdict}"

    return (
        "Top: each layer's learning on each iteration (−LCA of the layer: up = the layer lowered the loss), "
        f"scaled to its own 99th percentile, with its peaks: {r.main.sync.rule}. Layers with fewer than 3 peaks "
        "are left out of the test (grey marks), and with fewer than 3 layers left there is no test: the "
        "statistic could then take only a few values. Bottom: the statistic, the mean over layer pairs of the "
        "overlap of their peak sets (Jaccard index allowing ±1 iteration), against two baselines. Circular "
        "shifts move each layer's peak train by its own random offset (keeping each layer's peak count and "
        "spacing): they test alignment beyond chance, but not beyond the one driver all layers share, the "
        "optimizer's step, which makes every layer learn much on the same large-step iterations. The "
        "step-size-controlled test removes that: each layer's learning minus its least-squares fit on the "
        "summed learning of all other layers on the same iteration, then the same peaks and shifts. Where the "
        "peaks cluster in part of the run, shifts over the whole run put them on quiet iterations and make any "
        "coincidence look significant: the verdict uses shifts within the window holding 95% of the peaks, "
        "and the table below repeats both tests within each third of the run. Effect = (observed − baseline "
        "mean) / baseline sd. p at its floor is shown as p < 1/(1 + shuffles). "
        + paper(f"{PAPER_SYNC}. Rule: {SYNC_RULE}.", by_set(r.sets, run) + ".")
    )
