"""The store object: :class:`LcaStore` creates, opens, reads, grows and writes an lca Zarr store.

A store is a Zarr format 3 group: ``steps`` and ``fingerprint`` at the root, and per evaluation set ``lca``
(T, C) with the per-row arrays beside it (``loss``, ``loss_end``, ``residual``, ``splits``, ``flagged``,
``l1_change``, ``done``, ``tensor_lca``, ``tensor_helped``, ``tensor_hurt``, ``buffer_lca``). Their names,
dtypes and chunking are :mod:`lca_cli.store.format`'s; ``docs/store-format.md`` is the full reference.

Every per-row array is chunked like ``lca``'s rows, so the rows of one block (a row chunk) live in chunks of
their own: writing a block never reads or rewrites another block's rows, whichever process writes it.
``loss`` is chunked the same way and a block writes the losses at its own start checkpoints; the loss at
its end checkpoint is ``loss_end`` of its last row (:meth:`LcaStore.read` merges the two). Each chunk
carries a CRC-32C checksum (verified on every read, :mod:`lca_cli.store.chunks`); every chunk is written,
even when it holds only fill values, so a missing chunk of a done row is damage, never "all zeros"
(:mod:`lca_cli.store.integrity`).

Write order: a block's data chunks, then fsync, then its ``done`` chunk; Zarr's local store writes each
chunk file atomically (temporary file, then rename). New checkpoints are committed by the
``n_checkpoints`` attribute, written after the arrays grew and ``steps`` was written.

For xarray every array has dimension names, and coordinates label them (:mod:`lca_cli.store.coordinates`).
Metadata is consolidated when a compute finishes and dropped before a compute changes shapes or attributes,
so it is never trusted while one runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors

from lca_cli.core.columns import Columns
from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError
from lca_cli.store import format as store_format
from lca_cli.store.chunks import chunk_files, chunk_size, read_rows, reading, stream_rows, write_all, write_chunks
from lca_cli.store.coordinates import write_coordinates, write_step_coordinates
from lca_cli.store.direct import Stage
from lca_cli.store.fencing import Fence, FencedStore, fenced
from lca_cli.store.format import (
    CACHE_BYTES,
    COORDINATES,
    FINGERPRINT_BYTES,
    PER_CHECKPOINT,
    PER_ROW,
    PER_TENSOR,
    SET_COORDINATES,
    SMALL_ROWS,
    check_format_version,
    choose_rows_per_chunk,
    create_arrays,
    required_arrays,
    root_attrs,
)
from lca_cli.store.identity import SCHEME, SCHEME_ATTR
from lca_cli.store.integrity import quick_check
from lca_cli.store.placement import fsync_paths, fsync_tree, storage_errors
from lca_cli.store.validate import validate

__all__ = ["BlockRows", "LcaStore"]


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

    Attributes:
        path: Store directory.
        durable: fsync each block's chunks before marking it done (and the store's files at creation).

    """

    def __init__(self, path: Path, group: zarr.Group, durable: bool = True, fence: Fence | None = None) -> None:
        self.path = path
        self.group = group
        self.durable = durable
        self.fence = fence  # the lock holder's: every write is fenced (lca_cli.store.fencing)
        self.attrs: dict[str, Any] = dict(group.attrs)
        self.layout = Layout.from_attrs(self.attrs["params"])
        #: What ``lca``'s columns hold (one per parameter unless made with --granularity / --params).
        self.columns = Columns.from_attrs(self.attrs, self.layout)
        self.sets: list[str] = list(self.attrs["sets"])
        self.read_only = group.read_only
        self._cache: dict[str, np.ndarray] = {}
        # Array handles by path. Looking a node up in a Zarr v3 group reads and parses its zarr.json (~1 ms):
        # paid once per array instead of on every write of a block (11 lookups) or read. A handle stays valid
        # across ``resize``, which updates its metadata in place.
        self._nodes: dict[str, zarr.Array] = {}
        self._stage = Stage()  # where write_block makes big lca chunks (lca_cli.store.direct)

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
        fingerprints: np.ndarray | None = None,
        durable: bool = True,
        columns: Columns | None = None,
        lca_compressors: Sequence[Any] | None = None,
        fence: Fence | None = None,
    ) -> LcaStore:
        """Create a new, empty store at a path where nothing exists yet.

        Callers that must not leave a half-created store behind create it in a temporary sibling and rename
        it into place (:mod:`lca_cli.store.placement`).

        Args:
            path: Store directory (must not exist).
            layout: Parameter layout (the ``lca`` row).
            sets: Evaluation set names.
            steps: Checkpoint steps, length T + 1.
            attrs: Extra attributes (method, tolerance, config, evaluation details...).
            rows_per_chunk: Rows per ``lca`` chunk (0 = automatic, at most T); every per-row array uses the same.
            fingerprints: uint8 ``(T + 1, 16)`` checkpoint fingerprints (None: unknown, stored as zeros).
            durable: fsync every file of the new store, and later each block before it is marked done.
            columns: What ``lca``'s columns hold (:mod:`lca_cli.core.columns`); None: one per parameter.
            lca_compressors: Zarr compressors of ``lca`` (None: the format's default,
                :data:`lca_cli.store.format.LCA_COMPRESSORS`, which is none); the hook ``scripts/bench_store.py``
                compares codecs with. Readers need nothing more: the codecs are in the array's metadata.
            fence: The store lock's fence: ``path`` lies in its folder, and every write is fenced.

        Returns:
            The store, open for writing.

        Raises:
            StoreError: If something exists at ``path``.
            StorageError: If the file system refuses the writes.

        """
        p = Path(path)
        if p.exists():
            raise StoreError(f"{p} already exists; LcaStore.create never writes over anything")
        columns = columns or Columns.build(layout)
        rows = choose_rows_per_chunk(columns.size, rows_per_chunk, len(steps) - 1)  # fitted to T rows
        all_attrs = root_attrs({**attrs, SCHEME_ATTR: SCHEME}, layout, sets, len(steps), rows, columns)
        fps = np.zeros((len(steps), FINGERPRINT_BYTES), np.uint8) if fingerprints is None else fingerprints
        if fps.shape != (len(steps), FINGERPRINT_BYTES):
            raise ValueError(f"fingerprints must be ({len(steps)}, {FINGERPRINT_BYTES}), not {fps.shape}")
        with storage_errors(f"cannot create {p}"):
            # The attributes go into the group's first zarr.json: a creation killed later is recognisable.
            fence.mkdir(p) if fence is not None else p.mkdir(parents=True)
            group = zarr.create_group(store=FencedStore(p, fence=fence), zarr_format=3, attributes=all_attrs)
            compressors = store_format.LCA_COMPRESSORS if lca_compressors is None else lca_compressors
            create_arrays(group, sets, steps, fps, len(layout.params), rows, columns, compressors)
            write_coordinates(group, layout, sets, steps, all_attrs, columns)
            if durable:
                fsync_tree(p)
        return cls(p, group, durable, fence)

    @classmethod
    def open(
        cls, path: str | Path, mode: Literal["r", "r+"] = "r", *, check: bool = False, durable: bool = True,
        fence: Fence | None = None,
    ) -> LcaStore:  # fmt: skip
        """Open an existing store.

        Reads check what they read (a chunk missing for a done row is an error, never fill values, and
        checksums catch the rest); ``check`` also looks at every chunk up front.

        Args:
            path: Store directory.
            mode: ``"r"`` to read, ``"r+"`` to compute into it.
            check: Run the cheap integrity check (:func:`lca_cli.store.integrity.quick_check`: every chunk a done
                row needs exists) now.
            durable: See :meth:`create`.
            fence: See :meth:`create` (``"r+"`` only).

        Returns:
            The store.

        Raises:
            StoreError: If ``path`` does not exist, is not an lca store, has a store format this lca does not
                read (:data:`~lca_cli.store.format.READABLE_VERSIONS`), or (with ``check``) is damaged.

        """
        p = Path(path)
        if not p.exists():
            raise StoreError(f"{p} does not exist; run `lca compute RUN_DIR --out {p}` first")
        if not p.is_dir():
            raise StoreError(f"{p} is a file, not an lca store (a store is a folder)")
        try:
            # Never the consolidated metadata: it is for other readers, and stale while a compute runs.
            where = FencedStore(p, fence=fence) if mode == "r+" else str(p)  # fenced; never re-creates a deleted one
            group = zarr.open_group(store=where, mode=mode, use_consolidated=False)
            attrs = dict(group.attrs)
        except (zarr.errors.GroupNotFoundError, FileNotFoundError, NotADirectoryError):
            raise StoreError(f"{p} is not an lca store (no Zarr group there)") from None
        except Exception as exc:  # truncated or garbled zarr.json: JSON, key or type errors
            raise StoreError(
                f"{p}: its zarr.json cannot be read ({type(exc).__name__}): not an lca store, or a damaged one"
            ) from None
        if "params" not in attrs or "sets" not in attrs or "format_version" not in attrs:
            raise StoreError(f"{p} is a Zarr group but not an lca store (no lca attributes)")
        check_format_version(p, attrs)
        try:
            store = cls(p, group, durable, fence)
        except Exception as exc:
            raise StoreError(f"{p}: its attributes are damaged ({type(exc).__name__}: {exc})") from None
        store._check_arrays()
        validate(store)  # shapes, chunks and attributes against each other, before anything is sized by them
        if check:
            quick_check(store)
        return store

    def _check_arrays(self) -> None:
        for name in self.sets:
            try:
                found = self.group[name]
            except KeyError:
                raise StoreError(f"{self.path}: evaluation set {name!r} is missing; the store is damaged") from None
            except Exception as exc:
                raise StoreError(
                    f"{self.path}: the metadata of set {name!r} cannot be read ({type(exc).__name__}); the store "
                    "is damaged"
                ) from None
            if not isinstance(found, zarr.Group):
                raise StoreError(f"{self.path}: {name!r} is not a group; the store is damaged")
        for name in required_arrays(self.sets):
            try:
                self.node(name)
            except KeyError:
                raise StoreError(f"{self.path}: array {name!r} is missing; the store is damaged") from None
            except Exception as exc:
                raise StoreError(
                    f"{self.path}: the metadata of array {name!r} cannot be read ({type(exc).__name__}); "
                    "the store is damaged"
                ) from None

    def relocate(self, path: Path) -> None:
        """Point this handle at the same store after it was moved to ``path`` (a swap into place)."""
        self.path = path
        self.group = zarr.open_group(store=FencedStore(path, fence=self.fence), mode="r+", use_consolidated=False)
        self._nodes.clear()

    # -- reading --------------------------------------------------------------------------------------

    @property
    def format_version(self) -> int:
        """On-disk layout version (:data:`~lca_cli.store.format.FORMAT_VERSION` for stores this lca creates)."""
        return int(self.attrs["format_version"])

    @property
    def steps(self) -> np.ndarray:
        """Checkpoint steps, shape ``(T + 1,)``."""
        with reading(self.path, "steps"):
            return np.asarray(self._steps_array()[: self.n_pairs + 1])

    @property
    def fingerprints(self) -> np.ndarray:
        """Checkpoint fingerprints, uint8 ``(T + 1, 16)`` (all-zero rows: unknown)."""
        with reading(self.path, "fingerprint"):
            return np.asarray(self.node("fingerprint")[: self.n_pairs + 1])

    def _steps_array(self) -> zarr.Array:
        return self.node("steps")

    def node(self, key: str) -> zarr.Array:
        """An array by its path in the store (``"steps"``, ``"train/lca"``), its handle kept for later calls.

        Raises:
            KeyError: If there is no such array.

        """
        node = self._nodes.get(key)
        if node is None:
            found = self.group[key]
            assert isinstance(found, zarr.Array)
            # Write every chunk, even one equal to the fill value (Zarr skips those by default): a missing
            # chunk then always means damage, never "all fill values".
            node = self._nodes[key] = found.with_config({"write_empty_chunks": True})
        return node

    @property
    def n_pairs(self) -> int:
        """Number of pairs T (rows of ``lca``)."""
        length = int(self._steps_array().shape[0])
        committed = self.attrs.get("n_checkpoints")
        return (min(length, int(committed)) if committed is not None else length) - 1

    @property
    def rows_per_chunk(self) -> int:
        """Rows per ``lca`` chunk."""
        return int(self.array(self.sets[0], "lca").chunks[0])

    @property
    def column_layout(self) -> Layout:
        """``lca``'s columns as a layout (:meth:`Columns.column_layout`): :attr:`layout` for per-parameter rows.

        Readers that group ``lca`` columns by layer or neuron use this, so they work at the resolution stored.
        """
        return self.columns.column_layout(self.layout)

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
        try:
            return self.node(f"{set_name}/{name}")
        except KeyError:
            raise StoreError(f"{self.path}: no array {set_name}/{name} (store format {self.format_version})") from None

    def read(self, set_name: str, name: str) -> np.ndarray:
        """Read a whole small per-iteration array (not ``lca``) into memory.

        Rows past the stored steps (left by an interrupted append, until ``compute`` heals it) are cut off, so
        readers always see ``T`` rows (``T + 1`` for ``loss``). ``loss`` is completed from ``loss_end`` at
        the end checkpoint of done rows whose next block is not done (a block's end loss is stored with its
        last row).

        Raises:
            StoreError: If a chunk is damaged (checksum mismatch, truncated), or missing for a done row.

        """
        arr = self.array(set_name, name)
        n = min(self.n_pairs + (1 if name == "loss" else 0), arr.shape[0])
        key = f"{set_name}/{name}"
        cached = self._cache.get(key)
        if cached is not None and name != "loss":  # loss is completed from loss_end below, each time
            return cached.copy()
        with reading(self.path, key):
            fast = read_rows(self.path, key, arr, n)
            if fast is None:
                data = np.asarray(arr[:n])
            else:
                data, missing = fast
                if missing and name != "done":  # a missing done chunk only means "not done"
                    self._require_chunks(key, missing, int(arr.chunks[0]))
        if self.read_only and data.nbytes <= CACHE_BYTES:
            # Summaries read the same per-row arrays several times (done 4 times by `summarize`); opened for
            # reading, a store is a snapshot.
            self._cache[key] = data.copy()
        if name == "loss":
            done = self.read(set_name, "done").astype(bool)
            end = self.read(set_name, "loss_end")
            gap = done & np.isnan(data[1 : len(done) + 1])  # the next block is not done yet
            data[1 : len(done) + 1][gap] = end[gap]
        return data

    def _require_chunks(self, node: str, missing: Sequence[int], rows: int) -> None:
        """Raise if any of these missing row chunks of a set's array holds a done row."""
        set_name = node.rsplit("/", 1)[0]
        done = self.read(set_name, "done").astype(bool)
        for i in missing:
            first = min(i * rows, len(done))
            hit = np.flatnonzero(done[first : (i + 1) * rows])
            if node.endswith("/loss") and not hit.size and i * rows == len(done) and len(done) and done[-1]:
                continue  # loss[T] alone in its chunk: loss_end of the last row holds it
            if hit.size:
                raise StoreError(
                    f"{self.path} is damaged: {node} chunk {i} is missing but rows {first + hit[0]}..{first + hit[-1]} "
                    f"are marked done; `lca verify {self.path}` lists the damage and `lca compute RUN_DIR --out "
                    "STORE --repair` recomputes it"
                )

    def _check_lca_chunks(self, set_name: str, start: int, stop: int) -> None:
        """Raise if an ``lca`` chunk holding a done row in ``start..stop`` is missing (before streaming)."""
        node = f"{set_name}/lca"
        arr = self.array(set_name, "lca")
        step = int(arr.chunks[0])
        done = self.read(set_name, "done").astype(bool)[start:stop]
        need = sorted({(start + int(t)) // step for t in np.flatnonzero(done)})
        missing = [i for i in need if not all(f.exists() for f in chunk_files(self.path, node, arr, [i]))]
        if missing:
            self._require_chunks(node, missing, step)

    def done(self, set_name: str | None = None) -> np.ndarray:
        """Done mask ``(T,)``; for ``None``, rows done in every set."""
        names = [set_name] if set_name else self.sets
        masks = [self.read(s, "done").astype(bool) for s in names]
        return np.logical_and.reduce(masks) if masks else np.zeros(self.n_pairs, bool)

    def iter_lca(
        self,
        set_name: str,
        start: int = 0,
        stop: int | None = None,
        *,
        read_ahead: bool = True,
        request_bytes: int | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Stream ``lca`` rows ``start..stop`` chunk by chunk (never the whole array at once).

        Rows are read in requests of several whole chunks (:func:`lca_cli.store.chunks.stream_rows`), the next
        one in a background thread with ``read_ahead``: memory is bounded by two requests, whatever the length.

        Args:
            set_name: Evaluation set.
            start: First row.
            stop: One past the last row (default T).
            read_ahead: Read the next request while the caller processes this one.
            request_bytes: Bytes per read request (default :data:`~lca_cli.store.format.READ_BYTES`; the hook
                ``scripts/bench_store.py`` measures other sizes with). Whole chunks, at least one.

        Yields:
            ``(first_row, rows)`` with ``rows`` float32 ``(r, P)``, never crossing a row-chunk boundary (views
            into the request's array: holding one keeps that whole request in memory).

        Raises:
            StoreError: If a chunk is damaged.

        """
        arr = self.array(set_name, "lca")
        stop = min(arr.shape[0], self.n_pairs) if stop is None else stop
        if start < stop:
            self._check_lca_chunks(set_name, start, stop)
        budget = store_format.READ_BYTES if request_bytes is None else request_bytes
        yield from stream_rows(
            self.path, f"{set_name}/lca", arr, start, stop, read_ahead=read_ahead, request_bytes=budget
        )

    # -- chunk files (integrity checks and durability) ------------------------------------------------

    def nodes(self) -> list[str]:
        """Paths of every array of the store (``steps``, ``train/lca``, ...) that exists."""
        names = ["steps", "fingerprint", *COORDINATES] + [
            f"{s}/{a}" for s in self.sets for a in ("lca", "loss", *PER_ROW, *PER_TENSOR, *SET_COORDINATES)
        ]
        out = []
        for name in names:
            try:
                self.node(name)
            except KeyError:
                continue
            out.append(name)
        return out

    def chunk_size(self, node: str) -> int | None:
        """Bytes of every stored chunk file of an array, or None when a compressor makes sizes vary."""
        return chunk_size(self.node(node))

    def chunk_files(self, node: str, row_chunks: Iterable[int]) -> list[Path]:
        """Chunk files of an array for the given chunk indices along its first axis (every column chunk).

        Args:
            node: Array path (``"train/lca"``).
            row_chunks: Chunk indices along axis 0.

        Returns:
            The files' paths (existing or not).

        """
        return chunk_files(self.path, node, self.node(node), row_chunks)

    def row_chunks(self, node: str) -> int:
        """Number of chunks along an array's first axis (within the committed steps for per-row arrays)."""
        arr = self.node(node)
        name = node.rsplit("/", 1)[-1]
        if name in ("tensor", "layer", "parameter_tensor", "neuron"):
            n = int(arr.shape[0])
        else:
            n = self.n_pairs + (1 if name in PER_CHECKPOINT else 0)
        return math.ceil(min(n, arr.shape[0]) / arr.chunks[0])

    def rewrite_coordinates(self) -> None:
        """Delete and write again the coordinate arrays (a repair: they follow from the layout and steps)."""
        with storage_errors(f"writing {self.path}"):
            for name in [*COORDINATES, *(f"{s}/{c}" for s in self.sets for c in SET_COORDINATES)]:
                with contextlib.suppress(KeyError):
                    del self.group[name]
                self._nodes.pop(name, None)
            steps = [int(x) for x in self.steps]
            write_coordinates(self.group, self.layout, self.sets, steps, self.attrs, self.columns)
            if self.durable:
                fsync_tree(self.path)

    # -- writing --------------------------------------------------------------------------------------

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Merge attributes into the store's root (this also drops consolidated metadata until re-consolidated)."""
        with storage_errors(f"writing {self.path}"):
            self.group.attrs.update(attrs)
        self.attrs.update(attrs)

    def require_current(self) -> None:
        """Raise the one-line :class:`StoreError` if this store's format cannot be computed into.

        :meth:`open` already refuses every format this lca does not read, and it computes into each of them.
        """
        check_format_version(self.path, self.attrs)

    def extend(self, steps: Sequence[int], fingerprints: np.ndarray | None = None) -> None:
        """Grow the store to new checkpoints (append); the stored steps must be a prefix of ``steps``.

        Arrays and fingerprints are grown first, then ``steps`` is written, and the ``n_checkpoints``
        attribute commits the new length last, so an interruption leaves the old, consistent store (longer
        arrays are harmless: rows past the committed steps are never read or marked done).

        Args:
            steps: All checkpoint steps now in the run.
            fingerprints: uint8 ``(len(steps), 16)``; rows for the new checkpoints are stored.

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
        with storage_errors(f"writing {self.path}"):
            grows = len(new) != len(old) or any(self.array(s, "lca").shape[0] != n_pairs for s in self.sets)
            if grows:
                self.drop_consolidated()  # shapes are about to change: readers must not trust the old summary
            for s in self.sets:
                # Also when no step is new: a run killed inside an earlier extend left arrays longer than steps,
                # and a done mask longer than T would make the pipeline plan pairs past the last checkpoint.
                for name in ("lca", *PER_ROW, *PER_TENSOR):
                    arr = self.array(s, name)
                    if arr.shape[0] != n_pairs:
                        arr.resize((n_pairs, *arr.shape[1:]))
                if self.array(s, "loss").shape[0] != n_pairs + 1:
                    self.array(s, "loss").resize((n_pairs + 1,))
            fp = self.node("fingerprint")
            if fp.shape[0] != len(new):
                fp.resize((len(new), FINGERPRINT_BYTES))
            if fingerprints is not None and len(new) > len(old):
                fp[len(old) :] = fingerprints[len(old) :]
            if grows or self._coordinate_length() != len(new):
                write_step_coordinates(self.group, new)
            st = self._steps_array()
            if st.shape[0] != len(new):
                st.resize((len(new),))
            if len(new) > len(old):
                st[len(old) :] = new[len(old) :]
            if self.durable and len(new) > len(old):
                self._fsync_grown(len(old), len(new))
            if self.attrs.get("n_checkpoints") != len(new):
                self.update_attrs({"n_checkpoints": len(new)})

    def _fsync_grown(self, old: int, new: int) -> None:
        """Fsync what an append from ``old`` to ``new`` checkpoints wrote, before it is committed."""
        grown = [*self.chunk_files("steps", range(self.row_chunks("steps"), math.ceil(new / SMALL_ROWS)))]
        grown += self.chunk_files("steps", [(old - 1) // SMALL_ROWS])
        grown += self.chunk_files("fingerprint", range((old - 1) // SMALL_ROWS, math.ceil(new / SMALL_ROWS)))
        fsync_paths([*grown, *(self.path / n / "zarr.json" for n in self.nodes())])

    def _coordinate_length(self) -> int | None:
        try:
            return int(self.group["checkpoint"].shape[0])  # type: ignore[union-attr]
        except KeyError:
            return None

    def has_consolidated(self) -> bool:
        """Whether the root ``zarr.json`` holds consolidated metadata now."""
        try:
            root = json.loads((self.path / "zarr.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return root.get("consolidated_metadata") is not None

    def drop_consolidated(self) -> None:
        """Remove consolidated metadata from the root, if any (before shapes or attributes change)."""
        if self.has_consolidated():
            # The group was opened without consolidated metadata: rewriting its attributes rewrites zarr.json
            # without it.
            with storage_errors(f"writing {self.path}"):
                self.group.attrs.update(dict(self.group.attrs))

    def consolidate(self) -> None:
        """Write consolidated metadata (all arrays' metadata in the root ``zarr.json``): one read for xarray.

        Called when a compute that changed the store finishes. Zarr warns that consolidated metadata is not yet
        part of the Zarr v3 specification; xarray and zarr-python read it, and other readers ignore it, so the
        warning is silenced.
        """
        with warnings.catch_warnings(), storage_errors(f"writing {self.path}"):
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(str(self.path))
            if self.durable:
                fsync_paths([self.path / "zarr.json"])

    def set_fingerprints(self, indices: Sequence[int], values: np.ndarray) -> None:
        """Record new fingerprints for checkpoints no done row came from yet (a replaced checkpoint).

        Args:
            indices: Checkpoint indices.
            values: uint8 ``(len(indices), 16)``.

        """
        fp = self.node("fingerprint")
        with storage_errors(f"writing {self.path}"):
            for i, v in zip(indices, values, strict=True):
                fp[i] = v
            if self.durable:
                fsync_paths(self.chunk_files("fingerprint", sorted({i // SMALL_ROWS for i in indices})))

    def write_block(self, set_name: str, rows: BlockRows) -> None:
        """Write rows of one set (normally within one row chunk: a block's own chunks); ``done`` last.

        The data chunks are written, fsynced (when :attr:`durable`), and only then is ``done`` set, so a row
        marked done always has its data on disk.

        Args:
            set_name: Evaluation set.
            rows: The rows.

        Raises:
            StorageError: If the file system refuses (disk full, read-only, permissions).

        """
        a, b = rows.start, rows.start + rows.count
        step = self.rows_per_chunk
        chunks = range(a // step, (b - 1) // step + 1)
        written = ["lca", "loss", "loss_end", "residual", "splits", "flagged", "buffer_lca", "l1_change",
                   *PER_TENSOR]  # fmt: skip
        rows_ = slice(a, b)
        # One write per array: two writes into one chunk, run concurrently, would each rewrite the whole chunk.
        loss: tuple[str, slice, np.ndarray] = ("loss", rows_, rows.loss[:-1])
        extra: list[Path] = []
        if b == self.n_pairs:  # the run's last checkpoint: no later block starts there (yet)
            loss = ("loss", slice(a, b + 1), rows.loss)
            extra = self.chunk_files(f"{set_name}/loss", [b // step])
        writes = [loss, ("loss_end", rows_, rows.loss[1:])]
        writes += [(name, rows_, getattr(rows, name)) for name in ("residual", "splits", "flagged", "buffer_lca")]
        writes += [(name, rows_, getattr(rows, name)) for name in PER_TENSOR]
        l1 = np.full(rows.count, np.nan) if rows.l1_change is None else rows.l1_change
        writes.append(("l1_change", rows_, l1))
        with storage_errors(f"writing {self.path}"), fenced(self.fence):
            # lca's rows first, as whole chunks made here when they are big (lca_cli.store.direct); else in
            # Zarr's round trip with the rest.
            lca, store = self.array(set_name, "lca"), self.group.store
            put = store.put_file if isinstance(store, FencedStore) else None
            if put is None or not write_chunks(lca, f"{set_name}/lca", rows_, rows.lca, put, self._stage):
                writes.append(("lca", rows_, rows.lca))
            write_all([(self.array(set_name, name), where, np.asarray(v)) for name, where, v in writes])
            if self.durable:
                fsync_paths([*extra, *(f for n in written for f in self.chunk_files(f"{set_name}/{n}", chunks))])
            self.array(set_name, "done")[a:b] = True
            if self.durable:
                fsync_paths(self.chunk_files(f"{set_name}/done", chunks))
