"""The forms a chunk of evaluation data takes: inputs as a tensor, a tuple or a dict of tensors, and targets.

Every module that handles evaluation data (the losses, the evaluation set, the objective) walks these forms
through the helpers here, so the forms are spelled out once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["Inputs", "Targets", "batch_len", "input_tensors", "map_inputs", "to_device"]

#: Model inputs of one chunk: a tensor (one positional argument), a tuple of tensors (several positional
#: arguments) or a dict of tensors (keyword arguments, e.g. ``input_ids`` and ``attention_mask``).
Inputs = Any
#: Targets of one chunk, or None when the loss needs none (``causal_lm`` on input ids, ``model_loss``).
Targets = torch.Tensor | None


def input_tensors(inputs: Inputs) -> list[torch.Tensor]:
    """The tensors of a chunk's inputs, in order (a dict's in its key order).

    Args:
        inputs: A tensor, a tuple of tensors or a dict of tensors.

    Returns:
        The tensors as a list.

    """
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    return list(inputs)


def batch_len(inputs: Inputs) -> int:
    """Samples in a chunk's inputs (the first dimension of its tensors)."""
    return int(input_tensors(inputs)[0].shape[0])


def map_inputs(inputs: Inputs, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
    """Apply ``fn`` to every tensor of a chunk's inputs, keeping their form.

    Args:
        inputs: A tensor, a tuple of tensors or a dict of tensors.
        fn: Applied to each tensor.

    Returns:
        Inputs of the same form (a tuple stays a tuple, a dict keeps its keys).

    """
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: fn(v) for k, v in inputs.items()}
    return tuple(fn(v) for v in inputs)


def to_device(value: Any, device: torch.device) -> Any:
    """Move a chunk's inputs or targets to ``device`` (no-ops when already there; None stays None).

    Args:
        value: Inputs, targets or None.
        device: Where the model runs.

    Returns:
        The same form on ``device``, copied asynchronously (the chunks live in pinned memory when not resident).

    """
    if value is None:
        return None
    return map_inputs(value, lambda t: t.to(device, non_blocking=True))
