"""Parameter layout: names, shapes and offsets of the flat parameter vector, and its groupings.

LCA rows are stored flat: the model's ``named_parameters()`` flattened row-major and concatenated in that
order. Everything that maps a column back to a tensor, a layer or a neuron lives here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: reading a store (`lca summarize`, `lca report`) never needs it
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


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor's place in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        """Number of scalars in the tensor."""
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        """One past the tensor's last column in the flat vector."""
        return self.offset + self.numel


@dataclass(frozen=True)
class Layout:
    """The flat parameter vector's layout, in ``named_parameters()`` order."""

    params: tuple[ParamInfo, ...]

    @classmethod
    def from_shapes(cls, shapes: Sequence[tuple[str, Sequence[int]]]) -> Layout:
        """Build a layout from ``(name, shape)`` pairs in order.

        Args:
            shapes: Parameter names and shapes, in ``named_parameters()`` order.

        Returns:
            The layout with consecutive offsets.

        """
        infos, offset = [], 0
        for name, shape in shapes:
            info = ParamInfo(name, tuple(int(s) for s in shape), offset)
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
        return cls.from_shapes([(n, tuple(p.shape)) for n, p in module.named_parameters()])

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
            infos.append(ParamInfo(str(p["name"]), tuple(int(s) for s in shape), int(offset)))
        return cls(tuple(infos))

    def to_attrs(self) -> list[dict[str, object]]:
        """The ``params`` attribute written into a store: ``[{name, shape, offset}]``."""
        return [{"name": p.name, "shape": list(p.shape), "offset": p.offset} for p in self.params]

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
        """Output units of each layer: index ``i`` along dim 0 of every tensor of the layer.

        A layer whose tensors disagree on dim 0 (or hold a scalar) is split per tensor instead.

        Returns:
            ``[(layer_or_tensor_name, [(tensor index, dim-0 size)])]``: each entry's neurons are
            ``0..size-1`` and neuron ``i`` gathers row ``i`` of every listed tensor.

        """
        out: list[tuple[str, list[tuple[int, int]]]] = []
        for layer, idx in self.layers():
            sizes = {self.params[i].shape[0] if self.params[i].shape else 1 for i in idx}
            if len(sizes) == 1 and all(self.params[i].shape for i in idx):
                n0 = sizes.pop()
                out.append((layer, [(i, n0) for i in idx]))
            else:
                for i in idx:
                    shape = self.params[i].shape
                    out.append((self.params[i].name, [(i, shape[0] if shape else 1)]))
        return out

    def flatten(self, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
        """Concatenate named tensors into one flat vector in layout order.

        Args:
            tensors: ``name -> tensor`` with at least every layout name, of matching shapes.
            dtype: dtype of the result (default float64).

        Returns:
            Flat vector of shape ``(P,)`` on the tensors' device.

        """
        import torch

        dtype = torch.float64 if dtype is None else dtype
        return torch.cat([tensors[p.name].reshape(-1).to(dtype) for p in self.params])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of a flat ``(P,)`` vector as named tensors (no copy).

        Args:
            flat: A vector of length :attr:`size`.

        Returns:
            ``name -> view`` with the layout's shapes.

        """
        return {p.name: flat[p.offset : p.stop].view(p.shape) for p in self.params}
