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

from lca_cli.config import Config, import_factory
from lca_cli.errors import ConfigError
from lca_cli.layout import Layout

__all__ = [
    "EvalSet",
    "Objective",
    "as_tensors",
    "builtin_loss",
    "config_loss",
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


def config_loss(config: Config) -> LossFn:
    """The config's loss: its ``[loss] factory`` if given, else the built-in ``[loss] name``.

    Args:
        config: The config.

    Returns:
        A mean loss ``(outputs, targets) -> scalar``.

    """
    if config.loss_factory:
        fn: LossFn = import_factory(config.loss_factory, config.base_dir)
        return fn
    assert config.loss_name is not None
    return builtin_loss(config.loss_name)


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


def as_tensors(data: object, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise a data factory's result to ``(inputs, targets)`` tensors in index order.

    Args:
        data: ``(inputs, targets)`` tensors with equal first dimension, or a map-style dataset of
            ``(input, target)`` items (stacked in index order).
        where: Names the data in messages.

    Returns:
        ``(inputs, targets)``.

    Raises:
        ConfigError: If the data has an unsupported form, mismatched lengths, or no samples.

    """
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, targets = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise ConfigError(f"{where} is empty")
        inputs = torch.stack([torch.as_tensor(it[0]) for it in items])
        targets = torch.stack([torch.as_tensor(it[1]) for it in items])
    else:
        raise ConfigError(
            f"{where}: the factory returned {type(data).__name__}; expected (inputs, targets) tensors or a "
            "map-style Dataset"
        )
    if inputs.shape[0] != targets.shape[0]:
        raise ConfigError(f"{where}: {inputs.shape[0]} inputs but {targets.shape[0]} targets")
    if inputs.shape[0] == 0:
        raise ConfigError(f"{where} is empty")
    return inputs, targets


def make_chunks(name: str, data: object, batch_size: int, device: torch.device, dtype: torch.dtype) -> EvalSet:
    """Turn a data factory's result into a chunked :class:`EvalSet` on ``device``.

    Args:
        name: Set name, for messages.
        data: ``(inputs, targets)`` tensors with equal first dimension, or a map-style dataset of
            ``(input, target)`` items (stacked in index order).
        batch_size: Chunk size; the remainder forms a last, smaller chunk (never dropped).
        device: Where the chunks live: the whole set is resident on the device when it takes at most
            :data:`DEVICE_RESIDENT_FRACTION` of the free device memory; otherwise it stays in pinned host memory
            and each chunk is copied when evaluated.
        dtype: Floating dtype for floating-point inputs (and targets).

    Returns:
        The evaluation set.

    Raises:
        ConfigError: If the data has an unsupported form, mismatched lengths, or no samples.

    """
    inputs, targets = as_tensors(data, f"evaluation set {name!r}")
    n = int(inputs.shape[0])
    if inputs.is_floating_point():
        inputs = inputs.to(dtype)
    if targets.is_floating_point():
        targets = targets.to(dtype)
    if device.type == "cuda" and not _fits_on_device(inputs.nbytes + targets.nbytes, device):
        # Too large to keep resident: pinned host memory, each chunk copied asynchronously when evaluated.
        inputs, targets = inputs.pin_memory(), targets.pin_memory()
    else:
        inputs, targets = inputs.to(device), targets.to(device)
    chunks = tuple((inputs[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, n, batch_size))
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
        self._custom_forward = forward
        self._forward = forward or (lambda tensors, x: functional_call(model, dict(tensors), (x,)))
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
        # Chunk weights n_c / N as exact float64 scalars: the mean over all samples, never a mean of means.
        self._weights = [x.shape[0] / evalset.n_samples for x, _ in evalset.chunks]
        self._weights_on: dict[torch.device, torch.Tensor] = {}

    def head(self, chunks: int = 1) -> Objective:
        """The same objective over the first ``chunks`` evaluation chunks only (a cheap, representative probe).

        Args:
            chunks: How many leading chunks to keep (at least 1).

        Returns:
            A new objective sharing the model, layout, loss and forward.

        """
        kept = self.evalset.chunks[: max(1, chunks)]
        subset = EvalSet(self.evalset.name, kept, sum(int(x.shape[0]) for x, _ in kept))
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
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                fn(self._custom_forward(tensors, x), y, w)
            return

        def loop(module: torch.nn.Module) -> None:
            for (x, y), w in chunks:
                # No-ops when the set is resident on the device (see make_chunks).
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                fn(module(x), y, w)

        functional_call(self._runner, {_ChunkLoop.PREFIX + k: t for k, t in tensors.items()}, (loop,))

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
        loss = (torch.stack(chunk_losses).double() * self._weight_tensor(flat.device)).sum()
        return loss, grad

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


class _ChunkLoop(torch.nn.Module):
    """Holds the model as a submodule; ``forward(fn)`` is ``fn(model)``.

    ``functional_call(_ChunkLoop(model), tensors, (fn,))`` runs a whole chunk loop with the model's tensors
    swapped in once.
    """

    PREFIX = "model."

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[[torch.nn.Module], None]) -> None:
        """Run ``fn`` on the held model."""
        fn(self.model)


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
