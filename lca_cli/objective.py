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

import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from lca_cli.errors import ConfigError
from lca_cli.layout import Layout

__all__ = [
    "EvalSet",
    "Objective",
    "builtin_loss",
    "interpolated_buffer_names",
    "make_chunks",
    "prepare_model",
    "split_state",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_BN_TYPES = (torch.nn.modules.batchnorm._BatchNorm,)


def builtin_loss(name: str) -> LossFn:
    """A built-in mean loss ``(outputs, targets) -> scalar``.

    Args:
        name: ``cross_entropy``, ``nll``, ``mse`` or ``bce_with_logits``.

    Returns:
        The loss function (mean over the chunk; the objective reweights chunk means exactly).

    """

    def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y)

    def nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(out, y)

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # (N, 1) outputs against (N,) targets would broadcast to (N, N): align shapes when sizes agree.
        return F.mse_loss(out, y.reshape(out.shape).to(out.dtype) if y.numel() == out.numel() else y)

    def bce_with_logits(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = y.reshape(out.shape) if y.numel() == out.numel() else y
        return F.binary_cross_entropy_with_logits(out, target.to(out.dtype))

    table: dict[str, LossFn] = {
        "cross_entropy": cross_entropy,
        "nll": nll,
        "mse": mse,
        "bce_with_logits": bce_with_logits,
    }
    if name not in table:
        raise ConfigError(f"unknown loss {name!r} (known: {', '.join(table)})")
    return table[name]


@dataclass(frozen=True)
class EvalSet:
    """A fixed evaluation set split into chunks, in order.

    Attributes:
        name: Set name (``"train"``, ``"val"``, ...).
        chunks: ``[(inputs, targets)]`` in fixed order; the last chunk may be smaller.
        n_samples: Total number of samples N.

    """

    name: str
    chunks: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    n_samples: int

    @property
    def chunk_sizes(self) -> list[int]:
        """Samples per chunk."""
        return [int(x.shape[0]) for x, _ in self.chunks]


def make_chunks(name: str, data: object, batch_size: int, device: torch.device, dtype: torch.dtype) -> EvalSet:
    """Turn a data factory's result into a chunked :class:`EvalSet` on ``device``.

    Args:
        name: Set name, for messages.
        data: ``(inputs, targets)`` tensors with equal first dimension, or a map-style dataset of
            ``(input, target)`` items (stacked in index order).
        batch_size: Chunk size; the remainder forms a last, smaller chunk (never dropped).
        device: Where the chunks live (the whole set is resident; see the README for sizes).
        dtype: Floating dtype for floating-point inputs (and targets).

    Returns:
        The evaluation set.

    Raises:
        ConfigError: If the data has an unsupported form, mismatched lengths, or no samples.

    """
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise ConfigError(f"evaluation set {name!r} is empty")
        inputs = torch.stack([torch.as_tensor(it[0]) for it in items])
        targets = torch.stack([torch.as_tensor(it[1]) for it in items])
    else:
        raise ConfigError(
            f"data factory for set {name!r} returned {type(data).__name__}; "
            "expected (inputs, targets) tensors or a map-style Dataset"
        )
    if inputs.shape[0] != targets.shape[0]:
        raise ConfigError(f"evaluation set {name!r}: {inputs.shape[0]} inputs but {targets.shape[0]} targets")
    n = int(inputs.shape[0])
    if n == 0:
        raise ConfigError(f"evaluation set {name!r} is empty")
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    if targets.is_floating_point():
        targets = targets.to(dtype)
    inputs, targets = inputs.to(device), targets.to(device)
    chunks = tuple((inputs[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, n, batch_size))
    return EvalSet(name, chunks, n)


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
        forward: Optional replacement for ``functional_call`` (for ``torch.compile``).

    """

    def __init__(
        self,
        model: torch.nn.Module,
        vlayout: Layout,
        evalset: EvalSet,
        loss_fn: LossFn,
        dtype: torch.dtype = torch.float32,
        forward: Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.vlayout = vlayout
        self.evalset = evalset
        self.loss_fn = loss_fn
        self.dtype = dtype
        self._forward = forward or (lambda tensors, x: functional_call(model, dict(tensors), (x,)))
        self._mutable = [
            f"{name}.{b}" if name else b
            for name, mod in model.named_modules()
            if isinstance(mod, _BN_TYPES) and mod.training
            for b in ("running_mean", "running_var", "num_batches_tracked")
        ]
        # Chunk weights n_c / N as exact float64 scalars: the mean over all samples, never a mean of means.
        self._weights = [x.shape[0] / evalset.n_samples for x, _ in evalset.chunks]

    def value_and_grad(self, v: torch.Tensor, fixed: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at one point.

        Args:
            v: Point vector, shape ``(P + B,)``, any floating dtype, on the model's device.
            fixed: Remaining state_dict entries (buffers not in ``v``), on the device; never mutated.

        Returns:
            ``(loss, grad)``: a float64 scalar tensor and a float64 ``(P + B,)`` tensor, on the device
            (no host synchronisation happens here).

        """
        flat = v.detach().to(self.dtype).clone().requires_grad_(True)
        tensors: dict[str, torch.Tensor] = dict(fixed)
        # Train-mode BatchNorm writes into its running buffers: give it copies, never the caller's.
        for name in self._mutable:
            if name in tensors:
                tensors[name] = tensors[name].clone()
        tensors.update(self.vlayout.unflatten(flat))
        loss = torch.zeros((), dtype=torch.float64, device=flat.device)
        grad = torch.zeros(flat.shape, dtype=torch.float64, device=flat.device)
        for (x, y), w in zip(self.evalset.chunks, self._weights, strict=True):
            out = self._forward(tensors, x)
            chunk_loss = self.loss_fn(out, y)
            (g,) = torch.autograd.grad(chunk_loss, flat)
            # Weight in float64 after the cast: scaling in float32 would round each chunk's contribution.
            loss += chunk_loss.detach().double() * w
            grad.add_(g.double(), alpha=w)
        return loss, grad

    def value(self, v: torch.Tensor, fixed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Loss only (no gradient), as a float64 scalar tensor on the device.

        Args:
            v: Point vector ``(P + B,)``.
            fixed: Remaining state_dict entries.

        Returns:
            The loss.

        """
        flat = v.detach().to(self.dtype)
        tensors: dict[str, torch.Tensor] = dict(fixed)
        for name in self._mutable:
            if name in tensors:
                tensors[name] = tensors[name].clone()
        tensors.update(self.vlayout.unflatten(flat))
        loss = torch.zeros((), dtype=torch.float64, device=flat.device)
        with torch.no_grad():
            for (x, y), w in zip(self.evalset.chunks, self._weights, strict=True):
                loss += self.loss_fn(self._forward(tensors, x), y).double() * w
        return loss


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
    v = vlayout.flatten(state, torch.float64).to(device, non_blocking=True)
    fixed = {k: t.to(device, non_blocking=True) for k, t in state.items() if k not in names}
    return v, fixed
