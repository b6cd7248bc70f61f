"""Flat checkpoint files: ``*.safetensors`` and ``torch.save`` files (``*.pt``, ``*.pth``, ``*.bin``, ``*.ckpt``).

Torch files are always loaded with ``weights_only=True`` (no pickle: a checkpoint cannot run code); a file that
needs pickle is refused in one line that names ``--unsafe-pickle``, the opt-in for files the user trusts.

Step of a file: the safetensors metadata entry ``"step"``; for Lightning ``.ckpt`` files their own record,
``global_step``; else the last run of digits in the file name; for other torch files without digits, an
integer ``global_step`` or ``step`` entry in the saved dict.

Two quick looks help discovery tell a checkpoint from what is not one yet, or not one at all:
:func:`is_complete` (a file still being written is shorter than its own header says, or lacks the zip directory
that ``torch.save`` writes last) and :func:`not_weights` (an optimizer or scheduler ``state_dict``, an RNG state:
training state saved beside the model under any name).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from lca_cli.errors import CheckpointError
from lca_cli.sources.base import check_name, last_digits

__all__ = ["TORCH_SUFFIXES", "file_step", "is_complete", "load_file", "load_safetensors", "load_torch", "not_weights"]

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _safetensors_step(path: Path) -> int | None:
    from safetensors import safe_open

    check_name(path)  # safetensors cannot open a name that is not UTF-8: say that, not "re-save it"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises several unrelated types for bad headers
        if not path.exists():  # deleted since it was listed (pruning, rotation): gone, not damaged
            raise FileNotFoundError(str(path)) from exc
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc}); delete or re-save it") from exc
    raw = meta.get("step")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise CheckpointError(f"{path}: metadata 'step' is {raw!r}, not an integer") from None


def load_safetensors(path: Path) -> dict[str, Any]:
    """Read a safetensors file into CPU tensors.

    Raises:
        CheckpointError: If the file is corrupt or truncated.

    """
    from safetensors.torch import load_file as st_load

    try:
        return st_load(str(path), device="cpu")
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{path}: corrupt or truncated safetensors file ({exc}); re-save it or remove it from the run"
        ) from exc


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    # torch's weights_only refusal is several paragraphs of advice (including weights_only=False, which must
    # not be the advice here); the class it met is what the user needs to know.
    found = _GLOBAL.search(text)
    if found:
        return f"an object of {found.group(1)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0].rstrip(".") if lines else type(exc).__name__


def load_torch(path: Path, unsafe_pickle: bool = False, mmap: bool = False) -> Any:
    """Load a ``torch.save`` file onto the CPU without pickle (unless ``unsafe_pickle``).

    Args:
        path: The file.
        unsafe_pickle: Allow arbitrary pickled objects (``--unsafe-pickle``): only for trusted files.
        mmap: Map the file instead of reading it (for a quick look at its step).

    Returns:
        Whatever the file holds (a state_dict, or a dict that nests one).

    Raises:
        CheckpointError: In one line, if the file needs pickle, is corrupt or truncated.

    """
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=not unsafe_pickle, mmap=mmap)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        if unsafe_pickle or "weights_only" not in str(exc):
            raise CheckpointError(f"{path}: corrupt or truncated torch file ({_first_line(exc)})") from exc
        raise CheckpointError(
            f"{path}: holds Python objects that only pickle can load ({_first_line(exc)}); lca loads checkpoints "
            "without pickle: save the model's state_dict (safetensors or torch.save(model.state_dict())), or "
            "pass --unsafe-pickle if you trust this file"
        ) from exc
    except Exception as exc:  # zip/format errors of a truncated or foreign file come in many types
        if mmap:
            raise
        raise CheckpointError(f"{path}: corrupt or truncated torch file ({_first_line(exc)})") from exc


def _record_step(path: Path, unsafe_pickle: bool) -> int | None:
    try:
        obj = load_torch(path, unsafe_pickle, mmap=True)
    except CheckpointError:
        raise
    except Exception:  # not a zip-format file (mmap needs one): read it whole
        obj = load_torch(path, unsafe_pickle)
    if isinstance(obj, dict):
        for key in ("global_step", "step"):
            value = obj.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def file_step(path: Path, unsafe_pickle: bool = False) -> int:
    """The training step of a flat checkpoint file (see the module docstring for the rule).

    Raises:
        CheckpointError: If no step can be found, or the file cannot be read.
        FileNotFoundError: If the file was deleted since it was listed (discovery skips it).

    """
    step: int | None = None
    if path.suffix == ".safetensors":
        step = _safetensors_step(path)
    elif path.suffix == ".ckpt":
        step = _record_step(path, unsafe_pickle)  # Lightning names can end in -v1: its record is the truth
    if step is None:
        step = last_digits(path.stem)
    if step is None and path.suffix in TORCH_SUFFIXES and path.suffix != ".ckpt":
        step = _record_step(path, unsafe_pickle)
    if step is None:
        raise CheckpointError(
            f"{path}: no 'step' metadata and no digits in the file name; name it like step_00000042{path.suffix}"
        )
    return step


def load_file(path: Path, unsafe_pickle: bool = False) -> Any:
    """Load one weights file of any known suffix (raw: possibly a nested dict).

    Raises:
        CheckpointError: If the format is unknown or the file cannot be read.

    """
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    if path.suffix in TORCH_SUFFIXES:
        return load_torch(path, unsafe_pickle)
    raise CheckpointError(f"{path}: unknown checkpoint format (known: .safetensors, {', '.join(TORCH_SUFFIXES)})")


def is_complete(path: Path) -> bool:
    """Whether a weights file is whole, as far as its format tells without reading the tensors.

    A safetensors file is complete when it is as long as its header says (8 bytes of header length, the JSON
    header, then the data up to the largest tensor end offset); a zip-format ``torch.save`` file when its zip
    directory, written last, is there. Files of other formats (legacy ``torch.save``) count as complete.

    Args:
        path: The file.

    Returns:
        False when the file is shorter than it declares (being written, or cut off).

    Raises:
        FileNotFoundError: If the file is gone.

    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if path.suffix == ".safetensors":
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if size < 8 + n:
                return False
            try:
                header = json.loads(f.read(n))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError):
                return True  # whole but damaged: an error when read, not a file still being written
            return size >= 8 + n + end
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format: the central directory comes last
        return zipfile.is_zipfile(path)
    return len(head) > 0


def _holds_floats(obj: Any, depth: int = 3) -> bool:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.is_floating_point()
    if depth > 0 and isinstance(obj, dict):
        return any(_holds_floats(v, depth - 1) for v in obj.values())
    return False


def not_weights(path: Path, unsafe_pickle: bool = False) -> str | None:
    """Why a torch file is training state rather than a model's weights, or None when it may be weights.

    Whatever the file is named: an optimizer ``state_dict`` (entries ``state`` and ``param_groups``), or a file
    without floating-point tensors in its top three levels (a scheduler's or a GradScaler's ``state_dict``, an RNG
    state, training arguments). Unreadable files and safetensors files (always tensors) may be weights.

    Args:
        path: The file.
        unsafe_pickle: Allow torch files that need pickle.

    Returns:
        A short reason for a note, or None.

    """
    if path.suffix not in TORCH_SUFFIXES:
        return None
    try:
        obj = load_torch(path, unsafe_pickle, mmap=True)
    except Exception:  # not zip-format (mmap needs it), needs pickle, or damaged: read it whole, or let it be
        try:
            obj = load_torch(path, unsafe_pickle)
        except Exception:
            return None
    if isinstance(obj, dict) and "state" in obj and "param_groups" in obj:
        return "an optimizer state_dict"
    if not _holds_floats(obj):
        return "no floating-point tensors"
    return None
