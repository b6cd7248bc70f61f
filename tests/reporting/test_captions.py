"""Captions are computed from the report's data alone: they follow the data, need no matplotlib, and are the
page's captions word for word."""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from stores import make_store

from lca_cli.analysis.reduce import open_store
from lca_cli.reporting import captions
from lca_cli.reporting.gather import gather_report, gather_sets

pytest.importorskip("matplotlib")

from lca_cli.reporting import write_report
from lca_cli.reporting.report import VIEWS

#: An image net's first layer (784 = 28 x 28 inputs) and an output layer of 10 classes.
IMAGE_SHAPES = [("fc1.weight", (5, 784)), ("fc1.bias", (5,)), ("fc2.weight", (10, 5)), ("fc2.bias", (10,))]


def _captions(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([a-z_]+)">.*?<figcaption>(.*?)</figcaption>', page, flags=re.S))


def test_captions_follow_the_data(tmp_path: Path) -> None:
    # Same LCA, different integration error: with tiny residuals every layer has a sign; with residuals whose
    # share for the single-parameter layer (by its share of Σ|LCA|) exceeds its total, that layer is "within
    # error" and the caption says so.
    small = write_report(make_store(tmp_path / "a.zarr")[0].path, tmp_path / "a.html", views=["layers"])
    large_store, full, _ = make_store(tmp_path / "b.zarr", residual_scale=5e-2)
    large = write_report(large_store.path, tmp_path / "b.html", views=["layers"])
    scale_total = float(full["train"][:, 51].astype(np.float64).sum())
    assert abs(scale_total) < large.numbers["layer_error_estimate"]["scale"] < large.numbers["integration_error"]
    assert small.numbers["layer_verdicts"]["scale"] in ("helps", "hurts")
    assert large.numbers["layer_verdicts"]["scale"] == "within error"
    cap_small = _captions(small.html.read_text(encoding="utf-8"))["layers"]
    cap_large = _captions(large.html.read_text(encoding="utf-8"))["layers"]
    assert re.search(r"within error \(no sign can be given\): [^;]*scale", cap_large)
    assert "within error" not in cap_small.split("This run:")[1]
    assert cap_small != cap_large


def test_captions_need_no_matplotlib_and_are_the_page_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_store(tmp_path / "s.zarr", sets=("train", "val"), shapes=IMAGE_SHAPES, n_pairs=20, rows_per_chunk=6)
    result = write_report(tmp_path / "s.zarr", tmp_path / "page.html", heatmap_layers=2, seed=1)
    on_page = _captions(result.html.read_text(encoding="utf-8"))
    assert list(on_page) == list(VIEWS)  # every view applies to this store
    store = open_store(tmp_path / "s.zarr")
    summaries, notes = gather_sets(store, None, None)
    report = gather_report(store, summaries, notes, heatmap_layers=2, seed=1, progress=lambda _m: None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # any import of matplotlib now fails
    assert report.image is not None
    written = {key: getattr(captions, f"{key}_caption")(report) for key in VIEWS if key != "input_maps"}
    written["input_maps"] = captions.input_maps_caption(report, report.image)
    for key in VIEWS:
        assert html.escape(written[key]) == on_page[key], key
        assert "This run:" in written[key] or (key == "cumulative" and "This run:" in on_page[key])
