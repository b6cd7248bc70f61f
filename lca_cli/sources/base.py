"""The sources interface: a checkpoint reference, the model's expected tensors, and shared helpers.

Every checkpoint format family (flat files, per-step folders with shards) produces :class:`CheckpointRef`
objects when it scans a folder and turns one back into a raw object (a flat or nested ``name -> tensor``
mapping) when asked to load it; :mod:`lca_cli.sources.keys` then maps that object onto the model's
``state_dict`` names (nested keys, prefixes, tied aliases) described by a :class:`ModelSpec`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["WEIGHT_SUFFIXES", "CheckpointRef", "ModelSpec", "last_digits", "listing"]

#: File suffixes that may hold model weights.
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

_DIGITS = re.compile(r"(\d+)")


def last_digits(name: str) -> int | None:
    """The last run of digits in a name (``step_00000042`` -> 42), or None."""
    runs = _DIGITS.findall(name)
    return int(runs[-1]) if runs else None


def listing(names: Sequence[str], limit: int = 6) -> str:
    """``a, b, c (+4 more)``: a short, one-line list for messages."""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a run and its training step.

    Attributes:
        path: The checkpoint file, or the per-step folder that holds it.
        step: The training step.
        files: For a folder, the file(s) holding the weights (several for shards, merged in memory); empty for
            a flat file (the file is ``path``).

    """

    path: Path
    step: int
    files: tuple[Path, ...] = ()

    @property
    def weight_files(self) -> tuple[Path, ...]:
        """The files to read, in order."""
        return self.files or (self.path,)


@dataclass(frozen=True)
class ModelSpec(Mapping[str, tuple[int, ...]]):
    """What the model expects of a checkpoint: its ``state_dict()`` names and shapes, and more.

    A mapping ``name -> shape`` (so it can stand wherever the plain expected-shapes map is used).

    Attributes:
        shapes: ``state_dict()`` names -> shapes, tied aliases included (``state_dict`` lists them).
        floating: Names whose model tensor is floating point (a checkpoint must give floats there too).
        aliases: Tied parameters: alias -> owner, the owner being the name ``named_parameters()`` keeps.

    """

    shapes: Mapping[str, tuple[int, ...]]
    floating: frozenset[str] = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_module(cls, model: torch.nn.Module) -> ModelSpec:
        """Describe a model: ``state_dict`` shapes and dtypes, and its tied parameters.

        Args:
            model: The model (any dtype; only shapes and floating-ness are kept).

        Returns:
            The spec.

        """
        state = model.state_dict()
        owners: dict[int, str] = {}
        aliases: dict[str, str] = {}
        # remove_duplicate=False lists every name of a shared tensor in the order named_parameters() walks;
        # the first one is the name named_parameters() keeps (the layout's), the others are its aliases.
        for name, p in model.named_parameters(remove_duplicate=False):
            owner = owners.setdefault(id(p), name)
            if owner != name:
                aliases[name] = owner
        return cls(
            shapes={k: tuple(v.shape) for k, v in state.items()},
            floating=frozenset(k for k, v in state.items() if v.is_floating_point()),
            aliases=aliases,
        )

    def __getitem__(self, key: str) -> tuple[int, ...]:
        return self.shapes[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __hash__(self) -> int:
        return id(self)
