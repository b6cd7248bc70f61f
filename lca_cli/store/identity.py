"""A store's tie to its checkpoints: fingerprints, and matching a store's checkpoints to a run's files.

A store records, per checkpoint, a 16-byte fingerprint of the file its rows came from: a BLAKE2b hash of the
file's size, its first 256 KiB (a safetensors header and the first tensors), its last 64 KiB and four 64 KiB
samples spread over it (the whole file when it is at most 576 KiB). Reading ~0.5 MiB per checkpoint is cheap
beside the full read computing needs, and any other training run differs in those bytes.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from lca_cli.errors import CheckpointError, StoreError
from lca_cli.store.format import FINGERPRINT_BYTES

__all__ = ["Alignment", "align", "check_fingerprints", "fingerprint", "fingerprints"]

_HEAD = 256 << 10
_TAIL = 64 << 10
_SAMPLE = 64 << 10
_SAMPLES = 4


class _Ref(Protocol):
    @property
    def path(self) -> Path: ...

    @property
    def step(self) -> int: ...


def _file_digest(path: Path, h: hashlib.blake2b) -> None:
    size = path.stat().st_size
    h.update(size.to_bytes(8, "little"))
    with path.open("rb") as f:
        if size <= _HEAD + _TAIL + _SAMPLES * _SAMPLE:
            h.update(f.read())
            return
        h.update(f.read(_HEAD))
        for k in range(1, _SAMPLES + 1):
            f.seek(k * size // (_SAMPLES + 1))
            h.update(f.read(_SAMPLE))
        f.seek(size - _TAIL)
        h.update(f.read(_TAIL))


def fingerprint(checkpoint: Path | _Ref) -> bytes:
    """The 16-byte fingerprint of a checkpoint: its file, or the weight files of a per-step folder.

    Args:
        checkpoint: A file or folder path, or a checkpoint reference (its ``weight_files`` when it has them:
            a training folder's optimizer state or logs are not part of the weights).

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
            _file_digest(path, h)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return h.digest()


def fingerprints(paths: Sequence[Path | _Ref]) -> np.ndarray:
    """Fingerprints of several checkpoints (paths or references), read concurrently.

    Returns:
        uint8 ``(n, FINGERPRINT_BYTES)``.

    """
    out = np.zeros((len(paths), FINGERPRINT_BYTES), dtype=np.uint8)
    if not paths:
        return out
    with ThreadPoolExecutor(max_workers=min(8, len(paths)), thread_name_prefix="lca-fp") as pool:
        for i, digest in enumerate(pool.map(fingerprint, paths)):
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
    alignment: Alignment, stored: np.ndarray, indices: Sequence[int], store: Path, run: Path
) -> None:
    """Check that stored checkpoints still present are the files the store's rows came from.

    Args:
        alignment: From :func:`align`.
        stored: The store's fingerprints ``(n_stored, FINGERPRINT_BYTES)`` (all-zero rows are unknown).
        indices: Checkpoint indices to check (those this call reads, and a few more).
        store: Store path (messages).
        run: Run directory (messages).

    Raises:
        StoreError: If one differs.

    """
    todo = [
        i for i in sorted(set(indices)) if i < alignment.n_stored and alignment.refs[i] is not None and stored[i].any()
    ]
    for i in todo:
        ref = alignment.refs[i]
        try:
            fp = np.frombuffer(fingerprint(ref), dtype=np.uint8)  # type: ignore[arg-type]
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
