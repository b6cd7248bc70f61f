"""Files written around the page cache (lca_cli.store.direct): the same bytes, whichever way they went."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lca_cli.store.direct import ALIGN, SplitBytes, Stage, write_file


def _write(path: Path, data: SplitBytes) -> bool:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        return write_file(fd, data)
    finally:
        os.close(fd)


def _split(stage: Stage, payload: bytes) -> Iterator[SplitBytes]:
    head = len(payload) // ALIGN * ALIGN
    with stage.use(len(payload)) as buf:
        buf[: len(payload)] = np.frombuffer(payload, dtype=np.uint8)
        yield SplitBytes(buf[:head].data, payload[head:])


@pytest.mark.parametrize("size", [ALIGN, 3 * ALIGN + 5, (1 << 20) + 4])
def test_an_aligned_head_goes_around_the_page_cache_and_the_file_holds_every_byte(tmp_path: Path, size: int) -> None:
    payload = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    for data in _split(Stage(), payload):
        assert _write(tmp_path / "f", data)  # this file system takes O_DIRECT (ext4 here; tmpfs too on this Linux 6.18)
    assert (tmp_path / "f").read_bytes() == payload


def test_a_head_the_kernel_refuses_is_written_through_the_page_cache(tmp_path: Path) -> None:
    """Misaligned memory: the kernel refuses the direct write (EINVAL), and the whole head goes buffered."""
    payload = np.random.default_rng(0).integers(0, 256, 2 * ALIGN + 9, dtype=np.uint8).tobytes()
    backing = bytearray(3 * ALIGN + 1)
    backing[1 : 1 + 2 * ALIGN] = payload[: 2 * ALIGN]
    head = memoryview(backing)[1 : 1 + 2 * ALIGN]  # one byte past a page boundary
    assert not _write(tmp_path / "f", SplitBytes(head, payload[2 * ALIGN :]))
    assert (tmp_path / "f").read_bytes() == payload


def test_plain_bytes_are_written_as_they_are(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        assert not write_file(fd, b"abc" * 1000)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"abc" * 1000


def test_the_stage_is_page_aligned_reused_and_grows() -> None:
    stage = Stage()
    with stage.use(10) as a:
        assert a.ctypes.data % ALIGN == 0 and a.size == ALIGN
        a[:3] = [1, 2, 3]
    with stage.use(ALIGN) as b:
        assert b.ctypes.data == a.ctypes.data and list(b[:3]) == [1, 2, 3]  # the same memory, not a new buffer
    with stage.use(ALIGN + 1) as c:
        assert c.size == 2 * ALIGN and c.ctypes.data % ALIGN == 0


def test_a_full_disk_is_reported_not_swallowed(tmp_path: Path) -> None:
    """On a 64 KiB tmpfs a 256 KiB direct write fails with ENOSPC, as a buffered one would."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    except OSError:
        pytest.skip("cannot mount a tmpfs here")
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        for data in _split(Stage(), bytes(64 * ALIGN + 4)):
            with pytest.raises(OSError) as info:
                _write(mnt / "f", data)
        assert info.value.errno == errno.ENOSPC
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
