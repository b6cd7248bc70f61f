"""``lca_cli.reporting.write_report`` on small synthetic stores: a self-contained page, true-colour PNGs,
captions computed from the data, every set side by side, streaming only, errors."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from stores import make_store

from lca_cli.errors import LcaError, StoreError, UsageError

pytest.importorskip("matplotlib")

from lca_cli.reporting import ReportResult, write_report
from lca_cli.reporting.plots import MATPLOTLIB_MISSING, SCALE, png_info

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = '<img src="data:image/png;base64,'
#: An image net's first layer (784 = 28 x 28 inputs) and an output layer of 10 classes.
IMAGE_SHAPES = [("fc1.weight", (5, 784)), ("fc1.bias", (5,)), ("fc2.weight", (10, 5)), ("fc2.bias", (10,))]


def _check_page(result: ReportResult, n_views: int) -> str:
    page = result.html.read_text(encoding="utf-8")
    low = page.lower()
    assert "http://" not in low and "https://" not in low and "<script" not in low
    assert "<link" not in low and "@import" not in low and "url(" not in low
    assert page.count(IMG) == n_views == len(result.pngs)
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" width="(\d+)"', page)
    for png, (b64, width) in zip(result.pngs, embedded, strict=True):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and data.endswith(b"IEND\xaeB`\x82")
        assert base64.b64decode(b64) == data
        assert len(data) < 500_000, (png.name, len(data))
        w, _h, depth, colour_type = png_info(png)
        # True colour (2 = RGB), 8 bits: no palette (3), which turned the red half of the colour bar grey-brown.
        assert (depth, colour_type) == (8, 2), png.name
        # Saved at twice the display size; the page shows it at its display size.
        assert int(width) * SCALE == w
    return page


def _captions(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([a-z_]+)">.*?<figcaption>(.*?)</figcaption>', page, flags=re.S))


@pytest.mark.slow
def test_report_two_sets_many_chunks(tmp_path: Path) -> None:
    # 50 pairs in chunks of 3 rows: 17 chunks of lca per set.
    store, full, losses = make_store(tmp_path / "s.zarr", sets=("train", "val"), rows_per_chunk=3)
    assert store.rows_per_chunk == 3
    messages: list[str] = []
    result = write_report(tmp_path / "s.zarr", tmp_path / "out" / "page.html", progress=messages.append)
    assert result.html == tmp_path / "out" / "page.html"
    assert all(p.parent == tmp_path / "out" / "page_files" for p in result.pngs)
    page = _check_page(result, 12)  # every view but the input maps (no image-shaped first layer)
    assert [p.name[:2] for p in result.pngs] == ["01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "12", "13"]
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
    # helped / zero / hurt shares of all parameters, and the exact zeros
    assert nb["helped_share_mean"] == pytest.approx(float((lca < 0).mean()))
    assert nb["zero_share_mean"] == pytest.approx(float((lca == 0).mean()))
    assert nb["zero_entries"] == int((lca == 0).sum())
    assert nb["integration_error"] == pytest.approx(float(np.abs(nb["sum_residual"])), rel=10)  # same order
    # both sets have their own numbers; val differs from train
    assert set(nb["per_set"]) == {"train", "val"}
    assert nb["per_set"]["val"]["sum_lca"] == pytest.approx(full["val"].astype(np.float64).sum(), abs=1e-6)
    # three layers with enough peaks are tested against both baselines, p in (0, 1]
    assert nb["sync_tested"] in (True, False)
    if nb["sync_tested"]:
        assert 0.0 < nb["sync_p_value"] <= 1.0 and nb["sync_shuffles"] == 1000
    assert "sync_controlled_tested" in nb
    # the page quotes both rules, the store and both sets
    assert "exact zeros" in page and str(tmp_path / "s.zarr") in page and "integration error" in page
    assert "store sets: train, val" in page and "set val" in page
    assert any("set train: pass 1/2" in m for m in messages) and any("set val: pass 2/2" in m for m in messages)
    captions = _captions(page)
    assert captions["composition"].count("Paper:") == 1 and "This run:" in captions["composition"]
    assert f"{100 * nb['helped_share_mean']:.1f}%" in captions["composition"]
    assert "train:" in captions["layers"] and "val:" in captions["layers"]


def test_two_layers_get_no_sync_test_and_image_nets_get_input_maps(tmp_path: Path) -> None:
    store, full, _ = make_store(tmp_path / "img.zarr", shapes=IMAGE_SHAPES, n_pairs=30, rows_per_chunk=7)
    result = write_report(store.path, tmp_path / "img.html", heatmap_layers=2, views=["heatmaps", "input_maps", "sync"])
    nb = result.numbers
    assert not nb["sync_tested"] and nb["sync_p_text"] == "no test"
    assert nb["sync_reason"].startswith("no test: needs at least 3 layers")
    page = _check_page(result, 3)
    captions = _captions(page)
    assert "no test" in captions["sync"] and "p = " not in captions["sync"].split("This run:")[1]
    assert "input_maps" in captions and "28x28" in captions["input_maps"]
    # the output layer's units are its classes, rows sorted by the first set's per-unit totals
    assert "fc2" in nb["heatmap_layers"]
    lca = full["train"].astype(np.float64)
    w2 = lca[:, 3925:3975].reshape(30, 10, 5).sum(2) + lca[:, 3975:3985]
    best = int(np.argmin(w2.sum(0)))
    assert f"output class {best} helped most" in captions["heatmaps"]


def test_report_window_set_and_streaming_only(tmp_path: Path, lca_read_spy) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    done = np.ones(50, bool)
    done[[12, 13]] = False
    _, full, _ = make_store(tmp_path / "s.zarr", sets=("train", "val"), done_rows=done, step_size=10, rows_per_chunk=4)
    before = dict(matplotlib.rcParams)
    spy = lca_read_spy()
    result = write_report(
        tmp_path / "s.zarr", tmp_path / "w.html", set_names=["val"], steps=(100, 300), seed=3, heatmap_layers=0,
        png_dir=tmp_path / "figs", views=["loss", "heatmaps", "input_maps", "concentration"],
    )  # fmt: skip
    assert dict(matplotlib.rcParams) == before  # style applied in a context only
    assert spy["calls"] == 2  # exactly two streaming passes over lca for the one set shown
    _check_page(result, 2)  # no heat map (0 layers asked for), no input maps (no image-shaped first layer)
    assert all(p.parent == tmp_path / "figs" for p in result.pngs)
    nb = result.numbers
    # start steps 100..290 -> rows 10..29, minus 12 and 13 (not done)
    assert nb["set"] == "val" and nb["n_iterations"] == 18 and nb["n_not_done_in_window"] == 2
    assert nb["first_step"] == 100 and nb["last_step"] == 300
    rows = [r for r in range(10, 30) if r not in (12, 13)]
    assert nb["sum_lca"] == pytest.approx(full["val"][rows].astype(np.float64).sum(), abs=1e-6)
    assert nb["sets_drawn"] == ["val"]
    assert nb["heatmap_layers"] == []


def test_report_of_a_run_where_nothing_moved(tmp_path: Path) -> None:
    # Learning rate 0: identical checkpoints, every LCA exactly 0. No parameter to follow, no mean of nothing.
    from runs import make_tiny_run

    from lca_cli.computation.config import load_config
    from lca_cli.computation.runner import compute

    run = make_tiny_run(tmp_path, steps=3, lr=0.0)
    compute(run, load_config(run / "lca.toml").with_overrides(threads=1), run / "lca.zarr")
    result = write_report(run / "lca.zarr", tmp_path / "static.html")
    page = _check_page(result, len(result.pngs))
    assert "trajectories" not in _captions(page) and "no parameter moved" in page
    assert result.numbers["helped_fraction_mean"] is None and result.numbers["parameters"] == []


def test_report_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_store(tmp_path / "s.zarr")
    (tmp_path / "adir").mkdir()
    with pytest.raises(UsageError, match="is a directory; give the page's file name"):
        write_report(tmp_path / "s.zarr", tmp_path / "adir")
    assert not (tmp_path / "adir_files").exists()  # refused before any figure was drawn
    with pytest.raises(StoreError):
        write_report(tmp_path / "missing.zarr", tmp_path / "x.html")
    with pytest.raises(UsageError, match="no such evaluation set"):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", set_names=["test"])
    with pytest.raises(UsageError):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", steps=(5000, None))
    with pytest.raises(UsageError):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", steps=(10, 10))
    with pytest.raises(UsageError):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", heatmap_layers=-1)
    with pytest.raises(UsageError, match="--view planet"):
        write_report(tmp_path / "s.zarr", tmp_path / "x.html", views=["planet"])
    # a run directory gets a hint at the store inside it
    with pytest.raises(StoreError, match=re.escape(f"did you mean {tmp_path / 's.zarr'}")):
        write_report(tmp_path, tmp_path / "x.html")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(LcaError) as info:
        write_report(tmp_path / "s.zarr", tmp_path / "x.html")
    assert str(info.value) == MATPLOTLIB_MISSING
    assert not (tmp_path / "x.html").exists()
