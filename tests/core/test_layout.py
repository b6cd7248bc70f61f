"""Parameter layout: offsets, layers and neurons (flatten/unflatten: test_vectors.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lca_cli.core.layout import Layout, ParamInfo, layer_name

SHAPES = [
    ("encoder.0.weight", (4, 3)),
    ("encoder.0.bias", (4,)),
    ("encoder.2.weight", (2, 4)),
    ("encoder.2.bias", (2,)),
    ("scale", ()),
]


def test_offsets_and_sizes() -> None:
    layout = Layout.from_shapes(SHAPES)
    assert [p.offset for p in layout.params] == [0, 12, 16, 24, 26]
    assert [p.numel for p in layout.params] == [12, 4, 8, 2, 1]
    assert [p.stop for p in layout.params] == [12, 16, 24, 26, 27]
    assert layout.size == 27
    assert layout.names == [n for n, _ in SHAPES]
    assert Layout.from_shapes([]).size == 0


def test_from_module_follows_named_parameters_order() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    layout = Layout.from_module(net)
    assert layout.names == [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert layout.params[0].shape == (2, 1, 3, 3)
    assert layout.size == sum(p.numel() for p in net.parameters())


def test_tied_parameters_appear_once() -> None:
    emb = nn.Embedding(5, 3)
    head = nn.Linear(3, 5, bias=False)
    head.weight = emb.weight
    net = nn.ModuleDict({"emb": emb, "head": head})
    assert Layout.from_module(net).names == ["emb.weight"]


def test_attrs_round_trip() -> None:
    layout = Layout.from_shapes(SHAPES)
    attrs = layout.to_attrs()
    assert attrs[1] == {"name": "encoder.0.bias", "shape": [4], "offset": 12}
    assert attrs[-1] == {"name": "scale", "shape": [], "offset": 26}
    assert Layout.from_attrs(attrs) == layout


def test_layer_name() -> None:
    assert layer_name("encoder.0.weight") == "encoder.0"
    assert layer_name("layer2.0.conv1.weight") == "layer2.0.conv1"
    assert layer_name("scale") == "scale"
    assert layer_name("fc.bias") == "fc"


def test_layers_in_order_of_first_appearance() -> None:
    layout = Layout.from_shapes([("b.w", (2,)), ("a.w", (3,)), ("b.bias", (2,)), ("scale", ())])
    assert layout.layers() == [("b", [0, 2]), ("a", [1]), ("scale", [3])]
    assert layout.tensor_to_layer().tolist() == [0, 1, 0, 2]
    assert layout.tensor_to_layer().dtype == np.int64


def test_neurons() -> None:
    layout = Layout.from_shapes(SHAPES)
    assert layout.neurons() == [
        ("encoder.0", [(0, 4), (1, 4)]),
        ("encoder.2", [(2, 2), (3, 2)]),
        ("scale", [(4, 1)]),
    ]


def test_neurons_split_layer_whose_tensors_disagree_on_dim0() -> None:
    # A layer whose tensors disagree on dim 0 (here a weight (4, 3) with a (3,) tensor) is split per tensor.
    layout = Layout.from_shapes([("a.weight", (4, 3)), ("a.gain", (3,)), ("b.weight", (2, 4)), ("b.bias", (2,))])
    assert layout.neurons() == [
        ("a.weight", [(0, 4)]),
        ("a.gain", [(1, 3)]),
        ("b", [(2, 2), (3, 2)]),
    ]


def test_neurons_scalar_in_a_layer_splits_it() -> None:
    layout = Layout.from_shapes([("n.weight", (1,)), ("n.temperature", ())])
    assert layout.neurons() == [("n.weight", [(0, 1)]), ("n.temperature", [(1, 1)])]


def test_param_info_scalar() -> None:
    info = ParamInfo("s", (), 5)
    assert info.numel == 1 and info.stop == 6


class Conv1D(nn.Module):
    """Stands in for transformers' Conv1D (same class name, same ``nf``): ``y = x @ W + b`` with W ``(in, out)``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.randn(nf))


def test_weights_stored_in_out_have_their_units_along_dim_1() -> None:
    model = nn.Sequential(nn.Linear(3, 4), Conv1D(5, 4), Conv1D(4, 4))
    layout = Layout.from_module(model)
    assert [p.axis for p in layout.params] == [0, 0, 1, 0, 1, 0]
    # Conv1D(4, 4) is square: grouped by dim 0 it would sum input row i with output bias i; its units are columns.
    assert layout.neurons() == [("0", [(0, 4), (1, 4)]), ("1", [(2, 5), (3, 5)]), ("2", [(4, 4), (5, 4)])]
    assert Layout.from_attrs(layout.to_attrs()).params == layout.params  # the axes travel through a store
    assert [p.axis for p in Layout.from_attrs(layout.to_attrs()).params] == [0, 0, 1, 0, 1, 0]
    assert "axis" not in layout.to_attrs()[0]  # dim 0 is not written: a store of nn.Linear layers holds no axis
    by_rows = Layout.from_shapes([(p.name, p.shape) for p in layout.params])
    assert by_rows != layout  # the axes are part of the layout: the same shapes grouped by rows are not this model


@pytest.mark.parametrize(("shape", "axis"), [((4, 3), 0), ((4, 3), 1), ((2, 3, 5), 0), ((2, 3, 5), 1), ((6,), 0)])
def test_unit_sums_and_index_against_loops(shape: tuple[int, ...], axis: int) -> None:
    p = ParamInfo("w", shape, 0, axis)
    values = np.arange(2 * p.numel, dtype=np.float64).reshape(2, p.numel) ** 1.5
    expected = np.zeros((2, p.units))
    for flat, idx in enumerate(np.ndindex(*shape)):
        expected[:, idx[axis]] += values[:, flat]
    np.testing.assert_allclose(p.unit_sums(values), expected, rtol=1e-14)
    np.testing.assert_allclose(p.unit_sums(torch.from_numpy(values)).numpy(), expected, rtol=1e-14)
    assert p.unit_index().tolist() == [idx[axis] for idx in np.ndindex(*shape)]
