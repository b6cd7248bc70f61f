"""The page's checks (scripts/paper/checks.py, sections.py) on constructed data whose answers are known."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from lca_cli.analysis.selection import select_rows
from lca_cli.analysis.sync import sync_analysis
from lca_cli.core.layout import Layout
from lca_cli.store import BlockRows, LcaStore

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from paper.checks import FLOORS, floor_check, layer_check, noise_verdicts, seed_noise, seed_spread, sync_windows  # noqa: E402
from paper.findings import Findings, sync_finding  # noqa: E402
from paper.fmt import f, pct  # noqa: E402
from paper.markdown import accuracy_verdict  # noqa: E402
from paper.sections import page_verdicts, sync_section, verdicts_section  # noqa: E402


def _store(path: Path, lca: np.ndarray, shapes: list[tuple[str, tuple[int, ...]]]) -> LcaStore:
    """A store holding exactly ``lca`` ``(n, P)`` on ``train`` (losses consistent, residuals 0)."""
    layout = Layout.from_shapes(shapes)
    n = lca.shape[0]
    store = LcaStore.create(path, layout=layout, sets=("train",), steps=list(range(n + 1)),
                            attrs={"method": "rk4", "tolerance": 1e-7, "rtol": 1e-4, "max_splits": 32})  # fmt: skip
    lca = lca.astype(np.float32)
    cols = [(p.offset, p.stop) for p in layout.params]
    loss = np.concatenate([[2.3], 2.3 + np.cumsum(lca.astype(np.float64).sum(1))])
    rows = BlockRows(
        0, lca, loss, np.zeros(n), np.full(n, 2, np.int32), np.zeros(n, bool),
        np.stack([lca[:, a:b].astype(np.float64).sum(1) for a, b in cols], 1),
        np.stack([(lca[:, a:b] < 0).sum(1) for a, b in cols], 1),
        np.stack([(lca[:, a:b] > 0).sum(1) for a, b in cols], 1),
        np.zeros(n),
    )  # fmt: skip
    store.write_block("train", rows)
    return LcaStore.open(path)


def _noise_store(tmp_path: Path) -> LcaStore:
    """20 parameters, 6 iterations: 10 help by 1e-3, 1 by 1e-11 (float noise), 9 hurt by 1e-3 on every row."""
    row = np.array([-1e-3] * 10 + [-1e-11] + [1e-3] * 9)
    return _store(tmp_path / "noise.zarr", np.tile(row, (6, 1)), [("a.weight", (10,)), ("b.weight", (10,))])


def test_noise_floor_moves_float_noise_from_helped_to_zero(tmp_path: Path) -> None:
    store = _noise_store(tmp_path)
    fl = floor_check(store, select_rows(store, "train"))
    assert fl["helped"].tolist() == [11] * 6 and fl["hurt"].tolist() == [9] * 6
    # 1e-11 is above the 1e-12 floor and below the 1e-10 one
    assert fl["floors"][1e-12][0].tolist() == [11] * 6
    assert fl["floors"][1e-10][0].tolist() == [10] * 6 and fl["floors"][1e-10][1].tolist() == [9] * 6
    # below float32 resolution: |lca| <= eps(float32) x the row's largest |lca| (1.2e-10): the 1e-11 entry only
    assert fl["tiny_share"] == pytest.approx(1 / 20)
    # per layer: a = 10 x -1e-3; b = -1e-11 + 9 x 1e-3
    assert fl["neg"][0] == pytest.approx([-1e-2, -1e-11], rel=1e-5)
    assert fl["pos"][0] == pytest.approx([0.0, 9e-3], rel=1e-5)

    helped = np.array([6] * 11 + [0] * 9)
    v = noise_verdicts(fl, 20, helped, 6 - helped)
    assert v["all"].verdict == "agrees" and v["all"].measured["mean"] == pytest.approx(0.55)
    assert v["nonzero"].verdict == "agrees"
    assert v["floor"][1e-12].verdict == "agrees"
    # the same run is only "partly" once float-noise entries stop counting as helped (exactly 50%)
    assert v["floor"][1e-10].verdict == "partly" and v["floor"][1e-10].measured["mean"] == pytest.approx(0.5)
    assert "|LCA| ≤ 1e-10" in v["floor"][1e-10].convention
    # every parameter keeps one sign: the mean is 55% but none lies in 40-60%, so the per-parameter claim is partly
    assert v["per_param"].verdict == "partly" and v["per_param"].measured["in_40_60"] == 0.0


def test_seed_spread_is_mean_sample_sd_and_n() -> None:
    s = seed_spread([0.50, 0.52, 0.57, float("nan")])
    assert s.n == 3 and s.mean == pytest.approx(0.53) and s.sd == pytest.approx(np.std([0.5, 0.52, 0.57], ddof=1))
    assert s.text() == "53.0% ± 3.6% (n = 3)"
    one = seed_spread([0.4])
    assert one.n == 1 and math.isnan(one.sd) and one.text() == "40.0% (n = 1)"


def test_seed_noise_pools_every_seed_under_one_rule(tmp_path: Path) -> None:
    store = _noise_store(tmp_path)
    fl = floor_check(store, select_rows(store, "train"))
    low = dict(fl, helped=fl["helped"] - 3, hurt=fl["hurt"] + 3)  # a second seed at 40% helped
    helped = np.array([6] * 11 + [0] * 9)
    checks = {"s0": noise_verdicts(fl, 20, helped, 6 - helped), "s1": noise_verdicts(low, 20, helped, 6 - helped)}
    out = seed_noise(checks, {"s0": fl, "s1": low}, 20)
    assert out["spread"]["all"].n == 2 and out["spread"]["all"].mean == pytest.approx(0.475)
    # pooled: 47.5% is not "barely over half" by the rule (agrees needs (50%, 55%]) although one seed agrees
    assert checks["s0"]["all"].verdict == "agrees" and out["all"].verdict == "partly"
    assert set(out["floor"]) == set(FLOORS)


def _transient_layers() -> dict:
    """A net whose last layer helps only through its first iteration and hurts on every other one."""
    n = 50
    series = np.zeros((n, 3))
    series[0] = [-2.0, -1.0, -1.5]
    series[1:] = [-0.02, -0.01, 0.02]
    residual = np.full(n, 1e-6)
    return {"names": ["first", "mid", "last"], "series": series, "residual": residual,
            "dl": series.sum(1) + residual}  # fmt: skip


def test_layer_check_finds_the_transient_and_the_flip() -> None:
    lay = _transient_layers()
    neg = np.minimum(lay["series"], 0) * 2
    pos = np.maximum(lay["series"], 0) + 0.01
    lc = layer_check(lay, {"neg": neg, "pos": pos})
    rb = lc["robust"]
    assert rb.transient == 1 and "without first 1" in rb.windows
    assert rb.verdicts["whole"][-1] == "helps" and rb.verdicts["without first 1"][-1] == "hurts"
    assert "last" in rb.flips and "without first 1" in rb.flips["last"]
    # first and last layer: disagrees over the whole run, partly (only the last hurts) without the transient
    assert lc["first_last"].verdict == "disagrees" and lc["first_last_late"].verdict == "partly"
    assert lc["hurt_iters"][-1] == pytest.approx(49 / 50) and lc["hurt_iters"][0] == 0.0
    assert lc["pos_over_neg"][-1] == pytest.approx(pos[:, 2].sum() / -neg[:, 2].sum())
    med, lo, hi = lc["abs_over_dl"]
    assert lo <= med <= hi and lo > 1.0  # Σ|LCA| exceeds |ΔL| where layers cancel


def test_layer_check_without_floor_counts_has_no_cancellation_columns() -> None:
    lc = layer_check(_transient_layers(), None)
    assert lc["pos_over_neg"] is None and lc["abs_over_dl"] is None


def _spiky(n: int, spikes: list[int], layers: int = 4, seed: int = 0) -> np.ndarray:
    """``(n, layers)`` LCA: small noise, and every layer learning much on the ``spikes`` iterations."""
    rng = np.random.default_rng(seed)
    lca = -np.abs(rng.normal(size=(n, layers))) * 1e-3
    lca[spikes] -= 1.0
    return lca


def test_sync_verdict_on_few_coincidences_carries_a_caveat() -> None:
    names = ["l1", "l2", "l3", "l4"]
    sa = sync_analysis(names, _spiky(300, [10, 40, 70, 100, 130]), n_shuffles=200)
    sc = sync_windows(sa)
    assert sc["coincide"]["active"] == 5 and sc["fragile"]
    assert sc["verdict"].measured["windowed"] == 1.0  # all five coincide: beyond chance within the window
    many = sync_windows(sync_analysis(names, _spiky(600, list(range(10, 600, 30))), n_shuffles=200))
    assert many["coincide"]["active"] >= 10 and not many["fragile"]


def test_no_test_is_no_data_not_a_disagreement() -> None:
    sa = sync_analysis(["a", "b"], _spiky(100, [10, 50]), n_shuffles=50)
    sc = sync_windows(sa)
    assert sc["verdict"].verdict == "no data" and not sc["fragile"]


def test_the_disagreement_list_is_computed_from_the_verdicts(tmp_path: Path) -> None:
    store = _noise_store(tmp_path)
    fl = floor_check(store, select_rows(store, "train"))
    helped = np.array([6] * 11 + [0] * 9)
    found = Findings("smoke", [], {}, {"net": {}}, {}, {})
    found.noise_checks = {"net": noise_verdicts(fl, 20, helped, 6 - helped)}
    found.layer_checks = {"resnet20_standin": layer_check(_transient_layers(), None)}
    rows = page_verdicts(found)
    assert [r[2].verdict for r in rows] == ["agrees", "agrees", "agrees", "partly", "partly", "disagrees", "partly"]
    text = "\n".join(verdicts_section(found))
    where = text.split("### Where this disagrees with the paper")[1]
    assert where.count("\n- ") == 4  # the floor 1e-10 share, the per-parameter claim, both first/last verdicts
    assert "all entries, |LCA| ≤ 1e-10 counted as zero" in where and "`net`, all entries:" not in where
    table = text.split("### Where")[0]
    assert "\\|LCA\\| ≤ 1e-10" in table  # a pipe inside a table cell is escaped
    assert "Not tested" not in text
    # a run without a test is said to be untested, not counted as a disagreement
    found.sync = {"lenet": {}}
    found.sync_checks = {"lenet": sync_windows(sync_analysis(["a", "b"], _spiky(100, [10, 50]), n_shuffles=50))}
    text = "\n".join(verdicts_section(found))
    assert "`lenet`" not in text.split("### Where")[1].split("Not tested")[0]
    assert "Not tested (no verdict either way): 3 synchronisation, `lenet`: no test" in text


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_numbers_never_print_a_nonzero_value_as_zero(sign: float) -> None:
    for e in range(-12, 6):
        for m in (1.0, 4.99, 5.0, 9.99):
            x = sign * m * 10.0**e
            for digits in (2, 3, 4):
                assert float(f(x, digits)) != 0.0, (x, digits)
            assert pct(x / 100) not in ("0.0%", "-0.0%"), x
    assert f(0.0) == "0.000" and f(float("nan")) == "n/a" and pct(float("nan")) == "n/a"


def test_sync_over_seeds_gives_mean_sd_and_n_of_the_active_window() -> None:
    names = ["l1", "l2", "l3", "l4"]
    found = Findings("smoke", [], {}, {}, {}, {})
    for key, seed in (("fc_mnist", 0), ("fc_mnist_s1", 1)):
        s = sync_finding({"names": names, "series": _spiky(400, list(range(10, 400, 25)), seed=seed)}, 200)
        found.sync_checks[key] = sync_windows(s["analysis"])
        if seed == 0:
            found.sync[key] = s
    found.seeds = {"keys": ["fc_mnist", "fc_mnist_s1"], "sync": found.sync_checks}
    text = "\n".join(sync_section(found))
    line = next(x for x in text.splitlines() if x.startswith("- Seeds of the FC MNIST net"))
    obs = [found.sync_checks[k]["active"].raw.observed for k in ("fc_mnist", "fc_mnist_s1")]
    assert f"observed {seed_spread(obs).text(pct=False)}" in line and "(n = 2)" in line
    verdicts = [found.sync_checks[k]["verdict"].verdict for k in ("fc_mnist", "fc_mnist_s1")]
    assert f"({verdicts.count('agrees')} of 2 agree)" in line


@pytest.mark.parametrize(
    ("first_order", "simpson", "verdict"),
    [(0.30, 0.01, "agrees"), (0.05, 0.005, "partly"), (0.30, 0.10, "disagrees"), (0.01, 0.001, "disagrees")],
)
def test_method_accuracy_verdict_follows_its_rule(first_order: float, simpson: float, verdict: str) -> None:
    x = accuracy_verdict([{"rel_l1": first_order}, {"rel_l1": simpson}])
    assert x.verdict == verdict and x.measured == {"first_order": first_order, "simpson": simpson}


@pytest.mark.slow
def test_a_run_stopped_after_training_is_completed_not_retrained(tmp_path: Path) -> None:
    from paper.experiments import experiments
    from paper.runs import run_experiment

    exp = next(e for e in experiments("smoke") if e.key == "fc_mnist")
    logged: list[str] = []
    first = run_experiment(exp, tmp_path, "cpu", logged.append, reuse=True)
    run_dir = first.run_dir
    assert (run_dir / "train.json").is_file() and not first.resumed
    full = np.concatenate([r for _, r in LcaStore.open(first.store).iter_lca("train")])
    # A process stopped while computing: no run.json, the second half of the rows not done.
    (run_dir / "run.json").unlink()
    store = LcaStore.open(first.store, "r+")
    n = store.n_pairs
    for s in store.sets:
        store.array(s, "done")[n // 2 :] = False
    ckpt = run_dir / "step_00000000.safetensors"
    mtime = ckpt.stat().st_mtime_ns
    again = run_experiment(exp, tmp_path, "cpu", logged.append, reuse=True)
    assert again.resumed and ckpt.stat().st_mtime_ns == mtime  # not trained again
    assert any("completing its store" in line for line in logged)
    assert LcaStore.open(again.store).done().all()
    np.testing.assert_array_equal(np.concatenate([r for _, r in LcaStore.open(again.store).iter_lca("train")]), full)
    assert '"resumed": true' in (run_dir / "run.json").read_text()
    # Without --reuse a run is trained afresh whatever is there.
    fresh = run_experiment(exp, tmp_path, "cpu", logged.append, reuse=False)
    assert not fresh.resumed and ckpt.stat().st_mtime_ns != mtime
