"""The store lock: exclusive, refused at once while its holder lives, taken over when the holder is dead."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path

import pytest

from lca_cli.errors import StoreBusyError
from lca_cli.store.claims import Holder, Keeper, Lease, store_lock_path
from lca_cli.store.fencing import fence_folder


def test_lock_path_is_a_hidden_sibling(tmp_path: Path) -> None:
    assert store_lock_path(tmp_path / "run" / "lca.zarr") == tmp_path / "run" / ".lca.zarr.lock"


def test_second_acquire_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    with Lease.acquire(path, "s.zarr") as lease:
        assert lease.holder.pid == os.getpid()
        with pytest.raises(StoreBusyError, match=rf"s.zarr is in use by lca compute \(pid {os.getpid()} on "):
            Lease.acquire(path, "s.zarr")
        lease.check()
        assert [p.name for p in tmp_path.iterdir()] == [".s.lock"]  # no temporary file left
    assert not path.exists()  # released
    Lease.acquire(path, "s.zarr").release()


def test_dead_holder_on_this_machine_is_taken_over_at_once(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: take the lock and die without releasing it (as kill -9 would)
        Lease.acquire(path, "s")
        os._exit(0)
    os.waitpid(pid, 0)
    assert Holder.decode(path.read_bytes()).pid == pid  # type: ignore[union-attr]
    with Lease.acquire(path, "s") as lease:
        assert lease.holder.pid == os.getpid()


def _write_holder(path: Path, **changes: object) -> None:
    now = time.time()
    holder = Holder("tok", 1, "elsewhere", "elsewhere|boot|ns", "", now, now, "lca compute")
    path.write_bytes(dataclasses.replace(holder, **changes).encode())  # type: ignore[arg-type]


def test_holder_on_another_machine_by_its_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    _write_holder(path)  # heartbeat now: alive
    with pytest.raises(StoreBusyError, match="pid 1 on elsewhere"):
        Lease.acquire(path, "s")
    old = time.time() - 3600
    _write_holder(path, started=old, heartbeat=old)
    os.utime(path, (old, old))
    with Lease.acquire(path, "s") as lease:  # an hour without a heartbeat: stale
        assert lease.holder.token != "tok"
    _write_holder(path, started=old, heartbeat=old)  # content old, but the file was just modified: alive
    with pytest.raises(StoreBusyError):
        Lease.acquire(path, "s", lease=60)


def test_reused_pid_is_not_a_live_holder(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    from lca_cli.store.claims import _machine

    # Our own pid, but a different process start time: the recorded process is gone, its pid reused.
    _write_holder(path, pid=os.getpid(), machine=_machine(), pid_start="1")
    with Lease.acquire(path, "s") as lease:
        assert lease.holder.token != "tok"


def test_holder_notices_a_takeover_and_stops(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    lease = Lease.acquire(path, "s")
    path.rename(tmp_path / "moved")  # as a takeover after this process was paused past its lease would
    _write_holder(path)
    with pytest.raises(StoreBusyError, match="taken over"):
        lease.check()
    lease.release()
    assert Holder.decode(path.read_bytes()).token == "tok"  # type: ignore[union-attr] # not deleted: not ours


def test_keeper_renews_the_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    with Lease.acquire(path, "s") as lease, Keeper(interval=0.02) as keeper:
        keeper.add(lease)
        first = Holder.decode(path.read_bytes()).heartbeat  # type: ignore[union-attr]
        deadline = time.time() + 5
        while Holder.decode(path.read_bytes()).heartbeat == first and time.time() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        assert Holder.decode(path.read_bytes()).heartbeat > first  # type: ignore[union-attr]
        keeper.remove(lease)


# -- fencing ---------------------------------------------------------------------------------------------------


def test_a_fenced_lease_owns_a_fence_folder_until_released(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    lease = Lease.acquire(path, "s", fenced=True)
    assert lease.fence is not None and lease.fence.folder == fence_folder(path, lease.holder.token)
    assert lease.fence.folder.is_dir()
    lease.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # lock and fence gone


def test_a_takeover_retires_the_old_holders_fence_so_its_writes_fail(tmp_path: Path) -> None:
    path = tmp_path / ".s.lock"
    store = tmp_path / "s"
    store.mkdir()
    old = Lease.acquire(path, "s", fenced=True)
    assert old.fence is not None
    old.fence.write(store / "a", b"1")  # written while it holds the lock
    os.rename(path, tmp_path / "gone")  # the holder was presumed dead and its claim moved aside
    new = Lease.acquire(path, "s", fenced=True)
    assert not old.fence.folder.exists()  # retired before acquire returned
    with pytest.raises(StoreBusyError, match="another process took over the lock"):
        old.fence.write(store / "b", b"2")  # a paused holder waking up: nothing reaches the store
    with pytest.raises(StoreBusyError, match="another process took over the lock"):
        old.fence.remove(store / "a")
    with pytest.raises(StoreBusyError, match="taken over"):
        old.check()
    assert sorted(p.name for p in store.iterdir()) == ["a"]
    old.release()
    new.release()


def test_a_fenced_store_never_re_creates_a_deleted_store(tmp_path: Path) -> None:
    import numpy as np
    import zarr

    from lca_cli.errors import StoreError
    from lca_cli.store.fencing import FencedStore

    path = tmp_path / ".s.lock"
    lease = Lease.acquire(path, "s", fenced=True)
    root = tmp_path / "s.zarr"
    root.mkdir()
    group = zarr.create_group(store=FencedStore(root, fence=lease.fence), zarr_format=3)
    arr = group.create_array("x", shape=(4, 2), chunks=(1, 2), dtype="f4")
    arr[0:1] = np.ones((1, 2), np.float32)
    shutil.rmtree(root)
    with pytest.raises(StoreError, match="deleted while lca was writing"):
        arr[1:2] = np.ones((1, 2), np.float32)
    assert not root.exists()
    lease.release()
