"""Following a trainer that rotates its checkpoints (held in a staging folder), and deletions that stay in the run.

Real processes: a writer process saves a Trainer-like ``checkpoint-N/`` folder every 0.3 s and deletes all but
the newest three (``save_total_limit=3``), while ``lca compute --follow`` runs beside it with default flags.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from runs import FACTORIES
from safetensors.torch import save_file

from lca_cli.computation.config import load_config
from lca_cli.computation.follow import Pruner
from lca_cli.computation.plan import Schedule
from lca_cli.computation.runner import compute
from lca_cli.computation.staging import STAGING_DIR, missing_pairs
from lca_cli.sources import CheckpointRef, find_checkpoints
from lca_cli.store.identity import Alignment
from lca_cli.store.lcastore import LcaStore

#: A trainer saving ``checkpoint-N/`` folders (weights, optimizer state, trainer state) every PERIOD seconds,
#: keeping the newest three: Hugging Face Trainer's rotation with save_total_limit=3.
TRAINER = """
import json, shutil, sys, time
from pathlib import Path
import torch
from safetensors.torch import save_file
sys.path.insert(0, sys.argv[1])
import tinyfactories as f

run, steps, period = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
net = f.model()
x, y = f.data()
opt = torch.optim.SGD(net.parameters(), lr=0.3, momentum=0.9)
g = torch.Generator().manual_seed(2)
log = []
for step in range(steps + 1):
    if step:
        idx = torch.randint(0, x.shape[0], (32,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    d = run / f"checkpoint-{step}"
    d.mkdir()
    save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, d / "model.safetensors")
    torch.save(opt.state_dict(), d / "optimizer.pt")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    log.append(step)
    for old in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[:-3]:
        shutil.rmtree(old)
    time.sleep(period)
"""


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "tinyfactories.py").write_text(FACTORIES)
    (run / "lca.toml").write_text(
        textwrap.dedent("""
        [model]
        factory = "tinyfactories:model"
        [data]
        factory = "tinyfactories:data"
        [loss]
        name = "cross_entropy"
        """)
    )
    (tmp_path / "trainer.py").write_text(TRAINER)
    return run


def _trainer(tmp_path: Path, run: Path, steps: int, period: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(tmp_path / "trainer.py"), str(run), str(steps), str(period)])


def _lca(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    lca = Path(sys.executable).parent / "lca"
    return subprocess.run(
        [str(lca), *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}
    )


@pytest.mark.slow
def test_follow_beside_a_rotating_trainer_stores_every_pair(tmp_path: Path) -> None:
    run = _run(tmp_path)
    steps = 20
    lca = subprocess.Popen(
        [str(Path(sys.executable).parent / "lca"), "compute", str(run), "--follow", "--until", str(steps), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    trainer = _trainer(tmp_path, run, steps, 0.3)
    out, err = lca.communicate(timeout=300)
    assert trainer.wait(timeout=60) == 0
    assert lca.returncode == 0, err
    # The survey of the first checkpoints kept gradients that the loop took, the checkpoints held for it.
    assert json.loads(out)["reused"] >= 1, out
    store = LcaStore.open(run / "lca.zarr")
    assert list(store.steps) == list(range(steps + 1))
    assert bool(store.done().all()) and store.n_pairs == steps  # pairs stored == pairs trained
    assert missing_pairs(store) == []
    assert not (run / STAGING_DIR).exists()  # released as stored, removed at the end
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [f"checkpoint-{s}" for s in (18, 19, 20)]
    # The held links had the run's bytes: a later call matches every stored fingerprint it can still see.
    again = _lca("compute", run)
    assert again.returncode == 0, again.stderr


@pytest.mark.slow
def test_follow_that_falls_behind_records_missing_pairs_and_a_later_call_reports_them(tmp_path: Path) -> None:
    run = _run(tmp_path)
    steps = 12
    trainer = _trainer(tmp_path, run, steps, 0.3)
    os.environ["LCA_TEST_PAUSE"] = "0.2"  # about a second or more a pair: slower than the trainer
    notes: list[str] = []
    try:
        config = load_config(run / "lca.toml").with_overrides(threads=1)
        result = compute(
            run, config, run / "lca.zarr", schedule=Schedule(follow=True, until=steps, backlog=3), note=notes.append
        )
    finally:
        del os.environ["LCA_TEST_PAUSE"]
    assert trainer.wait(timeout=60) == 0
    said = "\n".join(notes)
    assert "falling behind training" in said and "backlog limit 3" in said, said
    store = LcaStore.open(run / "lca.zarr")
    lost = missing_pairs(store)
    assert lost, said
    steps_stored = [int(s) for s in store.steps]
    done = store.done()
    for a, b in lost:  # recorded, never computed, never a longer step
        t = steps_stored.index(a)
        assert steps_stored[t + 1] == b and not done[t]
    assert steps_stored == list(range(steps + 1))
    assert int(done.sum()) + len(lost) == steps and result.computed == int(done.sum())
    assert not (run / STAGING_DIR).exists()
    # A later call says which pairs are missing (exit 0); those whose checkpoints the run still holds (the
    # newest three) are computed now.
    present = {r.step for r in find_checkpoints(run)}
    gone = [p for p in lost if not set(p) <= present]
    later = _lca("compute", run)
    assert later.returncode == 0, later.stderr
    assert f"{len(gone)} pair(s) are missing" in later.stderr and "missing_pairs" in later.stderr, later.stderr
    assert int(LcaStore.open(run / "lca.zarr").done().sum()) == steps - len(gone)


# -- deletions stay inside the run ----------------------------------------------------------------------------


def _weights(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2)}, path)


class _Done:
    def __init__(self, n: int) -> None:
        self.n = n

    def done(self) -> np.ndarray:
        return np.ones(self.n, dtype=bool)


def test_prune_never_follows_a_symlinked_step_folder(tmp_path: Path) -> None:
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere" / "ckpt"
    for d in (run / "checkpoint-0", elsewhere, run / "checkpoint-2"):
        _weights(d / "model.safetensors")
        (d / "optimizer.pt").write_bytes(b"state")
        (d / "trainer_state.json").write_text("{}")
    (run / "checkpoint-1").symlink_to(elsewhere, target_is_directory=True)
    refs = find_checkpoints(run)
    assert [r.step for r in refs] == [0, 1, 2]
    notes: list[str] = []
    pruner = Pruner(_Done(2), Alignment([0, 1, 2], list(refs), 3), notes.append, run=run)  # type: ignore[arg-type]
    pruner.prune()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["model.safetensors", "optimizer.pt", "trainer_state.json"]
    assert (run / "checkpoint-1").is_symlink()  # at most its link would go; lca keeps it, with a note
    assert not (run / "checkpoint-0").exists() and (run / "checkpoint-2" / "model.safetensors").exists()
    assert any("symlink" in n for n in notes), notes


def test_prune_never_deletes_what_a_shard_index_names_outside_the_folder(tmp_path: Path) -> None:
    run = tmp_path / "a" / "b" / "run"
    decoy = tmp_path / "decoy" / "secret.safetensors"
    absolute = tmp_path / "decoy" / "absolute.safetensors"
    for f in (decoy, absolute):
        _weights(f)
    folders = []
    for step in range(3):
        d = run / f"checkpoint-{step}"
        _weights(d / "model-00001-of-00002.safetensors")
        (d / "model.safetensors.index.json").write_text("{}")
        # As a malicious index would have discovery list them: one shard inside, one through ../, one absolute.
        folders.append(CheckpointRef(d, step, (d / "model-00001-of-00002.safetensors", d / "../../../../decoy" /
                                                decoy.name, absolute)))  # fmt: skip
    link = run / "checkpoint-0" / "linked.safetensors"
    link.symlink_to(decoy)
    pruner = Pruner(_Done(2), Alignment([0, 1, 2], list(folders), 3), run=run)  # type: ignore[arg-type]
    assert pruner.prune() == 2
    assert decoy.exists() and absolute.exists()
    assert not (run / "checkpoint-1").exists()
    assert sorted(p.name for p in (run / "checkpoint-0").iterdir()) == ["linked.safetensors"]  # a link, kept


def test_a_flat_checkpoint_that_is_a_symlink_keeps_its_target(tmp_path: Path) -> None:
    run, outside = tmp_path / "run", tmp_path / "outside.safetensors"
    _weights(outside)
    for step in (0, 2):
        _weights(run / f"step_{step}.safetensors")
    (run / "step_1.safetensors").symlink_to(outside)
    refs = [CheckpointRef(run / f"step_{s}.safetensors", s) for s in range(3)]
    pruner = Pruner(_Done(2), Alignment([0, 1, 2], list(refs), 3), run=run)  # type: ignore[arg-type]
    pruner.prune()
    assert outside.exists() and (run / "step_1.safetensors").is_symlink()
    assert not (run / "step_0.safetensors").exists()


def test_held_checkpoints_survive_rotation_and_are_released(tmp_path: Path) -> None:
    from lca_cli.computation.follow import Follower

    run = tmp_path / "run"
    for step in range(2):
        _weights(run / f"checkpoint-{step}" / "model.safetensors")
    follower = Follower(run)
    try:
        held = follower.checkpoints()
        assert [r.step for r in held] == [0, 1]
        shutil.rmtree(run / "checkpoint-0")  # rotation
        assert held[0].weight_files[0].read_bytes() == (held[1].weight_files[0]).read_bytes()
        assert [r.step for r in follower.checkpoints()] == [0, 1]
        assert follower.release(0) is not None and not held[0].path.exists()
    finally:
        follower.close()
    assert not (run / STAGING_DIR).exists()
