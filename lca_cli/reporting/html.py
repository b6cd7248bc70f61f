"""Page assembly: the self-contained HTML of ``lca report`` and the building blocks the comparison shares.

A page embeds every figure as a base64 PNG (a copy of each is also written beside it) and carries its CSS
inline: no scripts, no fonts, no links out, so it opens anywhere without a network. Text is escaped here, once:
captions and table cells arrive as plain text.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lca_cli import __version__
from lca_cli.analysis.selection import Selection
from lca_cli.errors import UsageError
from lca_cli.reporting.findings import findings_html, steps_text, sync_window_text
from lca_cli.reporting.gather import ReportData, SetData
from lca_cli.reporting.plots import HELPED_COLOR, HURT_COLOR, SCALE, ZERO_COLOR, fmt, png_info
from lca_cli.reporting.text import pct
from lca_cli.store import LcaStore

__all__ = [
    "CSS",
    "ReportResult",
    "View",
    "describe_evaluation",
    "output_folders",
    "report_page",
    "sections",
    "sync_table",
    "table",
]


@dataclass(frozen=True)
class ReportResult:
    """What :func:`~.report.write_report` (or :func:`~.compare.write_comparison`) wrote.

    Attributes:
        html: The HTML page.
        pngs: The figures, in page order (the same images are embedded in the page).
        numbers: Headline numbers (JSON-serialisable): loss change, residuals, helped shares, per-layer
            totals, synchronisation statistics, ..., for the first set shown, and ``per_set`` for all.
        vectors: The vector copies of the figures (``--figures svg|pdf``), in page order; empty for PNG only.

    """

    html: Path
    pngs: list[Path] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    vectors: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class View:
    """One section of a page: a figure, its caption (plain text) and optional extra HTML (a table).

    A view that does not apply to the store has no figure and a note saying why; it keeps its number, so
    that the page's figure numbers stay those of the file names (``11_input_maps.png`` is figure 11).

    Attributes:
        key: The section's id (a view key of ``lca report --view``).
        title: Its heading.
        png: The figure (None when the view does not apply).
        caption: What the figure shows, as plain text (or, without a figure, why there is none).
        extra_html: HTML shown below the figure (already escaped).
        number: The figure's number (0: its place on the page).

    """

    key: str
    title: str
    png: Path | None
    caption: str
    extra_html: str = ""
    number: int = 0


#: The pages' style sheet, inline (no fonts or links out).
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;
  background:#fafafa;line-height:1.45}
main{max-width:980px;margin:0 auto;padding:16px 24px 48px;background:#fff}
h1{font-size:1.5em;margin:.4em 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.sub{color:#666;margin:0 0 1em;word-break:break-all}
table{border-collapse:collapse;font-size:.9em;margin:.4em 0}
td,th{padding:3px 10px;border-bottom:1px solid #eee;vertical-align:top;text-align:left}
th{font-weight:600;color:#444;white-space:nowrap}
td.num{font-variant-numeric:tabular-nums}
figure{margin:.6em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;margin-top:.3em}
blockquote{margin:.5em 0;padding:.4em .8em;border-left:4px solid #2166ac;background:#f3f6fa;font-size:.92em}
.key span{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;margin:0 .3em 0 .8em}
nav ol{columns:2;font-size:.92em}
.warn{color:#b2182b;font-weight:600}
.note{color:#555;font-style:italic}
h3{font-size:1em;margin:1em 0 .2em}
code{font-size:.92em}
"""


def table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table (label, value) of plain-text cells.

    Args:
        rows: ``(label, value)`` pairs.

    Returns:
        The table's HTML.

    """
    body = "".join(f"<tr><th>{html.escape(k)}</th><td class=num>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _data_uri(path: Path) -> str:
    """A PNG file as a ``data:`` URI (the page embeds its figures)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def output_folders(out_html: str | Path, png_dir: str | Path | None) -> tuple[Path, Path]:
    """The page's path and its figures' folder (default ``PAGE_files`` beside it), both folders created.

    Args:
        out_html: The page to write.
        png_dir: The figures' folder, or None for the default.

    Returns:
        ``(page, figures' folder)``.

    Raises:
        UsageError: If the page's path is a directory, or a folder cannot be created (one line naming it).

    """
    out = Path(out_html)
    if out.is_dir():  # checked before any work: the page would fail to be written only after every figure
        raise UsageError(f"--out {out} is a directory; give the page's file name, e.g. --out {out / 'report.html'}")
    pdir = Path(png_dir) if png_dir is not None else out.with_name(f"{out.stem}_files")
    for folder in (out.parent, pdir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create directory {folder}: {exc.strerror or exc}") from None
    return out, pdir


def sections(views: Sequence[View]) -> list[str]:
    """The HTML of the views, numbered in order: heading, figure with its caption, any extra HTML.

    Args:
        views: The sections, in page order.

    Returns:
        HTML fragments, one line each.

    """
    e = html.escape
    parts = []
    for i, v in enumerate(views, 1):
        parts.append(f'<section id="{v.key}"><h2>{v.number or i}. {e(v.title)}</h2>')
        if v.png is None:
            parts.append(f'<p class="note">Not drawn for this store: {e(v.caption)}</p></section>')
            continue
        parts.append(f"<figure>{_img(v.png, v.title)}")
        parts.append(f"<figcaption>{e(v.caption)}</figcaption></figure>")
        if v.extra_html:
            parts.append(v.extra_html)
        parts.append("</section>")
    return parts


def _img(path: Path, alt: str) -> str:
    """An embedded PNG shown at its display size (the file holds ``SCALE`` x as many pixels)."""
    width, height, _, _ = png_info(path)
    return f'<img src="{_data_uri(path)}" alt="{html.escape(alt)}" width="{width // SCALE}" height="{height // SCALE}">'


def sync_table(data: Sequence[SetData]) -> str:
    """The synchronisation tests per set, baseline and window, as a table below its figure.

    Rows: shifts over the whole run (raw and step-size controlled), then shifts within the window holding
    95% of the peaks and within each third of the run, each with its effect size in baseline sd.

    Args:
        data: The sets shown.

    Returns:
        The table's HTML.

    """
    rows: list[tuple[str, str]] = []
    for d in data:
        for label, r, peaks in (
            ("peaks of learning, circular shifts over the whole run", d.sync.shift, d.sync.peaks),
            ("step-size controlled, circular shifts over the whole run", d.sync.controlled_shift,
             d.sync.controlled_peaks),
        ):  # fmt: skip
            key = f"{d.name}: {label}"
            if not r.tested:
                rows.append((key, r.reason))
                continue
            rows.append(
                (
                    key,
                    f"{sync_window_text(r)}, {r.n_shuffles} shuffles, {r.pairs} layer pairs; peaks per layer: "
                    + ", ".join(str(len(p)) for p in peaks),
                )
            )
        for w in d.sync.windows:
            where = "95% of the peaks" if w.label == "active" else f"{w.label} third"
            span = f"{steps_text(d, w.span)} ({where})"
            rows.append((f"{d.name}: shifts within {span}", sync_window_text(w.raw)))
            rows.append((f"{d.name}: step-size controlled, within {span}", sync_window_text(w.controlled)))
    return table(rows)


def describe_evaluation(attrs: dict[str, Any], set_name: str) -> list[tuple[str, str]]:
    """How a store was computed, as table rows: evaluation sets, dtype, integration, model, loss, dates.

    Args:
        attrs: The store's attributes.
        set_name: The set shown first (marked "(shown)").

    Returns:
        ``(label, value)`` rows for what the attributes record.

    """
    rows: list[tuple[str, str]] = []
    ev = attrs.get("evaluation") or {}
    sets = ev.get("sets") or {}
    for s, d in sets.items():
        if isinstance(d, dict):
            desc = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in d.items())
            rows.append((f"evaluation set '{s}'" + (" (shown)" if s == set_name else ""), desc))
    for key in ("bn_mode", "dtype", "accumulation", "dropout"):
        if key in ev:
            rows.append((key.replace("_", " "), str(ev[key])))
    if ev.get("buffers"):
        rows.append(("interpolated buffers", ", ".join(str(b.get("name", b)) for b in ev["buffers"])))
    method = attrs.get("method")
    if method is not None:
        integ = f"{method}; tolerance {attrs.get('tolerance')}, rtol {attrs.get('rtol')}, "
        integ += f"max splits {attrs.get('max_splits')}"
        compute = (attrs.get("identity") or {}).get("compute") or {}
        if compute.get("refine") == "local" and compute.get("l1_tol"):
            integ += f"; local refinement to l1_tol {compute['l1_tol']:g}"
            scale = (attrs.get("l1_scale") or {}).get(set_name)
            if compute.get("l1_scope") == "run" and scale is not None:
                integ += f" of max(row L1 norm, run scale {float(scale):.3g})"
            else:
                integ += " of each row's L1 norm"
        rows.append(("integration", integ))
    cfg = attrs.get("config") or {}
    if isinstance(cfg, dict):
        model = cfg.get("model")
        if isinstance(model, dict) and model.get("factory"):
            kw = model.get("kwargs") or {}
            args = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(kw.items())) if isinstance(kw, dict) else ""
            rows.append(("model", f"{model['factory']}({args})"))
        loss = cfg.get("loss")
        if isinstance(loss, dict):
            rows.append(("loss", str(loss.get("name") or loss.get("factory"))))
    for key in ("device", "created", "updated", "torch_version", "lca_cli_version"):
        if attrs.get(key):
            rows.append((key.replace("_", " "), str(attrs[key])))
    return rows


def _set_table(rows: Sequence[tuple[str, Sequence[str]]], sets: Sequence[str]) -> str:
    """A table with one value column per set (headed by the set's name when there are several)."""
    e = html.escape
    head = "<tr><th></th>" + "".join(f"<th>set {e(s)}</th>" for s in sets) + "</tr>" if len(sets) > 1 else ""
    body = "".join(
        f"<tr><th>{e(k)}</th>" + "".join(f"<td class=num>{e(v)}</td>" for v in vals) + "</tr>" for k, vals in rows
    )
    return f"<table>{head}{body}</table>"


def _window_text(sel: Selection) -> str:
    """The window of start steps as ``[A, B)``, or ``all``."""
    w = sel.window
    if w == (None, None):
        return "all"
    return f"[{'' if w[0] is None else w[0]}, {'' if w[1] is None else w[1]})"


def _resolution_note(store: LcaStore) -> str:
    """What a store's columns hold when they are not every parameter (the figures work on those columns)."""
    cols = store.columns
    if cols.full:
        return ""
    held = {"neuron": "one column per neuron", "tensor": "one column per tensor"}.get(
        cols.granularity, "the columns of some tensors only"
    )
    kept = f" (--params {' '.join(cols.params)}; the rest in one '(other)' column)" if cols.params else ""
    return (
        f"This store holds {held}{kept} (--granularity {cols.granularity}): the figures and numbers below that speak "
        "of parameters (trajectories, how few do most of the learning, how often one helped) are about those "
        "columns; the totals per layer and per tensor are exact."
    )


def _summary_rows(per: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The page's summary table from each set's numbers (:func:`~lca_cli.reporting.numbers.set_numbers`)."""

    def row(label: str, fn: Callable[[dict[str, Any]], str]) -> tuple[str, list[str]]:
        return label, [fn(x) for x in per]

    def flagged(x: dict[str, Any]) -> str:
        if not x["flagged"]:
            return "0"
        shown = ", ".join(str(s) for s in x["flagged_steps"][:12])
        return f"{x['flagged']} (start steps {shown}{', …' if x['flagged'] > 12 else ''})"

    def sync_line(x: dict[str, Any], prefix: str) -> str:
        if not x[f"{prefix}_tested"]:
            return x[f"{prefix}_reason"]
        return (
            f"{fmt(x[prefix + '_observed'], 3)} vs {fmt(x[prefix + '_baseline_mean'], 3)} ± "
            f"{fmt(x[prefix + '_baseline_sd'], 2)} ({x[prefix + '_p_text']}; "
            f"{'passes' if x[prefix + '_passes'] else 'does not pass'})"
        )

    rows = [
        row("iterations counted", lambda x: f"{x['n_iterations']}"
            + (f" ({x['n_not_done_in_window']} in the window not finished)" if x["n_not_done_in_window"] else "")),
        row("steps", lambda x: f"{x['first_step']} → {x['last_step']}"),
        row("ΔL (true loss change)", lambda x: fmt(x["delta_loss"], 6)),
        row("Σ LCA (all parameters)", lambda x: fmt(x["sum_lca"], 6)),
        row("Σ buffer share", lambda x: fmt(x["sum_buffer_lca"], 6)),
        row("integration error Σ|residual| · max |residual|",
            lambda x: f"{fmt(x['integration_error'], 3)} · {fmt(x['max_abs_residual'], 3)}"),
        row("flagged pairs (over tolerance at cap)", flagged),
        row("mean sub-intervals per pair", lambda x: fmt(x["mean_splits"], 3)),
        row("per iteration, of all parameters: helped · zero · hurt",
            lambda x: f"{pct(x['helped_share_mean'])} · {pct(x['zero_share_mean'])} · {pct(x['hurt_share_mean'])}"),
        row("helped fraction, exact zeros excluded", lambda x: pct(x["helped_fraction_mean"])),
        row("parameters doing 50% · 90% of the learning",
            lambda x: f"{pct(x['concentration_50'])} · {pct(x['concentration_90'])}"),
        row("layers hurting beyond their error estimate", lambda x: ", ".join(x["layers_hurting"]) or "none"),
        row("layers with a positive total", lambda x: ", ".join(x["layers_positive"]) or "none"),
        row("synchronisation (circular shifts)", lambda x: sync_line(x, "sync")),
        row("synchronisation (step-size controlled)", lambda x: sync_line(x, "sync_controlled")),
    ]  # fmt: skip
    if per and per[0].get("floor"):  # --min-abs: the helped / hurt counts above are taken above the floor
        at = next((i + 1 for i, r in enumerate(rows) if r[0].startswith("helped fraction")), len(rows))
        rows.insert(at, row("noise floor (--min-abs) · entries below float resolution", lambda x: (
            f"|LCA| <= {x['floor']['min_abs']:g} counts as zero in helped / hurt · "
            f"{100 * x['floor']['below_resolution_share']:.3g}% below {x['floor']['dtype']} resolution "
            "(0 < |LCA| <= eps x the iteration's largest |LCA|)")))  # fmt: skip
    return rows


def report_page(store: LcaStore, report: ReportData, nb: dict[str, Any], views: Sequence[View]) -> str:
    """The HTML of ``lca report``'s page: the summary table, notes, rules, evaluation, then every view.

    Args:
        store: The store.
        report: The report's data.
        nb: The report's numbers (:func:`~lca_cli.reporting.numbers.report_numbers`, with ``seconds``).
        views: The sections, in page order.

    Returns:
        The page.

    """
    e = html.escape
    data = report.sets
    main = report.main
    per = [nb["per_set"][d.name] for d in data]
    sets_note = f" · store sets: {', '.join(store.sets)}" if len(store.sets) > 1 else ""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>LCA report: {e(store.path.name)} ({e(', '.join(d.name for d in data))})</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>Loss Change Allocation report: {e(store.path.name)}</h1>",
        f'<p class="sub">{e(str(store.path))} · sets shown: <b>{e(", ".join(d.name for d in data))}</b>'
        f"{e(sets_note)} · "
        f"window {e(_window_text(main.sel))} · {nb['n_params']:,} parameters · generated by lca {e(__version__)} "
        f"on {e(time.strftime('%Y-%m-%d %H:%M'))} in {e(fmt(nb['seconds'], 3))} s</p>",
        '<p class="key">Colours in every figure:'
        f'<span style="background:{HELPED_COLOR}"></span>helped (LCA &lt; 0, lowered the loss)'
        f'<span style="background:{ZERO_COLOR}"></span>exactly zero'
        f'<span style="background:{HURT_COLOR}"></span>hurt (LCA &gt; 0, raised the loss); '
        "layers by depth, dark = input side.</p>",
        _set_table(_summary_rows(per), [d.name for d in data]),
    ]
    for s, why in report.notes.items():
        parts.append(f'<p class="warn">set {e(s)} not shown: {e(why)}</p>')
    resolution = _resolution_note(store)
    if resolution:
        parts.append(f'<p class="warn">{e(resolution)}</p>')
    n_flagged = sum(x["flagged"] for x in per)
    if n_flagged:
        parts.append(
            f'<p class="warn">{n_flagged} iteration(s) stayed over the residual tolerance at the split cap; '
            "their per-parameter numbers are less accurate (see the first figure).</p>"
        )
    parts.append("<h2>Rules</h2>")
    parts.append(f"<blockquote>Helped / hurt: {e(nb['helped_rule'])}. Shares of all parameters count exact "
                 "zeros as a third group (the authors' convention).</blockquote>")  # fmt: skip
    parts.append(f"<blockquote>Significance: {e(nb['significance_rule'])}.</blockquote>")
    parts.append(f"<blockquote>Per-layer error estimates: {e(nb['layer_error_rule'])}.</blockquote>")
    parts.append(findings_html(report))
    parts.append("<h2>Evaluation</h2>")
    parts.append(table(describe_evaluation(store.attrs, main.name)))
    parts.append("<nav><ol>")
    parts.extend(
        f'<li value="{v.number or i}"><a href="#{v.key}">{e(v.title)}</a></li>' for i, v in enumerate(views, 1)
    )
    parts.append("</ol></nav>")
    parts.extend(sections(views))
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
