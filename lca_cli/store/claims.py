"""Exclusive claims with a lease: the store lock (one ``lca compute`` per store) and, later, per-block claims.

A claim is a small file written under a temporary name and linked into place with ``link(2)``, which fails
when the claim exists (atomic on local file systems and on NFS: the classic NFS-safe lock). It records who
holds it: a random token, pid, host, boot and pid-namespace id, the process's start time, and a heartbeat
time rewritten every :data:`HEARTBEAT_SECONDS` by a background thread (:class:`Keeper`). A claim is
*stale*, and may be taken over, when its holder is certainly dead:

* on the same machine (same host, boot and pid namespace), when its pid no longer runs or now belongs to a
  process started at another time (pid reuse): at once;
* otherwise, when neither its heartbeat nor the file's modification time is younger than
  :data:`LEASE_SECONDS` (this assumes the machines' clocks agree to well under a minute, as NTP keeps them).

Taking over renames the stale file aside and checks that it was still the stale one, so two processes
reclaiming at once cannot both win, and a holder whose claim was taken (it was stopped for longer than the
lease) notices at its next heartbeat or :meth:`Lease.check` and stops. A check before a write still leaves a
moment between the two in which the holder can be paused; a *fenced* lease (the store lock) closes it: its
holder writes only by renames out of its own fence folder, which a takeover retires before it returns
(:mod:`lca_cli.store.fencing`), so a holder that lost the lock never writes again, whenever it was paused.

The store lock is :func:`store_lock_path` (a hidden sibling of the store, so it exists before the store
does and stays put when a new store is swapped in). Per-chunk claims of the processes that compute into a
store are further :class:`Lease` files, one per row chunk in the store's claims folder, renewed by the
same kind of :class:`Keeper` (:mod:`lca_cli.computation.distributed`); :func:`read_claim` tells who holds one, and
whether it is stale, without trying to take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from lca_cli.errors import StoreBusyError
from lca_cli.store.fencing import Fence, fence_folder, retire_fences
from lca_cli.store.placement import new_token, storage_errors

__all__ = ["HEARTBEAT_SECONDS", "LEASE_SECONDS", "Holder", "Keeper", "Lease", "read_claim", "store_lock_path"]

#: A claim whose heartbeat is older than this (and whose holder cannot be checked directly) is stale.
LEASE_SECONDS = 120.0
#: How often a holder rewrites its heartbeat.
HEARTBEAT_SECONDS = 10.0
#: Claim files are written as one fixed-size block, so a reader never sees a half-written holder.
_RECORD_BYTES = 512


def store_lock_path(store: Path) -> Path:
    """The lock file of a store: ``.NAME.lock`` beside it."""
    return store.parent / f".{store.name}.lock"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """A process's start time in clock ticks since boot (Linux), to tell a pid from its reuse; "" if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # Field 22, counted after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def _machine() -> str:
    return f"{socket.gethostname()}|{_boot_id()}|{_pid_namespace()}"


@dataclass(frozen=True)
class Holder:
    """Who holds a claim.

    Attributes:
        token: Random id of this claim (a takeover checks it).
        pid: Process id.
        host: Host name (for messages).
        machine: Host, boot id and pid namespace: pids are comparable only within one machine.
        pid_start: The process's start time (Linux), to tell a live pid from a reused one.
        started: When the claim was taken (seconds since the epoch).
        heartbeat: Last renewal (seconds since the epoch).
        purpose: What the claim is for (for messages), e.g. ``"lca compute"``.

    """

    token: str
    pid: int
    host: str
    machine: str
    pid_start: str
    started: float
    heartbeat: float
    purpose: str

    def encode(self) -> bytes:
        """The fixed-size record written to the claim file."""
        raw = json.dumps(asdict(self), sort_keys=True).encode()
        if len(raw) >= _RECORD_BYTES:
            raise ValueError("claim record too long")
        return raw.ljust(_RECORD_BYTES, b" ")

    @classmethod
    def decode(cls, raw: bytes) -> Holder | None:
        """Parse a record; None when it is empty or torn."""
        try:
            data: Any = json.loads(raw.decode())
            return cls(**data)
        except (ValueError, TypeError, UnicodeDecodeError):
            return None

    def alive(self, mtime: float, now: float, lease: float) -> bool:
        """Whether the holder may still be working (False only when it is certainly dead)."""
        if self.machine == _machine():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                pass  # exists, another user's
            start = _process_start(self.pid)
            return not (start and self.pid_start and start != self.pid_start)  # else the pid was reused
        return now - max(self.heartbeat, mtime) < lease


def read_claim(path: Path, lease: float = LEASE_SECONDS) -> tuple[Holder | None, bool] | None:
    """Who holds a claim file, and whether that holder is still alive (nothing is written or taken).

    Args:
        path: The claim file.
        lease: As for :meth:`Lease.acquire`.

    Returns:
        None when there is no claim; else ``(holder, alive)``. A torn record (a heartbeat being written) is
        ``(None, True)`` for a few seconds, then ``(None, False)``.

    """
    try:
        raw = path.read_bytes()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    now = time.time()
    holder = Holder.decode(raw)
    if holder is None:
        return None, now - mtime < 5.0
    return holder, holder.alive(mtime, now, lease)


class Lease:
    """An exclusive claim on a path, held until :meth:`release` (see the module docstring).

    Use :meth:`acquire`; renew with :meth:`renew` (or register with a :class:`Keeper`); call :meth:`check`
    before each write that must not happen after losing the claim.
    """

    def __init__(self, path: Path, fd: int, holder: Holder, lease: float, fence: Fence | None = None) -> None:
        self.path = path
        self.holder = holder
        self.lease = lease
        #: The holder's fence (a fenced lease), through which every write it protects goes.
        self.fence = fence
        self._fd = fd
        self._lost: str | None = None
        self._lock = threading.Lock()

    # -- taking -----------------------------------------------------------------------------------------

    @classmethod
    def acquire(
        cls, path: Path, what: str, *, purpose: str = "lca compute", lease: float | None = None, fenced: bool = False
    ) -> Lease:
        """Take the claim at ``path``, taking over a stale one; refuse at once if someone live holds it.

        Args:
            path: The claim file.
            what: What it protects, for messages (e.g. the store path).
            purpose: What this process is doing, recorded for others' messages.
            lease: Seconds without a heartbeat after which a holder on another machine counts as dead (None:
                :data:`LEASE_SECONDS`, read at the call, so a test can shorten it in its process).
            fenced: Also make this holder's fence folder, and retire every earlier holder's before returning
                (:mod:`lca_cli.store.fencing`): writes through :attr:`fence` can then never come from a holder
                that lost the claim.

        Returns:
            The held lease.

        Raises:
            StoreBusyError: If a live process holds it.
            StorageError: If the claim file cannot be created (read-only file system, permissions, ...).

        """
        lease = LEASE_SECONDS if lease is None else lease
        me = new_token()
        fence = None
        if fenced:  # made before the claim exists, so a claim never has a holder without its fence
            folder = fence_folder(path, me)
            with storage_errors(f"cannot create the lock {path}"):
                os.mkdir(folder)
            fence = Fence(folder, path)
        try:
            return cls._acquire(path, what, me, purpose, lease, fence)
        except BaseException:
            if fence is not None:
                fence.close()
            raise

    @classmethod
    def _acquire(cls, path: Path, what: str, me: str, purpose: str, lease: float, fence: Fence | None) -> Lease:
        for _ in range(6):
            now = time.time()
            holder = Holder(me, os.getpid(), socket.gethostname(), _machine(), _process_start(os.getpid()),
                            now, now, purpose)  # fmt: skip
            # Written complete under a temporary name, then linked into place: link(2) fails if the claim
            # exists (atomic, NFS included), and a claim file is never seen empty or half-written.
            temp = path.with_name(f"{path.name}.tmp-{me}")
            with storage_errors(f"cannot create the lock {path}"):
                fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            try:
                with storage_errors(f"cannot write the lock {path}"):
                    os.pwrite(fd, holder.encode(), 0)
                    os.fsync(fd)
                try:
                    os.link(temp, path)
                except FileExistsError:
                    os.close(fd)
                    fd = -1
                    cls._take_over_if_stale(path, what, me, lease)
                    continue
                except FileNotFoundError:  # our temporary file was cleaned up by the holder: try again
                    os.close(fd)
                    fd = -1
                    continue
            except BaseException:
                if fd >= 0:
                    os.close(fd)
                raise
            finally:
                with contextlib.suppress(OSError):
                    temp.unlink()
            lease_obj = cls(path, fd, holder, lease, fence)
            if fence is not None:
                # Ours now: every earlier holder's fence goes before we touch what the claim protects, so none
                # of their writes can land after ours begin (a paused holder's pending renames fail).
                retire_fences(path, me)
            for other in path.parent.glob(f"{glob_escape(path.name)}.tmp-*"):  # left by killed processes
                with contextlib.suppress(OSError):
                    other.unlink()
            return lease_obj
        raise StoreBusyError(f"{what}: could not take the lock {path} (other processes keep taking it); retry")

    @staticmethod
    def _take_over_if_stale(path: Path, what: str, me: str, lease: float) -> None:
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        now = time.time()
        holder = Holder.decode(raw)
        if holder is None:
            # Claims are linked into place complete, so this is a heartbeat being written (or a damaged file).
            if now - mtime < 5.0:
                raise StoreBusyError(f"{what} is being locked by another process ({path}); retry in a few seconds")
        elif holder.alive(mtime, now, lease):
            age = max(0.0, now - holder.heartbeat)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.started))
            raise StoreBusyError(
                f"{what} is in use by {holder.purpose} (pid {holder.pid} on {holder.host}, since {since}, "
                f"last heartbeat {age:.0f} s ago; lock {path}); wait for it to finish or stop it "
                f"(a dead holder's lock is taken over automatically)"
            )
        # Stale: move it aside, then make sure what we moved is what we judged (not a fresh claim).
        aside = path.with_name(f"{path.name}.stale-{me}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_bytes() != raw:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)  # a live claim after all: put it back (never over a newer one)
        finally:
            with contextlib.suppress(OSError):
                aside.unlink()

    # -- holding ----------------------------------------------------------------------------------------

    def _ours(self) -> bool:
        for attempt in range(3):  # a takeover that puts a live claim back leaves it missing for a moment
            try:
                if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                    return True
            except FileNotFoundError:
                pass
            if attempt < 2:
                time.sleep(0.05)
        return False

    def renew(self) -> None:
        """Rewrite the heartbeat; marks the lease lost if the claim file is no longer ours."""
        with self._lock:
            if self._lost is not None or self._fd < 0:
                return
            if not self._ours():
                self._lost = f"the lock {self.path} was taken over by another process"
                return
            fresh = Holder(**{**asdict(self.holder), "heartbeat": time.time()})
            try:
                os.pwrite(self._fd, fresh.encode(), 0)
            except OSError as exc:  # the next renewal may succeed; give up only when the lease is at risk
                if time.time() - self.holder.heartbeat > self.lease / 2:
                    self._lost = f"cannot renew the lock {self.path} ({exc.strerror})"
                return
            self.holder = fresh

    def check(self) -> None:
        """Raise :class:`StoreBusyError` if the claim was lost (call before writing).

        Raises:
            StoreBusyError: If another process took the claim over.

        """
        if self._lost is None and (not self._ours() or (self.fence is not None and not self.fence.alive())):
            self._lost = f"the lock {self.path} was taken over by another process"
        if self._lost is not None:
            raise StoreBusyError(f"{self._lost}; stopped without writing further (was this process paused?)")

    def release(self) -> None:
        """Give the claim up (deletes the claim file if it is still ours)."""
        with self._lock:
            if self._fd < 0:
                return
            try:
                if self._lost is None and self._ours():
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
            finally:
                os.close(self._fd)
                self._fd = -1
                if self.fence is not None:
                    self.fence.close()  # ours alone (named by our token), retired already if the claim was lost

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Keeper:
    """Renews leases from one background thread every ``interval`` seconds.

    Args:
        interval: Seconds between renewals.

    """

    def __init__(self, interval: float = HEARTBEAT_SECONDS) -> None:
        self.interval = interval
        self._leases: list[Lease] = []
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lca-heartbeat", daemon=True)
        self._thread.start()

    def add(self, lease: Lease) -> Lease:
        """Start renewing ``lease``."""
        with self._mutex:
            self._leases.append(lease)
        return lease

    def remove(self, lease: Lease) -> None:
        """Stop renewing ``lease``."""
        with self._mutex:
            if lease in self._leases:
                self._leases.remove(lease)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._mutex:
                leases = list(self._leases)
            for lease in leases:
                lease.renew()

    def close(self) -> None:
        """Stop the thread."""
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Keeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
