"""The objective: exact chunked means accumulated in float64, dropout off, BatchNorm modes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import reference
import torch
from torch import nn

from lca_cli.errors import ConfigError
from lca_cli.layout import Layout
from lca_cli.objective import (
    Objective,
    builtin_loss,
    interpolated_buffer_names,
    make_chunks,
    prepare_model,
    split_state,
)

CPU = torch.device("cpu")


def build_objective(
    model: nn.Module, data, batch_size: int, dtype: torch.dtype, loss: str = "cross_entropy", bn_mode: str = "batch"
):
    """Objective over ``data`` as the pipeline builds it; returns (objective, point vector, fixed tensors)."""
    state = copy.deepcopy(model.state_dict())
    net = prepare_model(model, bn_mode).to(dtype=dtype)
    layout = Layout.from_module(net)
    buffers = dict(net.named_buffers())
    names = interpolated_buffer_names(net, bn_mode)
    vlayout = Layout.from_shapes(
        [(p.name, p.shape) for p in layout.params] + [(n, tuple(buffers[n].shape)) for n in names]
    )
    obj = Objective(net, vlayout, make_chunks("train", data, batch_size, CPU, dtype), builtin_loss(loss), dtype)
    v, fixed = split_state(state, vlayout, CPU)
    return obj, v, fixed


def full_batch(model: nn.Module, data, loss: str = "cross_entropy") -> tuple[float, np.ndarray]:
    """Full-batch float64 loss and gradient with the model used the ordinary way (the reference)."""
    net = copy.deepcopy(model).double().eval()
    x, y = data
    return reference._loss_and_grad(net, net.state_dict(), x.double(), y, reference.ref_loss(loss))


DATA = reference.blobs(n=50)


@pytest.mark.parametrize("batch_size", [1, 7, 25, 50, 64])
def test_chunked_float64_equals_full_batch(batch_size: int) -> None:
    model = reference.tanh_mlp(seed=1)
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, batch_size, torch.float64)
    loss, grad = obj.value_and_grad(v, fixed)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64 and grad.shape == v.shape
    ref_loss, ref_grad = full_batch(model, DATA)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-13)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-11, atol=1e-14)
    assert float(obj.value(v, fixed)) == pytest.approx(ref_loss, rel=1e-13)
    sizes = obj.evalset.chunk_sizes
    assert sum(sizes) == 50 and sizes[-1] == 50 - batch_size * (len(sizes) - 1)  # the remainder is kept


@pytest.mark.parametrize("batch_size", [7, 50])
def test_float32_network_close_to_float64(batch_size: int) -> None:
    model = reference.tanh_mlp(seed=1)
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, batch_size, torch.float32)
    loss, grad = obj.value_and_grad(v, fixed)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64  # accumulated in float64
    ref_loss, ref_grad = full_batch(model, DATA)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-6)
    assert np.abs(grad.numpy() - ref_grad).max() <= 1e-5 * np.abs(ref_grad).max()


def test_value_and_grad_does_not_touch_the_model_or_v() -> None:
    model = reference.tanh_mlp(seed=1)
    obj, v, fixed = build_objective(model, DATA, 16, torch.float32)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    v_before = v.clone()
    obj.value_and_grad(v + 1.0, fixed)
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    assert torch.equal(v, v_before)
    assert all(p.grad is None for p in model.parameters())


def test_dropout_is_off() -> None:
    model = reference.dropout_mlp(p=0.5, seed=2)
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, 16, torch.float64)
    a = obj.value_and_grad(v, fixed)
    b = obj.value_and_grad(v, fixed)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ref_loss, ref_grad = full_batch(model, DATA)  # eval() mode: dropout is the identity
    assert float(a[0]) == pytest.approx(ref_loss, rel=1e-13)
    np.testing.assert_allclose(a[1].numpy(), ref_grad, rtol=1e-11, atol=1e-14)


def trained_bn_model() -> nn.Module:
    """A BatchNorm MLP whose running statistics are not the defaults (so copies vs. writes are visible)."""
    model = reference.bn_mlp(seed=3)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(DATA[0][i * 10 : i * 10 + 20])
    return model


def test_batch_mode_never_mutates_given_buffers() -> None:
    model = trained_bn_model()
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, 10, torch.float32)
    assert set(fixed) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert v.shape == (Layout.from_module(model).size,)  # batch mode: no buffers in the point vector
    before = {k: t.clone() for k, t in fixed.items()}
    obj.value_and_grad(v, fixed)
    obj.value(v, fixed)
    for k, t in fixed.items():
        assert torch.equal(t, before[k]), k


def test_batch_mode_uses_chunk_statistics() -> None:
    model = trained_bn_model()
    losses = {}
    for bs in (10, 25, 50):
        obj, v, fixed = build_objective(copy.deepcopy(model), DATA, bs, torch.float32)
        losses[bs] = float(obj.value_and_grad(v, fixed)[0])
    # Chunk statistics: the loss depends on the chunk size (which is why the store records it).
    assert len({round(x, 6) for x in losses.values()}) == 3
    # And equals the size-weighted mean over chunks of a train-mode forward on each chunk (float64 here).
    net = copy.deepcopy(model).double().train()
    x, y = DATA
    ce = reference.ref_loss("cross_entropy")
    with torch.no_grad():
        manual = sum(float(ce(net(x[i : i + 10].double()), y[i : i + 10])) * 10 / 50 for i in range(0, 50, 10))
    assert losses[10] == pytest.approx(manual, rel=1e-6)


def test_batch_mode_float64_network_with_float32_checkpoint() -> None:
    model = trained_bn_model()  # float32 checkpoint, as training writes it
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, 25, torch.float64)
    loss = float(obj.value_and_grad(v, fixed)[0])
    net = copy.deepcopy(model).double().train()
    x, y = DATA
    ce = reference.ref_loss("cross_entropy")
    with torch.no_grad():
        manual = sum(float(ce(net(x[i : i + 25].double()), y[i : i + 25])) * 25 / 50 for i in (0, 25))
    assert loss == pytest.approx(manual, rel=1e-13)


def test_running_mode_matches_eval_forward_and_keeps_buffers_fixed() -> None:
    model = trained_bn_model()
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, 16, torch.float64, bn_mode="running")
    names = interpolated_buffer_names(prepare_model(copy.deepcopy(model), "running"), "running")
    assert names == ["1.running_mean", "1.running_var"]  # integer num_batches_tracked is never interpolated
    assert list(fixed) == ["1.num_batches_tracked"]
    n_params = Layout.from_module(model).size
    assert v.shape == (n_params + 2 * 16,)
    loss, grad = obj.value_and_grad(v, fixed)
    ref_loss, ref_grad = full_batch(model, DATA)  # eval() forward with the running statistics
    assert float(loss) == pytest.approx(ref_loss, rel=1e-13)
    np.testing.assert_allclose(grad[:n_params].numpy(), ref_grad, rtol=1e-10, atol=1e-14)


def test_running_mode_buffer_gradient_matches_finite_differences() -> None:
    model = trained_bn_model()
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, 16, torch.float64, bn_mode="running")
    _, grad = obj.value_and_grad(v, fixed)
    n_params = Layout.from_module(model).size
    h = 1e-6
    for j in [n_params, n_params + 5, n_params + 16, n_params + 16 + 9]:  # running_mean[0], [5], running_var[0], [9]
        e = torch.zeros_like(v)
        e[j] = h
        fd = (float(obj.value(v + e, fixed)) - float(obj.value(v - e, fixed))) / (2 * h)
        assert grad[j].item() == pytest.approx(fd, rel=1e-6, abs=1e-10)
    assert grad[n_params:].abs().max() > 1e-4  # the buffers really do move the loss


def test_single_element_custom_loss_is_summed_like_a_scalar() -> None:
    # A custom [loss] factory may return a (1,)-shaped loss: the chunk losses must still sum to one scalar
    # (stacked (C, 1) losses times (C,) weights would broadcast to a (C, C) sum).
    obj, v, fixed = build_objective(reference.tanh_mlp(seed=1), DATA, 7, torch.float64)
    loss, grad = obj.value_and_grad(v, fixed)
    scalar_loss = obj.loss_fn
    obj.loss_fn = lambda out, y: scalar_loss(out, y).reshape(1)
    loss1, grad1 = obj.value_and_grad(v, fixed)
    assert loss1.shape == () and float(loss1) == pytest.approx(float(loss), rel=1e-15)
    assert torch.equal(grad1, grad)


def test_builtin_losses() -> None:
    out = torch.tensor([[0.5], [1.5], [-1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    # (N, 1) outputs against (N,) targets must not broadcast to (N, N).
    assert float(builtin_loss("mse")(out, y)) == pytest.approx((0.25 + 0.25 + 1.0) / 3)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    ce = float(builtin_loss("cross_entropy")(logits, labels))
    assert ce == pytest.approx(float(reference.ref_loss("cross_entropy")(logits, labels)))
    assert float(builtin_loss("nll")(torch.log_softmax(logits, 1), labels)) == pytest.approx(ce)
    bce = float(builtin_loss("bce_with_logits")(out, y))
    assert bce == pytest.approx(float(nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), y)))
    with pytest.raises(ConfigError, match="unknown loss"):
        builtin_loss("hinge")


def test_make_chunks_forms_and_errors() -> None:
    ds = reference.image_dataset(n=10)
    es = make_chunks("val", ds, 4, CPU, torch.float64)
    assert es.n_samples == 10 and es.chunk_sizes == [4, 4, 2]
    assert es.chunks[0][0].dtype == torch.float64 and es.chunks[0][1].dtype == torch.int64
    x, _y = reference.images(n=10)
    assert torch.equal(torch.cat([c[0] for c in es.chunks]), x.double())
    with pytest.raises(ConfigError, match="3 inputs but 2 targets"):
        make_chunks("train", (torch.zeros(3, 2), torch.zeros(2)), 2, CPU, torch.float32)
    with pytest.raises(ConfigError, match="is empty"):
        make_chunks("train", (torch.zeros(0, 2), torch.zeros(0)), 2, CPU, torch.float32)
    with pytest.raises(ConfigError, match="is empty"):
        make_chunks("train", [], 2, CPU, torch.float32)
    with pytest.raises(ConfigError, match="returned int"):
        make_chunks("train", 5, 2, CPU, torch.float32)


def test_split_state() -> None:
    model = trained_bn_model()
    state = model.state_dict()
    layout = Layout.from_module(model)
    v, fixed = split_state(state, layout, CPU)
    assert v.dtype == torch.float64 and v.shape == (layout.size,)
    assert torch.equal(v, torch.cat([p.detach().reshape(-1).double() for p in model.parameters()]))
    assert set(fixed) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    assert interpolated_buffer_names(model, "batch") == []
