"""The objective: exact chunked means accumulated in float64, dropout off, BatchNorm modes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from torch import nn

from lca_cli.core.evalset import make_chunks
from lca_cli.core.layout import Layout
from lca_cli.core.losses import builtin_loss
from lca_cli.core.model import interpolated_buffer_names, prepare_model
from lca_cli.core.objective import Objective
from lca_cli.core.vectors import split_state

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
    loss_fn = builtin_loss(loss)
    obj = Objective(net, vlayout, make_chunks("train", data, batch_size, CPU, dtype, loss_fn), loss_fn, dtype)
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


def test_loss_rounding_follows_the_coarser_of_network_and_loss() -> None:
    model = reference.tanh_mlp(seed=1)
    assert build_objective(copy.deepcopy(model), DATA, 25, torch.float64)[0].loss_rounding == 0.0
    obj32, v, fixed = build_objective(copy.deepcopy(model), DATA, 25, torch.float32)
    assert obj32.loss_rounding == 4 * 2.0**-24  # float32 outputs, however precisely the loss is reduced
    obj, v, fixed = build_objective(copy.deepcopy(model), DATA, 25, torch.float64)
    custom = Objective(obj.model, obj.vlayout, obj.evalset, lambda out, y: nn.functional.cross_entropy(out.float(), y),
                       torch.float64)  # fmt: skip
    obj.value_and_grad(v, fixed)
    custom.value_and_grad(v, fixed)
    assert obj.loss_rounding == 0.0 and custom.loss_rounding == 4 * 2.0**-24  # a float32 loss of a float64 net


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
    v = v.double()  # steps of 1e-6 need a float64 point (split_state keeps a float32 checkpoint in float32)
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


# -- structured data, model outputs of real frameworks, and the pre-flight fit check ------------------------

from lca_cli.errors import EXIT_CODES  # noqa: E402


class Wrapped(nn.Module):
    """A model returning what Hugging Face models return: a dict subclass with ``logits`` (and more)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.kind = kind

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> object:
        logits = self.fc(x if mask is None else x * mask)
        if self.kind == "dict":
            return {"hidden": x, "logits": logits}
        if self.kind == "tuple":
            return (logits, x)
        return logits


@pytest.mark.parametrize("kind", ["dict", "tuple"])
def test_builtin_losses_unwrap_model_outputs(kind: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    plain = Wrapped("tensor").double()
    wrapped = Wrapped(kind).double()
    wrapped.load_state_dict(plain.state_dict())
    a, va, fa = build_objective(plain, (x, y), 7, torch.float64)
    b, vb, fb = build_objective(wrapped, (x, y), 7, torch.float64)
    la, ga = a.value_and_grad(va, fa)
    lb, gb = b.value_and_grad(vb, fb)
    assert float(la) == float(lb) and torch.equal(ga, gb)


def test_dict_inputs_are_keyword_arguments_and_labels_are_targets() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    mask = (torch.rand(20, 4) > 0.3).double()
    model = Wrapped("dict").double()
    obj, v, fixed = build_objective(copy.deepcopy(model), {"x": x, "mask": mask, "labels": y}, 6, torch.float64)
    loss, _ = obj.value_and_grad(v, fixed)
    with torch.no_grad():
        ref = nn.functional.cross_entropy(model(x, mask)["logits"], y)
    assert float(loss) == pytest.approx(float(ref), rel=1e-14)
    # A map-style Dataset of dict items gives the same set.
    items = [{"x": x[i], "mask": mask[i], "labels": int(y[i])} for i in range(20)]
    obj2, v2, fixed2 = build_objective(copy.deepcopy(model), items, 6, torch.float64)
    assert float(obj2.value_and_grad(v2, fixed2)[0]) == float(loss)


def test_causal_lm_is_the_token_mean_over_the_whole_set() -> None:
    vocab, n, t = 7, 9, 5

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, vocab)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.emb(input_ids)}

    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (n, t))
    mask = torch.ones(n, t, dtype=torch.long)
    mask[::2, -2:] = 0  # padding: never scored
    model = LM().double()
    with torch.no_grad():
        logits = model(ids, mask)["logits"]
    labels = ids.masked_fill(mask == 0, -100)
    ref = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), ignore_index=-100)
    for batch_size in (2, 4, 9):  # chunks with different numbers of scored tokens: still the exact token mean
        obj, v, fixed = build_objective(
            copy.deepcopy(model), {"input_ids": ids, "attention_mask": mask}, batch_size, torch.float64, "causal_lm"
        )
        assert float(obj.value_and_grad(v, fixed)[0]) == pytest.approx(float(ref), rel=1e-13)


MISFIT = """
import numpy as np
import torch

def data(kind="ok", n=150, features=6, classes=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, features, generator=g)
    y = (x[:, :classes].argmax(dim=1)).long()
    if kind == "features":
        return torch.randn(n, features + 1), y
    if kind == "label_range":
        return x, y + 3
    if kind == "float_targets":
        return x, y.float()
    if kind == "three_tuple":
        return x, y, torch.ones(n)
    if kind == "lists":
        return [[float(v) for v in row] for row in x]
    if kind == "numpy":
        return x.numpy(), y.numpy()
    if kind == "exit":
        raise SystemExit(0)
    if kind == "no_targets":
        return x
    return x, y

def vector_loss(out, y):
    return torch.nn.functional.cross_entropy(out, y, reduction="none")

def string_loss(out, y):
    return "low"

def detached_loss(out, y):
    return torch.nn.functional.cross_entropy(out, y).detach()
"""


def _misfit_run(tmp_path: Path, kind: str, loss: str | None = None) -> Path:
    from runs import make_tiny_run

    run = make_tiny_run(tmp_path, steps=2)
    (run / "misfitfactories.py").write_text(MISFIT)
    text = (run / "lca.toml").read_text()
    text = text.replace(
        'factory = "tinyfactories:data"\nkwargs = {}',
        f'factory = "misfitfactories:data"\nkwargs = {{ kind = "{kind}" }}',
    )
    if loss:
        text = text.replace('name = "cross_entropy"', f'factory = "misfitfactories:{loss}"')
    (run / "lca.toml").write_text(text)
    assert "misfitfactories:data" in text
    return run


@pytest.mark.parametrize(
    ("kind", "loss", "needles"),
    [
        ("features", None, ["'train'", "forward pass", "shapes cannot be multiplied"]),
        ("label_range", None, ["'train'", "label 5 is out of range for the model's 3 classes"]),
        ("float_targets", None, ["'train'", "integer class labels", ".long()"]),
        ("three_tuple", None, ["3-element"]),
        ("lists", None, ["6-element"]),
        ("exit", None, ["sys.exit(0)"]),
        ("no_targets", None, ["needs targets"]),
        ("ok", "vector_loss", ["'train'", "shape (150,)", "scalar"]),
        ("ok", "string_loss", ["'train'", "returned a str"]),
        ("ok", "detached_loss", ["'train'", "does not depend on the parameters"]),
    ],
)
def test_data_or_loss_that_does_not_fit_is_one_line_exit_3_before_any_pair(
    kind: str, loss: str | None, needles: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lca_cli.cli.app import main

    run = _misfit_run(tmp_path, kind, loss)
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--quiet", "--threads", "1"])
    out, err = capsys.readouterr()
    assert info.value.code == EXIT_CODES["config"], err
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (run / "lca.zarr").exists()  # refused before any store or pair


def test_numpy_data_gives_the_same_store_as_tensors(tmp_path: Path) -> None:
    from lca_cli.computation.config import load_config
    from lca_cli.computation.runner import compute
    from lca_cli.store.lcastore import LcaStore

    losses = {}
    for kind in ("ok", "numpy"):
        run = _misfit_run(tmp_path / kind, kind)
        compute(run, load_config(run / "lca.toml").with_overrides(threads=1), run / "lca.zarr")
        losses[kind] = LcaStore.open(run / "lca.zarr").read("train", "loss")
    assert np.array_equal(losses["ok"], losses["numpy"])
