"""Progress of ``lca compute`` on stderr: a live bar on a terminal, plain lines in logs.

Both are :class:`~lca_cli.computation.result.ProgressReporter` objects. :class:`PlainProgress` is for stderr that is
not a terminal (cron, CI, ``nohup``, a Slurm log): a line at the start, one every ``interval`` seconds from a
background thread (also while a long pair runs) and one at the end, each starting with the local time in ISO 8601
(``2026-12-07T03:12:45+01:00``: a log read the next morning says when), with pairs done/planned, pairs/s,
gradients per pair, ETA and the flagged count, so a log shows where a run stands while it runs; a run that
stopped early says how many planned pairs are left.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lca_cli.computation.result import ProgressInfo

__all__ = ["PLAIN_INTERVAL", "BarProgress", "PlainProgress", "format_duration", "iso_now", "plain_line"]

#: Seconds between plain progress lines.
PLAIN_INTERVAL = 30.0


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``2h07m``."""
    s = round(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def iso_now() -> str:
    """The local time in ISO 8601 to the second, with its UTC offset (``2026-12-07T03:12:45+01:00``)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def plain_line(info: ProgressInfo, elapsed: float | None = None, final: bool = False) -> str:
    """One plain progress line.

    Args:
        info: The latest progress.
        elapsed: Seconds since the pair loop started (default ``info.elapsed``).
        final: The end line (no ETA).

    Returns:
        E.g. ``lca compute: 37/200 pairs (18%), 1.23 pairs/s, 2.0 gradients/pair, 0 flagged, elapsed 30s,
        ETA 2m13s``; an end line says ``finished``, or ``stopped: 37 of 200 planned pairs done, 163 left``.

    """
    t = info.elapsed if elapsed is None else elapsed
    pct = 100.0 * info.done / info.total if info.total else 100.0
    rate = info.done / t if t > 0 else 0.0
    parts = [f"lca compute: {info.done}/{info.total} pairs ({pct:.0f}%)", f"{rate:.3g} pairs/s"]
    parts.append(f"{info.gradients / info.done:.1f} gradients/pair" if info.done else "- gradients/pair")
    parts.append(f"{info.flagged} flagged")
    parts.append(f"elapsed {format_duration(t)}")
    if final:
        end = "stopped by an error" if info.failed else "finished" if info.done == info.total else "stopped"
        if info.done < info.total:  # done and planned apart, so that a log says what a rerun has left
            end += f": {info.done} of {info.total} planned pairs done, {info.total - info.done} left"
        parts.append(end)
    else:
        parts.append(f"ETA {format_duration((info.total - info.done) / rate)}" if rate > 0 else "ETA -")
    return ", ".join(parts)


class PlainProgress:
    """Plain progress lines at the start, every ``interval`` seconds and at the end.

    Args:
        write: Where a line goes (default: stderr, flushed); each line starts with :func:`iso_now`.
        interval: Seconds between lines.

    """

    def __init__(self, write: Callable[[str], None] | None = None, interval: float = PLAIN_INTERVAL) -> None:
        out = write or _stderr_line
        self.write: Callable[[str], None] = lambda line: out(f"{iso_now()} {line}")
        self.interval = interval
        self._info: ProgressInfo | None = None
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def start(self, info: ProgressInfo) -> None:
        """Print the start line and start the periodic lines."""
        self._info, self._t0 = info, time.monotonic() - info.elapsed
        self.write(
            f"lca compute: {info.total} pair(s) to compute ({info.skipped} already done) into {info.store} "
            f"on {info.device}; a progress line every {format_duration(self.interval)}"
        )
        if info.total:
            self._thread = threading.Thread(target=self._run, name="lca-progress", daemon=True)
            self._thread.start()

    def update(self, info: ProgressInfo) -> None:
        """Record the latest progress (printed at the next interval)."""
        with self._mutex:
            self._info = info

    def finish(self, info: ProgressInfo) -> None:
        """Stop the periodic lines and print the end line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            self._info = info
        if info.total:
            self.write(plain_line(info, final=True))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._mutex:
                info = self._info
            if info is not None:
                self.write(plain_line(info, elapsed=time.monotonic() - self._t0))


def _stderr_line(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class BarProgress:
    """A rich progress bar on stderr with pairs/s and ETA (for a terminal)."""

    def __init__(self) -> None:
        self._progress: Any = None
        self._task: Any = None

    def start(self, info: ProgressInfo) -> None:
        """Show the bar."""
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]lca compute"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pairs"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[flagged]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task("compute", total=info.total, rate="", flagged="")

    def update(self, info: ProgressInfo) -> None:
        """Advance the bar."""
        if self._progress is None:
            return
        speed = self._progress.tasks[0].speed
        flagged = f"{info.flagged} flagged" if info.flagged else ""
        self._progress.update(self._task, completed=info.done, rate=f"{speed:.2f}/s" if speed else "", flagged=flagged)

    def finish(self, info: ProgressInfo) -> None:
        """Close the bar."""
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None
