"""Writing finished rows to the store: from a background thread in submission order, or synchronously.

The write of a block (~0.1 s) overlaps the next block's pairs (seconds), and a block's ``lca`` arrays are
reused once written (:class:`BlockBuffers`), so peak memory is a fixed few blocks whatever the run's length.
``synchronous=True`` writes in the caller's thread instead (benchmarks of the overlap: ``compute-syncwrite``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np

from lca_cli.store.lcastore import BlockRows, LcaStore

__all__ = ["FREE_BYTES", "BlockBuffers", "RowWriter"]

#: Written block arrays kept for reuse hold at most this many bytes, besides the one the next block takes: a few
#: blocks of a small model's rows, one row of a large model's (a 64M-parameter row is 256 MB).
FREE_BYTES = 64 << 20

#: A write request: rows per set, arrays to give back once written, a callback once written.
_Item = tuple[dict[str, BlockRows], list[np.ndarray], Callable[[], None] | None]


class BlockBuffers:
    """Reusable float32 block arrays: taken by ``run_block``, given back by the writer once written.

    A fresh multi-MiB array per block makes the allocator keep several freed ones around (measured: peak RSS
    +60 MiB after 300 MNIST-FC pairs with 16 MiB chunks, against +4 MiB when arrays are reused), so peak memory
    would grow with the run's length for a while; with reuse it is a fixed few blocks. The arrays kept free are
    bounded in bytes (:data:`FREE_BYTES`, and always one), not in count: with the two blocks :class:`RowWriter`
    holds at most (one being written, one being computed), the rows take ``3 x rows x P x 4`` bytes at most.
    """

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, rows: int, cols: int) -> np.ndarray:
        """A ``(>= rows, cols)`` float32 array (reused when one is free)."""
        with self._lock:
            for i, a in enumerate(self._free):
                if a.shape[0] >= rows and a.shape[1] == cols:
                    return self._free.pop(i)
        return np.empty((rows, cols), dtype=np.float32)

    def give(self, array: np.ndarray) -> None:
        """Give an array (or a view of one) back once it is written."""
        base = array.base if isinstance(array.base, np.ndarray) else array
        with self._lock:
            if not self._free or sum(a.nbytes for a in self._free) + base.nbytes <= FREE_BYTES:
                self._free.append(base)


class RowWriter:
    """Writes finished rows to the store, in submission order, from a background thread unless ``synchronous``.

    ``submit`` first waits until the previous piece is written, so at most two blocks are in memory: the one
    being written and the one being computed. ``before`` runs before each write (the lock and claim checks) and
    ``after`` after it (the swap of a new store into place, the ``updated`` attribute); a piece's own ``then``
    runs once it is written (releasing a chunk's claim, pruning). After a failed write nothing more is written;
    the error is raised by the next ``submit`` or by ``close``.

    Args:
        store: The store.
        buffers: Where written ``lca`` arrays go back to.
        before: Called before each write.
        after: Called after each write.
        synchronous: Write in the caller's thread (no overlap; for benchmarks of it).

    """

    def __init__(
        self,
        store: LcaStore,
        buffers: BlockBuffers | None = None,
        before: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
        *,
        synchronous: bool = False,
    ) -> None:
        self.store = store
        self.buffers = buffers
        self.before = before
        self.after = after
        self.synchronous = synchronous
        self._q: queue.Queue[_Item | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not synchronous:
            self._thread = threading.Thread(target=self._run, name="lca-write", daemon=True)
            self._thread.start()

    def _write(self, item: _Item) -> None:
        rows, release, then = item
        if self._error is None and rows:
            if self.before is not None:
                self.before()
            for s, block in rows.items():
                self.store.write_block(s, block)
            if self.after is not None:
                self.after()
        if self._error is None and then is not None:
            then()
        if self.buffers is not None:
            for array in release:
                self.buffers.give(array)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                self._write(item)
            except BaseException as exc:  # surfaced in the main thread by submit/close
                self._error = exc
            finally:
                self._q.task_done()

    def submit(
        self, rows: dict[str, BlockRows], release: Sequence[np.ndarray] = (), then: Callable[[], None] | None = None
    ) -> None:
        """Queue rows to write (buffers to give back and ``then`` to call once written); raise an earlier error.

        Rows wait until the previous piece is written (at most two blocks in memory). A bare ``then`` holds no
        memory and is queued at once behind what is queued: waiting there would stop the pair loop until the
        block just submitted is written (an 8 MiB durable write per chunk on a small evaluation set).
        """
        if self.synchronous:
            self._write((rows, list(release), then))
            return
        if rows or release:
            self._q.join()  # the previous piece is written
        if self._error is not None:
            raise self._error
        if rows or release or then is not None:
            self._q.put((rows, list(release), then))

    def drain(self) -> None:
        """Wait until everything submitted is written; raise a write's error."""
        if self._thread is not None:
            self._q.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Write what is queued, stop the thread, raise a write's error."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error
