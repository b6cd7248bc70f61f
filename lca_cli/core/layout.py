"""Parameter layout: names, shapes and offsets of the flat parameter vector, and its groupings.

LCA rows are stored flat: the model's ``named_parameters()`` flattened row-major and concatenated in that
order. Everything that maps a column back to a tensor, a layer or a neuron lives here, in numbers only; the
code that takes tensors (flattening, unflattening) is in :mod:`lca_cli.core.vectors`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # annotations only: reading a store (`lca summarize`, `lca report`) never imports torch
    import torch

__all__ = ["Layout", "ParamInfo", "layer_name"]


def layer_name(param_name: str) -> str:
    """Layer of a parameter: its name without the last dotted component.

    Args:
        param_name: A ``named_parameters()`` name such as ``"encoder.0.weight"``.

    Returns:
        ``"encoder.0"``; a top-level parameter (no dot) is its own layer.

    """
    head, sep, _ = param_name.rpartition(".")
    return head if sep else param_name


def unit_axes(module: torch.nn.Module) -> dict[str, int]:
    """Parameters whose output units are not along dim 0: ``{name: axis}``.

    ``transformers``' ``Conv1D`` (GPT-2's attention and MLP projections) stores its weight as ``(in, out)``, the
    transpose of ``nn.Linear``'s: its output unit ``i`` is column ``i`` of the weight (and entry ``i`` of the
    bias). Recognised by the class name and its ``nf`` (output features), so ``transformers`` need not be
    imported.

    Args:
        module: The model.

    Returns:
        ``{"transformer.h.0.attn.c_attn.weight": 1, ...}``; empty for models of ``nn.Linear`` and convolutions.

    """
    out: dict[str, int] = {}
    for prefix, m in module.named_modules():
        weight = getattr(m, "weight", None)
        if (
            type(m).__name__ == "Conv1D"
            and weight is not None
            and weight.dim() == 2
            and getattr(m, "nf", None) == weight.shape[1]
        ):
            out[f"{prefix}.weight" if prefix else "weight"] = 1
    return out


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor's place in the flat vector.

    ``axis`` is the dimension along which the tensor's output units (neurons) lie: 0 for ``nn.Linear`` and
    convolution weights, 1 for a weight stored ``(in, out)`` (:func:`unit_axes`).
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    axis: int = 0

    @property
    def numel(self) -> int:
        """Number of scalars in the tensor."""
        return math.prod(self.shape)

    @property
    def units(self) -> int:
        """Number of output units: the size along :attr:`axis` (1 for a scalar)."""
        return self.shape[self.axis] if self.shape else 1

    def unit_sums(self, values: Any, **sum_kw: Any) -> Any:
        """Sum values of this tensor by output unit: ``(..., numel) -> (..., units)``, numpy or torch.

        Args:
            values: The tensor's entries (flattened row-major) last, any leading dimensions first.
            **sum_kw: Passed to ``sum`` (e.g. ``dtype=np.float64`` for numpy).

        Returns:
            Per-unit sums. Along axis 0 each unit is a contiguous block, summed as one.

        """
        lead = tuple(values.shape[:-1])
        if self.axis == 0:
            return values.reshape(*lead, self.units, -1).sum(len(lead) + 1, **sum_kw)
        others = tuple(len(lead) + k for k in range(len(self.shape)) if k != self.axis)
        return values.reshape(*lead, *self.shape).sum(others, **sum_kw)

    def unit_index(self) -> np.ndarray:
        """The output unit of each entry (flattened row-major): int64 ``(numel,)``."""
        if not self.shape:
            return np.zeros(1, dtype=np.int64)
        along = [-1 if k == self.axis else 1 for k in range(len(self.shape))]
        return np.broadcast_to(np.arange(self.units, dtype=np.int64).reshape(along), self.shape).ravel()

    @property
    def stop(self) -> int:
        """One past the tensor's last column in the flat vector."""
        return self.offset + self.numel


@dataclass(frozen=True)
class Layout:
    """The flat parameter vector's layout, in ``named_parameters()`` order."""

    params: tuple[ParamInfo, ...]

    @classmethod
    def from_shapes(cls, shapes: Sequence[tuple[str, Sequence[int]]], axes: Mapping[str, int] | None = None) -> Layout:
        """Build a layout from ``(name, shape)`` pairs in order.

        Args:
            shapes: Parameter names and shapes, in ``named_parameters()`` order.
            axes: The unit axis of the tensors whose units are not along dim 0 (see :func:`unit_axes`).

        Returns:
            The layout with consecutive offsets.

        """
        infos, offset = [], 0
        for name, shape in shapes:
            info = ParamInfo(name, tuple(int(s) for s in shape), offset, (axes or {}).get(name, 0))
            infos.append(info)
            offset = info.stop
        return cls(tuple(infos))

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> Layout:
        """Layout of a module's ``named_parameters()`` (tied parameters appear once, as PyTorch lists them).

        Args:
            module: The model.

        Returns:
            Its layout.

        """
        return cls.from_shapes([(n, tuple(p.shape)) for n, p in module.named_parameters()], unit_axes(module))

    @classmethod
    def from_attrs(cls, params: Sequence[Mapping[str, object]]) -> Layout:
        """Rebuild a layout from a store's ``params`` attribute (``[{name, shape, offset}]``).

        Args:
            params: The stored list.

        Returns:
            The layout.

        """
        infos = []
        for p in params:
            shape: Any = p["shape"]
            offset: Any = p["offset"]
            axis: Any = p.get("axis", 0)  # absent: dim 0 (to_attrs writes it only when it is not 0)
            infos.append(ParamInfo(str(p["name"]), tuple(int(s) for s in shape), int(offset), int(axis)))
        return cls(tuple(infos))

    def to_attrs(self) -> list[dict[str, object]]:
        """The ``params`` attribute written into a store: ``[{name, shape, offset}]``, ``axis`` when not 0."""
        return [
            {"name": p.name, "shape": list(p.shape), "offset": p.offset, **({"axis": p.axis} if p.axis else {})}
            for p in self.params
        ]

    @property
    def size(self) -> int:
        """Total number of scalars P."""
        return self.params[-1].stop if self.params else 0

    @property
    def names(self) -> list[str]:
        """Parameter names in order."""
        return [p.name for p in self.params]

    def layers(self) -> list[tuple[str, list[int]]]:
        """Group tensors into layers, in order of first appearance.

        Returns:
            ``[(layer, [tensor indices])]``.

        """
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(self.params):
            groups.setdefault(layer_name(p.name), []).append(i)
        return list(groups.items())

    def tensor_to_layer(self) -> np.ndarray:
        """Index of each tensor's layer (in :meth:`layers` order), shape ``(n_tensors,)``."""
        out = np.empty(len(self.params), dtype=np.int64)
        for li, (_, idx) in enumerate(self.layers()):
            out[idx] = li
        return out

    def neurons(self) -> list[tuple[str, list[tuple[int, int]]]]:
        """Output units of each layer: index ``i`` along the unit axis of every tensor of the layer.

        The unit axis is dim 0 except for weights stored ``(in, out)`` (:attr:`ParamInfo.axis`). A layer whose
        tensors disagree on their number of units (or hold a scalar) is split per tensor instead.

        Returns:
            ``[(layer_or_tensor_name, [(tensor index, units)])]``: each entry's neurons are ``0..units-1`` and
            neuron ``i`` gathers unit ``i`` of every listed tensor (:meth:`ParamInfo.unit_sums`).

        """
        out: list[tuple[str, list[tuple[int, int]]]] = []
        for layer, idx in self.layers():
            sizes = {self.params[i].units for i in idx}
            if len(sizes) == 1 and all(self.params[i].shape for i in idx):
                n0 = sizes.pop()
                out.append((layer, [(i, n0) for i in idx]))
            else:
                for i in idx:
                    out.append((self.params[i].name, [(i, self.params[i].units)]))
        return out
