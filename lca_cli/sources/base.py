"""The sources interface: a checkpoint reference, the model's expected tensors, and shared helpers.

Every checkpoint format family (flat files, per-step folders with shards) produces :class:`CheckpointRef`
objects when it scans a folder and turns one back into a raw object (a flat or nested ``name -> tensor``
mapping) when asked to load it; :mod:`lca_cli.sources.keys` then maps that object onto the model's
``state_dict`` names (nested keys, prefixes, tied aliases) described by a :class:`ModelSpec`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lca_cli.errors import CheckpointRefused

if TYPE_CHECKING:
    import torch

__all__ = [
    "STEP_RANGE",
    "WEIGHT_SUFFIXES",
    "CheckpointRef",
    "ModelSpec",
    "check_name",
    "confine",
    "last_digits",
    "listing",
    "shown",
]

#: Steps a store can hold (its ``steps`` array is int64).
STEP_RANGE = range(-(1 << 63), 1 << 63)

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


def shown(path: Path) -> str:
    r"""A path for a message, printable whatever its bytes (a name that is not UTF-8 shows as ``\xff``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_name(path: Path) -> None:
    r"""Refuse a file name that is not valid UTF-8, in one line that says so (safetensors cannot open it).

    Raises:
        CheckpointRefused: Naming the file (its odd bytes as ``\xff``) and asking to rename it.

    """
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointRefused(
            f"{shown(path)}: the file name is not valid UTF-8 (the file itself may be fine); rename it "
            "(e.g. step_00000042.safetensors)"
        ) from None


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def confine(ref: CheckpointRef, run_dir: Path) -> CheckpointRef:
    """Check that every file a per-step folder leads lca to resolves inside that folder or the run folder.

    A shard index's names, a model file and ``trainer_state.json`` are data: a symlink or a name such as
    ``../../x`` could point lca anywhere. Symlinks are resolved first, so a link that stays inside is fine. A
    step folder that is itself a symlink to a folder outside the run is its own folder: it is read, and
    :mod:`lca_cli.computation.work`'s ``--prune`` never deletes through it. Flat files are the run folder's
    own entries and are not checked (a link to a checkpoint elsewhere is read, never deleted).

    Args:
        ref: A checkpoint.
        run_dir: The run folder.

    Returns:
        ``ref``.

    Raises:
        CheckpointRefused: One line naming the file and where it leads.

    """
    if not ref.files:
        return ref
    roots = [ref.path.resolve(), run_dir.resolve()]
    extra = ref.path / "trainer_state.json"
    for path in (*ref.files, *((extra,) if extra.exists() else ())):
        target = path.resolve()
        if not _inside(target, roots):
            raise CheckpointRefused(
                f"{shown(path)} leads to {shown(target)}, outside its step folder and the run folder {shown(run_dir)}; "
                "lca reads only files inside the run: copy the checkpoint into the run folder"
            )
    return ref


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

    def __post_init__(self) -> None:
        # Every path and step comes from the file system or a file's contents: checked here, once, so that
        # no later step (int64 steps array, safetensors' UTF-8 paths) meets an impossible value.
        for path in (self.path, *self.files):
            check_name(path)
        if self.step not in STEP_RANGE:
            raise CheckpointRefused(
                f"{shown(self.path)}: step {self.step} is out of range (a step must fit in 64 bits, "
                f"{STEP_RANGE.start}..{STEP_RANGE.stop - 1}); fix its 'step' metadata or the digits of its name"
            )

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
