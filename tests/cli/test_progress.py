"""Plain progress lines for logs: their format, and a line at a steady interval while pairs run."""

from __future__ import annotations

import time
from pathlib import Path

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
    assert plain_line(info(10), final=True).endswith("stopped")
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
