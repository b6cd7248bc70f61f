"""Holding a followed run's checkpoints until their pairs are stored (``--follow``), and deleting safely (``--prune``).

Staging (:class:`Staging`): a trainer that rotates its checkpoints (Hugging Face ``save_total_limit``, a
keep-last-N script) deletes them on its own schedule, often before ``lca compute --follow`` has computed their
pairs. As soon as the follower sees a checkpoint it *holds* it: each of its weight files (and a folder's shard
index) is hard-linked into ``RUN_DIR/.lca-staging/HOST-PID-TOKEN/`` (the checkpoint's own name, so a folder
keeps its file names and the fingerprint is the same), or copied once complete where a link is impossible
(another file system, a file system without hard links). A hard link is the same file: it costs no space while
the run still lists the checkpoint, and the trainer's rotation then only removes the run's name for it. The
pairs are computed from the held copy; it is released as soon as both pairs that use it are stored, and the
whole folder is removed when following ends (a folder left by a killed process is removed by the next follower
of the run on the same machine).

Backlog: at most ``limit`` checkpoints (:data:`BACKLOG_CHECKPOINTS` by default) are held for pairs not yet
stored, and the bytes held that the run itself no longer holds (rotated away, or copies) stay under a quarter of
the file system's free space when following started; three are always allowed (the pair being computed and the
next one). A checkpoint seen while the backlog is full, or deleted before it could be held, is a *hole*: its
step is still recorded in the store, its pairs are left undone and recorded in the store's ``missing_pairs``
attribute (never computed over a longer step, never guessed), and a later ``lca compute`` says which they are.

Safe deletion (:func:`delete_checkpoint`): ``--prune`` deletes only regular files discovery listed that are
direct children of a checkpoint's step folder (or the flat file itself), whose folder resolves inside the run
folder; it never follows a symlink: a symlinked step folder or file stays as it is (a note), and a shard index
entry that points elsewhere never leads to a deletion there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import struct
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli.sources import CheckpointRef
from lca_cli.sources.folders import INDEX_FILES, is_auxiliary

if TYPE_CHECKING:
    from lca_cli.store.identity import Alignment
    from lca_cli.store.lcastore import LcaStore

__all__ = [
    "BACKLOG_CHECKPOINTS",
    "MISSING_ATTR",
    "STAGING_DIR",
    "Hole",
    "Staging",
    "delete_checkpoint",
    "missing_pairs",
    "missing_rows",
    "new_fingerprints",
    "record_missing",
    "without_holes",
]

#: Folder in the run directory where followed checkpoints are held (hidden: discovery skips it).
STAGING_DIR = ".lca-staging"
#: Default backlog: checkpoints held for pairs not yet stored before new ones become holes.
BACKLOG_CHECKPOINTS = 64
#: Checkpoints always allowed whatever the byte limit (the pair being computed and the next one).
_ALWAYS = 3
#: Store attribute listing the pairs ``[step_a, step_b]`` whose checkpoints were lost while following.
MISSING_ATTR = "missing_pairs"
#: Files a per-step training folder may hold besides the weights; pruning removes them with the folder.
_FOLDER_STATE = frozenset(
    {"config.json", "generation_config.json", "trainer_state.json", "training_args.bin", *INDEX_FILES}
)


@dataclass(frozen=True)
class Hole:
    """A checkpoint the follower saw but could not hold: its step is recorded, its pairs are missing.

    Attributes:
        path: Where it was in the run.
        step: Its step.

    """

    path: Path
    step: int
    files: tuple[Path, ...] = ()

    @property
    def weight_files(self) -> tuple[Path, ...]:
        """None to read: it is gone."""
        return ()


def safetensors_complete(path: Path) -> bool:
    """Whether a ``.safetensors`` file holds every byte its header announces (a writer is done with it)."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                return False
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return size == 8 + n + max(ends, default=0)


def _complete(files: Sequence[Path], now: float, settle: float) -> bool:
    """Whether held files are complete: safetensors by their header, anything else ``settle`` s unchanged."""
    for f in files:
        if f.suffix == ".safetensors":
            if not safetensors_complete(f):
                return False
            continue
        try:
            if now - f.stat().st_mtime < settle:
                return False
        except OSError:
            return False
    return True


@dataclass
class _Held:
    original: CheckpointRef
    staged: CheckpointRef
    copied: bool
    complete: bool = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class Staging:
    """Holds a followed run's checkpoints until both their pairs are stored (see the module docstring).

    Thread-safe: the follower's watcher holds checkpoints while the writer thread releases them.

    Args:
        run: The run directory (the staging folder is made inside it).
        limit: Checkpoints held at most for pairs not yet stored.
        notes: Receives one-line notes (a copy instead of a link, holes).

    """

    def __init__(self, run: Path, limit: int = BACKLOG_CHECKPOINTS, notes: Callable[[str], None] | None = None):
        self.run = run
        self.limit = max(_ALWAYS, limit)
        self.say = notes or (lambda message: None)
        self.base = run / STAGING_DIR
        self.root = self.base / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._held: dict[int, _Held] = {}
        self._mutex = threading.Lock()
        self._disabled = False
        self._copy_said = False
        try:
            self.byte_limit = shutil.disk_usage(run).free // 4
        except OSError:
            self.byte_limit = 0
        self._remove_stale()

    def _remove_stale(self) -> None:
        """Remove what a killed follower of this run on this machine left (its process is gone)."""
        host = socket.gethostname()
        try:
            entries = list(self.base.iterdir())
        except OSError:
            return
        for entry in entries:
            pid = entry.name.rsplit("-", 2)[-2] if entry.name.count("-") >= 2 else ""
            if entry.name.startswith(f"{host}-") and pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    shutil.rmtree(entry)  # never follows a link: removes the links themselves

    # -- holding ------------------------------------------------------------------------------------------

    def backlog_full(self) -> str | None:
        """Why no more checkpoint may be held now (the backlog limit), or None."""
        with self._mutex:
            held = list(self._held.values())
        if len(held) < _ALWAYS:
            return None
        if len(held) >= self.limit:
            return f"{len(held)} checkpoints held for pairs not yet stored (backlog limit {self.limit})"
        alone = 0
        for h in held:
            for f in h.staged.weight_files:
                with contextlib.suppress(OSError):
                    st = f.stat()
                    alone += st.st_size if (h.copied or st.st_nlink == 1) else 0
        if alone > self.byte_limit:
            return (
                f"{alone / 2**30:.1f} GiB held that the run no longer holds (backlog limit "
                f"{self.byte_limit / 2**30:.1f} GiB, a quarter of the free space when following started)"
            )
        return None

    def _target(self, ref: CheckpointRef, f: Path) -> Path:
        if not ref.files:
            return self.root / ref.path.name
        rel = f.relative_to(ref.path) if f.is_relative_to(ref.path) else Path(f.name)
        return self.root / ref.path.name / rel

    def hold(self, ref: CheckpointRef, settle: float) -> str:
        """Hold a checkpoint the run lists now (a link at once; a copy once its files are complete).

        Args:
            ref: The run's checkpoint.
            settle: Seconds a file other than ``.safetensors`` must be unchanged before it is copied.

        Returns:
            ``"held"``; ``"later"`` (a copy waits until the files are complete); ``"gone"`` (it, or one of its
            files, was deleted before it could be held); ``"off"`` (the staging folder cannot be used).

        """
        if self._disabled:
            return "off"
        if ref.step in self._held:
            return "held"
        files = list(ref.weight_files)
        if ref.files:
            files += [ref.path / n for n in INDEX_FILES if (ref.path / n).is_file()]
        made: list[Path] = []
        copied = False
        try:
            for f in files:
                dest = self._target(ref, f)
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(f, dest, follow_symlinks=True)
                except FileNotFoundError:
                    raise
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                        raise
                    if not _complete([f], time.time(), settle):
                        raise _NotYet from None  # a copy must wait until the file is complete
                    shutil.copy2(f, dest)
                    copied = True
                made.append(dest)
        except _NotYet:
            for p in made:
                p.unlink(missing_ok=True)
            return "later"  # not held yet, not lost: tried again at the next look
        except FileNotFoundError:
            for p in made:
                p.unlink(missing_ok=True)
            return "gone"
        except OSError as exc:
            for p in made:
                p.unlink(missing_ok=True)
            self._disabled = True
            self.say(
                f"--follow: cannot hold checkpoints in {self.root} ({exc.strerror or exc}); computing from the run's "
                "own files (a trainer rotating them may delete some before their pairs are stored)"
            )
            return "off"
        if copied and not self._copy_said:
            self._copy_said = True
            self.say(f"--follow: {self.root} cannot hard-link the run's files: checkpoints are copied there instead")
        if ref.files:
            staged = CheckpointRef(self.root / ref.path.name, ref.step, tuple(self._target(ref, f) for f in ref.files))
        else:
            staged = CheckpointRef(self.root / ref.path.name, ref.step)
        with self._mutex:
            self._held[ref.step] = _Held(ref, staged, copied)
        return "held"

    @property
    def disabled(self) -> bool:
        """Whether the staging folder could not be used (the run's own files are read)."""
        return self._disabled

    def staged(self, step: int, now: float, settle: float) -> CheckpointRef | bool | None:
        """The held checkpoint at ``step`` once complete; False while it is still being written; None if not held."""
        with self._mutex:
            h = self._held.get(step)
        if h is None:
            return None
        if not h.complete:
            h.complete = _complete(h.staged.weight_files, now, settle)
            if not h.complete:
                return False
        return h.staged

    def release(self, step: int) -> CheckpointRef | None:
        """Both pairs of the checkpoint at ``step`` are stored: remove its held files; returns the run's ref."""
        with self._mutex:
            h = self._held.pop(step, None)
        if h is None:
            return None
        target = self.root / h.original.path.name
        with contextlib.suppress(OSError):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        return h.original

    def original(self, step: int) -> CheckpointRef | None:
        """The run's own checkpoint that the held one at ``step`` came from."""
        with self._mutex:
            h = self._held.get(step)
        return None if h is None else h.original

    def count(self) -> int:
        """Checkpoints held now."""
        with self._mutex:
            return len(self._held)

    def close(self) -> None:
        """Remove every held file and the staging folder (and ``.lca-staging`` when nothing else is in it)."""
        with self._mutex:
            self._held.clear()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.root)
        with contextlib.suppress(OSError):
            self.base.rmdir()


class _NotYet(Exception):
    """A file to copy is still being written."""


# -- holes in the store ---------------------------------------------------------------------------------------


def missing_pairs(store: LcaStore) -> list[tuple[int, int]]:
    """The pairs ``(step_a, step_b)`` the store records as missing (checkpoints lost while following)."""
    raw = store.attrs.get(MISSING_ATTR) or []
    out = []
    for item in raw if isinstance(raw, list) else []:
        if isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item):
            out.append((int(item[0]), int(item[1])))
    return out


def record_missing(store: LcaStore, rows: Sequence[int]) -> list[tuple[int, int]]:
    """Add pairs (row indices) to the store's missing pairs; returns those newly recorded, as steps."""
    steps = [int(s) for s in store.steps.tolist()]
    known = set(missing_pairs(store))
    new = [(steps[t], steps[t + 1]) for t in rows if (steps[t], steps[t + 1]) not in known]
    if new:
        store.update_attrs({MISSING_ATTR: [list(p) for p in sorted(known | set(new))]})
    return new


def missing_rows(al: Alignment, store: LcaStore, done: np.ndarray, holes: frozenset[int] = frozenset()) -> np.ndarray:
    """``(T,)`` pairs not done that cannot be computed and are known to be so.

    A pair is known missing when one of its checkpoints is gone and is a hole (``holes``: steps the follower saw
    but could not hold) or the store records the pair as missing.
    """
    n = len(al.steps) - 1
    missing = np.zeros(max(0, n), dtype=bool)
    recorded = set(missing_pairs(store))
    for t in range(n):
        a, b = al.steps[t], al.steps[t + 1]
        if al.refs[t] is None or al.refs[t + 1] is None:
            missing[t] = a in holes or b in holes or (a, b) in recorded
    return missing & ~done[:n]


def without_holes(al: Alignment, store: LcaStore, done: np.ndarray) -> tuple[Alignment, np.ndarray]:
    """The alignment with holes as gone checkpoints, and the rows known missing (holes, recorded pairs).

    Args:
        al: From :func:`lca_cli.store.identity.align` (holes among its refs).
        store: The store (its recorded missing pairs).
        done: Its done mask, grown to ``len(al.steps) - 1``.

    Returns:
        ``(alignment, missing)``: ``missing`` is ``(T,)``, True for pairs not done that cannot be computed
        and are known to be so (a hole's pairs, pairs the store records as missing).

    """
    from lca_cli.store.identity import Alignment

    holes = frozenset(r.step for r in al.refs if isinstance(r, Hole))
    clean = Alignment(al.steps, [None if isinstance(r, Hole) else r for r in al.refs], al.n_stored)
    return clean, missing_rows(clean, store, done, holes)


def new_fingerprints(al: Alignment) -> np.ndarray:
    """Fingerprints ``(len(steps), 16)`` for appending: the new checkpoints' own, zeros for stored ones and holes."""
    from lca_cli.store.identity import fingerprints

    new = al.refs[al.n_stored :]
    present = [k for k, r in enumerate(new) if r is not None]
    fps = fingerprints([new[k] for k in present])  # type: ignore[misc]
    out = np.zeros((len(al.steps), fps.shape[1]), dtype=np.uint8)
    out[[al.n_stored + k for k in present]] = fps
    return out


# -- safe deletion ----------------------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def _unlink_regular(dir_fd: int, name: str) -> bool:
    """Unlink ``name`` in the open folder only if it is a regular file there (never through a symlink)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    os.unlink(name, dir_fd=dir_fd)
    return True


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)


def delete_checkpoint(ref: Any, run: Path, say: Callable[[str], None]) -> bool:
    """Delete a checkpoint discovery listed, safely (see the module docstring).

    Args:
        ref: The run's checkpoint (a flat file, or a step folder with its weight files).
        run: The run folder: nothing outside it is deleted.
        say: Receives one-line notes (what was kept, and why).

    Returns:
        Whether the checkpoint is gone from the run's view (deleted, or already gone).

    Raises:
        OSError: If the file system refuses a deletion.

    """
    path: Path = ref.path
    if not path.parent.exists() and not path.parent.is_symlink():
        return True
    if not _inside(path.parent, run):
        say(f"--prune: kept {path}: it is outside the run folder {run}")
        return False
    if path.is_symlink():
        say(f"--prune: kept {path}: it is a symlink (lca never deletes through one)")
        return False
    if not path.exists():
        return True
    if not ref.files:  # a flat checkpoint file
        fd = _open_dir(path.parent)
        try:
            if not _unlink_regular(fd, path.name):
                say(f"--prune: kept {path}: not a regular file")
                return False
        finally:
            os.close(fd)
        return True
    fd = _open_dir(path)
    try:
        names = {f.name for f in ref.files if f.parent == path}  # direct children only: an index entry elsewhere stays
        names |= set(INDEX_FILES)
        for entry in os.listdir(fd):
            if entry in _FOLDER_STATE or is_auxiliary(entry) or entry.startswith("rng_state"):
                names.add(entry)
        for name in sorted(names):
            _unlink_regular(fd, name)
        rest = sorted(os.listdir(fd))
    finally:
        os.close(fd)
    if rest:
        kept = ", ".join(rest[:3])
        say(f"--prune: kept {kept} in {path} (not a checkpoint's files); its checkpoint files are deleted")
    else:
        path.rmdir()
    return True
