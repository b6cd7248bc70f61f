"""The performance paths equal the plain ones, and the benchmark scripts' logic is right.

* ``Objective.value_and_grad`` (one functional_call per point, one leaf per tensor, fused float64
  accumulation) gives exactly what the plain formulation gives: one flat leaf, ``functional_call`` per chunk,
  ``g.double()`` added per chunk.
* Per-tensor sums and helped/hurt counts, reduced per block on the device, agree with the stored rows, also
  when a block is cut short and resumed.
* ``compute.compile`` (``torch.compile``, inductor) works on CPU and matches eager to float rounding.
* ``scripts/bench.py`` / ``scripts/bench_store.py``: ratios, tables, generated runs and synthetic rows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from load_scripts import load_script
from torch.func import functional_call

from lca_cli.computation.config import Config
from lca_cli.computation.engine import CheckpointLoader, build_engine
from lca_cli.computation.runner import compute
from lca_cli.core.objective import Objective
from lca_cli.core.vectors import flatten, unflatten
from lca_cli.store.lcastore import LcaStore

CPU = torch.device("cpu")
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_script(name: str) -> ModuleType:
    return load_script(name)


def plain_value_and_grad(
    obj: Objective, v: torch.Tensor, fixed: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unoptimised formulation the fast path replaced (kept here as the reference)."""
    flat = v.detach().to(obj.dtype).clone().requires_grad_(True)
    tensors = {k: t.to(obj.dtype) if t.is_floating_point() else t for k, t in fixed.items()}
    for name in obj._mutable:
        if name in tensors:
            tensors[name] = tensors[name].clone()
    tensors.update(unflatten(obj.vlayout, flat))
    loss = torch.zeros((), dtype=torch.float64)
    grad = torch.zeros(flat.shape, dtype=torch.float64)
    for (x, y), w in zip(obj.evalset.chunks, obj._weights, strict=True):
        chunk_loss = obj.loss_fn(functional_call(obj.model, tensors, (x,)), y)
        (g,) = torch.autograd.grad(chunk_loss, flat)
        loss += chunk_loss.detach().double() * w
        grad.add_(g.double(), alpha=w)
    return loss, grad


def _engine(config: Config, run_dir: Path, **overrides: object) -> tuple[Objective, CheckpointLoader]:
    from lca_cli.sources import find_checkpoints

    engine, _, expected = build_engine(config.with_overrides(device="cpu", **overrides), CPU)
    loader = CheckpointLoader(find_checkpoints(run_dir), expected, engine.vlayout, CPU)
    return engine.objectives["train"], loader


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("relu_mlp", {"batch_size": 64}),
        ("relu_mlp", {"batch_size": 64, "dtype": "float64"}),
        ("bn_mlp", {"batch_size": 50}),
        ("bn_mlp", {"batch_size": 50, "bn_mode": "running"}),
        ("cnn", {"batch_size": 40}),
    ],
)
def test_value_and_grad_equals_plain_formulation(runs, kind: str, overrides: dict) -> None:
    run_dir, config = runs.run(kind)
    obj, loader = _engine(config, run_dir, **overrides)
    try:
        for i in (0, 3):
            v, fixed = loader.get(i)
            v_before = v.clone()
            fixed_before = {k: t.clone() for k, t in fixed.items()}
            loss, grad = obj.value_and_grad(v, fixed)
            ref_loss, ref_grad = plain_value_and_grad(obj, v, fixed)
            assert loss.dtype == grad.dtype == torch.float64
            assert torch.equal(loss, ref_loss)
            assert torch.equal(grad, ref_grad)
            assert torch.equal(v, v_before)  # the caller's vector and buffers are never touched
            assert all(torch.equal(fixed[k], fixed_before[k]) for k in fixed)
            assert float(obj.value(v, fixed)) == pytest.approx(float(loss), rel=1e-6)
    finally:
        loader.close()


def test_unused_parameter_gets_zero_gradient() -> None:
    from lca_cli.core.evalset import make_chunks
    from lca_cli.core.layout import Layout
    from lca_cli.core.losses import builtin_loss
    from lca_cli.core.model import prepare_model

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.unused = torch.nn.Parameter(torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    net = prepare_model(Net(), "batch")
    layout = Layout.from_module(net)
    data = (torch.randn(10, 3), torch.randint(0, 2, (10,)))
    obj = Objective(net, layout, make_chunks("train", data, 4, CPU, torch.float32), builtin_loss("cross_entropy"))
    v = flatten(layout, dict(net.named_parameters()))
    loss, grad = obj.value_and_grad(v, {})
    ref_loss, ref_grad = plain_value_and_grad(obj, v, {})
    assert torch.equal(grad, ref_grad) and torch.equal(loss, ref_loss)
    p = next(p for p in layout.params if p.name == "unused")
    assert torch.all(grad[p.offset : p.stop] == 0) and torch.any(grad != 0)


def test_block_reductions_match_rows_and_survive_a_cut_block(runs, tmp_path: Path) -> None:
    run_dir, config = runs.run("relu_mlp")
    cfg = config.with_overrides(device="cpu", rows_per_chunk=5, max_splits=4)
    whole = compute(run_dir, cfg, tmp_path / "whole.zarr")
    assert whole.computed == whole.n_pairs

    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        if done == 7:  # inside the second block of five
            stop.set()

    cut = compute(run_dir, cfg, tmp_path / "cut.zarr", progress=progress, stop=stop)
    assert cut.interrupted and cut.computed == 7
    assert LcaStore.open(tmp_path / "cut.zarr").done().sum() == 7
    resumed = compute(run_dir, cfg, tmp_path / "cut.zarr")
    assert resumed.skipped == 7 and resumed.computed == whole.n_pairs - 7

    a, b = LcaStore.open(tmp_path / "whole.zarr"), LcaStore.open(tmp_path / "cut.zarr")
    for name in ("lca", "loss", "residual", "splits", "flagged", "tensor_lca", "tensor_helped", "tensor_hurt"):
        np.testing.assert_array_equal(a.read("train", name), b.read("train", name), err_msg=name)
    lca = a.read("train", "lca").astype(np.float64)  # (T, P) float32 rows
    for k, p in enumerate(a.layout.params):
        cols = lca[:, p.offset : p.stop]
        np.testing.assert_allclose(a.read("train", "tensor_lca")[:, k], cols.sum(1), rtol=1e-5, atol=1e-12)
        np.testing.assert_array_equal(a.read("train", "tensor_helped")[:, k], (cols < 0).sum(1))
        np.testing.assert_array_equal(a.read("train", "tensor_hurt")[:, k], (cols > 0).sum(1))


def test_loader_reads_ahead_and_matches_direct_reads(runs) -> None:
    from lca_cli.core.vectors import split_state
    from lca_cli.sources import find_checkpoints, read_checkpoint

    run_dir, config = runs.run("bn_mlp")
    obj, loader = _engine(config, run_dir, bn_mode="running")
    refs = find_checkpoints(run_dir)
    try:
        v, fixed = loader.get(0)
        assert set(loader._futures) == {1, 2}  # the next two are being read in the background
        v_direct, fixed_direct = split_state(read_checkpoint(refs[0]), obj.vlayout, CPU)
        assert torch.equal(v, v_direct) and fixed.keys() == fixed_direct.keys()
        assert v.dtype == torch.float32  # a float32 checkpoint is held in float32 (exact, half of float64)
        loader.get(2)
        assert set(loader._futures) == {3, 4}  # 1 was skipped: dropped
    finally:
        loader.close()


@pytest.mark.slow
# torch.compile's own import path warns about torch.jit internals (not lca's code)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_option_works_on_cpu_and_matches_eager(runs, tmp_path: Path) -> None:
    run_dir, config = runs.run("relu_mlp")
    small = tmp_path / "run"
    small.mkdir()
    for p in sorted(run_dir.glob("*.safetensors"))[:3]:
        shutil.copy2(p, small / p.name)
    # one chunk, so that a single graph is compiled (a smaller last chunk would compile a second one)
    cfg = config.with_overrides(device="cpu", max_splits=2, batch_size=100_000)
    eager = compute(small, cfg, tmp_path / "eager.zarr")
    compiled = compute(small, cfg.with_overrides(compile=True), tmp_path / "compiled.zarr")
    assert compiled.computed == eager.computed == 2
    a, b = LcaStore.open(tmp_path / "eager.zarr"), LcaStore.open(tmp_path / "compiled.zarr")
    la, lb = a.read("train", "lca"), b.read("train", "lca")
    np.testing.assert_allclose(lb, la, rtol=1e-4, atol=1e-6 * float(np.abs(la).max()))
    np.testing.assert_allclose(b.read("train", "loss"), a.read("train", "loss"), rtol=1e-6)


# --------------------------------------------------------------------------------------------------------
# scripts/bench.py and scripts/bench_store.py


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _load_script("bench")


@pytest.fixture(scope="module")
def bench_store() -> ModuleType:
    return _load_script("bench_store")


def test_bench_summary_ratios(bench: ModuleType) -> None:
    case = bench.Case("mnist_fc", "d", pairs=10, samples=100)
    # round 2 is disturbed for both kinds: the paired median and the minima both see through it
    case.rounds = {
        "floor": [{"seconds": 1.0, "pairs": 10, "cpu_seconds": 1.0}, {"seconds": 3.0, "pairs": 10, "cpu_seconds": 1.0}],
        "compute": [
            {"seconds": 1.1, "pairs": 10, "cpu_seconds": 1.2, "loop_seconds": 1.0, "max_abs_residual": 1e-6},
            {"seconds": 3.3, "pairs": 10, "cpu_seconds": 1.2, "loop_seconds": 3.1, "max_abs_residual": 2e-6},
        ],
        "naive": [{"seconds": 2.2, "pairs": 10, "cpu_seconds": 2.0}, {"seconds": 2.2, "pairs": 10, "cpu_seconds": 2.0}],
    }
    case.memory = {"compute": {"peak_rss_mib": 300.0}}
    s = bench.summarize_case(case)
    assert s["compute_over_floor"] == pytest.approx(1.1)
    assert s["compute_over_floor_median"] == pytest.approx(1.1)
    assert s["compute_over_floor_cpu"] == pytest.approx(1.2)
    assert s["compute_over_naive"] == pytest.approx(0.5)
    assert s["compute_pairs_per_s"] == pytest.approx(1 / 0.11)
    assert s["compute_loop_s_per_pair"] == pytest.approx(0.1)
    assert s["max_abs_residual"] == 2e-6
    table = bench.format_table([s])
    assert "| mnist_fc | 10 |" in table and "1.100 (rounds 1.10-1.10; minima 1.100; cpu 1.200)" in table
    assert "- / 300 / -" in table


def test_bench_round_order_keeps_floor_and_compute_adjacent(bench: ModuleType) -> None:
    kinds = ["floor", "compute", "naive"]
    orders = [bench.round_order(kinds, r) for r in range(8)]
    for order in orders:
        assert sorted(order) == sorted(kinds)
        assert abs(order.index("floor") - order.index("compute")) == 1
    firsts = [min(("floor", "compute"), key=o.index) for o in orders[:4]]
    assert firsts.count("floor") == firsts.count("compute") == 2  # each goes first half of the time
    assert sum(o[0] == "naive" for o in orders[:4]) == 2  # the others run before as often as after
    assert bench.round_order(["floor", "compute", "naive", "compute-syncwrite"], 1)[-2:] == ["compute", "floor"]
    # With the default path measured too, the floor sits between compute and default, both neighbours.
    kinds = ["floor", "compute", "default", "naive"]
    for r in range(8):
        order = bench.round_order(kinds, r)
        assert sorted(order) == sorted(kinds)
        f = order.index("floor")
        assert {order[f - 1], order[f + 1]} == {"compute", "default"}


def test_bench_generates_a_run_and_links_a_prefix(bench: ModuleType, tmp_path: Path) -> None:
    from lca_cli.sources import find_checkpoints

    spec = bench._spec("small", True, 64, 32)
    data = bench.make_run(spec, tmp_path / "run", 4, spec.samples)
    refs = find_checkpoints(tmp_path / "run")
    assert [r.step for r in refs] == [0, 1, 2, 3]
    x, y = bench.load_data(str(data))
    assert x.shape == (64, 64) and y.shape == (64,)
    bench.link_prefix(tmp_path / "run", tmp_path / "two", 2)
    assert [r.step for r in find_checkpoints(tmp_path / "two")] == [0, 1]
    model = bench.build_model("mnist_fc")
    assert sum(p.numel() for p in model.parameters()) == 84_060
    assert sum(p.numel() for p in bench.build_model("resnet20").parameters()) == 273_066


def test_bench_store_synthetic_rows_and_table(bench_store: ModuleType) -> None:
    rows = bench_store.lca_like(3, 200, 0.1, seed=0)
    assert rows.dtype == np.float32 and rows.shape == (3, 200)
    assert np.all(rows[:, :20] == 0) and np.all(rows[:, 20:] != 0)
    block = bench_store.block_rows(6, rows)
    assert block.count == 3 and block.loss.shape == (4,) and block.tensor_helped.shape == (3, 1)
    table = bench_store.grid_table(
        [
            {
                "params": 10,
                "chunk_mib": 4.0,
                "rows_per_chunk": 12,
                "codec": "none",
                "write_MBps": 1.0,
                "block_write_ms_per_row": 2.0,
                "block_write_cpu_ms_per_row": 1.5,
                "read_cold_MBps": 3.0,
                "read_warm_MBps": 4.0,
                "size_ratio": 1.0,
            }
        ]
    )
    assert "| 10 | 4 (12) | none | 1 | 2.00 (1.50) | 3 | 4 | 1.000 |" in table


@pytest.mark.slow
def test_bench_quick_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "bench.py"),
            "--quick",
            "--sizes",
            "small",
            "--no-peak",
            "--threads",
            "1",
            "--kinds",
            "floor,compute,naive,compute-noprefetch,compute-syncwrite,compute-loop",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| small | 3 |" in proc.stdout
    import json

    summary = json.loads(out.read_text())["summary"][0]
    assert summary["compute_over_floor"] > 0 and summary["max_abs_residual"] < 1e-3
    assert summary["compute-noprefetch_over_compute"] > 0 and summary["compute-syncwrite_over_compute"] > 0
    assert summary["compute-loop_over_compute"] > 0


def test_bench_vmap_check_batches_two_points_equal_to_separate(bench: ModuleType) -> None:
    torch.set_num_threads(1)
    spec = bench._spec("small", True, 96, 40)  # three chunks, the last smaller
    r = bench.vmap_check(spec, CPU, reps=1)
    assert r["max_rel_grad_diff"] < 1e-6 and r["max_loss_diff"] < 1e-6
    assert r["batched_ms"] > 0 and r["separate_ms"] > 0


def test_bench_per_gradient_reports_interleaved_ratios(bench: ModuleType) -> None:
    torch.set_num_threads(1)
    spec = bench._spec("small", True, 96, 40)
    r = bench.per_gradient(spec, CPU, reps=4)
    assert r["reps"] == 4 and r["floor_ms"] > 0 and r["library_ms"] > 0
    q1, q3 = r["ratio_q1_q3"]
    assert 0 < q1 <= r["ratio_median"] <= q3


def test_accuracy_study_local_rule_is_the_librarys(tmp_path: Path) -> None:
    # accuracy_study.py calibrate replays a numpy copy of the local rule; at the default factor it must be the
    # library's integrate_pair, row for row, on gradients that jump (ReLU-like) so that panels are split.
    from lca_cli.core.integrate import JUMP_FACTOR, Evaluation, integrate_pair

    study = _load_script("accuracy_study")
    rng = np.random.default_rng(0)
    pairs, k, dim = 6, 16, 40
    s = np.linspace(0.0, 1.0, k + 1)[None, :, None]  # (1, k + 1, 1)
    amp = np.array([0.0, 0.01, 0.1, 1.0, 0.3, 3.0])[:, None, None]  # from smooth to ReLU-like jumps, per pair
    base, jumps = rng.standard_normal((pairs, 1, dim)), rng.uniform(0, 1, (pairs, 1, dim))
    grads = base + 0.006 * s**2 + amp * (s > jumps)  # (pairs, k + 1, dim)
    steps = rng.standard_normal((pairs, dim)) * 1e-2
    # The exact loss along each segment: the integral of Δ · g(s).
    losses = (steps[:, None] * (base * s + 0.002 * s**3 + amp * np.maximum(0.0, s - jumps))).sum(2)
    split = 0
    for t in range(pairs):
        row, used = study.local_rule(grads[t], losses[t], steps[t], 1e-3, 0.0, JUMP_FACTOR, k)
        g, lt = torch.from_numpy(grads[t]), torch.from_numpy(losses[t])
        ref = integrate_pair(
            lambda x, g=g, lt=lt: (lt[round(x * k)], g[round(x * k)]), torch.from_numpy(steps[t]),
            Evaluation(lt[0], g[0]), Evaluation(lt[k], g[k]), max_splits=k, l1_tol=1e-3,
        )  # fmt: skip
        assert used == ref.splits
        np.testing.assert_allclose(row, ref.lca.numpy(), rtol=1e-12, atol=1e-15)
        split += used > 2
    assert 2 <= split < pairs  # the comparison covers plain Simpson and refined pairs
    path = tmp_path / "case.npz"
    np.savez(path, G=grads, L=losses, D=steps)
    cells = study.calibrate(path, [1.0], 0.0, 1e-3, k)  # checks itself against the library's replay at c = 0
    assert cells[1].startswith("default: ") and cells[2].startswith("c = 1 (factor ")
