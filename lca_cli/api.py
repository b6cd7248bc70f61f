"""The Python API: compute a store, open it, summarise it, verify it, report it. The CLI is a thin layer on it.

Everything a notebook or script needs is here (and re-exported by :mod:`lca_cli`)::

    import lca_cli

    result = lca_cli.compute("runs/exp1")  # -> runs/exp1/lca.zarr, resumes if it exists
    store = lca_cli.open_store(result.store)
    store.summarize(by="layer").to_pandas()
    lca_cli.report(store, "exp1.html")

Library errors speak of arguments (``steps=0:5``, ``by='planet'``); the command line speaks of flags
(``--steps 0:5``). The messages are written once, in the command line's words, by the layers below; the
functions here turn the flags they name into argument names unless called inside :func:`flag_spelling`, which
is what ``lca`` does. Opening and summarising a store never imports torch; :func:`compute` does.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli.analysis.reduce import Summary, Window, parse_window
from lca_cli.analysis.reduce import open_store as _open_lca_store
from lca_cli.analysis.reduce import summarize as _summarize
from lca_cli.errors import LcaError, UsageError

if TYPE_CHECKING:
    from lca_cli.analysis.groups import GroupSummary
    from lca_cli.computation.result import ComputeResult
    from lca_cli.reporting import ReportResult
    from lca_cli.store.integrity import Report
    from lca_cli.store.lcastore import LcaStore

__all__ = [
    "Group",
    "Steps",
    "Store",
    "StoreLike",
    "compute",
    "flag_spelling",
    "open_group",
    "open_store",
    "report",
    "verify",
]

#: A window of iterations by start step: ``"A:B"`` (either end may be left out), a single start step, ``(A, B)``
#: with None for an open end, a :class:`~lca_cli.analysis.reduce.Window`, or None for every iteration.
Steps = str | int | tuple[int | None, int | None] | Window | None

# ------------------------------------------------------------------------------------------------------------
# errors: flags on the command line, arguments in Python

_FLAG_SPELLING: ContextVar[bool] = ContextVar("lca_flag_spelling", default=False)

#: Flags whose argument is named otherwise (a repeatable flag is a plural argument).
_ARGUMENT_OF = {"label": "labels", "view": "views", "set": "set"}
#: Flags that take no value: ``--repair and --overwrite`` must not become ``repair=and``.
_SWITCHES = frozenset(
    {"repair", "overwrite", "unsafe-pickle", "strict", "cooperate", "follow", "prune", "concentration", "dry-run",
     "json", "quiet", "allow-tf32", "no-allow-tf32", "compile", "no-compile"}
)  # fmt: skip
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)( (?=[^\s-]))?")


@contextlib.contextmanager
def flag_spelling() -> Iterator[None]:
    """Inside this block the API's errors keep the command line's words (``--steps``): what ``lca`` uses."""
    token = _FLAG_SPELLING.set(True)
    try:
        yield
    finally:
        _FLAG_SPELLING.reset(token)


def _as_arguments(message: str) -> str:
    """``--steps 5:2: ...`` -> ``steps=5:2: ...``; text in backticks (a command to run) stays as it is."""

    def one(match: re.Match[str]) -> str:
        flag = match.group(1)
        name = _ARGUMENT_OF.get(flag, flag.replace("-", "_"))
        if match.group(2) is None:
            return name
        return f"{name} " if flag in _SWITCHES else f"{name}="

    parts = message.split("`")
    return "`".join(_FLAG.sub(one, part) if i % 2 == 0 else part for i, part in enumerate(parts))


@contextlib.contextmanager
def _speaking_arguments() -> Iterator[None]:
    """Re-word the flags in an :class:`LcaError` raised inside as argument names (unless :func:`flag_spelling`)."""
    try:
        yield
    except LcaError as exc:
        if not _FLAG_SPELLING.get() and len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (_as_arguments(exc.args[0]),)
        raise


def _window(steps: Steps) -> Window:
    """Any :data:`Steps` as a checked :class:`Window` (one parser, one set of messages)."""
    if steps is None or isinstance(steps, Window):
        return steps or Window()
    if isinstance(steps, str):
        return parse_window(steps)
    if isinstance(steps, int | np.integer):
        return parse_window(str(int(steps)))
    if isinstance(steps, tuple) and len(steps) == 2:
        a, b = steps
        return parse_window(f"{'' if a is None else int(a)}:{'' if b is None else int(b)}")
    raise UsageError(f"--steps {steps!r}: expected 'A:B', a start step, (A, B) or None")


# ------------------------------------------------------------------------------------------------------------
# reading a store


class Store:
    """An lca store opened for reading (:func:`open_store`); reading never imports torch.

    Attributes:
        path: Where the store is.

    """

    def __init__(self, store: LcaStore) -> None:
        self._store = store
        self.path: Path = Path(store.path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, sets={self.sets}, pairs={self.n_pairs})"

    @property
    def sets(self) -> list[str]:
        """Evaluation sets held, e.g. ``["train", "val"]``."""
        return list(self._store.sets)

    @property
    def steps(self) -> np.ndarray:
        """int64 ``(T + 1,)``: the step of each checkpoint."""
        return np.asarray(self._store.steps)

    @property
    def n_pairs(self) -> int:
        """Pairs (iterations) ``T`` the store has rows for, done or not."""
        return int(self._store.n_pairs)

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's attributes (format, settings, parameters; ``docs/store-format.md``)."""
        return dict(self._store.attrs)

    @property
    def lca_store(self) -> LcaStore:
        """The low-level :class:`~lca_cli.store.lcastore.LcaStore`, for :mod:`lca_cli.analysis`'s functions."""
        return self._store

    def summarize(
        self,
        by: str = "layer",
        steps: Steps = None,
        set: str | None = None,  # the CLI's --set: the name users know (shadows the builtin here only)
        *,
        top: int | None = None,
        sort: str | None = None,
        concentration: bool = False,
        min_abs: float | None = None,
        series: bool = False,
    ) -> Summary:
        """Totals and who helped (LCA < 0) or hurt (LCA > 0), as ``lca summarize`` prints them.

        Args:
            by: ``"layer"``, ``"tensor"``, ``"neuron"`` or ``"iteration"``.
            steps: The iterations whose start step lies in a window (:data:`Steps`; default all done ones).
            set: Evaluation set (default ``train`` when present, else the first).
            top: Keep only the first ``top`` rows after sorting.
            sort: ``"model"``, ``"helped"``, ``"hurt"`` or ``"abs"`` (default ``helped`` for neurons, else model
                order).
            concentration: With ``by="layer"`` or ``"tensor"``: add ``params_50`` / ``params_90`` (streams
                ``lca`` once).
            min_abs: A noise floor X (``--min-abs``): ``|lca| <= X`` counts as zero in the helped / hurt counts and
                shares, and every helped / hurt figure gains ``below_resolution_share`` (streams ``lca`` once).
            series: With ``by="layer"`` or ``"tensor"`` (``--series``): one row per iteration and group, ``step,
                <by>, lca, neg, pos`` (streams ``lca`` once); ``.to_xarray()`` gives a step x layer Dataset.

        Returns:
            The summary: ``.to_dict()`` is exactly what ``lca summarize --json`` prints; ``.to_pandas()`` and
            ``.to_xarray()`` give a DataFrame and a Dataset.

        Raises:
            UsageError: An unknown ``by``, ``set`` or ``sort``, a bad ``top`` or a window holding no iteration.
            StoreError: No iteration of the window is computed yet.

        """
        with _speaking_arguments():
            summary = _summarize(
                self._store, by=by, set_name=set, window=_window(steps), top=top, sort=sort,
                concentration=concentration, min_abs=min_abs, series=series,
            )  # fmt: skip
        # Tied parameters (alias -> owner) are one tensor: its allocation is the owner's row; say so.
        summary.header["tied"] = {str(k): str(v) for k, v in dict(self._store.attrs.get("tied") or {}).items()}
        return summary

    def report(self, out: str | Path, **options: Any) -> ReportResult:
        """Write this store's HTML report: :func:`report` with this store."""
        return report(self, out, **options)


#: A store given to the API: its path, or a :class:`Store`.
StoreLike = str | Path | Store


class Group:
    """Several stores of one condition (seeds) opened for reading (:func:`open_group`).

    Attributes:
        stores: The member stores, in the order given.

    """

    def __init__(self, stores: Sequence[Store]) -> None:
        self.stores = list(stores)

    def __repr__(self) -> str:
        return f"Group({[str(s.path) for s in self.stores]!r})"

    @property
    def paths(self) -> list[Path]:
        """The member stores' paths."""
        return [s.path for s in self.stores]

    def summarize(
        self,
        by: str = "layer",
        steps: Steps = None,
        set: str | None = None,  # the CLI's --set
        *,
        top: int | None = None,
        sort: str | None = None,
        concentration: bool = False,
        min_abs: float | None = None,
    ) -> GroupSummary:
        """Mean, sd (ddof = 1) and n over the stores per row and statistic: ``lca summarize S1 S2 ...``.

        Takes :meth:`Store.summarize`'s arguments (no ``series``); ``sort`` and ``top`` act on the mean LCA.

        Returns:
            The group summary: ``.to_dict()`` is exactly what ``lca summarize S1 S2 ... --json`` prints.

        Raises:
            UsageError: Stores that are not comparable (tensors, sets, rows in the window) or a bad option.
            StoreError: A store with no finished iteration in the window.

        """
        from lca_cli.analysis.groups import summarize_group

        with _speaking_arguments():
            return summarize_group(
                [s.lca_store for s in self.stores], by=by, set_name=set, window=_window(steps), top=top, sort=sort,
                concentration=concentration, min_abs=min_abs,
            )  # fmt: skip

    def compare(
        self,
        other: Group,
        by: str = "layer",
        steps: Steps = None,
        set: str | None = None,  # the CLI's --set
        *,
        labels: tuple[str, str] = ("A", "B"),
        min_abs: float | None = None,
    ) -> dict[str, Any]:
        """Compare with ``other``: per row and statistic, this group's (A) and its (B) mean / sd / n, and B − A ± se.

        The numbers of one set of ``lca report A1 A2 --vs B1 B2``'s page
        (:func:`lca_cli.analysis.groups.compare_groups`; the rule is its ``difference_rule``).

        Returns:
            ``{"labels", "stores", "set", "by", "difference_rule", "sd_rule", "stats", "rows"}``.

        Raises:
            UsageError: Groups whose layers or sets differ, or a bad option.

        """
        from lca_cli.analysis.groups import check_comparable, compare_groups

        with _speaking_arguments():
            check_comparable([self.stores[0].lca_store, other.stores[0].lca_store], layers_only=True)
            a = self.summarize(by=by, steps=steps, set=set, min_abs=min_abs)
            b = other.summarize(by=by, steps=steps, set=set, min_abs=min_abs)
            return compare_groups(a, b, labels)


def open_group(paths: Sequence[StoreLike]) -> Group:
    """Open several stores of one condition (seeds of one configuration) as a group.

    Args:
        paths: The stores (at least one); each as :func:`open_store` takes it.

    Returns:
        The group.

    Raises:
        UsageError: No store given, or stores that are not comparable (other tensors or evaluation sets).
        StoreError: A path that is not an lca store.

    """
    from lca_cli.analysis.groups import check_comparable

    stores = [open_store(p) for p in paths]
    if not stores:
        raise UsageError("a group needs at least one store")
    with _speaking_arguments():
        check_comparable([s.lca_store for s in stores])
    return Group(stores)


def open_store(path: StoreLike) -> Store:
    """Open an lca store for reading (checks that it is one, and that its finished chunks are there).

    Args:
        path: The store (usually ``RUN_DIR/lca.zarr``); a :class:`Store` is returned as it is.

    Returns:
        The store.

    Raises:
        StoreError: If ``path`` is not an lca store (for a run directory the message names the store inside
            it, or says how to make one), or is damaged.

    """
    if isinstance(path, Store):
        return path
    with _speaking_arguments():
        return Store(_open_lca_store(path))


def verify(path: StoreLike) -> Report:
    """Check a store's integrity: every chunk present, of the right size, with a matching checksum.

    Reads the whole store once. ``lca compute RUN_DIR --out STORE --repair`` (``compute(..., repair=True)``)
    recomputes the damaged rows while their checkpoints exist.

    Args:
        path: The store.

    Returns:
        The findings: ``.ok``, ``.lines()``, ``.summary()``, ``.to_dict()`` (what ``lca verify --json`` prints).

    Raises:
        StoreError: If ``path`` is not an lca store at all (damage is reported, not raised).

    """
    from lca_cli.store.integrity import verify as run_verify

    where = path.path if isinstance(path, Store) else path
    with _speaking_arguments():
        return run_verify(_open_lca_store(where, check=False))


# ------------------------------------------------------------------------------------------------------------
# reports


def report(
    store: StoreLike | Sequence[StoreLike],
    out: str | Path,
    *,
    sets: Sequence[str] | str | None = None,
    steps: Steps = None,
    labels: Sequence[str] | None = None,
    png_dir: str | Path | None = None,
    views: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    vs: Sequence[StoreLike] | None = None,
    min_abs: float | None = None,
    figures: str = "png",
) -> ReportResult:
    """Write a self-contained HTML report (and PNG figures) of one store, or compare two (``[a, b]``).

    With ``vs``, compare two seed groups instead (``lca report A1 A2 A3 --vs B1 B2 B3``): ``store`` is group A
    (one store or a list), ``vs`` group B; per layer and set, each group's mean / sd / n and B − A with its
    standard error. Needs matplotlib (``pip install 'lca-cli[report]'``).

    Args:
        store: One store, or a list of two to compare side by side.
        out: The HTML page to write.
        sets: Evaluation set(s) to show (default every set of the store, side by side).
        steps: The iterations to cover (:data:`Steps`; default all).
        labels: Names of the two runs of a comparison (default the stores' folder names).
        png_dir: Where the PNG figures go (default ``<out stem>_files/``).
        views: Draw only these views of a one-store report (``loss``, ``composition``, ...; default all).
        progress: Called with one-line progress messages.
        vs: Group B of a group comparison (``--vs``).
        min_abs: A noise floor for the helped / hurt counts (``--min-abs``; :mod:`lca_cli.analysis.floor`).
        figures: ``png`` (default), or ``svg`` / ``pdf``: also a vector copy of every figure beside its PNG
            (``.vectors``).

    Returns:
        The page written (``.html``), its figures (``.pngs``) and headline numbers (``.numbers``).

    Raises:
        UsageError: More than two stores without ``vs``, labels not one per store (group), views with a
            comparison, stores of a group comparison that are not comparable, a bad window.
        LcaError: If matplotlib is not installed.

    """
    with _speaking_arguments():
        window = _window(steps)
        stores: list[StoreLike] = list(store) if isinstance(store, list | tuple) else [store]  # type: ignore[list-item]
        paths = [s.path if isinstance(s, Store) else Path(s) for s in stores]
        if vs is not None:
            if views:
                raise UsageError("--view applies to the report of one store, not to a comparison")
            from lca_cli.reporting.groups import write_group_comparison
            from lca_cli.reporting.plots import vector_figures

            with vector_figures(figures):
                return write_group_comparison(
                    paths, [s.path if isinstance(s, Store) else Path(s) for s in vs], out, labels=labels,
                    set_names=[sets] if isinstance(sets, str) else sets, steps=window, png_dir=png_dir,
                    progress=progress, min_abs=min_abs,
                )  # fmt: skip
        if not paths or len(paths) > 2:
            raise UsageError(
                f"lca report takes one store, or two to compare (got {len(paths)}); for seed groups give "
                "group B with --vs, as in `lca report A1 A2 A3 --vs B1 B2 B3`"
            )
        if labels and len(labels) != len(paths):
            raise UsageError(f"--label: give one per store ({len(paths)}), got {len(labels)}")
        if views and len(paths) == 2:
            raise UsageError("--view applies to the report of one store, not to a comparison")
        set_names = [sets] if isinstance(sets, str) else (list(sets) if sets else None)
        if len(paths) == 2:
            from lca_cli.reporting.compare import write_comparison
            from lca_cli.reporting.plots import vector_figures

            with vector_figures(figures):
                return write_comparison(
                    paths[0], paths[1], out, labels=list(labels) if labels else None, set_names=set_names,
                    steps=(window.start, window.stop), png_dir=png_dir, progress=progress, min_abs=min_abs,
                )  # fmt: skip
        from lca_cli.reporting.report import write_report

        return write_report(
            paths[0], out, set_names=set_names, steps=(window.start, window.stop), png_dir=png_dir,
            progress=progress, views=list(views) if views else None, min_abs=min_abs, figures=figures,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# computing a store


def compute(run_dir: str | Path, out: str | Path | None = None, **options: Any) -> ComputeResult:
    """Compute (or resume, extend, repair) the LCA store of a training run: ``lca compute`` as a function.

    Takes the options of ``lca compute`` with the same defaults, spelled as arguments (``--max-splits 8`` is
    ``max_splits=8``; the list and defaults are :data:`lca_cli.computation.options.OPTIONS`, the one place they
    are written): the ``[compute]`` settings (``method``, ``refine``, ``l1_tol``, ``max_splits``, ``threads``,
    ``granularity``, ``params``, ...), which win over the config's ``[compute]`` table, and ``config`` (a TOML
    file or a loaded config; default ``RUN_DIR/lca.toml``), ``overwrite``, ``repair``, ``unsafe_pickle``,
    ``strict``, ``steps`` (any :data:`Steps`), ``shard`` (``"I/N"``), ``cooperate``, ``follow``, ``until``,
    ``idle_timeout``, ``prune``. Python only: ``progress`` (called with ``(done, total)`` after each pair),
    ``note`` (called with one-line notes), ``stop`` (a ``threading.Event``: set it to stop after the current
    pair, keeping finished rows) and ``hooks`` (:class:`lca_cli.computation.plan.Hooks`, for benchmarks).

    Args:
        run_dir: The run's checkpoints (any layout ``lca compute`` reads).
        out: The store (default ``RUN_DIR/lca.zarr``).
        **options: As above.

    Returns:
        What was done: ``store``, ``n_pairs``, ``computed``, ``skipped``, ``gradients_per_pair``, ``flagged``
        (start steps per set) and ``flagged_pairs``, ``accuracy`` per set (:class:`ComputeResult`).

    Raises:
        UsageError: An unknown option or a bad value.
        LcaError: Any other failure (config, run directory, checkpoints, store; see :mod:`lca_cli.errors`).
        ToleranceError: With ``strict=True``, when a pair computed by this call stays over tolerance.

    """
    from lca_cli.computation import compute_run

    if options.get("steps") is not None:
        with _speaking_arguments():
            window = _window(options["steps"])
        options["steps"] = (window.start, window.stop)
    return compute_run(run_dir, out, **options)
