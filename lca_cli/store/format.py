"""The store's format: its version, its arrays (names, dtypes, fill values, shapes, chunks), its attributes.

Everything here is the on-disk contract (``docs/store-format.md`` is its reference for readers without lca):
changing a name, dtype, fill value or chunking here changes the format. :func:`root_attrs` and
:func:`create_arrays` lay a new store out; :mod:`.chunks` reads and writes its chunks, :mod:`.lcastore` opens,
grows and writes stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from lca_cli import __version__
from lca_cli.core.columns import Columns
from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError
from lca_cli.store.chunks import codecs

__all__ = [
    "ARRAY_DESCRIPTIONS",
    "CACHE_BYTES",
    "CHUNK_BYTES",
    "COORDINATES",
    "FINGERPRINT_BYTES",
    "FORMAT_VERSION",
    "HELPED_RULE",
    "LCA_COMPRESSORS",
    "MAX_CHUNK_BYTES",
    "MAX_CHUNK_COLS",
    "PER_ROW",
    "PER_TENSOR",
    "READABLE_VERSIONS",
    "READ_BYTES",
    "SET_COORDINATES",
    "SMALL_ROWS",
    "check_format_version",
    "choose_rows_per_chunk",
    "column_counts",
    "create_arrays",
    "required_arrays",
    "root_attrs",
]

#: The format of stores this lca creates.
FORMAT_VERSION = 2
#: Store formats this lca reads and computes into. A store of any other version is refused with one line.
READABLE_VERSIONS: tuple[int, ...] = (FORMAT_VERSION,)
#: Bytes of a checkpoint fingerprint (the ``fingerprint`` array; :mod:`lca_cli.store.identity`).
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
#: Bytes of one chunk at most (:mod:`lca_cli.store.validate` refuses metadata that claims more): a reader holds
#: a few chunks in memory, so this bounds its memory whatever a damaged ``zarr.json`` says. Automatic chunks
#: are about :data:`CHUNK_BYTES`; an explicit ``rows_per_chunk`` is capped so that chunks stay under it.
MAX_CHUNK_BYTES = 1 << 30
#: Rows per chunk of the store-level per-checkpoint arrays (``steps``, ``fingerprint``, ``checkpoint``,
#: ``iteration``), written only at creation and append (under the store lock).
SMALL_ROWS = 4096
#: Parameter columns per chunk of the ``parameter_tensor`` coordinate.
COORD_COLS = 1 << 22
#: Codec of ``lca``: none. Measured by scripts/bench_store.py (BENCHMARKS.md): LCA values have full-entropy
#: mantissas, so compression saves little (lz4 0.92x, zstd 0.87x, blosc-lz4 with bitshuffle 0.83x of the raw
#: size) and costs write and read speed (zarr's default zstd: reads about 2x slower than uncompressed).
LCA_COMPRESSORS: Any = None

#: Per-set arrays with one value per pair, dimension ``iteration``: name -> (dtype, fill value).
PER_ROW: dict[str, tuple[str, Any]] = {
    "residual": ("float64", 0.0),
    "splits": ("int32", 0),
    "flagged": ("bool", False),
    "l1_change": ("float64", np.nan),
    "done": ("bool", False),
    "buffer_lca": ("float64", 0.0),
    "loss_end": ("float64", np.nan),
}
#: Per-set arrays with one value per pair and tensor, dimensions ``(iteration, tensor)``.
PER_TENSOR: dict[str, tuple[str, Any]] = {
    "tensor_lca": ("float64", 0.0),
    "tensor_helped": ("int64", 0),
    "tensor_hurt": ("int64", 0),
}
#: What each per-set array holds, for readers (written into each set group's ``arrays`` attribute).
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
#: Coordinate arrays for xarray: at the root, and in each set group (``neuron`` only in neuron stores,
#: ``parameter_tensor`` not in tensor stores). They follow from the layout and the steps, so a repair rebuilds
#: them instead of recomputing rows.
COORDINATES = ("checkpoint", "iteration", "tensor")
SET_COORDINATES = ("layer", "parameter_tensor", "neuron")
#: Store-level arrays with one value per checkpoint (their last chunk is ``n_checkpoints``, not ``T``).
PER_CHECKPOINT = ("steps", "fingerprint", "checkpoint", "loss")


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


def choose_rows_per_chunk(n_params: int, requested: int = 0, n_rows: int = 0) -> int:
    """Rows per ``lca`` chunk: ``requested`` when given, else about :data:`CHUNK_BYTES` per chunk, at most ``n_rows``.

    Chunks are stored whole (the last one padded), so an automatic chunk of far more rows than the store has
    would take its full size on disk for a few rows: a neuron store of 5 pairs x 200 columns wrote 1,024-row
    chunks (800 KB a set for 4 KB of rows). Fitted to ``n_rows`` it takes what its rows take. A store that will
    grow (``--follow``) passes ``n_rows=0``: its chunks are sized for the run to come, not its first pairs.

    Args:
        n_params: Number of parameters P (row length).
        requested: Explicit choice (0 = automatic), capped at :data:`MAX_CHUNK_BYTES` per chunk.
        n_rows: The store's rows T when it is not expected to grow (0: unknown or growing, no fit).

    Returns:
        A positive row count.

    """
    row_bytes = 4 * max(1, min(n_params, MAX_CHUNK_COLS))
    if requested > 0:
        # Capped: a store whose chunks claim more than MAX_CHUNK_BYTES is refused as damaged when opened.
        return min(requested, MAX_CHUNK_BYTES // row_bytes)
    rows = int(min(1024, max(1, CHUNK_BYTES // row_bytes)))
    return min(rows, n_rows) if n_rows > 0 else rows


def check_format_version(path: Path, attrs: Mapping[str, Any]) -> int:
    """The store's format version, if this lca reads it.

    Args:
        path: Store path (messages).
        attrs: The root group's attributes.

    Returns:
        The version (one of :data:`READABLE_VERSIONS`).

    Raises:
        StoreError: One line: the store's version and the versions this lca reads, with what to do.

    """
    found: Any = attrs.get("format_version")
    version = found if isinstance(found, int) and not isinstance(found, bool) else None
    if version in READABLE_VERSIONS:
        return version
    reads = ", ".join(str(v) for v in READABLE_VERSIONS)
    if version is not None and version > FORMAT_VERSION:
        fix = "a newer lca wrote it: upgrade lca-cli"
    elif version is not None:
        fix = "an older lca wrote it: recompute it with --overwrite, or write a new store with --out"
    else:
        fix = "not a version lca ever wrote: the store is damaged"
    raise StoreError(f"{path} has store format {found!r}; lca {__version__} reads store format {reads} only ({fix})")


def required_arrays(sets: list[str]) -> list[str]:
    """Paths of the arrays every store of this format has (coordinates aside), sorted.

    Args:
        sets: The store's evaluation sets.

    Returns:
        ``["fingerprint", "steps", "train/buffer_lca", ...]``.

    """
    per_set = ("lca", "loss", *PER_ROW, *PER_TENSOR)
    return sorted({"steps", "fingerprint"} | {f"{s}/{a}" for s in sets for a in per_set})


def root_attrs(
    attrs: dict[str, Any], layout: Layout, sets: Sequence[str], n_checkpoints: int, rows: int, columns: Columns
) -> dict[str, Any]:
    """The root group's attributes of a new store: the caller's, then the format's own.

    Args:
        attrs: The caller's attributes (method, tolerance, config, evaluation details...).
        layout: Parameter layout.
        sets: Evaluation set names.
        n_checkpoints: T + 1.
        rows: Rows per ``lca`` chunk.
        columns: What ``lca``'s columns hold.

    Returns:
        The attributes to write.

    """
    out = {
        **attrs,
        "format_version": FORMAT_VERSION,
        "lca_cli_version": __version__,
        "params": layout.to_attrs(),
        "sets": list(sets),
        "rows_per_chunk": rows,
        "helped_rule": HELPED_RULE,
        "n_checkpoints": n_checkpoints,
        "checksum": "crc32c",
        "coordinates": "steps",
    }
    if not columns.full:  # the column map (the plain per-parameter layout needs none)
        out |= {"granularity": columns.granularity, "columns": columns.to_attrs()}
    return out


def create_arrays(
    group: zarr.Group,
    sets: Sequence[str],
    steps: Sequence[int],
    fps: np.ndarray,
    n_tensors: int,
    rows: int,
    columns: Columns,
    lca_compressors: Any,
) -> None:
    """Create and fill ``steps`` and ``fingerprint``, and create every array of each set (nothing written).

    Args:
        group: The new store's root group.
        sets: Evaluation set names.
        steps: Checkpoint steps ``(T + 1,)``.
        fps: Fingerprints, uint8 ``(T + 1, FINGERPRINT_BYTES)``.
        n_tensors: K.
        rows: Rows per chunk of every per-row array.
        columns: What ``lca``'s columns hold (its width and column dimension).
        lca_compressors: Zarr compressors of ``lca``.

    """
    n_pairs = len(steps) - 1
    width = columns.size  # C: P for the plain layout
    cols = max(1, min(width, MAX_CHUNK_COLS))
    small = codecs()
    k = n_tensors
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
            "lca", shape=(n_pairs, width), chunks=(rows, cols), dtype="float32", fill_value=0.0,
            compressors=codecs(lca_compressors), dimension_names=("iteration", columns.dimension),
        )  # fmt: skip
        sub.create_array(
            "loss", shape=(n_pairs + 1,), chunks=(rows,), dtype="float64", fill_value=np.nan,
            compressors=small, dimension_names=("checkpoint",),
        )  # fmt: skip
        for arr, (dtype, fill) in PER_ROW.items():
            sub.create_array(
                arr, shape=(n_pairs,), chunks=(rows,), dtype=dtype, fill_value=fill,
                compressors=small, dimension_names=("iteration",),
            )  # fmt: skip
        for arr, (dtype, fill) in PER_TENSOR.items():
            sub.create_array(
                arr, shape=(n_pairs, k), chunks=(rows, max(1, k)), dtype=dtype, fill_value=fill,
                compressors=small, dimension_names=("iteration", "tensor"),
            )  # fmt: skip
