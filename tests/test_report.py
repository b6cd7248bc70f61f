"""``lca_cli.report.write_report`` on small synthetic stores: a self-contained page, valid PNGs, errors."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from test_views import make_store

from lca_cli.errors import LcaError, StoreError, UsageError

pytest.importorskip("matplotlib")

from lca_cli.report import MATPLOTLIB_MISSING, ReportResult, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = '<img src="data:image/png;base64,'


def _check_page(result: ReportResult, n_views: int) -> str:
    page = result.html.read_text(encoding="utf-8")
    low = page.lower()
    assert "http://" not in low and "https://" not in low and "<script" not in low
    assert "<link" not in low and "@import" not in low and "url(" not in low
    assert page.count(IMG) == n_views == len(result.pngs)
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    for png, b64 in zip(result.pngs, embedded, strict=True):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and data.endswith(b"IEND\xaeB`\x82")
        assert base64.b64decode(b64) == data
        assert len(data) < 400_000
    return page


def test_report_two_sets_many_chunks(tmp_path: Path) -> None:
    # 50 pairs in chunks of 3 rows: 17 chunks of lca per set.
    store, full, losses = make_store(tmp_path / "s.zarr", sets=("train", "val"), rows_per_chunk=3)
    assert store.rows_per_chunk == 3
    messages: list[str] = []
    result = write_report(tmp_path / "s.zarr", tmp_path / "out" / "page.html", progress=messages.append)
    assert isinstance(result, ReportResult)
    assert result.html == tmp_path / "out" / "page.html"
    assert all(p.parent == tmp_path / "out" / "page_files" for p in result.pngs)
    page = _check_page(result, 7)
    nb = result.numbers
    assert nb["set"] == "train" and nb["sets_drawn"] == ["train", "val"]
    assert nb["n_iterations"] == 50 and nb["flagged"] == 1 and nb["flagged_steps"] == [14]
    lca = full["train"].astype(np.float64)
    assert nb["sum_lca"] == pytest.approx(lca.sum(), abs=1e-6)
    assert nb["delta_loss"] == pytest.approx(losses["train"][-1] - losses["train"][0], abs=1e-9)
    assert nb["delta_loss"] == pytest.approx(nb["sum_lca"] + nb["sum_buffer_lca"] + nb["sum_residual"], abs=1e-9)
    assert nb["layer_totals"]["fc1"] == pytest.approx(lca[:, :30].sum(), abs=1e-6)
    assert nb["layer_helped"]["fc2"] == pytest.approx(np.minimum(lca[:, 30:51], 0).sum(), abs=1e-6)
    assert nb["params_never_moved"] == 1
    assert 0.0 <= nb["sync_observed"] <= 1.0 and 0.0 < nb["sync_p_value"] <= 1.0
    assert nb["sync_shuffles"] == 1000
    for key in ("sync_observed", "sync_baseline_mean", "sync_baseline_sd", "sync_p_value"):
        assert key in nb
    # the page quotes the helped rule, shows the store and both sets, and the sync numbers
    assert "exact zeros" in page and str(tmp_path / "s.zarr") in page
    assert "store sets: train, val" in page
    assert "permutation p-value" in page
    assert any("pass 1/2" in m for m in messages) and any("pass 2/2" in m for m in messages)


def test_report_window_set_and_streaming_only(tmp_path: Path, lca_read_spy) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    done = np.ones(50, bool)
    done[[12, 13]] = False
    _, full, _ = make_store(tmp_path / "s.zarr", sets=("train", "val"), done_rows=done, step_size=10, rows_per_chunk=4)
    before = dict(matplotlib.rcParams)
    spy = lca_read_spy()
    result = write_report(
        tmp_path / "s.zarr", tmp_path / "w.html", set_name="val", steps=(100, 300), seed=3, heatmap_layers=0,
        png_dir=tmp_path / "figs",
    )  # fmt: skip
    assert dict(matplotlib.rcParams) == before  # style applied in a context only
    assert spy["calls"] == 2  # exactly two streaming passes over lca
    _check_page(result, 6)  # no heat map view
    assert all(p.parent == tmp_path / "figs" for p in result.pngs)
    nb = result.numbers
    # start steps 100..290 -> rows 10..29, minus 12 and 13 (not done)
    assert nb["set"] == "val" and nb["n_iterations"] == 18 and nb["n_not_done_in_window"] == 2
    assert nb["first_step"] == 100 and nb["last_step"] == 300
    rows = [r for r in range(10, 30) if r not in (12, 13)]
    assert nb["sum_lca"] == pytest.approx(full["val"][rows].astype(np.float64).sum(), abs=1e-6)
    assert nb["sets_drawn"] == ["val", "train"]
    assert nb["heatmap_layers"] == []


def test_report_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError):
        write_report(tmp_path / "missing.zarr", tmp_path / "x.html")
    with pytest.raises(UsageError, match="no such evaluation set"):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", set_name="test")
    with pytest.raises(UsageError):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", steps=(5000, None))
    with pytest.raises(UsageError):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", steps=(10, 10))
    with pytest.raises(UsageError):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", heatmap_layers=-1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(LcaError) as info:
        write_report(tmp_path / "s.zarr", tmp_path / "x.html")
    assert str(info.value) == MATPLOTLIB_MISSING
    assert not (tmp_path / "x.html").exists()
