"""A model in LCA's evaluation form: dropout off, BatchNorm on chunk statistics or differentiable running ones.

The objective evaluates the model functionally (its own weights are never used); what is prepared here is the
module's behaviour, and which of its buffers move along a segment with the parameters.
"""

from __future__ import annotations

import types

import torch

from lca_cli.core.layout import Layout

__all__ = ["BN_TYPES", "bind_parameters", "interpolated_buffer_names", "prepare_model"]

#: The BatchNorm modules whose statistics ``bn_mode`` governs.
BN_TYPES = (torch.nn.modules.batchnorm._BatchNorm,)


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
        if isinstance(mod, BN_TYPES):
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


def bind_parameters(model: torch.nn.Module, vlayout: Layout, flat: torch.Tensor) -> None:
    """Make the model's parameters (and interpolated buffers) views of ``flat``, the objectives' point buffer.

    The model's own tensors are never read (every evaluation swaps in the point's views), so their memory is
    otherwise a dead copy of the parameters: 4 bytes per parameter for a float32 network.

    Args:
        model: The prepared model.
        vlayout: Layout of the point vector (parameters, then interpolated buffers).
        flat: ``(P + B,)`` in the model's dtype, on its device.

    """
    spans = {p.name: p for p in vlayout.params}
    for name, param in model.named_parameters():
        if name in spans:
            span = spans[name]
            param.data = flat[span.offset : span.stop].view(span.shape).copy_(param.data)
    for name, buf in list(model.named_buffers()):
        if name in spans:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name) if owner_name else model
            span = spans[name]
            owner._buffers[leaf] = flat[span.offset : span.stop].view(span.shape).copy_(buf)
