"""L(θ) and its gradient over a fixed evaluation set, with the model used functionally.

The objective is the exact mean loss over *all* samples of the set, processed in a fixed order in chunks
of ``batch_size``: chunk means are weighted by ``n_chunk / N`` and accumulated, with the gradient, in
float64 even when the network runs in float32. The model's own parameters and buffers are never touched:
every evaluation goes through :func:`torch.func.functional_call` with tensors the caller owns.

The point being evaluated is one flat vector ``v = [θ (P); b (B)]``: θ the parameters in
``named_parameters()`` order, ``b`` the floating-point BatchNorm running statistics when ``bn_mode`` is
``"running"`` (empty otherwise). Keeping buffers in the same vector lets the integrator treat them like
parameters, so their share of the loss change is allocated (to them) instead of landing in the residual.

Memory per gradient (the budget is in README.md, *What it costs*): the point is written, in the network's dtype,
into one preallocated ``(P + B,)`` buffer (shared by every objective of a model, and the model's own parameters
point into it: :func:`~lca_cli.core.model.bind_parameters`), ``v0 + s Δ`` in place, with a fixed-size float64
scratch block; the gradient is accumulated into a buffer of the accumulation dtype taken from a
:class:`~lca_cli.core.vectors.BufferPool`. Nothing parameter-sized is allocated per gradient besides what
autograd itself returns for each chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.func import functional_call

from lca_cli.core.batch import Inputs, Targets, batch_len, to_device
from lca_cli.core.evalset import EvalSet
from lca_cli.core.integrate import loss_rounding_of
from lca_cli.core.layout import Layout
from lca_cli.core.losses import IGNORE_INDEX, BuiltinLoss, LossFn, check_targets, model_outputs
from lca_cli.core.model import BN_TYPES
from lca_cli.core.vectors import BufferPool, unflatten
from lca_cli.errors import ConfigError, one_line

__all__ = ["SCRATCH", "Objective"]

#: Elements of the float64 scratch block through which ``v0 + s Δ`` is written into a float32 point: the sum is
#: rounded once from float64, as a whole-vector float64 sum and cast would round it, without a ``(D,)`` temporary.
SCRATCH = 1 << 16


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
        pool: Where gradient and scratch buffers come from (shared with the integrator); a new one when None.
        point: The ``(P + B,)`` buffer, of ``dtype`` on the model's device, that points are written into (shared
            by the objectives of one model); made at the first evaluation when None.

    Attributes:
        accumulate: dtype the gradient is accumulated and returned in (float64 unless the run's bound allows
            float32: :mod:`lca_cli.computation.precision`). Losses are always reduced in float64.
        gradients: Gradients over the whole evaluation set this objective computed (every caller: the pair
            loop, the run's survey, the accumulation probe), for what a call reports it cost. The pre-flight
            check (one chunk, :meth:`check`) and :meth:`head`'s objectives (their own counts) are not in it.

    """

    def __init__(
        self,
        model: torch.nn.Module,
        vlayout: Layout,
        evalset: EvalSet,
        loss_fn: LossFn,
        dtype: torch.dtype = torch.float32,
        forward: Callable[[Mapping[str, torch.Tensor], tuple[Any, ...], dict[str, Any]], Any] | None = None,
        pool: BufferPool | None = None,
        point: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.pool = BufferPool() if pool is None else pool
        self.point = point
        self.accumulate = torch.float64
        self.gradients = 0
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
            if isinstance(mod, BN_TYPES) and mod.training
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
        head = Objective(
            self.model, self.vlayout, subset, self.loss_fn, self.dtype, self._custom_forward, self.pool, self.point
        )
        head.accumulate = self.accumulate
        return head

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
        views = unflatten(self.vlayout, flat)
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
                x, y = to_device(x, device), to_device(y, device)
                fn(self._custom_forward(tensors, *self.call_args(x, y)), y, w)
            return

        def loop(module: torch.nn.Module) -> None:
            for (x, y), w in chunks:
                # No-ops when the set is resident on the device (see make_chunks).
                x, y = to_device(x, device), to_device(y, device)
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
        x, y = to_device(x, flat.device), to_device(y, flat.device)
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
            check_targets(builtin, model_outputs(out), [y for _, y in self.evalset.chunks], head)
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

    def _point_buffer(self, device: torch.device) -> torch.Tensor:
        if self.point is None:
            self.point = torch.empty(self.vlayout.size, dtype=self.dtype, device=device)
        return self.point

    def value_and_grad(
        self, v: torch.Tensor, fixed: Mapping[str, torch.Tensor], magnitude: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at one point.

        Args:
            v: Point vector, shape ``(P + B,)``, any floating dtype, on the model's device (copied, cast to the
                network's dtype, into the point buffer; never mutated).
            fixed: Remaining state_dict entries (buffers not in ``v``), on the device; never mutated.
            magnitude: Optional ``(P + B,)`` buffer that receives ``Σ_c |w_c g_c|`` (the chunks' weighted gradients
                in absolute value; the bound of :mod:`lca_cli.computation.precision` measures cancellation with it).

        Returns:
            ``(loss, grad)``: a float64 scalar tensor and a ``(P + B,)`` tensor of :attr:`accumulate`, on the
            device (no host synchronisation happens here). The gradient's buffer comes from the pool: it is the
            caller's until the caller drops it.

        """
        point = self._point_buffer(v.device)
        if v is not point:
            point.copy_(v.detach())  # exact cast to the network's dtype, as ``v.to(dtype)`` rounds
        return self._value_and_grad(point, fixed, magnitude)

    def value_and_grad_at(
        self, v0: torch.Tensor, delta: torch.Tensor, s: float, fixed: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at ``v0 + s Δ``, the point written in place (see :meth:`value_and_grad`).

        The sum is formed in the wider of ``delta``'s dtype and the network's and rounded once to the network's
        dtype: for a float64 ``Δ`` and a float32 network, block by block through a :data:`SCRATCH`-element
        float64 buffer, with the bits of ``(v0.double() + s * delta).float()``.

        Args:
            v0: Start point ``(P + B,)``, any floating dtype.
            delta: ``v1 - v0``, ``(P + B,)``.
            s: Position on the segment.
            fixed: Remaining state_dict entries.

        Returns:
            ``(loss, grad)`` as :meth:`value_and_grad` returns them.

        """
        point = self._point_buffer(v0.device)
        if delta.dtype == point.dtype == v0.dtype:  # one pass, the bits of ``copy_(v0).add_(delta, alpha=s)``
            torch.add(v0, delta, alpha=s, out=point)
        elif delta.dtype == point.dtype:
            point.copy_(v0).add_(delta, alpha=s)
        elif point.device.type != "cpu":
            torch.add(v0, delta, alpha=s, out=point)  # GPU kernels cast on the fly: no temporary, one launch
        else:  # on CPU a mixed-dtype op would allocate (D,) float64 temporaries
            n = point.numel()
            scratch = self.pool.take(min(n, SCRATCH), delta.dtype, delta.device)  # (S,) float64
            for a in range(0, n, SCRATCH):
                b = min(n, a + SCRATCH)
                point[a:b].copy_(scratch[: b - a].copy_(v0[a:b]).add_(delta[a:b], alpha=s))
            del scratch
        return self._value_and_grad(point, fixed, None)

    def _value_and_grad(
        self, point: torch.Tensor, fixed: Mapping[str, torch.Tensor], magnitude: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.gradients += 1
        tensors = self._state(point, fixed, leaves=True)
        leaves = [tensors[name] for name in self.vlayout.names]
        grad = self.pool.take(point.numel(), self.accumulate, point.device).zero_()
        grad_views = list(unflatten(self.vlayout, grad).values())  # views of the accumulator, one per leaf
        mag_views = None if magnitude is None else list(unflatten(self.vlayout, magnitude.zero_()).values())
        chunk_losses: list[torch.Tensor] = []

        def accumulate(out: torch.Tensor, y: torch.Tensor, w: float) -> None:
            chunk_loss = self.loss_fn(out, y)
            gs = torch.autograd.grad(chunk_loss, leaves, materialize_grads=True)
            # Weight in the accumulator's dtype after the cast (for float64 the add promotes, exactly like adding
            # g.double()): scaling in float32 first would round each chunk's contribution once more. One fused
            # multi-tensor add, no (D,) temporaries.
            torch._foreach_add_(grad_views, gs, alpha=w)
            if mag_views is not None:
                torch._foreach_add_(mag_views, torch._foreach_abs(gs), alpha=w)
            # The loss is weighted and summed once per point below: three scalar ops per chunk here measured
            # ~2% of an MNIST-FC gradient on CPU at 2 threads (nothing measurable at 1 thread).
            chunk_losses.append(chunk_loss.detach().reshape(()))  # a (1,)-shaped custom loss must not broadcast

        self._each_chunk(tensors, accumulate, point.device)
        self.loss_dtype = chunk_losses[0].dtype
        loss = (torch.stack(chunk_losses).double() * self._weight_tensor(point.device)).sum()
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
