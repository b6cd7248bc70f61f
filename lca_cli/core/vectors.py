"""The flat vector as torch tensors: flattening, checkpoints as point vectors, rows reduced to columns.

Named tensors are flattened by a layout and back, a checkpoint is split into the point vector and the fixed
rest, and an LCA row over every parameter is reduced to a store's columns.

:mod:`lca_cli.core.layout` and :mod:`lca_cli.core.columns` describe the vector and the columns with numbers only,
so that reading a store never imports torch; everything here takes tensors, and only computing imports it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lca_cli.core.columns import OTHER, Columns
from lca_cli.core.layout import Layout

__all__ = ["ColumnReducer", "flatten", "split_state", "unflatten"]


def flatten(layout: Layout, tensors: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Concatenate named tensors into one flat vector in layout order.

    Args:
        layout: The layout (names, shapes and offsets).
        tensors: ``name -> tensor`` with at least every layout name, of matching shapes.
        dtype: dtype of the result (default float64).

    Returns:
        Flat vector of shape ``(P,)`` on the tensors' device.

    """
    dtype = torch.float64 if dtype is None else dtype
    return torch.cat([tensors[p.name].reshape(-1).to(dtype) for p in layout.params])


def unflatten(layout: Layout, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views of a flat ``(P,)`` vector as named tensors (no copy).

    Args:
        layout: The layout (names, shapes and offsets).
        flat: A vector of length ``layout.size``.

    Returns:
        ``name -> view`` with the layout's shapes.

    """
    return {p.name: flat[p.offset : p.stop].view(p.shape) for p in layout.params}


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


class ColumnReducer:
    """Turns a pair's float64 LCA over every parameter into the store's columns, on the compute device.

    Sums run in a fixed order over contiguous slices (no atomics), so a row's columns are the same bits
    whichever process or device order computed them.

    Args:
        columns: The column map.
        layout: The parameter layout.

    """

    def __init__(self, columns: Columns, layout: Layout) -> None:
        self.columns = columns
        self.layout = layout
        self.size = columns.size

    def apply(self, lca_p: torch.Tensor, tensor_sums: torch.Tensor) -> torch.Tensor:
        """The row's columns.

        Args:
            lca_p: float64 ``(P,)``: LCA of every parameter.
            tensor_sums: float64 ``(K,)``: its per-tensor sums (already computed for ``tensor_lca``).

        Returns:
            float64 ``(C,)``.

        """
        parts: list[torch.Tensor] = []
        gran = self.columns.granularity
        for g in self.columns.groups:
            if g.name == OTHER or gran == "tensor":
                total = tensor_sums[g.tensors[0]]
                for t in g.tensors[1:]:
                    total = total + tensor_sums[t]
                parts.append(total.reshape(1))
            elif gran == "parameter":
                p = self.layout.params[g.tensors[0]]
                parts.append(lca_p[p.offset : p.stop])
            else:
                acc: torch.Tensor | None = None
                for t in g.tensors:
                    p = self.layout.params[t]
                    units = p.unit_sums(lca_p[p.offset : p.stop])  # (units,): unit i = neuron i
                    acc = units if acc is None else acc + units
                assert acc is not None
                parts.append(acc)
        return torch.cat(parts)
