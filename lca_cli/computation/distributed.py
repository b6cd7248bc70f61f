"""Several processes on one store: ``torchrun`` ranks, shards and step ranges, cooperating processes.

Work is cut into the store's row chunks. A process computes a chunk only while it holds that chunk's
*claim*: a :class:`~lca_cli.store.claims.Lease` file ``chunk-N`` in the store's claims folder (``.NAME.claims``
beside the store, like its lock), renewed by a heartbeat and taken over once its holder is dead. So no two
processes ever write one chunk, however they were started, and a dead process's chunks are computed again
by whoever comes next. Every ``lca compute`` claims its chunks, so a plain run and cooperating ones share
a store safely.

Roles:

* The *owner* holds the store lock (:func:`~lca_cli.store.claims.store_lock_path`): it creates, extends, repairs
  or replaces the store (:mod:`lca_cli.computation.opening`), then publishes a *ready* marker naming its lock. It alone
  writes the store's metadata and attributes, and it finishes only when every chunk in its scope is done
  (taking over dead processes' claims), then consolidates the metadata.
* A *helper* finds the lock held by a live owner and, when it may cooperate (``--cooperate``, ``--shard``,
  or a ``torchrun`` rank other than 0), waits for that owner's ready marker, opens the store and claims the
  chunks nobody holds. It never changes the store's shape or attributes. Without leave to cooperate a
  second process still refuses at once (exit 9).
* While other processes hold live claims, an owner refuses (exit 9) to grow, repair or replace the store.

Which chunk next (:func:`choose_chunk`): the one after the chunk just finished (the end gradient of one is
the start of the next); at the start of a ``torchrun`` job, rank r of N begins at the r-th of N equal runs of
open chunks; otherwise the second half of the longest run of unclaimed chunks (the first half is left to
whoever works just before it). Processes thus stay on long contiguous runs, and the work balances by measured
cost: whoever is done early splits what is left.

``torchrun`` (:class:`Team`): the ranks form a ``torch.distributed`` process group. It only carries a few
small messages (rank 0's outcome of preparing the store at the start, the totals at the end), so it uses
gloo on every device: NCCL would move nothing of value and cost GPU memory and start-up. Rank 0 prepares the
store and broadcasts the outcome, or its error, which the other ranks then exit with silently. Every rank
computes claimed chunks and waits until its scope is done; an error in one rank is written as an *abort*
marker that stops the others after their current pair (finished rows are kept). A final all-gather gives
rank 0 the job's totals for its summary.

Shards and step ranges (:class:`Scope`): ``--shard I/N`` takes the I-th of N contiguous runs of the store's
row chunks, ``--steps A:B`` the pairs whose start step is in ``[A, B)``. A chunk partly in scope is claimed
like any other and only its rows in scope are computed; any mix of parts, resumes and appends converges to
the store one process would write, because a row depends only on its pair.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli.errors import PeerFailed, StoreBusyError, UsageError
from lca_cli.store.claims import LEASE_SECONDS, Keeper, Lease, read_claim, store_lock_path
from lca_cli.store.lcastore import LcaStore
from lca_cli.store.placement import new_token, storage_errors

__all__ = [
    "POLL_SECONDS",
    "Board",
    "ChunkQueue",
    "Claimed",
    "Scope",
    "Team",
    "choose_chunk",
    "claims_path",
    "env_rank",
    "parse_shard",
]

#: How often a waiting process looks again (for the owner's ready marker, for chunks still claimed by others).
POLL_SECONDS = 0.5
#: Timeout of the process group's collectives. They happen at the start (rank 0 prepares the store meanwhile)
#: and at the end (every rank is done, give or take one poll), so they never wait long unless a rank is gone.
TEAM_TIMEOUT_SECONDS = 1800.0
#: A claim's or marker's temporary file this old was left by a killed process (a live one renames it in ms).
STALE_TEMP_SECONDS = 30.0
#: An abort marker this old has been seen by every live rank of its job (they look every POLL_SECONDS).
ABORT_SEEN_SECONDS = 10 * POLL_SECONDS
_CHUNK = re.compile(r"^chunk-(\d+)$")


def claims_path(store: Path) -> Path:
    """The claims folder of a store: ``.NAME.claims`` beside it (like its lock, outside the store)."""
    return store.parent / f".{store.name}.claims"


# -- what to compute ---------------------------------------------------------------------------------------


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``--shard I/N`` (0 <= I < N).

    Returns:
        ``(I, N)``; ``(0, 1)`` for None.

    Raises:
        UsageError: If it is not of that form.

    """
    if text is None:
        return 0, 1
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if found:
        i, n = int(found.group(1)), int(found.group(2))
        if n >= 1 and 0 <= i < n:
            return i, n
    raise UsageError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 (the first of four parts)")


@dataclass(frozen=True)
class Scope:
    """The pairs a ``compute`` call is responsible for.

    Attributes:
        start: First start step (``--steps A:``), or None.
        stop: Start steps must be below this (``--steps :B``, ``--until``), or None.
        shard: This part's index (``--shard I/N``).
        shards: Number of parts.

    """

    start: int | None = None
    stop: int | None = None
    shard: int = 0
    shards: int = 1

    @property
    def whole(self) -> bool:
        """Every pair of the store."""
        return self.start is None and self.stop is None and self.shards == 1

    def chunks(self, n_chunks: int) -> range:
        """The row chunks of this shard: the ``shard``-th of ``shards`` contiguous runs of ``n_chunks``."""
        return range(self.shard * n_chunks // self.shards, (self.shard + 1) * n_chunks // self.shards)

    def mask(self, steps: np.ndarray, rows_per_chunk: int) -> np.ndarray:
        """``(T,)`` bool: the pairs in scope, for a store with checkpoint ``steps`` ``(T + 1,)``."""
        starts = np.asarray(steps[:-1])
        out = np.ones(len(starts), dtype=bool)
        if self.start is not None:
            out &= starts >= self.start
        if self.stop is not None:
            out &= starts < self.stop
        if self.shards > 1:
            part = self.chunks(-(-len(starts) // rows_per_chunk))
            chunk = np.arange(len(starts)) // rows_per_chunk
            out &= (chunk >= part.start) & (chunk < part.stop)
        return out

    def describe(self) -> str:
        """``"steps 10:50, shard 1/4"``, or ``"every pair"``."""
        parts = []
        if self.start is not None or self.stop is not None:
            parts.append(f"steps {'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}")
        if self.shards > 1:
            parts.append(f"shard {self.shard}/{self.shards}")
        return ", ".join(parts) or "every pair"


# -- torchrun ------------------------------------------------------------------------------------------------


def env_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """The rank of this process in a ``torchrun`` job of several processes, or None outside one."""
    team = Team.from_env(environ)
    return None if team is None else team.rank


@dataclass
class Team:
    """The processes of one ``torchrun`` job (``WORLD_SIZE`` > 1), as ``torchrun`` describes them.

    Attributes:
        rank: This process's rank (``RANK``).
        size: Number of processes (``WORLD_SIZE``).
        local_rank: Rank on this machine (``LOCAL_RANK``): the CUDA device ``--device auto`` takes.
        local_size: Processes on this machine (``LOCAL_WORLD_SIZE``).

    """

    rank: int
    size: int
    local_rank: int
    local_size: int
    _started: bool = field(default=False, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Team | None:
        """The job this process belongs to, or None when it runs alone (no ``torchrun``, or one process)."""
        env = os.environ if environ is None else environ
        try:
            size = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
            local_size = int(env.get("LOCAL_WORLD_SIZE", str(size)))
        except ValueError:
            return None
        if size <= 1 or "RANK" not in env:
            return None
        return cls(rank, size, local_rank, local_size)

    def start(self) -> None:
        """Join the job's process group (gloo; ``torchrun``'s rendezvous address is in the environment)."""
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=timedelta(seconds=TEAM_TIMEOUT_SECONDS))
            self._started = True

    def share(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank.

        Raises:
            PeerFailed: If the job lost a process meanwhile.

        """
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        with self._collective():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank.

        Raises:
            PeerFailed: If the job lost a process meanwhile.

        """
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        with self._collective():
            dist.all_gather_object(out, value)
        return out

    @contextlib.contextmanager
    def _collective(self) -> Any:
        try:
            yield
        except RuntimeError as exc:  # gloo: a peer closed the connection, or the timeout passed
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PeerFailed(f"rank {self.rank}: the torchrun job lost a process ({line[:160]})") from None

    def close(self) -> None:
        """Leave the process group (if this object joined it)."""
        import torch.distributed as dist

        if self._started and dist.is_initialized():
            dist.destroy_process_group()
        self._started = False


# -- the claims folder ---------------------------------------------------------------------------------------


class Board:
    """The claims folder of a store: chunk claims, the owner's ready marker and a job's abort marker.

    Args:
        store: The store's path (where it is, or will be once swapped in).
        lease: Seconds without a heartbeat after which a claim of another machine is stale.

    """

    def __init__(self, store: Path, lease: float = LEASE_SECONDS) -> None:
        self.store = store
        self.folder = claims_path(store)
        self.lease = lease
        self.held: dict[int, Lease] = {}
        self._keeper: Keeper | None = None
        self._mutex = threading.Lock()

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:09d}"

    def _mkdir(self) -> None:
        with storage_errors(f"cannot create {self.folder}"):
            self.folder.mkdir(exist_ok=True)

    # -- claims -----------------------------------------------------------------------------------------

    def claim(self, chunk: int) -> bool:
        """Take the claim of a chunk (taking over a dead holder's); False when a live process holds it.

        Raises:
            StorageError: If the claim file cannot be created.

        """
        for _ in range(5):
            self._mkdir()
            try:
                lease = Lease.acquire(self._path(chunk), f"{self.store} chunk {chunk}", lease=self.lease)
            except StoreBusyError:
                return False
            except FileNotFoundError:  # the last process out removed the empty folder meanwhile
                continue
            with self._mutex:
                if self._keeper is None:
                    self._keeper = Keeper()
                self._keeper.add(lease)
                self.held[chunk] = lease
            return True
        return False

    def release(self, chunk: int) -> None:
        """Give a chunk's claim up (after its rows are written)."""
        with self._mutex:
            lease = self.held.pop(chunk, None)
            if lease is not None and self._keeper is not None:
                self._keeper.remove(lease)
        if lease is not None:
            lease.release()

    def check(self) -> None:
        """Raise if a claim this process holds was taken over (call before writing).

        Raises:
            StoreBusyError: If another process took a claim over (this one was paused past its lease).

        """
        with self._mutex:
            leases = list(self.held.values())
        for lease in leases:
            lease.check()

    def claimed(self) -> set[int]:
        """Chunks with a claim file (live or not)."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return set()
        return {int(m.group(1)) for m in map(_CHUNK.match, names) if m}

    def stale(self, chunk: int) -> bool:
        """Whether a chunk's claim is held by a process that is certainly dead (False when unclaimed)."""
        found = read_claim(self._path(chunk), self.lease)
        return found is not None and not found[1]

    def others(self) -> list[str]:
        """Live claims held by other processes, as ``"pid P on HOST"`` (for messages)."""
        out = []
        for chunk in sorted(self.claimed()):
            if chunk in self.held:
                continue
            found = read_claim(self._path(chunk), self.lease)
            if found is not None and found[1]:
                holder = found[0]
                out.append(f"pid {holder.pid} on {holder.host}" if holder is not None else "a process")
        return sorted(set(out))

    def busy(self) -> str | None:
        """Why the store must not change shape now (other processes compute into it), or None."""
        others = self.others()
        if not others:
            return None
        return f"{len(others)} other lca compute process(es) still compute into it ({', '.join(others[:3])})"

    # -- markers ----------------------------------------------------------------------------------------

    def _write_marker(self, name: str, doc: dict[str, Any]) -> None:
        self._mkdir()
        path = self.folder / name
        tmp = self.folder / f".{name}.tmp-{new_token()}"
        with storage_errors(f"cannot write {path}"):
            tmp.write_text(json.dumps(doc, sort_keys=True))
            os.replace(tmp, path)

    def _read_marker(self, name: str) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.folder / name).read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def publish(self, token: str, *, accepts: bool = True, job: str = "") -> None:
        """The owner's ready marker: the store is prepared and at its place; helpers may join ``accepts``."""
        self._write_marker("ready", {"token": token, "accepts": accepts, "job": job, "pid": os.getpid()})

    def ready(self) -> dict[str, Any] | None:
        """The ready marker, if any: ``{"token", "accepts", "job", "pid"}``."""
        return self._read_marker("ready")

    def withdraw(self, token: str) -> None:
        """Remove the ready marker if it is this owner's."""
        doc = self.ready()
        if doc is not None and doc.get("token") == token:
            with contextlib.suppress(OSError):
                (self.folder / "ready").unlink()

    def abort(self, job: str, rank: int, code: int, message: str) -> None:
        """Tell the other ranks of ``job`` that this one failed (best effort: it is failing already)."""
        with contextlib.suppress(Exception):
            self._write_marker(f"abort-{job}", {"rank": rank, "code": code, "message": message})

    def aborted(self, job: str) -> dict[str, Any] | None:
        """The abort marker of ``job``: ``{"rank", "code", "message"}``, or None."""
        return self._read_marker(f"abort-{job}")

    def clear_abort(self, job: str) -> None:
        """Remove ``job``'s abort marker."""
        with contextlib.suppress(OSError):
            (self.folder / f"abort-{job}").unlink()

    # -- the end ----------------------------------------------------------------------------------------

    def close(self, job: str = "") -> None:
        """Release every claim held, stop the heartbeat, tidy up and remove the folder when it is empty.

        Left-overs of dead processes are removed: their claims, a ready marker whose owner left, half-written
        temporary files (after
        :data:`STALE_TEMP_SECONDS`), and abort markers of jobs other than ``job`` (after
        :data:`ABORT_SEEN_SECONDS`: every live rank has seen them by then).
        """
        for chunk in list(self.held):
            self.release(chunk)
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return
        now = time.time()
        for path in entries:
            with contextlib.suppress(OSError):
                name = path.name
                if _CHUNK.match(name):
                    found = read_claim(path, self.lease)
                    if found is not None and not found[1]:
                        path.unlink()
                    continue
                if name == "ready":  # a dead owner's (the live owner withdraws its own when it leaves)
                    held = read_claim(store_lock_path(self.store), self.lease)
                    owner = held[0] if held is not None and held[1] else None
                    doc = self.ready()
                    if doc is None or owner is None or owner.token != doc.get("token"):
                        path.unlink()
                    continue
                age = now - path.stat().st_mtime
                temporary = ".tmp-" in name or ".stale-" in name
                foreign_abort = name.startswith("abort-") and name != f"abort-{job}"
                if (temporary and age > STALE_TEMP_SECONDS) or (foreign_abort and age > ABORT_SEEN_SECONDS):
                    path.unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()  # only when empty: the last process out


# -- choosing chunks -----------------------------------------------------------------------------------------


def choose_chunk(
    open_chunks: Sequence[int],
    claimed: Set[int],
    after: int | None = None,
    start: tuple[int, int] | None = None,
) -> int | None:
    """The chunk to claim next (see the module docstring), or None when every open chunk is claimed.

    Args:
        open_chunks: Chunks with rows still to compute, increasing.
        claimed: Chunks with a claim (held by anyone).
        after: The chunk this process just finished (its successor comes first).
        start: ``(rank, size)`` of a ``torchrun`` job on its first choice.

    Returns:
        A chunk of ``open_chunks`` not in ``claimed``, or None.

    """
    free = [c for c in open_chunks if c not in claimed]
    if not free:
        return None
    free_set = set(free)
    if after is not None and after + 1 in free_set:
        return after + 1
    if start is not None:
        rank, size = start
        first = open_chunks[rank * len(open_chunks) // size]
        if first in free_set:
            return first
    runs: list[list[int]] = []
    for c in free:
        if runs and runs[-1][1] == c:
            runs[-1][1] = c + 1
        else:
            runs.append([c, c + 1])
    a, b = max(runs, key=lambda r: (r[1] - r[0], -r[0]))  # the longest run; the first of equals
    if a - 1 in claimed and b - a >= 2:
        return a + (b - a) // 2  # its first half is left to whoever works just before it
    return a


@dataclass(frozen=True)
class Claimed:
    """A claimed chunk and the blocks of its rows to compute.

    Attributes:
        chunk: Row chunk index.
        blocks: Runs of consecutive rows of the chunk that are in scope and not done, increasing.

    """

    chunk: int
    blocks: list[range]


class ChunkQueue:
    """Hands out claimed chunks of a store until its scope is done.

    It keeps its own view of which rows are done, read in full once and then only where it matters: a chunk
    it is about to compute (just claimed), the rows it computed itself, and, while every open chunk is
    claimed by others, those chunks. Rows only ever become done, so the view is never wrong about a row it
    calls open for long, and a claim decision costs a listing of the claims folder, not a read of the
    whole store (which would make a long run's claims quadratic in its length).

    Args:
        store: The store (open for writing).
        board: Its claims folder.
        scope: The pairs to compute.
        wait: When every open chunk is claimed by live processes, wait for them (the owner and ``torchrun``
            ranks: they end when the scope is done) instead of returning None (a helper).
        start: ``(rank, size)`` of a ``torchrun`` rank (its first chunk), else None.
        stop: Returns None once set.
        idle: Called while waiting (progress), at most every :data:`POLL_SECONDS`.
        poll: Seconds between looks while waiting.

    """

    def __init__(
        self,
        store: LcaStore,
        board: Board,
        scope: Scope,
        *,
        wait: bool,
        start: tuple[int, int] | None = None,
        stop: threading.Event | None = None,
        idle: Callable[[], None] | None = None,
        poll: float = POLL_SECONDS,
    ) -> None:
        self.store = store
        self.board = board
        self.scope = scope
        self.wait = wait
        self.stop = stop
        self.idle = idle
        self.poll = poll
        self._start = start
        self.rows = store.rows_per_chunk
        self.in_scope = scope.mask(store.steps, self.rows)
        #: ``(T,)`` rows known to be done (by any process).
        self.done = store.done()
        self.done_at_start = int((self.done & self.in_scope).sum())
        #: Rows in scope known to be done (by any process).
        self.done_now = self.done_at_start
        self._excluded: set[int] = set()
        self._todo = self._count()

    def _count(self) -> np.ndarray:
        """Rows in scope not known done, per chunk ``(C,)``."""
        n_chunks = -(-len(self.done) // self.rows)
        return np.bincount(np.flatnonzero(self.in_scope & ~self.done) // self.rows, minlength=n_chunks)

    @property
    def total(self) -> int:
        """Rows in scope."""
        return int(self.in_scope.sum())

    def extend(self) -> None:
        """The store grew (checkpoints appended while following): new rows are not done."""
        old = len(self.done)
        self.in_scope = self.scope.mask(self.store.steps, self.rows)
        self.in_scope[sorted(self._excluded)] = False
        self.done = np.concatenate([self.done, np.zeros(len(self.in_scope) - old, dtype=bool)])
        self._todo = self._count()

    def exclude(self, rows: Sequence[int]) -> None:
        """Rows that cannot be computed (their checkpoints were lost while following): out of scope for good."""
        self._excluded.update(int(t) for t in rows)
        self.in_scope[sorted(self._excluded)] = False
        self._todo = self._count()

    def mark(self, rows: range) -> None:
        """Rows this process computed (they are done once its writer has written them)."""
        self._update(rows.start, rows.stop, np.ones(len(rows), dtype=bool))

    def _update(self, a: int, b: int, fresh: np.ndarray) -> None:
        new = fresh & ~self.done[a:b]
        self.done[a:b] |= fresh
        self.done_now += int((new & self.in_scope[a:b]).sum())
        for c in range(a // self.rows, (b - 1) // self.rows + 1) if b > a else ():
            lo, hi = c * self.rows, min((c + 1) * self.rows, len(self.done))
            self._todo[c] = int((self.in_scope[lo:hi] & ~self.done[lo:hi]).sum())

    def _refresh(self, chunks: Sequence[int]) -> None:
        """Read the done rows of these chunks again (other processes may have finished them)."""
        for c in chunks:
            a, b = c * self.rows, min((c + 1) * self.rows, len(self.done))
            fresh = np.logical_and.reduce([np.asarray(self.store.array(s, "done")[a:b]) for s in self.store.sets])
            self._update(a, b, fresh.astype(bool))

    def _blocks(self, chunk: int) -> list[range]:
        a, b = chunk * self.rows, min((chunk + 1) * self.rows, len(self.done))
        todo = self.in_scope[a:b] & ~self.done[a:b]
        out: list[range] = []
        for k in np.flatnonzero(todo):
            t = a + int(k)
            if out and out[-1].stop == t:
                out[-1] = range(out[-1].start, t + 1)
            else:
                out.append(range(t, t + 1))
        return out

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def next(self, after: int | None = None) -> Claimed | None:
        """Claim the next chunk with rows to compute.

        Args:
            after: The chunk just finished by this process (its successor is preferred).

        Returns:
            The claimed chunk, or None when the scope is done (or, without ``wait``, when what is left is
            claimed by live processes), or when stopped (a stop set before the first call still gives one).

        """
        start, self._start = self._start, None
        looked = after is not None  # a stop request before any work still lets the first pair run (as signals do)
        while not (looked and self._stopped()):
            looked = True
            open_chunks = [int(c) for c in np.flatnonzero(self._todo)]
            if not open_chunks:
                return None
            claimed = self.board.claimed()
            choice = choose_chunk(open_chunks, claimed, after, start)
            if choice is None:
                # Every open chunk is claimed: see whether their holders finished them, take a dead one's over.
                self._refresh(open_chunks)
                choice = next(
                    (c for c in open_chunks if self._todo[c] and c not in self.board.held and self.board.stale(c)),
                    None,
                )
                if not self._todo.any():
                    return None
            if choice is not None:
                if not self.board.claim(choice):
                    continue  # taken by someone else meanwhile: look again
                self._refresh([choice])  # it may have been finished meanwhile
                blocks = self._blocks(choice)
                if blocks:
                    return Claimed(choice, blocks)
                self.board.release(choice)
                continue
            if not self.wait:
                return None
            if self.idle is not None:
                self.idle()
            if self.stop is not None:
                self.stop.wait(self.poll)
            else:
                time.sleep(self.poll)
        return None
