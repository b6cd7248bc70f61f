"""What a store takes on disk once every row is done, read from the store itself (``lca compute --dry-run``).

Every array counts (``lca``, the per-row and per-tensor arrays, ``loss``, the coordinates ``steps``,
``fingerprint``, ``checkpoint``, ``iteration``, ``tensor``, ``layer`` and ``lca``'s column coordinate, e.g. the
int32 ``parameter_tensor``, 4 bytes a parameter), with its metadata. The arrays are uncompressed (a CRC-32C per
chunk, :func:`~lca_cli.store.chunks.codecs`), so a fixed-size array takes ``chunks x (chunk bytes + 4)`` once
every chunk is written; the variable-length string coordinates are written whole when the store is created and
count as they are on disk. Chunks left at their fill value are not written, so a complete store may take a little
less (e.g. ``flagged`` chunks with no flagged pair): the figure is an upper bound that the ``lca`` rows reach
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import zarr

from lca_cli.store.chunks import chunk_size

__all__ = ["StoreSize", "complete_size"]


@dataclass(frozen=True)
class StoreSize:
    """Bytes of a complete store.

    Attributes:
        total: Every file: each array's chunks and every ``zarr.json``.
        lca: The ``lca`` arrays alone (every set).
        arrays: Per array path (``"train/lca"``, ``"steps"``...), its chunks' bytes.

    """

    total: int
    lca: int
    arrays: dict[str, int]


def _files_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json")


def complete_size(path: str | Path) -> StoreSize:
    """Bytes the store at ``path`` takes once every row is done (its shapes and chunks as they are now).

    Args:
        path: An lca store (any number of rows done).

    Returns:
        The sizes.

    """
    root_path = Path(path)
    root = zarr.open_group(str(root_path), mode="r", use_consolidated=False)
    arrays: dict[str, int] = {}

    def walk(group: zarr.Group, prefix: str) -> None:
        for name, member in group.members():
            key = f"{prefix}{name}"
            if isinstance(member, zarr.Group):
                walk(member, key + "/")
                continue
            size = chunk_size(member)  # every chunk file's bytes, for raw chunks (every fixed-size array lca makes)
            if size is None:  # variable-length strings: written whole at creation
                arrays[key] = _files_bytes(root_path / key)
                continue
            grid = math.prod(math.ceil(n / c) for n, c in zip(member.shape, member.chunks, strict=True))
            arrays[key] = grid * size

    walk(root, "")
    metadata = sum(p.stat().st_size for p in root_path.rglob("zarr.json"))
    lca = sum(v for k, v in arrays.items() if k.rsplit("/", 1)[-1] == "lca")
    return StoreSize(total=sum(arrays.values()) + metadata, lca=lca, arrays=arrays)
