"""Evaluation data given on the command line (``lca compute RUN --data PATH``), with no data factory.

``PATH`` is a ``.safetensors`` file or a ``.pt`` / ``.pth`` / ``.bin`` ``torch.save`` file of named tensors
(``input_ids``, ``attention_mask``, ``labels``, ...: the keyword inputs of a Hugging Face model, ``labels``
becoming the targets), or a folder a ``datasets.Dataset`` was saved into with ``save_to_disk`` (its numeric
columns, padded to one length). :func:`data_spec` turns the path into the factory of a ``[data]`` table, so the
store records the data as it records any factory, and :func:`load_data` is that factory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lca_cli.computation.config import FactorySpec
from lca_cli.errors import ConfigError, UsageError

__all__ = ["DATA_SUFFIXES", "data_spec", "load_data"]

#: File suffixes ``--data`` reads as named tensors.
DATA_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
#: The extra that installs the ``datasets`` library.
DATASETS_EXTRA = "pip install 'lca-cli[hf]'"


def data_spec(path: str | Path) -> FactorySpec:
    """The ``[data]`` factory of ``--data PATH`` (the path made absolute, so lca may run from any folder).

    Raises:
        UsageError: If the path is neither a file of a known suffix nor a folder.

    """
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"--data {path}: no such file or folder")
    if p.is_file() and p.suffix not in DATA_SUFFIXES:
        raise UsageError(
            f"--data {path}: expected a {', '.join(DATA_SUFFIXES)} file of named tensors or a datasets folder "
            "saved with save_to_disk"
        )
    return FactorySpec("lca_cli.computation.datafiles:load_data", {"path": str(p.resolve())})


def _from_file(p: Path) -> Any:
    import torch

    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"--data {p}: not a readable safetensors file ({exc})") from None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways (pickle, zip, EOF): report it as the data's problem
        raise ConfigError(f"--data {p}: not a torch file of tensors ({type(exc).__name__}: {exc})") from None


def _from_dataset(p: Path) -> dict[str, Any]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"--data {p} is a folder, read as a datasets folder saved with save_to_disk: the datasets library is "
            f"not installed ({DATASETS_EXTRA}); or save the tensors to a .safetensors file"
        ) from None
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for a folder it cannot read
        raise ConfigError(f"--data {p}: not a datasets folder saved with save_to_disk ({exc})") from None
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            splits = ", ".join(ds)
            raise ConfigError(f"--data {p} holds the splits {splits}; pass one split's folder ({p}/SPLIT)")
        ds = next(iter(ds.values()))
    numeric = []
    for name in ds.column_names:
        feature = ds.features[name]
        dtype = getattr(feature, "dtype", None) or getattr(getattr(feature, "feature", None), "dtype", None)
        if dtype is not None and dtype not in ("string", "large_string"):
            numeric.append(name)  # text columns are no model input; the token columns are
    if not numeric:
        raise ConfigError(f"--data {p}: no numeric columns (tokenize the text and save input_ids, labels, ...)")
    columns: dict[str, Any] = ds.with_format("torch", columns=numeric)[:]  # every row, a tensor per column
    return columns


def load_data(path: str) -> Any:
    """Load ``--data``'s named tensors (a data factory: what it returns is an evaluation set's dict form).

    Args:
        path: The file or ``datasets`` folder.

    Returns:
        A dict of tensors (``labels``, if present, becomes the targets).

    Raises:
        ConfigError: If it cannot be read or holds no named tensors.

    """
    p = Path(path)
    obj = _from_dataset(p) if p.is_dir() else _from_file(p)
    if not isinstance(obj, dict) or not obj:
        raise ConfigError(
            f"--data {p}: expected named tensors (input_ids, attention_mask, labels, ...), found a {type(obj).__name__}"
        )
    return obj
