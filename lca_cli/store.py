"""The Zarr store: the interface between computing and reporting.

Layout (Zarr format 3 group)::

    STORE/                   attrs: format_version, lca_cli_version, params, method, tolerance, rtol,
                             max_splits, config, identity, evaluation, sets, buffers, helped_rule, ...
      steps         int64   (T+1,)    step of each checkpoint
      <set>/                          one group per evaluation set
        lca           float32 (T, P)  LCA of parameter p over steps[t] -> steps[t+1] (loss units)
        loss          float64 (T+1,)  loss on the set at each checkpoint
        residual      float64 (T,)    (loss[t+1] - loss[t]) - sum_p lca[t, p] - buffer_lca[t]
        splits        int32   (T,)    sub-intervals used (1 for euler)
        flagged       bool    (T,)    residual still over tolerance at the cap
        l1_change     float64 (T,)    relative L1 change of the row at the last refinement (accuracy indicator)
        done          bool    (T,)    row t is complete (written last: resume trusts only this)
        tensor_lca    float64 (T, K)  per-tensor sums of the float64 LCA row (K = number of tensors)
        tensor_helped int64   (T, K)  per-tensor count of parameters with LCA < 0
        tensor_hurt   int64   (T, K)  per-tensor count of parameters with LCA > 0
        buffer_lca    float64 (T,)    share of BatchNorm running statistics (bn_mode = running), else 0

Rows are written in blocks aligned with ``lca``'s row chunks; ``done`` is written after everything else
of a block, so a run killed at any point leaves a store that a rerun completes. Zarr's local store writes
each chunk file atomically (temporary file, then rename).

For xarray (:func:`xarray.open_datatree`, :func:`xarray.open_zarr`) every array has dimension names, and
coordinates label them: at the root ``checkpoint`` (the steps), ``iteration`` (each pair's start step) and
``tensor`` (parameter names), inherited by the set groups; in each set group ``layer`` (per tensor) and
``parameter_tensor`` (per parameter column: index of its tensor). Metadata is consolidated when a compute
finishes and dropped before a compute changes shapes, so it is never trusted while one runs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors

from lca_cli import __version__
from lca_cli.errors import StoreError
from lca_cli.layout import Layout, layer_name

__all__ = ["FORMAT_VERSION", "HELPED_RULE", "BlockRows", "LcaStore", "choose_rows_per_chunk", "column_counts"]

FORMAT_VERSION = 1
HELPED_RULE = (
    "a parameter helped on an iteration when its LCA < 0 and hurt when LCA > 0; exact zeros (parameters "
    "that did not move or have zero gradient, e.g. constant input pixels) count as neither, and helped "
    "fractions are helped / (helped + hurt)"
)
#: Target size of one ``lca`` chunk (scripts/bench_store.py, BENCHMARKS.md). Each block write also rewrites
#: the small per-row arrays (loss, residual, ...), 15-30 ms whatever the block's size, so larger chunks cut
#: the writer's cost per row (MNIST-FC: 3.3 ms at 4 MiB, 1.1-1.5 at 8, 0.7-1.0 at 16) and speed streaming
#: reads; but two blocks are in memory while computing (the one being written and the one being computed), so
#: peak memory grows with the chunk (30 vs 300 MNIST-FC pairs, measured with up to three blocks in flight:
#: 1.04x at 8 MiB, 1.10x at 16 MiB; with two, 1.03x at 8 MiB). 8 MiB: 24 MNIST-FC rows, 7 ResNet-20 rows.
CHUNK_BYTES = 8 << 20
#: Bytes of ``lca`` rows per read request when streaming (:meth:`LcaStore.iter_lca`): whole chunks, about this
#: many. Measured (BENCHMARKS.md) with one request in flight: 0.89 / 0.67 GB/s cold on 2 / 4 GB stores (103% /
#: 82% of the raw file read), ahead of 8, 64 and 128 MiB requests cold and warm; 0.57-0.63 without read-ahead.
READ_BYTES = 32 << 20
#: Columns per ``lca`` chunk at most (very wide models get column chunks too).
MAX_CHUNK_COLS = 1 << 22
#: Rows per chunk of the small per-iteration arrays.
SMALL_ROWS = 4096
#: Codec of ``lca``: none. Measured by scripts/bench_store.py (BENCHMARKS.md): LCA values have full-entropy
#: mantissas, so compression saves little (lz4 0.92x, zstd 0.87x, blosc-lz4 with bitshuffle 0.83x of the raw
#: size) and costs write and read speed (zarr's default zstd: reads about 2x slower than uncompressed).
LCA_COMPRESSORS: Any = None

_PER_SET_1D = {
    "residual": ("float64", 0.0),
    "splits": ("int32", 0),
    "flagged": ("bool", False),
    "l1_change": ("float64", np.nan),
    "done": ("bool", False),
    "buffer_lca": ("float64", 0.0),
}
_PER_SET_TENSOR = {"tensor_lca": ("float64", 0.0), "tensor_helped": ("int64", 0), "tensor_hurt": ("int64", 0)}


def column_counts(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of a block of LCA rows, the rows that helped (< 0) and hurt (> 0) (see :data:`HELPED_RULE`).

    Args:
        rows: float ``(r, P)``.

    Returns:
        ``(helped, hurt)``: int32 ``(P,)`` each.

    """
    # Summing the comparison's bytes as uint8 into int32 is ~2.5x faster than a bool sum or count_nonzero along
    # axis 0 (numpy widens every element to int64): `lca summarize --by neuron` is bound by this reduction.
    helped = (rows < 0).view(np.uint8).sum(axis=0, dtype=np.int32)
    hurt = (rows > 0).view(np.uint8).sum(axis=0, dtype=np.int32)
    return helped, hurt


def choose_rows_per_chunk(n_params: int, requested: int = 0) -> int:
    """Rows per ``lca`` chunk: ``requested`` when given, else about :data:`CHUNK_BYTES` per chunk.

    Args:
        n_params: Number of parameters P (row length).
        requested: Explicit choice (0 = automatic).

    Returns:
        A positive row count.

    """
    if requested > 0:
        return requested
    row_bytes = 4 * max(1, min(n_params, MAX_CHUNK_COLS))
    return int(min(1024, max(1, CHUNK_BYTES // row_bytes)))


@dataclass(frozen=True)
class BlockRows:
    """Rows ``start .. start + k - 1`` of one set, ready to write.

    Attributes:
        start: First pair index t.
        lca: float32 ``(k, P)``.
        loss: float64 ``(k + 1,)``: losses at checkpoints ``start .. start + k``.
        residual: float64 ``(k,)``.
        splits: int32 ``(k,)``.
        flagged: bool ``(k,)``.
        tensor_lca: float64 ``(k, K)``.
        tensor_helped: int64 ``(k, K)``.
        tensor_hurt: int64 ``(k, K)``.
        buffer_lca: float64 ``(k,)``.
        l1_change: float64 ``(k,)``, or None when not measured (stored as NaN).

    """

    start: int
    lca: np.ndarray
    loss: np.ndarray
    residual: np.ndarray
    splits: np.ndarray
    flagged: np.ndarray
    tensor_lca: np.ndarray
    tensor_helped: np.ndarray
    tensor_hurt: np.ndarray
    buffer_lca: np.ndarray
    l1_change: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Number of rows k."""
        return int(self.lca.shape[0])


class LcaStore:
    """An lca Zarr store, opened for reading or for computing into.

    Use :meth:`create` or :meth:`open`; never the constructor directly.
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.layout = Layout.from_attrs(self.attrs["params"])
        self.sets: list[str] = list(self.attrs["sets"])
        # Array handles by path. Looking a node up in a Zarr v3 group reads and parses its zarr.json (~1 ms):
        # paid once per array instead of on every write of a block (11 lookups) or read. A handle stays valid
        # across ``resize``, which updates its metadata in place.
        self._nodes: dict[str, zarr.Array] = {}

    # -- creation and opening -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        layout: Layout,
        sets: Sequence[str],
        steps: Sequence[int],
        attrs: dict[str, Any],
        rows_per_chunk: int = 0,
    ) -> LcaStore:
        """Create a new, empty store (overwriting whatever is at ``path``).

        Args:
            path: Store directory.
            layout: Parameter layout (the ``lca`` row).
            sets: Evaluation set names.
            steps: Checkpoint steps, length T + 1.
            attrs: Extra attributes (method, tolerance, config, evaluation details...).
            rows_per_chunk: Rows per ``lca`` chunk (0 = automatic).

        Returns:
            The store, open for writing.

        """
        p = Path(path)
        group = zarr.open_group(str(p), mode="w", zarr_format=3)
        n_pairs = len(steps) - 1
        rows = choose_rows_per_chunk(layout.size, rows_per_chunk)
        k = len(layout.params)
        all_attrs = {
            **attrs,
            "format_version": FORMAT_VERSION,
            "lca_cli_version": __version__,
            "params": layout.to_attrs(),
            "sets": list(sets),
            "rows_per_chunk": rows,
            "helped_rule": HELPED_RULE,
        }
        group.attrs.update(all_attrs)
        st = group.create_array(
            "steps", shape=(len(steps),), chunks=(SMALL_ROWS,), dtype="int64", fill_value=-1, compressors=None,
            dimension_names=("checkpoint",),
        )  # fmt: skip
        st[:] = np.asarray(steps, dtype=np.int64)
        cols = max(1, min(layout.size, MAX_CHUNK_COLS))
        for name in sets:
            sub = group.require_group(name)
            sub.create_array(
                "lca",
                shape=(n_pairs, layout.size),
                chunks=(rows, cols),
                dtype="float32",
                fill_value=0.0,
                compressors=LCA_COMPRESSORS,
                dimension_names=("iteration", "parameter"),
            )
            sub.create_array(
                "loss", shape=(n_pairs + 1,), chunks=(SMALL_ROWS,), dtype="float64", fill_value=np.nan,
                compressors=None, dimension_names=("checkpoint",),
            )  # fmt: skip
            for arr, (dtype, fill) in _PER_SET_1D.items():
                sub.create_array(
                    arr, shape=(n_pairs,), chunks=(SMALL_ROWS,), dtype=dtype, fill_value=fill,
                    compressors=None, dimension_names=("iteration",),
                )  # fmt: skip
            for arr, (dtype, fill) in _PER_SET_TENSOR.items():
                sub.create_array(
                    arr, shape=(n_pairs, k), chunks=(SMALL_ROWS, max(1, k)), dtype=dtype, fill_value=fill,
                    compressors=None, dimension_names=("iteration", "tensor"),
                )  # fmt: skip
        _write_coordinates(group, layout, sets, steps, all_attrs)
        return cls(p, group)

    @classmethod
    def open(cls, path: str | Path, mode: Literal["r", "r+"] = "r") -> LcaStore:
        """Open an existing store.

        Args:
            path: Store directory.
            mode: ``"r"`` to read, ``"r+"`` to compute into it.

        Returns:
            The store.

        Raises:
            StoreError: If ``path`` does not exist or is not an lca store of a known format version.

        """
        p = Path(path)
        if not p.exists():
            raise StoreError(f"{p} does not exist; run `lca compute RUN_DIR --out {p}` first")
        try:
            # Never the consolidated metadata: it is for other readers, and stale while a compute runs.
            group = zarr.open_group(str(p), mode=mode, use_consolidated=False)
        except (zarr.errors.GroupNotFoundError, FileNotFoundError, ValueError, KeyError) as exc:
            raise StoreError(f"{p} is not an lca store (no Zarr group there: {exc})") from None
        attrs = dict(group.attrs)
        version: Any = attrs.get("format_version")
        if "params" not in attrs or "sets" not in attrs or version is None:
            raise StoreError(f"{p} is a Zarr group but not an lca store (no lca attributes)")
        if int(version) > FORMAT_VERSION:
            raise StoreError(f"{p} has store format {version}, newer than this lca ({FORMAT_VERSION}); upgrade lca-cli")
        store = cls(p, group)
        store._check_arrays()
        return store

    def _check_arrays(self) -> None:
        names = {"steps"} | {f"{s}/{a}" for s in self.sets for a in ("lca", "loss", "done")}
        for name in sorted(names):
            try:
                self.group[name]
            except KeyError:
                raise StoreError(f"{self.path}: array {name!r} is missing; the store is damaged") from None

    # -- reading --------------------------------------------------------------------------------------

    @property
    def steps(self) -> np.ndarray:
        """Checkpoint steps, shape ``(T + 1,)``."""
        return np.asarray(self._steps_array()[:])

    def _steps_array(self) -> zarr.Array:
        return self._node("steps")

    def _node(self, key: str) -> zarr.Array:
        node = self._nodes.get(key)
        if node is None:
            found = self.group[key]
            assert isinstance(found, zarr.Array)
            node = self._nodes[key] = found
        return node

    @property
    def n_pairs(self) -> int:
        """Number of pairs T (rows of ``lca``)."""
        return int(self._steps_array().shape[0]) - 1

    @property
    def rows_per_chunk(self) -> int:
        """Rows per ``lca`` chunk."""
        return int(self.array(self.sets[0], "lca").chunks[0])

    def array(self, set_name: str, name: str) -> zarr.Array:
        """One array of one set (``lca``, ``loss``, ``residual``, ...).

        Args:
            set_name: Evaluation set.
            name: Array name.

        Returns:
            The Zarr array (lazy: index it to read).

        Raises:
            StoreError: If the set or array does not exist.

        """
        if set_name not in self.sets:
            raise StoreError(f"{self.path}: no evaluation set {set_name!r} (sets: {', '.join(self.sets)})")
        return self._node(f"{set_name}/{name}")

    def read(self, set_name: str, name: str) -> np.ndarray:
        """Read a whole small per-iteration array (not ``lca``) into memory.

        Rows past the stored steps (left by an interrupted append, until ``compute`` heals it) are cut off, so
        readers always see ``T`` rows (``T + 1`` for ``loss``).
        """
        arr = self.array(set_name, name)
        n = self.n_pairs + (1 if name == "loss" else 0)
        return np.asarray(arr[: min(n, arr.shape[0])])

    def done(self, set_name: str | None = None) -> np.ndarray:
        """Done mask ``(T,)``; for ``None``, rows done in every set."""
        names = [set_name] if set_name else self.sets
        masks = [self.read(s, "done").astype(bool) for s in names]
        return np.logical_and.reduce(masks) if masks else np.zeros(self.n_pairs, bool)

    def iter_lca(
        self, set_name: str, start: int = 0, stop: int | None = None, *, read_ahead: bool = True
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``lca`` rows ``start..stop`` chunk by chunk (never the whole array at once).

        Rows are read in requests of several chunks (about :data:`READ_BYTES`; Zarr reads a request's chunks
        concurrently), and with ``read_ahead`` the next request is read in a background thread while the
        caller works on the current one. Memory is bounded by two requests, whatever the store's length.

        Args:
            set_name: Evaluation set.
            start: First row.
            stop: One past the last row (default T).
            read_ahead: Read the next request while the caller processes this one.

        Yields:
            ``(first_row, rows)`` with ``rows`` float32 ``(r, P)``, never crossing a row-chunk boundary (views
            into the request's array: holding one keeps that whole request in memory).

        """
        arr = self.array(set_name, "lca")
        stop = arr.shape[0] if stop is None else stop
        step = int(arr.chunks[0])
        per_request = step * max(1, READ_BYTES // max(1, step * 4 * int(arr.shape[1])))
        spans: list[tuple[int, int]] = []
        t = start
        while t < stop:
            end = min(stop, (t // per_request + 1) * per_request)
            spans.append((t, end))
            t = end

        def read(span: tuple[int, int]) -> np.ndarray:
            return np.asarray(arr[span[0] : span[1]])

        def pieces(first: int, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
            t = first
            while t < first + rows.shape[0]:
                end = min(first + rows.shape[0], (t // step + 1) * step)
                yield t, rows[t - first : end - first]
                t = end

        if not read_ahead or len(spans) < 2:
            for span in spans:
                yield from pieces(span[0], read(span))
            return
        # One reader thread, one request in flight. Leaving the loop early (break, error) waits for the
        # in-flight read to finish, then the thread exits.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lca-stream") as pool:
            pending = pool.submit(read, spans[0])
            for i, span in enumerate(spans):
                rows = pending.result()
                if i + 1 < len(spans):
                    pending = pool.submit(read, spans[i + 1])
                yield from pieces(span[0], rows)
                del rows

    # -- writing --------------------------------------------------------------------------------------

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Merge attributes into the store's root (this also drops consolidated metadata until re-consolidated)."""
        self.group.attrs.update(attrs)
        self.attrs.update(attrs)

    def extend(self, steps: Sequence[int]) -> None:
        """Grow the store to new checkpoints (append); the stored steps must be a prefix of ``steps``.

        Arrays are grown first and ``steps`` last, so an interruption leaves the old, consistent store
        (longer arrays are harmless: rows past ``steps`` are never marked done).

        Args:
            steps: All checkpoint steps now in the run.

        Raises:
            StoreError: If the stored steps are not a prefix of ``steps``.

        """
        old = self.steps
        new = np.asarray(steps, dtype=np.int64)
        if len(new) < len(old) or not np.array_equal(new[: len(old)], old):
            raise StoreError(
                f"{self.path} was computed over steps {old[0]}..{old[-1]} ({len(old)} checkpoints) and the run's "
                "checkpoints no longer start with them; use --overwrite to recompute from scratch"
            )
        n_pairs = len(new) - 1
        if len(new) != len(old) or any(self.array(s, "lca").shape[0] != n_pairs for s in self.sets):
            self.drop_consolidated()  # shapes are about to change: readers must not trust the old summary
        for s in self.sets:
            # Also when no step is new: a run killed inside an earlier extend left arrays longer than steps,
            # and a done mask longer than T would make the pipeline plan pairs past the last checkpoint.
            for name in ("lca", *_PER_SET_1D, *_PER_SET_TENSOR):
                arr = self.array(s, name)
                if arr.shape[0] != n_pairs:
                    arr.resize((n_pairs, *arr.shape[1:]))
            if self.array(s, "loss").shape[0] != n_pairs + 1:
                self.array(s, "loss").resize((n_pairs + 1,))
        if len(new) == len(old):
            return
        _write_step_coordinates(self.group, new)
        st = self._steps_array()
        st.resize((len(new),))
        st[len(old) :] = new[len(old) :]

    def drop_consolidated(self) -> None:
        """Remove consolidated metadata from the root, if any (before shapes or attributes change)."""
        try:
            root = json.loads((self.path / "zarr.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if root.get("consolidated_metadata") is not None:
            # The group was opened without consolidated metadata: rewriting its attributes rewrites zarr.json
            # without it.
            self.group.attrs.update(dict(self.group.attrs))

    def consolidate(self) -> None:
        """Write consolidated metadata (all arrays' metadata in the root ``zarr.json``): one read for xarray.

        Called when a compute finishes. Zarr warns that consolidated metadata is not yet part of the Zarr v3
        specification; xarray and zarr-python read it, and other readers ignore it, so the warning is silenced.
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(str(self.path))

    def write_block(self, set_name: str, rows: BlockRows) -> None:
        """Write a block of rows of one set; ``done`` last.

        Args:
            set_name: Evaluation set.
            rows: The rows.

        """
        a, b = rows.start, rows.start + rows.count
        self.array(set_name, "lca")[a:b] = rows.lca
        self.array(set_name, "loss")[a : b + 1] = rows.loss
        for name in ("residual", "splits", "flagged", "buffer_lca", *_PER_SET_TENSOR):
            self.array(set_name, name)[a:b] = getattr(rows, name)
        self.array(set_name, "l1_change")[a:b] = np.nan if rows.l1_change is None else rows.l1_change
        self.array(set_name, "done")[a:b] = True


#: What each per-set array holds, for readers (written into each set group's attributes).
ARRAY_DESCRIPTIONS = {
    "lca": "LCA of each parameter over each iteration, loss units; < 0 helped, > 0 hurt",
    "loss": "loss on the set at each checkpoint",
    "residual": "(loss[t+1] - loss[t]) - sum of lca[t] - buffer_lca[t]",
    "splits": "sub-intervals used for the pair (1 for euler)",
    "flagged": "residual still over tolerance at the cap",
    "l1_change": "relative L1 change of the row at its last refinement",
    "done": "row complete (resume trusts only this)",
    "tensor_lca": "per-tensor sums of the float64 LCA row",
    "tensor_helped": "per-tensor count of parameters with LCA < 0",
    "tensor_hurt": "per-tensor count of parameters with LCA > 0",
    "buffer_lca": "share of interpolated BatchNorm statistics (bn_mode running), else 0",
}
#: Parameter columns per chunk of ``parameter_tensor`` (it compresses to almost nothing: runs of one value).
_COORD_COLS = 1 << 22


def _write_step_coordinates(group: zarr.Group, steps: np.ndarray) -> None:
    """``checkpoint`` (= steps) and ``iteration`` (each pair's start step): xarray's index coordinates."""
    for name, values in (("checkpoint", steps), ("iteration", steps[:-1])):
        try:
            arr = group[name]
            assert isinstance(arr, zarr.Array)
            arr.resize((len(values),))
        except KeyError:  # a store made before coordinates were written
            arr = group.create_array(
                name, shape=(len(values),), chunks=(SMALL_ROWS,), dtype="int64", fill_value=-1, compressors=None,
                dimension_names=(name,),
            )  # fmt: skip
        if len(values):
            arr[:] = values


def _write_coordinates(
    group: zarr.Group, layout: Layout, sets: Sequence[str], steps: Sequence[int], attrs: dict[str, Any]
) -> None:
    """Coordinates and descriptive attributes for xarray and other PyData readers (see the module docstring).

    The root's ``tensor``, ``checkpoint`` and ``iteration`` are index coordinates, which xarray's DataTree hands
    down to the set groups; ``steps`` (the contract's array) is declared a coordinate by the root attribute
    ``coordinates``. Each set group holds ``layer`` and ``parameter_tensor`` and names them in its own
    ``coordinates`` attribute, with the attributes a reader of that group needs.
    """
    _write_step_coordinates(group, np.asarray(steps, dtype=np.int64))
    k = len(layout.params)
    names = np.array([p.name for p in layout.params], dtype=object)
    layers = np.array([layer_name(p.name) for p in layout.params], dtype=object)
    tensor = group.create_array("tensor", shape=(k,), chunks=(max(1, k),), dtype=str, dimension_names=("tensor",))
    if k:
        tensor[:] = names
    group.attrs.update({"coordinates": "steps"})
    offsets = np.array([p.offset for p in layout.params], dtype=np.int64)
    cols = max(1, min(layout.size, _COORD_COLS))
    evaluation = attrs.get("evaluation", {}).get("sets", {}) if isinstance(attrs.get("evaluation"), dict) else {}
    for name in sets:
        sub = group.require_group(name)
        lay = sub.create_array("layer", shape=(k,), chunks=(max(1, k),), dtype=str, dimension_names=("tensor",))
        if k:
            lay[:] = layers
        pt = sub.create_array(
            "parameter_tensor", shape=(layout.size,), chunks=(cols,), dtype="int32", dimension_names=("parameter",)
        )
        for start in range(0, layout.size, cols):  # chunk by chunk: never a (P,) index array in memory
            idx = np.arange(start, min(layout.size, start + cols), dtype=np.int64)
            pt[start : start + len(idx)] = (np.searchsorted(offsets, idx, side="right") - 1).astype(np.int32)
        sub.attrs.update(
            {
                "set": name,
                "coordinates": "layer parameter_tensor",
                "units": "loss",
                "sign": "LCA < 0: the parameter helped (lowered the loss); > 0: it hurt",
                "evaluation": evaluation.get(name, {}),
                "arrays": ARRAY_DESCRIPTIONS,
                "coordinates_help": "iteration = start step of each pair; checkpoint = step; tensor = parameter "
                "name; parameter_tensor = index (into tensor) of each parameter column",
            }
        )
