"""Automatic choices: the checkpoints' dtype, and the thread count chosen by timing (tuning.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RunCache, copy_run
from safetensors.torch import load_file, save_file

from lca_cli.computation import tuning
from lca_cli.computation.config import load_config
from lca_cli.computation.engine import build_engine
from lca_cli.computation.runner import compute
from lca_cli.computation.tuning import ThreadTuner, checkpoint_dtype, usable_cores
from lca_cli.store.lcastore import LcaStore
from lca_cli.training.record import CheckpointWriter


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_checkpoint_dtype() -> None:
    f32, f64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)
    steps = torch.tensor(3)  # integer buffers do not count
    assert checkpoint_dtype({"w": f32, "b": f32, "n": steps}) == "float32"
    assert checkpoint_dtype({"w": f64, "b": f64, "n": steps}) == "float64"
    assert checkpoint_dtype({"w": f64, "b": f32}) == "float32"
    assert checkpoint_dtype({"w": torch.zeros(2, dtype=torch.bfloat16)}) == "float32"
    assert checkpoint_dtype({"w": torch.zeros(2, dtype=torch.float16)}) == "float32"
    assert checkpoint_dtype({"n": steps}) == "float32"


def test_usable_cores() -> None:
    assert 1 <= usable_cores() <= (__import__("os").cpu_count() or 1)


class FakeMachine:
    """A clock and a probe whose cost depends on torch's thread count (seconds per call, by count)."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost = dict(cost)
        self.now = 0.0
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def probe(self) -> None:
        n = torch.get_num_threads()
        self.calls.append(n)
        self.now += self.cost[n]


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        ({1: 0.010, 2: 0.030}, 1),  # a busy machine: one thread is faster
        ({1: 0.030, 2: 0.016}, 2),  # an idle one: both cores help
        ({1: 0.010, 2: 0.0098}, 1),  # 2% faster is not worth it (one thread degrades gracefully later)
    ],
)
def test_tuner_keeps_the_faster_count(cost: dict[int, float], expected: int) -> None:
    machine = FakeMachine(cost)
    lines: list[str] = []
    tuner = ThreadTuner(machine.probe, [1, 2, 2], lines.append, machine.clock)
    assert tuner.choose() == expected == torch.get_num_threads()
    assert tuner.timings == pytest.approx(cost)
    # One warm-up per count, then alternating timings until MAX_TIMINGS each (these probes are fast).
    assert machine.calls[:2] == [1, 2] and machine.calls[2:] == [1, 2] * tuning.MAX_TIMINGS
    assert len(lines) == 1 and lines[0].startswith(f"threads: {expected} (--threads auto, start-up")


def test_tuner_probe_budget_for_slow_probes() -> None:
    machine = FakeMachine({1: 2.0, 2: 1.5})  # a big model: every probe costs seconds
    tuner = ThreadTuner(machine.probe, [1, 2], None, machine.clock)
    assert tuner.choose() == 2
    assert len(machine.calls) == 4  # warm-ups and one timing each, not MAX_TIMINGS


def test_tuner_single_candidate_is_not_timed() -> None:
    machine = FakeMachine({1: 1.0})
    tuner = ThreadTuner(machine.probe, [1, 1], None, machine.clock)
    assert tuner.choose() == 1 and machine.calls == []


def test_tuner_rechecks_when_pairs_slow_down() -> None:
    machine = FakeMachine({1: 0.010, 2: 0.005})
    lines: list[str] = []
    tuner = ThreadTuner(machine.probe, [1, 2], lines.append, machine.clock)
    assert tuner.choose() == 2
    for _ in range(tuning.WINDOW + 3):  # steady pairs: 0.2 s for 2 gradients
        assert not tuner.observe(0.2, 2)
    # Per gradient, not per pair: a pair that refined (more gradients) is not a slowdown.
    assert not tuner.observe(2.0, 20)
    # Another job starts: two threads now wait for each other. Pairs 5x slower per gradient re-check, once
    # SLOW_PAIRS of them came in a row and enough compute time passed since the last check.
    machine.cost = {1: 0.012, 2: 0.060}
    results = [tuner.observe(1.0, 2) for _ in range(int(tuning.RECHECK_MIN_SECONDS))]
    first = results.index(True)
    assert first >= tuning.SLOW_PAIRS - 1 and not any(results[:first])
    assert tuner.chosen == 1 == torch.get_num_threads()
    assert len(lines) == 2 and "re-checked after a slowdown" in lines[1]


def test_tuner_rechecks_periodically() -> None:
    machine = FakeMachine({1: 0.010, 2: 0.030})
    tuner = ThreadTuner(machine.probe, [1, 2], None, machine.clock)
    assert tuner.choose() == 1
    machine.cost = {1: 0.010, 2: 0.004}  # the other job ended
    steady = [tuner.observe(10.0, 2) for _ in range(int(tuning.PERIODIC_SECONDS // 10))]
    assert steady[-1] and not any(steady[:-1]) and tuner.chosen == 2


def test_compute_with_threads_auto_logs_its_choice(runs: RunCache, tmp_path: Path) -> None:
    run_dir, config = runs.run("tanh_mlp")
    lines: list[str] = []
    torch.set_num_threads(1)
    auto = config.with_overrides(threads="auto", device="cpu")
    result = compute(run_dir, auto, tmp_path / "a.zarr", note=lines.append)
    lines = [line for line in lines if line.startswith("threads: ")]
    assert len(lines) == 1
    assert result.threads == int(lines[0].split()[1])
    assert torch.get_num_threads() == 1  # the process's setting is restored afterwards
    # An explicit count is used as given and measures nothing.
    lines.clear()
    result = compute(run_dir, config.with_overrides(threads=1), tmp_path / "b.zarr", note=lines.append)
    assert not [line for line in lines if line.startswith("threads")] and result.threads == 1


def test_dtype_auto_follows_float64_checkpoints(runs: RunCache, tmp_path: Path) -> None:
    src, config = runs.run("tanh_mlp")
    run_dir = copy_run(src, tmp_path / "f64")
    for path in run_dir.glob("*.safetensors"):
        state = load_file(str(path))
        save_file({k: v.double() for k, v in state.items()}, str(path), metadata={"step": path.stem.split("_")[1]})
    result = compute(run_dir, config.with_overrides(threads=1), tmp_path / "s.zarr")
    store = LcaStore.open(tmp_path / "s.zarr")
    assert store.attrs["evaluation"]["dtype"] == "float64" == result.settings["dtype"]
    # float64 checkpoints in a float64 network: plain Simpson's residual is float64 rounding only.
    assert store.attrs["identity"]["compute"]["dtype"] == "float64"


# -- tied weights under the default --threads auto ------------------------------------------------------------

TIED_FACTORIES = """
import torch


class TiedLM(torch.nn.Module):
    def __init__(self, vocab=13, dim=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.out = torch.nn.Linear(dim, vocab)
        self.out.weight = self.emb.weight  # one tensor, two names (GPT-2's tie)

    def forward(self, ids):
        return self.out(torch.tanh(self.mix(self.emb(ids))))


def model():
    torch.manual_seed(0)
    return TiedLM()


def data(n=96):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 13, (n,), generator=g)
    return ids, (ids * 5 + 2) % 13
"""


def tied_run(root: Path, steps: int = 4) -> Path:
    """A plain-PyTorch run of a model whose output layer shares the embedding's weight, written by the writer."""
    run = root / "tied"
    run.mkdir(parents=True)
    (run / "tiedlm.py").write_text(TIED_FACTORIES)
    ns: dict[str, object] = {}
    exec(compile(TIED_FACTORIES, "tiedlm", "exec"), ns)
    net: torch.nn.Module = ns["model"]()  # type: ignore[operator]
    x, y = ns["data"]()  # type: ignore[operator]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    with CheckpointWriter(run) as ckpt:
        ckpt.write_config(model="tiedlm:model", data="tiedlm:data", loss="cross_entropy")
        ckpt.save(net, 0)
        for step in range(1, steps + 1):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
            ckpt.save(net, step)
    return run


def test_model_point_gives_a_tied_tensor_once(tmp_path: Path) -> None:
    run = tied_run(tmp_path, steps=1)
    engine, _, spec = build_engine(load_config(run / "lca.toml"), torch.device("cpu"))
    assert spec.aliases == {"out.weight": "emb.weight"}
    v, fixed = tuning.model_point(next(iter(engine.objectives.values())).model, spec, engine.vlayout, engine.device)
    assert "out.weight" not in fixed and v.numel() == engine.vlayout.size
    loss, grad = next(iter(engine.objectives.values())).head(1).value_and_grad(v, fixed)  # the tuner's probe
    assert torch.isfinite(loss) and grad.shape == v.shape


@pytest.mark.skipif(usable_cores() < 2, reason="--threads auto times nothing on one core")
def test_tied_weights_compute_with_no_flags(tmp_path: Path) -> None:
    """``lca compute RUN`` as a user types it: --threads auto times the model, which must see the tie once."""
    run = tied_run(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # auto must time
    proc = subprocess.run(
        [sys.executable, "-m", "lca_cli", "compute", str(run)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "threads: " in proc.stderr and "--threads auto" in proc.stderr  # the timing step ran
    store = LcaStore.open(run / "lca.zarr")
    assert store.done().all() and len(store.steps) == 5
    assert store.attrs["tied"] == {"out.weight": "emb.weight"}
    loss, residual = store.read("train", "loss"), store.read("train", "residual")
    assert np.abs(residual).max() <= 1e-4 * np.abs(np.diff(loss)).max()  # conserves
