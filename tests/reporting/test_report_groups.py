"""``lca report A1 A2 A3 --vs B1 B2``: two seed groups per layer on every set, premise checked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from stores import make_store

import lca_cli
from lca_cli.analysis.reduce import open_store, summarize
from lca_cli.errors import UsageError

pytest.importorskip("matplotlib")

from lca_cli.cli.app import main
from lca_cli.reporting.groups import write_group_comparison


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    root = tmp_path_factory.mktemp("groups")
    paths = [root / f"s{i}.zarr" for i in range(5)]
    for i, p in enumerate(paths):
        make_store(p, n_pairs=9, seed=i, sets=("train", "val"))
    return paths[:3], paths[3:]


def test_cli_group_comparison_shows_every_set_with_mean_sd_and_se(
    groups: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    a, b = groups
    out = tmp_path / "g.html"
    with pytest.raises(SystemExit) as info:
        main(["report", *map(str, a), "--vs", *map(str, b), "--out", str(out), "-q"])
    assert info.value.code == 0
    page = out.read_text()
    assert "train: fc1" in page and "val: fc1" in page  # every set, not train only
    assert "premise (checked)" in page and "ddof = 1" in page
    result = write_group_comparison(a, b, tmp_path / "h.html", labels=["normal", "other"])
    nb = result.numbers
    assert nb["sets"] == ["train", "val"] and nb["labels"] == ["normal", "other"]
    fc1 = nb["per_set"]["val"]["rows"][0]["stats"]["lca"]
    va = [summarize(open_store(p), set_name="val").rows[0]["lca"] for p in a]
    vb = [summarize(open_store(p), set_name="val").rows[0]["lca"] for p in b]
    assert fc1["a"]["mean"] == pytest.approx(np.mean(va)) and fc1["b"]["n"] == 2
    se = math.sqrt(np.var(va, ddof=1) / 3 + np.var(vb, ddof=1) / 2)
    assert fc1["diff"] == pytest.approx(np.mean(vb) - np.mean(va)) and fc1["se"] == pytest.approx(se)
    assert len(result.pngs) == 2 and all(p.is_file() for p in result.pngs)


def test_groups_that_differ_are_refused_before_anything_is_written(
    groups: tuple[list[Path], list[Path]], tmp_path: Path
) -> None:
    a, _ = groups
    other = make_store(tmp_path / "o.zarr", n_pairs=9, shapes=[("fc1.weight", (6, 4)), ("head.bias", (2,))],
                       sets=("train", "val"))[0]  # fmt: skip
    with pytest.raises(UsageError, match="layers differ"):
        write_group_comparison(a, [other.path], tmp_path / "x.html")
    train_only = make_store(tmp_path / "t.zarr", n_pairs=9)[0]
    with pytest.raises(UsageError, match="sets"):
        write_group_comparison(a, [train_only.path], tmp_path / "y.html")
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y_files").exists()


def test_the_api_comparison_is_the_page_numbers(groups: tuple[list[Path], list[Path]], tmp_path: Path) -> None:
    a, b = groups
    page = write_group_comparison(a, b, tmp_path / "p.html", set_names=["val"], min_abs=1e-4).numbers
    api = lca_cli.open_group(a).compare(lca_cli.open_group(b), set="val", min_abs=1e-4)
    assert api == page["per_set"]["val"]
