"""The store object (lca_cli.store.lcastore): create/open/extend/write round trips, streaming reads, block planning."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from lca_cli import __version__
from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError
from lca_cli.store import FORMAT_VERSION, HELPED_RULE, BlockRows, LcaStore
from lca_cli.store.chunks import Encoding

LAYOUT = Layout.from_shapes([("fc1.weight", (3, 2)), ("fc1.bias", (3,)), ("fc2.weight", (1, 3))])
P, K = LAYOUT.size, len(LAYOUT.params)


def make_rows(start: int, k: int, seed: int = 0) -> BlockRows:
    rng = np.random.default_rng(seed + start)
    lca = rng.standard_normal((k, P)).astype(np.float32)
    tensor_lca = np.stack([lca[:, p.offset : p.stop].astype(np.float64).sum(1) for p in LAYOUT.params], 1)
    return BlockRows(
        start=start,
        lca=lca,
        loss=rng.random(k + 1),
        residual=rng.standard_normal(k) * 1e-9,
        splits=np.full(k, 4, dtype=np.int32),
        flagged=rng.random(k) < 0.3,
        tensor_lca=tensor_lca,
        tensor_helped=np.stack([(lca[:, p.offset : p.stop] < 0).sum(1) for p in LAYOUT.params], 1),
        tensor_hurt=np.stack([(lca[:, p.offset : p.stop] > 0).sum(1) for p in LAYOUT.params], 1),
        buffer_lca=np.zeros(k),
    )


def new_store(path: Path, n_ckpt: int = 11, sets=("train",), rows_per_chunk: int = 3) -> LcaStore:
    return LcaStore.create(
        path,
        layout=LAYOUT,
        sets=list(sets),
        steps=list(range(0, 10 * n_ckpt, 10)),
        attrs={"method": "rk4", "tolerance": 1e-7, "config": {"model": {"factory": "a:b"}}},
        rows_per_chunk=rows_per_chunk,
    )


def test_create_attrs_and_arrays(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", sets=("train", "val"))
    a = store.attrs
    assert a["format_version"] == FORMAT_VERSION == 2 and a["n_checkpoints"] == 11 and a["checksum"] == "crc32c"
    assert a["lca_cli_version"] == __version__
    assert a["params"] == [
        {"name": "fc1.weight", "shape": [3, 2], "offset": 0},
        {"name": "fc1.bias", "shape": [3], "offset": 6},
        {"name": "fc2.weight", "shape": [1, 3], "offset": 9},
    ]
    assert a["sets"] == ["train", "val"] and a["method"] == "rk4" and a["config"] == {"model": {"factory": "a:b"}}
    assert a["helped_rule"] == HELPED_RULE and a["rows_per_chunk"] == 3
    assert store.n_pairs == 10 and store.steps.tolist() == list(range(0, 110, 10))
    assert store.steps.dtype == np.int64
    assert store.layout == LAYOUT and store.rows_per_chunk == 3
    shapes = {
        "lca": ((10, P), np.float32, ("iteration", "parameter")),
        "loss": ((11,), np.float64, ("checkpoint",)),
        "residual": ((10,), np.float64, ("iteration",)),
        "splits": ((10,), np.int32, ("iteration",)),
        "flagged": ((10,), np.bool_, ("iteration",)),
        "done": ((10,), np.bool_, ("iteration",)),
        "buffer_lca": ((10,), np.float64, ("iteration",)),
        "tensor_lca": ((10, K), np.float64, ("iteration", "tensor")),
        "tensor_helped": ((10, K), np.int64, ("iteration", "tensor")),
        "tensor_hurt": ((10, K), np.int64, ("iteration", "tensor")),
    }
    for s in ("train", "val"):
        for name, (shape, dtype, dims) in shapes.items():
            arr = store.array(s, name)
            assert arr.shape == shape and arr.dtype == dtype, name
            assert tuple(arr.metadata.dimension_names) == dims, name
    assert store.array("train", "lca").chunks == (3, P)
    assert not store.done().any()
    assert np.isnan(store.read("train", "loss")).all()  # nothing computed yet


def test_plain_zarr_reader_sees_the_contract(tmp_path: Path) -> None:
    new_store(tmp_path / "s.zarr").write_block("train", make_rows(0, 3))
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    assert group["train/lca"].shape == (10, P)
    assert group["steps"][:].tolist() == list(range(0, 110, 10))


def test_write_block_round_trip(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    a, b = make_rows(0, 3), make_rows(3, 2)
    store.write_block("train", a)
    store.write_block("train", b)
    again = LcaStore.open(tmp_path / "s.zarr")
    assert again.done().tolist() == [True] * 5 + [False] * 5
    lca = np.asarray(again.array("train", "lca")[:5])
    np.testing.assert_array_equal(lca, np.concatenate([a.lca, b.lca]))
    np.testing.assert_array_equal(again.read("train", "loss")[:6], np.concatenate([a.loss[:3], b.loss]))
    for name in ("residual", "splits", "flagged", "tensor_lca", "tensor_helped", "tensor_hurt", "buffer_lca"):
        np.testing.assert_array_equal(
            again.read("train", name)[:5], np.concatenate([getattr(a, name), getattr(b, name)])
        )
    assert np.all(np.asarray(again.array("train", "lca")[5:]) == 0)
    assert b.count == 2


def test_write_block_ending_the_run_across_chunks(tmp_path: Path) -> None:
    # The block's loss values reach the run's last checkpoint, in the next chunk: one write per array
    # (two concurrent writes into one chunk would each rewrite it), both chunks right.
    store = new_store(tmp_path / "s.zarr")  # 10 pairs, 3 rows per chunk
    head, tail = make_rows(6, 2, seed=1), make_rows(8, 2, seed=2)
    store.write_block("train", head)
    store.write_block("train", tail)
    again = LcaStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(again.read("train", "loss")[6:11], np.concatenate([head.loss[:2], tail.loss]))
    np.testing.assert_array_equal(again.read("train", "loss_end")[6:10], np.concatenate([head.loss[1:], tail.loss[1:]]))


def test_done_mask_over_sets(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", sets=("train", "val"))
    store.write_block("train", make_rows(0, 3))
    store.write_block("val", make_rows(0, 2))
    assert store.done("train").sum() == 3 and store.done("val").sum() == 2
    assert store.done().tolist()[:3] == [True, True, False]  # done in every set


def test_update_attrs(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    store.update_attrs({"device": "cpu"})
    assert store.attrs["device"] == "cpu" and LcaStore.open(tmp_path / "s.zarr").attrs["device"] == "cpu"


def test_open_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        LcaStore.open(tmp_path / "missing.zarr")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not an lca store"):
        LcaStore.open(plain)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3).attrs["x"] = 1
    with pytest.raises(StoreError, match="not an lca store"):
        LcaStore.open(tmp_path / "other.zarr")
    with pytest.raises(StoreError):
        LcaStore.open(plain / "file.txt")


def test_open_newer_format_and_damaged(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr")
    store.update_attrs({"format_version": FORMAT_VERSION + 1})
    with pytest.raises(StoreError, match="newer"):
        LcaStore.open(tmp_path / "s.zarr")
    store = new_store(tmp_path / "d.zarr")
    del store.group["train/done"]
    with pytest.raises(StoreError, match="damaged"):
        LcaStore.open(tmp_path / "d.zarr")


def test_unknown_set(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no evaluation set 'val'"):
        new_store(tmp_path / "s.zarr").array("val", "lca")


def test_extend_appends_and_keeps_rows(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", n_ckpt=5)  # 4 pairs; the last chunk [3, 6) is partial
    rows = make_rows(0, 4)
    store.write_block("train", rows)
    store.extend(list(range(0, 50, 10)))  # same steps: nothing to do
    assert store.n_pairs == 4
    store.extend(list(range(0, 90, 10)))
    again = LcaStore.open(tmp_path / "s.zarr", mode="r+")
    assert again.n_pairs == 8 and again.steps.tolist() == list(range(0, 90, 10))
    assert again.array("train", "lca").shape == (8, P) and again.array("train", "loss").shape == (9,)
    assert again.array("train", "tensor_lca").shape == (8, K)
    assert again.done().tolist() == [True] * 4 + [False] * 4
    np.testing.assert_array_equal(np.asarray(again.array("train", "lca")[:4]), rows.lca)
    np.testing.assert_array_equal(again.read("train", "loss")[:5], rows.loss)
    again.write_block("train", make_rows(4, 4))
    assert again.done().all()


def test_extend_heals_an_interrupted_extend(tmp_path: Path) -> None:
    """A run killed between growing the arrays and writing ``steps`` leaves arrays longer than T."""
    store = new_store(tmp_path / "s.zarr", n_ckpt=5)
    store.write_block("train", make_rows(0, 4))
    for name in ("lca", "residual", "splits", "flagged", "done", "buffer_lca", "tensor_lca", "tensor_helped"):
        arr = store.array("train", name)
        arr.resize((7, *arr.shape[1:]))  # killed here: steps still says 5 checkpoints
    again = LcaStore.open(tmp_path / "s.zarr", mode="r+")
    assert again.n_pairs == 4
    again.extend(list(range(0, 50, 10)))  # the rerun sees the same checkpoints
    assert len(again.done()) == again.n_pairs == 4 and again.done().all()
    assert again.array("train", "lca").shape == (4, P) and again.array("train", "tensor_hurt").shape == (4, K)
    assert _plan_blocks(again.done(), again.rows_per_chunk) == []
    again.extend(list(range(0, 70, 10)))  # and later ones append normally
    assert again.n_pairs == 6 and again.done().tolist() == [True] * 4 + [False] * 2


@pytest.mark.parametrize(
    "steps",
    [
        [0, 10, 20],  # shorter
        [0, 10, 20, 31, 40, 50],  # a stored step changed
        [10, 20, 30, 40, 50, 60],  # shifted
    ],
)
def test_extend_with_non_prefix_is_refused(tmp_path: Path, steps: list[int]) -> None:
    store = new_store(tmp_path / "s.zarr", n_ckpt=5)
    with pytest.raises(StoreError, match="--overwrite"):
        store.extend(steps)
    assert store.n_pairs == 4


def test_iter_lca_chunk_aligned(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", rows_per_chunk=3)
    for start in range(0, 10, 3):
        store.write_block("train", make_rows(start, min(3, 10 - start)))
    full = np.asarray(store.array("train", "lca")[:])
    blocks = list(store.iter_lca("train", 2, 10))
    assert [(t, r.shape[0]) for t, r in blocks] == [(2, 1), (3, 3), (6, 3), (9, 1)]
    np.testing.assert_array_equal(np.concatenate([r for _, r in blocks]), full[2:10])
    assert all(r.dtype == np.float32 for _, r in blocks)
    assert [(t, r.shape[0]) for t, r in store.iter_lca("train")] == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert list(store.iter_lca("train", 4, 4)) == []
    assert [(t, r.shape[0]) for t, r in store.iter_lca("train", 4, 5)] == [(4, 1)]


@pytest.mark.parametrize("request_chunks", [1, 2, 5])
def test_iter_lca_read_ahead_same_blocks(tmp_path: Path, request_chunks: int) -> None:
    # Requests of 1, 2 or 5 chunks (several requests, so the background reader runs): the same chunk-aligned
    # blocks and values as reading without read-ahead, for windows that start and end inside chunks.
    import threading

    store = new_store(tmp_path / "s.zarr", n_ckpt=15, rows_per_chunk=3)
    for start in range(0, 14, 3):
        store.write_block("train", make_rows(start, min(3, 14 - start), seed=start))
    request = request_chunks * 3 * 4 * store.layout.size
    full = np.asarray(store.array("train", "lca")[:])
    for start, stop in [(0, 14), (2, 13), (4, 5), (7, 7)]:
        streamed = store.iter_lca("train", start, stop, read_ahead=False, request_bytes=request)
        plain = [(t, r.copy()) for t, r in streamed]
        ahead = [(t, r.copy()) for t, r in store.iter_lca("train", start, stop, request_bytes=request)]
        assert [t for t, _ in ahead] == [t for t, _ in plain]
        for (t, a), (_, b) in zip(ahead, plain, strict=True):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, full[t : t + a.shape[0]])
            assert a.shape[0] <= 3 and (t == start or t % 3 == 0)
        assert sum(r.shape[0] for _, r in ahead) == stop - start
    # Leaving early stops the reader thread (no thread left behind).
    it = store.iter_lca("train", request_bytes=request)
    next(it)
    it.close()
    assert not [th for th in threading.enumerate() if th.name.startswith("lca-stream")]


_WINDOW_STORES: dict[int, LcaStore] = {}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12), st.integers(0, 12), st.integers(1, 5))
def test_iter_lca_covers_any_window(tmp_path_factory: pytest.TempPathFactory, start: int, stop: int, rows: int) -> None:
    start, stop = min(start, stop), max(start, stop)
    if rows not in _WINDOW_STORES:  # one (empty, read-only) store per chunking, shared by the examples
        _WINDOW_STORES[rows] = new_store(tmp_path_factory.mktemp("w") / "s.zarr", n_ckpt=13, rows_per_chunk=rows)
    store = _WINDOW_STORES[rows]
    covered = []
    for t, block in store.iter_lca("train", start, stop):
        assert t == start or t % rows == 0  # every block but the first starts on a chunk boundary
        assert (t // rows) == ((t + block.shape[0] - 1) // rows)  # and never crosses one
        covered.extend(range(t, t + block.shape[0]))
    assert covered == list(range(start, stop))


# -- plan_blocks (lca_cli.computation.engine) -----------------------------------------------------------------------


def _plan_blocks(done: np.ndarray, rows: int) -> list[range]:
    # Imported when used: the store's own tests do not need the computation layer to import.
    from lca_cli.computation.engine import plan_blocks

    return plan_blocks(done, rows)


def test_plan_blocks_examples() -> None:
    done = np.array([True, False, False, False, False, True, False, False, False, False])
    assert _plan_blocks(done, 4) == [range(1, 4), range(4, 5), range(6, 8), range(8, 10)]
    assert _plan_blocks(np.zeros(5, bool), 1024) == [range(0, 5)]
    assert _plan_blocks(np.ones(5, bool), 2) == []
    assert _plan_blocks(np.zeros(0, bool), 3) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), max_size=40), st.integers(1, 9))
def test_plan_blocks_property(done_list: list[bool], rows: int) -> None:
    done = np.array(done_list, dtype=bool)
    blocks = _plan_blocks(done, rows)
    covered = [t for b in blocks for t in b]
    assert covered == [t for t in range(len(done)) if not done[t]]  # union == not done, in order, no overlap
    for b in blocks:
        assert len(b) > 0 and b.step == 1
        assert b.start // rows == (b.stop - 1) // rows  # never crosses a chunk boundary
    # Maximal: two blocks touch only at a chunk boundary.
    for a, b in itertools.pairwise(blocks):
        assert a.stop < b.start or b.start % rows == 0


# -- blocks own their chunks, checksums, commits -------------------------------------------------


def test_every_array_is_chunked_by_block_and_checksummed(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", sets=("train", "val"), rows_per_chunk=3)
    for node in store.nodes():
        arr = store.node(node)
        assert Encoding.of(arr).checksum, node
        if node.rsplit("/", 1)[-1] not in ("steps", "fingerprint", "checkpoint", "iteration", "tensor", "layer",
                                           "parameter_tensor"):  # fmt: skip
            assert arr.chunks[0] == 3, node  # a block's rows live in chunks of their own
    assert store.fingerprints is not None and store.fingerprints.shape == (11, 16)


def _files(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_ino, p.read_bytes()) for p in root.rglob("c/**/*") if p.is_file()}


def test_a_block_write_touches_only_its_own_chunks(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", rows_per_chunk=3)  # 10 pairs: blocks [0,3) [3,6) [6,9) [9,10)
    store.write_block("train", make_rows(0, 3))
    store.write_block("train", make_rows(6, 3))
    before = _files(store.path)
    store.write_block("train", make_rows(3, 3))  # the middle block, written last
    after = _files(store.path)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert changed and all(k.rsplit("/c/", 1)[1].split("/")[0] == "1" for k in changed), changed
    # A partial write of a block (a flush), then the rest: the same bytes as one write.
    other = new_store(tmp_path / "o.zarr", rows_per_chunk=3)
    rows = make_rows(3, 3)
    first = BlockRows(**{**rows.__dict__, "lca": rows.lca[:1], "loss": rows.loss[:2], "residual": rows.residual[:1],
                         "splits": rows.splits[:1], "flagged": rows.flagged[:1], "tensor_lca": rows.tensor_lca[:1],
                         "tensor_helped": rows.tensor_helped[:1], "tensor_hurt": rows.tensor_hurt[:1],
                         "buffer_lca": rows.buffer_lca[:1]})  # fmt: skip
    rest = BlockRows(**{k: (v if k == "start" else v[1:]) for k, v in rows.__dict__.items() if v is not None}
                     | {"start": 4})  # fmt: skip
    other.write_block("train", first)
    assert other.done().tolist()[3:6] == [True, False, False]
    other.write_block("train", rest)
    single = new_store(tmp_path / "one.zarr", rows_per_chunk=3)
    single.write_block("train", rows)
    a, b = _files(other.path), _files(single.path)
    assert sorted(a) == sorted(b) and all(a[k][1] == b[k][1] for k in a)


def test_loss_at_a_block_end_comes_from_loss_end(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", rows_per_chunk=3)
    rows = make_rows(0, 3)
    store.write_block("train", rows)  # the next block (its start loss is loss[3]) is not done yet
    assert np.isnan(np.asarray(store.array("train", "loss")[3]))  # on disk: the next block's chunk
    np.testing.assert_array_equal(store.read("train", "loss")[:4], rows.loss)  # read: merged from loss_end


def test_an_append_is_committed_last(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.zarr", n_ckpt=5)
    store.write_block("train", make_rows(0, 4))
    st = store._steps_array()
    st.resize((7,))
    st[5:] = [50, 60]  # killed after writing steps, before n_checkpoints
    again = LcaStore.open(tmp_path / "s.zarr", mode="r+")
    assert again.n_pairs == 4 and again.steps.tolist() == [0, 10, 20, 30, 40]
    again.extend(list(range(0, 50, 10)))  # the rerun without new checkpoints heals it
    assert again._steps_array().shape == (5,)
    again.extend(list(range(0, 70, 10)))
    assert LcaStore.open(tmp_path / "s.zarr").steps.tolist() == list(range(0, 70, 10))


def make_format1_store(path: Path, rows: BlockRows) -> None:
    """A store as lca format 1 wrote it (no checksums, 4096-row per-row chunks, no loss_end, fingerprint or
    n_checkpoints): this release refuses it."""
    n = 10
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({"format_version": 1, "params": LAYOUT.to_attrs(), "sets": ["train"], "rows_per_chunk": 3})
    group.create_array("steps", shape=(n + 1,), chunks=(4096,), dtype="int64", fill_value=-1, compressors=None)[:] = (
        np.arange(0, 10 * (n + 1), 10)
    )
    sub = group.require_group("train")
    spec = {"lca": ((n, P), (3, P), "float32", 0.0), "loss": ((n + 1,), (4096,), "float64", np.nan),
            "residual": ((n,), (4096,), "float64", 0.0), "splits": ((n,), (4096,), "int32", 0),
            "flagged": ((n,), (4096,), "bool", False), "l1_change": ((n,), (4096,), "float64", np.nan),
            "done": ((n,), (4096,), "bool", False), "buffer_lca": ((n,), (4096,), "float64", 0.0),
            "tensor_lca": ((n, K), (4096, K), "float64", 0.0), "tensor_helped": ((n, K), (4096, K), "int64", 0),
            "tensor_hurt": ((n, K), (4096, K), "int64", 0)}  # fmt: skip
    for name, (shape, chunks, dtype, fill) in spec.items():
        sub.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, compressors=None)
    k = rows.count
    sub["lca"][:k] = rows.lca
    sub["loss"][: k + 1] = rows.loss
    for name in ("residual", "splits", "flagged", "buffer_lca", "tensor_lca", "tensor_helped", "tensor_hurt"):
        sub[name][:k] = getattr(rows, name)
    sub["done"][:k] = True


def test_format_1_stores_are_refused(tmp_path: Path) -> None:
    make_format1_store(tmp_path / "old.zarr", make_rows(0, 3))
    for mode in ("r", "r+"):
        with pytest.raises(StoreError, match=r"store format 1; lca \S+ reads store format 2 only \(an older lca"):
            LcaStore.open(tmp_path / "old.zarr", mode=mode)


def test_a_read_store_is_a_snapshot_handed_out_as_copies(tmp_path: Path) -> None:
    new_store(tmp_path / "s.zarr").write_block("train", make_rows(0, 3))
    reader = LcaStore.open(tmp_path / "s.zarr")
    first = reader.read("train", "residual")
    first[:] = 0  # callers get a copy of what a read-only store keeps
    assert reader.read("train", "residual")[0] != 0


# -- the PyData stack: xarray, dask, consolidated metadata -------------------------------------------------


def _computed(tmp_path: Path, steps: int = 5) -> Path:
    from runs import make_tiny_run

    from lca_cli.computation.config import load_config
    from lca_cli.computation.runner import compute

    run = make_tiny_run(tmp_path, steps=steps)
    compute(run, load_config(run / "lca.toml").with_overrides(threads=1, rows_per_chunk=2), run / "lca.zarr")
    return run / "lca.zarr"


def test_every_array_has_dimension_names(tmp_path: Path) -> None:
    group = zarr.open_group(str(new_store(tmp_path / "s.zarr").path), mode="r")
    arrays = list(group.arrays()) + [(f"{s}/{n}", a) for s, sub in group.groups() for n, a in sub.arrays()]
    assert len(arrays) > 15
    for name, arr in arrays:
        dims = arr.metadata.dimension_names
        assert dims is not None and all(dims) and len(dims) == arr.ndim, name


def test_xarray_opens_the_store_with_coordinates(tmp_path: Path) -> None:
    xr = pytest.importorskip("xarray")
    path = _computed(tmp_path)
    store = LcaStore.open(path)
    root = xr.open_zarr(path)
    assert root["steps"].dims == ("checkpoint",) and "steps" in root.coords
    assert root["iteration"].values.tolist() == store.steps[:-1].tolist()
    tree = xr.open_datatree(path, engine="zarr", chunks={})
    train = tree["train"]
    assert train["lca"].dims == ("iteration", "parameter")
    assert train["tensor"].values.tolist() == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert train["layer"].values.tolist() == ["fc1", "fc1", "fc2", "fc2"]
    assert train["checkpoint"].values.tolist() == store.steps.tolist()
    # parameter -> tensor: summing lca by it gives the stored per-tensor sums.
    by_tensor = train["lca"].astype("float64").groupby(train["parameter_tensor"].compute()).sum("parameter").values
    np.testing.assert_allclose(by_tensor, store.read("train", "tensor_lca"), rtol=1e-5, atol=1e-9)
    assert train.attrs["set"] == "train" and train.attrs["evaluation"]["n_samples"] == 150
    # The README's three lines, as written there.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```python\nimport xarray as xr\n", 1)[1].split("```", 1)[0]
    namespace: dict = {"xr": xr}
    exec(block.replace('"runs/exp1/lca.zarr"', repr(str(path))), namespace)
    per_layer, per_param = namespace["per_layer"].compute(), namespace["per_param"]
    expected = np.cumsum(store.read("train", "tensor_lca"), axis=0)
    np.testing.assert_allclose(per_layer.sel(layer="fc1").values, expected[:, 0] + expected[:, 1])
    lca = np.asarray(store.array("train", "lca")[:])
    np.testing.assert_allclose(per_param.values, lca[:4].sum(0), rtol=1e-5, atol=1e-9)  # float32 sums


def test_metadata_is_consolidated_after_compute_and_dropped_before_shapes_change(tmp_path: Path) -> None:
    import json

    path = _computed(tmp_path, steps=3)

    def consolidated() -> dict | None:
        return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata")

    meta = consolidated()
    assert meta is not None and meta["metadata"]["train/lca"]["shape"] == [3, 12 * 6 + 12 + 3 * 12 + 3]
    store = LcaStore.open(path, mode="r+")
    store.extend([0, 1, 2, 3, 4])
    assert consolidated() is None  # never trusted while shapes change
    assert zarr.open_group(str(path), mode="r")["train/lca"].shape == (4, store.layout.size)
