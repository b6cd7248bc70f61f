"""Page assembly: escaped tables, numbered sections with embedded figures, the output folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from lca_cli.errors import UsageError
from lca_cli.reporting.html import View, describe_evaluation, output_folders, sections, table

pytest.importorskip("matplotlib")

from lca_cli.reporting.plots import figure, save_png


def test_tables_escape_their_cells() -> None:
    assert table([("a < b", "x & y")]) == "<table><tr><th>a &lt; b</th><td class=num>x &amp; y</td></tr></table>"


def test_sections_are_numbered_and_embed_their_figure(tmp_path: Path) -> None:
    png = save_png(figure(2, 1), tmp_path / "f.png")
    parts = sections([View("one", "First", png, "a < b"), View("two", "Second", png, "c", "<p>extra</p>")])
    page = "\n".join(parts)
    assert '<section id="one"><h2>1. First</h2>' in page and '<section id="two"><h2>2. Second</h2>' in page
    assert '<img src="data:image/png;base64,' in page and 'width="200" height="100"' in page  # display size
    assert "<figcaption>a &lt; b</figcaption>" in page and "<p>extra</p>" in page


def test_output_folders(tmp_path: Path) -> None:
    out, pdir = output_folders(tmp_path / "deep" / "page.html", None)
    assert out == tmp_path / "deep" / "page.html" and pdir == tmp_path / "deep" / "page_files" and pdir.is_dir()
    assert output_folders(tmp_path / "p.html", tmp_path / "figs")[1] == tmp_path / "figs"
    with pytest.raises(UsageError, match="is a directory"):
        output_folders(tmp_path, None)


def test_describe_evaluation() -> None:
    attrs = {
        "method": "rk4", "tolerance": 1e-7, "rtol": 1e-4, "max_splits": 32,
        "evaluation": {"sets": {"train": {"n_examples": 64}}, "dtype": "float64"},
        "config": {"model": {"factory": "m:build", "kwargs": {"hidden": 8}}, "loss": {"name": "mse"}},
    }  # fmt: skip
    rows = dict(describe_evaluation(attrs, "train"))
    assert rows["evaluation set 'train' (shown)"] == "n examples 64" and rows["dtype"] == "float64"
    assert rows["integration"] == "rk4; tolerance 1e-07, rtol 0.0001, max splits 32"
    assert rows["model"] == "m:build(hidden=8)" and rows["loss"] == "mse"
