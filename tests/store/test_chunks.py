"""Chunk I/O (lca_cli.store.chunks): the one checksum check, codecs recognised by type, direct reads, writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from test_store import make_rows, new_store
from zarr.codecs import ZstdCodec

from lca_cli.store.chunks import (
    Encoding,
    checksum_ok,
    chunk_files,
    chunk_problem,
    chunk_size,
    codecs,
    list_chunks,
    read_rows,
    write_all,
    write_chunks,
)
from lca_cli.store.direct import Stage
from lca_cli.store.fencing import FencedStore


def test_checksum_ok_is_zarrs_check(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", rows_per_chunk=3)
    store.write_block("train", make_rows(0, 3))
    files = [p for p in (tmp_path / "s.zarr").rglob("c/**/*") if p.is_file()]
    assert len(files) >= 19 and all(checksum_ok(p.read_bytes()) for p in files)
    lca = store.chunk_files("train/lca", [0])[0]
    data = bytearray(lca.read_bytes())
    data[5] ^= 0x01
    assert not checksum_ok(bytes(data)) and not checksum_ok(b"abc")
    lca.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):  # Zarr's own codec agrees: the same bytes are damaged
        zarr.open_array(str(tmp_path / "s.zarr" / "train" / "lca"), mode="r")[:3]
    assert chunk_problem(str(lca), store.chunk_size("train/lca"), checksum=True) == "checksum mismatch"
    assert chunk_problem(str(lca), store.chunk_size("train/lca"), checksum=False) is None  # size only: passes


def test_codecs_are_recognised_by_type(tmp_path: Path) -> None:
    raw = zarr.create_array(str(tmp_path / "a.zarr"), shape=(6, 4), chunks=(3, 4), dtype="<f8", compressors=codecs())
    enc = Encoding.of(raw)
    assert enc.raw and enc.checksum and enc.default_keys and enc.dtype == np.dtype("<f8")
    assert chunk_size(raw) == 3 * 4 * 8 + 4
    packed = zarr.create_array(
        str(tmp_path / "b.zarr"), shape=(6,), chunks=(3,), dtype="i4", compressors=codecs([ZstdCodec()])
    )
    assert Encoding.of(packed).checksum and not Encoding.of(packed).raw and chunk_size(packed) is None
    plain = zarr.create_array(str(tmp_path / "c.zarr"), shape=(6,), chunks=(3,), dtype="i4", compressors=None)
    assert Encoding.of(plain).raw and not Encoding.of(plain).checksum and chunk_size(plain) == 12
    assert read_rows(tmp_path, "c.zarr", plain, 6) is None  # no checksum: Zarr reads it


def test_direct_chunk_reads_equal_zarr_reads(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", n_ckpt=11, rows_per_chunk=3)
    for start in (0, 3, 9):  # rows 6..8 never written: fill values
        store.write_block("train", make_rows(start, min(3, 10 - start)))
    for name in ("loss", "loss_end", "residual", "splits", "flagged", "l1_change", "done", "buffer_lca",
                 "tensor_lca", "tensor_helped", "tensor_hurt"):  # fmt: skip
        arr = store.array("train", name)
        n = arr.shape[0]
        found = read_rows(store.path, f"train/{name}", arr, n)
        assert found is not None, name
        direct, missing = found
        assert direct.dtype == arr.dtype and missing == [2], (name, missing)
        np.testing.assert_array_equal(direct, np.asarray(arr[:n]), err_msg=name)


def test_chunk_files_and_listing(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", rows_per_chunk=3)
    store.write_block("train", make_rows(3, 3))
    arr = store.node("train/lca")
    assert chunk_files(store.path, "train/lca", arr, [1]) == [store.path / "train" / "lca" / "c" / "1" / "0"]
    (store.path / "train" / "lca" / "c" / "1" / "0.partial").write_bytes(b"x")  # a killed write: not a chunk
    listed = list_chunks(store.path, "train/lca")
    assert list(listed) == [(1, 0)] and listed[(1, 0)][1] == store.chunk_size("train/lca")
    assert list_chunks(store.path, "train/nothing") == {}


def test_write_all_finishes_every_write_before_raising(tmp_path: Path) -> None:
    good = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(6,), chunks=(3,), dtype="f8")
    zarr.create_array(store=str(tmp_path / "b.zarr"), shape=(6,), chunks=(3,), dtype="f8")
    read_only = zarr.open_array(str(tmp_path / "b.zarr"), mode="r")
    with pytest.raises(ValueError, match="read-only"):
        write_all([(read_only, slice(0, 3), np.ones(3)), (good, slice(0, 6), np.arange(6.0))])
    np.testing.assert_array_equal(good[:], np.arange(6.0))  # the other write ended, and landed
    assert np.all(read_only[:] == 0)


def _pair_of_arrays(root: Path, shape: tuple[int, int], chunks: tuple[int, int]) -> list[zarr.Array]:
    group = zarr.create_group(FencedStore(root))
    return [
        group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype="float32",
            fill_value=0.0,
            compressors=codecs(),
            config={"write_empty_chunks": True},
        )
        for name in ("direct", "zarr")
    ]


@pytest.mark.parametrize(
    ("shape", "chunks", "rows"),
    [
        ((5, 600_000), (1, 262_144), (1, 3)),  # column chunks, the last one padded
        ((7, 300_000), (3, 300_000), (3, 7)),  # a full chunk, then the array's last row in a padded chunk
        ((7, 300_000), (3, 300_000), (0, 3)),
    ],
)
def test_chunks_made_here_are_zarrs_bytes(
    tmp_path: Path, shape: tuple[int, int], chunks: tuple[int, int], rows: tuple[int, int]
) -> None:
    root = tmp_path / "s.zarr"
    root.mkdir()
    direct, via_zarr = _pair_of_arrays(root, shape, chunks)
    values = np.random.default_rng(0).standard_normal((rows[1] - rows[0], shape[1])).astype(np.float32)
    put = FencedStore(root).put_file
    assert write_chunks(direct, "direct", slice(*rows), values, put, Stage())
    via_zarr[rows[0] : rows[1]] = values
    made = sorted((root / "direct").rglob("c/**/*"))
    want = sorted((root / "zarr").rglob("c/**/*"))
    assert [p.relative_to(root / "direct") for p in made] == [p.relative_to(root / "zarr") for p in want]
    for a, b in zip(made, want, strict=True):
        assert a.is_dir() or a.read_bytes() == b.read_bytes(), a
    np.testing.assert_array_equal(direct[rows[0] : rows[1]], values)  # and Zarr reads them back
    assert [p.name for p in root.rglob("*.partial")] == []


def test_chunks_zarr_must_merge_or_small_ones_are_left_to_zarr(tmp_path: Path) -> None:
    root = tmp_path / "s.zarr"
    root.mkdir()
    big, _ = _pair_of_arrays(root, (7, 300_000), (3, 300_000))
    put, stage = FencedStore(root).put_file, Stage()
    values = np.ones((2, 300_000), dtype=np.float32)
    assert not write_chunks(big, "direct", slice(1, 3), values, put, stage)  # starts inside a chunk
    assert not write_chunks(big, "direct", slice(3, 5), values, put, stage)  # ends inside one, not at the end
    small = zarr.create_array(str(tmp_path / "small.zarr"), shape=(4, 1000), chunks=(2, 1000), dtype="float32",
                              compressors=codecs())  # fmt: skip
    assert not write_chunks(small, "small", slice(0, 2), values[:, :1000], put, stage)  # 8 KB chunks
    packed = zarr.create_array(str(tmp_path / "z.zarr"), shape=(4, 300_000), chunks=(1, 300_000),
                               dtype="float32", compressors=[ZstdCodec(), *codecs()])  # fmt: skip
    assert not write_chunks(packed, "z", slice(0, 1), values[:1], put, stage)  # compressed: not raw bytes
    assert not any((root / "direct").rglob("c/**/*"))  # nothing was written
