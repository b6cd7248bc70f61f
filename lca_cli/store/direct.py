"""Big chunk files written around the page cache (``O_DIRECT``): a wide row costs the disk, not the cores.

Writing a file through the page cache costs the writing process kernel time to allocate and fill a cache page
for every 4 KiB. With a 16M-parameter model that is a 64 MB ``lca`` row per pair: on the 2-core VM lca is
benchmarked on, 0.13-0.22 s of system CPU per row. It is spent in the writer thread, but that thread shares the
cores with the threads computing gradients, and the pair loop was 1.13-1.32x slower than a script that
computes the same gradients. Written with ``O_DIRECT`` from a reused, page-aligned staging buffer, the same
row cost 0.005-0.008 s of system time (0.03 s of CPU in all, with the staging copy and the checksum); the rest
is the disk's time, spent waiting (``python scripts/bench_store.py --row-writes``).

Only a file's aligned head is written this way; its last, partial block and the chunk's checksum go through the
page cache as before. A file system that refuses ``O_DIRECT`` (tmpfs on older kernels, though Linux 6.18 here takes
it; some network and FUSE file systems) gets the whole file through the page cache: the bytes are the same either
way, only the cost differs. Durability is unchanged: the store's writes are fsynced (which also flushes the disk's
own cache) before rows are marked done.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["ALIGN", "DIRECT_MIN_BYTES", "SplitBytes", "Stage", "write_file"]

#: Alignment of a direct write's memory, file offset and length (the page size; a multiple of every block size
#: Linux file systems use).
ALIGN = mmap.PAGESIZE
#: Chunks of fewer bytes are written through Zarr as before: their page-cache cost is small, and a block's
#: small arrays are written together in one round trip anyway.
DIRECT_MIN_BYTES = 1 << 20
#: ``O_DIRECT`` where the platform has it (Linux); 0 elsewhere, where every write goes through the page cache.
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)


@dataclass(frozen=True)
class SplitBytes:
    """A file's bytes as an aligned head (written around the page cache where allowed) and a short tail.

    Attributes:
        head: Page-aligned memory, its length a multiple of :data:`ALIGN`.
        tail: The bytes after it (the chunk's last partial block and its checksum).

    """

    head: memoryview
    tail: bytes


def _write_at(fd: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked)."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for an open file; False when the file system refuses it."""
    if not _O_DIRECT:
        return False
    import fcntl  # where O_DIRECT exists (Linux), so does fcntl; not on Windows, where this module still imports

    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            return False
        raise
    return True


def write_file(fd: int, data: SplitBytes | bytes | bytearray | memoryview) -> bool:
    """Write a new, empty file's bytes: a :class:`SplitBytes`'s head with ``O_DIRECT`` where allowed, else buffered.

    Args:
        fd: The file, open for writing, empty.
        data: Its bytes.

    Returns:
        Whether a head went around the page cache (False: every byte went through it).

    Raises:
        OSError: What the file system raised (disk full, I/O error), except a refusal of ``O_DIRECT`` itself,
            after which the head is written through the page cache instead.

    """
    if not isinstance(data, SplitBytes):
        _write_at(fd, memoryview(data).cast("B"), 0)
        return False
    head = data.head
    buffered = True
    if head and _set_direct(fd, True):
        try:
            _write_at(fd, head, 0)
            buffered = False
        except OSError as exc:  # accepted at open but refused at write (some FUSE and network file systems)
            if exc.errno != errno.EINVAL:
                raise
        finally:
            _set_direct(fd, False)
    if buffered:
        _write_at(fd, head, 0)  # from the start: a refused direct write may have written part of it
    _write_at(fd, memoryview(data.tail), len(head))
    return not buffered


class Stage:
    """One page-aligned buffer, reused for every chunk a store writes directly (:mod:`lca_cli.store.chunks`).

    Anonymous ``mmap`` memory is page-aligned, as ``O_DIRECT`` needs. It is allocated once at the size of the
    store's chunks and then reused, so that writing a chunk touches no fresh memory (a fresh 16 MB buffer per
    chunk would cost 4,096 page faults).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf: mmap.mmap | None = None

    @contextlib.contextmanager
    def use(self, nbytes: int) -> Iterator[np.ndarray]:
        """The buffer as uint8, at least ``nbytes`` (rounded up to a page), for one writer at a time."""
        size = -(-max(1, nbytes) // ALIGN) * ALIGN
        with self._lock:
            if self._buf is None or len(self._buf) < size:
                self._buf = mmap.mmap(-1, size)  # the old one goes with the last array viewing it
            yield np.frombuffer(self._buf, dtype=np.uint8)
