"""Stores of neuron, tensor or selected columns (``--granularity``, ``--params``) against per-parameter stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunCache

from lca_cli.analysis.reduce import summarize
from lca_cli.computation.runner import compute
from lca_cli.core.columns import OTHER, Columns
from lca_cli.core.layout import Layout, layer_name
from lca_cli.core.vectors import ColumnReducer
from lca_cli.errors import StoreError, UsageError
from lca_cli.store.lcastore import LcaStore

#: A conv layer (4-D weight), a layer whose tensors disagree on dim 0, a scalar and a plain linear layer.
SHAPES = [
    ("conv.weight", (3, 2, 2, 2)),
    ("conv.bias", (3,)),
    ("odd.a", (4,)),
    ("odd.b", (5, 2)),
    ("scale", ()),
    ("fc.weight", (2, 3)),
    ("fc.bias", (2,)),
]


@pytest.fixture
def layout() -> Layout:
    return Layout.from_shapes(SHAPES)


def test_parameter_granularity_is_the_plain_layout(layout: Layout) -> None:
    cols = Columns.build(layout)
    assert cols.full and cols.size == layout.size and cols.column_layout(layout) is layout
    assert cols.settings() == {}  # the default adds nothing to the identity
    assert Columns.from_attrs({}, layout) == cols


def test_neuron_groups_follow_the_layout(layout: Layout) -> None:
    cols = Columns.build(layout, "neuron")
    assert [(g.name, g.units) for g in cols.groups] == [
        ("conv", 3), ("odd.a", 4), ("odd.b", 5), ("scale", 1), ("fc", 2),
    ]  # fmt: skip
    assert cols.size == 15 and cols.dimension == "neuron"
    assert list(cols.parameter_counts(layout)) == [9] * 3 + [1] * 4 + [2] * 5 + [1] + [4] * 2
    assert cols.labels(layout)[:4] == ["conv[0]", "conv[1]", "conv[2]", "odd.a[0]"]
    # The pseudo-tensors sit in their layers, so grouping columns by layer or neuron finds the same groups.
    pseudo = cols.column_layout(layout)
    assert [layer_name(p.name) for p in pseudo.params] == ["conv", "odd", "odd", "scale", "fc"]
    assert [name for name, _ in pseudo.neurons()] == [g.name for g in cols.groups]


def test_params_keep_some_tensors_and_sum_the_rest(layout: Layout) -> None:
    cols = Columns.build(layout, "parameter", ["fc.*"])
    assert [(g.name, g.units) for g in cols.groups] == [("fc.weight", 6), ("fc.bias", 2), (OTHER, 1)]
    assert cols.settings() == {"params": ["fc.*"]}
    neuron = Columns.build(layout, "neuron", ["conv.bias"])  # a neuron group is kept whole
    assert [(g.name, g.tensors) for g in neuron.groups] == [("conv", (0, 1)), (OTHER, (2, 3, 4, 5, 6))]
    assert Columns.build(layout, "parameter", ["*"]).full  # everything selected: no (other) column
    with pytest.raises(UsageError, match="matches no parameter tensor"):
        Columns.build(layout, "parameter", ["nope.*"])
    with pytest.raises(UsageError, match="--params needs"):
        Columns.build(layout, "tensor", ["fc.*"])


def test_column_map_round_trips_through_attributes(layout: Layout) -> None:
    for cols in (Columns.build(layout, "neuron", ["odd.*"]), Columns.build(layout, "tensor")):
        assert Columns.from_attrs({"columns": cols.to_attrs()}, layout) == cols
    with pytest.raises(StoreError, match="damaged"):
        Columns.from_attrs({"columns": {"granularity": "neuron"}}, layout)


# -- stores, against the per-parameter store reduced by hand ---------------------------------------------


def _by_hand(layout: Layout, cols: Columns, row: np.ndarray) -> np.ndarray:
    """The columns of one float64 row, summed the obvious way."""
    out = []
    for g in cols.groups:
        parts = [row[layout.params[t].offset : layout.params[t].stop] for t in g.tensors]
        if g.name == OTHER or cols.granularity == "tensor":
            out.append([sum(float(p.sum()) for p in parts)])
        elif cols.granularity == "parameter":
            out.append(parts[0])
        else:
            out.append(sum(p.reshape(g.units, -1).sum(axis=1) for p in parts))
    return np.concatenate(out)


@pytest.mark.parametrize(("granularity", "params"), [("neuron", ()), ("tensor", ()), ("parameter", ("odd.*",))])
def test_reducer_matches_sums_by_hand(layout: Layout, granularity: str, params: tuple[str, ...]) -> None:
    cols = Columns.build(layout, granularity, params)
    row = torch.from_numpy(np.random.default_rng(0).normal(size=layout.size))
    sums = torch.stack([row[p.offset : p.stop].sum() for p in layout.params])
    got = ColumnReducer(cols, layout).apply(row, sums).numpy()
    np.testing.assert_allclose(got, _by_hand(layout, cols, row.numpy()), rtol=1e-13, atol=1e-13)


@pytest.fixture(scope="module")
def stores(runs: RunCache, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LcaStore]:
    """The tanh MLP run computed four ways (one thread: every float reduction in a fixed order)."""
    run_dir, config = runs.run("tanh_mlp")
    root = tmp_path_factory.mktemp("columns")
    out = {}
    for name, gran, params in [
        ("parameter", "parameter", ()),
        ("neuron", "neuron", ()),
        ("tensor", "tensor", ()),
        ("params", "parameter", ("0.*",)),
    ]:
        cfg = config.with_overrides(granularity=gran, params=params, threads=1)
        compute(run_dir, cfg, root / f"{name}.zarr")
        out[name] = LcaStore.open(root / f"{name}.zarr")
    return out


def test_every_other_array_is_bit_identical_to_the_parameter_store(stores: dict[str, LcaStore]) -> None:
    ref = stores["parameter"]
    for name in ("neuron", "tensor", "params"):
        for arr in ("loss", "residual", "splits", "tensor_lca", "tensor_helped", "tensor_hurt", "done"):
            assert np.array_equal(stores[name].read("train", arr), ref.read("train", arr), equal_nan=True), (name, arr)


def test_tensor_store_is_the_per_tensor_sums(stores: dict[str, LcaStore]) -> None:
    t = stores["tensor"]
    lca = np.asarray(t.array("train", "lca")[:])
    assert t.array("train", "lca").metadata.dimension_names == ("iteration", "tensor")  # type: ignore[union-attr]
    assert np.array_equal(lca, t.read("train", "tensor_lca").astype(np.float32))


def test_neuron_store_is_the_parameter_store_summed_per_neuron(stores: dict[str, LcaStore]) -> None:
    ref, n = stores["parameter"], stores["neuron"]
    lca = np.asarray(ref.array("train", "lca")[:], dtype=np.float64)  # (T, P) float32 values
    expected = np.stack([_by_hand(ref.layout, n.columns, row) for row in lca])
    got = np.asarray(n.array("train", "lca")[:], dtype=np.float64)
    assert got.shape == (ref.n_pairs, 20) and n.attrs["granularity"] == "neuron"  # 16 hidden + 4 output units
    # The neuron store sums the float64 row; by hand we sum its float32 rounding: half an ulp per entry.
    bound = 2.0**-24 * np.stack([_by_hand(ref.layout, n.columns, np.abs(row)) for row in lca]) + 2.0**-24 * abs(got)
    assert np.all(np.abs(got - expected) <= 2 * bound + 1e-30)
    # Summaries at the resolution stored: --by neuron gives the same sums, --by layer the same as ever.
    by_ref = {r["name"]: r for r in summarize(ref, by="neuron").rows}
    for row in summarize(n, by="neuron").rows:
        assert row["lca"] == pytest.approx(by_ref[row["name"]]["lca"], rel=1e-6, abs=1e-9)
        assert row["parameters"] == by_ref[row["name"]]["parameters"]
    assert summarize(n, by="layer").rows == summarize(ref, by="layer").rows


def test_a_neuron_store_counts_neuron_iterations(stores: dict[str, LcaStore]) -> None:
    # Its helped / zero / hurt counts are of its columns (one per neuron): the shares were divided by parameters x
    # iterations (a share of 0.0013 helped and 0.9987 zero for a neuron that helped on 65% of the iterations).
    from lca_cli.cli.tables import render_summary

    n = stores["neuron"]
    cols = np.asarray(n.array("train", "lca")[:], dtype=np.float64)  # (T, 20): neuron LCA per iteration
    labels = n.columns.labels(n.layout)
    for row in summarize(n, by="neuron").rows:
        v = cols[:, labels.index(row["name"])]
        assert row["helped_share"] == pytest.approx(float((v < 0).mean()))
        assert row["hurt_share"] == pytest.approx(float((v > 0).mean()))
        assert row["zero_share"] == pytest.approx(float((v == 0).mean()))
    text = render_summary(summarize(n, by="neuron"))
    assert "% of neurons x iterations" in text
    # --concentration: a share of a layer's neurons in a neuron store (so labelled); none in a tensor store.
    text = render_summary(summarize(n, by="layer", concentration=True))
    assert "fewest neurons (% of the group's)" in text and "% of parameters x iterations" in text
    assert all(r["params_50"] is None for r in summarize(stores["tensor"], by="layer", concentration=True).rows)


def test_params_store_keeps_its_columns_and_an_other_column(stores: dict[str, LcaStore]) -> None:
    ref, p = stores["parameter"], stores["params"]
    keep = [i for i, q in enumerate(ref.layout.params) if q.name.startswith("0.")]
    rest = [i for i in range(len(ref.layout.params)) if i not in keep]
    lca_ref = np.asarray(ref.array("train", "lca")[:])
    lca = np.asarray(p.array("train", "lca")[:])
    cols = np.concatenate([np.arange(ref.layout.params[i].offset, ref.layout.params[i].stop) for i in keep])
    assert np.array_equal(lca[:, :-1], lca_ref[:, cols])  # the same float32 values
    tensor = p.read("train", "tensor_lca")
    other = np.zeros(p.n_pairs)
    for i in rest:  # in layout order, as the reducer adds them
        other = other + tensor[:, i]
    assert np.array_equal(lca[:, -1], other.astype(np.float32))
    # Conservation stays checkable: the columns still sum to the whole allocation.
    np.testing.assert_allclose(lca.astype(np.float64).sum(1), tensor.sum(1), rtol=1e-6, atol=1e-9)
    with pytest.raises(UsageError, match="--granularity tensor"):
        summarize(stores["tensor"], by="neuron")


def test_another_granularity_is_another_store(runs: RunCache, tmp_path: Path) -> None:
    run_dir, config = runs.run("tanh_mlp")
    cfg = dataclasses.replace(config, compute=dataclasses.replace(config.compute, threads=1, granularity="tensor"))
    compute(run_dir, cfg, tmp_path / "s.zarr")
    # The refusal names the setting and the flag that keeps appending to the store.
    with pytest.raises(StoreError, match=r"granularity tensor \(this call: parameter\).*pass --granularity tensor"):
        compute(run_dir, config.with_overrides(threads=1), tmp_path / "s.zarr")
    params = dataclasses.replace(config.compute, threads=1, params=("0.*",))
    compute(run_dir, dataclasses.replace(config, compute=params), tmp_path / "p.zarr")
    with pytest.raises(StoreError, match=r"params 0\.\* \(this call: none\).*pass --params '0\.\*'"):
        compute(run_dir, config.with_overrides(threads=1), tmp_path / "p.zarr")


@pytest.mark.slow
def test_the_report_works_at_the_resolution_stored(stores: dict[str, LcaStore], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from lca_cli.reporting.report import write_report

    for name, held in (("neuron", "one column per neuron"), ("params", "the columns of some tensors only")):
        result = write_report(stores[name].path, tmp_path / f"{name}.html")
        assert result.html.exists() and result.html.stat().st_size > 10_000
        # The page says what its "parameters" are on such a store.
        assert f"This store holds {held}" in result.html.read_text(encoding="utf-8")


CONV1D_FACTORIES = '''
import torch
from torch import nn


class Conv1D(nn.Module):
    """transformers' Conv1D (GPT-2): y = x @ W + b with W stored (in, out)."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.5)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight)


def model():
    torch.manual_seed(0)
    return nn.Sequential(Conv1D(4, 4), nn.Tanh(), Conv1D(3, 4))


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=g)
    return x, x[:, :3].argmax(1)
'''


def _conv1d_run(root: Path, steps: int) -> Path:
    from lca_cli.training.record import CheckpointWriter

    root.mkdir()
    (root / "convfactories.py").write_text(CONV1D_FACTORIES)
    ns: dict[str, object] = {}
    exec(compile(CONV1D_FACTORIES, "convfactories", "exec"), ns)
    net, (x, y) = ns["model"](), ns["data"]()  # type: ignore[operator]
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    with CheckpointWriter(root) as writer:
        writer.write_config(model="convfactories:model", data="convfactories:data", loss="cross_entropy")
        writer.save(net, 0)
        for step in range(1, steps + 1):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            writer.save(net, step)
    return root


def test_neurons_of_weights_stored_in_out_are_their_columns(tmp_path: Path) -> None:
    from lca_cli.computation.config import load_config

    run = _conv1d_run(tmp_path / "run", steps=6)
    config = load_config(run / "lca.toml").with_overrides(threads=1, l1_scope="pair")
    compute(run, config, tmp_path / "p.zarr")
    compute(run, config.with_overrides(granularity="neuron"), tmp_path / "n.zarr")
    p, n = LcaStore.open(tmp_path / "p.zarr"), LcaStore.open(tmp_path / "n.zarr")
    assert [q.axis for q in p.layout.params] == [1, 0, 1, 0]
    rows = np.asarray(p.array("train", "lca")[:], dtype=np.float64)
    # Layer "0": weight (4 in, 4 out), bias (4,). Neuron i = column i of the weight + bias i (not row i).
    by_hand = rows[:, 0:16].reshape(-1, 4, 4).sum(1) + rows[:, 16:20]
    np.testing.assert_allclose(np.asarray(n.array("train", "lca")[:, 0:4]), by_hand, rtol=1e-5, atol=1e-9)
    neurons = {r["name"]: r["lca"] for r in summarize(p, by="neuron").rows}
    np.testing.assert_allclose([neurons[f"0[{i}]"] for i in range(4)], by_hand.sum(0), rtol=1e-5, atol=1e-9)
