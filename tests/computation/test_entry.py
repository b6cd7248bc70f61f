"""``compute_run``: ``lca compute`` as a function, options by keyword, errors that name them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from runs import make_tiny_run

from lca_cli.cli.app import main
from lca_cli.computation import compute_run, plan_run
from lca_cli.computation.plan import Hooks
from lca_cli.errors import ToleranceError, UsageError
from lca_cli.store import LcaStore


def _same(a: Path, b: Path) -> None:
    sa, sb = LcaStore.open(a), LcaStore.open(b)
    for name in ("lca", "loss", "residual", "splits", "tensor_lca"):
        assert np.array_equal(sa.read("train", name), sb.read("train", name)), name


def test_compute_run_is_lca_compute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_tiny_run(tmp_path, steps=4)
    result = compute_run(run, tmp_path / "lib.zarr", max_splits=8, threads=1, l1_scope="pair")
    assert result.store == tmp_path / "lib.zarr" and result.computed == result.n_pairs == 4
    assert result.gradients_per_pair >= 2.0 and result.flagged_pairs == 0 and result.flagged == {"train": []}
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--out", str(tmp_path / "cli.zarr"), "--quiet", "--max-splits", "8",
              "--threads", "1", "--l1-scope", "pair"])  # fmt: skip
    assert info.value.code == 0
    _same(tmp_path / "lib.zarr", tmp_path / "cli.zarr")
    # The bench's hooks change how it runs, never what it computes.
    hooked = compute_run(
        run, tmp_path / "hooked.zarr", max_splits=8, threads=1, l1_scope="pair",
        hooks=Hooks(read_ahead=0, sync_writes=True),
    )  # fmt: skip
    assert hooked.computed == 4
    _same(tmp_path / "lib.zarr", tmp_path / "hooked.zarr")
    assert plan_run(run, tmp_path / "lib.zarr", threads=1).to_compute == 0


def test_library_errors_name_arguments_and_keep_the_cli_text(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=2)
    with pytest.raises(UsageError, match=r"^max_splits: 3 is not a power of two") as info:
        compute_run(run, max_splits=3)
    assert info.value.cli_message.startswith("--max-splits: 3 is not")  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match=r"^until and idle_timeout go with follow$"):
        compute_run(run, until=5)
    with pytest.raises(UsageError, match=r"unknown option\(s\) max_split "):
        compute_run(run, max_split=8)
    with pytest.raises(UsageError, match=r"^steps 'a:b': expected \(A, B\)"):
        compute_run(run, steps="a:b")


def test_strict_fails_on_pairs_over_tolerance(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=2)
    with pytest.raises(ToleranceError, match=r"over tolerance \(strict\): [12] of set train"):
        compute_run(run, strict=True, refine="doubling", max_splits=2, tolerance=0.0, rtol=0.0, threads=1)
