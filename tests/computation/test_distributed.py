"""Several processes on one store: chunk claims, shards and step ranges, cooperating processes, torchrun.

The end-to-end cases compare stores file by file with one computed by a single uninterrupted process
(``tests/faults.py``), with one torch thread per process so that every float reduction runs in one order.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from faults import PER_PAIR, ROWS, assert_same_tree, cli, fork_call, fork_start, fork_wait, leftovers, reference_run
from runs import make_tiny_run

from lca_cli.computation.config import load_config
from lca_cli.computation.distributed import Board, ChunkQueue, Scope, Team, choose_chunk, claims_path, parse_shard
from lca_cli.computation.plan import Schedule
from lca_cli.computation.runner import compute
from lca_cli.computation.scale import MIN_PROBED_PAIRS
from lca_cli.errors import UsageError
from lca_cli.store.lcastore import LcaStore


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 24-pair run and its store computed by one uninterrupted process (the reference)."""
    return reference_run(tmp_path_factory.mktemp("distributed"), 24)


# -- pure parts -------------------------------------------------------------------------------------------


def test_parse_shard() -> None:
    assert parse_shard(None) == (0, 1) and parse_shard("2/4") == (2, 4) and parse_shard(" 0 / 1 ") == (0, 1)
    for bad in ("4/4", "1", "-1/2", "a/b", "0/0"):
        with pytest.raises(UsageError, match="--shard"):
            parse_shard(bad)


def test_scope_mask_by_steps_and_by_contiguous_chunks() -> None:
    steps = np.arange(0, 22, 2)  # 10 pairs, start steps 0, 2, ..., 18
    assert Scope().mask(steps, 3).all() and Scope().whole
    assert list(np.flatnonzero(Scope(4, 10).mask(steps, 3))) == [2, 3, 4]
    # 10 rows in chunks of 3: chunks 0..3; two shards take chunks 0-1 and 2-3, whole chunks only.
    first, second = Scope(shard=0, shards=2).mask(steps, 3), Scope(shard=1, shards=2).mask(steps, 3)
    assert list(np.flatnonzero(first)) == list(range(6)) and list(np.flatnonzero(second)) == list(range(6, 10))
    assert Scope(None, 14, 1, 2).describe() == "steps :14, shard 1/2"


def test_choose_chunk() -> None:
    assert choose_chunk([0, 1, 2], {0, 1, 2}) is None
    assert choose_chunk([0, 1, 2, 3], set(), after=1) == 2  # the successor: its start gradient is cached
    assert choose_chunk(list(range(10)), set(), start=(1, 2)) == 5  # rank 1 of 2 begins halfway
    assert choose_chunk(list(range(10)), set(), start=(0, 2)) == 0
    # The longest unclaimed run is split when someone works just before it; otherwise taken from its start.
    assert choose_chunk(list(range(10)), {0}) == 5
    assert choose_chunk([4, 5, 6, 8], set()) == 4
    assert choose_chunk([0, 1, 2, 3, 7, 8], {0, 1}) == 3  # [2, 3] first of equals; 1's holder goes on into 2
    assert choose_chunk([2, 3, 7, 8, 9], set()) == 7  # the longest run, from its start (nobody just before it)


def test_claims_are_exclusive_and_a_dead_holder_is_taken_over(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    a, b = Board(store), Board(store)
    assert a.claim(3) and not b.claim(3)  # held by a live process (this one)
    assert a.claimed() == {3} and b.others() and b.busy() is not None and a.busy() is None
    a.release(3)
    assert b.claim(3)
    b.close()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: claim a chunk and die without releasing it (as kill -9 would)
        Board(store).claim(7)
        os._exit(0)
    os.waitpid(pid, 0)
    assert a.stale(7) and a.claim(7)  # its pid is gone: taken over at once
    a.close()
    assert not claims_path(store).exists()  # the last process out removes the folder


def test_queues_hand_out_each_chunk_once(tmp_path: Path) -> None:
    run = make_tiny_run(tmp_path, steps=10)
    config = load_config(run / "lca.toml").with_overrides(rows_per_chunk=2, threads=1)
    out = tmp_path / "s.zarr"
    compute(run, config, out, schedule=Schedule(Scope(stop=0)))  # creates the store, computes nothing
    store = LcaStore.open(out, mode="r+")
    a, b = Board(out), Board(out)
    qa = ChunkQueue(store, a, Scope(), wait=False)
    qb = ChunkQueue(store, b, Scope(shard=1, shards=2), wait=False)
    got_a = qa.next()
    got_b = qb.next()
    assert got_a is not None and got_b is not None
    assert (got_a.chunk, got_a.blocks) == (0, [range(0, 2)])
    assert got_b.chunk == 2 and got_b.blocks == [range(4, 6)]  # shard 1/2 of chunks 0..4: chunks 2..4
    got = [got_a.chunk, got_b.chunk]
    while (item := qa.next(got[-1])) is not None:
        got.append(item.chunk)
    assert sorted(got) == [0, 1, 2, 3, 4]  # every chunk once; the rest were claimed by a
    a.close()
    b.close()


# -- parts, resumes and appends converge to the one-process store ------------------------------------------


def test_shards_and_steps_mixed_with_a_resume_and_an_append(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = tiny
    part = tmp_path / "run"
    shutil.copytree(run, part, ignore=shutil.ignore_patterns("*.zarr", "step_0000002[0-4].safetensors"))
    out = tmp_path / "s.zarr"
    flags = [*ROWS, *PER_PAIR]  # compared with a store of the whole run, made over other checkpoints
    assert fork_call(lambda: cli("compute", part, "--out", out, "-q", "--shard", "1/2", *flags)) == 0  # 19 pairs
    stop = threading.Event()
    config = load_config(part / "lca.toml").with_overrides(rows_per_chunk=4, threads=1, l1_scope="pair")

    def progress(done: int, total: int) -> None:
        if done == 2:
            stop.set()  # a stopped run keeps its finished rows

    result = compute(part, config, out, stop=stop, progress=progress, schedule=Schedule(Scope(2, 9)))
    assert result.interrupted and result.computed == 2
    for name in ("step_00000020.safetensors", "step_00000021.safetensors", "step_00000022.safetensors"):
        shutil.copy2(run / name, part / name)  # training went on: an append
    assert fork_call(lambda: cli("compute", part, "--out", out, "-q", "--steps", "2:9", *flags)) == 0  # the resume
    assert fork_call(lambda: cli("compute", part, "--out", out, "-q", "--shard", "0/3", *flags)) == 0
    done = LcaStore.open(out).done()
    assert 0 < done.sum() < len(done)
    for name in ("step_00000023.safetensors", "step_00000024.safetensors"):
        shutil.copy2(run / name, part / name)
    assert fork_call(lambda: cli("compute", part, "--out", out, "-q", *flags)) == 0  # whatever is left
    whole = tmp_path / "whole.zarr"  # the same checkpoints, in the same folder (its path is an attribute)
    assert fork_call(lambda: cli("compute", part, "--out", whole, "-q", *flags)) == 0
    assert_same_tree(out, whole)
    assert leftovers(tmp_path, {"run", "s.zarr", "whole.zarr"}) == []


def test_the_shards_of_a_slurm_array_at_once(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Three shards started together: one owns the store, the others join it (a shard implies --cooperate)."""
    run, ref = tiny
    out = tmp_path / "s.zarr"
    os.environ["LCA_TEST_PAUSE"] = "0.005"
    try:
        jobs = [["compute", run, "--out", out, "-q", "--shard", f"{i}/3", *ROWS] for i in range(3)]
        pids = [fork_start(lambda job=job: cli(*job)) for job in jobs]
        codes = [fork_wait(pid) for pid in pids]
    finally:
        del os.environ["LCA_TEST_PAUSE"]
    assert codes == [0, 0, 0]
    assert_same_tree(out, ref)


# -- cooperating processes ---------------------------------------------------------------------------------


def _json(path: Path) -> dict:
    return json.loads(path.read_text().strip().splitlines()[-1])


def _two_cooperating(run: Path, out: Path, tmp_path: Path) -> tuple[dict, dict]:
    """Two ``--cooperate`` processes on one store, the second started 0.5 s after the first; their JSON results.

    Slower pairs (``LCA_TEST_PAUSE``), the same numbers: both processes get work. Their stderr goes to ``a.out``
    and ``b.out`` in ``tmp_path``; both must succeed.
    """
    logs = [tmp_path / "a.out", tmp_path / "b.out"]
    os.environ["LCA_TEST_PAUSE"] = "0.03"
    try:
        a = fork_start(lambda: cli("compute", run, "--out", out, "--json", "-q", "--cooperate", *ROWS), stderr=logs[0])
        time.sleep(0.5)
        b = fork_start(lambda: cli("compute", run, "--out", out, "--json", "-q", "--cooperate", *ROWS), stderr=logs[1])
        codes = [fork_wait(a), fork_wait(b)]
    finally:
        del os.environ["LCA_TEST_PAUSE"]
    assert codes == [0, 0], [p.read_text() for p in logs]
    return _json(logs[0]), _json(logs[1])


def test_two_cooperating_processes_never_compute_a_pair_twice(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run, ref = tiny
    out = tmp_path / "s.zarr"
    ra, rb = _two_cooperating(run, out, tmp_path)
    assert {ra["role"], rb["role"]} == {"owner", "helper"}
    assert ra["computed"] > 0 and rb["computed"] > 0
    assert ra["computed"] + rb["computed"] == ra["pairs"] == 24  # every pair computed exactly once
    assert_same_tree(out, ref)
    assert leftovers(tmp_path, {"s.zarr", "a.out", "b.out"}) == []


@pytest.mark.slow
def test_a_probed_run_shared_by_two_processes_is_the_one_process_store(tmp_path: Path) -> None:
    """A run long enough for the survey's probes: the owner's loop takes the probes' gradients for the pairs it
    computes, a helper evaluates them again for the pairs it claims, and the store is the one-process store."""
    run, ref = reference_run(tmp_path / "probed", MIN_PROBED_PAIRS)
    assert LcaStore.open(ref).attrs["calibration"]["train"]["probes"] == 4
    out = tmp_path / "s.zarr"
    ra, rb = _two_cooperating(run, out, tmp_path)
    assert ra["computed"] > 0 and rb["computed"] > 0 and ra["computed"] + rb["computed"] == MIN_PROBED_PAIRS
    assert_same_tree(out, ref)


def test_a_killed_helper_s_chunk_is_taken_over(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """kill -9 of a cooperating process: the owner takes its claim over (its pid is gone) and finishes."""
    run, ref = tiny
    out = tmp_path / "s.zarr"
    os.environ["LCA_TEST_PAUSE"] = "0.04"  # the owner must not finish before the helper holds a claim
    try:
        owner = fork_start(lambda: cli("compute", run, "--out", out, "-q", "--cooperate", *ROWS))
        time.sleep(0.5)
        helper = fork_start(lambda: cli("compute", run, "--out", out, "-q", "--cooperate", *ROWS))
        deadline = time.monotonic() + 30
        mine = set()
        while not mine and time.monotonic() < deadline:  # wait until the helper holds a claim
            for p in claims_path(out).glob("chunk-*"):
                if f'"pid": {helper}' in p.read_text(errors="replace"):
                    mine.add(p.name)
            time.sleep(0.05)
        assert mine
        os.kill(helper, signal.SIGKILL)
        assert fork_wait(helper) == -signal.SIGKILL
        assert fork_wait(owner) == 0
    finally:
        del os.environ["LCA_TEST_PAUSE"]
    assert_same_tree(out, ref)


# -- torchrun ------------------------------------------------------------------------------------------------


def _torchrun(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "lca_cli", "compute", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})}, cwd=tmp_path
    )


def _ours(stderr: str) -> list[str]:
    """lca's own lines of a torchrun job's stderr (torchrun adds its warnings and failure report)."""
    ours = ("Error:", "lca compute:", "Note:", "/")
    return [ln for ln in stderr.splitlines() if ln.startswith(ours) or ".zarr" in ln]


@pytest.mark.slow
def test_torchrun_two_processes_give_the_one_process_store(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """With --overwrite of an old store, too: rank 0 computes alone until the new store is in place."""
    run, ref = tiny
    out = tmp_path / "s.zarr"
    assert fork_call(lambda: cli("compute", run, "--out", out, "-q", "--steps", ":3", *ROWS)) == 0  # the old store
    args = [str(run), "--out", str(out), "--json", "--progress", "plain", "--overwrite", *ROWS]
    done = _torchrun(args, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # rank 0 alone prints the result
    assert result["processes"] == 2 and result["computed"] == 24
    ours = _ours(done.stderr)
    assert sum("pair(s) computed in 2 processes" in ln for ln in ours) == 1, done.stderr  # rank 0's summary, once
    assert_same_tree(out, ref)
    assert leftovers(tmp_path, {"s.zarr"}) == []


@pytest.mark.slow
def test_torchrun_writes_big_chunks_as_one_process_does(tmp_path: Path) -> None:
    """A 400k-parameter MLP's chunks (1.6 MB rows, over 1 MiB a chunk) are written around the page cache, rank 1's
    without the lock's fence (temporary files beside their targets): the store is the one-process store."""
    run, ref = reference_run(tmp_path / "wide", 6, hidden=40_000, lr=0.02, rows=["--threads", "1"])
    out = tmp_path / "s.zarr"
    done = _torchrun([str(run), "--out", str(out), "--json", "--threads", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["processes"] == 2 and result["computed"] == 6
    assert LcaStore.open(out).rows_per_chunk == 5  # two chunks: 5 rows, then 1 in a padded chunk
    assert_same_tree(out, ref)
    assert leftovers(tmp_path, {"s.zarr", "wide"}) == [] and not list(out.rglob("*.partial"))


@pytest.mark.slow
def test_torchrun_a_failing_rank_stops_every_rank_and_keeps_finished_rows(
    tiny: tuple[Path, Path], tmp_path: Path
) -> None:
    run, ref = tiny
    out = tmp_path / "s.zarr"
    # Rank 1's network gives NaN (the others are unchanged); pairs are slowed so rank 0 is mid-way.
    done = _torchrun(
        [str(run), "--out", str(out), "--progress", "none", *ROWS], tmp_path,
        {"LCA_TEST_FAIL_RANK": "1", "LCA_TEST_PAUSE": "0.01"},
    )  # fmt: skip
    assert done.returncode != 0
    errors = [ln for ln in _ours(done.stderr) if ln.startswith("Error:")]
    assert errors[0].startswith("Error: rank 1: loss is nan"), done.stderr
    assert all("Traceback" not in ln for ln in _ours(done.stderr))
    store = LcaStore.open(out)
    kept = int(store.done().sum())
    assert 0 < kept < 24  # rank 0's finished rows are kept; rank 1 computed none
    assert fork_call(lambda: cli("verify", out)) == 0
    assert fork_call(lambda: cli("compute", run, "--out", out, "-q", *ROWS)) == 0  # fixed: rerun, one process
    assert_same_tree(out, ref)


def test_team_from_environment() -> None:
    assert Team.from_env({}) is None
    assert Team.from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None  # torchrun with one process: alone
    team = Team.from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert team is not None and (team.rank, team.size, team.local_rank, team.local_size) == (3, 4, 1, 2)
