"""The flat vector as torch tensors: flattening, checkpoints as point vectors, rows reduced to columns.

Named tensors are flattened by a layout and back, a checkpoint is split into the point vector and the fixed
rest, and an LCA row over every parameter is reduced to a store's columns.

:mod:`lca_cli.core.layout` and :mod:`lca_cli.core.columns` describe the vector and the columns with numbers only,
so that reading a store never imports torch; everything here takes tensors, and only computing imports it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

import numpy as np
import torch

from lca_cli.core.columns import OTHER, Columns
from lca_cli.core.layout import Layout

__all__ = ["BufferPool", "ColumnReducer", "flatten", "point_dtype", "split_state", "sum64", "unflatten"]


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


def sum64(x: torch.Tensor) -> torch.Tensor:
    """``Σ x`` accumulated in float64, as a float64 scalar tensor (no host synchronisation off the CPU).

    On CPU, ``x.sum(dtype=torch.float64)`` first makes a float64 copy of ``x``, in a parallel kernel that stalls
    when another process holds a core: for a 16M-entry float32 row in 1M blocks at 2 threads, 16 ms alone, 29 ms
    beside a busy loop and 250 ms on the loaded machine where it was a quarter of the pair loop at 16M
    parameters; NumPy's reduction, which casts through a small buffer and sums pairwise in float64 on one core,
    took 10-17 ms either way (the 2-core machine of BENCHMARKS.md). On a GPU the kernel casts on the fly. For a
    float64 ``x`` it is ``x.sum()``, bit for bit.

    Args:
        x: A 1-d tensor.

    Returns:
        The sum.

    """
    if x.dtype == torch.float64:
        return x.sum()
    if x.device.type != "cpu":
        return x.sum(dtype=torch.float64)
    return torch.tensor(float(np.add.reduce(x.detach().numpy(), dtype=np.float64)), dtype=torch.float64)


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


def point_dtype(state: Mapping[str, torch.Tensor], vlayout: Layout) -> torch.dtype:
    """The dtype a checkpoint's point vector is held in: float64 when a tensor of the layout is, else float32.

    Both hold every value of a checkpoint's floating tensors exactly (float16 and bfloat16 widen exactly to
    float32), so the pair loop's float64 difference ``v1 - v0`` is exact either way; a float32 checkpoint then
    costs 4 bytes per parameter instead of 8 (the loop holds three or four of them).
    """
    wide = any(state[p.name].dtype == torch.float64 for p in vlayout.params)
    return torch.float64 if wide else torch.float32


def split_state(
    state: Mapping[str, torch.Tensor], vlayout: Layout, device: torch.device, pool: BufferPool | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split a checkpoint into the point vector and the fixed remainder.

    Args:
        state: The checkpoint's ``name -> tensor`` (CPU).
        vlayout: Layout of the point vector.
        device: Target device.
        pool: On CPU, where the point vector's buffer comes from (a reader's pool: a vector the pair loop has let
            go is filled again instead of a fresh one page-faulted in for every checkpoint); a new one when None.

    Returns:
        ``(v, fixed)``: ``v`` ``(P + B,)`` in :func:`point_dtype` (float32 or float64: exact either way),
        ``fixed`` every other entry, moved to ``device``.

    """
    names = set(vlayout.names)
    # On CUDA the vector is flattened straight into pinned memory, so that the copy to the device is truly
    # asynchronous (from pageable memory it is not); the caching host allocator keeps the buffer alive until the
    # copy is done.
    dtype = point_dtype(state, vlayout)
    if pool is not None and device.type == "cpu":
        host = pool.take(vlayout.size, dtype, device)
    else:
        host = torch.empty(vlayout.size, dtype=dtype, pin_memory=device.type == "cuda")
    _flatten_into(host, state, vlayout)
    v = host.to(device, non_blocking=True)
    fixed = {k: t.to(device, non_blocking=True) for k, t in state.items() if k not in names}
    return v, fixed


#: The use count of a storage (tensors, views and autograd nodes sharing it), where this torch has it.
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)


class BufferPool:
    """Parameter-sized work vectors reused across gradients and pairs, instead of allocated for each.

    A fresh ``(D,)`` buffer per gradient costs a page fault per 4 KiB page (large blocks come straight from
    ``mmap`` and go back to the kernel when freed): measured on a 16M-parameter MLP, several times the page
    faults and a large share of the kernel time of a minimal script. :meth:`take` hands out a pooled buffer that
    nothing else uses any more: no Python reference besides the pool's and no view or autograd node sharing its
    storage (CPython reference counts and the storage's use count; both are exact, so a buffer still held by a
    caller, even through a view, is never handed out twice). Contents are undefined; callers overwrite them.

    Args:
        limit_bytes: Pooled buffers kept at most (beyond it, buffers are plain allocations, freed as usual).

    """

    def __init__(self, limit_bytes: int = 1 << 40) -> None:
        self.limit_bytes = limit_bytes
        self._all: list[torch.Tensor] = []

    @staticmethod
    def _free(buf: torch.Tensor) -> bool:
        # Four Python references when free: the pool's list, take's loop variable, this argument and getrefcount's.
        # Storage use count 2: the tensor and the temporary storage object made here; one more per view or saved
        # tensor (tests/core/test_vectors.py holds both numbers to what this CPython and torch do).
        if _USE_COUNT is None:  # a torch without it: never reuse (correct, only slower)
            return False
        return sys.getrefcount(buf) <= 4 and _USE_COUNT(buf.untyped_storage()._cdata) <= 2

    def take(self, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``(n,)`` buffer of ``dtype`` on ``device`` that nothing else holds (contents undefined)."""
        for buf in self._all:
            if buf.numel() == n and buf.dtype == dtype and buf.device == device and self._free(buf):
                return buf
        buf = torch.empty(n, dtype=dtype, device=device)
        if self.nbytes + buf.nbytes <= self.limit_bytes:
            self._all.append(buf)
        return buf

    def like(self, t: torch.Tensor) -> torch.Tensor:
        """A free buffer of ``t``'s length, dtype and device (see :meth:`take`)."""
        return self.take(t.numel(), t.dtype, t.device)

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool (in use or free)."""
        return sum(b.nbytes for b in self._all)

    def clear(self) -> None:
        """Forget every pooled buffer (those still in use stay alive with their users)."""
        self._all.clear()


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
