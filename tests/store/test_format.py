"""The store format (lca_cli.store.format): versions read, chunk sizing, the helped rule's counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_store import make_format1_store, make_rows, new_store

from lca_cli import __version__
from lca_cli.cli.app import main
from lca_cli.errors import EXIT_CODES, StoreError
from lca_cli.store import FORMAT_VERSION, READABLE_VERSIONS, LcaStore, choose_rows_per_chunk, column_counts
from lca_cli.store.format import CHUNK_BYTES, check_format_version, required_arrays


@pytest.mark.parametrize(
    ("version", "why"),
    [
        (1, "an older lca wrote it: recompute it with --overwrite, or write a new store with --out"),
        (0, "an older lca wrote it"),
        (FORMAT_VERSION + 1, "a newer lca wrote it: upgrade lca-cli"),
        ("2", "not a version lca ever wrote"),
        (None, "not a version lca ever wrote"),
        (True, "not a version lca ever wrote"),
    ],
)
def test_versions_this_release_does_not_read(version: object, why: str) -> None:
    with pytest.raises(StoreError) as info:
        check_format_version(Path("s.zarr"), {"format_version": version})
    msg = str(info.value)
    assert msg.startswith(f"s.zarr has store format {version!r}; lca {__version__} reads store format 2 only (")
    assert f"({why}" in msg and "\n" not in msg, msg


def test_the_current_version_is_read() -> None:
    assert READABLE_VERSIONS == (FORMAT_VERSION,) == (2,)
    assert check_format_version(Path("s.zarr"), {"format_version": 2}) == 2


def test_a_store_of_an_unread_version_is_one_line_and_exit_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_format1_store(tmp_path / "old.zarr", make_rows(0, 3))
    new_store(tmp_path / "new.zarr").update_attrs({"format_version": FORMAT_VERSION + 1})
    for name, why in (("old.zarr", "an older lca wrote it"), ("new.zarr", "a newer lca wrote it")):
        for command in (["summarize", "--by", "layer"], ["verify"]):
            with pytest.raises(SystemExit) as info:
                main([command[0], str(tmp_path / name), *command[1:]])
            err = capsys.readouterr().err.strip().splitlines()
            assert info.value.code == EXIT_CODES["store"] == 6, (name, command, err)
            assert len(err) == 1 and err[0].startswith("Error: ") and "reads store format 2 only" in err[0], err
            assert why in err[0], err


def test_required_arrays() -> None:
    names = required_arrays(["train"])
    assert names[:2] == ["fingerprint", "steps"] and "train/lca" in names and "train/loss_end" in names
    assert len(names) == 2 + 2 + 7 + 3


def test_column_counts_match_plain_counts() -> None:
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((300, 17)).astype(np.float32)
    rows[rng.random(rows.shape) < 0.2] = 0.0  # exact zeros count as neither
    rows[:, 0] = -1.0  # a column that helped on every row (300 > 255: a uint8 accumulator would wrap)
    helped, hurt = column_counts(rows)
    np.testing.assert_array_equal(helped, (rows < 0).sum(axis=0))
    np.testing.assert_array_equal(hurt, (rows > 0).sum(axis=0))
    assert helped[0] == 300 and hurt[0] == 0
    empty = column_counts(np.zeros((0, 4), np.float32))
    assert [a.tolist() for a in empty] == [[0] * 4, [0] * 4]


def test_choose_rows_per_chunk() -> None:
    assert choose_rows_per_chunk(100, 7) == 7
    assert choose_rows_per_chunk(10) == 1024  # small rows: capped
    assert choose_rows_per_chunk(CHUNK_BYTES // 4) == 1  # a row of one chunk's size: one row per chunk
    assert choose_rows_per_chunk(1 << 16) == CHUNK_BYTES // (4 << 16)
    assert choose_rows_per_chunk(1 << 30) == 1
    # Fitted to the store's rows when it will not grow: never a chunk of far more rows than the store has.
    assert choose_rows_per_chunk(10, 0, 5) == 5 and choose_rows_per_chunk(1 << 16, 0, 1000) == 32
    assert choose_rows_per_chunk(10, 7, 5) == 7  # an explicit choice is the user's


def test_a_neuron_store_of_a_few_rows_takes_about_its_rows_on_disk(tmp_path: Path) -> None:
    # Chunks were 1,024 rows whatever the store held: 5 rows x 15 neuron columns (300 B) took a 61 KB chunk.
    from runs import make_tiny_run

    from lca_cli.computation.config import load_config
    from lca_cli.computation.runner import compute

    run = make_tiny_run(tmp_path, steps=5)
    config = load_config(run / "lca.toml").with_overrides(threads=1, granularity="neuron", l1_scope="pair")
    compute(run, config, run / "lca.zarr")
    lca = run / "lca.zarr" / "train" / "lca"
    on_disk = sum(p.stat().st_size for p in lca.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert on_disk == 5 * 15 * 4 + 4  # the rows and one chunk's CRC-32C


def test_a_followed_store_keeps_chunks_for_the_run_to_come(tmp_path: Path) -> None:
    # --follow creates the store from the first checkpoints of a growing run: fitted to them, every later block
    # would be a chunk of 1-2 rows (a write and fsyncs each).
    from runs import make_tiny_run

    from lca_cli.computation.config import load_config
    from lca_cli.computation.plan import Schedule
    from lca_cli.computation.runner import compute

    run = make_tiny_run(tmp_path, steps=3)  # ended (lca.end): following computes the 3 pairs and stops
    config = load_config(run / "lca.toml").with_overrides(threads=1, l1_scope="pair")
    result = compute(run, config, run / "lca.zarr", schedule=Schedule(follow=True, poll=0.05))
    assert result.computed == 3 and result.ended is not None
    store = LcaStore.open(run / "lca.zarr")
    assert store.rows_per_chunk == choose_rows_per_chunk(123) == 1024
