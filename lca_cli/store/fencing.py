"""Fencing: every write that changes a store re-proves, atomically, that its writer still holds the store lock.

A lock alone cannot stop a process that was paused (``SIGSTOP``, a Slurm suspend, a VM freeze) between its
check of the lock and its write: when it resumes, the check is long past and another process may own the
store. So the lock's holder also owns a *fence folder*, ``.NAME.lock.fence-TOKEN`` beside the lock (created
with the lock, named by its random token: :meth:`lca_cli.store.claims.Lease.acquire`), and every change it
makes to a store is a ``rename(2)`` *out of* that folder:

* a file (a chunk, a ``zarr.json``) is written complete under a temporary name inside the fence folder, then
  renamed to its place (``link(2)`` for a write that must not replace anything);
* a missing folder is made inside the fence folder and renamed into place;
* a deletion renames its target *into* the fence folder first;
* a new store is built inside the fence folder and renamed (or exchanged, for ``--overwrite``) into place.

A process that takes the lock over renames every other fence folder of that lock aside and deletes it
*before* it returns from acquiring, so before it reads or writes the store. From then on the old holder's
renames cannot resolve their source (or destination) path and fail with ``ENOENT``, whatever it was doing when
it was paused: a half-written temporary file stays in the retired folder, and nothing reaches the store. The
file system does the check and the write in one system call, so no pause can fall between them. A rename that
got in before the takeover finished is a write made while the lock was still held (it lands before the new
owner's first read), which the store's write order already keeps consistent. A write that finds its fence
gone raises :class:`~lca_cli.errors.StoreBusyError` (exit 9): another process took over.

:class:`FencedStore` is Zarr's local store writing this way (``fence=None``: temporary files beside their
targets, for processes that write without the lock). Either way a folder is only ever created *inside* an
existing store root, one level at a time: a store deleted under a running compute is never re-created; the
write stops with one line (:class:`~lca_cli.errors.StoreError`, exit 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

from zarr.core.buffer import Buffer
from zarr.storage import LocalStore

from lca_cli.errors import StoreBusyError, StoreError
from lca_cli.store.direct import SplitBytes, write_file
from lca_cli.store.placement import exchange

__all__ = ["Fence", "FencedStore", "fence_folder", "fenced", "retire_fences"]

#: Suffix of a fence folder's name after the claim file's name.
_FENCE = ".fence-"


def fence_folder(claim: Path, token: str) -> Path:
    """The fence folder of the holder ``token`` of the claim file ``claim``."""
    return claim.with_name(f"{claim.name}{_FENCE}{token}")


def retire_fences(claim: Path, keep: str) -> None:
    """Retire every fence folder of ``claim`` but ``keep``'s: rename it aside (atomic), then delete it.

    Call only as the claim's new holder, before touching what it protects. The rename is what fences the old
    holder off; the deletion only tidies up (the folder holds lca's temporary files and, after an interrupted
    ``--overwrite``, the store being built or the old one being retired).
    """
    prefix = f"{claim.name}{_FENCE}"
    try:
        names = [e.name for e in os.scandir(claim.parent)]
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix) or name == f"{prefix}{keep}":
            continue
        aside = claim.with_name(f"{name}.retired-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(claim.parent / name, aside)
        except FileNotFoundError:
            continue  # retired meanwhile by another process
        shutil.rmtree(aside, ignore_errors=True)
    for stale in claim.parent.glob(f"{glob_escape(prefix)}*.retired-*"):  # a retirement killed half-way
        shutil.rmtree(stale, ignore_errors=True)


class Fence:
    """The writes of the lock's holder, each one a rename out of (or into) its fence folder (module docstring).

    Args:
        folder: The fence folder (exists while the lock is ours).
        lock: The lock file (messages).

    """

    def __init__(self, folder: Path, lock: Path) -> None:
        self.folder = folder
        self.lock = lock

    def lost(self) -> StoreBusyError:
        """The error of a write that found the fence retired."""
        return StoreBusyError(
            f"another process took over the lock {self.lock} while this one was paused or stalled past its lease; "
            "stopped without writing further"
        )

    def alive(self) -> bool:
        """Whether the fence folder is still ours (a cheap early check; the renames are the real one)."""
        return self.folder.is_dir()

    def temp(self, tag: str = "tmp") -> Path:
        """A fresh name inside the fence folder."""
        return self.folder / f"{tag}-{uuid.uuid4().hex}"

    def _open_temp(self) -> tuple[int, Path]:
        temp = self.temp()
        try:
            return os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), temp
        except FileNotFoundError:
            raise self.lost() from None

    def move_in(self, source: Path, dest: Path) -> None:
        """Rename ``source`` (inside the fence folder) to ``dest``; :meth:`lost` if the fence was retired."""
        try:
            os.rename(source, dest)
        except FileNotFoundError:
            if not self.alive():
                raise self.lost() from None
            raise

    def place(self, source: Path, dest: Path) -> Path | None:
        """Put ``source`` (a store built inside the fence folder) at ``dest``, replacing what is there.

        Returns:
            Where what was at ``dest`` went (inside the fence folder, for the caller to delete), or None.

        Raises:
            StoreBusyError: If the fence was retired: nothing was moved.

        """
        try:
            if not os.path.lexists(dest):
                os.rename(source, dest)
                return None
            if exchange(source, dest):  # one atomic step: the old one now lies where the new one was built
                return source
            old = self.temp("old")
            os.rename(dest, old)  # into the fence: fails, moving nothing, once it is retired
            os.rename(source, dest)
            return old
        except FileNotFoundError:
            if not self.alive():
                raise self.lost() from None
            raise

    def mkdir(self, dest: Path) -> None:
        """Create the folder ``dest`` (its parent must exist) by renaming a new folder out of the fence."""
        temp = self.temp("dir")
        try:
            os.mkdir(temp)
        except FileNotFoundError:
            raise self.lost() from None
        try:
            self.move_in(temp, dest)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.rmdir(temp)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                raise

    def remove(self, path: Path) -> None:
        """Delete a file or folder by renaming it into the fence folder first (missing: nothing to do)."""
        aside = self.temp("del")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            if not self.alive():
                raise self.lost() from None
            return
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(aside)

    def write(
        self, dest: Path, data: Any, *, exclusive: bool = False, parents: Callable[[], None] | None = None
    ) -> None:
        """Write ``data`` to the file ``dest`` as a rename out of the fence.

        Args:
            dest: The file.
            data: Its bytes (any buffer, or a :class:`~lca_cli.store.direct.SplitBytes`).
            exclusive: Never replace an existing file.
            parents: Called when ``dest``'s folder is missing, to create it (then the rename is tried again,
                without writing the bytes again).

        Raises:
            StoreBusyError: If the fence was retired (another process took the lock over).
            FileExistsError: With ``exclusive``, if ``dest`` exists.
            FileNotFoundError: If ``dest``'s folder does not exist.

        """
        fd, temp = self._open_temp()
        try:
            try:
                write_file(fd, data)
            finally:
                os.close(fd)
            for attempt in range(2):
                try:
                    if exclusive:
                        os.link(temp, dest)
                    else:
                        os.rename(temp, dest)
                    break
                except FileNotFoundError:
                    if not self.alive():
                        raise self.lost() from None
                    if attempt or parents is None:
                        raise
                    parents()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)  # after a link, or a failure: the temporary name goes

    def close(self) -> None:
        """Delete the fence folder (the lock is being released)."""
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def fenced(fence: Fence | None) -> Iterator[None]:
    """Report a write that failed because its fence was retired (its store went with it) as :meth:`Fence.lost`.

    A holder paused after building a new store in its fence finds that store gone on waking: its reads of it
    fail first (a missing array), and the truth is that another process took the lock over.
    """
    try:
        yield
    except Exception:
        if fence is not None and not fence.alive():
            raise fence.lost() from None
        raise


class FencedStore(LocalStore):
    """Zarr's local store, every change a fenced rename (:class:`Fence`), never re-creating a deleted store.

    Args:
        root: The store folder (must exist).
        fence: The lock holder's fence; None for a process that writes without the lock (a helper computing
            claimed rows): its temporary files are written beside their targets (``*.partial``, as Zarr's).

    """

    def __init__(self, root: Path | str, *, read_only: bool = False, fence: Fence | None = None) -> None:
        super().__init__(root, read_only=read_only)
        self.fence = fence

    def with_read_only(self, read_only: bool = False) -> FencedStore:
        """A copy of this store, read-only or not (same fence)."""
        return type(self)(root=self.root, read_only=read_only, fence=self.fence)

    async def _open(self, *, mode: Any = None) -> None:
        self._check_root()  # never created here (Zarr's own store makes it, and so would re-create a deleted one)
        await super(LocalStore, self)._open()

    def _ensure_open_sync(self) -> None:
        if not self._is_open:
            self._check_root()
            self._is_open = True

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise StoreError(
                f"{self.root} was deleted while lca was writing to it; nothing was re-created: rerun the same "
                "command to compute it again"
            )

    def _parents(self, dest: Path) -> None:
        """Create the missing folders above ``dest``, one level at a time, never the store root itself."""
        missing: list[Path] = []
        folder = dest.parent
        while not folder.is_dir():
            if folder == self.root or self.root not in folder.parents:
                self._check_root()
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(folder))
            missing.append(folder)
            folder = folder.parent
        self._check_root()
        key = dest.relative_to(self.root).as_posix()
        if missing and "/c/" in f"/{key}":  # a chunk: its array's metadata must be there (not a store half deleted)
            node = self.root / f"/{key}".split("/c/")[0].lstrip("/")
            if not (node / "zarr.json").is_file():
                raise StoreError(
                    f"{self.root}: {node.relative_to(self.root)}/zarr.json is gone (the store was deleted or damaged "
                    "while lca was writing to it); nothing was re-created"
                )
        for made in reversed(missing):
            if self.fence is not None:
                self.fence.mkdir(made)
            else:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(made)

    def _put(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        self._put_bytes(key, value.as_buffer_like(), exclusive)

    def _put_bytes(self, key: str, data: Any, exclusive: bool = False) -> None:
        dest = self.root / key
        for attempt in range(2):
            try:
                if self.fence is not None:
                    self.fence.write(dest, data, exclusive=exclusive, parents=lambda: self._parents(dest))
                    return
                temp = dest.with_name(f"{dest.name}.{uuid.uuid4().hex}.partial")
                fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
                try:
                    try:
                        write_file(fd, data)
                    finally:
                        os.close(fd)
                    if exclusive:
                        os.link(temp, dest)
                    else:
                        os.replace(temp, dest)
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(temp)
                return
            except FileNotFoundError:
                if attempt:
                    raise
                self._parents(dest)  # then once more

    def put_file(self, key: str, data: SplitBytes) -> None:
        """Write one file of the store (fenced) from bytes made outside Zarr (``chunks.write_chunks``).

        Args:
            key: Its key (``"train/lca/c/3/0"``).
            data: Its bytes.

        """
        self._ensure_open_sync()
        self._check_writable()
        self._put_bytes(key, data)

    def set_sync(self, key: str, value: Buffer) -> None:
        """Write a key (fenced)."""
        self._ensure_open_sync()
        self._check_writable()
        self._put(key, value)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(self._put, key, value, exclusive)

    def _remove(self, key: str) -> None:
        path = self.root / key
        if self.fence is not None:
            self.fence.remove(path)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def delete_sync(self, key: str) -> None:
        """Delete a key (fenced)."""
        self._ensure_open_sync()
        self._check_writable()
        self._remove(key)

    async def delete(self, key: str) -> None:
        """Delete a key (fenced)."""
        self._check_writable()
        await asyncio.to_thread(self._remove, key)

    async def delete_dir(self, prefix: str) -> None:
        """Delete a folder of keys (fenced)."""
        self._check_writable()
        if (self.root / prefix).is_file():
            raise ValueError(f"delete_dir was passed a {prefix=!r} that is a file")
        await asyncio.to_thread(self._remove, prefix)

    async def clear(self) -> None:
        """Refused: a store is never emptied in place."""
        raise StoreError(f"{self.root}: lca never clears a store in place")
