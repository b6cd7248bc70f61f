"""Seed groups: several stores of one condition summarised as mean, sd and n per statistic, and two groups compared.

A *group* is a list of stores of one condition (typically seeds of one configuration). :func:`summarize_group`
summarises each store as :func:`lca_cli.analysis.reduce.summarize` does (same options), matches the rows by name
(layers, tensors, neurons, or start steps for iterations) and gives, per row and per statistic, the mean, the
sample standard deviation and the number of stores that have a value (:data:`SD_RULE`); the verdicts
(``significance``) become counts of stores. :func:`compare_groups` sets two group summaries side by side: per row
and statistic, each group's mean / sd / n and the difference of means with its standard error
(:data:`DIFFERENCE_RULE`).

The stores of a group must be comparable (:func:`check_comparable`): the same tensors (names and shapes) and the
same evaluation sets; two groups compared must have the same layers and sets. Anything else is a one-line
:class:`~lca_cli.errors.UsageError` (exit 2) naming the first difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli.analysis.reduce import Summary, Window, summarize
from lca_cli.errors import LcaError, UsageError
from lca_cli.store import LcaStore

__all__ = [
    "DIFFERENCE_RULE",
    "GROUP_HEADER_STATS",
    "SD_RULE",
    "GroupSummary",
    "check_comparable",
    "compare_groups",
    "stat",
    "summarize_group",
]

#: How the spread of a group is given.
SD_RULE = (
    "mean and sd over the stores of the group: sd is the sample standard deviation (ddof = 1), None when fewer "
    "than 2 stores have a value; n counts the stores that have one (a helped fraction with nothing moved, a "
    "milestone never reached have none)"
)

#: How two groups' difference and its spread are given.
DIFFERENCE_RULE = (
    "difference = mean of B - mean of A; se = sqrt(sd_A^2 / n_A + sd_B^2 / n_B), the standard error of a "
    "difference of two independent means (Welch), None when either group has n < 2; t = difference / se"
)

#: Header numbers given as mean / sd / n over a group (when the members' headers have them).
GROUP_HEADER_STATS = (
    "iterations",
    "delta_loss",
    "sum_lca",
    "buffer_lca",
    "max_abs_residual",
    "integration_error",
    "flagged",
    "helped_fraction_mean",
    "helped_share_mean",
    "zero_share_mean",
    "hurt_share_mean",
    "below_resolution_share",
)

#: Row keys that identify a row: equal in every store of a group, never averaged.
_KEYS = ("name", "parameters", "step", "next_step")

#: Verdicts of :func:`lca_cli.analysis.series.significance`, and the column counting each over a group.
_VERDICTS = {"helps": "significance_helps", "hurts": "significance_hurts", "within error": "significance_within"}


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x) + 0.0


def stat(values: Sequence[Any]) -> dict[str, Any]:
    """Mean, sample sd (ddof = 1) and n of the values that are numbers (None and NaN left out; bools count 0/1).

    Args:
        values: One value per store.

    Returns:
        ``{"mean", "sd", "n"}``: mean None when n = 0, sd None when n < 2 (:data:`SD_RULE`).

    """
    xs = np.array([float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))])
    n = int(xs.size)
    return {
        "mean": _num(float(xs.mean())) if n else None,
        "sd": _num(float(xs.std(ddof=1))) if n > 1 else None,
        "n": n,
    }


def _first_difference(a: Sequence[Any], b: Sequence[Any]) -> str:
    """``x vs y`` at the first position the two lists differ, or the lengths when one is a prefix of the other."""
    for x, y in zip(a, b, strict=False):
        if x != y:
            return f"{x} vs {y}"
    return f"{len(a)} vs {len(b)} entries"


def check_comparable(stores: Sequence[LcaStore], layers_only: bool = False) -> None:
    """Refuse stores that are not one experiment's seeds: the same store twice, other tensors or evaluation sets.

    Args:
        stores: The stores (the first is the reference).
        layers_only: Compare layer names instead of tensors (two groups compared: a frozen layer keeps its name).

    Raises:
        UsageError: Naming the first store that differs from the first one, and how, or a store given twice.

    """
    seen: set[Path] = set()
    for s in stores:
        where = Path(s.path).resolve()
        if where in seen:
            raise UsageError(
                f"{s.path} is given twice; the stores of a group must be distinct runs (a store counted twice "
                "would shrink the group's sd)"
            )
        seen.add(where)
    ref = stores[0]
    for s in stores[1:]:
        if layers_only:
            mine, theirs = [n for n, _ in s.layout.layers()], [n for n, _ in ref.layout.layers()]
            what = "layers"
        else:
            mine = [f"{p.name}{tuple(p.shape)}" for p in s.layout.params]
            theirs = [f"{p.name}{tuple(p.shape)}" for p in ref.layout.params]
            what = "tensors"
        if mine != theirs:
            raise UsageError(
                f"{s.path} and {ref.path} are not comparable: their {what} differ ({_first_difference(theirs, mine)}); "
                "a group holds stores of one model (seeds of one configuration)"
            )
        if sorted(s.sets) != sorted(ref.sets):
            raise UsageError(
                f"{s.path} and {ref.path} are not comparable: evaluation sets {', '.join(s.sets)} vs "
                f"{', '.join(ref.sets)}; a group holds stores computed on the same sets"
            )


@dataclass(frozen=True)
class GroupSummary:
    """A group of stores summarised: per row, each statistic's mean / sd / n over the stores.

    Attributes:
        header: ``group`` (True), ``stores``, ``n``, ``by``, ``set``, ``window``, ``sd_ddof`` and ``sd_rule``, the
            rules, and ``stats``: ``{name: {"mean", "sd", "n"}}`` for the header numbers of
            :data:`GROUP_HEADER_STATS`.
        columns: Column names of the rows: the keys, then ``<stat>_mean``, ``<stat>_sd``, ``<stat>_n`` per
            statistic, then (layer / tensor / neuron rows) ``significance_helps`` / ``_hurts`` / ``_within``.
        rows: One dict per row.
        members: Each store's own summary (not in :meth:`to_dict`).
        stats: The statistics, in column order.

    """

    header: dict[str, Any]
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    members: list[Summary] = field(default_factory=list)
    stats: list[str] = field(default_factory=list)

    @property
    def by(self) -> str:
        """What a row is."""
        return str(self.header.get("by", "layer"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form ``{"header", "columns", "rows"}``: what ``lca summarize S1 S2 ... --format json`` prints."""
        return {"header": self.header, "columns": self.columns, "rows": self.rows}

    def to_pandas(self) -> Any:
        """The rows as a ``pandas.DataFrame`` indexed by ``name`` (by ``step`` for iterations), header in ``attrs``.

        Raises:
            LcaError: If pandas is not installed.

        """
        from lca_cli.analysis.reduce import PANDAS_MISSING

        try:
            import pandas as pd
        except ImportError:
            raise LcaError(PANDAS_MISSING) from None
        index = "step" if self.by == "iteration" else "name"
        frame = pd.DataFrame(self.rows, columns=self.columns).set_index(index)
        frame.attrs.update(self.header)
        return frame

    def row(self, name: str) -> dict[str, Any]:
        """The row called ``name``.

        Raises:
            KeyError: If there is none.

        """
        for r in self.rows:
            if str(r["name"]) == name:
                return r
        raise KeyError(name)


def _group_rows(members: Sequence[Summary]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Rows matched by name across the members (checked), each statistic as mean / sd / n."""
    ref = members[0]
    names = [str(r["name"]) for r in ref.rows]
    for m in members[1:]:
        other = [str(r["name"]) for r in m.rows]
        if other != names:
            what = "iterations (start steps)" if ref.by == "iteration" else f"{ref.by}s"
            raise UsageError(
                f"{m.header['store']} and {ref.header['store']} are not comparable: their {what} in the window "
                f"differ ({_first_difference(names, other)})"
            )
    stats = [c for c in ref.columns if c not in _KEYS and c != "significance"]
    keys = [c for c in ref.columns if c in _KEYS]
    verdicts = "significance" in ref.columns
    rows = []
    for i in range(len(names)):
        row: dict[str, Any] = {k: ref.rows[i].get(k) for k in keys}
        row["n"] = len(members)
        for c in stats:
            s = stat([m.rows[i].get(c) for m in members])
            row[f"{c}_mean"], row[f"{c}_sd"], row[f"{c}_n"] = s["mean"], s["sd"], s["n"]
        if verdicts:
            said = [m.rows[i].get("significance") for m in members]
            for verdict, col in _VERDICTS.items():
                row[col] = sum(v == verdict for v in said)
        rows.append(row)
    columns = [*keys, "n", *(f"{c}_{x}" for c in stats for x in ("mean", "sd", "n"))]
    columns += list(_VERDICTS.values()) if verdicts else []
    return columns, rows, stats


def summarize_group(
    stores: Sequence[LcaStore],
    *,
    by: str = "layer",
    set_name: str | None = None,
    window: Window | None = None,
    top: int | None = None,
    sort: str | None = None,
    concentration: bool = False,
    min_abs: float | None = None,
) -> GroupSummary:
    """Summarise several stores of one condition: mean, sd and n per row and statistic.

    Args:
        stores: The group's stores (all comparable: :func:`check_comparable`; one alone has no sd).
        by: ``layer``, ``tensor``, ``neuron`` or ``iteration`` (iterations are matched by start step).
        set_name: Evaluation set (default ``train`` when present, else the first).
        window: Iterations to include in every store.
        top: Keep the first ``top`` rows after sorting.
        sort: As :func:`~lca_cli.analysis.reduce.summarize`, on the mean LCA (default model order).
        concentration: Add ``params_50`` / ``params_90`` statistics (layer, tensor).
        min_abs: A noise floor, as :func:`~lca_cli.analysis.reduce.summarize`.

    Returns:
        The group summary.

    Raises:
        UsageError: No store, stores that are not comparable (tensors, sets, rows in the window), or
            any option :func:`~lca_cli.analysis.reduce.summarize` refuses.
        StoreError: A store with no finished iteration in the window.

    """
    if not stores:
        raise UsageError("a group needs at least one store")
    check_comparable(stores)
    members = [
        summarize(s, by=by, set_name=set_name, window=window, sort="model", concentration=concentration,
                  min_abs=min_abs)
        for s in stores
    ]  # fmt: skip
    columns, rows, stats = _group_rows(members)
    if sort in ("helped", "hurt", "abs") or (sort is None and by == "neuron"):
        sign = {"helped": 1.0, "hurt": -1.0}
        key = sort or "helped"
        rows.sort(key=lambda r: -abs(r["lca_mean"] or 0.0) if key == "abs" else sign[key] * (r["lca_mean"] or 0.0))
    if top is not None:
        if top < 1:
            raise UsageError(f"--top {top}: must be >= 1")
        rows = rows[:top]
    ref = members[0].header
    header: dict[str, Any] = {
        "group": True,
        "stores": [str(m.header["store"]) for m in members],
        "n": len(members),
        "by": by,
        "set": ref["set"],
        "window": ref["window"],
        "parameters": ref["parameters"],
        "sd_ddof": 1,
        "sd_rule": SD_RULE,
        "helped_rule": ref["helped_rule"],
        "significance_rule": ref["significance_rule"],
        "stats": {k: stat([m.header.get(k) for m in members]) for k in GROUP_HEADER_STATS if k in ref},
    }
    for k in ("min_abs", "floor_rule", "dtype", "eps", "resolution_rule"):
        if k in ref:
            header[k] = ref[k]
    return GroupSummary(header, columns, rows, members, stats)


def _difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Mean / sd / n of A and of B, and B − A with its standard error and t (:data:`DIFFERENCE_RULE`)."""
    diff = None if a["mean"] is None or b["mean"] is None else b["mean"] - a["mean"]
    se = None
    if diff is not None and a["sd"] is not None and b["sd"] is not None:
        se = math.sqrt(a["sd"] ** 2 / a["n"] + b["sd"] ** 2 / b["n"])
    t = diff / se if diff is not None and se else None
    return {"a": a, "b": b, "diff": diff, "se": se, "t": t}


def compare_groups(a: GroupSummary, b: GroupSummary, labels: tuple[str, str] = ("A", "B")) -> dict[str, Any]:
    """Two group summaries side by side: per row and statistic, both groups' mean / sd / n and B − A ± se.

    Args:
        a: Group A's summary.
        b: Group B's summary (same ``by``, set and rows).
        labels: The groups' names.

    Returns:
        ``{"labels", "stores", "set", "by", "difference_rule", "sd_rule", "stats": {header stat: difference},
        "rows": [{"name", "stats": {stat: {"a", "b", "diff", "se", "t"}}}]}``.

    Raises:
        UsageError: If the two summaries' rows differ.

    """
    names_a, names_b = [str(r["name"]) for r in a.rows], [str(r["name"]) for r in b.rows]
    if names_a != names_b:
        raise UsageError(
            f"the groups {labels[0]} and {labels[1]} are not comparable: their {a.by}s differ "
            f"({_first_difference(names_a, names_b)})"
        )

    def part(row: dict[str, Any], s: str) -> dict[str, Any]:
        return {"mean": row[f"{s}_mean"], "sd": row[f"{s}_sd"], "n": row[f"{s}_n"]}

    stats = [s for s in a.stats if s in b.stats]
    return {
        "labels": list(labels),
        "stores": [a.header["stores"], b.header["stores"]],
        "set": a.header["set"],
        "by": a.by,
        "difference_rule": DIFFERENCE_RULE,
        "sd_rule": SD_RULE,
        "stats": {
            k: _difference(a.header["stats"][k], b.header["stats"][k])
            for k in a.header["stats"]
            if k in b.header["stats"]
        },
        "rows": [
            {"name": ra["name"], "stats": {s: _difference(part(ra, s), part(rb, s)) for s in stats}}
            for ra, rb in zip(a.rows, b.rows, strict=True)
        ],
    }
