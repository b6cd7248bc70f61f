"""``lca report A B``: two runs side by side, layers matched by name, unmatched ones listed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from stores import SHAPES, make_store

from lca_cli.errors import UsageError

pytest.importorskip("matplotlib")

from lca_cli.reporting.compare import match_layers, write_comparison
from lca_cli.reporting.plots import png_info


def test_match_layers_by_name() -> None:
    m = match_layers(["conv1", "fc1", "fc2"], ["fc1", "fc2", "head"])
    assert m.matched == ["fc1", "fc2"] and m.only_a == ["conv1"] and m.only_b == ["head"]
    assert m.names == ["conv1", "fc1", "fc2", "head"]
    np.testing.assert_array_equal(m.values(["fc1", "fc2", "head"], np.array([1.0, 2.0, 3.0])), [np.nan, 1, 2, 3])
    assert "only in A: conv1" in m.describe("A", "B") and "only in B: head" in m.describe("A", "B")


def test_comparison_of_runs_with_different_layers(tmp_path: Path) -> None:
    a, full_a, loss_a = make_store(tmp_path / "normal" / "lca.zarr", sets=("train", "val"))
    other = [s for s in SHAPES if s[0] != "scale"] + [("head.weight", (2, 3)), ("head.bias", (2,))]
    b, full_b, _ = make_store(tmp_path / "frozen" / "lca.zarr", shapes=other, seed=1, n_pairs=40)
    result = write_comparison(a.path, b.path, tmp_path / "cmp" / "c.html")
    nb = result.numbers
    assert nb["labels"] == ["normal", "frozen"]  # the run directories' names
    assert nb["sets"] == ["train"]  # the only set both stores have
    assert nb["matched_layers"] == ["fc1", "fc2"] and nb["only_a"] == ["scale"] and nb["only_b"] == ["head"]
    totals = nb["per_set"]["train"]["layer_totals"]
    assert totals["fc1"][0] == pytest.approx(full_a["train"][:, :30].astype(np.float64).sum(), abs=1e-6)
    assert totals["fc1"][1] == pytest.approx(full_b["train"][:, :30].astype(np.float64).sum(), abs=1e-6)
    assert totals["scale"][1] is None and totals["head"][0] is None
    assert nb["per_set"]["train"]["final_loss"][0] == pytest.approx(loss_a["train"][-1])
    assert nb["per_set"]["train"]["iterations"] == [50, 40]
    page = result.html.read_text(encoding="utf-8")
    assert "only in normal: scale" in page and "only in frozen: head" in page
    assert page.count('<img src="data:image/png;base64,') == len(result.pngs) == 5
    assert all(png_info(p)[3] == 2 for p in result.pngs)  # true colour, no palette
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page, flags=re.S)
    assert any("integration errors together" in c for c in captions)
    with pytest.raises(UsageError, match="no such evaluation set"):
        write_comparison(a.path, b.path, tmp_path / "x.html", set_names=["val"])


def test_run_labels() -> None:
    from lca_cli.reporting.compare import run_labels

    assert run_labels(Path("runs/normal/lca.zarr"), Path("runs/frozen/lca.zarr")) == ("normal", "frozen")
    # Two stores of one run folder: their own names (both were "out"), then A: / B: when even those agree.
    assert run_labels(Path("out/a.zarr"), Path("out/b.zarr")) == ("a.zarr", "b.zarr")
    assert run_labels(Path("x/out/lca.zarr"), Path("y/out/lca.zarr")) == ("A: out", "B: out")
    assert run_labels(Path("a.zarr"), Path("b.zarr"), ["one", "two"]) == ("one", "two")


def test_comparison_writes_and_lists_vector_figures(tmp_path: Path) -> None:
    """``lca report A B --figures svg``: every PNG of the comparison gets an SVG copy, and the result lists them."""
    from lca_cli.api import report

    a, _, _ = make_store(tmp_path / "a" / "lca.zarr")
    b, _, _ = make_store(tmp_path / "b" / "lca.zarr", seed=1)
    result = report([a.path, b.path], tmp_path / "c.html", figures="svg")
    assert len(result.vectors) == len(result.pngs) == 5
    assert [v.with_suffix(".png") for v in result.vectors] == result.pngs
    assert all(v.is_file() and "<svg" in v.read_text(encoding="utf-8") for v in result.vectors)


def test_the_freeze_premise_is_computed_from_the_runs(tmp_path: Path) -> None:
    """A layer whose LCA is exactly 0 on every iteration of B is frozen there; the page says what it did in A."""
    n, p = 30, sum(int(np.prod(s)) if s else 1 for _, s in SHAPES)
    rows = np.full((n, p), -1e-3, dtype=np.float32)  # every parameter helps in A
    rows[:, 30:] = 1e-3  # fc2 and scale hurt in A (fc1: the first 30 entries)
    frozen = rows.copy()
    frozen[:, 30:48] = 0.0  # fc2 (weight 18 + bias 3 = entries 30-50) frozen in B: exactly 0 everywhere
    frozen[:, 48:51] = 0.0
    a, _, _ = make_store(tmp_path / "normal" / "lca.zarr", n_pairs=n, values=rows)
    b, _, _ = make_store(tmp_path / "frozen" / "lca.zarr", n_pairs=n, values=frozen)
    result = write_comparison(a.path, b.path, tmp_path / "cmp" / "c.html")
    premise = result.numbers["premise"]
    assert len(premise) == 1 and "fc2 is frozen in frozen" in premise[0]
    assert "in normal it hurts" in premise[0] and "the situation the paper froze a layer in" in premise[0]
    assert premise[0].replace("'", "&#x27;") in result.html.read_text(encoding="utf-8")
    # Two runs that both move every layer: no premise, and the caption says so.
    c, _, _ = make_store(tmp_path / "other" / "lca.zarr", n_pairs=n, values=rows * 2)
    plain = write_comparison(a.path, c.path, tmp_path / "cmp2" / "c.html")
    assert plain.numbers["premise"] == []
    assert "No layer is frozen" in plain.html.read_text(encoding="utf-8")
