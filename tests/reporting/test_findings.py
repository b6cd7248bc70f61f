"""The report's verdicts, layer robustness, per-layer errors and cancellation against numpy on stores whose answer
is known; number formatting that never prints a nonzero as 0; figure numbers in step with file names; vector
figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from stores import make_store

from lca_cli.analysis.reduce import open_store
from lca_cli.analysis.verdicts import apportion_errors, helped_share_verdict, per_parameter_verdict
from lca_cli.core.layout import Layout
from lca_cli.reporting.gather import ReportData, gather_report, gather_sets
from lca_cli.reporting.numbers import report_numbers
from lca_cli.reporting.plots import fmt
from lca_cli.reporting.text import pct
from lca_cli.store import BlockRows, LcaStore


@pytest.mark.parametrize("digits", [1, 2, 3, 4, 6])
def test_fmt_never_prints_a_nonzero_as_zero(digits: int) -> None:
    for e in np.arange(-9.0, 3.01, 0.125):  # magnitudes 1e-9 .. 1e3, off the powers of ten too
        for sign in (1, -1):
            x = sign * 10.0**e * 1.7
            text = fmt(x, digits)
            back = float(text)
            assert back != 0 and np.sign(back) == sign, (x, digits, text)
            assert abs(back - x) <= 0.5 * 10 ** (1 - digits) * abs(x) * 1.0001 + 1e-300, (x, digits, text)
    assert fmt(0.0017, 2) == "0.0017"  # printed as "0" ("layers that hurt beyond the integration error 0")
    assert fmt(0.0, 3) == "0" and fmt(None) == "n/a" and fmt(float("nan")) == "n/a"


def test_pct_never_prints_a_nonzero_share_as_zero() -> None:
    for e in range(-9, 1):
        for sign in (1, -1):
            text = pct(sign * 1.3 * 10.0**e)
            assert float(text.rstrip("%")) != 0, text
    assert pct(0.123) == "12.3%" and pct(0.0) == "0.0%" and pct(2e-5) == "0.002%"
    assert pct(1.0) == "100.0%" and pct(0.9996) == "99.96%" and pct(1 - 2e-6) == "99.9998%"


def _report(path: Path, seed: int = 0) -> ReportData:
    store = open_store(path)
    summaries, notes = gather_sets(store, None, None)
    return gather_report(store, summaries, notes, heatmap_layers=0, seed=seed, progress=lambda _m: None)


def test_verdicts_errors_and_cancellation_against_numpy(tmp_path: Path) -> None:
    store, full, losses = make_store(tmp_path / "s.zarr", sets=("train", "val"), n_pairs=30, rows_per_chunk=7)
    r = _report(store.path)
    nb = report_numbers(store, r)
    layers = store.layout.layers()
    for s in ("train", "val"):  # each set's verdicts are computed on that set's entries
        lca = full[s].astype(np.float64)
        x = nb["per_set"][s]
        helped, hurt = (lca < 0).sum(axis=1), (lca > 0).sum(axis=1)
        by_claim = {(v["claim"], v["convention"]): v for v in x["verdicts"]}
        for counted, conv in ((lca.shape[1], "all entries"), (helped + hurt, "nonzero entries")):
            ref = helped_share_verdict(helped, counted, conv)
            got = by_claim[(ref.claim, conv)]
            assert got["verdict"] == ref.verdict and got["measured"]["mean"] == pytest.approx(ref.measured["mean"])
        ref = per_parameter_verdict((lca < 0).sum(axis=0), (lca > 0).sum(axis=0))
        got = by_claim[(ref.claim, ref.convention)]
        assert got["verdict"] == ref.verdict and got["measured"]["mean"] == pytest.approx(ref.measured["mean"])
        # Per-layer errors: each pair's |residual| shared by the layers' Σ|LCA| (no L1 estimate stored here).
        cols = [np.concatenate([np.arange(store.layout.params[i].offset, store.layout.params[i].stop) for i in idx])
                for _, idx in layers]  # fmt: skip
        layer_abs = np.stack([np.abs(lca[:, c]).sum(axis=1) for c in cols], axis=1)
        residual = store.read(s, "residual")[:30]
        err = apportion_errors(residual, None, layer_abs).sum(axis=0)
        names = [n for n, _ in layers]
        assert [x["layer_error_estimate"][n] for n in names] == pytest.approx(err.tolist())
        assert sum(err) == pytest.approx(np.abs(residual).sum())  # they add up to the network's Σ|residual|
        per_layer = np.stack([lca[:, c].sum(axis=1) for c in cols], axis=1)
        neg = np.stack([np.minimum(lca[:, c], 0).sum() for c in cols])
        pos = np.stack([np.maximum(lca[:, c], 0).sum() for c in cols])
        assert [x["layer_pos_over_neg"][n] for n in names] == pytest.approx((pos / -neg).tolist())
        assert [x["layer_hurt_iteration_fraction"][n] for n in names] == pytest.approx((per_layer > 0).mean(0))
        ratio = np.abs(lca).sum(axis=1) / np.abs(np.diff(losses[s]))
        assert x["abs_over_delta_median"] == pytest.approx(float(np.median(ratio)))


SHAPES = [("first.weight", (20,)), ("mid.weight", (20,)), ("last.weight", (20,))]


def _designed_store(path: Path, n: int = 60) -> LcaStore:
    """First iteration: a huge drop in which the last layer helps most; afterwards the last layer hurts a little on
    every iteration. The last layer helps over the whole window and hurts without the first iteration."""
    layout = Layout.from_shapes(SHAPES)
    store = LcaStore.create(path, layout=layout, sets=("train",), steps=list(range(n + 1)), rows_per_chunk=16,
                            attrs={"method": "rk4", "tolerance": 1e-7, "rtol": 1e-4, "max_splits": 32})  # fmt: skip
    rng = np.random.default_rng(0)
    lca = np.zeros((n, 60))
    lca[:, :20] = -0.01 + 0.002 * rng.standard_normal((n, 20))  # first layer: helps throughout
    lca[:, 20:40] = 0.002 * rng.standard_normal((n, 20))
    lca[:, 40:] = 0.001 + 0.0002 * rng.standard_normal((n, 20))  # last layer: hurts on every later iteration
    lca[0, :20] = -0.05
    lca[0, 40:] = -0.1  # ... and helps hugely on the first: -2 against about +1.2 afterwards
    lca = lca.astype(np.float32)
    f64 = lca.astype(np.float64)
    res = np.full(n, 1e-7)
    loss = 4.7 + np.concatenate([[0.0], np.cumsum(f64.sum(axis=1) + res)])
    tl = np.stack([f64[:, p.offset : p.stop].sum(1) for p in layout.params], 1)
    th = np.stack([(lca[:, p.offset : p.stop] < 0).sum(1) for p in layout.params], 1)
    tu = np.stack([(lca[:, p.offset : p.stop] > 0).sum(1) for p in layout.params], 1)
    store.write_block("train", BlockRows(0, lca, loss, res, np.full(n, 2, np.int32), np.zeros(n, bool), tl, th, tu,
                                         np.zeros(n)))  # fmt: skip
    return LcaStore.open(path)


def test_a_layer_verdict_that_rests_on_the_transient_says_so(tmp_path: Path) -> None:
    store = _designed_store(tmp_path / "d.zarr")
    r = _report(store.path)
    x = report_numbers(store, r)
    assert x["transient_iterations"] == 1
    assert x["layer_verdicts"]["last"] == "helps"  # the whole window: the first iteration decides
    assert x["layer_verdicts_by_window"]["without first 1"]["last"] == "hurts"
    assert "without first 1" in x["layer_verdict_flips"]["last"] and "first" not in x["layer_verdict_flips"]
    first_last = [v for v in x["verdicts"] if v["claim"].startswith("in ResNet-20")]
    assert [v["verdict"] for v in first_last] == ["disagrees", "partly"]
    assert "without first 1" in first_last[1]["convention"]


CONV_SHAPES = [("conv1.weight", (4, 1, 3, 3)), ("conv1.bias", (4,)), ("fc.weight", (3, 4)), ("fc.bias", (3,))]


def test_a_view_that_does_not_apply_keeps_its_number_with_a_note_and_vector_figures(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lca_cli.reporting import write_report
    from lca_cli.reporting.report import VIEWS

    make_store(tmp_path / "c.zarr", shapes=CONV_SHAPES, n_pairs=12, rows_per_chunk=5)
    views = ["loss", "input_maps", "sync"]
    result = write_report(tmp_path / "c.zarr", tmp_path / "p.html", views=views, figures="svg")
    page = result.html.read_text(encoding="utf-8")
    heads = dict(re.findall(r'<section id="([a-z_]+)"><h2>(\d+)\.', page))
    assert heads == {k: str(VIEWS.index(k) + 1) for k in views}  # 1, 11, 13: the numbers of the file names
    for png in result.pngs:
        key = next(k for k in views if png.stem.endswith(k))
        assert png.name.startswith(f"{int(heads[key]):02d}_")
    assert [p.name for p in result.pngs] == ["01_loss.png", "13_sync.png"]
    note = re.search(r'<section id="input_maps">.*?</section>', page, flags=re.S)
    assert note is not None and "Not drawn for this store" in note.group(0)
    assert "conv1.weight (4, 1, 3, 3)" in note.group(0) and "does not read a flattened image" in note.group(0)
    assert [v.name for v in result.vectors] == ["01_loss.svg", "13_sync.svg"]
    for v in result.vectors:
        text = v.read_text(encoding="utf-8")
        assert "<svg" in text and "<dc:date>" not in text
    assert "Verdicts against the paper" in page and "set &#x27;train&#x27;" in page
    assert math.isfinite(result.numbers["abs_over_delta_median"])
    # The synchronisation table: both tests within the window holding 95% of the peaks and within each third.
    assert [w["window"] for w in result.numbers["sync_windows"]] == ["active", "early", "middle", "late"]
    assert page.count("(95% of the peaks)") == 2 and page.count("(late third)") == 2


def test_cli_report_writes_pdf_figures_beside_the_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from faults import cli

    make_store(tmp_path / "s.zarr", n_pairs=8)
    with pytest.raises(SystemExit) as done:
        cli("report", tmp_path / "s.zarr", "--out", tmp_path / "p.html", "--view", "loss", "--figures", "pdf", "-q")
    assert done.value.code in (0, None)
    pdf = tmp_path / "p_files" / "01_loss.pdf"
    assert pdf.read_bytes().startswith(b"%PDF") and (tmp_path / "p_files" / "01_loss.png").exists()
    with pytest.raises(SystemExit) as bad:
        cli("report", tmp_path / "s.zarr", "--out", tmp_path / "q.html", "--figures", "eps", "-q")
    assert bad.value.code == 2  # a usage error, before any work
    assert not (tmp_path / "q_files").exists()


def test_config_comments_give_the_last_layer_claim_to_resnet_only() -> None:
    # The paper found a hurting last layer in ResNet-20 on CIFAR-10; a config said "the last layer of its nets".
    root = Path(__file__).resolve().parents[2] / "configs"
    for toml in sorted(root.glob("*.toml")):
        comments = " ".join(line.lstrip("# ") for line in toml.read_text(encoding="utf-8").splitlines()
                            if line.startswith("#"))  # fmt: skip
        if re.search(r"paper found[^.]*last layer[^.]*hurts", comments):
            assert "ResNet" in comments, toml.name
