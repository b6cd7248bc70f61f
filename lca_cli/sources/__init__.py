"""Checkpoint sources: find a run's checkpoints in the layouts real training code writes, and read them.

One small interface for the pipeline: :func:`find_checkpoints` lists :class:`CheckpointRef` objects in step
order, and :class:`CheckpointSource` reads one as the model's ``state_dict`` (:class:`ModelSpec`). Format
families, one module each:

* :mod:`~lca_cli.sources.files`: flat ``*.safetensors``, ``*.pt``, ``*.pth``, ``*.bin``, ``*.ckpt`` files;
* :mod:`~lca_cli.sources.folders`: per-step folders (HF ``checkpoint-N/``, accelerate ``checkpoint_N/``,
  ``step_N/``), single files or shards with an index;
* :mod:`~lca_cli.sources.keys`: nested dicts, key prefixes and tied aliases, mapped onto the model's names;
* :mod:`~lca_cli.sources.discover`: where to look, ordering, duplicates, and what to say when nothing is found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lca_cli.errors import CheckpointError
from lca_cli.sources.base import CheckpointRef, ModelSpec
from lca_cli.sources.discover import describe_folder, find_checkpoints
from lca_cli.sources.files import load_file
from lca_cli.sources.folders import load_folder
from lca_cli.sources.keys import NESTED_KEYS, check_state_dict, select_entry, to_model_state

__all__ = [
    "CheckpointRef",
    "CheckpointSource",
    "ModelSpec",
    "check_state_dict",
    "describe_folder",
    "find_checkpoints",
    "load_raw",
    "read_checkpoint",
]


def load_raw(ref: CheckpointRef | Path, unsafe_pickle: bool = False) -> Any:
    """Load a checkpoint as its file(s) hold it: a flat map, a dict nesting one, or merged shards.

    Args:
        ref: The checkpoint (or a file path).
        unsafe_pickle: Allow torch files that need pickle (trusted files only).

    Returns:
        The loaded object, tensors on the CPU.

    Raises:
        CheckpointError: If a file is missing, corrupt, truncated, needs pickle, or of an unknown format.

    """
    ref = ref if isinstance(ref, CheckpointRef) else CheckpointRef(Path(ref), -1)
    try:
        return load_folder(ref, unsafe_pickle) if ref.files else load_file(ref.path, unsafe_pickle)
    except FileNotFoundError:
        raise CheckpointError(f"{ref.path}: disappeared while reading; is training still rotating files?") from None


def read_checkpoint(
    ref: CheckpointRef | Path, unsafe_pickle: bool = False, state_dict_key: str | None = None
) -> dict[str, torch.Tensor]:
    """Read one checkpoint into a flat ``name -> CPU tensor`` map, without reference to a model.

    A dict that nests exactly one state_dict (under ``state_dict``, ``model``, ``model_state_dict`` or
    ``module``) is unwrapped, or the entry ``state_dict_key`` names (``--state-dict-key``; ``a/b`` for a deeper
    one); prefixes and aliases are left as they are (:class:`CheckpointSource` maps them).

    Raises:
        CheckpointError: If the file is corrupt, truncated, needs pickle, or holds no state_dict, or several
            that the key does not choose between.

    """
    obj = load_raw(ref, unsafe_pickle)
    path = ref.path if isinstance(ref, CheckpointRef) else Path(ref)
    if state_dict_key:
        obj = select_entry(obj, state_dict_key, str(path))
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        nested = [k for k in NESTED_KEYS if isinstance(obj.get(k), dict)]
        flat = [k for k in nested if obj[k] and all(isinstance(v, torch.Tensor) for v in obj[k].values())]
        if len(flat) == 1:
            return dict(obj[flat[0]])
        if len(flat) > 1:
            raise CheckpointError(
                f"{path}: entries {', '.join(flat)} each hold a state_dict; pass --state-dict-key NAME to choose one"
            )
    raise CheckpointError(
        f"{path}: expected a flat name -> tensor state_dict, found a {type(obj).__name__}; pass --state-dict-key "
        "NAME to choose the entry that holds the model's state_dict"
    )


class CheckpointSource:
    """Reads a run's checkpoints as a model's ``state_dict``, mapping names as :mod:`.keys` says.

    Thread-safe: the pipeline reads ahead in a background thread. Notes (a nested entry used, a prefix
    stripped) are passed to ``note`` once each.

    Args:
        spec: The model's expectations (:meth:`ModelSpec.from_module`).
        state_dict_key: ``--state-dict-key``: the entry holding the state_dict, else found automatically.
        unsafe_pickle: ``--unsafe-pickle``: allow torch files that need pickle (trusted files only).
        note: Receives one-line notes for the user.

    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        state_dict_key: str | None = None,
        unsafe_pickle: bool = False,
        note: Callable[[str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.state_dict_key = state_dict_key or None
        self.unsafe_pickle = unsafe_pickle
        self._note = note
        self._said: set[str] = set()
        self._lock = threading.Lock()

    def read(self, ref: CheckpointRef) -> dict[str, torch.Tensor]:
        """One checkpoint as the model's ``state_dict`` (tied aliases dropped), checked against the model.

        Raises:
            CheckpointError: In one line, if it cannot be read or does not fit the model.

        """
        state, notes = to_model_state(load_raw(ref, self.unsafe_pickle), self.spec, ref.path, self.state_dict_key)
        with self._lock:
            fresh = [n for n in notes if n not in self._said]
            self._said.update(fresh)
        if self._note is not None:
            for n in fresh:
                self._note(n)
        return state
