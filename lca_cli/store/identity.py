"""A store's tie to its checkpoints: fingerprints, and matching a store's checkpoints to a run's files.

A store records, per checkpoint, a 16-byte fingerprint of the file its rows came from: a BLAKE2b hash of the
file's size and *every* byte of it, so any change to a checkpoint a done row came from is detected (a store
never mixes two versions of a step). Stores record this in the attribute ``fingerprint_scheme`` =
``"blake2b-whole"`` (:data:`SCHEME`). Stores written before it hashed only the size, the first 256 KiB, the last
64 KiB and four 64 KiB samples (the whole file up to 576 KiB, so the two agree on small files): a byte changed
elsewhere went unnoticed. Such a store (no attribute) is checked the old way once, by the first compute that owns
it, which then records whole-content fingerprints and the attribute (:func:`upgrade`).

Hashing streams each file in 1 MiB blocks; BLAKE2b releases the GIL on them and files are hashed on up to 8
threads, so it runs at disk or page-cache speed (measured: docs/store-format.md, "Fingerprints").

Matching rules (:func:`align`), for a store being resumed or extended with the files now in the run:

* stored steps keep their order and files; new checkpoints may only come after the last stored one;
* stored checkpoints may have been deleted (keep-last-N rotation) as long as every pair still to compute has
  both ends;
* a stored checkpoint that is still present must be the same file (:func:`check_fingerprints`): otherwise
  the store belongs to another run, even with the same config.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lca_cli.errors import CheckpointError, StoreError
from lca_cli.store.format import FINGERPRINT_BYTES

__all__ = [
    "SCHEME",
    "SCHEME_ATTR",
    "Alignment",
    "align",
    "check_fingerprints",
    "fingerprint",
    "fingerprints",
    "upgrade",
    "whole_content",
]

#: The root attribute naming how a store's fingerprints were made, and its value for whole-content hashes.
SCHEME_ATTR = "fingerprint_scheme"
SCHEME = "blake2b-whole"
_BLOCK = 1 << 20
_HEAD = 256 << 10
_TAIL = 64 << 10
_SAMPLE = 64 << 10
_SAMPLES = 4


class _Ref(Protocol):
    @property
    def path(self) -> Path: ...

    @property
    def step(self) -> int: ...


def whole_content(attrs: Mapping[str, Any]) -> bool:
    """Whether a store's recorded fingerprints cover every byte (else: the sampled ones of older stores)."""
    return attrs.get(SCHEME_ATTR) == SCHEME


def _file_digest(path: Path, h: hashlib.blake2b, whole: bool = True) -> None:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(size.to_bytes(8, "little"))
        if whole or size <= _HEAD + _TAIL + _SAMPLES * _SAMPLE:
            # Every byte; the same digest as the sampled scheme's for a small file (size, then all of it).
            buf = bytearray(_BLOCK)
            view = memoryview(buf)
            while n := f.readinto(buf):
                h.update(view[:n])
            return
        h.update(f.read(_HEAD))
        for k in range(1, _SAMPLES + 1):
            f.seek(k * size // (_SAMPLES + 1))
            h.update(f.read(_SAMPLE))
        f.seek(size - _TAIL)
        h.update(f.read(_TAIL))


def fingerprint(checkpoint: Path | _Ref, whole: bool = True) -> bytes:
    """The 16-byte fingerprint of a checkpoint: its file, or the weight files of a per-step folder.

    Args:
        checkpoint: A file or folder path, or a checkpoint reference (its ``weight_files`` when it has them:
            a training folder's optimizer state or logs are not part of the weights).
        whole: Hash every byte (False: the sampled bytes of stores older than :data:`SCHEME`).

    Returns:
        The digest.

    Raises:
        CheckpointError: If it cannot be read.

    """
    root = checkpoint if isinstance(checkpoint, Path) else checkpoint.path
    files = tuple(getattr(checkpoint, "weight_files", ()) or ())
    if not files:
        files = tuple(sorted(p for p in root.rglob("*") if p.is_file())) if root.is_dir() else (root,)
    h = hashlib.blake2b(digest_size=FINGERPRINT_BYTES)
    path = root
    try:
        for path in files:
            if path != root:
                h.update(os.fsencode(path.relative_to(root) if path.is_relative_to(root) else path.name) + b"\0")
            _file_digest(path, h, whole)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return h.digest()


def fingerprints(paths: Sequence[Path | _Ref], whole: bool = True) -> np.ndarray:
    """Fingerprints of several checkpoints (paths or references), read concurrently.

    Args:
        paths: The checkpoints.
        whole: As for :func:`fingerprint`.

    Returns:
        uint8 ``(n, FINGERPRINT_BYTES)``.

    """
    out = np.zeros((len(paths), FINGERPRINT_BYTES), dtype=np.uint8)
    if not paths:
        return out
    with ThreadPoolExecutor(max_workers=min(8, len(paths)), thread_name_prefix="lca-fp") as pool:
        for i, digest in enumerate(pool.map(lambda p: fingerprint(p, whole), paths)):
            out[i] = np.frombuffer(digest, dtype=np.uint8)
    return out


@dataclass(frozen=True)
class Alignment:
    """The store's checkpoints after this call, and the run's file for each (None: deleted).

    Attributes:
        steps: Steps of every checkpoint: the stored ones, then the new ones.
        refs: The run's checkpoint for each index, or None where it was deleted.
        n_stored: How many of ``steps`` were already in the store.

    """

    steps: list[int]
    refs: list[_Ref | None]
    n_stored: int

    def missing_for(self, done: np.ndarray) -> list[tuple[int, int]]:
        """``(pair, checkpoint index)`` for every pair not done whose end checkpoint is gone."""
        out = []
        for t in np.flatnonzero(~done[: len(self.steps) - 1]):
            for i in (int(t), int(t) + 1):
                if self.refs[i] is None:
                    out.append((int(t), i))
        return out


def align(stored: np.ndarray, refs: Sequence[_Ref], store: Path, run: Path) -> Alignment:
    """Match a store's stored steps with the checkpoints now in the run.

    Args:
        stored: The store's steps ``(T + 1,)``.
        refs: The run's checkpoints in step order.
        store: Store path (messages).
        run: Run directory (messages).

    Returns:
        The alignment (new checkpoints appended after the stored ones).

    Raises:
        StoreError: If a checkpoint appeared between stored steps (the run's history changed).

    """
    pos = {int(s): i for i, s in enumerate(stored.tolist())}
    last = int(stored[-1])
    by_index: list[_Ref | None] = [None] * len(stored)
    new: list[_Ref] = []
    for ref in refs:
        if ref.step in pos:
            by_index[pos[ref.step]] = ref
        elif ref.step > last:
            new.append(ref)
        else:
            raise StoreError(
                f"{store} was computed over steps {int(stored[0])}..{last} ({len(stored)} checkpoints) and {run} "
                f"now has a checkpoint at step {ref.step} ({ref.path.name}) between them: the run's history changed; "
                "use --out for a new store, or --overwrite to recompute this one"
            )
    steps = [int(s) for s in stored.tolist()] + [r.step for r in new]
    return Alignment(steps, [*by_index, *new], len(stored))


def check_fingerprints(
    alignment: Alignment, stored: np.ndarray, indices: Sequence[int], store: Path, run: Path, whole: bool = True
) -> None:
    """Check that stored checkpoints still present are the files the store's rows came from.

    Args:
        alignment: From :func:`align`.
        stored: The store's fingerprints ``(n_stored, FINGERPRINT_BYTES)`` (all-zero rows are unknown).
        indices: Checkpoint indices to check (those this call reads, and a few more).
        store: Store path (messages).
        run: Run directory (messages).
        whole: The store's fingerprints cover every byte (:func:`whole_content`); False for older stores.

    Raises:
        StoreError: If one differs.

    """
    todo = [
        i for i in sorted(set(indices)) if i < alignment.n_stored and alignment.refs[i] is not None and stored[i].any()
    ]
    for i in todo:
        ref = alignment.refs[i]
        try:
            fp = np.frombuffer(fingerprint(ref, whole), dtype=np.uint8)  # type: ignore[arg-type]
        except CheckpointError:
            # Gone since the run was listed: pruned or rotated by the process that owns the store (this one is
            # joining it); a deleted checkpoint is allowed here, only a different file is not.
            if not Path(ref.path).exists():  # type: ignore[union-attr]
                continue
            raise
        if not np.array_equal(fp, stored[i]):
            raise StoreError(
                f"{store} was computed from other checkpoints: {ref.path} (step {alignment.steps[i]}) "  # type: ignore[union-attr]
                "is not the file its rows came from (another or a retrained run?); use --out for a new store, "
                f"or --overwrite to recompute it from the checkpoints now in {run}"
            )


class _Recording(Protocol):
    attrs: dict[str, Any]

    def set_fingerprints(self, indices: Sequence[int], values: np.ndarray) -> None: ...

    def update_attrs(self, attrs: dict[str, Any]) -> None: ...


def upgrade(store: _Recording, alignment: Alignment) -> None:
    """Record whole-content fingerprints in a store that has sampled ones (its checkpoints already checked).

    Called by the store's owner after :func:`check_fingerprints` passed with ``whole=False``: the checkpoints now
    present are recorded by every byte, those gone (rotated away) become unknown (all zeros: never checked), and
    :data:`SCHEME_ATTR` says so. From then on a change anywhere in a used checkpoint is caught.

    Args:
        store: An :class:`~lca_cli.store.lcastore.LcaStore` open for writing.
        alignment: Its checkpoints and the run's file for each.

    """
    if whole_content(store.attrs):
        return
    n = alignment.n_stored
    present = [i for i in range(n) if alignment.refs[i] is not None]
    values = np.zeros((n, FINGERPRINT_BYTES), np.uint8)
    values[present] = fingerprints([alignment.refs[i] for i in present])  # type: ignore[misc]
    store.set_fingerprints(list(range(n)), values)
    store.update_attrs({SCHEME_ATTR: SCHEME})
