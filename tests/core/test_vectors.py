"""The flat vector as tensors: flatten/unflatten and checkpoints split into point vectors.

Column reduction (:class:`~lca_cli.core.vectors.ColumnReducer`) is tested with the column maps, in test_columns.py.
"""

from __future__ import annotations

import math

import reference
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lca_cli.core.layout import Layout
from lca_cli.core.vectors import BufferPool, flatten, split_state, unflatten

CPU = torch.device("cpu")

shape_st = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None)
@given(st.lists(shape_st, min_size=1, max_size=6), st.integers(0, 2**31 - 1))
def test_flatten_unflatten_round_trip(shapes: list[tuple[int, ...]], seed: int) -> None:
    named = [(f"m{i}.t", s) for i, s in enumerate(shapes)]
    layout = Layout.from_shapes(named)
    g = torch.Generator().manual_seed(seed)
    tensors = {n: torch.randn(s, generator=g, dtype=torch.float32) for n, s in named}
    flat = flatten(layout, tensors)
    assert flat.dtype == torch.float64
    assert flat.shape == (layout.size,) and layout.size == sum(math.prod(s) for s in shapes)
    # Flat order is row-major per tensor, concatenated at the offsets.
    expected = torch.cat([tensors[n].reshape(-1).double() for n, _ in named])
    assert torch.equal(flat, expected)
    back = unflatten(layout, flat)
    assert list(back) == [n for n, _ in named]
    for n, s in named:
        assert back[n].shape == s
        assert torch.equal(back[n], tensors[n].double())
    # unflatten returns views: writing into them writes the flat vector.
    first = named[0][0]
    back[first].fill_(7.0)
    assert torch.all(flat[: layout.params[0].stop] == 7.0)


def test_flatten_ignores_extra_names_and_casts() -> None:
    layout = Layout.from_shapes([("w", (2, 2))])
    flat = flatten(layout, {"w": torch.ones(2, 2), "running_mean": torch.zeros(3)}, dtype=torch.float32)
    assert flat.dtype == torch.float32 and flat.tolist() == [1.0] * 4


def test_split_state() -> None:
    model = reference.bn_mlp(seed=3)
    model.train()
    with torch.no_grad():  # running statistics that are not the defaults
        model(reference.blobs(n=50)[0][:20])
    state = model.state_dict()
    layout = Layout.from_module(model)
    v, fixed = split_state(state, layout, CPU)
    # A float32 checkpoint stays float32 (exact, half the bytes of float64); a float64 one stays float64.
    assert v.dtype == torch.float32 and v.shape == (layout.size,)
    assert torch.equal(v, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert set(fixed) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    wide = split_state({k: t.double() if t.is_floating_point() else t for k, t in state.items()}, layout, CPU)[0]
    assert wide.dtype == torch.float64 and torch.equal(wide, v.double())


def test_buffer_pool_reuses_only_what_nothing_holds() -> None:
    # The pool hands a buffer out again only when no name, view or autograd node holds it: a gradient the
    # integrator still holds is never overwritten, and a pair's temporaries are reused instead of allocated.
    pool = BufferPool()
    a = pool.take(8, torch.float32, CPU)
    b = pool.take(8, torch.float32, CPU)
    assert a.data_ptr() != b.data_ptr()
    ptr = a.data_ptr()
    del a
    assert pool.take(8, torch.float32, CPU).data_ptr() == ptr  # free again: reused
    c = pool.take(8, torch.float32, CPU)
    view = c[2:4]
    del c
    d = pool.take(8, torch.float32, CPU)
    assert d.data_ptr() != view.data_ptr() - 2 * 4  # a view still holds it
    alias = d
    del d
    assert pool.take(8, torch.float32, CPU).data_ptr() != alias.data_ptr()  # a second name still holds it
    assert pool.take(8, torch.float64, CPU).dtype == torch.float64  # another dtype: another buffer
    nbytes = pool.nbytes
    pool.clear()
    assert pool.nbytes == 0 and nbytes > 0
