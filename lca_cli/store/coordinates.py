"""Coordinates and descriptive attributes, so that xarray and other PyData readers label a store's arrays.

The root's ``tensor``, ``checkpoint`` and ``iteration`` are index coordinates, which xarray's DataTree hands
down to the set groups; ``steps`` (the contract's array) is declared a coordinate by the root attribute
``coordinates``. Each set group holds ``layer`` and a coordinate for ``lca``'s columns and names them in its
own ``coordinates`` attribute, with the attributes a reader of that group needs. Coordinates follow from the
layout and the steps alone: a repair rebuilds them (:meth:`lca_cli.store.lcastore.LcaStore.rewrite_coordinates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from lca_cli.core.columns import OTHER, Columns
from lca_cli.core.layout import Layout, layer_name
from lca_cli.store.chunks import codecs
from lca_cli.store.format import ARRAY_DESCRIPTIONS, COORD_COLS, SMALL_ROWS

__all__ = ["write_coordinates", "write_step_coordinates"]

#: What a set group's column coordinate holds, by the name of ``lca``'s column dimension.
_COLUMNS_HELP = {
    "parameter": "parameter_tensor = index (into tensor) of each parameter column (-1: the (other) column)",
    "neuron": "neuron = name of each neuron column (layer[unit], or (other))",
    "tensor": "lca's columns are the tensors (the tensor coordinate)",
}


def write_step_coordinates(group: zarr.Group, steps: np.ndarray) -> None:
    """Write ``checkpoint`` (= steps) and ``iteration`` (each pair's start step): xarray's index coordinates.

    Creates them when missing (at creation, and after a repair deleted them), else resizes them (an append).

    Args:
        group: The store's root group.
        steps: All checkpoint steps, int64 ``(T + 1,)``.

    """
    for name, values in (("checkpoint", steps), ("iteration", steps[:-1])):
        try:
            arr = group[name]
            assert isinstance(arr, zarr.Array)
            arr.resize((len(values),))
        except KeyError:
            arr = group.create_array(
                name, shape=(len(values),), chunks=(SMALL_ROWS,), dtype="int64", fill_value=-1, compressors=codecs(),
                dimension_names=(name,), config={"write_empty_chunks": True},
            )  # fmt: skip
        if len(values):
            arr[:] = values


def write_coordinates(
    group: zarr.Group,
    layout: Layout,
    sets: Sequence[str],
    steps: Sequence[int],
    attrs: dict[str, Any],
    columns: Columns | None = None,
) -> None:
    """Write every coordinate array and the set groups' descriptive attributes.

    A store with other columns (:mod:`lca_cli.core.columns`) labels them instead of per parameter:
    ``parameter_tensor`` per stored parameter column (-1 for the ``(other)`` column), ``neuron`` (a name per
    neuron column), or nothing more for per-tensor columns (the root's ``tensor``).

    Args:
        group: The store's root group.
        layout: Parameter layout.
        sets: Evaluation set names.
        steps: Checkpoint steps.
        attrs: The root's attributes (each set group gets its part of ``evaluation``).
        columns: What ``lca``'s columns hold (None: one per parameter).

    """
    columns = columns or Columns.build(layout)
    write_step_coordinates(group, np.asarray(steps, dtype=np.int64))
    k = len(layout.params)
    names = np.array([p.name for p in layout.params], dtype=object)
    layers = np.array([layer_name(p.name) for p in layout.params], dtype=object)
    every: dict[str, Any] = {"compressors": codecs(), "config": {"write_empty_chunks": True}}  # always written
    tensor = group.create_array(
        "tensor", shape=(k,), chunks=(max(1, k),), dtype=str, dimension_names=("tensor",), **every
    )
    if k:
        tensor[:] = names
    if group.attrs.get("coordinates") != "steps":
        group.attrs.update({"coordinates": "steps"})
    offsets = np.array([p.offset for p in layout.params], dtype=np.int64)
    evaluation = attrs.get("evaluation", {}).get("sets", {}) if isinstance(attrs.get("evaluation"), dict) else {}
    for name in sets:
        sub = group.require_group(name)
        lay = sub.create_array(
            "layer", shape=(k,), chunks=(max(1, k),), dtype=str, dimension_names=("tensor",), **every
        )
        if k:
            lay[:] = layers
        coords = _write_column_coordinates(sub, layout, columns, offsets, every)
        sub.attrs.update(
            {
                "set": name,
                "coordinates": " ".join(["layer", *coords]),
                "units": "loss",
                "sign": "LCA < 0: the parameter helped (lowered the loss); > 0: it hurt",
                "evaluation": evaluation.get(name, {}),
                "arrays": ARRAY_DESCRIPTIONS,
                "coordinates_help": "iteration = start step of each pair; checkpoint = step; tensor = parameter "
                f"name; {_COLUMNS_HELP[columns.dimension]}",
            }
        )


def _write_column_coordinates(
    sub: zarr.Group, layout: Layout, columns: Columns, offsets: np.ndarray, every: dict[str, Any]
) -> list[str]:
    """The coordinate labelling ``lca``'s columns in one set group; returns the names written."""
    if columns.dimension == "tensor":
        return []  # the root's ``tensor`` coordinate labels them
    if columns.dimension == "neuron":
        labels = np.array(columns.labels(layout), dtype=object)
        arr = sub.create_array(
            "neuron", shape=(columns.size,), chunks=(max(1, columns.size),), dtype=str, dimension_names=("neuron",),
            **every,
        )  # fmt: skip
        if columns.size:
            arr[:] = labels
        return ["neuron"]
    size = columns.size
    cols = max(1, min(size, COORD_COLS))
    pt = sub.create_array(
        "parameter_tensor", shape=(size,), chunks=(cols,), dtype="int32", dimension_names=("parameter",), **every
    )
    if columns.full:
        for start in range(0, size, cols):  # chunk by chunk: never a (P,) index array in memory
            idx = np.arange(start, min(size, start + cols), dtype=np.int64)
            pt[start : start + len(idx)] = (np.searchsorted(offsets, idx, side="right") - 1).astype(np.int32)
    else:  # some tensors' parameters, then (other): small enough to build at once
        out = np.empty(size, dtype=np.int32)
        for g in columns.groups:
            out[g.offset : g.stop] = -1 if g.name == OTHER else g.tensors[0]
        if size:
            pt[:] = out
    return ["parameter_tensor"]
