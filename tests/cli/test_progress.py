"""Plain progress lines for logs: their format, and a line at a steady interval while pairs run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from runs import make_tiny_run

from lca_cli.cli.progress import PlainProgress, format_duration, plain_line
from lca_cli.computation.result import ProgressInfo


def info(done: int, total: int = 200, elapsed: float = 30.0, flagged: int = 0) -> ProgressInfo:
    return ProgressInfo(done, total, 50, gradients=2 * done + 2, flagged=flagged, elapsed=elapsed,
                        store=Path("runs/x/lca.zarr"), device="cpu")  # fmt: skip


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0, 42.4, 185, 7620)] == ["0s", "42s", "3m05s", "2h07m"]


def test_plain_line() -> None:
    assert plain_line(info(40)) == (
        "lca compute: 40/200 pairs (20%), 1.33 pairs/s, 2.0 gradients/pair, 0 flagged, elapsed 30s, ETA 2m00s"
    )
    assert plain_line(info(0, elapsed=0.0)).endswith("0 flagged, elapsed 0s, ETA -")
    assert plain_line(info(200, elapsed=100.0, flagged=3), final=True) == (
        "lca compute: 200/200 pairs (100%), 2 pairs/s, 2.0 gradients/pair, 3 flagged, elapsed 1m40s, finished"
    )
    # stopped early (a signal): pairs done and pairs planned apart
    assert plain_line(info(10), final=True).endswith(", stopped: 10 of 200 planned pairs done, 190 left")
    failed = ProgressInfo(200, 200, 0, 400, 0, 10.0, Path("s.zarr"), "cpu", failed=True)  # e.g. the disk filled
    assert plain_line(failed, final=True).endswith("elapsed 10s, stopped by an error")


def test_lines_at_start_every_interval_and_end() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=0.05)
    progress.start(info(0, elapsed=0.0))
    progress.update(info(7, elapsed=0.01))
    deadline = time.time() + 10
    while len(lines) < 3 and time.time() < deadline:  # two interval lines while "a long pair runs"
        time.sleep(0.01)
    progress.finish(info(200, elapsed=0.5))
    # each line starts with the local time in ISO 8601, to the second with its offset: a log read the next morning
    stamps = [datetime.fromisoformat(line.split(" ", 1)[0]) for line in lines]
    assert all(s.tzinfo is not None and abs(time.time() - s.timestamp()) < 60 for s in stamps), lines
    lines = [line.split(" ", 1)[1] for line in lines]
    assert lines[0] == (
        "lca compute: 200 pair(s) to compute (50 already done) into runs/x/lca.zarr on cpu; a progress line every 0s"
    )
    assert all(line.startswith("lca compute: 7/200 pairs (4%), ") for line in lines[1:-1]) and len(lines) >= 4
    assert lines[-1].startswith("lca compute: 200/200 pairs (100%)") and lines[-1].endswith("finished")


def test_nothing_to_do_is_one_line() -> None:
    lines: list[str] = []
    progress = PlainProgress(lines.append, interval=0.01)
    progress.start(info(0, total=0, elapsed=0.0))
    time.sleep(0.05)
    progress.finish(info(0, total=0))
    assert len(lines) == 1 and "0 pair(s) to compute (50 already done)" in lines[0]


def test_bar_progress_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    from lca_cli.cli.progress import BarProgress

    bar = BarProgress()
    bar.start(info(0, total=3, elapsed=0.0))
    for k in (1, 2, 3):
        bar.update(info(k, total=3, flagged=1))
    bar.finish(info(3, total=3))
    err = capsys.readouterr().err
    assert "lca compute" in err and "3/3" in err and "1 flagged" in err


@pytest.mark.slow
def test_sigterm_end_lines_count_done_and_planned_pairs_apart(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=40)
    # slower pairs (same numbers), so that the signal 1.5 s after the start line finds the pair loop running
    env = {**os.environ, "LCA_TEST_PAUSE": "0.05"}
    start = (
        "import runpy, signal; signal.signal(signal.SIGTERM, signal.SIG_DFL); "
        "runpy.run_module('lca_cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", start, "compute", str(run), "--threads", "1"], stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    while " lca compute: 40 pair(s) to compute" not in (line := proc.stderr.readline()):
        assert line, f"no start line: {proc.communicate()}"
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 143, rest
    end = next(line for line in rest.splitlines() if " lca compute: " in line)
    match = re.search(r", stopped: (\d+) of 40 planned pairs done, (\d+) left$", end)
    assert match and 0 < int(match[1]) < 40 and int(match[1]) + int(match[2]) == 40, end
    summary = next(line for line in rest.splitlines() if "pair(s) computed" in line)
    assert f"{match[1]} pair(s) computed, 0 already done, 40 planned, {match[2]} not done" in summary, summary
    assert "in total" not in rest
