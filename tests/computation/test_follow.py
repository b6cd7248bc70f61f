"""Following a run while it trains (``--follow``) and deleting the checkpoints it no longer needs (``--prune``)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import PER_PAIR, assert_same_tree, reference_run

from lca_cli.computation.config import load_config
from lca_cli.computation.distributed import Scope
from lca_cli.computation.follow import END_MARKER, Follower, Pruner, read_end_marker
from lca_cli.computation.plan import Schedule
from lca_cli.computation.runner import compute
from lca_cli.errors import UsageError
from lca_cli.sources import CheckpointRef, find_checkpoints
from lca_cli.store.identity import Alignment
from lca_cli.store.lcastore import LcaStore
from lca_cli.training.record import CheckpointWriter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 16-pair run and its store computed in one ordinary run (the reference), each pair to its own row.

    A store that follows a run is made from its first checkpoints, so its default run scale is the first pair's.
    """
    return reference_run(tmp_path_factory.mktemp("follow"), 16, *PER_PAIR)


def test_the_writer_leaves_an_end_marker_and_append_removes_it(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    with CheckpointWriter(tmp_path) as ckpt:
        ckpt.save(net, 0)
        assert read_end_marker(tmp_path) is None  # not while training
        ckpt.save(net, 1)
    assert read_end_marker(tmp_path) == {"last_step": 1, "time": read_end_marker(tmp_path)["time"]}  # type: ignore[index]
    ckpt = CheckpointWriter(tmp_path, append=True)  # training goes on
    assert read_end_marker(tmp_path) is None
    ckpt.save(net, 2)
    ckpt.close()
    assert read_end_marker(tmp_path)["last_step"] == 2  # type: ignore[index]


def test_a_checkpoint_is_used_once_complete(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 1)
    with CheckpointWriter(tmp_path) as ckpt:
        ckpt.save(net, 0)
    torch.save(net.state_dict(), tmp_path / "step_00000001.pt")  # written in place, maybe still growing
    follower = Follower(tmp_path, settle=0.4)
    assert [r.step for r in follower.checkpoints()] == [0]  # a safetensors file is complete once listed
    time.sleep(0.5)
    assert [r.step for r in follower.checkpoints()] == [0, 1]


def _flat(path: Path, step: int) -> CheckpointRef:
    path.write_bytes(b"x")
    return CheckpointRef(path, step)


class _Done:
    """A stand-in store: only its done mask matters to the pruner."""

    def __init__(self, done: list[bool]) -> None:
        self._done = np.array(done)

    def done(self) -> np.ndarray:
        return self._done


def test_pruning_deletes_only_checkpoints_no_pair_needs_and_never_the_newest(tmp_path: Path) -> None:
    refs: list[CheckpointRef | None] = [_flat(tmp_path / f"step_{i}.safetensors", i) for i in range(5)]
    (tmp_path / "step_1.safetensors").unlink()
    refs[1] = None  # already deleted (rotation)
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    # Pairs 0, 1 and 3 done: checkpoint 0 (pair 0) and 1 (gone) go; 2 is the start of pair 2, not done;
    # 3 is its end; 4 is the newest.
    pruner = Pruner(_Done([True, True, False, True]), Alignment(list(range(5)), refs, 5))  # type: ignore[arg-type]
    assert pruner.prune() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", *(f"step_{i}.safetensors" for i in (2, 3, 4))]
    pruner.store = _Done([True, True, True, True])  # type: ignore[assignment]
    assert pruner.prune() == 2 and pruner.deleted == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "step_4.safetensors"]


def test_pruning_a_training_folder(tmp_path: Path) -> None:
    def folder(name: str, extra: list[str]) -> CheckpointRef:
        d = tmp_path / name
        d.mkdir()
        for f in ["model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json", "rng_state.pth", *extra]:
            (d / f).write_bytes(b"x")
        return CheckpointRef(d, int(name.split("-")[1]), (d / "model.safetensors",))

    refs: list[CheckpointRef | None] = [folder("checkpoint-0", []), folder("checkpoint-1", ["my_plot.png"])]
    refs.append(folder("checkpoint-2", []))
    notes: list[str] = []
    pruner = Pruner(_Done([True, True]), Alignment([0, 1, 2], refs, 3), notes.append)  # type: ignore[arg-type]
    assert pruner.prune() == 2
    assert not (tmp_path / "checkpoint-0").exists()  # only training state was left: the folder goes
    assert sorted(p.name for p in (tmp_path / "checkpoint-1").iterdir()) == ["my_plot.png"]  # what is not ours stays
    assert len(notes) == 1 and "my_plot.png" in notes[0]
    assert (tmp_path / "checkpoint-2" / "model.safetensors").exists()  # the newest


def _copy_in(run: Path, dest: Path, names: list[str]) -> None:
    """Add checkpoints as a training script would: a hidden temporary file, renamed into place."""
    for name in names:
        tmp = dest / f".{name}.partial"
        shutil.copy2(run / name, tmp)
        os.replace(tmp, dest / name)


def test_follow_and_prune_beside_training_end_with_the_ordinary_store(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run, ref = tiny
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy2(run / "lca.toml", live)
    shutil.copy2(run / "tinyfactories.py", live)
    names = sorted(p.name for p in run.glob("step_*.safetensors"))
    most, stuck = [0], []

    def train() -> None:  # checkpoints while compute follows, then the end marker
        _copy_in(run, live, names[:2])
        for name in names[2:]:
            # Training slower than LCA (as on a second GPU): the next step once the disk holds at most 3
            # checkpoints, which happens only if pairs are computed and their checkpoints pruned meanwhile.
            deadline = time.monotonic() + 60
            while len(list(live.glob("step_*"))) > 3 and time.monotonic() < deadline:
                time.sleep(0.02)
            if time.monotonic() >= deadline:
                stuck.append(name)
            _copy_in(run, live, [name])
            most[0] = max(most[0], len(list(live.glob("step_*"))))
        (live / END_MARKER).write_text('{"last_step": 16}')

    writer = threading.Thread(target=train)
    writer.start()
    config = load_config(live / "lca.toml").with_overrides(rows_per_chunk=4, threads=1, l1_scope="pair")
    schedule = Schedule(follow=True, prune=True, poll=0.05, idle_timeout=60)
    result = compute(live, config, live / "lca.zarr", schedule=schedule)
    writer.join()
    assert result.ended is not None and "training ended" in result.ended and result.computed == 16
    assert result.pruned == 16 and [p.name for p in live.glob("step_*")] == [names[-1]]  # all but the newest
    assert not stuck and most[0] <= 4, (stuck, most)  # a few checkpoints on disk at any time, never the run
    # The same rows as an ordinary run (the config's folder differs: an attribute that says where it was).
    assert_same_tree(live / "lca.zarr", ref, skip_root_attrs=("created", "updated", "device", "config"))


def test_follow_stops_at_until_or_when_idle(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = tiny
    part = tmp_path / "run"
    shutil.copytree(run, part, ignore=shutil.ignore_patterns("*.zarr", END_MARKER))
    config = load_config(part / "lca.toml").with_overrides(rows_per_chunk=4, threads=1)
    out = tmp_path / "s.zarr"
    result = compute(part, config, out, schedule=Schedule(follow=True, until=6, poll=0.05))
    assert "--until" in (result.ended or "") and result.computed == 6
    assert list(np.flatnonzero(LcaStore.open(out).done())) == list(range(6))
    result = compute(part, config, out, schedule=Schedule(follow=True, idle_timeout=0.3, poll=0.05))
    assert "--idle-timeout" in (result.ended or "") and result.computed == 10
    with pytest.raises(UsageError, match="one process"):
        compute(part, config, out, schedule=Schedule(Scope(shard=0, shards=2), follow=True))
    with pytest.raises(UsageError, match="go with --follow"):
        compute(part, config, out, schedule=Schedule(until=3))
    assert [r.step for r in find_checkpoints(part)] == list(range(17))  # nothing pruned without --prune
