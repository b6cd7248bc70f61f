"""The page's findings sections (1-3, the freeze experiments) and the list of where the runs disagree with the paper.

Every verdict here is a :class:`~lca_cli.analysis.verdicts.Finding` computed by ``lca_cli.analysis.verdicts``'
rules (the rule is printed beside it); every sentence that states a fact about the data is computed from the
numbers (:class:`~lca_cli.analysis.verdicts.Fact`). Nothing here decides a verdict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lca_cli.analysis.floor import RESOLUTION_RULE
from lca_cli.analysis.sync import SyncResult
from lca_cli.analysis.verdicts import (
    ERROR_RULE,
    HELPED_SHARE_RULE,
    PAPER_HELPED_SHARE,
    PAPER_PER_PARAMETER,
    PER_PARAMETER_RULE,
    SYNC_RULE,
    TRANSIENT_MAX,
    TRANSIENT_SHARE,
    Finding,
)

from .checks import FEW_COINCIDENCES, FLOORS, seed_spread
from .findings import SYNC_SEED, Findings
from .fmt import f, mean_sd, pct, peak_counts, verdict_word


def figure_lines(found: Findings, name: str, alt: str, caption: str) -> list[str]:
    """A figure with its number and caption (``Figure N.`` matches ``figures/figN_NAME.png``); none if not drawn."""
    if name not in found.figures:
        return []
    n = found.figure_numbers.get(name)
    label = f"Figure {n}. " if n is not None else ""
    return [f"\n![{alt}]({found.figures[name]})\n", f"*{label}{caption}*\n"]


def _cell(x: Finding) -> str:
    """A table cell: the measured mean and the verdict."""
    return f"{pct(x.measured.get('mean', float('nan')))} {verdict_word(x.verdict)}"


def noise_section(found: Findings) -> list[str]:
    """Finding 1: both helped claims under each convention, with the noise floor and the seeds."""
    noise, checks = found.noise, found.noise_checks
    lines: list[str] = []
    w = lines.append
    w("## 1. Noise: about half of the parameters help on each iteration\n")
    w(
        f"**Paper:** (a) {PAPER_HELPED_SHARE}; (b) {PAPER_PER_PARAMETER}. The authors count shares of *all* "
        "parameters, so exact zeros (parameters whose LCA is exactly 0) are a third group.\n"
    )
    w(
        f"**Rules.** (a) {HELPED_SHARE_RULE}. (b) {PER_PARAMETER_RULE}. Both are computed under each convention: "
        "*all entries* (helped / all parameters, the authors'), *nonzero entries* (helped / (helped + hurt)), and "
        "*above a floor X* (|LCA| ≤ X counted as zero, `lca summarize --min-abs X`). *Below resolution*: "
        f"{RESOLUTION_RULE}.\n"
    )
    w(
        "| run | iterations | params | (a) all entries | (a) nonzero entries | "
        + " | ".join(f"(a) floor {x:g}" for x in FLOORS)
        + " | entries below resolution | (b) per parameter: mean (share in 40-60%) |"
    )
    w("|---|---|---|---|---|" + "---|" * len(FLOORS) + "---|---|")
    for k, nz in noise.items():
        c = checks[k]
        pp = c["per_param"]
        w(
            f"| {k} | {nz['iterations']} | {nz['params']:,} | {_cell(c['all'])} | {_cell(c['nonzero'])} | "
            + " | ".join(_cell(c["floor"][x]) for x in FLOORS)
            + f" | {pct(c['tiny_share'])} | {pct(pp.measured.get('mean', float('nan')))} "
            f"({pct(pp.measured.get('in_40_60', float('nan')))}) {verdict_word(pp.verdict)} |"
        )
    w(
        "\nMore of each run (shares of all parameters, means over iterations; *± sd* is over iterations here, not "
        "seeds):\n"
    )
    w(
        "| run | helped / zero / hurt | zeros excluded: mean ± sd over iterations (min-max) | params never nonzero "
        "(where) | concentration 50% / 90% |"
    )
    w("|---|---|---|---|---|")
    for k, nz in noise.items():
        where = ", ".join(f"{n} {c:,}" for n, c in nz["zero_layers"]) or "-"
        w(
            f"| {k} | {pct(nz['helped_share'])} / {pct(nz['zero_share'])} / {pct(nz['hurt_share'])} | "
            f"{pct(nz['iter_mean'])} ± {pct(nz['iter_sd'])} ({pct(nz['iter_min'])}-{pct(nz['iter_max'])}) | "
            f"{nz['never_moved']:,} ({where}) | {pct(nz['conc50'])} / {pct(nz['conc90'])} |"
        )
    lines += seeds_noise_lines(found)
    lines += figure_lines(
        found, "helped_fraction", "helped, zero and hurt shares per iteration",
        "Helped (blue), exactly zero (grey) and hurt (red) as shares of all parameters on each iteration "
        "(log-scale iterations), and the helped fraction with zeros excluded (dashed); one panel per run of the "
        "table above.",
    )  # fmt: skip
    w("\n**What the rules say.**\n")
    for k in noise:
        c = checks[k]
        w(
            f"- `{k}`: (a) {c['all'].text()}; nonzero entries: {c['nonzero'].verdict}; above 1e-12: "
            f"{c['floor'][FLOORS[0]].verdict}; above 1e-10: {c['floor'][FLOORS[-1]].verdict}. (b) "
            f"{c['per_param'].text()}. {c['halves'].text[0].upper()}{c['halves'].text[1:]}."
        )
    w("")
    return lines


def seeds_noise_lines(found: Findings) -> list[str]:
    """Finding 1 over the seeds of the FC MNIST net: mean ± sd (n) per statistic and the pooled verdicts."""
    sd = found.seeds
    if not sd:
        return []
    sp, nzs = sd["noise"]["spread"], sd["noise"]
    lines = [
        f"\n**Seeds** ({', '.join(f'`{k}`' for k in sd['keys'])}: the FC MNIST net, each seed its own initial "
        "weights and minibatch order). Mean ± sd over seeds (ddof 1), n seeds:\n",
        "| statistic | mean ± sd (n) | verdict, all seeds' iterations pooled |",
        "|---|---|---|",
        f"| (a) helped share, all entries | {sp['all'].text()} | {verdict_word(nzs['all'].verdict)} |",
        f"| (a) helped share, nonzero entries | {sp['nonzero'].text()} | {verdict_word(nzs['nonzero'].verdict)} |",
    ]
    for x in FLOORS:
        lines.append(
            f"| (a) helped share, floor {x:g} | {sp[f'floor {x:g}'].text()} | {verdict_word(nzs['floor'][x].verdict)} |"
        )
    per = [found.noise_checks[k]["per_param"].verdict for k in sd["keys"]]
    lines += [
        f"| (b) per-parameter helped fraction, mean | {sp['per_param'].text()} | "
        f"{', '.join(verdict_word(v) for v in per)} (per seed) |",
        f"| entries below resolution | {sp['tiny'].text()} | - |",
        "",
    ]
    return lines


def _layer_rows(found: Findings, k: str) -> list[str]:
    """One run's layer table: totals and verdicts whole / without the transient / per phase, and cancellation."""
    lay, lc = found.layers[k], found.layer_checks[k]
    rb = lc["robust"]
    labels = [lab for lab in rb.windows if lab != "whole"]
    rows = [
        "| layer | params | total LCA | error | verdict, whole run | "
        + " | ".join(f"{lab} ({rb.windows[lab][0]}-{rb.windows[lab][1] - 1})" for lab in labels)
        + " | hurt on % of iterations | Σpos / abs(Σneg) | share of ΔL | 50% / 90% at step |",
        "|---|---|---|---|---|" + "---|" * len(labels) + "---|---|---|---|",
    ]
    pn = lc["pos_over_neg"]
    for i, (name, size, tot) in enumerate(zip(lay["names"], lay["sizes"], lay["totals"], strict=True)):
        v = rb.verdicts["whole"][i]
        mark = f"**{v}**" if v == "hurts" else v
        share = tot / lay["delta"] if lay["delta"] else float("nan")
        ms = "-" if lay["step50"][i] is None else f"{lay['step50'][i]} / {lay['step90'][i]}"
        rows.append(
            f"| {name} | {size:,} | {f(float(tot), 4)} | {f(float(lc['errors'][i]), 2)} | {mark} | "
            + " | ".join(rb.verdicts[lab][i] for lab in labels)
            + f" | {pct(float(lc['hurt_iters'][i]))} | {f(float(pn[i]), 3) if pn is not None else 'n/a'} | "
            f"{pct(share)} | {ms} |"
        )
    return rows


def layers_section(found: Findings) -> list[str]:
    """Finding 2: per-layer tables with the transient check and per-phase verdicts, and the ResNet verdict."""
    runs, layers = found.runs, found.layers
    lines: list[str] = []
    w = lines.append
    w("## 2. Some layers hurt overall\n")
    w(
        "**Paper:** summed over training, entire layers can have positive LCA (they increase the loss): in "
        "ResNet-20 on CIFAR-10 the first and the last layer hurt (the paper says so of its ResNets, not of the FC "
        "net or LeNet). The authors also froze the last layer at its initial values to study this.\n"
    )
    w(
        "A layer *helps* or *hurts* over a window only when |its total| exceeds its own error estimate over that "
        f"window; smaller totals are *within error*. *Error*: {ERROR_RULE}. **Transient check**: the first k "
        f"iterations are the starting transient when each alone holds more than {pct(TRANSIENT_SHARE)} of the "
        f"|loss change| from it on (k at most {pct(TRANSIENT_MAX)} of the iterations; computed per run), and the "
        "verdicts are repeated without them and in the early / middle / late third of the run. *Hurt on % of "
        "iterations*: the layer's net LCA was positive on that share of the iterations. *Σpos / abs(Σneg)*: what "
        "the layer's entries hurt over what they helped, summed over the run (1 = full cancellation).\n"
    )
    for k, lay in layers.items():
        if k not in found.noise and k != "resnet20_standin":
            continue
        lc = found.layer_checks[k]
        ratio = lc["abs_over_dl"]
        w(
            f"**{runs[k].exp.title}** (ΔL = {f(lay['delta'])}; Σ LCA over layers = {f(float(lay['totals'].sum()))}; "
            f"integration error {f(lay['error'])}; transient k = {lc['robust'].transient}"
            + (
                f"; Σ|LCA| / abs(ΔL) per iteration: median {f(ratio[0])}, range {f(ratio[1])}-{f(ratio[2])}"
                if ratio
                else ""
            )
            + ")\n"
        )
        lines += _layer_rows(found, k)
        flips = lc["robust"].sentences()
        w(
            "\n"
            + (
                "Verdicts that flip between windows: " + "; ".join(flips) + "."
                if flips
                else "No layer's verdict flips between the windows."
            )
            + "\n"
        )
    lines += figure_lines(
        found, "cumulative_layer_lca", "cumulative LCA per layer",
        "Cumulative LCA per layer from 0 at the first checkpoint; colour = depth (dark = input side), the same "
        "meaning in every panel; with many layers only the first, the last and the largest are coloured and named.",
    )  # fmt: skip
    lines += figure_lines(
        found, "layer_totals", "per-layer totals with the integration error",
        "Per-layer totals over the whole run of the net with most layers, with each layer's own error estimate "
        "(the rule above) as error bars; grey italic names are within it.",
    )  # fmt: skip
    lines += resnet_paragraph(found)
    return lines


def resnet_paragraph(found: Findings) -> list[str]:
    """Finding 2's verdict on the ResNet stand-in, whole run and without the transient, and the other nets."""
    lc = found.layer_checks.get("resnet20_standin")
    if lc is None:
        return []
    whole, late = lc["first_last"], lc["first_last_late"]
    hurting = {
        q: [n for n, v in zip(found.layers[q]["names"], c["robust"].verdicts["whole"], strict=True) if v == "hurts"]
        for q, c in found.layer_checks.items()
        if q != "resnet20_standin"
    }
    others = ", ".join(f"{q}: {', '.join(names)}" for q, names in hurting.items() if names)
    text = (
        f"\n**ResNet-20 stand-in, first and last layer** ({whole.rule}): whole run {whole.text()}"
        + (f"; {late.convention.split(', ')[-1]}: {late.text()}" if late is not None else "; no starting transient")
        + "."
    )
    if late is not None and late.verdict != whole.verdict:
        text += " **The verdict flips once the transient is left out**: the whole-run total rests on it."
    text += f" Other runs with a layer hurting beyond the error over the whole run: {others or 'none'}.\n"
    return [text]


def freeze_section(found: Findings, fz: dict[str, Any], which: str, fig: str) -> list[str]:
    """A freeze-the-last-layer experiment (normal vs last layer frozen at initialisation); empty without it.

    Args:
        found: The findings.
        fz: :func:`~paper.findings.freeze_finding` of the experiment.
        which: ``FC MNIST`` or ``ResNet-20 stand-in``.
        fig: The figure's name.

    """
    if not fz:
        return []
    lines: list[str] = []
    w = lines.append
    seeds, base_key = fz["seeds"], fz["keys"][0][1]
    w(f"### Freezing the last layer (`{fz['last']}`) of the {which} at initialisation, {len(seeds)} seed(s)\n")
    w(
        f"Same net, data and settings as `{base_key}`; each seed sets both the initial weights and the minibatch "
        f"order, and `{fz['last']}` is frozen from iteration 0 (`{fz['config']}`). Its checkpoints are bitwise "
        f"identical, so its LCA is exactly 0: max |LCA| over its parameters, all seeds = {fz['max_abs_frozen']:g}.\n"
    )
    w("| seed | final train loss, normal | final train loss, frozen | frozen − normal |")
    w("|---|---|---|---|")
    for s, bl, fl in zip(seeds, fz["base_loss"], fz["frozen_loss"], strict=True):
        w(f"| {s} | {f(bl, 4)} | {f(fl, 4)} | {'+' if fl >= bl else ''}{f(fl - bl, 4)} |")
    diff = fz["frozen_loss"] - fz["base_loss"]
    w(f"| **mean ± sd** | {mean_sd(fz['base_loss'])} | {mean_sd(fz['frozen_loss'])} | {mean_sd(diff)} |\n")
    w("| layer | total LCA, normal (mean ± sd) | total LCA, last layer frozen (mean ± sd) |")
    w("|---|---|---|")
    for j, name in enumerate(fz["names"]):
        w(f"| {name} | {mean_sd(fz['base_totals'][:, j])} | {mean_sd(fz['frozen_totals'][:, j])} |")
    lc = found.layer_checks[base_key]
    premise = {lab: v[-1] for lab, v in lc["robust"].verdicts.items()}
    consistent = len(diff) > 1 and bool(np.all(diff > 0) or np.all(diff < 0))
    sd = f" ± {f(float(diff.std(ddof=1)), 4)} (sd over {len(seeds)} seeds)" if len(seeds) > 1 else " (one seed)"
    w(
        f"\nWith the last layer frozen the final training loss is {'higher' if diff.mean() > 0 else 'lower'} by "
        f"{f(abs(float(diff.mean())), 4)}{sd}"
        + (", the same sign on every seed" if consistent else "")
        + f". **Premise** (the paper froze a last layer that hurts): in `{base_key}` `{fz['last']}` "
        + ", ".join(f"{lab}: {v}" for lab, v in premise.items())
        + (
            "; it hurts in the whole run, the paper's situation."
            if premise["whole"] == "hurts"
            else "; it hurts only in some windows, so the whole run is not the paper's situation."
            if "hurts" in premise.values()
            else "; it never hurts here, so this is not the paper's situation: freezing a layer that helps removes "
            "its own contribution, and the table shows how much of it the other layers take over."
        )
    )
    for label, fact in fz["overfit"].items():
        lines[-1] += f" Held-out `val` set, {label} run (seed {seeds[0]}): {fact.text}."
    w("")
    lines += figure_lines(
        found, fig, f"freezing the last layer of the {which}",
        f"{which}: final training loss per seed, normal vs `{fz['last']}` frozen at initialisation (left), and "
        f"per-layer total LCA, mean ± sd over {len(seeds)} seed(s) (right; no bar for one seed).",
    )  # fmt: skip
    return lines


def _sync_cells(x: SyncResult) -> str:
    """``observed vs baseline ± sd (effect) | p | passes`` of one test."""
    if not x.tested:
        return "no test | - | no"
    eff = x.effect_size
    return (
        f"{f(x.observed)} vs {f(x.baseline_mean)} ± {f(x.baseline_sd)} "
        f"({'n/a' if not np.isfinite(eff) else f'{eff:.1f}'} sd) | {x.p_text().removeprefix('p = ')} | "
        f"{'**yes**' if x.passes else 'no'}"
    )


def sync_section(found: Findings) -> list[str]:
    """Finding 3: both tests over the whole run, within the active window and per third, with the verdicts."""
    sync = found.sync
    lines: list[str] = []
    w = lines.append
    w("## 3. Learning is synchronised across layers\n")
    w("**Paper:** per-layer learning (−LCA of each layer per iteration) often peaks on the same iterations.\n")
    any_sync = next(iter(sync.values()))["analysis"] if sync else None
    w(
        "**Statistic** (`lca_cli.analysis.sync.sync_analysis`, what `lca report` shows): peaks are "
        + (any_sync.rule if any_sync is not None else "")
        + ". For each pair of layers a tolerant Jaccard index; the statistic is its mean over layer pairs. "
        f"**Baselines**: each layer's peak train shifted circularly by an independent random offset (seed "
        f"{SYNC_SEED}), (1) over the whole run, (2) only within the *active window*, the shortest window holding "
        "95% of the peaks, and (3) within each third of the run: peaks cluster early, and shifts over the whole "
        "run move them onto quiet iterations where they rarely meet, so (1) overstates the effect. *Step-size "
        "controlled*: the same test on each layer's learning minus its least-squares fit on the other layers' "
        "summed learning (the shared step size removed). *Effect*: (observed − baseline mean) / baseline sd. "
        f"**Rule**: {SYNC_RULE}.\n"
    )
    w("| run | window (iterations) | raw: observed vs baseline ± sd (effect) | p | passes | step-size controlled: "
      "observed vs baseline ± sd (effect) | p | passes | iterations where ≥ 2 layers peak |")  # fmt: skip
    w("|---|---|---|---|---|---|---|---|---|")
    for k, s in sync.items():
        sa, sc = s["analysis"], found.sync_checks[k]
        pk = peak_counts([len(p) for p in sa.peaks])
        w(f"| {k} | whole run (0-{s['n'] - 1}; peaks per layer {pk}) | {_sync_cells(sa.shift)} | "
          f"{_sync_cells(sa.controlled_shift)} | {s['multi']} |")  # fmt: skip
        for win in sa.windows:
            a, b = win.span
            w(f"| | {win.label} ({a}-{b - 1}) | {_sync_cells(win.raw)} | {_sync_cells(win.controlled)} | "
              f"{sc['coincide'].get(win.label, 0)} |")  # fmt: skip
    lines += figure_lines(
        found, "layer_learning_peaks", "per-layer learning and peaks",
        "Each layer's learning (left) and its step-size-controlled part (right) in the first iterations of the FC "
        "MNIST run, scaled per layer, with their peaks (triangles).",
    )  # fmt: skip
    w("\n**What the rule says** (active window):\n")
    for k in sync:
        sc = found.sync_checks[k]
        caveat = (
            f" **Caveat:** it rests on {sc['coincide'].get('active', 0)} iterations where two or more layers peak "
            f"together (fewer than {FEW_COINCIDENCES}): a few coincidences more or less change it."
            if sc["fragile"]
            else ""
        )
        w(f"- `{k}`: {sc['verdict'].text()}.{caveat}")
    sd = found.seeds
    if sd:
        vs = [sd["sync"][k]["verdict"].verdict for k in sd["keys"]]
        act = [sd["sync"][k]["active"] for k in sd["keys"]]
        spread = {
            what: seed_spread([getattr(getattr(a, test), attr) for a in act if a is not None])
            for what, test, attr in (
                ("observed", "raw", "observed"), ("baseline", "raw", "baseline_mean"), ("effect", "raw", "effect_size"),
                ("controlled effect", "controlled", "effect_size"),
            )
        }  # fmt: skip
        w(
            f"- Seeds of the FC MNIST net ({', '.join(sd['keys'])}): "
            + ", ".join(f"{k} {v}" for k, v in zip(sd["keys"], vs, strict=True))
            + f" ({vs.count('agrees')} of {len(vs)} agree). Within each seed's active window, mean ± sd over seeds "
            + "(n): "
            + "; ".join(f"{what} {sp.text(pct=False)}" for what, sp in spread.items())
            + " (effects in baseline sd)."
        )
    w("")
    return lines


def page_verdicts(found: Findings) -> list[tuple[str, str, Finding]]:
    """Every verdict on the page as ``(section, run, finding)``, in page order."""
    rows: list[tuple[str, str, Finding]] = []
    for k, c in found.noise_checks.items():
        if k in found.noise:
            rows += [("1a helped share", k, c["all"]), ("1a helped share", k, c["nonzero"])]
            rows += [("1a helped share", k, c["floor"][x]) for x in FLOORS]
            rows.append(("1b per parameter", k, c["per_param"]))
    if found.seeds:
        nz = found.seeds["noise"]
        label = f"FC MNIST, {len(found.seeds['keys'])} seeds"
        rows += [("1a helped share", label, nz["all"]), ("1a helped share", label, nz["nonzero"])]
    lc = found.layer_checks.get("resnet20_standin")
    if lc is not None:
        rows.append(("2 first and last layer", "resnet20_standin", lc["first_last"]))
        if lc["first_last_late"] is not None:
            rows.append(("2 first and last layer", "resnet20_standin", lc["first_last_late"]))
    for k in found.sync:
        rows.append(("3 synchronisation", k, found.sync_checks[k]["verdict"]))
    if found.seeds:
        rows += [("3 synchronisation", k, found.seeds["sync"][k]["verdict"]) for k in found.seeds["keys"][1:]]
    if found.accuracy is not None and "verdict" in found.accuracy:
        rows.append(("4 method accuracy", "fc_mnist", found.accuracy["verdict"]))
    return rows


def _esc(text: str) -> str:
    """Text for a Markdown table cell: ``|`` escaped (conventions say ``|LCA| ≤ X``)."""
    return text.replace("|", "\\|")


def verdicts_section(found: Findings) -> list[str]:
    """Closing note: every paper finding with the page's verdict and numbers, then where the runs disagree."""
    rows = page_verdicts(found)
    lines = ["## The paper's findings and this page's verdicts\n",
             "Each verdict is computed by the rule written beside the paper's claim in "
             "`lca_cli/analysis/verdicts.py` (the rules are quoted in each section above).\n",
             "| finding | run | verdict | convention | numbers |", "|---|---|---|---|---|"]  # fmt: skip
    for sec, run, x in rows:
        lines.append(
            f"| {sec}: {_esc(x.claim)} | {run} | {verdict_word(x.verdict)} | {_esc(x.convention)} | {_esc(x.summary)} |"
        )
    bad = [r for r in rows if r[2].verdict in ("partly", "disagrees")]
    untested = [r for r in rows if r[2].verdict not in ("agrees", "partly", "disagrees")]
    lines.append("\n### Where this disagrees with the paper\n")
    if not bad:
        lines.append("No verdict above is *partly* or *disagrees*.\n")
    rules: dict[str, str] = {}
    for sec, run, x in bad:
        rules.setdefault(sec, x.rule)
        lines.append(f"- **{sec}**, `{run}`, {x.convention}: {verdict_word(x.verdict)}: {x.summary}.")
    if rules:
        lines.append("\nRules: " + " ".join(f"*{sec}*: {rule}." for sec, rule in rules.items()) + "\n")
    if untested:
        lines.append(
            "Not tested (no verdict either way): "
            + "; ".join(f"{sec}, `{run}`: {x.summary}" for sec, run, x in untested)
            + ".\n"
        )
    return lines
