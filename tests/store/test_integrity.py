"""Damaged stores: deleted, truncated and garbled chunks are detected, never read as zeros; --repair fixes them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from faults import assert_same_tree
from runs import make_tiny_run

from lca_cli.cli.app import main
from lca_cli.errors import EXIT_CODES, StoreError
from lca_cli.store.integrity import quick_check, verify
from lca_cli.store.lcastore import LcaStore

ROWS = ["--rows-per-chunk", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def computed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = make_tiny_run(tmp_path_factory.mktemp("integrity"), steps=10)
    ref = run.parent / "ref.zarr"
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--out", str(ref), "--quiet", *ROWS])
    assert info.value.code == 0
    return run, ref


@pytest.fixture
def damaged(computed: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, Path]:
    run, ref = computed
    store = tmp_path / "s.zarr"
    shutil.copytree(ref, store)
    return run, ref, store


def garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit, same size: only the checksum can tell
    path.write_bytes(bytes(data))


def one_line(code: int, err: str, expected: str, *needles: str) -> None:
    assert code == EXIT_CODES[expected], (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize(
    ("chunk", "damage", "problem"),
    [
        ("train/tensor_lca/c/1/0", "delete", "missing"),  # `--by layer` printed Σ LCA 0, exit 0
        ("train/lca/c/2/0", "delete", "missing"),  # `--by neuron` printed wrong numbers
        ("train/residual/c/0", "truncate", "truncated"),
        ("train/lca/c/1/0", "garble", "checksum mismatch"),
        ("train/done/c/1", "garble", "unreadable"),
    ],
)
def test_damage_is_detected_and_repaired(
    capsys: pytest.CaptureFixture[str], damaged: tuple[Path, Path, Path], chunk: str, damage: str, problem: str
) -> None:
    run, ref, store = damaged
    path = store / chunk
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-9])
    else:
        garble(path)
    # Reads check what they read: --by layer and iteration read the per-tensor arrays, --by neuron streams lca.
    for by in ("neuron",) if "/lca/" in chunk else ("layer", "neuron", "iteration"):
        code, out, err = run_cli(capsys, "summarize", store, "--by", by)
        one_line(code, err, "store", "damaged")
        assert out == ""
    code, out, err = run_cli(capsys, "verify", store)
    one_line(code, err, "store", "damaged", "--repair")
    assert problem in out and "damaged row(s)" in out
    code, _, err = run_cli(capsys, "compute", run, "--out", store, "--quiet", *ROWS)
    if chunk == "train/lca/c/1/0":  # the cheap check cannot see a flipped bit; nothing to compute, nothing read
        assert code == 0 and err == ""
    else:  # never builds on damage it can see
        one_line(code, err, "store", "damaged")
    code, _, err = run_cli(capsys, "compute", run, "--out", store, "--repair", *ROWS)
    assert code == 0, err
    assert "4 damaged row(s) recomputed" in err or "2 damaged row(s) recomputed" in err, err
    assert run_cli(capsys, "verify", store)[0] == 0
    assert_same_tree(store, ref)


def test_verify_clean_store_and_json(capsys: pytest.CaptureFixture[str], computed: tuple[Path, Path]) -> None:
    import json

    _, ref = computed
    code, out, err = run_cli(capsys, "verify", ref)
    assert code == 0 and err == ""
    assert "train: 10 of 10 rows done; OK" in out and "checked with their checksums" in out
    code, out, _ = run_cli(capsys, "verify", ref, "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["done"] == {"train": 10} and report["chunks_checked"] > 10


def test_quick_check_reads_no_data(damaged: tuple[Path, Path, Path]) -> None:
    _, _, store = damaged
    garble(store / "train" / "lca" / "c" / "0" / "0")
    report = quick_check(LcaStore.open(store, check=False))  # sizes only: a flipped bit passes
    assert report.ok and not report.full
    full = verify(LcaStore.open(store, check=False))
    assert [d.describe() for d in full.damage] == ["train/lca chunk 0 (rows 0..3): checksum mismatch"]
    assert full.damaged_rows() == {"train": [0, 1, 2, 3]}
    with pytest.raises(StoreError, match=r"train/lca rows 0\.\.9 .*checksum"):
        list(LcaStore.open(store).iter_lca("train"))  # reading verifies the checksum


def test_missing_chunk_of_a_row_not_done_is_fine(damaged: tuple[Path, Path, Path]) -> None:
    """A kill after a block's data and before its done flag: the rows are simply not done."""
    _, _, store = damaged
    (store / "train" / "done" / "c" / "2").unlink()
    (store / "train" / "lca" / "c" / "2" / "0").unlink()
    s = LcaStore.open(store)
    assert s.done().tolist() == [True] * 8 + [False] * 2
    assert verify(s).ok
    assert sum(rows.shape[0] for _, rows in s.iter_lca("train")) == 10  # not done: fill values, no error
    (store / "train" / "lca" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError, match=r"train/lca chunk 1 is missing but rows 4\.\.7 are marked done"):
        next(LcaStore.open(store).iter_lca("train", 2))  # found before anything is streamed
    assert len(list(LcaStore.open(store).iter_lca("train", 8))) == 1  # rows not needing it stream fine


def test_a_missing_done_chunk_is_reported_and_its_rows_recomputed(
    capsys: pytest.CaptureFixture[str], damaged: tuple[Path, Path, Path]
) -> None:
    """Rows whose data is stored but whose done chunk is gone (deleted, or a kill right before the flags)."""
    run, ref, store = damaged
    (store / "train" / "done" / "c" / "1").unlink()
    report = verify(LcaStore.open(store, check=False))
    assert report.ok and report.unmarked == {"train": [4, 5, 6, 7]} and report.done == {"train": 6}
    code, out, _ = run_cli(capsys, "verify", store)
    assert code == 0 and "train: rows 4..7 lie in stored lca chunks but their done chunk is missing" in out
    code, _, _ = run_cli(capsys, "compute", run, "--out", store, "--quiet", *ROWS)
    assert code == 0 and verify(LcaStore.open(store, check=False)).unmarked == {}
    assert_same_tree(store, ref)  # recomputed, bit for bit


def test_damaged_steps_cannot_be_repaired(capsys: pytest.CaptureFixture[str], damaged: tuple[Path, Path, Path]) -> None:
    run, _, store = damaged
    garble(store / "steps" / "c" / "0")
    code, _, err = run_cli(capsys, "compute", run, "--out", store, "--repair", *ROWS)
    one_line(code, err, "store", "steps", "--overwrite")


@pytest.mark.parametrize("target", ["zarr.json", "train/lca/zarr.json", "train/zarr.json"])
def test_truncated_metadata_is_one_line(
    capsys: pytest.CaptureFixture[str], damaged: tuple[Path, Path, Path], target: str
) -> None:
    _, _, store = damaged
    path = store / target
    path.write_bytes(path.read_bytes()[:40])
    code, out, err = run_cli(capsys, "summarize", store)
    one_line(code, err, "store")
    assert out == "" and "Traceback" not in err


def test_every_chunk_is_written_even_all_fill(damaged: tuple[Path, Path, Path]) -> None:
    """buffer_lca is all zeros (its fill value) without BatchNorm: its chunks exist all the same."""
    _, _, store = damaged
    s = LcaStore.open(store)
    assert np.all(s.read("train", "buffer_lca") == 0)
    assert sorted(p.name for p in (store / "train" / "buffer_lca" / "c").iterdir()) == ["0", "1", "2"]
