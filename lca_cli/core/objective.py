"""L(θ) and its gradient over a fixed evaluation set, with the model used functionally.

The objective is the exact mean loss over *all* samples of the set, processed in a fixed order in chunks
of ``batch_size``: chunk means are weighted by ``n_chunk / N`` and accumulated, with the gradient, in
float64 even when the network runs in float32. The model's own parameters and buffers are never touched:
every evaluation goes through :func:`torch.func.functional_call` with tensors the caller owns.

The point being evaluated is one flat vector ``v = [θ (P); b (B)]``: θ the parameters in
``named_parameters()`` order, ``b`` the floating-point BatchNorm running statistics when ``bn_mode`` is
``"running"`` (empty otherwise). Keeping buffers in the same vector lets the integrator treat them like
parameters, so their share of the loss change is allocated (to them) instead of landing in the residual.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from lca_cli.core.integrate import loss_rounding_of
from lca_cli.core.layout import Layout
from lca_cli.errors import ConfigError

__all__ = [
    "EvalSet",
    "Objective",
    "as_tensors",
    "builtin_loss",
    "interpolated_buffer_names",
    "make_chunks",
    "one_line",
    "prepare_model",
    "split_state",
]

LossFn = Callable[[Any, Any], torch.Tensor]
#: Model inputs of one chunk: a tensor (one positional argument), a tuple of tensors (several positional
#: arguments) or a dict of tensors (keyword arguments, e.g. ``input_ids`` and ``attention_mask``).
Inputs = Any
#: Targets of one chunk, or None when the loss needs none (``causal_lm`` on input ids, ``model_loss``).
Targets = torch.Tensor | None

_BN_TYPES = (torch.nn.modules.batchnorm._BatchNorm,)

#: Label value the token losses ignore (the Hugging Face / PyTorch convention).
IGNORE_INDEX = -100


def model_outputs(out: Any) -> Any:
    """The logits in a model's output: a tensor as is; ``logits`` of a ``ModelOutput`` or dict; element 0 of a tuple.

    Args:
        out: What the model returned.

    Returns:
        The tensor the built-in losses work on (or ``out`` unchanged when none is found, for the caller to refuse).

    """
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        if "logits" in out:
            return out["logits"]
        values = list(out.values())
        return values[0] if values else out
    if isinstance(out, tuple | list) and out:
        return out[0]
    return out


class BuiltinLoss:
    """A built-in mean loss ``(outputs, targets) -> scalar``, with what the objective needs to know about it.

    Attributes:
        name: The config name.
        classes: Whether targets are class indices (``cross_entropy``, ``nll``, ``causal_lm``).
        model_labels: Whether the model gets the targets as ``labels=`` and computes the loss (``model_loss``).

    """

    def __init__(self, name: str, fn: Callable[[torch.Tensor, Any], torch.Tensor], classes: bool = False,
                 model_labels: bool = False) -> None:  # fmt: skip
        self.name = name
        self._fn = fn
        self.classes = classes
        self.model_labels = model_labels

    def __call__(self, out: Any, y: Any) -> torch.Tensor:
        """The chunk's mean loss."""
        if self.model_labels:
            return _model_loss(out)
        return self._fn(model_outputs(out), y)

    def units(self, inputs: Inputs, targets: Targets) -> int:
        """What the mean is over, counted in one chunk: samples, or the scored tokens of ``causal_lm``."""
        if self.name == "causal_lm" and targets is not None:
            if targets.dim() < 2:
                raise ConfigError(
                    f"causal_lm needs token labels of shape (samples, tokens), got {tuple(targets.shape)}"
                )
            return int((targets[:, 1:] != IGNORE_INDEX).sum())
        return batch_len(inputs)

    def targets_from_inputs(self, inputs: Inputs) -> Targets:
        """``causal_lm`` without targets: the input ids, padding (``attention_mask == 0``) ignored."""
        if self.name != "causal_lm":
            return None
        ids = inputs.get("input_ids") if isinstance(inputs, Mapping) else inputs
        if not isinstance(ids, torch.Tensor):
            return None
        labels = ids.clone()
        mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
        if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
            labels[mask == 0] = IGNORE_INDEX
        return labels


def _model_loss(out: Any) -> torch.Tensor:
    loss = out.get("loss") if isinstance(out, Mapping) else (out[0] if isinstance(out, tuple | list) and out else None)
    if loss is None:
        raise ConfigError(
            "model_loss: the model returned no 'loss'; give the evaluation set 'labels' (or targets) so that the "
            "model computes its loss"
        )
    return loss


def _mean64(per_element: torch.Tensor) -> torch.Tensor:
    """The float64 mean of per-element losses.

    A float32 network's mean loss rounded to float32 is quantised to its ulp (4.8e-7 at a loss of 5): late in
    training, or at small learning rates, the loss change of a pair is a few of those steps, and its residual
    against the float64 sum of the row is that rounding, not the integration's error (flagged pairs, refinement
    to the cap, on a row that was right). Each element's loss keeps the network's dtype; only the reduction is
    float64, which costs nothing beside the network and leaves the gradient as it was.
    """
    return per_element.double().mean()


def _causal_lm(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Next-token prediction: position t's logits score token t + 1. Mean over the scored tokens of the chunk
    # (labels != -100; ignored ones score 0); the objective weights chunks by their scored tokens, so the set's
    # loss is the exact token mean. A chunk with none scored contributes 0 (its weight is 0 too). The sum is
    # float64 (see _mean64).
    vocab = logits.shape[-1]
    shift_logits = logits[..., :-1, :].reshape(-1, vocab)  # (N*(T-1), V)
    shift_labels = y[..., 1:].reshape(-1).to(logits.device)  # (N*(T-1),)
    per_token = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    return per_token.double().sum() / max(1, int((shift_labels != IGNORE_INDEX).sum()))


def _as_targets(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Targets of an elementwise loss: (N,) against (N, 1) outputs would broadcast to (N, N), so shapes align."""
    return (y.reshape(out.shape) if y.numel() == out.numel() else y).to(out.dtype)


# Every built-in loss returns the float64 mean of its per-element losses (see _mean64).
LOSSES: dict[str, dict[str, Any]] = {
    "cross_entropy": {"fn": lambda out, y: _mean64(F.cross_entropy(out, y, reduction="none")), "classes": True},
    "nll": {"fn": lambda out, y: _mean64(F.nll_loss(out, y, reduction="none")), "classes": True},
    "mse": {"fn": lambda out, y: _mean64(F.mse_loss(out, _as_targets(out, y), reduction="none"))},
    "bce_with_logits": {
        "fn": lambda out, y: _mean64(F.binary_cross_entropy_with_logits(out, _as_targets(out, y), reduction="none"))
    },
    "causal_lm": {"fn": _causal_lm, "classes": True},
    "model_loss": {"fn": None, "model_labels": True},
}


def builtin_loss(name: str) -> BuiltinLoss:
    """A built-in mean loss ``(outputs, targets) -> scalar``.

    Outputs may be a tensor, a ``ModelOutput`` or dict (its ``logits``), or a tuple (its first element).

    Args:
        name: ``cross_entropy``, ``nll``, ``mse``, ``bce_with_logits``, ``causal_lm`` (shifted next-token
            cross-entropy over the tokens whose label is not -100; targets default to the input ids) or
            ``model_loss`` (the ``loss`` the model returns when called with ``labels=``).

    Returns:
        The loss function (mean over the chunk; the objective reweights chunk means exactly).

    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r} (known: {', '.join(LOSSES)})")
    return BuiltinLoss(name, **LOSSES[name])


@dataclass(frozen=True)
class EvalSet:
    """A fixed evaluation set split into chunks, in order.

    Attributes:
        name: Set name (``"train"``, ``"val"``, ...).
        chunks: ``[(inputs, targets)]`` in fixed order; the last chunk may be smaller. Inputs are a tensor, a
            tuple or a dict of tensors (see :data:`Inputs`); targets a tensor or None.
        n_samples: Total number of samples N.

    """

    name: str
    chunks: tuple[tuple[Inputs, Targets], ...]
    n_samples: int

    @property
    def chunk_sizes(self) -> list[int]:
        """Samples per chunk."""
        return [batch_len(x) for x, _ in self.chunks]


def _tensors(inputs: Inputs) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    return list(inputs)


def batch_len(inputs: Inputs) -> int:
    """Samples in a chunk's inputs (the first dimension of its tensors)."""
    return int(_tensors(inputs)[0].shape[0])


def _map(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: fn(v) for k, v in inputs.items()}
    return tuple(fn(v) for v in inputs)


def _rows(t: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """Rows ``start .. start + size - 1`` (a view: the chunks share the set's storage)."""
    return t[start : start + size]


def _tensor(value: Any, what: str) -> torch.Tensor:
    """A tensor from a tensor, numpy array, number or (rectangular) list; anything else is a ConfigError."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind not in "biuf":
            raise ConfigError(f"{what} is a numpy array of dtype {value.dtype}; give numbers (or a tensor)")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, bool | int | float | list):
        try:
            return torch.as_tensor(value)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"{what} is a list that is not a rectangular array of numbers ({exc}); pad it") from None
    raise ConfigError(f"{what} is a {type(value).__name__}; expected a tensor (or numpy array)")


_ARRAY = (torch.Tensor, np.ndarray)


def _inputs(value: Any, what: str) -> Inputs:
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError(f"{what} is an empty dict")
        return {str(k): _tensor(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple) and value and all(isinstance(v, _ARRAY) for v in value):
        return tuple(_tensor(v, f"{what}[{i}]") for i, v in enumerate(value))
    return _tensor(value, what)


def _split_labels(inputs: Inputs, targets: Any, what: str) -> tuple[Inputs, Targets]:
    if isinstance(inputs, dict) and "labels" in inputs:
        if targets is not None:
            raise ConfigError(f"{what}: the inputs hold 'labels' and targets are given too; give one of them")
        targets = inputs.pop("labels")
    return inputs, None if targets is None else _tensor(targets, f"{what} targets")


def _one(data: Any, what: str) -> tuple[Inputs, Targets]:
    """One structure (a whole set, or one Dataset item) -> ``(inputs, targets)``."""
    if isinstance(data, tuple | list):
        if len(data) == 2:
            return _split_labels(_inputs(data[0], f"{what} inputs"), data[1], what)
        if len(data) == 1:
            return _split_labels(_inputs(data[0], f"{what} inputs"), None, what)
        raise ConfigError(
            f"{what} is a {len(data)}-element {type(data).__name__}; give (inputs, targets), with several inputs "
            "as ((x1, x2), targets) or a dict of tensors"
        )
    if isinstance(data, Mapping | torch.Tensor | np.ndarray | bool | int | float):
        return _split_labels(_inputs(data, f"{what} inputs"), None, what)
    raise ConfigError(
        f"{what} is a {type(data).__name__}; expected a tensor, (inputs, targets), a dict of tensors or a "
        "map-style Dataset of these"
    )


def _stack(values: list[torch.Tensor], what: str) -> torch.Tensor:
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1:
        raise ConfigError(f"{what}: items have different shapes ({', '.join(map(str, sorted(shapes)[:3]))}); pad them")
    return torch.stack(values)


def _from_items(items: list[tuple[Inputs, Targets]], what: str) -> tuple[Inputs, Targets]:
    first_x, first_y = items[0]
    if any(type(x) is not type(first_x) or (y is None) != (first_y is None) for x, y in items):
        raise ConfigError(f"{what}: items differ in form (inputs or targets present in some only)")
    if isinstance(first_x, dict):
        keys = list(first_x)
        if any(list(x) != keys for x, _ in items):
            raise ConfigError(f"{what}: items have different keys")
        inputs: Inputs = {k: _stack([x[k] for x, _ in items], f"{what} {k!r}") for k in keys}
    elif isinstance(first_x, tuple):
        inputs = tuple(_stack([x[i] for x, _ in items], f"{what} input {i}") for i in range(len(first_x)))
    else:
        inputs = _stack([x for x, _ in items], f"{what} inputs")
    targets = None if first_y is None else _stack([y for _, y in items], f"{what} targets")  # type: ignore[misc]
    return inputs, targets


def as_batch(data: object, where: str) -> tuple[Inputs, Targets]:
    """Normalise a data factory's result to ``(inputs, targets)`` for the whole set, in index order.

    Accepted: a tensor (inputs only); ``(inputs, targets)`` where inputs are a tensor, a tuple of tensors or a
    dict of tensors; a dict of tensors (keyword inputs; a ``labels`` entry becomes the targets); or a map-style
    Dataset (anything with ``__len__`` and integer ``__getitem__``, a list of samples included) whose items are
    any of these, stacked. Numpy arrays are converted (an ``(X, Y)`` pair of arrays is N samples, not two).

    Args:
        data: The factory's result.
        where: Names the data in messages.

    Returns:
        ``(inputs, targets)``, every tensor with the same first dimension N > 0.

    Raises:
        ConfigError: In one line, if the data has an unsupported form, mismatched lengths, or no samples.

    """
    if data is None:
        raise ConfigError(f"{where}: the factory returned None; return the evaluation data")
    # A tuple is one structure; so is a short list of arrays ([X, Y]); any other list is a list of samples.
    is_pair = isinstance(data, tuple) or (
        isinstance(data, list) and 0 < len(data) <= 3 and all(isinstance(v, _ARRAY) for v in data)
    )
    if is_pair or isinstance(data, Mapping | torch.Tensor | np.ndarray):
        inputs, targets = _one(data, where)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, str | bytes):
        n = len(data)
        if n == 0:
            raise ConfigError(f"{where} is empty")
        items = [_one(data[i], f"{where} item {i}") for i in range(n)]
        inputs, targets = _from_items(items, where)
    else:
        raise ConfigError(
            f"{where}: the factory returned {type(data).__name__}; expected (inputs, targets) tensors, a dict of "
            "tensors or a map-style Dataset"
        )
    tensors = _tensors(inputs)
    n = int(tensors[0].shape[0]) if tensors[0].dim() else 0
    for t in tensors:
        if t.dim() == 0 or int(t.shape[0]) != n:
            raise ConfigError(
                f"{where}: inputs of different lengths ({', '.join(str(tuple(v.shape)) for v in tensors)})"
            )
    if targets is not None and (targets.dim() == 0 or targets.shape[0] != n):
        raise ConfigError(f"{where}: {n} inputs but {targets.shape[0] if targets.dim() else 'scalar'} targets")
    if n == 0:
        raise ConfigError(f"{where} is empty")
    return inputs, targets


def as_tensors(data: object, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise a data factory's result to ``(inputs, targets)`` tensors in index order (training data).

    Args:
        data: Anything :func:`as_batch` accepts whose inputs are one tensor and which has targets.
        where: Names the data in messages.

    Returns:
        ``(inputs, targets)``.

    Raises:
        ConfigError: If the data has another form, mismatched lengths, or no samples.

    """
    inputs, targets = as_batch(data, where)
    if not isinstance(inputs, torch.Tensor) or targets is None:
        raise ConfigError(f"{where}: expected (inputs, targets) tensors")
    return inputs, targets


def make_chunks(
    name: str,
    data: object,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    loss: LossFn | None = None,
) -> EvalSet:
    """Turn a data factory's result into a chunked :class:`EvalSet` on ``device``.

    Args:
        name: Set name, for messages.
        data: Anything :func:`as_batch` accepts.
        batch_size: Chunk size; the remainder forms a last, smaller chunk (never dropped).
        device: Where the chunks live: the whole set is resident on the device when it takes at most
            :data:`DEVICE_RESIDENT_FRACTION` of the free device memory; otherwise it stays in pinned host memory
            and each chunk is copied when evaluated.
        dtype: Floating dtype for floating-point inputs (and targets).
        loss: The loss, when it derives missing targets from the inputs (``causal_lm``).

    Returns:
        The evaluation set.

    Raises:
        ConfigError: If the data has an unsupported form, mismatched lengths, or no samples.

    """
    inputs, targets = as_batch(data, f"evaluation set {name!r}")
    if targets is None and isinstance(loss, BuiltinLoss):
        targets = loss.targets_from_inputs(inputs)
    n = batch_len(inputs)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    inputs = _map(inputs, cast)
    targets = None if targets is None else cast(targets)
    nbytes = sum(t.nbytes for t in _tensors(inputs)) + (0 if targets is None else targets.nbytes)
    if device.type == "cuda" and not _fits_on_device(nbytes, device):
        # Too large to keep resident: pinned host memory, each chunk copied asynchronously when evaluated.
        move: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.pin_memory()  # noqa: E731
    else:
        move = lambda t: t.to(device)  # noqa: E731
    inputs = _map(inputs, move)
    targets = None if targets is None else move(targets)

    chunks = tuple(
        (
            _map(inputs, functools.partial(_rows, start=i, size=batch_size)),
            None if targets is None else _rows(targets, i, batch_size),
        )
        for i in range(0, n, batch_size)
    )
    return EvalSet(name, chunks, n)


#: Share of the free device memory an evaluation set may take and still be kept resident on the device; the
#: rest is left for activations (one chunk's forward and backward) and the point vectors.
DEVICE_RESIDENT_FRACTION = 0.5


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_RESIDENT_FRACTION * free


def _differentiable_eval_bn(self: torch.nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    # Eval-mode BatchNorm written out, because native batch_norm refuses gradients for running stats.
    shape = [1, -1] + [1] * (x.dim() - 2)
    assert self.running_mean is not None and self.running_var is not None
    y = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y


def prepare_model(model: torch.nn.Module, bn_mode: str) -> torch.nn.Module:
    """Put a model in evaluation form for LCA: dropout off, BatchNorm as ``bn_mode`` says.

    ``"batch"``: BatchNorm uses each evaluation chunk's statistics (the paper's choice; the loss then
    depends on the chunk size, which is recorded). ``"running"``: the checkpoint's running statistics, through
    a differentiable eval-mode forward so their change along the segment can be allocated.

    Args:
        model: A freshly built model (its own weights are never used).
        bn_mode: ``"batch"`` or ``"running"``.

    Returns:
        The same module, modified in place.

    """
    model.eval()
    for mod in model.modules():
        if isinstance(mod, _BN_TYPES):
            if bn_mode == "batch":
                mod.train()  # batch statistics; running buffers are given as throwaway copies
            elif mod.track_running_stats:
                mod.forward = types.MethodType(_differentiable_eval_bn, mod)  # type: ignore[method-assign]
    return model


def interpolated_buffer_names(model: torch.nn.Module, bn_mode: str) -> list[str]:
    """Buffers that move along the segment with the parameters (floating BN statistics in running mode).

    Args:
        model: The model.
        bn_mode: ``"batch"`` or ``"running"``.

    Returns:
        Buffer names in ``named_buffers()`` order; empty in batch mode. Integer buffers are never included.

    """
    if bn_mode != "running":
        return []
    return [n for n, b in model.named_buffers() if b.is_floating_point()]


class Objective:
    """``v -> (L(v), ∇L(v))`` over one evaluation set, accumulated in float64.

    Args:
        model: Model prepared with :func:`prepare_model` (on ``device``).
        vlayout: Layout of the point vector ``v`` (parameters, then interpolated buffers).
        evalset: The chunked evaluation set.
        loss_fn: Mean loss ``(outputs, targets) -> scalar``.
        dtype: dtype the network runs in.
        forward: Optional replacement for ``functional_call``, ``(tensors, args, kwargs) -> outputs`` (for
            ``torch.compile``).

    """

    def __init__(
        self,
        model: torch.nn.Module,
        vlayout: Layout,
        evalset: EvalSet,
        loss_fn: LossFn,
        dtype: torch.dtype = torch.float32,
        forward: Callable[[Mapping[str, torch.Tensor], tuple[Any, ...], dict[str, Any]], Any] | None = None,
    ) -> None:
        self.model = model
        self.vlayout = vlayout
        self.evalset = evalset
        self.loss_fn = loss_fn
        self.dtype = dtype
        self._custom_forward = forward
        # functional_call swaps every tensor into the module and back on each call (about 0.5 ms of Python for a
        # small MLP, 7% of an MNIST-FC gradient when paid per chunk): pay it once per point instead, by
        # running the whole chunk loop inside one functional_call of a module that holds the model.
        self._runner = _ChunkLoop(model)
        self._mutable = [
            f"{name}.{b}" if name else b
            for name, mod in model.named_modules()
            if isinstance(mod, _BN_TYPES) and mod.training
            for b in ("running_mean", "running_var", "num_batches_tracked")
        ]
        # Chunk weights n_c / N as exact float64 scalars: the mean over all samples (over all scored tokens for
        # causal_lm), never a mean of means.
        units_fn = getattr(loss_fn, "units", None)
        units = [units_fn(x, y) if units_fn is not None else batch_len(x) for x, y in evalset.chunks]
        total = sum(units)
        if total <= 0:
            raise ConfigError(f"evaluation set {evalset.name!r}: no target is scored (every label is {IGNORE_INDEX})")
        self._weights = [u / total for u in units]
        self._model_labels = bool(getattr(loss_fn, "model_labels", False))
        self._weights_on: dict[torch.device, torch.Tensor] = {}
        #: The dtype of the chunk losses (the loss's own: float64 for the built-in ones, often float32 for a model's
        #: ``loss`` or a custom loss), as the last evaluation returned them; see :attr:`loss_rounding`.
        self.loss_dtype = torch.float64

    def head(self, chunks: int = 1) -> Objective:
        """The same objective over the first ``chunks`` evaluation chunks only (a cheap, representative probe).

        Args:
            chunks: How many leading chunks to keep (at least 1).

        Returns:
            A new objective sharing the model, layout, loss and forward.

        """
        kept = self.evalset.chunks[: max(1, chunks)]
        subset = EvalSet(self.evalset.name, kept, sum(batch_len(x) for x, _ in kept))
        return Objective(self.model, self.vlayout, subset, self.loss_fn, self.dtype, self._custom_forward)

    def _state(self, flat: torch.Tensor, fixed: Mapping[str, torch.Tensor], leaves: bool) -> dict[str, torch.Tensor]:
        # Floating buffers follow the network's dtype (a float32 checkpoint in a float64 network, or back);
        # ``to`` copies when it casts, and train-mode BatchNorm writes into its running buffers, so those get a
        # copy either way: the caller's tensors are never mutated.
        tensors = {
            k: t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t for k, t in fixed.items()
        }
        for name in self._mutable:
            if name in tensors and tensors[name] is fixed[name]:
                tensors[name] = tensors[name].clone()
        views = self.vlayout.unflatten(flat)
        if leaves:
            # One autograd leaf per tensor (views of ``flat``, no copy). Differentiating with respect to views
            # of one flat leaf makes autograd build and sum a zero-filled (D,) gradient per tensor, per chunk.
            views = {k: t.detach().requires_grad_(True) for k, t in views.items()}
        tensors.update(views)
        return tensors

    def _each_chunk(
        self,
        tensors: Mapping[str, torch.Tensor],
        fn: Callable[[torch.Tensor, torch.Tensor, float], None],
        device: torch.device,
    ) -> None:
        """Call ``fn(outputs, targets, weight)`` for every chunk in order, the model running on ``tensors``."""
        chunks = zip(self.evalset.chunks, self._weights, strict=True)
        if self._custom_forward is not None:
            for (x, y), w in chunks:
                x, y = _to(x, device), _to(y, device)
                fn(self._custom_forward(tensors, *self.call_args(x, y)), y, w)
            return

        def loop(module: torch.nn.Module) -> None:
            for (x, y), w in chunks:
                # No-ops when the set is resident on the device (see make_chunks).
                x, y = _to(x, device), _to(y, device)
                fn(self.call(module, x, y), y, w)

        functional_call(self._runner, {_ChunkLoop.PREFIX + k: t for k, t in tensors.items()}, (loop,))

    def call_args(self, x: Inputs, y: Targets) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The model's ``(args, kwargs)`` for one chunk: one tensor, several (a tuple), or keywords (a dict).

        With ``model_loss`` the targets go to the model as ``labels=``, so that it computes its own loss.
        """
        kwargs: dict[str, Any] = {"labels": y} if self._model_labels and y is not None else {}
        if isinstance(x, Mapping):
            return (), {**x, **kwargs}
        if isinstance(x, tuple):
            return x, kwargs
        return (x,), kwargs

    def call(self, module: Callable[..., Any], x: Inputs, y: Targets) -> Any:
        """Run ``module`` on one chunk (see :meth:`call_args`)."""
        args, kwargs = self.call_args(x, y)
        return module(*args, **kwargs)

    def check(self, v: torch.Tensor, fixed: Mapping[str, torch.Tensor], where: str) -> None:
        """Pre-flight: one forward and backward on the first chunk, and the targets against the outputs.

        Run once before any pair is computed, so that data or a loss that does not fit the model fails in one
        line (a :class:`~lca_cli.errors.ConfigError` naming the set and what did not fit) instead of part-way
        through, or silently.

        Args:
            v: Point vector at the first checkpoint.
            fixed: Its remaining state_dict entries.
            where: The checkpoint, for messages.

        Raises:
            ConfigError: If the model, the data and the loss do not fit together.

        """
        name = self.evalset.name
        head = f"evaluation set {name!r} does not fit the model"
        flat = v.detach().to(self.dtype).clone()
        tensors = self._state(flat, fixed, leaves=True)
        leaves = [tensors[n] for n in self.vlayout.names]
        x, y = self.evalset.chunks[0]
        x, y = _to(x, flat.device), _to(y, flat.device)
        try:
            if self._custom_forward is not None:
                out = self._custom_forward(tensors, *self.call_args(x, y))
            else:
                prefixed = {_ChunkLoop.PREFIX + k: t for k, t in tensors.items()}
                out = functional_call(self._runner, prefixed, (lambda m: self.call(m, x, y),))
        except ConfigError:
            raise
        except Exception as exc:  # the user's model can fail in any way on data of the wrong form
            raise ConfigError(f"{head}: the forward pass at {where} failed: {one_line(exc)}") from exc
        builtin = self.loss_fn if isinstance(self.loss_fn, BuiltinLoss) else None
        if builtin is not None and not builtin.model_labels:
            _check_targets(builtin, model_outputs(out), self.evalset, head)
        try:
            loss = self.loss_fn(out, y)
        except ConfigError as exc:
            raise ConfigError(f"{head}: {exc}") from exc
        except Exception as exc:  # a loss fails in any way on outputs or targets of the wrong form
            raise ConfigError(f"{head}: the loss failed on the model's outputs: {one_line(exc)}") from exc
        if not isinstance(loss, torch.Tensor):
            raise ConfigError(f"{head}: the loss returned a {type(loss).__name__}, not a tensor")
        if loss.numel() != 1:
            raise ConfigError(
                f"{head}: the loss returned shape {tuple(loss.shape)}; it must return the mean (a scalar)"
            )
        if not loss.is_floating_point():
            raise ConfigError(f"{head}: the loss returned a {loss.dtype} tensor; it must be floating point")
        self.loss_dtype = loss.dtype
        if not loss.requires_grad:
            raise ConfigError(
                f"{head}: the loss does not depend on the parameters (no gradient); does it detach or use .item()?"
            )
        try:
            torch.autograd.grad(loss.reshape(()), leaves, allow_unused=True)
        except Exception as exc:  # autograd errors of a custom loss or model
            raise ConfigError(f"{head}: the backward pass failed: {one_line(exc)}") from exc

    def value_and_grad(self, v: torch.Tensor, fixed: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at one point.

        Args:
            v: Point vector, shape ``(P + B,)``, any floating dtype, on the model's device.
            fixed: Remaining state_dict entries (buffers not in ``v``), on the device; never mutated.

        Returns:
            ``(loss, grad)``: a float64 scalar tensor and a float64 ``(P + B,)`` tensor, on the device
            (no host synchronisation happens here).

        """
        flat = v.detach().to(self.dtype)
        if flat is v:
            flat = flat.clone()  # never hand out views of the caller's vector
        tensors = self._state(flat, fixed, leaves=True)
        leaves = [tensors[name] for name in self.vlayout.names]
        grad = torch.zeros(flat.shape, dtype=torch.float64, device=flat.device)
        grad_views = list(self.vlayout.unflatten(grad).values())  # float64 views, one per leaf
        chunk_losses: list[torch.Tensor] = []

        def accumulate(out: torch.Tensor, y: torch.Tensor, w: float) -> None:
            chunk_loss = self.loss_fn(out, y)
            gs = torch.autograd.grad(chunk_loss, leaves, materialize_grads=True)
            # Weight in float64 after the cast (the add promotes, exactly like adding g.double()): scaling in
            # float32 would round each chunk's contribution. One fused multi-tensor add, no (D,) temporaries.
            torch._foreach_add_(grad_views, gs, alpha=w)
            # The loss is weighted and summed once per point below: three scalar ops per chunk here measured
            # ~2% of an MNIST-FC gradient on CPU at 2 threads (nothing measurable at 1 thread).
            chunk_losses.append(chunk_loss.detach().reshape(()))  # a (1,)-shaped custom loss must not broadcast

        self._each_chunk(tensors, accumulate, flat.device)
        self.loss_dtype = chunk_losses[0].dtype
        loss = (torch.stack(chunk_losses).double() * self._weight_tensor(flat.device)).sum()
        return loss, grad

    @property
    def loss_rounding(self) -> float:
        """Relative rounding bound of the loss values (:func:`lca_cli.core.integrate.loss_rounding_of`).

        Of the coarser of the network's dtype and the loss's: a float32 network's outputs carry its rounding into
        the loss however precisely the loss is reduced.
        """
        return max(loss_rounding_of(self.dtype), loss_rounding_of(self.loss_dtype))

    def _weight_tensor(self, device: torch.device) -> torch.Tensor:
        """The chunk weights ``n_c / N`` as a float64 ``(C,)`` tensor on ``device`` (cached)."""
        cached = self._weights_on.get(device)
        if cached is None:
            cached = self._weights_on[device] = torch.tensor(self._weights, dtype=torch.float64, device=device)
        return cached

    def value(self, v: torch.Tensor, fixed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Loss only (no gradient), as a float64 scalar tensor on the device.

        Args:
            v: Point vector ``(P + B,)``.
            fixed: Remaining state_dict entries.

        Returns:
            The loss.

        """
        flat = v.detach().to(self.dtype)
        tensors = self._state(flat, fixed, leaves=False)
        loss = torch.zeros((), dtype=torch.float64, device=flat.device)

        def accumulate(out: torch.Tensor, y: torch.Tensor, w: float) -> None:
            loss.add_(self.loss_fn(out, y).double() * w)

        with torch.no_grad():
            self._each_chunk(tensors, accumulate, flat.device)
        return loss


def _to(value: Any, device: torch.device) -> Any:
    """Move a chunk's inputs or targets to ``device`` (no-ops when already there)."""
    if value is None:
        return None
    return _map(value, lambda t: t.to(device, non_blocking=True))


def one_line(exc: BaseException) -> str:
    """An exception as one line for a user: its type and up to 300 characters of its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _check_targets(loss: BuiltinLoss, out: Any, evalset: EvalSet, head: str) -> None:
    """Targets against the model's outputs, for the built-in losses (every chunk's targets, on the host)."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ConfigError(
            f"{head}: the model returned {type(out).__name__}; the built-in {loss.name} loss needs a floating tensor "
            "(or a ModelOutput/dict with 'logits', or a tuple whose first element is one)"
        )
    targets = [y for _, y in evalset.chunks]
    if any(y is None for y in targets):
        raise ConfigError(
            f"{head}: the {loss.name} loss needs targets; return (inputs, targets), or a dict with 'labels'"
        )
    y0 = targets[0]
    assert y0 is not None
    if not loss.classes:
        if y0[0].numel() != out[0].numel():
            raise ConfigError(
                f"{head}: targets of shape {tuple(y0.shape)[1:]} per sample do not match outputs of shape "
                f"{tuple(out.shape)[1:]} per sample ({loss.name})"
            )
        return
    if y0.is_floating_point():
        if loss.name == "cross_entropy" and y0.shape == out.shape:
            return  # class probabilities
        raise ConfigError(
            f"{head}: {loss.name} needs integer class labels, got {str(y0.dtype).removeprefix('torch.')} targets; "
            "convert them with .long() (or give class probabilities of the outputs' shape)"
        )
    n_classes = int(out.shape[-1] if loss.name == "causal_lm" else (out.shape[1] if out.dim() > 1 else 0))
    for y in targets:
        assert y is not None
        valid = y[y != IGNORE_INDEX]
        if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= n_classes):
            bad = int(valid.max()) if int(valid.max()) >= n_classes else int(valid.min())
            raise ConfigError(
                f"{head}: label {bad} is out of range for the model's {n_classes} classes (outputs "
                f"{tuple(out.shape)[1:]} per sample)"
            )


class _ChunkLoop(torch.nn.Module):
    """Holds the model as a submodule; ``forward(fn)`` is ``fn(model)``.

    ``functional_call(_ChunkLoop(model), tensors, (fn,))`` runs a whole chunk loop with the model's tensors
    swapped in once.
    """

    PREFIX = "model."

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[torch.nn.Module], Any]) -> Any:
        """Run ``fn`` on the held model."""
        return fn(self.model)


def _flatten_into(out: torch.Tensor, state: Mapping[str, torch.Tensor], vlayout: Layout) -> None:
    """Copy (casting exactly) the layout's tensors into the float64 CPU vector ``out``, without torch kernels.

    This runs in the checkpoint reader's thread. A torch copy there of a tensor above the parallel grain size
    starts a second OpenMP team in that thread; on a 2-core machine its threads spin against the compute
    threads (measured on MNIST-FC: lca compute 1.44x the floor with it, 1.12x with the read done inline).
    numpy casts single-threaded; dtypes numpy lacks (bfloat16) fall back to torch.
    """
    flat = out.numpy()
    for p in vlayout.params:
        t = state[p.name].detach().reshape(-1)
        try:
            flat[p.offset : p.stop] = t.numpy()
        except TypeError:  # no numpy dtype (bfloat16)
            out[p.offset : p.stop].copy_(t)


def split_state(
    state: Mapping[str, torch.Tensor], vlayout: Layout, device: torch.device
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split a checkpoint into the float64 point vector and the fixed remainder.

    Args:
        state: The checkpoint's ``name -> tensor`` (CPU).
        vlayout: Layout of the point vector.
        device: Target device.

    Returns:
        ``(v, fixed)``: ``v`` float64 ``(P + B,)`` (exact: checkpoints hold at most float64), ``fixed``
        every other entry, moved to ``device``.

    """
    names = set(vlayout.names)
    # On CUDA the vector is flattened straight into pinned memory, so that the copy to the device is truly
    # asynchronous (from pageable memory it is not); the caching host allocator keeps the buffer alive until the
    # copy is done.
    host = torch.empty(vlayout.size, dtype=torch.float64, pin_memory=device.type == "cuda")
    _flatten_into(host, state, vlayout)
    v = host.to(device, non_blocking=True)
    fixed = {k: t.to(device, non_blocking=True) for k, t in state.items() if k not in names}
    return v, fixed
