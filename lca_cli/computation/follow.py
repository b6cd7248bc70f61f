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

from lca_cli.computation.staging import BACKLOG_CHECKPOINTS, Hole, Staging, delete_checkpoint
from lca_cli.errors import CheckpointError, CheckpointRefused, ConfigError, RunDirError
from lca_cli.sources import CheckpointRef, find_checkpoints
from lca_cli.sources.base import listing
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
    "wait_until",
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
    wait_until(path.exists, timeout, stop, f"config file {path} not found", poll)


def wait_until(
    ready: Callable[[], bool], timeout: float, stop: threading.Event | None, missing: str, poll: float = POLL_SECONDS
) -> None:
    """Wait until ``ready()`` holds: what a run needs before its first pair has been written by training.

    Args:
        ready: Checked every ``poll`` seconds.
        timeout: Seconds to wait at most.
        stop: Ends the wait early (a signal), as a timeout does.
        missing: What is missing, for the error (``"config file runs/x/lca.toml not found"``).
        poll: Seconds between checks.

    Raises:
        ConfigError: If ``ready()`` does not hold within ``timeout`` seconds (or ``stop`` is set).

    """
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            raise ConfigError(f"{missing} (waited {timeout:.0f} s for training to write it)")
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
    """Watches a run directory for new checkpoints while ``lca compute --follow`` runs, holding each one it sees.

    A watcher thread looks at the run every ``poll`` seconds, also while pairs are computed, and holds every
    new checkpoint at once (:class:`~lca_cli.computation.staging.Staging`), so a trainer's rotation cannot take
    it away before its pairs are stored; :meth:`release` lets one go. Call :meth:`close` at the end.

    Args:
        run: The run directory.
        until: Stop once the pairs starting before this step are done (and a checkpoint at or past it exists).
        idle_timeout: Stop after this many seconds without a new checkpoint.
        stop: Ends waiting when set.
        unsafe_pickle: As for :func:`lca_cli.sources.find_checkpoints`.
        settle: See :data:`SETTLE_SECONDS`.
        poll: See :data:`POLL_SECONDS`.
        notes: Receives one-line notes for the user.
        backlog: Checkpoints held at most for pairs not yet stored (:data:`BACKLOG_CHECKPOINTS`).
        hold: Hold checkpoints in a staging folder (off: read the run's own files, as they are).

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
        backlog: int = BACKLOG_CHECKPOINTS,
        hold: bool = True,
    ) -> None:
        self.run = run
        self.until = until
        self.idle_timeout = idle_timeout
        self.stop = stop
        self.unsafe_pickle = unsafe_pickle
        self.settle = settle
        self.poll = poll
        self.say = notes or (lambda message: None)
        self.backlog = backlog
        self._seen = _Seen(changed=time.monotonic())
        self._unreadable: dict[str, float] = {}
        self.staging = Staging(run, backlog, self.say) if hold else None
        #: Steps seen: True where held (or, without staging, listed), a :class:`Hole` where lost.
        self._known: dict[int, CheckpointRef | Hole | None] = {}
        self._direct: list[CheckpointRef] = []
        self._error: BaseException | None = None
        self._behind: str | None = None  # why checkpoints are not held now (the backlog is full)
        self._lost: list[int] = []
        self._look_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holes(self) -> frozenset[int]:
        """Steps seen but not held (their pairs are missing)."""
        with self._look_lock:
            return frozenset(s for s, r in self._known.items() if isinstance(r, Hole))

    def _sleep(self) -> None:
        if self.stop is not None:
            self.stop.wait(self.poll)
        else:
            time.sleep(self.poll)

    def _stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    # -- the watcher ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start looking at the run in the background (holding checkpoints while pairs are computed)."""
        if self._thread is None and self.staging is not None:
            self._thread = threading.Thread(target=self._watch, name="lca-follow", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._closed.wait(self.poll):
            if self._stopped():
                return
            self._look()

    def close(self) -> None:
        """Stop watching and remove every held checkpoint (the staging folder)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        if self.staging is not None:
            self.staging.close()

    def release(self, step: int) -> CheckpointRef | None:
        """Both pairs of the checkpoint at ``step`` are stored: let it go; returns the run's own checkpoint."""
        if self.staging is None:
            return None
        return self.staging.release(step)

    def _look(self) -> None:
        """List the run once and hold the checkpoints not seen before (watcher thread or caller)."""
        with self._look_lock:
            try:
                refs = find_checkpoints(self.run, unsafe_pickle=self.unsafe_pickle)
            except CheckpointRefused as exc:  # what its files say: waiting cannot fix it
                self._error = exc
                return
            except CheckpointError as exc:
                # Most likely a file being written in place (torch.save): wait, unless it stays broken.
                first = self._unreadable.setdefault(str(exc), time.monotonic())
                if time.monotonic() - first > max(self.idle_timeout, 4 * self.settle):
                    self._error = exc
                return
            except RunDirError as exc:
                if self.run.exists():
                    self._error = exc
                return
            except OSError:
                return  # a folder rotated away while it was listed: look again
            self._unreadable.clear()
            self._direct = refs
            if self.staging is None or self.staging.disabled:
                return
            new = [r for r in refs if r.step not in self._known]
            if self._known and new:
                last = max(self._known)
                new = [r for r in new if r.step > last]  # an older step appearing later is the store's concern
            for ref in new:
                if self._past_until(ref.step):
                    break
                self._hold(ref)
            if new:
                self._seen.changed = time.monotonic()

    def _past_until(self, step: int) -> bool:
        """A checkpoint at or past ``until`` is held already: later ones are not this call's."""
        return self.until is not None and any(s >= self.until for s in self._known) and step > self.until

    def _hold(self, ref: CheckpointRef) -> None:
        assert self.staging is not None
        behind = self.staging.backlog_full()
        outcome = "behind" if behind is not None else self.staging.hold(ref, self.settle)
        if outcome == "later" or outcome == "off":
            return
        if outcome == "held":
            self._known[ref.step] = ref
            if self._behind is not None:
                self.say(
                    f"--follow: caught up; holding checkpoints again from step {ref.step} ({len(self._lost)} "
                    f"missed: step(s) {_steps(self._lost)}; their pairs are recorded as missing)"
                )
                self._behind, self._lost = None, []
            return
        self._known[ref.step] = Hole(ref.path, ref.step)
        self._lost.append(ref.step)
        if outcome == "gone":
            self.say(f"--follow: {ref.path} was deleted before it could be held; its pairs are recorded as missing")
        elif self._behind is None:
            self._behind = behind
            self.say(
                f"--follow: falling behind training: {behind}; step {ref.step} and the next checkpoints are not "
                "held until pairs are stored, and their pairs are recorded as missing (never computed over a longer "
                "step)"
            )

    # -- what the loop asks -----------------------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointRef]:
        """The run's complete checkpoints now (a newer one still being written ends the list before it).

        Held checkpoints are given as held (in the staging folder); a checkpoint seen but lost is a
        :class:`Hole`; one released (both its pairs stored) is no longer listed.

        Raises:
            CheckpointError: If a checkpoint stays unreadable past the idle timeout.

        """
        self._look()
        if self._error is not None:
            raise self._error
        now = time.time()
        refs: list[Any] = []
        if self.staging is None or self.staging.disabled:
            for ref in self._direct:
                if not _settled(ref, now, self.settle):
                    break
                refs.append(ref)
        else:
            with self._look_lock:
                known = sorted(self._known.items())
            for step, seen in known:
                if isinstance(seen, Hole):
                    refs.append(seen)
                    continue
                staged = self.staging.staged(step, now, self.settle)
                if staged is False:
                    break  # still being written
                if staged is not None:
                    refs.append(staged)
        steps = tuple(r.step for r in refs)
        if steps != self._seen.steps:
            if set(steps) - set(self._seen.steps):
                self._seen.changed = time.monotonic()
            self._seen.steps = steps
        return refs

    def _forget(self, upto: int) -> None:
        """Steps up to ``upto`` are not the store's (lost before it was made): let them go."""
        with self._look_lock:
            for step in [s for s in self._known if s <= upto]:
                del self._known[step]
                self.release(step)
            self._lost = [s for s in self._lost if s > upto]

    def wait_for_start(self) -> list[CheckpointRef]:
        """Wait until the run holds two complete checkpoints (or the idle timeout passes) and return them.

        A store starts after the last hole (a checkpoint lost before the store existed): its pairs before it are
        not this store's, and a note says so.
        """
        self.start()
        while True:
            refs = self.checkpoints()
            holes = [k for k, r in enumerate(refs) if isinstance(r, Hole)]
            lost: list[Any] = []
            if holes:
                lost, refs = refs[: holes[-1] + 1], refs[holes[-1] + 1 :]
                self._forget(lost[-1].step)
            if len(refs) >= 2 or self._stopped() or self.idle() is not None or read_end_marker(self.run) is not None:
                if holes:
                    self.say(
                        f"--follow: the store starts at step {refs[0].step if refs else '?'}: step(s) "
                        f"{_steps([r.step for r in lost])} were lost before it was made"
                    )
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
    """Lets go of checkpoints whose pairs are all durably stored, never the newest (see the module docstring).

    Letting go is releasing the held copy (``release``, following) and, with ``prune``, deleting the run's own
    checkpoint (:func:`~lca_cli.computation.staging.delete_checkpoint`: regular files discovery listed, inside
    the run folder, never through a symlink).

    It keeps its own view of the done rows: the rows the pipeline reports written (:meth:`written`, called
    from the writer thread once they are durable) and, every :data:`REFRESH_SECONDS`, the store's done mask
    (rows other processes wrote). Only checkpoints next to newly done rows are looked at, so pruning costs
    nothing that grows with the run's length per chunk.

    Args:
        store: The store.
        alignment: The store's checkpoints and the run's file for each.
        notes: Receives one-line notes (a folder kept because it holds other files).
        run: The run folder (nothing outside it is deleted); default: each checkpoint's parent folder.
        prune: Delete the run's checkpoints (``--prune``); off: only release held copies.
        release: Releases a held checkpoint by step and returns the run's own one (None: not held).

    """

    def __init__(
        self,
        store: LcaStore,
        alignment: Alignment,
        notes: Callable[[str], None] | None = None,
        *,
        run: Path | None = None,
        prune: bool = True,
        release: Callable[[int], CheckpointRef | None] | None = None,
    ) -> None:
        self.store = store
        self.say = notes or (lambda message: None)
        self.run = run
        self.prune_files = prune
        self.release = release
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
            self.deleted += count if self.prune_files else 0
            return count

    def _delete(self, ref: CheckpointRef) -> bool:
        original = (self.release(ref.step) if self.release is not None else None) or ref
        if not self.prune_files:
            return True
        try:
            return delete_checkpoint(original, self.run or original.path.parent, self.say)
        except OSError as exc:
            self.say(f"--prune: could not delete {original.path} ({exc.strerror or exc}); it stays")
            return False


def _steps(steps: Sequence[int]) -> str:
    """``3, 4, 5 (+12 more)`` for notes."""
    return listing([str(s) for s in steps])
