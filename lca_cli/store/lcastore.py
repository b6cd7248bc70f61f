"""The Zarr store: the interface between computing and reporting.

Layout (Zarr format 3 group; format 2 of this layout)::

    STORE/                   attrs: format_version, lca_cli_version, params, method, tolerance, rtol,
                             max_splits, config, identity, evaluation, sets, buffers, helped_rule,
                             n_checkpoints, checksum, ...
      steps         int64   (T+1,)    step of each checkpoint
      fingerprint   uint8   (T+1, 16) fingerprint of each checkpoint file (lca_cli.store.identity)
      <set>/                          one group per evaluation set
        lca           float32 (T, P)  LCA of parameter p over steps[t] -> steps[t+1] (loss units)
        loss          float64 (T+1,)  loss on the set at each checkpoint
        loss_end      float64 (T,)    loss at checkpoint t + 1 as computed with row t (= loss[t + 1])
        residual      float64 (T,)    (loss[t+1] - loss[t]) - sum_p lca[t, p] - buffer_lca[t]
        splits        int32   (T,)    sub-intervals used (1 for euler)
        flagged       bool    (T,)    residual still over tolerance at the cap
        l1_change     float64 (T,)    relative L1 change of the row at the last refinement (accuracy indicator)
        done          bool    (T,)    row t is complete (written last: resume trusts only this)
        tensor_lca    float64 (T, K)  per-tensor sums of the float64 LCA row (K = number of tensors)
        tensor_helped int64   (T, K)  per-tensor count of parameters with LCA < 0
        tensor_hurt   int64   (T, K)  per-tensor count of parameters with LCA > 0
        buffer_lca    float64 (T,)    share of BatchNorm running statistics (bn_mode = running), else 0

Every per-row array is chunked like ``lca``'s rows, so the rows of one block (a row chunk) live in chunks of
their own: writing a block never reads or rewrites another block's rows, whichever process writes it.
``loss`` is chunked the same way and a block writes the losses at its own start checkpoints; the loss at
its end checkpoint is ``loss_end`` of its last row (:meth:`LcaStore.read` merges the two). Each chunk
carries a CRC-32C checksum (verified on every read); every chunk is written, even when it holds only fill
values, so a missing chunk of a done row is damage, never "all zeros" (:mod:`lca_cli.store.integrity`).

Write order: a block's data chunks, then fsync, then its ``done`` chunk; Zarr's local store writes each
chunk file atomically (temporary file, then rename). New checkpoints are committed by the
``n_checkpoints`` attribute, written after the arrays grew and ``steps`` was written. Format 1 (before
checksums; per-row arrays in 4096-row chunks shared by blocks) is still read.

For xarray (:func:`xarray.open_datatree`, :func:`xarray.open_zarr`) every array has dimension names, and
coordinates label them: at the root ``checkpoint`` (the steps), ``iteration`` (each pair's start step) and
``tensor`` (parameter names), inherited by the set groups; in each set group ``layer`` (per tensor) and
``parameter_tensor`` (per parameter column: index of its tensor). Metadata is consolidated when a compute
finishes and dropped before a compute changes shapes or attributes, so it is never trusted while one runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import Crc32cCodec
from zarr.core.sync import sync as zarr_sync

from lca_cli import __version__
from lca_cli.core.columns import OTHER, Columns
from lca_cli.core.layout import Layout, layer_name
from lca_cli.errors import LcaError, StoreError
from lca_cli.store.placement import fsync_paths, fsync_tree, storage_errors

__all__ = ["FORMAT_VERSION", "HELPED_RULE", "BlockRows", "LcaStore", "choose_rows_per_chunk", "column_counts"]

FORMAT_VERSION = 2
#: Oldest store format this lca still reads (summaries and reports); computing needs :data:`FORMAT_VERSION`.
OLDEST_READABLE = 1
#: Bytes of a checkpoint fingerprint (``fingerprint`` array).
FINGERPRINT_BYTES = 16
HELPED_RULE = (
    "a parameter helped on an iteration when its LCA < 0 and hurt when LCA > 0; exact zeros (parameters "
    "that did not move or have zero gradient, e.g. constant input pixels) count as neither, and helped "
    "fractions are helped / (helped + hurt)"
)
#: Target size of one ``lca`` chunk (scripts/bench_store.py, BENCHMARKS.md). Each block write also writes
#: the small per-row arrays (loss, residual, ...) and fsyncs them, a fixed cost per block, so larger chunks cut
#: the writer's cost per row (MNIST-FC: 3.3 ms at 4 MiB, 1.1-1.5 at 8, 0.7-1.0 at 16) and speed streaming
#: reads; but two blocks are in memory while computing (the one being written and the one being computed), so
#: peak memory grows with the chunk (30 vs 300 MNIST-FC pairs, measured with up to three blocks in flight:
#: 1.04x at 8 MiB, 1.10x at 16 MiB; with two, 1.03x at 8 MiB). 8 MiB: 24 MNIST-FC rows, 7 ResNet-20 rows.
CHUNK_BYTES = 8 << 20
#: Bytes of ``lca`` rows per read request when streaming (:meth:`LcaStore.iter_lca`): whole chunks, about this
#: many. Measured (BENCHMARKS.md) with one request in flight: 0.89 / 0.67 GB/s cold on 2 / 4 GB stores (103% /
#: 82% of the raw file read), ahead of 8, 64 and 128 MiB requests cold and warm; 0.57-0.63 without read-ahead.
READ_BYTES = 32 << 20
#: A store opened for reading keeps per-row arrays up to this size once read (summaries read some of them
#: several times).
CACHE_BYTES = 32 << 20
#: Columns per ``lca`` chunk at most (very wide models get column chunks too).
MAX_CHUNK_COLS = 1 << 22
#: Rows per chunk of the store-level per-checkpoint arrays (``steps``, ``fingerprint``), written only at
#: creation and append (under the store lock); format 1 also used it for the per-row arrays.
SMALL_ROWS = 4096
#: Codec of ``lca``: none. Measured by scripts/bench_store.py (BENCHMARKS.md): LCA values have full-entropy
#: mantissas, so compression saves little (lz4 0.92x, zstd 0.87x, blosc-lz4 with bitshuffle 0.83x of the raw
#: size) and costs write and read speed (zarr's default zstd: reads about 2x slower than uncompressed).
LCA_COMPRESSORS: Any = None


def _codecs(compressors: Any = None) -> list[Any]:
    """Bytes-to-bytes codecs of an array: its compressors, then a CRC-32C checksum of the stored chunk."""
    return [*(compressors or []), Crc32cCodec()]


_PER_SET_1D = {
    "residual": ("float64", 0.0),
    "splits": ("int32", 0),
    "flagged": ("bool", False),
    "l1_change": ("float64", np.nan),
    "done": ("bool", False),
    "buffer_lca": ("float64", 0.0),
    "loss_end": ("float64", np.nan),
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


@contextlib.contextmanager
def _reading(path: Path, what: str) -> Iterator[None]:
    """Turn any failure to read or decode chunks (checksum mismatch, truncation, I/O error) into one line."""
    try:
        yield
    except (LcaError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(
            f"{path}: cannot read {what} ({msg[:160]}): the store is damaged; `lca verify {path}` lists the "
            "damaged rows and `lca compute RUN_DIR --out STORE --repair` recomputes them"
        ) from None


class LcaStore:
    """An lca Zarr store, opened for reading or for computing into.

    Use :meth:`create` or :meth:`open`; never the constructor directly.

    Attributes:
        path: Store directory.
        durable: fsync each block's chunks before marking it done (and the store's files at creation).

    """

    def __init__(self, path: Path, group: zarr.Group, durable: bool = True) -> None:
        self.path = path
        self.group = group
        self.durable = durable
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
            rows_per_chunk: Rows per ``lca`` chunk (0 = automatic); every per-row array uses the same.
            fingerprints: uint8 ``(T + 1, 16)`` checkpoint fingerprints (None: unknown, stored as zeros).
            durable: fsync every file of the new store, and later each block before it is marked done.
            columns: What ``lca``'s columns hold (:mod:`lca_cli.core.columns`); None: one per parameter.

        Returns:
            The store, open for writing.

        Raises:
            StoreError: If something exists at ``path``.
            StorageError: If the file system refuses the writes.

        """
        p = Path(path)
        if p.exists():
            raise StoreError(f"{p} already exists; LcaStore.create never writes over anything")
        n_pairs = len(steps) - 1
        columns = columns or Columns.build(layout)
        width = columns.size  # C: P for the plain layout
        rows = choose_rows_per_chunk(width, rows_per_chunk)
        k = len(layout.params)
        all_attrs = {
            **attrs,
            "format_version": FORMAT_VERSION,
            "lca_cli_version": __version__,
            "params": layout.to_attrs(),
            "sets": list(sets),
            "rows_per_chunk": rows,
            "helped_rule": HELPED_RULE,
            "n_checkpoints": len(steps),
            "checksum": "crc32c",
            "coordinates": "steps",
        }
        if not columns.full:  # the column map (the plain per-parameter layout needs none: older stores lack it)
            all_attrs |= {"granularity": columns.granularity, "columns": columns.to_attrs()}
        fps = np.zeros((len(steps), FINGERPRINT_BYTES), np.uint8) if fingerprints is None else fingerprints
        if fps.shape != (len(steps), FINGERPRINT_BYTES):
            raise ValueError(f"fingerprints must be ({len(steps)}, {FINGERPRINT_BYTES}), not {fps.shape}")
        cols = max(1, min(width, MAX_CHUNK_COLS))
        small = _codecs()
        with storage_errors(f"cannot create {p}"):
            # The attributes go into the group's first zarr.json: a creation killed later is recognisable.
            group = zarr.create_group(str(p), zarr_format=3, attributes=all_attrs)
            st = group.create_array(
                "steps", shape=(len(steps),), chunks=(SMALL_ROWS,), dtype="int64", fill_value=-1, compressors=small,
                dimension_names=("checkpoint",), config={"write_empty_chunks": True},
            )  # fmt: skip
            st[:] = np.asarray(steps, dtype=np.int64)
            fp = group.create_array(
                "fingerprint", shape=fps.shape, chunks=(SMALL_ROWS, FINGERPRINT_BYTES), dtype="uint8", fill_value=0,
                compressors=small, dimension_names=("checkpoint", "byte"), config={"write_empty_chunks": True},
            )  # fmt: skip
            fp[:] = fps
            for name in sets:
                sub = group.require_group(name)
                sub.create_array(
                    "lca",
                    shape=(n_pairs, width),
                    chunks=(rows, cols),
                    dtype="float32",
                    fill_value=0.0,
                    compressors=_codecs(LCA_COMPRESSORS),
                    dimension_names=("iteration", columns.dimension),
                )
                sub.create_array(
                    "loss", shape=(n_pairs + 1,), chunks=(rows,), dtype="float64", fill_value=np.nan,
                    compressors=small, dimension_names=("checkpoint",),
                )  # fmt: skip
                for arr, (dtype, fill) in _PER_SET_1D.items():
                    sub.create_array(
                        arr, shape=(n_pairs,), chunks=(rows,), dtype=dtype, fill_value=fill,
                        compressors=small, dimension_names=("iteration",),
                    )  # fmt: skip
                for arr, (dtype, fill) in _PER_SET_TENSOR.items():
                    sub.create_array(
                        arr, shape=(n_pairs, k), chunks=(rows, max(1, k)), dtype=dtype, fill_value=fill,
                        compressors=small, dimension_names=("iteration", "tensor"),
                    )  # fmt: skip
            _write_coordinates(group, layout, sets, steps, all_attrs, columns)
            if durable:
                fsync_tree(p)
        return cls(p, group, durable)

    @classmethod
    def open(
        cls, path: str | Path, mode: Literal["r", "r+"] = "r", *, check: bool | None = None, durable: bool = True
    ) -> LcaStore:
        """Open an existing store.

        Args:
            path: Store directory.
            mode: ``"r"`` to read, ``"r+"`` to compute into it.
            check: Run the cheap integrity check (:func:`lca_cli.store.integrity.quick_check`: every chunk a done
                row needs exists and has its size) now; default: when reading a format-1 store. Format-2
                reads check what they read: a chunk missing for a done row is an error, never fill values.
            durable: See :meth:`create`.

        Returns:
            The store.

        Raises:
            StoreError: If ``path`` does not exist, is not an lca store of a known format version, or (with
                ``check``) is damaged.

        """
        p = Path(path)
        if not p.exists():
            raise StoreError(f"{p} does not exist; run `lca compute RUN_DIR --out {p}` first")
        if not p.is_dir():
            raise StoreError(f"{p} is a file, not an lca store (a store is a folder)")
        try:
            # Never the consolidated metadata: it is for other readers, and stale while a compute runs.
            group = zarr.open_group(str(p), mode=mode, use_consolidated=False)
            attrs = dict(group.attrs)
        except (zarr.errors.GroupNotFoundError, FileNotFoundError, NotADirectoryError):
            raise StoreError(f"{p} is not an lca store (no Zarr group there)") from None
        except Exception as exc:  # truncated or garbled zarr.json: JSON, key or type errors
            raise StoreError(
                f"{p}: its zarr.json cannot be read ({type(exc).__name__}): not an lca store, or a damaged one"
            ) from None
        version: Any = attrs.get("format_version")
        if "params" not in attrs or "sets" not in attrs or version is None:
            raise StoreError(f"{p} is a Zarr group but not an lca store (no lca attributes)")
        if int(version) > FORMAT_VERSION:
            raise StoreError(f"{p} has store format {version}, newer than this lca ({FORMAT_VERSION}); upgrade lca-cli")
        try:
            store = cls(p, group, durable)
        except Exception as exc:
            raise StoreError(f"{p}: its attributes are damaged ({type(exc).__name__}: {exc})") from None
        store._check_arrays()
        # Format 2 checks lazily what is read (a missing chunk of a done row is found by the read itself,
        # and checksums catch the rest); format 1 has no checksums: its chunks are checked up front.
        if check if check is not None else (mode == "r" and store.format_version < 2):
            from lca_cli.store.integrity import quick_check

            quick_check(store)
        return store

    def _required(self) -> list[str]:
        names = {"steps"} | {f"{s}/{a}" for s in self.sets for a in ("lca", "loss", "done")}
        if self.format_version >= 2:
            names |= {"fingerprint"} | {f"{s}/{a}" for s in self.sets for a in (*_PER_SET_1D, *_PER_SET_TENSOR)}
        return sorted(names)

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
        for name in self._required():
            try:
                self._node(name)
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
        self.group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        self._nodes.clear()

    # -- reading --------------------------------------------------------------------------------------

    @property
    def format_version(self) -> int:
        """On-disk layout version (:data:`FORMAT_VERSION` for stores this lca creates)."""
        return int(self.attrs["format_version"])

    @property
    def steps(self) -> np.ndarray:
        """Checkpoint steps, shape ``(T + 1,)``."""
        with _reading(self.path, "steps"):
            return np.asarray(self._steps_array()[: self.n_pairs + 1])

    @property
    def fingerprints(self) -> np.ndarray | None:
        """Checkpoint fingerprints, uint8 ``(T + 1, 16)`` (zeros: unknown); None for format 1."""
        if self.format_version < 2:
            return None
        with _reading(self.path, "fingerprint"):
            return np.asarray(self._node("fingerprint")[: self.n_pairs + 1])

    def _steps_array(self) -> zarr.Array:
        return self._node("steps")

    def _node(self, key: str) -> zarr.Array:
        node = self._nodes.get(key)
        if node is None:
            found = self.group[key]
            assert isinstance(found, zarr.Array)
            # Write every chunk, even one equal to the fill value (Zarr skips those by default): a missing
            # chunk then always means damage, never "all fill values".
            node = self._nodes[key] = found.with_config({"write_empty_chunks": True})
        return node

    def has(self, set_name: str, name: str) -> bool:
        """Whether the store has this array (``loss_end`` appeared in format 2)."""
        try:
            self._node(f"{set_name}/{name}")
        except KeyError:
            return False
        return True

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
            return self._node(f"{set_name}/{name}")
        except KeyError:
            raise StoreError(f"{self.path}: no array {set_name}/{name} (store format {self.format_version})") from None

    def read(self, set_name: str, name: str) -> np.ndarray:
        """Read a whole small per-iteration array (not ``lca``) into memory.

        Rows past the stored steps (left by an interrupted append, until ``compute`` heals it) are cut off, so
        readers always see ``T`` rows (``T + 1`` for ``loss``). ``loss`` is completed from ``loss_end`` at
        the end checkpoint of done rows whose next block is not done (a block's end loss is stored with its
        last row).

        Raises:
            StoreError: If a chunk is damaged (checksum mismatch, truncated).

        """
        arr = self.array(set_name, name)
        n = min(self.n_pairs + (1 if name == "loss" else 0), arr.shape[0])
        key = f"{set_name}/{name}"
        cached = self._cache.get(key)
        if cached is not None:
            return cached.copy()
        with _reading(self.path, key):
            fast = self._read_plain_chunks(key, n)
            data = fast if fast is not None else np.asarray(arr[:n])
        if self.read_only and data.nbytes <= CACHE_BYTES:
            # Summaries read the same per-row arrays several times (done 4 times by `summarize`); opened for
            # reading, a store is a snapshot.
            self._cache[key] = data.copy()
        if name == "loss" and self.has(set_name, "loss_end"):
            done = self.read(set_name, "done").astype(bool)
            end = self.read(set_name, "loss_end")
            gap = done & np.isnan(data[1 : len(done) + 1])  # the next block is not done yet
            data[1 : len(done) + 1][gap] = end[gap]
        return data

    def _read_plain_chunks(self, node: str, n: int) -> np.ndarray | None:
        """Rows ``0 .. n - 1`` of a small array read straight from its chunk files (None: Zarr reads it).

        Only for arrays stored as raw bytes plus a CRC-32C checksum in whole-row chunks. Format-2 per-row
        arrays are chunked by blocks (24 rows for an 8 MiB MNIST-FC ``lca`` chunk), so a store of 12,000
        pairs has 500 chunks per array; Zarr spends ~0.3 ms on each, reading them directly ~0.06 ms
        (measured: 0.15 s against 0.03 s per array), which keeps ``lca summarize --by layer`` fast. The
        checksum is verified exactly as Zarr's ``crc32c`` codec does; a missing chunk reads as the fill
        value, as in Zarr, unless a done row is in it (then :class:`StoreError`).
        """
        arr = self._node(node)
        meta = arr.metadata
        codecs: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
        if (
            len(codecs) != 2
            or type(codecs[0]).__name__ != "BytesCodec"
            or type(codecs[1]).__name__ != "Crc32cCodec"
            or (arr.ndim == 2 and arr.chunks[1] < arr.shape[1])
        ):
            return None
        import google_crc32c  # zarr's checksum implementation (a dependency of zarr)

        endian = getattr(codecs[0], "endian", None)
        dtype = arr.dtype.newbyteorder("<" if getattr(endian, "value", "little") == "little" else ">")
        rows = int(arr.chunks[0])
        width = int(arr.chunks[1]) if arr.ndim == 2 else 1
        if meta.encode_chunk_key((7,) * arr.ndim) != "c/" + "/".join(["7"] * arr.ndim):
            return None  # not Zarr's default chunk keys
        base = os.path.join(self.path, node, "c")  # plain strings: pathlib costs more than the read here
        tail = "" if arr.ndim == 1 else "/0"
        out = np.empty((n, *arr.shape[1:]), dtype=arr.dtype)

        def one(i: int) -> bool:
            a, b = i * rows, min((i + 1) * rows, n)
            try:
                with open(f"{base}/{i}{tail}", "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                out[a:b] = arr.fill_value
                return False
            if np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
                raise ValueError(f"chunk {i}: stored and computed checksum do not match")
            chunk = np.frombuffer(raw, dtype=dtype, count=rows * width)
            out[a:b] = chunk.reshape((rows, width) if arr.ndim == 2 else (rows,))[: b - a]
            return True

        chunks = range(-(-n // rows))

        def some(part: range) -> list[int]:
            return [i for i in part if not one(i)]

        if len(chunks) < 64:
            missing = some(chunks)
        else:  # opens and reads release the GIL: a few threads, each on a quarter of the chunks
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lca-read-small") as pool:
                missing = [i for part in pool.map(some, [chunks[k::4] for k in range(4)]) for i in part]
        if missing and not node.endswith("/done"):  # a missing done chunk only means "not done"
            self._require_chunks(node, missing, rows)
        return out

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
        arr = self.array(set_name, "lca")
        step = int(arr.chunks[0])
        done = self.read(set_name, "done").astype(bool)[start:stop]
        need = sorted({(start + int(t)) // step for t in np.flatnonzero(done)})
        ncols = max(1, -(-int(arr.shape[1]) // int(arr.chunks[1])))
        base = os.path.join(self.path, set_name, "lca", "c")
        missing = [i for i in need if not all(os.path.exists(f"{base}/{i}/{j}") for j in range(ncols))]
        if missing:
            self._require_chunks(f"{set_name}/lca", missing, step)

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

        Raises:
            StoreError: If a chunk is damaged.

        """
        arr = self.array(set_name, "lca")
        stop = min(arr.shape[0], self.n_pairs) if stop is None else stop
        if start < stop:
            self._check_lca_chunks(set_name, start, stop)
        step = int(arr.chunks[0])
        per_request = step * max(1, READ_BYTES // max(1, step * 4 * int(arr.shape[1])))
        spans: list[tuple[int, int]] = []
        t = start
        while t < stop:
            end = min(stop, (t // per_request + 1) * per_request)
            spans.append((t, end))
            t = end

        def read(span: tuple[int, int]) -> np.ndarray:
            with _reading(self.path, f"{set_name}/lca rows {span[0]}..{span[1] - 1}"):
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

    # -- chunk files (integrity checks and durability) ------------------------------------------------

    def nodes(self) -> list[str]:
        """Paths of every array of the store (``steps``, ``train/lca``, ...) that exists."""
        names = ["steps", "fingerprint", *COORDINATES] + [
            f"{s}/{a}" for s in self.sets for a in ("lca", "loss", *_PER_SET_1D, *_PER_SET_TENSOR, *SET_COORDINATES)
        ]
        out = []
        for name in names:
            try:
                self._node(name)
            except KeyError:
                continue
            out.append(name)
        return out

    def chunk_size(self, node: str) -> int | None:
        """Bytes of every stored chunk file of an array, or None when a compressor makes sizes vary.

        Zarr pads edge chunks to the full chunk shape, so every chunk of an uncompressed array has one size.
        """
        arr = self._node(node)
        codecs = arr.metadata.codecs  # type: ignore[union-attr]
        names = [type(c).__name__ for c in codecs]
        if any(n not in ("BytesCodec", "Crc32cCodec") for n in names):
            return None
        size = math.prod(arr.chunks) * arr.dtype.itemsize
        return size + 4 * names.count("Crc32cCodec")

    def has_checksums(self, node: str) -> bool:
        """Whether an array's chunks end with a CRC-32C checksum."""
        return any(type(c).__name__ == "Crc32cCodec" for c in self._node(node).metadata.codecs)  # type: ignore[union-attr]

    def chunk_files(self, node: str, row_chunks: Iterable[int]) -> list[Path]:
        """Chunk files of an array for the given chunk indices along its first axis (every column chunk).

        Args:
            node: Array path (``"train/lca"``).
            row_chunks: Chunk indices along axis 0.

        Returns:
            The files' paths (existing or not).

        """
        arr = self._node(node)
        col_chunks = [range(1)] if arr.ndim == 1 else [range(math.ceil(arr.shape[1] / arr.chunks[1]) or 1)]
        out = []
        for i in row_chunks:
            for j in col_chunks[0]:
                coords = (i,) if arr.ndim == 1 else (i, j)
                out.append(self.path / node / arr.metadata.encode_chunk_key(coords))
        return out

    def row_chunks(self, node: str) -> int:
        """Number of chunks along an array's first axis (within the committed steps for per-row arrays)."""
        arr = self._node(node)
        name = node.rsplit("/", 1)[-1]
        if name in ("tensor", "layer", "parameter_tensor", "neuron"):
            n = int(arr.shape[0])
        else:
            per_checkpoint = name in ("loss", "steps", "fingerprint", "checkpoint")
            n = self.n_pairs + (1 if per_checkpoint else 0)
        return math.ceil(min(n, arr.shape[0]) / arr.chunks[0])

    def rewrite_coordinates(self) -> None:
        """Delete and write again the coordinate arrays (a repair: they follow from the layout and steps)."""
        with storage_errors(f"writing {self.path}"):
            for name in [*COORDINATES, *(f"{s}/{c}" for s in self.sets for c in SET_COORDINATES)]:
                with contextlib.suppress(KeyError):
                    del self.group[name]
                self._nodes.pop(name, None)
            _write_coordinates(
                self.group, self.layout, self.sets, [int(x) for x in self.steps], self.attrs, self.columns
            )
            if self.durable:
                fsync_tree(self.path)

    # -- writing --------------------------------------------------------------------------------------

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        """Merge attributes into the store's root (this also drops consolidated metadata until re-consolidated)."""
        with storage_errors(f"writing {self.path}"):
            self.group.attrs.update(attrs)
        self.attrs.update(attrs)

    def require_current(self) -> None:
        """Raise the one-line :class:`StoreError` if this store's format cannot be computed into."""
        if self.format_version < FORMAT_VERSION:
            raise StoreError(
                f"{self.path} was written by an older lca (store format {self.format_version}, whose blocks could "
                "overwrite each other's rows and which has no checksums); summaries and reports still read it, but "
                "to compute into it recompute it with --overwrite (or write a new store with --out)"
            )

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
        self.require_current()
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
                for name in ("lca", *_PER_SET_1D, *_PER_SET_TENSOR):
                    arr = self.array(s, name)
                    if arr.shape[0] != n_pairs:
                        arr.resize((n_pairs, *arr.shape[1:]))
                if self.array(s, "loss").shape[0] != n_pairs + 1:
                    self.array(s, "loss").resize((n_pairs + 1,))
            fp = self._node("fingerprint")
            if fp.shape[0] != len(new):
                fp.resize((len(new), FINGERPRINT_BYTES))
            if fingerprints is not None and len(new) > len(old):
                fp[len(old) :] = fingerprints[len(old) :]
            if grows or self._coordinate_length() != len(new):
                _write_step_coordinates(self.group, new)
            st = self._steps_array()
            if st.shape[0] != len(new):
                st.resize((len(new),))
            if len(new) > len(old):
                st[len(old) :] = new[len(old) :]
            if self.durable and len(new) > len(old):
                grown = [*self.chunk_files("steps", range(self.row_chunks("steps"), math.ceil(len(new) / SMALL_ROWS)))]
                grown += self.chunk_files("steps", [(len(old) - 1) // SMALL_ROWS])
                grown += self.chunk_files(
                    "fingerprint", range((len(old) - 1) // SMALL_ROWS, math.ceil(len(new) / SMALL_ROWS))
                )
                fsync_paths([*grown, *(self.path / n / "zarr.json" for n in self.nodes())])
            if self.attrs.get("n_checkpoints") != len(new):
                self.update_attrs({"n_checkpoints": len(new)})

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
        self.require_current()
        fp = self._node("fingerprint")
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
            StoreError: For a format-1 store.
            StorageError: If the file system refuses (disk full, read-only, permissions).

        """
        self.require_current()
        a, b = rows.start, rows.start + rows.count
        step = self.rows_per_chunk
        chunks = range(a // step, (b - 1) // step + 1)
        written = ["lca", "loss", "loss_end", "residual", "splits", "flagged", "buffer_lca", "l1_change",
                   *_PER_SET_TENSOR]  # fmt: skip
        rows_ = slice(a, b)
        # One write per array: two writes into one chunk, run concurrently, would each rewrite the whole chunk.
        loss: tuple[str, slice, np.ndarray] = ("loss", rows_, rows.loss[:-1])
        extra: list[Path] = []
        if b == self.n_pairs:  # the run's last checkpoint: no later block starts there (yet)
            loss = ("loss", slice(a, b + 1), rows.loss)
            extra = self.chunk_files(f"{set_name}/loss", [b // step])
        writes = [("lca", rows_, rows.lca), loss, ("loss_end", rows_, rows.loss[1:])]
        writes += [(name, rows_, getattr(rows, name)) for name in ("residual", "splits", "flagged", "buffer_lca")]
        writes += [(name, rows_, getattr(rows, name)) for name in _PER_SET_TENSOR]
        l1 = np.full(rows.count, np.nan) if rows.l1_change is None else rows.l1_change
        writes.append(("l1_change", rows_, l1))
        with storage_errors(f"writing {self.path}"):
            _write_all([(self.array(set_name, name), where, np.asarray(v)) for name, where, v in writes])
            if self.durable:
                fsync_paths([*extra, *(f for n in written for f in self.chunk_files(f"{set_name}/{n}", chunks))])
            self.array(set_name, "done")[a:b] = True
            if self.durable:
                fsync_paths(self.chunk_files(f"{set_name}/done", chunks))


def _write_all(writes: Sequence[tuple[zarr.Array, slice, np.ndarray]]) -> None:
    """Write several array regions in one round trip to zarr's event loop, all of them before returning.

    Setting the ~13 arrays of a block one by one costs zarr a hand-off to its I/O thread and back for each
    (about 0.7 ms apiece for the small ones); on a machine whose cores run the gradients, those wake-ups
    interrupt the compute threads. Gathered, 13 small writes took 5.5 instead of 8.9 ms (alone) and ``lca compute``
    on the ~2k-sample bench case was 2.3% faster (BENCHMARKS.md). Every write is awaited before an error is
    raised, so no write is still running when the caller handles it.

    Args:
        writes: ``(array, region along the first axis, values)``.

    Raises:
        Exception: The first write's failure, once every write has ended (OSError from the file system: disk
            full, read-only, permissions).

    """

    async def gather() -> list[BaseException | None]:
        return await asyncio.gather(
            *(arr.async_array.setitem(where, v) for arr, where, v in writes), return_exceptions=True
        )

    for result in zarr_sync(gather()):
        if isinstance(result, BaseException):
            raise result


#: What each per-set array holds, for readers (written into each set group's attributes).
ARRAY_DESCRIPTIONS = {
    "lca": "LCA of each parameter over each iteration, loss units; < 0 helped, > 0 hurt",
    "loss": "loss on the set at each checkpoint",
    "loss_end": "loss at checkpoint t + 1 as computed with row t (= loss[t + 1]; a block stores its end loss here)",
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
#: Coordinate arrays for xarray: at the root, and in each set group. Written at creation (``checkpoint`` and
#: ``iteration`` again when checkpoints are appended); :func:`rewrite_coordinates` rebuilds them.
COORDINATES = ("checkpoint", "iteration", "tensor")
SET_COORDINATES = ("layer", "parameter_tensor", "neuron")
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
                name, shape=(len(values),), chunks=(SMALL_ROWS,), dtype="int64", fill_value=-1, compressors=_codecs(),
                dimension_names=(name,), config={"write_empty_chunks": True},
            )  # fmt: skip
        if len(values):
            arr[:] = values


def _write_coordinates(
    group: zarr.Group,
    layout: Layout,
    sets: Sequence[str],
    steps: Sequence[int],
    attrs: dict[str, Any],
    columns: Columns | None = None,
) -> None:
    """Coordinates and descriptive attributes for xarray and other PyData readers (see the module docstring).

    The root's ``tensor``, ``checkpoint`` and ``iteration`` are index coordinates, which xarray's DataTree hands
    down to the set groups; ``steps`` (the contract's array) is declared a coordinate by the root attribute
    ``coordinates``. Each set group holds ``layer`` and ``parameter_tensor`` and names them in its own
    ``coordinates`` attribute, with the attributes a reader of that group needs. A store with other columns
    (:mod:`lca_cli.core.columns`) labels them instead: ``parameter_tensor`` per stored parameter column (-1 for the
    ``(other)`` column), ``neuron`` (a name per neuron column), or nothing more for per-tensor columns (the
    root's ``tensor``).
    """
    columns = columns or Columns.build(layout)
    _write_step_coordinates(group, np.asarray(steps, dtype=np.int64))
    k = len(layout.params)
    names = np.array([p.name for p in layout.params], dtype=object)
    layers = np.array([layer_name(p.name) for p in layout.params], dtype=object)
    every: dict[str, Any] = {"compressors": _codecs(), "config": {"write_empty_chunks": True}}  # always written
    tensor = group.create_array(
        "tensor", shape=(k,), chunks=(max(1, k),), dtype=str, dimension_names=("tensor",), **every
    )
    if k:
        tensor[:] = names
    if group.attrs.get("coordinates") != "steps":
        group.attrs.update({"coordinates": "steps"})
    offsets = np.array([p.offset for p in layout.params], dtype=np.int64)
    evaluation = attrs.get("evaluation", {}).get("sets", {}) if isinstance(attrs.get("evaluation"), dict) else {}
    for name in sets:
        sub = group.require_group(name)
        lay = sub.create_array(
            "layer", shape=(k,), chunks=(max(1, k),), dtype=str, dimension_names=("tensor",), **every
        )
        if k:
            lay[:] = layers
        coords = _write_column_coordinates(sub, layout, columns, offsets, every)
        help_columns = {
            "parameter": "parameter_tensor = index (into tensor) of each parameter column (-1: the (other) column)",
            "neuron": "neuron = name of each neuron column (layer[unit], or (other))",
            "tensor": "lca's columns are the tensors (the tensor coordinate)",
        }[columns.dimension]
        sub.attrs.update(
            {
                "set": name,
                "coordinates": " ".join(["layer", *coords]),
                "units": "loss",
                "sign": "LCA < 0: the parameter helped (lowered the loss); > 0: it hurt",
                "evaluation": evaluation.get(name, {}),
                "arrays": ARRAY_DESCRIPTIONS,
                "coordinates_help": "iteration = start step of each pair; checkpoint = step; tensor = parameter "
                f"name; {help_columns}",
            }
        )


def _write_column_coordinates(
    sub: zarr.Group, layout: Layout, columns: Columns, offsets: np.ndarray, every: dict[str, Any]
) -> list[str]:
    """The coordinate labelling ``lca``'s columns in one set group; returns the names written."""
    if columns.dimension == "tensor":
        return []  # the root's ``tensor`` coordinate labels them
    if columns.dimension == "neuron":
        labels = np.array(columns.labels(layout), dtype=object)
        arr = sub.create_array(
            "neuron", shape=(columns.size,), chunks=(max(1, columns.size),), dtype=str, dimension_names=("neuron",),
            **every,
        )  # fmt: skip
        if columns.size:
            arr[:] = labels
        return ["neuron"]
    size = columns.size
    cols = max(1, min(size, _COORD_COLS))
    pt = sub.create_array(
        "parameter_tensor", shape=(size,), chunks=(cols,), dtype="int32", dimension_names=("parameter",), **every
    )
    if columns.full:
        for start in range(0, size, cols):  # chunk by chunk: never a (P,) index array in memory
            idx = np.arange(start, min(size, start + cols), dtype=np.int64)
            pt[start : start + len(idx)] = (np.searchsorted(offsets, idx, side="right") - 1).astype(np.int32)
    else:  # some tensors' parameters, then (other): small enough to build at once
        out = np.empty(size, dtype=np.int32)
        for g in columns.groups:
            out[g.offset : g.stop] = -1 if g.name == OTHER else g.tensors[0]
        if size:
            pt[:] = out
    return ["parameter_tensor"]
