"""What the columns of a store's ``lca`` rows hold: parameters, neurons or tensors, all or some of them.

By default a row has one column per parameter (``--granularity parameter``). For big models that is most of
the disk: a store can instead keep one column per *neuron* (``neuron``: output unit ``i`` of a layer, the sum
over unit ``i`` of each of its tensors, as :meth:`lca_cli.core.layout.Layout.neurons` groups them) or per *tensor*
(``tensor``), and ``--params GLOB`` keeps the columns of the tensors whose names match only, the rest summed
into one last column named :data:`OTHER`, so that a row still sums to the pair's whole allocation and
conservation stays checkable.

The pair is always integrated over every parameter; only what is stored shrinks (the row is reduced on the
compute device by :class:`lca_cli.core.vectors.ColumnReducer`; this module is numbers only, so that reading a
store never imports torch). A :class:`Columns` map is
recorded in the store's attributes (``granularity``, ``columns``), and :meth:`Columns.column_layout` describes
the columns as a :class:`~lca_cli.core.layout.Layout` of pseudo-tensors, so that readers that group ``lca`` columns
by layer or by neuron work on any store at the resolution it holds: a neuron group becomes one pseudo-tensor
of shape ``(units,)`` in its layer, a tensor one of shape ``(1,)``, and the rest one named :data:`OTHER`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lca_cli.core.layout import Layout
from lca_cli.errors import StoreError, UsageError

__all__ = ["GRANULARITIES", "OTHER", "ColumnGroup", "Columns", "match_params"]

GRANULARITIES = ("parameter", "neuron", "tensor")
#: Name of the column that holds the sum over every parameter not selected by ``--params``.
OTHER = "(other)"


@dataclass(frozen=True)
class ColumnGroup:
    """Consecutive columns of ``lca`` that come from the same tensors.

    Attributes:
        name: A tensor name (parameter or tensor granularity, or a neuron group of one tensor), a layer name (a
            neuron group of several tensors) or :data:`OTHER`.
        tensors: Indices of the tensors (into the layout) whose parameters these columns sum.
        units: Number of columns.
        offset: First column.

    """

    name: str
    tensors: tuple[int, ...]
    units: int
    offset: int

    @property
    def stop(self) -> int:
        """One past the last column."""
        return self.offset + self.units


def match_params(layout: Layout, patterns: Sequence[str]) -> list[int]:
    """Indices of the tensors whose names match any of the glob patterns (``fnmatch``; ``*`` crosses dots).

    Args:
        layout: The model's parameter layout.
        patterns: Globs such as ``"encoder.*"`` or ``"fc1.weight"``.

    Returns:
        Tensor indices in layout order.

    Raises:
        UsageError: If a pattern matches no tensor (a typo must not silently store nothing of it).

    """
    chosen: set[int] = set()
    for pat in patterns:
        hit = [i for i, p in enumerate(layout.params) if fnmatch.fnmatchcase(p.name, pat)]
        if not hit:
            names = ", ".join(layout.names[:8]) + (" ..." if len(layout.names) > 8 else "")
            raise UsageError(f"--params {pat!r} matches no parameter tensor (tensors: {names})")
        chosen.update(hit)
    return sorted(chosen)


@dataclass(frozen=True)
class Columns:
    """The column map of a store's ``lca`` rows (see the module docstring).

    Attributes:
        granularity: ``"parameter"``, ``"neuron"`` or ``"tensor"``.
        groups: Column groups in column order; the last is :data:`OTHER` when some tensors were left out.
        params: The ``--params`` patterns (empty: every tensor).

    """

    granularity: str
    groups: tuple[ColumnGroup, ...]
    params: tuple[str, ...] = ()

    # -- building -------------------------------------------------------------------------------------

    @classmethod
    def build(cls, layout: Layout, granularity: str = "parameter", params: Sequence[str] = ()) -> Columns:
        """The column map for a layout, a granularity and ``--params`` patterns.

        Raises:
            UsageError: For an unknown granularity, a pattern that matches nothing, or ``--params`` with
                ``tensor`` granularity (its rows are already one number per tensor).

        """
        if granularity not in GRANULARITIES:
            raise UsageError(f"--granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if params and granularity == "tensor":
            raise UsageError(
                "--params needs --granularity parameter or neuron (tensor rows are one per tensor already)"
            )
        chosen = match_params(layout, params) if params else list(range(len(layout.params)))
        keep = set(chosen)
        groups: list[ColumnGroup] = []
        offset = 0

        def add(name: str, tensors: Sequence[int], units: int) -> None:
            nonlocal offset
            groups.append(ColumnGroup(name, tuple(tensors), units, offset))
            offset += units

        if granularity == "parameter":
            for i in chosen:
                add(layout.params[i].name, [i], layout.params[i].numel)
        elif granularity == "tensor":
            for i in chosen:
                add(layout.params[i].name, [i], 1)
        else:
            for name, members in layout.neurons():
                tensors = [ti for ti, _ in members if ti in keep]
                if tensors:
                    # A group is kept whole or not at all: its neurons sum every tensor of the layer.
                    tensors = [ti for ti, _ in members]
                    keep.update(tensors)
                    add(name, tensors, members[0][1])
        rest = [i for i in range(len(layout.params)) if i not in keep]
        if rest:
            add(OTHER, rest, 1)
        return cls(granularity, tuple(groups), tuple(params))

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], layout: Layout) -> Columns:
        """The column map a store records (a store without one holds every parameter).

        Raises:
            StoreError: If the recorded map does not fit the store's layout.

        """
        raw = attrs.get("columns")
        if not raw:
            return cls.build(layout)
        try:
            groups = tuple(
                ColumnGroup(str(g["name"]), tuple(int(t) for t in g["tensors"]), int(g["units"]), int(g["offset"]))
                for g in raw["groups"]
            )
            out = cls(str(raw["granularity"]), groups, tuple(str(p) for p in raw.get("params", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"the store's column map is damaged ({type(exc).__name__}: {exc})") from None
        if out.granularity not in GRANULARITIES or any(t >= len(layout.params) for g in groups for t in g.tensors):
            raise StoreError("the store's column map does not fit its parameters; the store is damaged")
        return out

    def to_attrs(self) -> dict[str, Any]:
        """The ``columns`` attribute: granularity, patterns and groups (name, tensors, units, offset)."""
        return {
            "granularity": self.granularity,
            "dimension": self.dimension,
            "size": self.size,
            "params": list(self.params),
            "groups": [
                {"name": g.name, "tensors": list(g.tensors), "units": g.units, "offset": g.offset} for g in self.groups
            ],
        }

    # -- describing -----------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of columns C."""
        return self.groups[-1].stop if self.groups else 0

    @property
    def dimension(self) -> str:
        """Name of ``lca``'s column dimension: what a column holds."""
        return self.granularity

    @property
    def full(self) -> bool:
        """One column per parameter, every parameter: the plain layout (nothing reduced)."""
        return self.granularity == "parameter" and not any(g.name == OTHER for g in self.groups)

    def settings(self) -> dict[str, Any]:
        """What goes into the store's identity: the granularity and patterns, each only when not the default."""
        out: dict[str, Any] = {}
        if self.granularity != "parameter":
            out["granularity"] = self.granularity
        if self.params:
            out["params"] = list(self.params)
        return out

    def parameter_counts(self, layout: Layout) -> np.ndarray:
        """Parameters summed into each column, int64 ``(C,)``."""
        out = np.empty(self.size, dtype=np.int64)
        for g in self.groups:
            total = sum(layout.params[t].numel for t in g.tensors)
            out[g.offset : g.stop] = total // g.units if g.units else 0
        return out

    def labels(self, layout: Layout) -> list[str]:
        """A name per column: ``fc1.weight[7]`` (parameter), ``fc1[3]`` (neuron), ``fc1.bias`` (tensor)."""
        out: list[str] = []
        for g in self.groups:
            if g.units == 1 and (self.granularity == "tensor" or g.name == OTHER):
                out.append(g.name)
            else:
                out.extend(f"{g.name}[{i}]" for i in range(g.units))
        return out

    def column_layout(self, layout: Layout) -> Layout:
        """The columns as a layout of pseudo-tensors (see the module docstring); ``layout`` itself when full.

        Every pseudo-tensor sits in the layer its columns come from (:func:`lca_cli.core.layout.layer_name` of its
        name), so grouping columns by layer, or a neuron store's columns by neuron, gives the same groups as
        grouping a parameter store's columns (the name of a neuron group of several tensors gains ``.units``).
        """
        if self.full:
            return layout
        shapes: list[tuple[str, tuple[int, ...]]] = []
        for g in self.groups:
            if g.name == OTHER:
                shapes.append((OTHER, (1,)))
            elif self.granularity == "parameter":
                shapes.append((g.name, layout.params[g.tensors[0]].shape))
            elif self.granularity == "tensor":
                shapes.append((g.name, (1,)))
            elif len(g.tensors) == 1 and layout.params[g.tensors[0]].name == g.name:
                shapes.append((g.name, (g.units,)))  # a tensor of its own: keeps its name (and so its layer)
            else:
                shapes.append((f"{g.name}.units", (g.units,)))  # a layer's neurons: a pseudo-tensor in that layer
        return Layout.from_shapes(shapes)
