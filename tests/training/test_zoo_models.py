"""Tests of the model factories in lca_cli.training.zoo.models."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from lca_cli.errors import ConfigError
from lca_cli.training.zoo import models as M


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# factory, kwargs, input shape (batch 2), output shape, parameter count
CASES: list[tuple[str, dict, tuple[int, ...], tuple[int, ...], int]] = [
    ("fc_mnist", {}, (2, 1, 28, 28), (2, 10), 84_060),
    ("lenet", {}, (2, 1, 28, 28), (2, 10), 431_080),
    ("resnet20", {}, (2, 3, 32, 32), (2, 10), 273_066),
    ("resnet20", {"variant": "a"}, (2, 3, 32, 32), (2, 10), 269_722),
    ("allcnn", {}, (2, 3, 32, 32), (2, 10), 1_369_738),
    ("allcnn", {"width_scale": 0.1, "batch_norm": True, "dropout": 0.5}, (2, 3, 32, 32), (2, 10), 14_463),
    ("small_cnn", {}, (2, 1, 12, 12), (2, 4), 1_572),
    (
        "small_cnn",
        {"hidden": 0, "channels": [3], "size": 8, "in_channels": 2},
        (2, 2, 8, 8),
        (2, 4),
        2 * 3 * 9 + 3 + 3 * 4 * 4 * 4 + 4,
    ),
    ("mlp", {}, (2, 64), (2, 10), 64 * 32 + 32 + 32 * 10 + 10),
    ("mlp", {"hidden": [], "in_features": 5, "out_features": 3}, (2, 5), (2, 3), 18),
    ("linear_regression", {}, (2, 8), (2, 1), 9),
]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for name, kw, *_ in CASES]


@pytest.mark.parametrize(("name", "kwargs", "in_shape", "out_shape", "count"), CASES, ids=IDS)
def test_count_and_forward(name: str, kwargs: dict, in_shape: tuple, out_shape: tuple, count: int) -> None:
    model = getattr(M, name)(**kwargs)
    assert n_params(model) == count
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(in_shape, generator=torch.Generator().manual_seed(0)))
    assert out.shape == out_shape
    assert out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_fc_mnist_names_and_flat_input() -> None:
    model = M.fc_mnist()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert [tuple(p.shape) for p in model.parameters()] == [(100, 784), (100,), (50, 100), (50,), (10, 50), (10,)]
    x = torch.rand(2, 784)
    torch.testing.assert_close(model(x), model(x.reshape(2, 1, 28, 28)))
    # He initialisation: zero biases
    assert all(not p.detach().any() for n, p in model.named_parameters() if n.endswith("bias"))


def test_linear_regression_names() -> None:
    model = M.linear_regression(in_features=3, out_features=2)
    assert [(n, tuple(p.shape)) for n, p in model.named_parameters()] == [
        ("linear.weight", (2, 3)),
        ("linear.bias", (2,)),
    ]


def test_lenet_architecture() -> None:
    model = M.lenet()
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "conv1.weight": (20, 1, 5, 5),
        "conv1.bias": (20,),
        "conv2.weight": (50, 20, 5, 5),
        "conv2.bias": (50,),
        "fc1.weight": (500, 800),
        "fc1.bias": (500,),
        "fc2.weight": (10, 500),
        "fc2.bias": (10,),
    }
    small = M.lenet(input_size=16, channels=[4, 6], hidden=8, in_channels=3, num_classes=5)
    assert small(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    with pytest.raises(ConfigError, match="too small"):
        M.lenet(input_size=15)
    with pytest.raises(ConfigError, match="exactly 2"):
        M.lenet(channels=[4, 5, 6])


def test_resnet20_structure() -> None:
    lca = dict(M.resnet20().named_parameters())
    assert lca["layer2.0.shortcut.weight"].shape == (32, 16, 1, 1)
    assert lca["layer3.0.shortcut.bias"].shape == (64,)
    assert "layer1.0.shortcut.weight" not in lca
    assert lca["fc.weight"].shape == (10, 64)
    convs = [n for n in lca if n.endswith(".weight") and lca[n].dim() == 4 and "shortcut" not in n]
    assert len(convs) == 19
    assert all(n.replace("weight", "bias") in lca for n in convs)
    # 19 conv biases + two 1x1 projection shortcuts are the whole difference to option A
    option_a = dict(M.resnet20(variant="a").named_parameters())
    assert not any("shortcut" in n for n in option_a)
    extra = sum(p.numel() for n, p in lca.items() if n not in option_a)
    assert extra == 688 + (16 * 32 + 32) + (32 * 64 + 64) == 273_066 - 269_722
    # BatchNorm statistics are buffers, not parameters
    buffers = dict(M.resnet20().named_buffers())
    assert "bn1.running_mean" in buffers and "bn1.num_batches_tracked" in buffers


def test_resnet20_option_a_shortcut() -> None:
    model = M.resnet20(variant="a", num_classes=3, in_channels=1)
    shortcut = model.get_submodule("layer2.0.shortcut")
    x = torch.rand(2, 16, 8, 8)
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    torch.testing.assert_close(out[:, 8:24], x[:, :, ::2, ::2])
    assert float(out[:, :8].abs().sum()) == 0.0 and float(out[:, 24:].abs().sum()) == 0.0
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 3)


def test_allcnn_layers() -> None:
    model = M.allcnn(width_scale=0.1, in_channels=1, num_classes=7)
    convs = [n for n, m in model.named_children() if isinstance(m, nn.Conv2d)]
    assert convs == [f"conv{k}" for k in range(1, 10)]
    assert not any(isinstance(m, nn.Dropout | nn.BatchNorm2d) for m in model.modules())
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 7)
    last = list(model.children())
    assert isinstance(last[-3], nn.Conv2d)  # conv9 gives the logits: no ReLU after it
    dropped = M.allcnn(width_scale=0.1, dropout=0.5)
    assert sum(isinstance(m, nn.Dropout) for m in dropped.modules()) == 2
    with pytest.raises(ConfigError, match="width_scale"):
        M.allcnn(width_scale=0)


def test_mlp_options() -> None:
    model = M.mlp(in_features=4, hidden=[6, 5], out_features=2, activation="tanh")
    assert [n for n, _ in model.named_children()] == ["flatten", "fc1", "act1", "fc2", "act2", "fc3"]
    assert isinstance(model.act1, nn.Tanh)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    dropped = M.mlp(in_features=4, hidden=[6, 5], out_features=2, dropout=0.5)
    assert [n for n, _ in dropped.named_children()] == [
        "flatten", "fc1", "act1", "drop1", "fc2", "act2", "drop2", "fc3",
    ]  # fmt: skip
    # same seed, same weights with and without dropout; eval() turns dropout off
    assert all(torch.equal(a, b) for a, b in zip(dropped.parameters(), M.mlp(4, [6, 5], 2).parameters(), strict=True))
    dropped.eval()
    x = torch.rand(3, 4)
    torch.testing.assert_close(dropped(x), dropped(x))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.mlp(activation="swish"), "activation"),
        (lambda: M.mlp(hidden=[0]), "hidden"),
        (lambda: M.mlp(hidden="32"), "hidden"),  # type: ignore[arg-type]
        (lambda: M.mlp(dropout=1.0), "dropout"),
        (lambda: M.mlp(init="xavier"), "init"),
        (lambda: M.mlp(seed=True), "seed"),
        (lambda: M.resnet20(variant="b"), "variant"),
        (lambda: M.small_cnn(size=3), "too small"),
        (lambda: M.small_cnn(channels=[]), "empty"),
        (lambda: M.linear_regression(in_features=0), "in_features"),
    ],
)
def test_bad_arguments(call: Callable[[], nn.Module], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


FACTORIES: list[tuple[str, dict]] = [
    ("fc_mnist", {}),
    ("lenet", {}),
    ("resnet20", {}),
    ("allcnn", {"width_scale": 0.25}),
    ("small_cnn", {}),
    ("mlp", {"hidden": [8, 8]}),
    ("linear_regression", {}),
]


@pytest.mark.parametrize(("name", "kwargs"), FACTORIES, ids=[f[0] for f in FACTORIES])
def test_seed_determinism_and_global_rng(name: str, kwargs: dict) -> None:
    factory = getattr(M, name)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = factory(seed=3, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    expected_next = torch.rand(3)
    torch.set_rng_state(state)
    b = factory(seed=3, **kwargs)
    assert torch.equal(torch.rand(3), expected_next)
    c = factory(seed=4, **kwargs)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
