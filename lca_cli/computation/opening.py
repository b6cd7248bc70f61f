"""Getting the store ``lca compute`` writes into: locked, checked, created atomically or replaced safely.

:func:`prepare` takes the store lock (:mod:`lca_cli.store.claims`), then, by what is at ``--out``
(:func:`lca_cli.store.placement.inspect_path`):

* an lca store: checks that it is this config's and this run's (identity attributes, layout, sets, format,
  checkpoint fingerprints: :mod:`lca_cli.store.identity`), checks its chunks (:mod:`lca_cli.store.integrity`; with
  ``repair``, verifies every checksum and marks damaged rows to recompute) and appends new checkpoints;
* nothing, an empty folder, or a store whose creation was interrupted: creates the store in a hidden sibling
  and renames it into place;
* an lca store with ``overwrite``: creates the new store in a hidden sibling and swaps it in (one atomic
  exchange) only once its first rows are durable (:meth:`Target.after_write`), so an overwrite that fails
  or is stopped early leaves the old store as it was;
* a file or a folder lca did not create: refuses, with or without ``overwrite``.

When the lock cannot be created because the file system is read-only (or not writable), a finished store of
this run is opened read-only and ``compute`` is a no-op; anything to compute is a :class:`StorageError`.

While other processes compute into the store (``busy``, from :mod:`lca_cli.computation.distributed`), the store's shape
and files are left alone: growing it, repairing it or replacing it is refused (:class:`StoreBusyError`).
:func:`open_helper` opens a store another process prepared, for a process that only computes claimed rows
into it; :meth:`Target.refresh` appends checkpoints that arrived since (``--follow``).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lca_cli.computation.config import settings_mismatch
from lca_cli.computation.staging import new_fingerprints, without_holes
from lca_cli.core.columns import Columns
from lca_cli.core.layout import Layout
from lca_cli.errors import StorageError, StoreBusyError, StoreError
from lca_cli.store.claims import Keeper, Lease, store_lock_path
from lca_cli.store.fencing import Fence
from lca_cli.store.identity import Alignment, align, check_fingerprints, fingerprints, upgrade, whole_content
from lca_cli.store.integrity import prepare_repair, quick_check, remove_partial_files, verify
from lca_cli.store.lcastore import LcaStore
from lca_cli.store.placement import (
    fsync_paths,
    inspect_path,
    remove_stale_sibling,
    remove_store,
    stale_siblings,
    storage_errors,
)

__all__ = ["Target", "open_helper", "prepare"]


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


@dataclass
class Target:
    """The store a ``compute`` call writes into.

    Attributes:
        store: The open store (in a hidden sibling until :meth:`after_write` swaps it in, with overwrite).
        out: Where the store is (or will be, after the swap).
        alignment: The store's checkpoints and the run's file for each (None where deleted).
        lock: The store lock (None when the store was opened read-only).
        keeper: Renews the lock's heartbeat.
        pending: Path of the old store the new one replaces at its first write (overwrite), else None.
        read_only: The file system refused the lock: nothing may be written (nothing was left to compute).
        repaired: Rows marked for recomputation by ``repair``, per set.
        device: Recorded in the store's attributes at the first write.
        helper: Opened by :func:`open_helper`: rows only, never the store's attributes or shape.

    """

    store: LcaStore
    out: Path
    alignment: Alignment
    lock: Lease | None = None
    keeper: Keeper | None = None
    pending: Path | None = None
    read_only: bool = False
    repaired: dict[str, list[int]] = field(default_factory=dict)
    device: str = ""
    helper: bool = False
    _touched: bool = False

    def before_write(self) -> None:
        """Called before each write: stop if the lock was lost (this process was paused past its lease)."""
        if self.lock is not None:
            self.lock.check()

    def after_write(self) -> None:
        """Called after each durable write: swap a new store into place, note the time of the last update."""
        if self.helper:
            return  # the owner alone writes attributes
        if self.pending is not None:
            assert self.lock is not None and self.lock.fence is not None
            _swap_in(self.store.path, self.pending, self.lock.fence)
            self.store.relocate(self.pending)
            self.pending = None
        if not self._touched:  # a store is only touched when rows are written (read-only no-ops stay exit 0)
            self._touched = True
            self.store.update_attrs({"updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": self.device})

    def refresh(self, refs: Sequence[Any], run: Path) -> bool:
        """Align the store with the run's checkpoints again and append new ones (the owner, under its lock).

        Args:
            refs: The run's checkpoints now, in step order (deleted ones may be missing).
            run: Run directory (messages).

        Returns:
            Whether checkpoints were appended.

        Raises:
            StoreError: As for :func:`prepare` (a changed history, a replaced checkpoint).

        """
        al = _match_run(self.store, refs, run, self.store.done())
        grown = len(al.steps) > al.n_stored
        if grown:
            fps = new_fingerprints(al)  # a hole (a checkpoint lost while following) has none
            self.store.extend(al.steps, fps)
        self.alignment = al
        return grown

    def close(self) -> None:
        """Remove a new store that never got rows (the old one stays), stop the heartbeat, release the lock."""
        try:
            if self.pending is not None:
                with contextlib.suppress(OSError, StorageError):
                    remove_store(self.store.path)
        finally:
            if self.keeper is not None:
                self.keeper.close()
            if self.lock is not None:
                self.lock.release()


def _swap_in(new: Path, out: Path, fence: Fence) -> None:
    """Put a new store (built in the lock's fence folder) at ``out``, replacing the old one.

    A rename out of the fence: a process that lost the lock while paused never swaps its store in.
    """
    with storage_errors(f"replacing {out}"):
        old = fence.place(new, out)
        fsync_paths([out], parents=True)
        # Someone may have put a file into the old store meanwhile: then it stays, in the fence folder, which the
        # next owner of the store retires.
        if old is not None:
            with contextlib.suppress(StoreError):
                remove_store(old)


def _check_same(store: LcaStore, identity: Any, layout: Layout, sets: list[str]) -> None:
    out = store.path
    stored = _normalise(store.attrs.get("identity") or {})
    if stored != identity or store.layout != layout:
        differ = settings_mismatch(stored, identity) if store.layout == layout else None
        if differ:  # only result-changing compute settings differ: say which, and how to keep using the store
            raise StoreError(f"{out} was computed with {differ}")
        raise StoreError(
            f"{out} was computed from another model, data, loss or compute settings than this config; "
            "pass --overwrite to replace it, or --out to write elsewhere"
        )
    if store.sets != sets:
        raise StoreError(f"{out} holds sets {store.sets}, the config {sets}; use --overwrite or --out")


def _match_run(store: LcaStore, refs: Sequence[Any], run: Path, done: np.ndarray) -> Alignment:
    """Align the store's checkpoints with the run's and check the ones that matter are the same files."""
    al = align(store.steps, refs, store.path, run)
    grown = np.concatenate([done, np.zeros(len(al.steps) - 1 - len(done), bool)])
    # Pairs known to be missing (checkpoints lost while following, recorded in the store) are not asked for.
    al, known = without_holes(al, store, grown)
    missing = al.missing_for(grown | known)
    if missing:
        t, i = missing[0]
        n = len({p for p, _ in missing})
        raise StoreError(
            f"{store.path}: {n} pair(s) still to compute need checkpoints that are gone from {run} (first: step "
            f"{al.steps[i]}, for the pair {al.steps[t]} -> {al.steps[t + 1]}); restore them, or compute what exists "
            "into a new store with --out"
        )
    stored = store.fingerprints
    if stored is not None:
        # A checkpoint is bound to the store once a done row came from it: it must still be the same file.
        # One that no done row used yet may have been replaced (a corrupt checkpoint fixed): re-recorded.
        n = al.n_stored
        bound = np.zeros(n, bool)
        bound[:-1] |= done[: n - 1]
        bound[1:] |= done[: n - 1]
        present = [i for i in range(n) if al.refs[i] is not None]
        check = {i for t in np.flatnonzero(~grown) for i in (int(t), int(t) + 1) if i < n and bound[i]}
        ends = [i for i in present if bound[i]]
        check |= {ends[0], ends[-1]} if ends else set()  # another run differs at both ends
        every_byte = whole_content(store.attrs)
        check_fingerprints(al, stored, sorted(check), store.path, run, every_byte)
        if not every_byte and not store.read_only:
            upgrade(store, al)  # a store of an older lca: its sampled fingerprints become whole-content ones
            stored = store.fingerprints
        loose = [i for i in present if not bound[i]]
        if loose:
            fresh = fingerprints([al.refs[i] for i in loose])  # type: ignore[misc]
            changed = [k for k, i in enumerate(loose) if not np.array_equal(fresh[k], stored[i])]
            if changed:
                store.set_fingerprints([loose[k] for k in changed], fresh[changed])
    return al


@dataclass(frozen=True)
class _Request:
    """What :func:`prepare` was asked (see its arguments), handed to the steps that follow the lock."""

    out: Path
    run: Path
    refs: Sequence[Any]
    identity: Any
    layout: Layout
    sets: list[str]
    attrs: dict[str, Any]
    rows_per_chunk: int
    overwrite: bool
    repair: bool
    device: str
    durable: bool
    columns: Columns | None
    busy: Callable[[], str | None]


def prepare(
    out: Path,
    run: Path,
    refs: Sequence[Any],
    *,
    identity: Any,
    layout: Layout,
    sets: list[str],
    attrs: dict[str, Any],
    rows_per_chunk: int,
    overwrite: bool,
    repair: bool,
    device: str,
    durable: bool = True,
    columns: Columns | None = None,
    busy: Callable[[], str | None] | None = None,
    purpose: str = "lca compute",
) -> Target:
    """Lock, open or create the store ``compute`` writes into (see the module docstring).

    Args:
        out: Store path.
        run: Run directory (messages).
        refs: The run's checkpoints in step order (``.path``, ``.step``).
        identity: The config's identity (must match a resumed store's).
        layout: Parameter layout.
        sets: Evaluation set names.
        attrs: Attributes of a new store.
        rows_per_chunk: Rows per chunk of a new store (0 = automatic).
        overwrite: Replace an existing lca store.
        repair: Verify every checksum and recompute damaged rows.
        device: Recorded at the first write.
        durable: fsync before marking rows done.
        columns: What a new store's ``lca`` columns hold (None: one per parameter).
        busy: Why the store must not change shape now (other processes compute into it), or None.
        purpose: Recorded in the lock, for other processes' messages.

    Returns:
        The target; call :meth:`Target.close` when done.

    Raises:
        StoreError: ``out`` is a file or a folder lca did not create, or a store of another config, run or
            format, or damaged (without ``repair``).
        StoreBusyError: Another ``lca compute`` holds the store, or other processes compute into it and it
            would have to grow, be repaired or be replaced.
        StorageError: The file system refuses.

    """
    identity = _normalise(identity)
    # A resume needs no walk over the store's files; replacing it does (nothing lca did not create is deleted).
    state = inspect_path(out, deep=overwrite)
    if state.kind == "file":
        raise StoreError(f"--out {out} is {state.detail}, not a store (a store is a folder): give a folder path")
    if state.kind == "foreign":
        if overwrite:
            raise StoreError(
                f"{out} is not an lca store (it holds {state.detail}); --overwrite replaces only lca stores and "
                "empty folders, so nothing was deleted: choose another --out"
            )
        raise StoreError(
            f"{out} exists and is not an lca store (it holds {state.detail}); lca writes only into its own stores: "
            "choose another --out"
        )
    with storage_errors(f"cannot create {out.parent}"):
        out.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = Lease.acquire(store_lock_path(out), str(out), purpose=purpose, fenced=True)
    except StorageError:
        if state.kind != "store" or overwrite or repair:
            raise
        return _read_only(out, run, refs, identity, layout, sets)
    keeper = Keeper()
    keeper.add(lock)
    req = _Request(
        out=out, run=run, refs=refs, identity=identity, layout=layout, sets=sets, attrs=attrs,
        rows_per_chunk=rows_per_chunk, overwrite=overwrite, repair=repair, device=device, durable=durable,
        columns=columns, busy=busy or (lambda: None),
    )  # fmt: skip
    try:
        return _prepare_locked(req, lock, keeper)
    except BaseException:
        keeper.close()
        lock.release()
        raise


def _read_only(out: Path, run: Path, refs: Sequence[Any], identity: Any, layout: Layout, sets: list[str]) -> Target:
    """A finished store on a file system lca cannot write: a no-op when nothing is left to compute."""
    store = LcaStore.open(out, mode="r")
    _check_same(store, identity, layout, sets)
    done = store.done()
    al = _match_run(store, refs, run, done)
    if len(al.steps) > al.n_stored or not done.all():
        todo = int((~done).sum()) + len(al.steps) - al.n_stored
        raise StorageError(
            f"cannot write {out} (read-only file system or no permission) and {todo} pair(s) are left to compute; "
            "make it writable, or copy the store elsewhere and pass --out"
        )
    return Target(store, out, al, read_only=True)


def _prepare_locked(req: _Request, lock: Lease, keeper: Keeper) -> Target:
    # Holding the lock, no other owner works on this store: siblings left by a killed run are ours to clean.
    for stale in stale_siblings(req.out):  # names of lca before fencing (a new store is now built in the fence)
        remove_stale_sibling(stale)
    # Again: another process may have finished creating it meanwhile.
    state = inspect_path(req.out, deep=req.overwrite)
    if state.kind == "foreign":
        raise StoreError(f"{req.out} is not an lca store (it holds {state.detail}); choose another --out")
    # Helpers of an earlier owner may still compute claimed rows into it: then its files and shape stay as they are.
    active = req.busy() if state.kind == "store" else None
    if active and (req.overwrite or req.repair):
        what = "replace" if req.overwrite else "repair"
        raise StoreBusyError(f"{req.out}: {active}; cannot {what} it now: wait for them to finish, or stop them")
    if state.kind == "store" and not req.overwrite:
        store = LcaStore.open(req.out, mode="r+", check=False, durable=req.durable, fence=lock.fence)
        store.require_current()
        _check_same(store, req.identity, req.layout, req.sets)
        if not active:  # a *.partial file may be a live helper's chunk write in flight
            with storage_errors(f"writing {req.out}"):
                remove_partial_files(req.out)
        repaired: dict[str, list[int]] = {}
        if req.repair:
            repaired = prepare_repair(store, verify(store))
        else:
            quick_check(store)
        al = _match_run(store, req.refs, req.run, store.done())
        if len(al.steps) > al.n_stored and active:
            raise StoreBusyError(
                f"{req.out}: {active}; cannot append the run's {len(al.steps) - al.n_stored} new checkpoint(s) now: "
                "wait for them to finish, or compute into the store as it is with --cooperate"
            )
        if len(al.steps) > al.n_stored:
            fps = new_fingerprints(al)  # a hole (a checkpoint lost while following) has none
            store.extend(al.steps, fps)
        else:
            store.extend(al.steps)  # heals arrays left longer by an interrupted append
        return Target(store, req.out, al, lock, keeper, repaired=repaired, device=req.device)
    if req.repair and state.kind != "store":
        raise StoreError(f"--repair: {req.out} is not an lca store yet; run without --repair to create it")
    steps = [r.step for r in req.refs]
    fps = fingerprints(list(req.refs))
    assert lock.fence is not None  # the store lock is always fenced
    new = lock.fence.temp("store")  # built in the fence: only the lock's holder can move it into place
    try:
        store = LcaStore.create(
            new, layout=req.layout, sets=req.sets, steps=steps, attrs=req.attrs, rows_per_chunk=req.rows_per_chunk,
            fingerprints=fps, durable=req.durable, columns=req.columns, fence=lock.fence,
        )  # fmt: skip
    except BaseException:
        with contextlib.suppress(Exception):
            remove_store(new)
        raise
    al = Alignment(steps, list(req.refs), len(steps))
    if state.kind == "store":  # overwrite: swapped in once the first rows are durable
        return Target(store, req.out, al, lock, keeper, pending=req.out, device=req.device)
    with storage_errors(f"creating {req.out}"):
        old = lock.fence.place(new, req.out)  # over nothing, an empty folder or a half-created store
        fsync_paths([req.out], parents=True)
        if old is not None:
            remove_store(old)
    store.relocate(req.out)
    return Target(store, req.out, al, lock, keeper, device=req.device)


def open_helper(
    out: Path,
    run: Path,
    refs: Sequence[Any],
    *,
    identity: Any,
    layout: Layout,
    sets: list[str],
    durable: bool = True,
) -> Target:
    """Open a store another process (its owner) prepared, to compute claimed rows into it.

    The store must be this config's and this run's: the identity, layout and sets must match, and the
    first and last of its checkpoints present in ``run`` must be the files it recorded (another run differs
    at both ends). Nothing is written here; checkpoints the run gained since the owner prepared the store
    are left to the owner.

    Raises:
        StoreError: If it is not an lca store of this config and run.

    """
    store = LcaStore.open(out, mode="r+", check=False, durable=durable)
    store.require_current()
    _check_same(store, _normalise(identity), layout, sets)
    al = align(store.steps, refs, store.path, run)
    al = Alignment(al.steps[: al.n_stored], al.refs[: al.n_stored], al.n_stored)
    stored = store.fingerprints
    present = [i for i, r in enumerate(al.refs) if r is not None]
    if stored is not None and present:
        ends = sorted({present[0], present[-1]})
        check_fingerprints(al, stored, ends, store.path, run, whole_content(store.attrs))
    return Target(store, out, al, helper=True)
