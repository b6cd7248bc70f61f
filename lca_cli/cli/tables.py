"""Plain-text tables of ``lca summarize``: every number whole, within the terminal's width (80 when piped).

Column widths come from the content (numbers are never cut: a cut number such as ``-0.0…`` is worse than none),
and the formats are chosen so that the iteration table fits 80 columns (steps up to 6 digits). Names that would
make a layer, tensor or neuron table wider than the terminal (a transformer's
``bert.encoder.layer.11.attention.output.LayerNorm``) are shortened in the middle (``b.e.l.11.a.o.LayerNorm``;
see :func:`shorten_middle`), distinct; ``--format json`` and ``csv`` carry them whole. Several stored columns are
shown merged here (helped / zero / hurt shares as one ``71/ 4/25`` column, the 50% / 90% milestones as
``18/41``); ``--format json`` and ``csv`` carry them separately, with full precision.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from typing import Any

from lca_cli.analysis.groups import GroupSummary
from lca_cli.analysis.reduce import Summary
from lca_cli.reporting.text import pct

__all__ = ["render_summary"]

#: The narrowest a shortened name gets: below this the table is allowed to be wider than the terminal.
MIN_NAME_WIDTH = 12

#: Short forms of the significance verdicts of :func:`lca_cli.analysis.series.significance`.
_VERDICT = {"helps": "helps", "hurts": "hurts", "within error": "≈0"}


def _g(digits: int) -> Callable[[Any], str]:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        x = float(v)  # a number whenever not None
        if x == 0:
            return "0"
        return f"{x:.{digits}g}"

    return fmt


def _pct(v: Any) -> str:
    # The report's percentages: a nonzero share never reads 0.0% (a share below 0.05% gets a significant digit).
    return "-" if v is None else pct(float(v))


def _shares(row: dict[str, Any]) -> str:
    vals: list[Any] = [row.get(k) for k in ("helped_share", "zero_share", "hurt_share")]
    if any(v is None for v in vals):
        return "-"
    return "/".join(f"{round(100 * float(v)):2d}" for v in vals)


def _pair(a: Any, b: Any, fmt: Callable[[Any], str]) -> str:
    if a is None and b is None:
        return "-"
    return f"{fmt(a)}/{fmt(b)}"


def _int(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def _abbreviated(name: str, width: int) -> str:
    """``name`` with its dotted parts cut to their first letter from the middle outwards until it fits.

    The last part (``weight``, ``LayerNorm``) and numbers (``layer.11``) stay whole: they tell rows apart.
    """
    parts = name.split(".")
    middle = (len(parts) - 1) / 2
    for i in sorted(range(len(parts) - 1), key=lambda i: (abs(i - middle), i)):
        if len(".".join(parts)) <= width:
            break
        if not parts[i].isdigit():
            parts[i] = parts[i][:1]
    return ".".join(parts)


def shorten_middle(names: Sequence[str], width: int) -> list[str]:
    """Names shortened in the middle to at most ``width`` characters, still distinct where possible.

    First the dotted parts in the middle are cut to their first letter
    (``bert.encoder.layer.11.attention.output.LayerNorm`` -> ``b.e.l.11.a.o.LayerNorm``); what is still too long
    loses characters in the middle (``head…tail``), at a cut moved outwards from the middle until no two
    different names read the same.

    Args:
        names: The names.
        width: The widest a name may be (at least 3).

    Returns:
        The names, those longer than ``width`` shortened.

    """
    if all(len(n) <= width for n in names):
        return list(names)
    distinct = len(set(names))
    parts = [n if len(n) <= width else _abbreviated(n, width) for n in names]
    if len(set(parts)) < distinct:  # two names met: cut characters from the names themselves instead
        parts = list(names)
    keep = max(width, 3) - 1  # characters kept around the ellipsis

    def cut(head: int) -> list[str]:
        return [n if len(n) <= width else f"{n[:head]}…{n[len(n) - (keep - head) :]}" for n in parts]

    for head in sorted(range(1, keep), key=lambda h: (abs(h - keep // 2), h)):
        shortened = cut(head)
        if len(set(shortened)) == distinct:
            return shortened
    return cut(keep // 2)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[bool]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if lf else c.rjust(w) for c, w, lf in zip(cells, widths, left, strict=True)]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _header_lines(h: dict[str, Any]) -> list[str]:
    first = "-" if h["first_step"] is None else h["first_step"]
    last = "-" if h["last_step"] is None else h["last_step"]
    lines = [
        str(h["store"]),
        f"set {h['set']} · steps {first}..{last} · {h['iterations']} of {h['iterations_total']} iterations · "
        f"{h['parameters']:,} parameters",
        f"ΔL {h['delta_loss']:.6g} · Σ LCA {h['sum_lca']:.6g}"
        + (f" · buffers {h['buffer_lca']:.3g}" if h["buffer_lca"] else "")
        + f" · max |residual| {h['max_abs_residual']:.3g} · flagged pairs {h['flagged']}",
    ]
    if h.get("helped_share_mean") is not None:
        lines.append(
            f"per iteration, of all parameters: helped {_pct(h['helped_share_mean'])} · zero "
            f"{_pct(h['zero_share_mean'])} · hurt {_pct(h['hurt_share_mean'])}"
        )
    if h["helped_fraction_mean"] is not None:
        excluded = "exact zeros" if h.get("min_abs") is None else f"|lca| <= {h['min_abs']:g}"
        lines.append(
            f"helped fraction, {excluded} excluded: {h['helped_fraction_mean']:.3f} ± {h['helped_fraction_sd']:.3f}"
        )
    if h.get("columns", h["parameters"]) != h["parameters"]:  # --granularity / --params
        lines.append(
            f"lca stored per {h['granularity']}: {h['columns']:,} columns (--by neuron works at that resolution; "
            "--by layer, tensor and iteration are exact)"
        )
    lines += _floor_lines(h)
    if h.get("tied"):
        ties = ", ".join(f"{alias} = {owner}" for alias, owner in h["tied"].items())
        lines.append(f"tied parameters (one tensor, its LCA listed under the second name): {ties}")
    return lines


def _floor_lines(h: dict[str, Any]) -> list[str]:
    """The noise floor and the share of entries below float resolution, when ``--min-abs`` was given."""
    if h.get("min_abs") is None:
        return []
    share = h.get("below_resolution_share")
    if isinstance(share, dict):  # a group: mean ± sd over its stores
        share = share.get("mean")
    return [
        f"noise floor --min-abs {h['min_abs']:g}: |lca| <= {h['min_abs']:g} counts as zero in helped / hurt "
        "(totals unchanged)",
        f"below {h['dtype']} resolution (0 < |lca| <= eps x the iteration's largest |lca|, eps {h['eps']:.3g}): "
        f"{_pct(share)} of entries",
    ]


def _fit_names(rows: list[list[str]], headers: Sequence[str], width: int) -> bool:
    """Shorten the first column (names) in place so that the table fits ``width``; True if any was shortened."""
    if not rows:
        return False
    others = sum(max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(headers) if i)
    room = max(width - others, MIN_NAME_WIDTH, len(headers[0]))
    names = [r[0] for r in rows]
    short = shorten_middle(names, room)
    for r, name in zip(rows, short, strict=True):
        r[0] = name
    return short != names


def _group_table(summary: Summary, width: int) -> list[str]:
    cols = set(summary.columns)
    g4 = _g(4)
    headers = ["name", "params", "lca", "share", "sig.", "h/0/h %", "help≠0"]
    left = [True, False, False, False, True, False, False]
    milestones = "step_50" in cols
    conc = "params_50" in cols
    if milestones:
        headers.append("50/90% at")
        left.append(False)
    if conc:
        headers.append("conc.%")
        left.append(False)
    tiny = "below_resolution_share" in cols
    if tiny:
        headers.append("<res %")
        left.append(False)
    rows = []
    for r in summary.rows:
        cells = [
            str(r["name"]),
            _int(r["parameters"]),
            g4(r["lca"]),
            _pct(r["share"]),
            _VERDICT.get(str(r.get("significance")), "-"),
            _shares(r),
            "-" if r.get("helped_fraction") is None else f"{r['helped_fraction']:.3f}",
        ]
        if milestones:
            cells.append(_pair(r.get("step_50"), r.get("step_90"), _int))
        if conc:
            cells.append(
                _pair(r.get("params_50"), r.get("params_90"), lambda v: "-" if v is None else f"{100 * v:.0f}")
            )
        if tiny:
            cells.append(_pct(r.get("below_resolution_share")))
        rows.append(cells)
    shortened = _fit_names(rows, headers, width)
    out = _table(headers, rows, left)
    h = summary.header
    out.append(f"sig.: helps/hurts if |lca| > integration error Σ|residual| {h['integration_error']:.3g}, else ≈0")
    # A neuron store counts its columns (neurons) where it reads lca (--by neuron, --concentration); the per-tensor
    # counts behind --by layer and tensor were taken from every parameter when the rows were computed.
    neurons = h.get("granularity") == "neuron"
    counted = "neurons" if neurons and h.get("by") == "neuron" else "parameters"
    zeros = "no zeros" if h.get("min_abs") is None else f"|lca| <= {h['min_abs']:g} excluded"
    out.append(f"h/0/h %: helped / zero / hurt, % of {counted} x iterations; help≠0: {zeros}")
    if milestones:
        out.append("50/90% at: step by which the group had done 50% / 90% of its net learning")
    if conc:
        units = "neurons" if neurons else "parameters"
        out.append(f"conc.%: fewest {units} (% of the group's) doing 50% / 90% of its learning")
    if tiny:
        out.append("<res %: entries below float resolution, % of parameters x iterations")
    if shortened:
        out.append("names shortened in the middle to fit; --format csv or json gives them whole")
    return out


def _series_table(summary: Summary) -> list[str]:
    by = summary.by
    g4 = _g(4)
    rows = [[str(r["step"]), str(r[by]), g4(r["lca"]), g4(r["neg"]), g4(r["pos"])] for r in summary.rows]
    out = _table(["step", by, "lca", "Σneg", "Σpos"], rows, [False, True, False, False, False])
    out.append(f"one row per iteration (start step) and {by}; Σneg / Σpos: sums of its negative / positive entries")
    return out


def _ms(s: dict[str, Any] | None, fmt: Callable[[Any], str]) -> str:
    """``mean ± sd`` (``mean`` alone when there is no sd) of a ``{"mean", "sd", "n"}`` statistic."""
    if not s or s.get("mean") is None:
        return "-"
    return fmt(s["mean"]) if s.get("sd") is None else f"{fmt(s['mean'])} ± {fmt(s['sd'])}"


def _group_lines(summary: GroupSummary, width: int) -> list[str]:
    h = summary.header
    st = h["stats"]
    g4 = _g(4)
    lines = [
        f"group of {h['n']} stores: {', '.join(str(p) for p in h['stores'])}",
        f"set {h['set']} · steps {h['window']} · {h['parameters']:,} parameters · mean ± sd over the stores "
        f"(sample sd, ddof {h['sd_ddof']})",
        f"ΔL {_ms(st.get('delta_loss'), g4)} · Σ LCA {_ms(st.get('sum_lca'), g4)} · integration error "
        f"{_ms(st.get('integration_error'), _g(2))}",
    ]
    if "helped_share_mean" in st:
        lines.append(
            f"per iteration, of all parameters: helped {_ms(st['helped_share_mean'], _pct)} · hurt "
            f"{_ms(st['hurt_share_mean'], _pct)}"
        )
    lines += _floor_lines({**h, "below_resolution_share": st.get("below_resolution_share")})
    lines.append("")
    stat = "lca" if summary.by != "iteration" else "delta_loss"
    headers = ["name", "n", f"{stat} mean ± sd", "helped % ± sd", "help≠0 ± sd"]
    verdicts = "significance_helps" in summary.columns
    if verdicts:
        headers.append("helps/hurts/≈0")
    rows = []
    for r in summary.rows:
        cells = [
            str(r["name"]),
            str(r["n"]),
            _ms({"mean": r.get(f"{stat}_mean"), "sd": r.get(f"{stat}_sd")}, g4),
            _ms({"mean": r.get("helped_share_mean"), "sd": r.get("helped_share_sd")}, _pct),
            _ms({"mean": r.get("helped_fraction_mean"), "sd": r.get("helped_fraction_sd")}, _g(3)),
        ]
        if verdicts:
            cells.append(f"{r['significance_helps']}/{r['significance_hurts']}/{r['significance_within']}")
        rows.append(cells)
    shortened = _fit_names(rows, headers, width)
    lines += _table(headers, rows, [True, *([False] * (len(headers) - 1))])
    lines.append("n: stores; helped %: of parameters x iterations; help≠0: exact zeros excluded")
    if verdicts:
        lines.append("helps/hurts/≈0: stores in which the row helps / hurts / is within its integration error")
    lines.append("--format json or csv: every statistic as <stat>_mean, <stat>_sd, <stat>_n")
    if shortened:
        lines.append("names shortened in the middle to fit; --format csv or json gives them whole")
    return lines


def _iteration_table(summary: Summary) -> list[str]:
    headers = ["step", "ΔL", "Σ LCA", "residual", "n", "flag", "l1 chg", "help≠0", "h/0/h %"]
    left = [False, False, False, False, False, True, False, False, False]
    g4, g2 = _g(4), _g(2)
    rows = [
        [
            str(r["step"]),
            g4(r["delta_loss"]),
            g4(r["lca"]),
            g2(r["residual"]),
            str(r["splits"]),
            "yes" if r["flagged"] else "",
            g2(r["l1_change"]),
            "-" if r["helped_fraction"] is None else f"{r['helped_fraction']:.3f}",
            _shares(r),
        ]
        for r in summary.rows
    ]
    out = _table(headers, rows, left)
    out.append("row: pair step -> next checkpoint · n: sub-intervals · flag: over tol. at cap")
    out.append("h/0/h %: helped / zero / hurt, % of all parameters; help≠0: exact zeros excluded")
    return out


def render_summary(summary: Summary | GroupSummary, width: int | None = None) -> str:
    """The table form of a summary (header lines, the table, a legend), as one string ending in a newline.

    Args:
        summary: A :class:`~lca_cli.analysis.reduce.Summary`, or a group's
            (:class:`~lca_cli.analysis.groups.GroupSummary`: mean ± sd per row).
        width: Columns to fit (long names are shortened in the middle); default the terminal's width, or
            ``COLUMNS``, else 80 (stdout piped or redirected).

    Returns:
        The text.

    """
    width = width or shutil.get_terminal_size((80, 24)).columns
    if isinstance(summary, GroupSummary):
        return "\n".join(_group_lines(summary, width)) + "\n"
    lines = _header_lines(summary.header)
    lines.append("")
    if summary.header.get("series"):
        lines += _series_table(summary)
    elif summary.header.get("by") == "iteration":
        lines += _iteration_table(summary)
    else:
        lines += _group_table(summary, width)
    return "\n".join(lines) + "\n"
