"""Chunk I/O: how a store's chunks are encoded, found, checked, read straight from disk and written.

Every array of a store keeps its chunks in Zarr's default chunk keys (``NODE/c/i`` or ``NODE/c/i/j``), each
chunk ending with a CRC-32C checksum of its bytes (Zarr's ``crc32c`` codec). :func:`checksum_ok` is the one
place that checksum is checked outside Zarr: by the direct reads here (:func:`read_rows`) and by the
integrity checks (:func:`chunk_problem`, :mod:`lca_cli.store.integrity`). Codecs are recognised by their
types (:class:`zarr.codecs.BytesCodec`, :class:`zarr.codecs.Crc32cCodec`), never by names.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c  # zarr's own checksum implementation (a dependency of zarr)
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec
from zarr.core.sync import sync as zarr_sync

from lca_cli.errors import LcaError, StoreError
from lca_cli.store.direct import ALIGN, DIRECT_MIN_BYTES, SplitBytes, Stage

__all__ = [
    "Encoding",
    "checksum_ok",
    "chunk_files",
    "chunk_problem",
    "chunk_size",
    "codecs",
    "col_chunks",
    "list_chunks",
    "read_rows",
    "reading",
    "stream_rows",
    "write_all",
    "write_chunks",
]

#: Bytes of the checksum at the end of every chunk file.
CHECKSUM_BYTES = 4


def codecs(compressors: Any = None) -> list[Any]:
    """Bytes-to-bytes codecs of an array: its compressors, then a CRC-32C checksum of the stored chunk.

    Args:
        compressors: Zarr compressor codecs (None: none).

    Returns:
        The list for Zarr's ``compressors`` argument.

    """
    return [*(compressors or []), Crc32cCodec()]


def checksum_ok(data: bytes) -> bool:
    """Whether a stored chunk's last 4 bytes are the CRC-32C (little-endian) of the bytes before them.

    This is Zarr's ``crc32c`` codec's check, and the only copy of it in lca.

    Args:
        data: The whole chunk file.

    Returns:
        True when they match.

    """
    if len(data) < CHECKSUM_BYTES:
        return False
    return int(google_crc32c.value(data[:-CHECKSUM_BYTES])).to_bytes(CHECKSUM_BYTES, "little") == data[-CHECKSUM_BYTES:]


@dataclass(frozen=True)
class Encoding:
    """How an array's chunks are stored, from its Zarr codecs.

    Attributes:
        raw: The values as raw bytes (``bytes`` codec, then at most a checksum): every chunk file has one
            size and can be read without Zarr.
        checksum: Every chunk file ends with a CRC-32C of the bytes before it (``crc32c`` is the last codec).
        dtype: The values' dtype, with the byte order they are stored in when ``raw``.
        default_keys: Chunk files are at Zarr's default keys ``c/i`` or ``c/i/j``.

    """

    raw: bool
    checksum: bool
    dtype: np.dtype
    default_keys: bool

    @classmethod
    def of(cls, arr: zarr.Array) -> Encoding:
        """The encoding of a Zarr format 3 array."""
        meta = arr.metadata
        found: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
        checksum = bool(found) and isinstance(found[-1], Crc32cCodec)
        body = found[:-1] if checksum else found
        raw = len(body) == 1 and isinstance(body[0], BytesCodec)
        dtype = arr.dtype
        if raw:  # variable-length types (the string coordinates) have no byte order
            endian = body[0].endian
            dtype = dtype.newbyteorder(">" if endian is not None and endian.value == "big" else "<")
        keys = meta.encode_chunk_key((7,) * arr.ndim) == "c/" + "/".join(["7"] * arr.ndim)
        return cls(raw, checksum, dtype, keys)


def chunk_size(arr: zarr.Array) -> int | None:
    """Bytes of every stored chunk file of an array, or None when its codecs make sizes vary.

    Zarr pads edge chunks to the full chunk shape, so every chunk of a raw array has one size.
    """
    enc = Encoding.of(arr)
    if not enc.raw:
        return None
    return math.prod(arr.chunks) * arr.dtype.itemsize + (CHECKSUM_BYTES if enc.checksum else 0)


def col_chunks(arr: zarr.Array) -> int:
    """Chunks along an array's second axis (1 for a 1-d array)."""
    return 1 if arr.ndim == 1 else max(1, -(-int(arr.shape[1]) // int(arr.chunks[1])))


def chunk_files(root: Path, node: str, arr: zarr.Array, row_chunks: Iterable[int]) -> list[Path]:
    """Chunk files of an array for the given chunk indices along its first axis (every column chunk).

    Args:
        root: Store directory.
        node: Array path in the store (``"train/lca"``).
        arr: The array.
        row_chunks: Chunk indices along axis 0.

    Returns:
        The files' paths (existing or not).

    """
    cols = range(1) if arr.ndim == 1 else range(math.ceil(arr.shape[1] / arr.chunks[1]) or 1)
    out = []
    for i in row_chunks:
        for j in cols:
            coords = (i,) if arr.ndim == 1 else (i, j)
            out.append(root / node / arr.metadata.encode_chunk_key(coords))
    return out


def list_chunks(root: Path, node: str, sizes: bool = True) -> dict[tuple[int, ...], tuple[str, int]]:
    """Every chunk file of an array (Zarr's default chunk keys): chunk coordinates -> (path, size).

    One ``scandir`` per folder instead of a ``stat`` per expected chunk: the cheap check of a 12,000-pair
    store with 24-row chunks looks at ~6,500 files. Without ``sizes`` no file is stat'ed (size -1).

    Args:
        root: Store directory.
        node: Array path in the store.
        sizes: Also read each file's size.

    Returns:
        The files found (``*.partial`` files of killed writes are not chunks).

    """
    out: dict[tuple[int, ...], tuple[str, int]] = {}

    def walk(folder: str, prefix: tuple[int, ...]) -> None:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if not e.name.isdigit():
                continue  # *.partial files of a killed write
            coords = (*prefix, int(e.name))
            if e.is_dir(follow_symlinks=False):
                walk(e.path, coords)
            else:
                out[coords] = (e.path, e.stat(follow_symlinks=False).st_size if sizes else -1)

    walk(os.path.join(root, node, "c"), ())
    return out


def _size_problem(actual: int, size: int) -> str:
    return f"{'truncated' if actual < size else 'wrong size'} ({actual} of {size} bytes)"


def chunk_problem(path: str, size: int | None, checksum: bool, actual: int | None = None) -> str | None:
    """What is wrong with one chunk file, or None.

    Args:
        path: The chunk file.
        size: Its expected size (None: unknown, not checked).
        checksum: Read it and check its checksum (else only its presence and size are looked at).
        actual: Its size when already known from a listing (saves a ``stat``; ignored with ``checksum``).

    Returns:
        ``missing``, ``truncated (n of m bytes)``, ``wrong size (...)``, ``checksum mismatch`` or
        ``unreadable (...)``; None when it is fine.

    """
    try:
        if not checksum:
            if actual is None:
                actual = os.stat(path).st_size
            return None if size is None or actual == size else _size_problem(actual, size)
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size is not None and len(data) != size:
        return _size_problem(len(data), size)
    return None if checksum_ok(data) else "checksum mismatch"


def read_rows(root: Path, node: str, arr: zarr.Array, n: int) -> tuple[np.ndarray, list[int]] | None:
    """Rows ``0 .. n - 1`` of a small array read straight from its chunk files (None: let Zarr read it).

    Only for raw arrays with checksums in whole-row chunks at the default keys. Per-row arrays are chunked by
    blocks (24 rows for an 8 MiB MNIST-FC ``lca`` chunk), so a store of 12,000 pairs has 500 chunks per array;
    Zarr spends ~0.3 ms on each, reading them directly ~0.06 ms (measured: 0.15 s against 0.03 s per array),
    which keeps ``lca summarize --by layer`` fast. A missing chunk reads as the fill value, as in Zarr; the
    caller decides whether that is damage.

    Args:
        root: Store directory.
        node: Array path in the store.
        arr: The array.
        n: Rows to read.

    Returns:
        ``(values, missing row chunks)``, or None when the array is not stored that way.

    Raises:
        ValueError: If a chunk's checksum does not match.

    """
    enc = Encoding.of(arr)
    if not (enc.raw and enc.checksum and enc.default_keys) or (arr.ndim == 2 and arr.chunks[1] < arr.shape[1]):
        return None
    rows = int(arr.chunks[0])
    width = int(arr.chunks[1]) if arr.ndim == 2 else 1
    base = os.path.join(root, node, "c")  # plain strings: pathlib costs more than the read here
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
        if not checksum_ok(raw):
            raise ValueError(f"chunk {i}: stored and computed checksum do not match")
        chunk = np.frombuffer(raw, dtype=enc.dtype, count=rows * width)
        out[a:b] = chunk.reshape((rows, width) if arr.ndim == 2 else (rows,))[: b - a]
        return True

    chunks = range(-(-n // rows))

    def some(part: range) -> list[int]:
        return [i for i in part if not one(i)]

    if len(chunks) < 64:
        return out, some(chunks)
    # Opens and reads release the GIL: a few threads, each on a quarter of the chunks.
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lca-read-small") as pool:
        return out, [i for part in pool.map(some, [chunks[k::4] for k in range(4)]) for i in part]


def stream_rows(
    path: Path, node: str, arr: zarr.Array, start: int, stop: int, *, read_ahead: bool, request_bytes: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream rows ``start..stop`` of a 2-d array in requests of whole chunks, each piece within one row chunk.

    Each request covers about ``request_bytes`` of whole row chunks (Zarr reads a request's chunks
    concurrently); with ``read_ahead`` the next request is read in a background thread while the caller works
    on the current one, so memory is bounded by two requests.

    Args:
        path: Store directory (messages).
        node: Array path in the store (messages).
        arr: The array (float32 rows).
        start: First row.
        stop: One past the last row.
        read_ahead: Read the next request while the caller processes this one.
        request_bytes: Bytes per request (at least one chunk).

    Yields:
        ``(first_row, rows)``, never crossing a row-chunk boundary (views into the request's array: holding one
        keeps that whole request in memory).

    Raises:
        StoreError: If a chunk is damaged.

    """
    step = int(arr.chunks[0])
    per_request = step * max(1, request_bytes // max(1, step * 4 * int(arr.shape[1])))
    spans: list[tuple[int, int]] = []
    t = start
    while t < stop:
        end = min(stop, (t // per_request + 1) * per_request)
        spans.append((t, end))
        t = end

    def read(span: tuple[int, int]) -> np.ndarray:
        with reading(path, f"{node} rows {span[0]}..{span[1] - 1}"):
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


@contextlib.contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Turn any failure to read or decode chunks (checksum mismatch, truncation, I/O error) into one line.

    Args:
        path: Store path (messages).
        what: What is being read (``"train/loss"``).

    Raises:
        StoreError: Naming the store, what was read, and ``lca verify`` / ``--repair``.

    """
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


def write_all(writes: Sequence[tuple[zarr.Array, slice, np.ndarray]]) -> None:
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


def write_chunks(
    arr: zarr.Array, node: str, rows: slice, values: np.ndarray, put: Callable[[str, SplitBytes], None], stage: Stage
) -> bool:
    """Write the rows ``rows`` of a 2-d raw array as whole chunk files made here, or say it cannot (False).

    The bytes are Zarr's own for these chunks (C order, the stored byte order, padded with the fill value past
    the array's edges, then the CRC-32C), but made without Zarr's copies (it extracts each chunk into a new
    array, then ``np.append``s the checksum to another) and written by :mod:`lca_cli.store.direct` around the
    page cache. Made here rather than by sending Zarr's own bytes around the page cache: that was measured too
    (16M-column rows, 14:10), 0.058 s of CPU per 64 MB row against 0.029 s here and 0.23 s through the page
    cache; the copies land in fresh memory at every chunk. Only chunks of at
    least :data:`~lca_cli.store.direct.DIRECT_MIN_BYTES` are written this way, and only when the rows cover
    every chunk they touch from its first row (to its last, or to the array's end): a chunk partly written
    before must be merged with what is on disk, which Zarr does.

    Args:
        arr: The array (raw chunks with a checksum at Zarr's default keys; anything else returns False).
        node: Its path in the store (``"train/lca"``).
        rows: The rows written, ``start`` and ``stop`` given.
        values: Their values, ``(stop - start, arr.shape[1])``.
        put: Writes one file of the store by its key (:meth:`lca_cli.store.fencing.FencedStore.put_file`).
        stage: The page-aligned buffer each chunk is made in.

    Returns:
        True when every chunk was written; False when nothing was (the caller writes through Zarr).

    Raises:
        OSError: What the file system raised; the chunks before the failing one are written.

    """
    enc = Encoding.of(arr)
    if arr.ndim != 2 or not (enc.raw and enc.checksum and enc.default_keys):
        return False
    r, c = (int(n) for n in arr.chunks)
    n_rows, width = (int(n) for n in arr.shape)
    nbytes = r * c * enc.dtype.itemsize
    a, b = int(rows.start), int(rows.stop)
    if nbytes < DIRECT_MIN_BYTES or a % r or (b % r and b != n_rows) or not 0 <= a < b <= n_rows:
        return False
    values = np.asarray(values)
    if values.shape != (b - a, width):
        return False
    fill = np.asarray(arr.fill_value, dtype=enc.dtype)
    head = nbytes // ALIGN * ALIGN  # the aligned part: all of it for 4-byte values in chunks of 1,024 and more
    with stage.use(nbytes) as buf:
        chunk = buf[:nbytes].view(enc.dtype).reshape(r, c)  # (r, c): one chunk as stored
        for i in range(a // r, -(-b // r)):
            block = values[i * r - a : min((i + 1) * r, b) - a]  # (<= r, width): this chunk row's values
            for j in range(col_chunks(arr)):
                part = block[:, j * c : (j + 1) * c]  # (<= r, <= c)
                chunk[: part.shape[0], : part.shape[1]] = part
                chunk[part.shape[0] :] = fill  # past the array's last row or column, as Zarr pads
                chunk[:, part.shape[1] :] = fill
                checksum = int(google_crc32c.value(chunk)).to_bytes(CHECKSUM_BYTES, "little")
                tail = buf[head:nbytes].tobytes() + checksum
                put(f"{node}/{arr.metadata.encode_chunk_key((i, j))}", SplitBytes(buf[:head].data, tail))
    return True
