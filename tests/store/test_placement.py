"""What is at --out, and what lca may delete: only its own stores and empty folders."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import zarr

from lca_cli.core.layout import Layout
from lca_cli.errors import StorageError, StoreError
from lca_cli.store.lcastore import LcaStore
from lca_cli.store.placement import (
    exchange,
    inspect_path,
    remove_stale_sibling,
    remove_store,
    sibling,
    stale_siblings,
    storage_error,
    storage_errors,
)

LAYOUT = Layout.from_shapes([("w", (2, 3)), ("b", (2,))])


def make_store(path: Path) -> LcaStore:
    return LcaStore.create(path, layout=LAYOUT, sets=["train"], steps=[0, 1, 2], attrs={}, durable=False)


def test_kinds(tmp_path: Path) -> None:
    assert inspect_path(tmp_path / "nothing").kind == "missing"
    (tmp_path / "file.zarr").write_text("x")
    assert inspect_path(tmp_path / "file.zarr").kind == "file"
    (tmp_path / "empty").mkdir()
    assert inspect_path(tmp_path / "empty").kind == "empty"
    make_store(tmp_path / "s.zarr")
    assert inspect_path(tmp_path / "s.zarr").kind == "store"
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("...")
    assert inspect_path(thesis) == inspect_path(thesis).__class__("foreign", "chapter1.tex")


def test_a_store_with_a_user_file_inside_is_not_ours_to_delete(tmp_path: Path) -> None:
    make_store(tmp_path / "s.zarr")
    (tmp_path / "s.zarr" / "notes.txt").write_text("mine")
    state = inspect_path(tmp_path / "s.zarr")
    assert state.kind == "foreign" and state.detail == "notes.txt" and not state.replaceable
    assert inspect_path(tmp_path / "s.zarr", deep=False).kind == "store"  # a resume may use it; no walk
    with pytest.raises(StoreError, match=r"refusing to delete .* notes\.txt"):
        remove_store(tmp_path / "s.zarr")
    assert (tmp_path / "s.zarr" / "notes.txt").read_text() == "mine"


def test_other_zarr_data_is_foreign(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "data.zarr"), mode="w", zarr_format=3)
    group.create_array("images", shape=(4,), dtype="f4")
    assert inspect_path(tmp_path / "data.zarr").kind == "foreign"  # no attributes, but not lca's arrays
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w", zarr_format=3).attrs["owner"] = "someone"
    assert inspect_path(tmp_path / "g.zarr").kind == "foreign"


def test_half_created_stores_are_recognised(tmp_path: Path) -> None:
    # A creation killed before its root held the attributes: a group without attributes, a few of lca's arrays.
    old = zarr.open_group(str(tmp_path / "old.zarr"), mode="w", zarr_format=3)
    old.create_array("steps", shape=(3,), dtype="i8")
    old.require_group("train").create_array("lca", shape=(2, 8), dtype="f4")
    assert inspect_path(tmp_path / "old.zarr").kind == "half"
    # Attributes written, arrays missing, no finished row.
    store = make_store(tmp_path / "new.zarr")
    del store.group["train/done"]
    assert inspect_path(tmp_path / "new.zarr").kind == "half"
    # A root zarr.json cut short by a kill, nothing computed.
    cut = make_store(tmp_path / "cut.zarr").path / "zarr.json"
    cut.write_text(cut.read_text()[:30])
    assert inspect_path(tmp_path / "cut.zarr").kind == "half"


def test_a_store_with_rows_is_never_half(tmp_path: Path) -> None:
    store = make_store(tmp_path / "s.zarr")
    (store.path / "train" / "done" / "c").mkdir(parents=True)
    (store.path / "train" / "done" / "c" / "0").write_bytes(b"\x01\x01")
    meta = json.loads((store.path / "zarr.json").read_text())
    meta["attributes"] = {}
    (store.path / "zarr.json").write_text(json.dumps(meta))
    assert inspect_path(store.path).kind == "store"  # damaged, not empty: only --overwrite replaces it


def test_remove_store_and_stale_siblings(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    new = sibling(out, "new", "abc")
    make_store(new)
    (tmp_path / ".s.zarr.lca-old-x").mkdir()
    (tmp_path / ".s.zarr.lca-old-x" / "keep.txt").write_text("not zarr")
    assert stale_siblings(out) == [new, tmp_path / ".s.zarr.lca-old-x"]
    assert remove_stale_sibling(new) and not new.exists()
    assert not remove_stale_sibling(tmp_path / ".s.zarr.lca-old-x")  # holds something else: kept
    (tmp_path / "empty").mkdir()
    remove_store(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_exchange_swaps_two_folders(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    (b / "x").write_text("b")
    if not exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) not available here")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"


def test_storage_errors_are_one_line() -> None:
    err = storage_error(OSError(errno.ENOSPC, "No space left on device", "/d/s.zarr/c/0"), "writing /d/s.zarr")
    assert isinstance(err, StorageError) and err.exit_code == 10
    assert str(err).startswith("writing /d/s.zarr: the disk is full (/d/s.zarr/c/0); rows written before it are kept")
    assert storage_error(OSError(errno.EIO, "I/O error"), "x") is None
    wrapped = RuntimeError("zarr failed")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system")
    assert "read-only" in str(storage_error(wrapped, "x"))
    with pytest.raises(StorageError, match="permission denied"), storage_errors("x"):
        raise PermissionError(errno.EACCES, "Permission denied")
    with pytest.raises(KeyError), storage_errors("x"):
        raise KeyError("a bug stays a bug")


def test_fsync_works_in_a_forked_child(tmp_path: Path) -> None:
    """The fsync pool's threads do not survive a fork; the child must not wait on them forever."""
    import signal

    from faults import fork_call

    from lca_cli.store.placement import fsync_paths

    (tmp_path / "a").write_text("x")
    fsync_paths([tmp_path / "a"])  # the pool exists in this process now

    def child() -> None:
        signal.alarm(20)  # a deadlock ends as SIGALRM, not a hung suite
        fsync_paths([tmp_path / "a"])

    assert fork_call(child) == 0
