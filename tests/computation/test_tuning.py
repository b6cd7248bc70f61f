"""Automatic choices: the checkpoints' dtype, and the thread count chosen by timing (tuning.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import RunCache, copy_run
from safetensors.torch import load_file, save_file

from lca_cli.computation import tuning
from lca_cli.computation.runner import compute
from lca_cli.computation.tuning import ThreadTuner, checkpoint_dtype, usable_cores
from lca_cli.store.lcastore import LcaStore


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
