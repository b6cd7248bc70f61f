"""The fault suite: kill -9 at any step, signals, concurrent runs, a full or read-only disk.

Every case ends in one of two states: a store bit-identical (file by file) to one computed in a single
uninterrupted run, or a clean one-line refusal that left the store as it was. Processes are real: forked
children running the CLI (``tests/faults.py``), killed with SIGKILL at chosen file-system steps, or
``python -m lca_cli`` subprocesses sent SIGTERM and SIGHUP.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import (
    PER_PAIR,
    ROWS,
    assert_same_tree,
    cli,
    count_writes,
    fork_call,
    fork_start,
    fork_wait,
    leftovers,
    reference_run,
    tree,
)
from runs import make_tiny_run
from safetensors.torch import load_file, save_file

from lca_cli.computation.config import load_config
from lca_cli.computation.runner import compute
from lca_cli.store.lcastore import LcaStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 12-pair run and its store computed in one uninterrupted CLI run (the reference)."""
    return reference_run(tmp_path_factory.mktemp("faults"), 12)


# -- kill -9 at any step ---------------------------------------------------------------------------------


def test_kill_at_every_kind_of_step_then_resume_is_bit_identical(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Creation, the pair loop (a flush after every pair: rows and done written many times) and the end."""
    run, ref = tiny
    config = load_config(run / "lca.toml").with_overrides(rows_per_chunk=4, threads=1)
    out = tmp_path / "s.zarr"

    def job() -> None:
        compute(run, config, out, flush_seconds=0.0)

    steps = count_writes(job, tmp_path / "writes.log")
    assert_same_tree(out, ref)  # flushing after every pair stores exactly the same bytes
    shutil.rmtree(out)
    n = len(steps)
    creation = next(i for i, (_, p) in enumerate(steps, 1) if "/train/lca/c/" in p)  # first lca chunk write
    rng = random.Random(8)
    in_creation = rng.sample(range(5, creation - 1), 4)
    in_loop = rng.sample(range(creation + 1, n - 1), 6)
    points = sorted({1, 4, creation - 1, creation, n - 1, n, *in_creation, *in_loop})
    for k in points:
        assert fork_call(job, kill_at=k) == -signal.SIGKILL, k
        err = tmp_path / f"resume{k}.err"
        code = fork_call(lambda: cli("compute", run, "--out", out, "--quiet", *ROWS), stderr=err)
        assert code == 0, (k, steps[k - 1], err.read_text())
        assert_same_tree(out, ref)
        assert leftovers(tmp_path, {"s.zarr", "writes.log"} | {f"resume{j}.err" for j in points}) == [], k
        shutil.rmtree(out)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 4-pair run of a 400k-parameter MLP (1.6 MB rows: one lca chunk of 6.4 MB, written around the page cache)
    and its store computed with the defaults in one uninterrupted CLI run."""
    return reference_run(tmp_path_factory.mktemp("wide"), 4, hidden=40_000, lr=0.02, rows=["--threads", "1"])


def test_kill_while_a_big_chunk_is_written_then_resume_is_bit_identical(
    wide: tuple[Path, Path], tmp_path: Path
) -> None:
    """Killed before an lca chunk's head is written, with its head on disk but not its tail, before the rename that
    lands it, and just after."""
    run, ref = wide
    out = tmp_path / "s.zarr"

    def job() -> None:
        cli("compute", run, "--out", out, "--quiet", "--threads", "1")

    steps = count_writes(job, tmp_path / "writes.log")
    assert_same_tree(out, ref)
    shutil.rmtree(out)
    renames: dict[str, list[int]] = {}  # chunk file -> its renames out of the fence (the first finds no folder)
    for i, (name, p) in enumerate(steps, 1):
        if name == "rename" and "/tmp-" in p and "/train/lca/c/" in p:
            renames.setdefault(p.split(" -> ")[1], []).append(i)
    assert len(renames) == 1  # 4 rows in one chunk
    (chunk,) = renames.values()
    # steps[k - 1] is the k-th call: the head's pwrite, the tail's, the rename that lands it (the first one finds no
    # folder yet), the call after it.
    points = [chunk[0] - 2, chunk[0] - 1, chunk[-1], chunk[-1] + 1]
    assert [steps[k - 1][0] for k in points[:2]] == ["pwrite", "pwrite"]
    for k in points:
        assert fork_call(job, kill_at=k) == -signal.SIGKILL, k
        err = tmp_path / f"resume{k}.err"
        assert fork_call(job, stderr=err) == 0, (k, steps[k - 1], err.read_text())
        assert_same_tree(out, ref)
        assert leftovers(tmp_path, {"s.zarr", "writes.log"} | {f"resume{j}.err" for j in points}) == [], k
        shutil.rmtree(out)


def test_a_followed_store_appended_into_a_big_chunk_equals_one_made_in_one_go(tmp_path: Path) -> None:
    """A followed store's chunks are sized for the run to come (5 rows of 1.6 MB): the first call writes its 3 rows
    as a padded chunk around the page cache, the append merges 2 more into it through Zarr and writes the next
    chunk directly again. Each pair held to its own row (``--l1-scope pair``), so the two stores can be equal."""
    from runs import make_tiny_run

    run = make_tiny_run(tmp_path, steps=6, hidden=40_000, lr=0.02)
    part = tmp_path / "part"
    part.mkdir()
    for p in run.iterdir():
        first = p.suffix != ".safetensors" or int(p.stem.split("_")[1]) <= 3
        if first and p.name != "lca.end":  # the first 3 pairs, the run still going
            shutil.copy2(p, part / p.name)
    flags = ["--quiet", "--threads", "1", *PER_PAIR]
    out, ref = tmp_path / "s.zarr", tmp_path / "ref.zarr"
    assert fork_call(lambda: cli("compute", part, "--out", out, "--follow", "--until", "3", *flags)) == 0
    assert LcaStore.open(out).rows_per_chunk == 5 and LcaStore.open(out).n_pairs == 3
    for p in run.iterdir():
        shutil.copy2(p, part / p.name)  # checkpoints 4..6 arrive, and the end marker
    assert fork_call(lambda: cli("compute", part, "--out", out, *flags)) == 0
    assert fork_call(lambda: cli("compute", part, "--out", ref, "--follow", *flags)) == 0
    assert_same_tree(out, ref)


def test_kill_during_append_then_resume_is_bit_identical(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = tiny
    part = tmp_path / "run"
    part.mkdir()
    for p in run.iterdir():
        if p.suffix != ".safetensors" or int(p.stem.split("_")[1]) <= 7:
            shutil.copy2(p, part / p.name)
    base = tmp_path / "base.zarr"
    assert fork_call(lambda: cli("compute", part, "--out", base, "--quiet", *ROWS, *PER_PAIR)) == 0
    for p in run.glob("*.safetensors"):
        shutil.copy2(p, part / p.name)  # checkpoints 8..12 arrive
    ref = tmp_path / "ref.zarr"  # the whole run in one go (its attributes name this run folder)
    assert fork_call(lambda: cli("compute", part, "--out", ref, "--quiet", *ROWS, *PER_PAIR)) == 0
    out = tmp_path / "s.zarr"

    def job() -> None:
        cli("compute", part, "--out", out, "--quiet", *ROWS, *PER_PAIR)

    shutil.copytree(base, out)
    steps = count_writes(job, tmp_path / "writes.log")
    assert_same_tree(out, ref)
    n = len(steps)
    for k in sorted({1, n // 4, n // 2, 3 * n // 4, n}):
        shutil.rmtree(out)
        shutil.copytree(base, out)
        assert fork_call(job, kill_at=k) == -signal.SIGKILL
        assert fork_call(job) == 0, (k, steps[k - 1])
        assert_same_tree(out, ref)


# -- signals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")])
def test_sigterm_and_sighup_keep_finished_rows(
    tiny: tuple[Path, Path], tmp_path: Path, sig: signal.Signals, code: int, name: str
) -> None:
    run = make_tiny_run(tmp_path, steps=40, name="long")
    out = tmp_path / "s.zarr"
    # Slower pairs (the numbers are the same): 40 pairs take about 10 s, so the signal 1.5 s after the start line
    # finds the run in its pair loop however fast the defaults make the rest (at 0.01 s, 3 s in all: flaky).
    env = {**os.environ, "LCA_TEST_PAUSE": "0.05"}
    # The signal's default disposition in the child, whatever this process inherited (under nohup SIGHUP is
    # ignored, and lca rightly keeps ignoring what its parent ignores).
    start = (
        f"import runpy, signal; signal.signal({int(sig)}, signal.SIG_DFL); "
        "runpy.run_module('lca_cli', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", start, "compute", str(run), "--out", str(out), "--json", *ROWS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline()  # plain progress (stderr is a pipe): the start line
    assert " lca compute: 40 pair(s) to compute (0 already done)" in first, first  # after the time
    time.sleep(1.5)
    proc.send_signal(sig)
    stdout, rest = proc.communicate(timeout=120)
    assert proc.returncode == code, rest
    lines = rest.strip().splitlines()
    assert lines[0].startswith(f"Terminated ({name})" if sig == signal.SIGTERM else f"Hung up ({name})"), lines
    assert lines[-1].endswith(f"{out} is resumable; rerun the same command to continue."), lines
    assert "Traceback" not in rest
    result = json.loads(stdout)
    assert result["interrupted"] and 0 < result["computed"] < 40
    assert int(LcaStore.open(out).done().sum()) == result["computed"]  # every finished pair was kept
    assert fork_call(lambda: cli("compute", run, "--out", out, "--quiet", *ROWS)) == 0
    ref = tmp_path / "ref.zarr"
    assert fork_call(lambda: cli("compute", run, "--out", ref, "--quiet", *ROWS)) == 0
    assert_same_tree(out, ref)


# -- concurrent processes ------------------------------------------------------------------------------


def _together(jobs: list[list[object]], tmp_path: Path) -> list[tuple[int, str]]:
    """Start several CLI runs at the same moment (forked children waiting on one pipe); codes and stderr."""
    r, w = os.pipe()
    pids = []
    for i, args in enumerate(jobs):
        err = tmp_path / f"job{i}.err"

        def job(args: list[object] = args) -> None:
            os.read(r, 1)  # wait for the start signal
            cli(*args)

        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os._exit(fork_call(job, stderr=err))
        pids.append((pid, err))
    time.sleep(0.3)
    os.write(w, b"x" * len(jobs))
    out = []
    for pid, err in pids:
        _, status = os.waitpid(pid, 0)
        out.append((os.waitstatus_to_exitcode(status), err.read_text() if err.exists() else ""))
    os.close(r)
    os.close(w)
    return out


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_computes_one_store_or_a_clean_refusal(tiny: tuple[Path, Path], tmp_path: Path, n: int) -> None:
    run, ref = tiny
    out = tmp_path / "s.zarr"
    results = _together([["compute", run, "--out", out, "--quiet", *ROWS]] * n, tmp_path)
    codes = [c for c, _ in results]
    assert set(codes) <= {0, 9} and 0 in codes, results
    for code, err in results:
        if code == 9:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: ") and "in use by lca compute" in lines[0], err
    assert_same_tree(out, ref)
    assert leftovers(tmp_path, {"s.zarr"} | {f"job{i}.err" for i in range(n)}) == []


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_overwrites_never_destroy_the_store(tiny: tuple[Path, Path], tmp_path: Path, n: int) -> None:
    run, ref = tiny
    out = tmp_path / "s.zarr"
    shutil.copytree(ref, out)
    jobs: list[list[object]] = [["compute", run, "--out", out, "--quiet", "--overwrite", *ROWS]] * (n - 1)
    jobs.append(["compute", run, "--out", out, "--quiet", *ROWS])  # and a plain resume among them
    results = _together(jobs, tmp_path)
    assert {c for c, _ in results} <= {0, 9} and 0 in {c for c, _ in results}, results
    assert_same_tree(out, ref)
    assert leftovers(tmp_path, {"s.zarr"} | {f"job{i}.err" for i in range(n)}) == []


# -- a full disk, a read-only disk ------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path | None]:
    """A 192 KiB tmpfs mounted at ``tmp_path / "disk"`` where this process may mount one, else None."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], capture_output=True)
    except OSError:
        done = None
    if done is None or done.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _enospc_after(n: int) -> None:  # pragma: no cover - runs in a forked child
    """Make Zarr's file writes fail with ENOSPC after ``n`` of them (when no tmpfs can be mounted)."""
    import errno

    import zarr.storage._local as local

    orig, count = local._put, [0]

    def put(*args: object, **kwargs: object) -> object:
        count[0] += 1
        if count[0] > n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))
        return orig(*args, **kwargs)

    local._put = put  # type: ignore[assignment]


def test_disk_full_is_one_line_and_resumable(tiny: tuple[Path, Path], tmp_path: Path, tmpfs: Path | None) -> None:
    run, ref = tiny
    out = (tmpfs or tmp_path) / "s.zarr"
    err = tmp_path / "full.err"

    def job() -> None:
        if tmpfs is None:
            _enospc_after(60)  # creation fits, the second block does not
        cli("compute", run, "--out", out, "--quiet", *ROWS)

    assert fork_call(job, stderr=err) == 10
    lines = err.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "disk is full" in lines[0], lines
    if tmpfs is not None:
        subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)
    assert fork_call(lambda: cli("compute", run, "--out", out, "--quiet", *ROWS)) == 0
    assert_same_tree(out, ref)


def test_a_disk_that_fills_during_a_big_chunk_is_one_line_and_resumable(
    wide: tuple[Path, Path], tmp_path: Path, tmpfs: Path | None
) -> None:
    """The store is created (1.6 MB of coordinates), then its 6.4 MB chunk, written directly, meets a full disk."""
    if tmpfs is None:
        pytest.skip("cannot mount a tmpfs here")
    run, ref = wide
    subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)
    out = tmpfs / "s.zarr"
    err = tmp_path / "full.err"
    assert fork_call(lambda: cli("compute", run, "--out", out, "--quiet", "--threads", "1"), stderr=err) == 10
    lines = err.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "disk is full" in lines[0], lines
    lca = out / "train" / "lca"
    assert (lca / "zarr.json").is_file() and not [p for p in lca.rglob("c/*/*") if p.is_file()]  # created; no chunk
    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)
    assert fork_call(lambda: cli("compute", run, "--out", out, "--quiet", "--threads", "1")) == 0
    assert_same_tree(out, ref)
    assert leftovers(tmpfs, {"s.zarr"}) == []


def test_read_only_finished_store_is_a_no_op(tiny: tuple[Path, Path], tmp_path: Path, tmpfs: Path | None) -> None:
    if tmpfs is None:
        pytest.skip("cannot mount a tmpfs here (remounting read-only needs one)")
    run, _ = tiny
    out = tmpfs / "s.zarr"
    subprocess.run(["mount", "-o", "remount,size=4m", str(tmpfs)], check=True)
    assert fork_call(lambda: cli("compute", run, "--out", out, "--quiet", *ROWS)) == 0
    before = tree(out, skip_root_attrs=())
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    err = tmp_path / "ro.err"
    assert fork_call(lambda: cli("compute", run, "--out", out, *ROWS), stderr=err) == 0, err.read_text()
    assert "0 pair(s) computed, 12 already done" in err.read_text()
    assert tree(out, skip_root_attrs=()) == before  # not even the `updated` attribute was rewritten
    more = tmp_path / "more"
    shutil.copytree(run, more)
    state = load_file(str(more / "step_00000012.safetensors"))
    save_file(state, str(more / "step_00000013.safetensors"), metadata={"step": "13"})
    err2 = tmp_path / "ro2.err"
    assert fork_call(lambda: cli("compute", more, "--out", out, *ROWS), stderr=err2) == 10
    lines = err2.read_text().strip().splitlines()
    assert len(lines) == 1 and "read-only" in lines[0] and "1 pair(s) are left" in lines[0], lines


def test_a_second_sigterm_aborts_at_once_and_leaves_a_consistent_store(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=40, name="long")
    out = tmp_path / "s.zarr"
    err = tmp_path / "abort.err"

    def job() -> None:
        os.environ["LCA_TEST_PAUSE"] = "0.05"
        cli("compute", run, "--out", out, "--quiet", *ROWS)

    pid = fork_start(job, stderr=err)
    deadline = time.time() + 60
    while not (out / "train" / "done").exists() and time.time() < deadline:  # computing now
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(pid, signal.SIGTERM)
    # The first one is handled at once (the pause's sleep is interrupted for it); the pair it lets finish takes
    # over 0.2 s (0.05 s per forward pass), so the second one arrives while it runs.
    time.sleep(0.03)
    os.kill(pid, signal.SIGTERM)  # again: abort at once
    assert fork_wait(pid) == 143, err.read_text()
    text = err.read_text()
    assert text.strip().splitlines()[-1] == "Interrupted; finished rows are saved and a rerun resumes.", text
    assert "Traceback" not in text
    assert fork_call(lambda: cli("verify", out)) == 0  # whatever was written is consistent
    assert fork_call(lambda: cli("compute", run, "--out", out, "--quiet", *ROWS)) == 0
    ref = tmp_path / "ref.zarr"
    assert fork_call(lambda: cli("compute", run, "--out", ref, "--quiet", *ROWS)) == 0
    assert_same_tree(out, ref)


def test_a_sigterm_during_start_up_stops_before_any_pair(tmp_path: Path) -> None:
    # A scheduler's grace period is short (docker stop: 10 s): a signal that arrives while the run scale is being
    # measured (minutes on a big model) stops lca before its next gradient, before the store or any pair exists.
    run = make_tiny_run(tmp_path, steps=12, name="slow")
    out = tmp_path / "s.zarr"
    env = {**os.environ, "LCA_TEST_PAUSE": "0.8"}  # 8 gradients of the run scale: over 5 s, so a note says so
    start = "import runpy, signal; signal.signal(15, signal.SIG_DFL); runpy.run_module('lca_cli', run_name='__main__')"
    proc = subprocess.Popen(
        [sys.executable, "-c", start, "compute", str(run), "--out", str(out), "--json", *ROWS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    note = proc.stderr.readline()
    assert note.startswith("Note: measuring the run scale of --l1-tol on 8 pair(s)"), note
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    stdout, rest = proc.communicate(timeout=60)
    assert proc.returncode == 143, rest
    # At most the gradient under way (0.8 s here) and process exit, not 13 s; generous for a loaded 2-core CI host.
    assert time.monotonic() - signalled < 6.0
    assert "Traceback" not in rest and not out.exists()  # no store, no pair, nothing half made
    assert json.loads(stdout)["interrupted"] and json.loads(stdout)["computed"] == 0
    # No "0 pair(s) ... 0 in total" and no "resumable" for a store that was never made: what happened.
    assert rest.strip().splitlines()[-1] == (
        "Terminated (SIGTERM) during start-up: nothing was computed or written; rerun the same command to start."
    ), rest


@pytest.mark.parametrize("second", ["plain", "cooperate"])
def test_a_second_compute_beside_a_pruning_one_meets_the_lock_not_a_vanished_checkpoint(
    tmp_path: Path, second: str
) -> None:
    # An overlapping cron job beside `lca compute --prune`: it read the oldest checkpoints it had listed (for
    # --dtype auto, the pre-flight and, joining, the fingerprints) while the owner deleted them: exit 5,
    # "disappeared while reading". A plain second call must exit 9 (busy); a --cooperate one must join.
    run = make_tiny_run(tmp_path, steps=300, name="long")
    rows = ["--rows-per-chunk", "1", "--threads", "1"]  # a chunk per pair: the owner prunes a checkpoint per pair
    ref = tmp_path / "ref.zarr"
    assert fork_call(lambda: cli("compute", run, "--out", ref, "--quiet", *rows)) == 0
    out = tmp_path / "s.zarr"
    pid = fork_start(lambda: cli("compute", run, "--out", out, "--quiet", "--prune", *rows), stderr=tmp_path / "1.err")
    deadline = time.time() + 60
    while (run / "step_00000000.safetensors").exists() and time.time() < deadline:  # pruning has begun
        time.sleep(0.01)
    flags = ["--cooperate"] if second == "cooperate" else []
    code = fork_call(lambda: cli("compute", run, "--out", out, "--quiet", *rows, *flags), stderr=tmp_path / "2.err")
    assert fork_wait(pid) == 0, (tmp_path / "1.err").read_text()
    err = (tmp_path / "2.err").read_text()
    assert code == (9 if second == "plain" else 0), err
    assert "disappeared" not in err and "cannot be read" not in err
    assert_same_tree(out, ref)  # and the store is the one an uninterrupted single process makes


# -- a paused process whose lock was taken over (fencing) ------------------------------------------------------


def _pause_after_check(n: int) -> None:  # pragma: no cover - runs in a forked child
    """SIGSTOP this process right after its ``n``-th lock check passed: the moment before a write, where a
    Slurm suspend is most harmful (the check is done, the write is not)."""
    from lca_cli.store.claims import Lease

    orig, count = Lease.check, [0]

    def check(self: Lease) -> None:
        orig(self)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGSTOP)

    Lease.check = check  # type: ignore[method-assign]


def _as_another_host() -> None:  # pragma: no cover - runs in a forked child
    """Make this process judge the lock as a process on another machine would, with a half-second lease: by
    its heartbeat alone (a paused holder on this machine is a live pid, never taken over)."""
    import lca_cli.computation.distributed as distributed
    import lca_cli.store.claims as claims

    claims.LEASE_SECONDS = 0.5
    claims._machine = lambda: "another-host|boot|ns"  # type: ignore[attr-defined]
    # The paused process also holds the claim of the chunk it computes: judged by the same half-second lease.
    claims.read_claim.__defaults__ = (0.5,)
    distributed.Board.__init__.__defaults__ = (0.5,)


@pytest.mark.parametrize("overwrite", [False, True], ids=["resume", "overwrite"])
@pytest.mark.parametrize("pause_at", [1, 2, 3])
def test_a_paused_compute_whose_lock_was_taken_over_never_writes_again(
    tiny: tuple[Path, Path], tmp_path: Path, overwrite: bool, pause_at: int
) -> None:
    """Stopped (SIGSTOP) between its lock check and its write, a compute whose lock another host's compute took
    over after the lease writes nothing on SIGCONT: exit 9, one line, the new owner's store as it left it."""
    run, ref = tiny
    out = tmp_path / "s.zarr"
    if overwrite:
        shutil.copytree(ref, out)
    else:
        shutil.copytree(ref, out)
        shutil.rmtree(out / "train" / "done" / "c")  # nothing done yet: every block is to compute
    flags = ["--overwrite"] if overwrite else []
    err_a, err_b = tmp_path / "a.err", tmp_path / "b.err"

    def paused() -> None:
        _pause_after_check(pause_at)
        cli("compute", run, "--out", out, "--quiet", *ROWS, *flags)

    pid = fork_start(paused, stderr=err_a)
    _, status = os.waitpid(pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), err_a.read_text()
    time.sleep(0.6)  # past the taker's lease: no heartbeat from a stopped process

    def taker() -> None:
        _as_another_host()
        cli("compute", run, "--out", out, "--quiet", *ROWS)

    assert fork_call(taker, stderr=err_b) == 0, err_b.read_text()
    finished = tree(out)
    os.kill(pid, signal.SIGCONT)
    assert fork_wait(pid) == 9, err_a.read_text()
    lines = err_a.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "took over" in lines[0], lines
    assert tree(out) == finished  # not one byte written after the takeover
    assert_same_tree(out, ref)
    assert fork_call(lambda: cli("verify", out)) == 0
    assert leftovers(tmp_path, {"s.zarr", "a.err", "b.err"}) == []  # no fence, lock or half-built store left


def test_kill_during_overwrite_leaves_nothing_the_next_run_does_not_remove(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    """kill -9 anywhere in an --overwrite (the new store built, swapped in, the old one being deleted): the next
    run that owns the store removes whatever the killed one left (it used to leave the old store hidden)."""
    run, ref = tiny
    out = tmp_path / "s.zarr"

    def job() -> None:
        cli("compute", run, "--out", out, "--quiet", "--overwrite", *ROWS)

    shutil.copytree(ref, out)
    steps = count_writes(job, tmp_path / "writes.log")
    n = len(steps)
    retire = next(i for i, (name, _) in enumerate(steps, 1) if name == "rmdir")  # deleting the swapped-out store
    for k in sorted({2, n // 3, retire - 1, retire, retire + 2, n - 2, n}):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(ref, out)
        assert fork_call(job, kill_at=k) == -signal.SIGKILL, k
        assert fork_call(lambda: cli("compute", run, "--out", out, "--quiet", *ROWS)) == 0, (k, steps[k - 1])
        assert_same_tree(out, ref)
        assert leftovers(tmp_path, {"s.zarr", "writes.log"}) == [], (k, steps[k - 1])


def test_a_store_deleted_under_a_running_compute_stops_it_and_is_not_re_created(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=40, name="long")
    out = tmp_path / "s.zarr"
    err = tmp_path / "deleted.err"

    def job() -> None:
        os.environ["LCA_TEST_PAUSE"] = "0.02"
        cli("compute", run, "--out", out, "--quiet", *ROWS)

    pid = fork_start(job, stderr=err)
    deadline = time.time() + 60
    while not (out / "train" / "done" / "c").exists() and time.time() < deadline:  # rows are being written
        time.sleep(0.02)
    for _ in range(100):  # as a user's `rm -rf`, repeated when a file appeared between its listing and its rmdir
        try:
            shutil.rmtree(out)
            break
        except OSError:
            time.sleep(0.01)
    assert fork_wait(pid) == 6, err.read_text()
    lines = err.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "deleted" in lines[0], lines
    assert not out.exists()  # no folder of chunk files without their zarr.json
    assert leftovers(tmp_path, {"long", "deleted.err"}) == []
