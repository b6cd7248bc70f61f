"""Long runs under a disk budget: compute pairs as checkpoints arrive (``--follow``), delete used ones (``--prune``).

Following (:class:`Follower`): ``lca compute --follow`` looks at the run every :data:`POLL_SECONDS`, appends
the checkpoints that arrived to the store and computes their pairs, until

* ``--until STEP``: a checkpoint at or past STEP exists and every pair starting before STEP is done;
* the end marker :data:`END_MARKER` (``RUN_DIR/lca.end``, written by :meth:`CheckpointWriter.close` and so by
  the Hugging Face and Lightning callbacks at the end of training; any writer may create it) is there and
  every pair of the checkpoints present is done;
* ``--idle-timeout SECONDS`` passed without a new checkpoint (and everything present is done).

A checkpoint still being written is not used yet: a flat ``.safetensors`` file is complete once it can be
listed (discovery reads its header, and safetensors refuses a file shorter than its header says); every other
checkpoint (``torch.save`` files, per-step folders) once its files have not changed for :data:`SETTLE_SECONDS`.
A checkpoint that cannot be read while it is young is waited for, not an error.

Pruning (:class:`Pruner`): once every pair that needs a checkpoint is durably stored (``done`` is written after
the rows are fsynced) the checkpoint is deleted, except the newest one. Only what the run's checkpoint
discovery (:mod:`lca_cli.sources`) listed as a checkpoint is deleted: a flat checkpoint file, or in a per-step
folder its weight files, shard index and the training state such a folder holds (optimizer, scheduler, RNG,
trainer state and arguments, model config), then the folder when nothing else is left in it; any other file
stays, with a note.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lca_cli.errors import CheckpointError, ConfigError, RunDirError
from lca_cli.sources import CheckpointRef, find_checkpoints
from lca_cli.sources.folders import INDEX_FILES, is_auxiliary
from lca_cli.store.identity import Alignment

if TYPE_CHECKING:  # the checkpoint writer imports this module: it must not pull Zarr into training scripts
    from lca_cli.store.lcastore import LcaStore

__all__ = [
    "END_MARKER",
    "IDLE_TIMEOUT_SECONDS",
    "POLL_SECONDS",
    "SETTLE_SECONDS",
    "Follower",
    "Pruner",
    "read_end_marker",
    "wait_for_file",
    "write_end_marker",
]

#: File a checkpoint writer leaves in the run directory when training ends (JSON: the last step).
END_MARKER = "lca.end"
#: Seconds between looks at the run directory while following.
POLL_SECONDS = 1.0
#: A checkpoint other than a flat ``.safetensors`` file is used once its files are this old.
SETTLE_SECONDS = 2.0
#: Default ``--idle-timeout``: training that wrote no checkpoint for this long has probably stopped.
IDLE_TIMEOUT_SECONDS = 1800.0
#: How often the pruner reads the store's done mask for rows other processes wrote.
REFRESH_SECONDS = 30.0
#: Files a per-step training folder may hold besides the weights; pruning removes them with the folder.
_FOLDER_STATE = frozenset(
    {"config.json", "generation_config.json", "trainer_state.json", "training_args.bin", *INDEX_FILES}
)


def write_end_marker(run_dir: Path, last_step: int | None) -> Path:
    """Write ``RUN_DIR/lca.end``: training ended (atomically: a follower never reads half of it).

    Args:
        run_dir: The run directory.
        last_step: The last step saved, if any.

    Returns:
        The marker's path.

    """
    path = run_dir / END_MARKER
    tmp = run_dir / f".{END_MARKER}.partial"
    tmp.write_text(json.dumps({"last_step": last_step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    os.replace(tmp, path)
    return path


def read_end_marker(run_dir: Path) -> dict[str, Any] | None:
    """The end marker's content (``{"last_step": ...}``; ``{}`` for an empty file), or None when absent."""
    path = run_dir / END_MARKER
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError:
        doc = {}
    return doc if isinstance(doc, dict) else {}


def wait_for_file(path: Path, timeout: float, stop: threading.Event | None, poll: float = POLL_SECONDS) -> None:
    """Wait for ``path`` to exist (``lca compute --follow`` started before training wrote ``lca.toml``).

    Raises:
        ConfigError: If it does not appear within ``timeout`` seconds (or ``stop`` is set).

    """
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            raise ConfigError(f"config file {path} not found (waited {timeout:.0f} s for training to write it)")
        time.sleep(poll) if stop is None else stop.wait(poll)


def _settled(ref: CheckpointRef, now: float, settle: float) -> bool:
    """Whether a checkpoint's files are complete (see the module docstring)."""
    if not ref.files and ref.path.suffix == ".safetensors":
        return True  # discovery read its header, and a short file fails that
    try:
        newest = max(p.stat().st_mtime for p in (*ref.weight_files, ref.path))
    except OSError:
        return False
    return now - newest >= settle


@dataclass
class _Seen:
    """What the follower saw last: the steps listed and when a new one last appeared."""

    steps: tuple[int, ...] = ()
    changed: float = 0.0


class Follower:
    """Watches a run directory for new checkpoints while ``lca compute --follow`` runs.

    Args:
        run: The run directory.
        until: Stop once the pairs starting before this step are done (and a checkpoint at or past it exists).
        idle_timeout: Stop after this many seconds without a new checkpoint.
        stop: Ends waiting when set.
        unsafe_pickle: As for :func:`lca_cli.sources.find_checkpoints`.
        settle: See :data:`SETTLE_SECONDS`.
        poll: See :data:`POLL_SECONDS`.
        notes: Receives one-line notes for the user.

    """

    def __init__(
        self,
        run: Path,
        *,
        until: int | None = None,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        stop: threading.Event | None = None,
        unsafe_pickle: bool = False,
        settle: float = SETTLE_SECONDS,
        poll: float = POLL_SECONDS,
        notes: Callable[[str], None] | None = None,
    ) -> None:
        self.run = run
        self.until = until
        self.idle_timeout = idle_timeout
        self.stop = stop
        self.unsafe_pickle = unsafe_pickle
        self.settle = settle
        self.poll = poll
        self.say = notes or (lambda message: None)
        self._seen = _Seen(changed=time.monotonic())
        self._unreadable: dict[str, float] = {}

    def _sleep(self) -> None:
        if self.stop is not None:
            self.stop.wait(self.poll)
        else:
            time.sleep(self.poll)

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def checkpoints(self) -> list[CheckpointRef]:
        """The run's complete checkpoints now (a newer one still being written ends the list before it).

        Raises:
            CheckpointError: If a checkpoint stays unreadable past the idle timeout.

        """
        try:
            refs = find_checkpoints(self.run, unsafe_pickle=self.unsafe_pickle)
        except CheckpointError as exc:
            # Most likely a file being written in place (torch.save): wait, unless it stays broken.
            first = self._unreadable.setdefault(str(exc), time.monotonic())
            if time.monotonic() - first > max(self.idle_timeout, 4 * self.settle):
                raise
            return []
        except RunDirError:
            if self.run.exists():
                raise
            return []
        self._unreadable.clear()
        now = time.time()
        for k, ref in enumerate(refs):
            if not _settled(ref, now, self.settle):
                refs = refs[:k]
                break
        steps = tuple(r.step for r in refs)
        if steps != self._seen.steps:
            if set(steps) - set(self._seen.steps):
                self._seen.changed = time.monotonic()
            self._seen.steps = steps
        return refs

    def wait_for_start(self) -> list[CheckpointRef]:
        """Wait until the run holds two complete checkpoints (or the idle timeout passes) and return them."""
        while True:
            refs = self.checkpoints()
            if len(refs) >= 2 or self._stopped() or self.idle() is not None or read_end_marker(self.run) is not None:
                return refs
            self._sleep()

    def idle(self) -> str | None:
        """A note when no new checkpoint arrived for the idle timeout, else None."""
        waited = time.monotonic() - self._seen.changed
        if waited >= self.idle_timeout:
            return f"no new checkpoint in {self.run} for {waited:.0f} s (--idle-timeout): stopped following"
        return None

    def finished(self, steps: Sequence[int], done: np.ndarray) -> str | None:
        """Why following should stop now (a note), or None to keep going.

        Args:
            steps: The store's checkpoint steps.
            done: Its done mask ``(T,)``, pairs outside the call's scope counted as done.

        """
        starts = np.asarray(steps[:-1])
        reached = self.until is not None and bool(steps) and steps[-1] >= self.until
        if reached and bool(done[starts < self.until].all()):
            return f"every pair before step {self.until} is done (--until)"
        marker = read_end_marker(self.run)
        if marker is not None and bool(done.all()):
            last = marker.get("last_step")
            if not isinstance(last, int) or (steps and steps[-1] >= last):
                return f"training ended ({self.run / END_MARKER}) and every pair is done"
        return None

    def wait_for_more(self, steps: Sequence[int], done: Callable[[], np.ndarray]) -> list[CheckpointRef] | str:
        """Wait until checkpoints past the store's last one are complete, or following should end.

        Args:
            steps: The store's checkpoint steps now.
            done: Reads the store's done mask (fresh; pairs outside the call's scope counted as done).

        Returns:
            The run's checkpoints (some newer than ``steps[-1]``), or the note saying why following ends.

        """
        while True:
            refs = self.checkpoints()
            if refs and refs[-1].step > steps[-1]:
                return refs
            reason = self.finished(steps, done()) or self.idle()
            if reason is not None:
                return reason
            if self._stopped():
                return "stopped"
            self._sleep()


class Pruner:
    """Deletes checkpoints whose pairs are all durably stored, never the newest (see the module docstring).

    It keeps its own view of the done rows: the rows the pipeline reports written (:meth:`written`, called
    from the writer thread once they are durable) and, every :data:`REFRESH_SECONDS`, the store's done mask
    (rows other processes wrote). Only checkpoints next to newly done rows are looked at, so pruning costs
    nothing that grows with the run's length per chunk.

    Args:
        store: The store.
        alignment: The store's checkpoints and the run's file for each.
        notes: Receives one-line notes (a folder kept because it holds other files).

    """

    def __init__(self, store: LcaStore, alignment: Alignment, notes: Callable[[str], None] | None = None) -> None:
        self.store = store
        self.say = notes or (lambda message: None)
        self.deleted = 0
        self._refs: list[Any] = []
        self._known = np.zeros(0, dtype=bool)
        self._refreshed = 0.0
        self._mutex = threading.Lock()
        self.update(alignment)

    def update(self, alignment: Alignment) -> None:
        """The store's checkpoints changed (appended, or some found deleted)."""
        with self._mutex:
            self._refs = list(alignment.refs)
            n = max(0, len(self._refs) - 1)
            self._known = np.concatenate([self._known[:n], np.zeros(max(0, n - len(self._known)), dtype=bool)])

    def written(self, rows: Sequence[range]) -> int:
        """These rows are durably stored: delete the checkpoints that no pair needs any more.

        Returns:
            How many were deleted.

        """
        with self._mutex:
            for r in rows:
                self._known[r.start : r.stop] = True
            near = {i for r in rows for i in range(r.start, r.stop + 1)}
        count = self._prune(sorted(near))
        if time.monotonic() - self._refreshed >= REFRESH_SECONDS:
            count += self.refresh()
        return count

    def refresh(self) -> int:
        """Read the store's done mask (rows other processes wrote) and prune everything it allows."""
        done = self.store.done()
        with self._mutex:
            n = min(len(done), len(self._known))
            self._known[:n] |= done[:n]
            self._refreshed = time.monotonic()
            indices = [i for i, r in enumerate(self._refs) if r is not None]
        return self._prune(indices)

    def prune(self) -> int:
        """Prune every checkpoint the store's done mask allows (:meth:`refresh`); returns how many."""
        return self.refresh()

    def _prune(self, indices: Sequence[int]) -> int:
        with self._mutex:
            refs, known = self._refs, self._known
            newest = next((i for i in reversed(range(len(refs))) if refs[i] is not None), -1)
            n = len(known)
            count = 0
            for i in indices:
                if i >= len(refs) or refs[i] is None or i == newest:
                    continue
                if (i >= 1 and not known[i - 1]) or (i < n and not known[i]):
                    continue  # a pair that uses it is not stored yet
                if self._delete(refs[i]):
                    refs[i] = None
                    count += 1
            self.deleted += count
            return count

    def _delete(self, ref: CheckpointRef) -> bool:
        path = ref.path
        try:
            if not ref.files:  # a flat checkpoint file
                path.unlink()
                return True
            for f in ref.files:
                f.unlink(missing_ok=True)
            for name in INDEX_FILES:
                (path / name).unlink(missing_ok=True)
            for p in path.iterdir():
                if p.is_file() and (p.name in _FOLDER_STATE or is_auxiliary(p.name) or p.name.startswith("rng_state")):
                    p.unlink()
            rest = sorted(p.name for p in path.iterdir())
            if rest:
                kept = ", ".join(rest[:3])
                self.say(f"--prune: kept {kept} in {path} (not a checkpoint's files); its checkpoint files are deleted")
            else:
                path.rmdir()
            return True
        except FileNotFoundError:
            return True  # gone already
        except OSError as exc:
            self.say(f"--prune: could not delete {path} ({exc.strerror or exc}); it stays")
            return False
