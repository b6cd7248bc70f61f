"""Check a store's metadata against itself before anything is allocated or looped over.

A store's ``zarr.json`` files and root attributes are data that anyone (an editor, a half-copied folder, a
faulty disk) may have changed: a shape of 10^12 rows, a chunk grid of one huge chunk, a ``params`` list that
disagrees with ``lca``'s columns. Readers size their arrays and loops from these numbers, so a wrong one would
make ``lca verify`` or ``lca summarize`` hang, exhaust memory, crash, or print nonsense with exit 0.
:func:`validate` checks every number a reader relies on against the format (:mod:`lca_cli.store.format`) and
against the store's other records, reading no chunk except the few files it names and the ``steps`` array
(bounded by then):

* the root attributes have the types the format writes; ``params`` is a layout with consecutive offsets,
  unique names and non-negative sizes; the column map is the one its layout and settings give;
* every array has the format's dtype, the chunk grid the format gives (``rows_per_chunk`` rows, whole rows
  up to :data:`~lca_cli.store.format.MAX_CHUNK_COLS` columns) and a shape that fits: rows = pairs (at least the
  committed ``n_checkpoints`` - 1), columns = the column map's width, tensors = the layout's tensors;
* the store's own files bound its size: the last chunk of ``steps`` and of each column coordinate (written in
  full at creation) exists with the size the metadata gives, so an edited shape cannot claim more than is on
  disk; the steps are strictly ascending; the ``tensor`` coordinate names the layout's tensors; no row past
  the committed ``n_checkpoints`` is marked done (unless another process has just committed more).

Anything else is damage: one line (:class:`~lca_cli.errors.StoreError`, exit 6), in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr

from lca_cli.core.columns import Columns
from lca_cli.core.layout import Layout
from lca_cli.errors import LcaError, StoreError
from lca_cli.store.chunks import Encoding, chunk_size
from lca_cli.store.format import (
    FINGERPRINT_BYTES,
    MAX_CHUNK_BYTES,
    MAX_CHUNK_COLS,
    PER_ROW,
    PER_TENSOR,
    SMALL_ROWS,
)

__all__ = ["validate"]

#: Set names become folder names: one plain path component, never ``..`` or a separator.
_SET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
#: The largest count (parameters, steps, rows) a store may state: beyond it float64 sums stop being exact.
_MAX_COUNT = 1 << 53
#: Root attributes readers use, with the types the format writes (absent is allowed: older writers).
_ATTR_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,),
    "tolerance": (int, float),
    "rtol": (int, float),
    "max_splits": (int,),
    "helped_rule": (str,),
    "coordinates": (str,),
    "checksum": (str,),
    "lca_cli_version": (str,),
    "evaluation": (dict,),
    "config": (dict,),
    "identity": (dict,),
    "granularity": (str,),
    "columns": (dict,),
}


class _Store(Protocol):
    """What :func:`validate` needs of an :class:`~lca_cli.store.lcastore.LcaStore` (no import cycle)."""

    path: Path
    attrs: dict[str, Any]
    layout: Layout
    columns: Columns
    sets: list[str]

    def node(self, key: str) -> zarr.Array: ...


class _Damage(Exception):
    """One problem found; :func:`validate` turns it into the one-line :class:`StoreError`."""


def _node(store: _Store, name: str) -> zarr.Array | None:
    """An array's handle; None when it is absent (an optional coordinate); damage when unparsable."""
    try:
        return store.node(name)
    except KeyError:
        return None
    except Exception as exc:  # zarr's own parse errors: ValueError, TypeError, ... for an edited zarr.json
        raise _Damage(f"the zarr.json of {name} cannot be read ({type(exc).__name__})") from None


def _required(store: _Store, name: str) -> zarr.Array:
    arr = _node(store, name)
    if arr is None:
        raise _Damage(f"array {name} is missing")
    return arr


def _int(value: Any, what: str, low: int = 0, high: int = _MAX_COUNT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise _Damage(f"{what} is {str(value)[:40]!r}, not an integer in {low}..{high}")
    return value


def _check_attrs(attrs: Mapping[str, Any], sets: Sequence[Any]) -> tuple[int, int]:
    """Types of the root attributes; returns ``(n_checkpoints, rows_per_chunk)``."""
    for key, types in _ATTR_TYPES.items():
        value = attrs.get(key)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise _Damage(f"attribute {key!r} is a {type(value).__name__}, not a {types[0].__name__}")
    for key in ("tolerance", "rtol"):
        value = attrs.get(key)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise _Damage(f"attribute {key!r} is {value!r}")
    params = attrs.get("params")
    if not isinstance(params, list):
        raise _Damage("attribute 'params' is not a list")
    for p in params:  # the format writes {name: str, shape: [int], offset: int, axis?: int}
        if not (
            isinstance(p, dict)
            and isinstance(p.get("name"), str)
            and isinstance(p.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) for n in p["shape"])
            and all(isinstance(p.get(k, 0), int) and not isinstance(p.get(k, 0), bool) for k in ("offset", "axis"))
        ):
            raise _Damage(f"an entry of 'params' is {str(p)[:60]}, not {{name, shape, offset}}")
    if not isinstance(sets, list) or not sets:
        raise _Damage("attribute 'sets' is not a non-empty list")
    for name in sets:
        if not isinstance(name, str) or not _SET_NAME.match(name) or name in ("..", "."):
            raise _Damage(f"evaluation set name {str(name)[:40]!r} is not a plain name")
    if len(set(sets)) != len(sets):
        raise _Damage("attribute 'sets' names a set twice")
    n_checkpoints = _int(attrs.get("n_checkpoints"), "attribute 'n_checkpoints'", 1)
    rows = _int(attrs.get("rows_per_chunk"), "attribute 'rows_per_chunk'", 1)
    return n_checkpoints, rows


def _check_layout(layout: Layout, columns: Columns, attrs: Mapping[str, Any]) -> None:
    """Offsets consecutive from 0, unique names, sizes that fit; the column map the layout's settings give."""
    offset = 0
    names: set[str] = set()
    for p in layout.params:
        if not p.name or p.name in names:
            raise _Damage(f"parameter name {p.name!r} is empty or repeated in 'params'")
        names.add(p.name)
        if any(s < 0 for s in p.shape) or not (0 <= p.axis < max(1, len(p.shape))):
            raise _Damage(f"parameter {p.name} has shape {p.shape} and unit axis {p.axis}")
        if p.offset != offset:
            raise _Damage(f"parameter {p.name} starts at column {p.offset}, not {offset} (after the tensors before)")
        offset += p.numel
        if offset > _MAX_COUNT:
            raise _Damage(f"'params' adds up to more than {_MAX_COUNT} parameters")
    raw = attrs.get("columns")
    if not raw:
        if attrs.get("granularity") not in (None, "parameter"):
            raise _Damage("the store has a granularity but no column map")
        return
    try:
        expected = Columns.build(layout, columns.granularity, columns.params)
    except LcaError as exc:
        raise _Damage(f"the column map's settings do not fit 'params' ({exc})") from None
    if expected.groups != columns.groups or attrs.get("granularity") != columns.granularity:
        raise _Damage("the column map is not the one its parameters and settings give")


def _check_array(
    arr: zarr.Array, node: str, dtype: str, shape: Sequence[int | None], chunks: Sequence[int], min_rows: int
) -> None:
    """One array: dtype, rank, chunk grid and shape (``None`` in ``shape``: rows, at least ``min_rows``)."""
    if arr.dtype != np.dtype(dtype):
        raise _Damage(f"{node} has dtype {arr.dtype}, not {dtype}")
    got_shape, got_chunks = tuple(int(s) for s in arr.shape), tuple(int(c) for c in arr.chunks)
    if len(got_shape) != len(shape):
        raise _Damage(f"{node} has shape {got_shape}, not {len(shape)}-dimensional")
    if got_chunks != tuple(chunks):
        raise _Damage(f"{node} has chunks {got_chunks}, not {tuple(chunks)}")
    for got, want in zip(got_shape, shape, strict=True):
        if want is None:
            if not min_rows <= got <= _MAX_COUNT:
                raise _Damage(f"{node} has {got} rows; the store's steps need at least {min_rows}")
        elif got != want:
            raise _Damage(f"{node} has shape {got_shape}, not {tuple(s if s is not None else 'T' for s in shape)}")
    enc = Encoding.of(arr)
    if not enc.checksum:
        raise _Damage(f"{node} has no crc32c codec last")
    if math.prod(got_chunks) * arr.dtype.itemsize > MAX_CHUNK_BYTES:
        raise _Damage(f"{node}'s chunks of {got_chunks} are larger than {MAX_CHUNK_BYTES >> 20} MiB")


def _check_last_chunk(root: Path, node: str, arr: zarr.Array, length: int) -> None:
    """The chunk holding entry ``length - 1`` of an array written in full at creation exists, whole."""
    if length <= 0:
        return
    last = (length - 1) // int(arr.chunks[0])
    path = root / node / arr.metadata.encode_chunk_key((last,) + (0,) * (arr.ndim - 1))
    size = chunk_size(arr)
    try:
        found = path.stat().st_size
    except OSError:
        raise _Damage(f"{node} claims {length} entries but its chunk {last} is not on disk") from None
    if size is not None and found != size:
        raise _Damage(f"{node} chunk {last} has {found} bytes, not the {size} its metadata gives")


def _check_arrays(store: _Store, n_checkpoints: int, rows: int) -> None:
    width, k = store.columns.size, len(store.layout.params)
    cols = max(1, min(width, MAX_CHUNK_COLS))
    steps, fp = _required(store, "steps"), _required(store, "fingerprint")
    _check_array(steps, "steps", "int64", (None,), (SMALL_ROWS,), n_checkpoints)
    _check_array(fp, "fingerprint", "uint8", (None, FINGERPRINT_BYTES), (SMALL_ROWS, FINGERPRINT_BYTES), n_checkpoints)
    if int(fp.shape[0]) < n_checkpoints:
        raise _Damage(f"fingerprint has {fp.shape[0]} rows for {n_checkpoints} checkpoints")
    _check_last_chunk(store.path, "steps", steps, n_checkpoints)
    _check_last_chunk(store.path, "fingerprint", fp, n_checkpoints)
    pairs = n_checkpoints - 1
    for s in store.sets:
        _check_array(_required(store, f"{s}/lca"), f"{s}/lca", "float32", (None, width), (rows, cols), pairs)
        _check_array(_required(store, f"{s}/loss"), f"{s}/loss", "float64", (None,), (rows,), n_checkpoints)
        for name, (dtype, _) in PER_ROW.items():
            _check_array(_required(store, f"{s}/{name}"), f"{s}/{name}", dtype, (None,), (rows,), pairs)
        for name, (dtype, _) in PER_TENSOR.items():
            _check_array(_required(store, f"{s}/{name}"), f"{s}/{name}", dtype, (None, k), (rows, max(1, k)), pairs)
        _check_uncommitted(store, s, pairs, rows)
        _check_coordinate(store, f"{s}/parameter_tensor", width)
        _check_coordinate(store, f"{s}/layer", k)
        _check_coordinate(store, f"{s}/neuron", width)
    _check_coordinate(store, "tensor", k)
    _check_names(store)
    for name in ("checkpoint", "iteration"):
        arr = _node(store, name)
        if arr is None:
            continue
        if arr.ndim != 1 or int(arr.chunks[0]) != SMALL_ROWS or int(arr.shape[0]) > int(steps.shape[0]):
            raise _Damage(f"coordinate {name} has shape {arr.shape} and chunks {arr.chunks}")


def _check_coordinate(store: _Store, node: str, size: int) -> None:
    """A column coordinate (optional; rebuilt by a repair) labels exactly ``size`` columns, all on disk."""
    arr = _node(store, node)
    if arr is None:
        return
    if arr.ndim != 1 or int(arr.shape[0]) != size:
        raise _Damage(f"coordinate {node} has shape {arr.shape}, not ({size},)")
    chunk = int(arr.chunks[0])
    if chunk < 1 or (size and chunk > max(size, MAX_CHUNK_COLS)):
        raise _Damage(f"coordinate {node} has chunks {arr.chunks}")
    _check_last_chunk(store.path, node, arr, size)


def _check_uncommitted(store: _Store, set_name: str, pairs: int, rows: int) -> None:
    """No row past the committed steps is marked done (an append commits its steps before any row is done).

    A lowered ``n_checkpoints`` would otherwise hide finished rows and show a shorter run with exit 0.
    """
    node = f"{set_name}/done"
    folder = store.path / node / "c"
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:
        return
    last = (pairs - 1) // rows if pairs else -1
    if any(n.isdigit() and int(n) > last for n in names) and not _grown(store.path, pairs):
        raise _Damage(f"{node} has rows marked done past the {pairs} pairs of 'n_checkpoints'")
    arr = _required(store, node)
    stop = min(int(arr.shape[0]), (last + 1) * rows)
    if pairs < stop:
        try:
            past = np.asarray(arr[pairs:stop])
        except Exception:  # a damaged chunk: `lca verify` reports it
            return
        if past.any() and not _grown(store.path, pairs):
            raise _Damage(f"{node} has rows marked done past the {pairs} pairs of 'n_checkpoints'")


def _grown(root: Path, pairs: int) -> bool:
    """Whether another process committed more checkpoints since the attributes were read (an append)."""
    try:
        committed = json.loads((root / "zarr.json").read_text(encoding="utf-8"))["attributes"]["n_checkpoints"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return isinstance(committed, int) and committed - 1 > pairs


def _check_names(store: _Store) -> None:
    """The ``tensor`` coordinate (written from ``params`` at creation) names the same tensors, in order."""
    arr = _node(store, "tensor")
    if arr is None:
        return
    try:
        names = [str(n) for n in np.asarray(arr[:]).tolist()]
    except Exception:  # a damaged chunk: `lca verify` reports it and a repair rewrites coordinates
        return
    if names != store.layout.names:
        raise _Damage("the tensor names of 'params' and of the tensor coordinate differ")


def _check_steps(store: _Store, n_checkpoints: int) -> None:
    try:
        values = np.asarray(store.node("steps")[:n_checkpoints])
    except Exception:  # a damaged chunk (checksum, truncation): `lca verify` reports it with the rest
        return
    if n_checkpoints > 1 and not bool(np.all(np.diff(values) > 0)):
        raise _Damage("its steps are not strictly ascending")


def validate(store: _Store) -> None:
    """Check a just-opened store's metadata (see the module docstring); nothing large is read or allocated.

    Args:
        store: The store, its attributes and layout parsed, its required arrays present.

    Raises:
        StoreError: One line naming what is inconsistent, with ``lca verify`` / ``--overwrite`` advice.

    """
    try:
        n_checkpoints, rows = _check_attrs(store.attrs, store.attrs.get("sets") or [])
        _check_layout(store.layout, store.columns, store.attrs)
        _check_arrays(store, n_checkpoints, rows)
        _check_steps(store, n_checkpoints)
    except _Damage as exc:
        raise StoreError(
            f"{store.path}: its metadata is damaged ({exc}); recompute it with `lca compute RUN_DIR --out "
            f"{store.path} --overwrite`"
        ) from None
    except KeyError as exc:
        raise StoreError(f"{store.path}: array {exc} is missing; the store is damaged") from None
