"""A fixed evaluation set: a data factory's result normalised, cast and split into chunks, in order.

:func:`as_batch` accepts the forms a data factory may return (tensors, ``(inputs, targets)``, dicts, numpy
arrays, map-style Datasets) and refuses anything else in one line; :func:`make_chunks` turns the result into
an :class:`EvalSet` whose chunks live on the device when they fit (pinned host memory otherwise).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lca_cli.core.batch import Inputs, Targets, batch_len, input_tensors, map_inputs
from lca_cli.core.losses import BuiltinLoss, LossFn
from lca_cli.errors import ConfigError

__all__ = ["DEVICE_RESIDENT_FRACTION", "EvalSet", "as_batch", "as_tensors", "make_chunks"]

#: Share of the free device memory an evaluation set may take and still be kept resident on the device; the
#: rest is left for activations (one chunk's forward and backward) and the point vectors.
DEVICE_RESIDENT_FRACTION = 0.5


@dataclass(frozen=True)
class EvalSet:
    """A fixed evaluation set split into chunks, in order.

    Attributes:
        name: Set name (``"train"``, ``"val"``, ...).
        chunks: ``[(inputs, targets)]`` in fixed order; the last chunk may be smaller. Inputs are a tensor, a
            tuple or a dict of tensors (see :data:`Inputs`); targets a tensor or None.
        n_samples: Total number of samples N.

    """

    name: str
    chunks: tuple[tuple[Inputs, Targets], ...]
    n_samples: int

    @property
    def chunk_sizes(self) -> list[int]:
        """Samples per chunk."""
        return [batch_len(x) for x, _ in self.chunks]


def _rows(t: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """Rows ``start .. start + size - 1`` (a view: the chunks share the set's storage)."""
    return t[start : start + size]


def _tensor(value: Any, what: str) -> torch.Tensor:
    """A tensor from a tensor, numpy array, number or (rectangular) list; anything else is a ConfigError."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind not in "biuf":
            raise ConfigError(f"{what} is a numpy array of dtype {value.dtype}; give numbers (or a tensor)")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, bool | int | float | list):
        try:
            return torch.as_tensor(value)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(f"{what} is a list that is not a rectangular array of numbers ({exc}); pad it") from None
    raise ConfigError(f"{what} is a {type(value).__name__}; expected a tensor (or numpy array)")


_ARRAY = (torch.Tensor, np.ndarray)


def _inputs(value: Any, what: str) -> Inputs:
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError(f"{what} is an empty dict")
        return {str(k): _tensor(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple) and value and all(isinstance(v, _ARRAY) for v in value):
        return tuple(_tensor(v, f"{what}[{i}]") for i, v in enumerate(value))
    return _tensor(value, what)


def _split_labels(inputs: Inputs, targets: Any, what: str) -> tuple[Inputs, Targets]:
    if isinstance(inputs, dict) and "labels" in inputs:
        if targets is not None:
            raise ConfigError(f"{what}: the inputs hold 'labels' and targets are given too; give one of them")
        targets = inputs.pop("labels")
    return inputs, None if targets is None else _tensor(targets, f"{what} targets")


def _one(data: Any, what: str) -> tuple[Inputs, Targets]:
    """One structure (a whole set, or one Dataset item) -> ``(inputs, targets)``."""
    if isinstance(data, tuple | list):
        if len(data) == 2:
            return _split_labels(_inputs(data[0], f"{what} inputs"), data[1], what)
        if len(data) == 1:
            return _split_labels(_inputs(data[0], f"{what} inputs"), None, what)
        raise ConfigError(
            f"{what} is a {len(data)}-element {type(data).__name__}; give (inputs, targets), with several inputs "
            "as ((x1, x2), targets) or a dict of tensors"
        )
    if isinstance(data, Mapping | torch.Tensor | np.ndarray | bool | int | float):
        return _split_labels(_inputs(data, f"{what} inputs"), None, what)
    raise ConfigError(
        f"{what} is a {type(data).__name__}; expected a tensor, (inputs, targets), a dict of tensors or a "
        "map-style Dataset of these"
    )


def _stack(values: list[torch.Tensor], what: str) -> torch.Tensor:
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) > 1:
        raise ConfigError(f"{what}: items have different shapes ({', '.join(map(str, sorted(shapes)[:3]))}); pad them")
    return torch.stack(values)


def _from_items(items: list[tuple[Inputs, Targets]], what: str) -> tuple[Inputs, Targets]:
    first_x, first_y = items[0]
    if any(type(x) is not type(first_x) or (y is None) != (first_y is None) for x, y in items):
        raise ConfigError(f"{what}: items differ in form (inputs or targets present in some only)")
    if isinstance(first_x, dict):
        keys = list(first_x)
        if any(list(x) != keys for x, _ in items):
            raise ConfigError(f"{what}: items have different keys")
        inputs: Inputs = {k: _stack([x[k] for x, _ in items], f"{what} {k!r}") for k in keys}
    elif isinstance(first_x, tuple):
        inputs = tuple(_stack([x[i] for x, _ in items], f"{what} input {i}") for i in range(len(first_x)))
    else:
        inputs = _stack([x for x, _ in items], f"{what} inputs")
    targets = None if first_y is None else _stack([y for _, y in items], f"{what} targets")  # type: ignore[misc]
    return inputs, targets


def as_batch(data: object, where: str) -> tuple[Inputs, Targets]:
    """Normalise a data factory's result to ``(inputs, targets)`` for the whole set, in index order.

    Accepted: a tensor (inputs only); ``(inputs, targets)`` where inputs are a tensor, a tuple of tensors or a
    dict of tensors; a dict of tensors (keyword inputs; a ``labels`` entry becomes the targets); or a map-style
    Dataset (anything with ``__len__`` and integer ``__getitem__``, a list of samples included) whose items are
    any of these, stacked. Numpy arrays are converted (an ``(X, Y)`` pair of arrays is N samples, not two).

    Args:
        data: The factory's result.
        where: Names the data in messages.

    Returns:
        ``(inputs, targets)``, every tensor with the same first dimension N > 0.

    Raises:
        ConfigError: In one line, if the data has an unsupported form, mismatched lengths, or no samples.

    """
    if data is None:
        raise ConfigError(f"{where}: the factory returned None; return the evaluation data")
    # A tuple is one structure; so is a short list of arrays ([X, Y]); any other list is a list of samples.
    is_pair = isinstance(data, tuple) or (
        isinstance(data, list) and 0 < len(data) <= 3 and all(isinstance(v, _ARRAY) for v in data)
    )
    if is_pair or isinstance(data, Mapping | torch.Tensor | np.ndarray):
        inputs, targets = _one(data, where)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, str | bytes):
        n = len(data)
        if n == 0:
            raise ConfigError(f"{where} is empty")
        items = [_one(data[i], f"{where} item {i}") for i in range(n)]
        inputs, targets = _from_items(items, where)
    else:
        raise ConfigError(
            f"{where}: the factory returned {type(data).__name__}; expected (inputs, targets) tensors, a dict of "
            "tensors or a map-style Dataset"
        )
    tensors = input_tensors(inputs)
    n = int(tensors[0].shape[0]) if tensors[0].dim() else 0
    for t in tensors:
        if t.dim() == 0 or int(t.shape[0]) != n:
            raise ConfigError(
                f"{where}: inputs of different lengths ({', '.join(str(tuple(v.shape)) for v in tensors)})"
            )
    if targets is not None and (targets.dim() == 0 or targets.shape[0] != n):
        raise ConfigError(f"{where}: {n} inputs but {targets.shape[0] if targets.dim() else 'scalar'} targets")
    if n == 0:
        raise ConfigError(f"{where} is empty")
    return inputs, targets


def as_tensors(data: object, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalise a data factory's result to ``(inputs, targets)`` tensors in index order (training data).

    Args:
        data: Anything :func:`as_batch` accepts whose inputs are one tensor and which has targets.
        where: Names the data in messages.

    Returns:
        ``(inputs, targets)``.

    Raises:
        ConfigError: If the data has another form, mismatched lengths, or no samples.

    """
    inputs, targets = as_batch(data, where)
    if not isinstance(inputs, torch.Tensor) or targets is None:
        raise ConfigError(f"{where}: expected (inputs, targets) tensors")
    return inputs, targets


def make_chunks(
    name: str,
    data: object,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype,
    loss: LossFn | None = None,
) -> EvalSet:
    """Turn a data factory's result into a chunked :class:`EvalSet` on ``device``.

    Args:
        name: Set name, for messages.
        data: Anything :func:`as_batch` accepts.
        batch_size: Chunk size; the remainder forms a last, smaller chunk (never dropped).
        device: Where the chunks live: the whole set is resident on the device when it takes at most
            :data:`DEVICE_RESIDENT_FRACTION` of the free device memory; otherwise it stays in pinned host memory
            and each chunk is copied when evaluated.
        dtype: Floating dtype for floating-point inputs (and targets).
        loss: The loss, when it derives missing targets from the inputs (``causal_lm``).

    Returns:
        The evaluation set.

    Raises:
        ConfigError: If the data has an unsupported form, mismatched lengths, or no samples.

    """
    inputs, targets = as_batch(data, f"evaluation set {name!r}")
    if targets is None and isinstance(loss, BuiltinLoss):
        targets = loss.targets_from_inputs(inputs)
    n = batch_len(inputs)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    inputs = map_inputs(inputs, cast)
    targets = None if targets is None else cast(targets)
    nbytes = sum(t.nbytes for t in input_tensors(inputs)) + (0 if targets is None else targets.nbytes)
    if device.type == "cuda" and not _fits_on_device(nbytes, device):
        # Too large to keep resident: pinned host memory, each chunk copied asynchronously when evaluated.
        move: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.pin_memory()  # noqa: E731
    else:
        move = lambda t: t.to(device)  # noqa: E731
    inputs = map_inputs(inputs, move)
    targets = None if targets is None else move(targets)

    chunks = tuple(
        (
            map_inputs(inputs, functools.partial(_rows, start=i, size=batch_size)),
            None if targets is None else _rows(targets, i, batch_size),
        )
        for i in range(0, n, batch_size)
    )
    return EvalSet(name, chunks, n)


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_RESIDENT_FRACTION * free
