"""Fault injection for the fault suite: run ``lca`` in a forked child, killed with SIGKILL at its N-th write.

A forked child starts in milliseconds (torch is already imported), so a test can kill a real ``lca compute``
at every file-system step it takes: before the N-th call of any of :data:`WRITE_CALLS` (the operations Zarr
and lca use to create, rename, fsync and delete files) the child sends itself SIGKILL, exactly as
``kill -9`` would at that moment. ``count_writes`` runs the same command without killing and returns the
sequence of steps, so a test can choose its kill points.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: Small row chunks (several per run) and one torch thread: every float reduction runs in one order, so the
#: stores the CLI tests compare are bit-for-bit reproducible.
ROWS = ["--rows-per-chunk", "4", "--threads", "1"]
#: Each pair held to its own row, for a store compared with one made over other checkpoints (an append against the
#: whole run): the default run scale is measured over the pairs on disk when a store is created.
PER_PAIR = ["--l1-scope", "pair"]

#: ``os`` functions every durable change goes through (Zarr writes a chunk to a temporary file, then
#: ``os.replace``; lca renames, links, fsyncs and deletes).
WRITE_CALLS = ("replace", "rename", "link", "unlink", "rmdir", "mkdir", "fsync", "pwrite")


def fork_call(fn: Callable[[], Any], *, kill_at: int = 0, log: Path | None = None, stderr: Path | None = None) -> int:
    """Run ``fn`` in a forked child and return its exit code (``-9`` when it was killed).

    Args:
        fn: What the child runs (``lambda: main([...])``); SystemExit's code is the exit code.
        kill_at: SIGKILL the child just before its ``kill_at``-th write call (0: never).
        log: Append one JSON line per write call to this file (``count_writes``).
        stderr: Send the child's stderr (and stdout) to this file.

    """
    return fork_wait(fork_start(fn, kill_at=kill_at, log=log, stderr=stderr))


def fork_wait(pid: int) -> int:
    """Wait for a child of :func:`fork_start`; its exit code (negative: killed by that signal)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def fork_start(fn: Callable[[], Any], *, kill_at: int = 0, log: Path | None = None, stderr: Path | None = None) -> int:
    """Start ``fn`` in a forked child (see :func:`fork_call`) and return its pid.

    The child must use one torch thread (``lca compute ... --threads 1``): a fork of a test process whose OpenMP
    pool has run (an earlier test timed ``--threads auto`` in-process) deadlocks in the child as soon as torch
    uses more than one thread. A test of the defaults runs ``lca`` in a fresh process (:func:`run_lca`).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+: fork of a multi-threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            if stderr is not None:
                fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
            else:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
            # pytest's capture replaced sys.stdout / sys.stderr; the child writes to its own fds 1 and 2.
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            _hook(kill_at, log)
            try:
                fn()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _hook(kill_at: int, log: Path | None) -> None:  # pragma: no cover - runs in the child
    count = [0]
    for name in WRITE_CALLS:
        orig = getattr(os, name)

        def wrapper(*args: Any, _orig: Any = orig, _name: str = name, **kwargs: Any) -> Any:
            count[0] += 1
            if log is not None:
                with open(log, "a") as f:
                    # A rename's target too: lca's writes are renames out of its fence folder (the source).
                    where = " -> ".join(str(a) for a in args[:2] if isinstance(a, (str, Path)))
                    f.write(json.dumps([_name, where]) + "\n")
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return _orig(*args, **kwargs)

        setattr(os, name, wrapper)


def count_writes(fn: Callable[[], Any], log: Path) -> list[tuple[str, str]]:
    """The write calls ``fn`` makes, in order (run in a forked child, not killed)."""
    log.unlink(missing_ok=True)
    code = fork_call(fn, log=log)
    assert code == 0, code
    return [tuple(json.loads(line)) for line in log.read_text().splitlines()]  # type: ignore[misc]


#: Root attributes that say when, where and in which calls a store was computed, not what it holds: they may differ
#: between stores with the same rows (``l1_scale_calls`` lists the rows each call computed).
CIRCUMSTANCE_ATTRS = ("created", "updated", "device", "l1_scale_calls")


def tree(root: Path, skip_root_attrs: tuple[str, ...] = CIRCUMSTANCE_ATTRS) -> dict[str, bytes]:
    """Every file under ``root`` by relative path with its bytes; the root's ``zarr.json`` without the
    attributes that record when and where (they differ between two runs that store the same rows)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = str(path.relative_to(root))
        data = path.read_bytes()
        if rel == "zarr.json":
            meta = json.loads(data)
            for key in skip_root_attrs:
                meta.get("attributes", {}).pop(key, None)
            data = json.dumps(meta, sort_keys=True).encode()
        out[rel] = data
    return out


def assert_same_tree(a: Path, b: Path, skip_root_attrs: tuple[str, ...] = CIRCUMSTANCE_ATTRS) -> None:
    """Two stores hold the same files with the same bytes (bit-identical rows and metadata); the root
    attributes ``skip_root_attrs`` may differ (when and where it was computed, by which calls)."""
    ta, tb = tree(a, skip_root_attrs), tree(b, skip_root_attrs)
    assert sorted(ta) == sorted(tb), sorted(set(ta) ^ set(tb))
    for k in ta:
        assert ta[k] == tb[k], k


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a store or run folder."""
    shutil.copytree(src, dst)
    return dst


def run_lca(
    *args: object, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``lca ARGS`` in a fresh process, as a user runs it (``python -m lca_cli``), output captured as text.

    A fresh process, not a fork of the test process: see :func:`fork_start` for what a fork may not do.
    """
    cmd = [sys.executable, "-m", "lca_cli", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def cli(*args: object) -> None:
    """Run the ``lca`` command line in this process (``SystemExit`` carries its exit code)."""
    from lca_cli.cli.app import main

    main([str(a) for a in args])


def reference_run(
    root: Path, steps: int, *flags: str, hidden: int = 12, lr: float = 0.3, rows: Sequence[str] = ROWS
) -> tuple[Path, Path]:
    """A tiny run of ``steps`` pairs under ``root`` and its store computed by one uninterrupted CLI process.

    ``rows`` are the flags the store's rows are computed with (:data:`ROWS` unless given), then ``flags``.
    """
    from runs import make_tiny_run

    run = make_tiny_run(root, steps=steps, hidden=hidden, lr=lr)
    ref = root / "ref.zarr"
    assert fork_call(lambda: cli("compute", run, "--out", ref, "--quiet", *rows, *flags)) == 0
    return run, ref


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Names in a folder other than ``keep`` (locks, claims folders, temporary siblings left behind)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)
