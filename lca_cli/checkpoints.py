"""Find, order and read the checkpoints of a run directory.

A run directory holds one checkpoint per iteration. The step of a checkpoint is its ``"step"`` metadata
entry when present, else the last run of digits in its file name. Checkpoints are ordered by step and
consecutive ones form the pairs LCA is computed over. Formats sit behind one interface (:data:`READERS`):
safetensors files, and ``torch.save`` files loaded with ``weights_only=True``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from lca_cli.errors import CheckpointError, RunDirError

__all__ = [
    "READERS",
    "CheckpointRef",
    "check_state_dict",
    "find_checkpoints",
    "read_checkpoint",
]

_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint file and its training step."""

    path: Path
    step: int


def _safetensors_step(path: Path) -> int | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several unrelated types for bad headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); delete or re-save it") from exc
    raw = meta.get("step")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise CheckpointError(f"{path}: metadata 'step' is {raw!r}, not an integer") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"{path}: corrupt or truncated safetensors file ({exc}); re-save it or remove it from the run"
        ) from exc


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot be loaded with torch.load(weights_only=True) ({exc})") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat name -> tensor state_dict")
    return dict(obj)


#: Reader per file suffix; each returns a flat ``name -> CPU tensor`` map.
READERS: dict[str, Callable[[Path], dict[str, torch.Tensor]]] = {
    ".safetensors": _read_safetensors,
    ".pt": _read_torch,
    ".pth": _read_torch,
}


def _step_of(path: Path) -> int:
    step = _safetensors_step(path) if path.suffix == ".safetensors" else None
    if step is not None:
        return step
    runs = _DIGITS.findall(path.stem)
    if not runs:
        raise CheckpointError(
            f"{path}: no 'step' metadata and no digits in the file name; name it like step_00000042{path.suffix}"
        )
    return int(runs[-1])


def find_checkpoints(run_dir: str | Path) -> list[CheckpointRef]:
    """List a run directory's checkpoints ordered by step.

    Hidden files (names starting with ``.``, such as a writer's temporary files) are ignored.

    Args:
        run_dir: The run directory.

    Returns:
        Checkpoints sorted by step (may hold fewer than two; callers decide what that means).

    Raises:
        RunDirError: If ``run_dir`` is not a directory.
        CheckpointError: If a step cannot be determined or two files claim the same step.

    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirError(f"run directory {root} does not exist (or is not a directory)")
    refs: dict[int, CheckpointRef] = {}
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or path.suffix not in READERS or not path.is_file():
            continue
        step = _step_of(path)
        if step in refs:
            raise CheckpointError(f"{path} and {refs[step].path} both hold step {step}; keep one checkpoint per step")
        refs[step] = CheckpointRef(path, step)
    return [refs[s] for s in sorted(refs)]


def read_checkpoint(ref: CheckpointRef | Path) -> dict[str, torch.Tensor]:
    """Read one checkpoint into CPU tensors.

    Args:
        ref: The checkpoint (or its path).

    Returns:
        ``name -> tensor``.

    Raises:
        CheckpointError: If the file is corrupt, truncated or of an unknown format.

    """
    path = ref.path if isinstance(ref, CheckpointRef) else Path(ref)
    reader = READERS.get(path.suffix)
    if reader is None:
        raise CheckpointError(f"{path}: unknown checkpoint format (known: {', '.join(READERS)})")
    try:
        return reader(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: disappeared while reading; is training still rotating files?") from None


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def check_state_dict(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], path: Path | str
) -> None:
    """Check a checkpoint's tensors against the model's ``state_dict`` names and shapes.

    Args:
        state: The checkpoint's tensors.
        expected: ``name -> shape`` of the model's ``state_dict()``.
        path: The checkpoint's path, for the message.

    Raises:
        CheckpointError: Listing missing, unexpected and mis-shaped tensors, if any.

    """
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} != model {tuple(expected[k])}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected: {_listing(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped: {_listing(misshaped, 3)}")
    if problems:
        raise CheckpointError(
            f"{path} does not match the model built from the config ({'; '.join(problems)}); "
            "check [model] factory and kwargs"
        )
