"""Per-step folders: Hugging Face ``checkpoint-N/``, accelerate ``checkpoint_N/``, any ``step_N/``-style folder.

A step folder is a folder whose name holds digits and which holds one model: a sharded save (an
``*.index.json`` whose ``weight_map`` names the shard files, merged in memory), or one weights file
(``model.safetensors``, ``pytorch_model.bin``, ... or the only weights file that is not an optimizer,
scheduler, RNG or training-arguments file). Its step is the framework's record (``trainer_state.json``'s
``global_step``) when there is one, else the last run of digits in the folder name.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lca_cli.errors import CheckpointError, CheckpointRefused
from lca_cli.sources.base import WEIGHT_SUFFIXES, CheckpointRef, last_digits
from lca_cli.sources.files import load_file

__all__ = ["is_auxiliary", "is_shard", "load_folder", "model_files", "step_folder"]

#: Preferred model files of a folder, in order (HF Trainer / save_pretrained, accelerate, common names).
MODEL_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.pt",
    "model.pth",
    "model.bin",
    "model.ckpt",
    "pytorch_model.pt",
)
#: Index files of sharded saves, in order of preference.
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

_SHARD = re.compile(r"-\d+-of-\d+\.[a-z]+$")
_AUX = re.compile(r"^(optimizer|scheduler|rng_state|random_states|scaler|training_args|trainer_state|ema_state)")


def is_shard(name: str) -> bool:
    """Whether a file name is one shard of a sharded save (``model-00001-of-00002.safetensors``)."""
    return bool(_SHARD.search(name))


def is_auxiliary(name: str) -> bool:
    """Whether a weights-suffixed file is training state, not the model (optimizer, scheduler, RNG, args)."""
    return bool(_AUX.match(name))


def _index_files(folder: Path, index: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a readable shard index ({exc}); re-save the checkpoint") from None
    outside = [n for n in names if not isinstance(n, str) or Path(n).is_absolute() or ".." in Path(n).parts]
    if outside:  # data naming a file elsewhere (../../x, /abs): never read, so never pruned either
        raise CheckpointRefused(
            f"{index} names {str(outside[0])[:200]!r}, outside {folder}; a shard index may name only files in its "
            "own folder: re-save the checkpoint"
        )
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(f"{index} names shard(s) {', '.join(missing)} that are not in {folder}")
    return tuple(folder / n for n in names)


def model_files(folder: Path) -> tuple[Path, ...] | None:
    """The file(s) holding one model in ``folder``, or None when it holds no single model.

    Args:
        folder: A directory.

    Returns:
        The shard files of an index, the preferred model file, or the only candidate weights file; None when
        there is none or several candidates.

    Raises:
        CheckpointError: If a shard index is unreadable or names missing shards.

    """
    for name in INDEX_FILES:
        if (folder / name).is_file():
            return _index_files(folder, folder / name)
    for name in MODEL_FILES:
        if (folder / name).is_file():
            return (folder / name,)
    candidates = [
        p
        for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith(".") and not is_auxiliary(p.name)
    ]
    return (candidates[0],) if len(candidates) == 1 else None


def _trainer_state_step(folder: Path) -> int | None:
    path = folder / "trainer_state.json"
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def step_folder(folder: Path) -> CheckpointRef | None:
    """A :class:`CheckpointRef` for a per-step folder, or None when ``folder`` is not one.

    Raises:
        CheckpointError: If it looks like a sharded save but its index is broken.

    """
    digits = last_digits(folder.name)
    if digits is None:
        return None
    files = model_files(folder)
    if files is None:
        return None
    step = _trainer_state_step(folder)
    return CheckpointRef(folder, digits if step is None else step, files)


def load_folder(ref: CheckpointRef, unsafe_pickle: bool = False) -> Any:
    """Load a folder checkpoint: its one file as is, or its shards merged into one flat mapping.

    Raises:
        CheckpointError: If a shard is not a flat map or two shards hold the same tensor.

    """
    if len(ref.weight_files) == 1:
        return load_file(ref.weight_files[0], unsafe_pickle)
    merged: dict[str, Any] = {}
    for path in ref.weight_files:
        part = load_file(path, unsafe_pickle)
        if not isinstance(part, dict):
            raise CheckpointError(f"{path}: a shard must hold a flat name -> tensor map, not {type(part).__name__}")
        twice = sorted(set(part) & set(merged))
        if twice:
            raise CheckpointError(f"{path}: tensor(s) {', '.join(twice[:3])} are also in another shard of {ref.path}")
        merged.update(part)
    return merged
