#!/usr/bin/env python
"""Benchmark ``lca compute`` against its floor and a naive script, side by side in one run.

For each size it generates a run (a few SGD steps written with :class:`lca_cli.training.record.CheckpointWriter`)
in a temporary directory, then measures, each in a fresh child process (so that peak memory is the
child's own), alternating the three in every round so that a noisy machine hurts them alike:

* ``floor``: the two full-evaluation-set gradients per pair alone (forward + backward over every chunk,
  ``.backward()`` into ``.grad``), nothing else: what Simpson with end-point reuse cannot avoid.
* ``compute``: :func:`lca_cli.computation.compute_run` (the library behind ``lca compute``), store writing
  included, timed around the whole call (model and data building, store creation, every pair).
* ``naive``: the script a user would write: per pair, load both checkpoints, ``load_state_dict`` three
  times (start, midpoint, end), three full gradients, no reuse, no overlap, rows into a ``.npy``.

It prints per-pair times, pairs/s, the ratios compute/floor and compute/naive (the median of the per-round
ratios, with their range, the ratio of the minima and the CPU-time ratio) and each child's peak memory (VmHWM;
on CUDA also the peak allocated device memory).
``--memory`` adds the memory-scaling check: peak RSS of ``compute`` over 30 and 300 pairs (MNIST-FC).
``--scaling`` measures instead the scaling row: pairs/s of ``lca compute`` (the CLI, in fresh processes) with
one process and one thread, two processes under ``torchrun`` (one thread each) and two independent
cooperating processes (``--cooperate``), and on request one process with two threads, alternated round by
round; the pair loop's time (from ``--json``; for several processes, rank 0's or the owner's, which ends
when every pair is done) and the wall time including start-up (``torchrun`` alone adds several seconds).

Usage::

    python scripts/bench.py                       # all sizes, defaults (several minutes on 2 cores)
    python scripts/bench.py --quick               # seconds: tiny sets, 3 pairs, one round (smoke test)
    python scripts/bench.py --sizes mnist_fc --pairs 40 --rounds 5
    python scripts/bench.py --sizes mnist_fc --memory
    python scripts/bench.py --device cuda --sizes mnist_fc --samples 55000 --pairs 300
    python scripts/bench.py --per-gradient --sizes mnist_fc   # one gradient vs the floor's, 60 alternations
    python scripts/bench.py --scaling --sizes mnist_fc --pairs 240 --rounds 3   # 1 vs 2 processes

``--json FILE`` writes every measurement for later comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from lca_cli.computation.config import ComputeOptions, Config

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

KINDS = ("floor", "compute", "default", "naive")
#: Ablations of ``compute`` (opt-in with ``--kinds``): without read-ahead, with the store written in the loop, with
#: a float64 network (against the float32 floor: what ``--dtype float64`` costs), and the pair loop alone
#: (checkpoints read before timing, rows computed and dropped: no reader, writer, store or per-call work).
ABLATIONS = ("compute-noprefetch", "compute-syncwrite", "compute-float64", "compute-loop")


# --------------------------------------------------------------------------------------------------------
# sizes: model and data factories (importable as "bench:build_model" / "bench:load_data" by lca configs)


@dataclass(frozen=True)
class Size:
    """One benchmark case."""

    name: str
    samples: int  # evaluation-set size
    batch_size: int  # evaluation chunk
    pairs: int  # default number of pairs
    input_shape: tuple[int, ...]
    classes: int = 10
    quick_samples: int = 256
    description: str = ""
    dtype: str = "float32"  # what the network runs in, for all three kinds


SIZES: dict[str, Size] = {
    "small": Size("small", 2000, 1024, 100, (64,), 10, 256, "MLP 64-32-10 (2,410 params), 2k samples"),
    "mnist_fc": Size("mnist_fc", 10000, 1024, 100, (784,), 10, 1000, "MLP 784-100-50-10 ReLU (84,060), 10k samples"),
    # The ~2k-sample case of issue 9: an evaluation set of the size of scikit-learn's digits, where the fixed
    # per-pair work (vector passes, functional state, the reader) is a visible share of a ~30 ms pair.
    "wide": Size("wide", 1797, 1024, 300, (64,), 10, 256, "MLP 64-512-512-10 ReLU (301,066), 1,797 samples"),
    "resnet20": Size("resnet20", 2000, 500, 3, (3, 32, 32), 10, 64, "ResNet-20 (273,066), 2k CIFAR-shaped samples"),
}


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _mlp(widths: Sequence[int]) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for k in range(1, len(widths)):
        layers[f"fc{k}"] = nn.Linear(widths[k - 1], widths[k])
        if k < len(widths) - 1:
            layers[f"act{k}"] = nn.ReLU()
    return nn.Sequential(layers)


def build_model(size: str, seed: int = 0) -> nn.Module:
    """Model factory of a size (config: ``factory = "bench:build_model"``)."""
    if size == "small":
        return _seeded(seed, lambda: _mlp([64, 32, 10]))
    if size == "mnist_fc":
        return _seeded(seed, lambda: _mlp([784, 100, 50, 10]))
    if size == "wide":
        return _seeded(seed, lambda: _mlp([64, 512, 512, 10]))
    if size == "resnet20":
        from lca_cli.training.zoo.models import resnet20

        return resnet20(seed=seed)
    raise ValueError(f"unknown size {size!r}")


def make_data(spec: Size, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent random inputs in [0, 1] (learnable, so SGD checkpoints move the loss)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(spec.classes, *spec.input_shape, generator=gen)
    labels = torch.randint(0, spec.classes, (n,), generator=gen)
    x = 0.5 * protos[labels] + 0.5 * torch.rand(n, *spec.input_shape, generator=gen)
    return x.contiguous(), labels


def load_data(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Data factory (config: ``factory = "bench:load_data"``): the evaluation set saved by the parent."""
    blob = np.load(path)
    return torch.from_numpy(blob["x"]), torch.from_numpy(blob["y"])


# --------------------------------------------------------------------------------------------------------
# the run: a few SGD steps, one checkpoint each


def make_run(spec: Size, run_dir: Path, n_ckpt: int, samples: int, seed: int = 0) -> Path:
    """Write ``n_ckpt`` checkpoints of SGD (momentum 0.9, batch 128) and the evaluation set; return its path."""
    from lca_cli.training.record import CheckpointWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    x, y = make_data(spec, samples, seed)
    data_path = run_dir.parent / f"{spec.name}_{samples}.npz"
    if not data_path.exists():
        np.savez(data_path, x=x.numpy(), y=y.numpy())
    model = build_model(spec.name, seed)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    gen = torch.Generator().manual_seed(seed + 1)
    with CheckpointWriter(run_dir) as ckpt:
        ckpt.save(model, 0)
        for step in range(1, n_ckpt):
            idx = torch.randint(0, samples, (min(128, samples),), generator=gen)
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            ckpt.save(model, step)
    return data_path


def link_prefix(src: Path, dst: Path, n_ckpt: int) -> None:
    """A run directory holding the first ``n_ckpt`` checkpoints of ``src`` (symlinks)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.glob("*.safetensors"))[:n_ckpt]:
        (dst / p.name).symlink_to(p)


# --------------------------------------------------------------------------------------------------------
# the three measurements (each runs in a child process)


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _chunks(
    x: torch.Tensor, y: torch.Tensor, batch: int, device: torch.device, dtype: str = "float32"
) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    x, y, n = x.to(device, getattr(torch, dtype)), y.to(device), x.shape[0]
    return [(x[i : i + batch], y[i : i + batch], min(batch, n - i) / n) for i in range(0, n, batch)]


def _prepared_model(spec: Size, device: torch.device) -> nn.Module:
    # Same evaluation form as lca: dropout off, BatchNorm on batch statistics (the default bn_mode).
    model = build_model(spec.name).to(device, getattr(torch, spec.dtype))
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train()
    return model


def _script_setup(
    spec: Size, run_dir: Path, data_path: Path, device: torch.device
) -> tuple[list[Path], nn.Module, list[tuple[torch.Tensor, torch.Tensor, float]], list[str]]:
    """What the floor and the naive script start from: checkpoint files, model, evaluation chunks, names."""
    model = _prepared_model(spec, device)
    x, y = load_data(str(data_path))
    chunks = _chunks(x, y, spec.batch_size, device, spec.dtype)
    return sorted(run_dir.glob("*.safetensors")), model, chunks, [n for n, _ in model.named_parameters()]


def floor_gradient(model: nn.Module, chunks: Sequence[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
    """One full-set gradient the plain way: weighted chunk losses backpropagated into float32 ``.grad``."""
    model.zero_grad(set_to_none=False)
    for xc, yc, w in chunks:
        (F.cross_entropy(model(xc), yc) * w).backward()


def run_floor(spec: Size, run_dir: Path, data_path: Path, device: torch.device) -> dict[str, Any]:
    """Two full-set gradients per pair, nothing else."""
    from safetensors.torch import load_file

    files, model, chunks, names = _script_setup(spec, run_dir, data_path, device)
    n_pairs = len(files) - 1
    points = [load_file(str(f)) for f in files[: min(len(files), 4)]]  # a few points, reused cyclically
    params = dict(model.named_parameters())
    _sync(device)
    t0 = time.perf_counter()
    for t in range(n_pairs):
        for k in range(2):
            state = points[(2 * t + k) % len(points)]
            with torch.no_grad():
                for n in names:
                    params[n].copy_(state[n], non_blocking=True)
            floor_gradient(model, chunks)
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "pairs": n_pairs}


#: The documented hooks (lca_cli.computation.plan.Hooks) that switch off one overlap of compute, per variant:
#: ``noprefetch`` reads each checkpoint when it is needed, ``syncwrite`` writes each block before the next pair.
ABLATION_HOOKS: dict[str, dict[str, Any]] = {"noprefetch": {"read_ahead": 0}, "syncwrite": {"sync_writes": True}}


def _config(spec: Size, data_path: Path, opts: ComputeOptions) -> Config:
    """The ``lca`` config of a size's run: this module's model and data factories, cross-entropy, ``opts``."""
    from lca_cli.computation.config import Config, FactorySpec

    return Config(
        model=FactorySpec("bench:build_model", {"size": spec.name}),
        data={"train": FactorySpec("bench:load_data", {"path": str(data_path)})},
        loss_name="cross_entropy",
        compute=opts,
        base_dir=SCRIPTS,
    )


def run_compute(
    spec: Size,
    run_dir: Path,
    data_path: Path,
    device: torch.device,
    max_splits: int,
    extra: dict[str, Any],
    variant: str = "",
) -> dict[str, Any]:
    """``lca_cli.computation.compute_run`` (``lca compute`` as a function) into a fresh store, timed around the call.

    ``variant`` ``"default"`` is ``lca compute`` without flags (local refinement to its accuracy target, the
    checkpoints' dtype, ``--threads auto``); the others run Simpson only (``max_splits``) in the size's dtype at
    the process's thread count, the fixed-cost comparison with the floor.
    """
    from lca_cli.computation import compute_run
    from lca_cli.computation.config import ComputeOptions
    from lca_cli.computation.plan import Hooks

    if variant == "default":
        opts = ComputeOptions(batch_size=spec.batch_size, device=str(device))
    else:
        opts = ComputeOptions(
            **{
                "method": "rk4",
                "max_splits": max_splits,
                "batch_size": spec.batch_size,
                "device": str(device),
                "dtype": "float64" if variant == "float64" else spec.dtype,
                "threads": torch.get_num_threads(),
                **extra,
            }
        )
    config = _config(spec, data_path, opts)
    out = run_dir.parent / f"{run_dir.name}.lca.zarr"
    # A first `lca compute` of a run writes a new store: remove the last round's before timing (replacing it
    # with --overwrite deletes its files inside the call, ~50 ms that a user computing a run once never pays).
    shutil.rmtree(out, ignore_errors=True)
    before = torch.get_num_threads()
    _sync(device)
    t0 = time.perf_counter()
    res = compute_run(run_dir, out, config=config, overwrite=True, hooks=Hooks(**ABLATION_HOOKS.get(variant, {})))
    _sync(device)
    seconds = time.perf_counter() - t0
    torch.set_num_threads(before)
    return {
        "seconds": seconds,
        "loop_seconds": res.seconds,
        "pairs": res.computed,
        "max_abs_residual": max(res.max_abs_residual.values()),
        "gradients_per_pair": statistics.mean(a.mean_splits for a in res.accuracy.values()),
        "gradients": res.gradients,  # every full-set gradient of the call: the loop's, the survey's, the probe's
        "threads": res.threads,
    }


def run_loop(spec: Size, run_dir: Path, data_path: Path, device: torch.device, max_splits: int) -> dict[str, Any]:
    """The pair loop alone (``compute-loop``): the library's engine over every pair, nothing read or written.

    The same engine as ``compute`` (Simpson capped at ``max_splits``: plain with the bench's default 2; the size's
    dtype; the process's threads),
    every checkpoint read before timing, rows computed and dropped: what ``compute`` costs beyond the floor
    before its reader thread, its writer thread, the store and the per-call set-up add theirs.
    """
    from lca_cli.computation.config import ComputeOptions
    from lca_cli.computation.engine import build_engine, preload_points, run_pairs
    from lca_cli.sources import find_checkpoints

    opts = ComputeOptions(method="rk4", max_splits=max_splits, batch_size=spec.batch_size, device=str(device),
                          dtype=spec.dtype, threads=torch.get_num_threads())  # fmt: skip
    config = _config(spec, data_path, opts)
    engine, _, expected = build_engine(config, device)
    points = preload_points(engine, expected, find_checkpoints(run_dir), device)
    _sync(device)
    t0 = time.perf_counter()
    done = run_pairs(engine, points)
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "pairs": done}


def run_naive(spec: Size, run_dir: Path, data_path: Path, device: torch.device) -> dict[str, Any]:
    """What a user would write: three gradients per pair through load_state_dict, no reuse, no overlap."""
    from safetensors.torch import load_file

    files, model, chunks, names = _script_setup(spec, run_dir, data_path, device)
    n_pairs = len(files) - 1
    n_params = sum(p.numel() for p in model.parameters())
    out = np.lib.format.open_memmap(
        run_dir.parent / f"{run_dir.name}.naive.npy", mode="w+", dtype=np.float32, shape=(n_pairs, n_params)
    )

    def loss_and_grad(state: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
        model.load_state_dict(state)
        model.zero_grad()
        total = 0.0
        for xc, yc, w in chunks:
            loss = F.cross_entropy(model(xc), yc) * w
            loss.backward()
            total += loss.item()
        return total, torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()  # type: ignore[union-attr]

    _sync(device)
    t0 = time.perf_counter()
    for t in range(n_pairs):
        s0, s1 = load_file(str(files[t])), load_file(str(files[t + 1]))
        mid = {k: (v + s1[k]) / 2 if v.is_floating_point() else v for k, v in s0.items()}
        _, g0 = loss_and_grad(s0)
        _, gm = loss_and_grad(mid)
        _, g1 = loss_and_grad(s1)
        delta = torch.cat([(s1[n] - s0[n]).reshape(-1) for n in names]).double().to(device)
        out[t] = (delta * (g0 + 4 * gm + g1) / 6).float().cpu().numpy()
    out.flush()
    _sync(device)
    return {"seconds": time.perf_counter() - t0, "pairs": n_pairs}


def _measure(
    kind: str, spec: Size, run_dir: Path, data: Path, device: torch.device, args: argparse.Namespace
) -> dict[str, Any]:
    c0 = time.process_time()
    if kind == "floor":
        res = run_floor(spec, run_dir, data, device)
    elif kind == "compute-loop":
        res = run_loop(spec, run_dir, data, device, args.max_splits)
    elif kind.startswith("compute"):
        variant = kind.partition("-")[2]
        res = run_compute(spec, run_dir, data, device, args.max_splits, json.loads(args.compute_options), variant)
    elif kind == "default":
        res = run_compute(spec, run_dir, data, device, args.max_splits, {}, "default")
    else:
        res = run_naive(spec, run_dir, data, device)
    res["cpu_seconds"] = time.process_time() - c0  # all threads of the process
    return res


def round_order(kinds: Sequence[str], r: int) -> list[str]:
    """The order of the kinds in round ``r``: ``floor`` next to ``compute`` (and to ``default``) in every round.

    The machine's speed drifts over tens of seconds (other jobs on the host), so each ratio to the floor is taken
    between neighbours; which one goes first, and whether the other kinds run before or after them, alternates
    over every four rounds so that neither gains from the order.
    """
    pair = [k for k in ("floor", "compute") if k in kinds]
    if r % 4 in (1, 2):
        pair = pair[::-1]
    if "default" in kinds and "floor" in kinds:  # floor in the middle: next to both
        pair = [k for k in pair if k != "floor"]
        pair = [*pair, "floor", "default"] if r % 2 == 0 else ["default", "floor", *pair]
    others = [k for k in kinds if k not in pair]
    return pair + others if r % 4 in (0, 2) else others + pair


def child_main(args: argparse.Namespace) -> None:
    """Run measurements in this (child) process and print them as one JSON line.

    ``--child time``: ``rounds`` rounds of every kind in :func:`round_order`, after one untimed
    warm-up of each (first-call costs: thread pools, allocator, kernels). ``--child KIND``: one kind once,
    for its peak memory (VmHWM of this process; on CUDA also the peak allocated device memory).
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = _spec(args.size, args.quick, args.samples, args.batch_size, args.dtype)
    device = torch.device(args.device)
    run_dir, data = Path(args.run_dir), Path(args.data)
    if args.child == "busy":
        print("BENCH " + json.dumps(run_busy(spec, run_dir, data, device, args.rounds)), flush=True)
        return
    if args.child == "time":
        kinds = [k for k in (*KINDS, *ABLATIONS) if k in args.kinds.split(",")]
        warm = run_dir.parent / f"{run_dir.name}_warm"
        if not warm.exists():
            link_prefix(run_dir, warm, 2)
        for kind in kinds:
            _measure(kind, spec, warm, data, device, args)
        out: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            for kind in round_order(kinds, r):
                res = _measure(kind, spec, run_dir, data, device, args)
                out[kind].append(res)
                print(f"  round {r + 1} {kind:8s} {res['seconds'] / res['pairs']:.4f} s/pair "
                      f"(cpu {res['cpu_seconds'] / res['pairs']:.4f})", file=sys.stderr, flush=True)  # fmt: skip
        print("BENCH " + json.dumps(out), flush=True)
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    res = _measure(args.child, spec, run_dir, data, device, args)
    res["peak_rss_mib"] = _peak_rss_mib()
    if device.type == "cuda":
        res["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("BENCH " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------------------------------------
# orchestration and summary


@dataclass
class Case:
    """Measurements of one size: timing rounds, and one peak-memory run per kind."""

    size: str
    description: str
    pairs: int
    samples: int
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    memory: dict[str, dict[str, Any]] = field(default_factory=dict)


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over rounds of the per-round ratio a/b (each round measures both close in time)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def summarize_case(case: Case) -> dict[str, Any]:
    """Per-pair times (min over rounds), pairs/s, ratios and peak memory of one case.

    The headline ratio is the median over rounds of the per-round ratio (the two kinds run back to back, so
    each ratio sees one state of the machine; see :func:`round_order`), with the range of the per-round
    ratios; the ratio of the minima over rounds and the median per-round ratio of CPU times are given too.
    """
    out: dict[str, Any] = {"size": case.size, "pairs": case.pairs, "samples": case.samples}
    per_pair = {k: [r["seconds"] / r["pairs"] for r in v] for k, v in case.rounds.items() if v}
    cpu = {k: [r["cpu_seconds"] / r["pairs"] for r in v] for k, v in case.rounds.items() if v}
    for k, v in per_pair.items():
        out[f"{k}_s_per_pair"] = min(v)
        out[f"{k}_s_per_pair_median"] = statistics.median(v)
        out[f"{k}_cpu_s_per_pair"] = min(cpu[k])
    for k, r in case.memory.items():
        out[f"{k}_peak_rss_mib"] = r["peak_rss_mib"]
        if "peak_device_mib" in r:
            out[f"{k}_peak_device_mib"] = r["peak_device_mib"]
    if "compute" in per_pair:
        out["compute_pairs_per_s"] = 1.0 / out["compute_s_per_pair"]
        out["compute_loop_s_per_pair"] = min(r["loop_seconds"] / r["pairs"] for r in case.rounds["compute"])
        out["max_abs_residual"] = max(r["max_abs_residual"] for r in case.rounds["compute"])
        for k in ABLATIONS:
            if k in per_pair:
                out[f"{k}_over_compute"] = out[f"{k}_s_per_pair"] / out["compute_s_per_pair"]
                out[f"{k}_over_compute_median"] = paired_ratio(per_pair[k], per_pair["compute"])
    if "default" in per_pair:
        out["default_gradients_per_pair"] = statistics.mean(r["gradients_per_pair"] for r in case.rounds["default"])
        out["default_threads"] = sorted({r["threads"] for r in case.rounds["default"]})
        out["default_call_gradients_per_pair"] = statistics.mean(
            r["gradients"] / r["pairs"] for r in case.rounds["default"]
        )
        # Issue 23's overhead target: time per gradient, the floor's being 2 per pair. Every gradient the call
        # computes counts, the run scale's survey and the accumulation probe's with the loop's: they are charged
        # to the gradients per pair (against the oracle minimum), and what remains is lca's work besides gradients.
        if "floor" in per_pair:
            per_gradient = [
                (d / (r["gradients"] / r["pairs"])) / (f / 2)
                for d, r, f in zip(per_pair["default"], case.rounds["default"], per_pair["floor"], strict=True)
            ]
            out["default_per_gradient_over_floor"] = statistics.median(per_gradient)
            out["default_per_gradient_over_floor_rounds"] = per_gradient
    for kind in ("compute", "default"):
        for base in ("floor", "naive"):
            if kind in per_pair and base in per_pair:
                k = f"{kind}_over_{base}"
                out[k] = out[f"{kind}_s_per_pair"] / out[f"{base}_s_per_pair"]
                out[k + "_median"] = paired_ratio(per_pair[kind], per_pair[base])
                out[k + "_rounds"] = [a / b for a, b in zip(per_pair[kind], per_pair[base], strict=True)]
                out[k + "_cpu"] = paired_ratio(cpu[kind], cpu[base])
    return out


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of case summaries."""
    head = (
        "| size | pairs | floor s/pair | compute s/pair | naive s/pair | compute/floor (median of rounds) "
        "| compute/naive (median of rounds) | default/floor (gradients per pair; threads) "
        "| compute pairs/s | peak RSS MiB floor / compute / default / naive |"
    )
    lines = [head, "|" + "---|" * 10]

    def f(r: dict[str, Any], k: str, fmt: str) -> str:
        return format(r[k], fmt) if k in r else "-"

    def ratio(r: dict[str, Any], kind: str, base: str) -> str:
        k = f"{kind}_over_{base}"
        if k not in r:
            return "-"
        rounds = r.get(k + "_rounds") or [r[k]]
        return (
            f"{r[k + '_median']:.3f} (rounds {min(rounds):.2f}-{max(rounds):.2f}; minima {r[k]:.3f}; "
            f"cpu {r[k + '_cpu']:.3f})"
        )

    for r in rows:
        mem = " / ".join(f(r, f"{k}_peak_rss_mib", ".0f") for k in KINDS)
        default = ratio(r, "default", "floor")
        if "default_gradients_per_pair" in r:
            default += f" ({r['default_gradients_per_pair']:.2f}; {r['default_threads']})"
        lines.append(
            f"| {r['size']} | {r['pairs']} | {f(r, 'floor_s_per_pair', '.4f')} | {f(r, 'compute_s_per_pair', '.4f')} "
            f"| {f(r, 'naive_s_per_pair', '.4f')} | {ratio(r, 'compute', 'floor')} | {ratio(r, 'compute', 'naive')} "
            f"| {default} | {f(r, 'compute_pairs_per_s', '.2f')} | {mem} |"
        )
    return "\n".join(lines)


def _spec(name: str, quick: bool, samples: int | None, batch_size: int | None, dtype: str = "float32") -> Size:
    base = SIZES[name]
    n = samples or (base.quick_samples if quick else base.samples)
    return Size(base.name, n, batch_size or base.batch_size, base.pairs, base.input_shape, base.classes,
                base.quick_samples, base.description, dtype)  # fmt: skip


def _child(args: argparse.Namespace, kind: str, size: str, run_dir: Path, data: Path, rounds: int = 1) -> Any:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", kind, "--size", size, "--run-dir", str(run_dir),
        "--data", str(data), "--device", args.device, "--max-splits", str(args.max_splits),
        "--compute-options", args.compute_options, "--rounds", str(rounds), "--kinds", args.kinds,
        "--threads", str(args.threads), "--dtype", args.dtype,
    ]  # fmt: skip
    if args.quick:
        cmd.append("--quick")
    if args.samples:
        cmd += ["--samples", str(args.samples)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {size} failed (exit {proc.returncode}); see its stderr above")
    return json.loads(lines[-1][6:])


def vmap_check(spec: Size, device: torch.device, reps: int = 10) -> dict[str, Any]:
    """Two points (midpoint and endpoint of a pair) evaluated separately vs in one ``torch.func.vmap`` pass.

    The decision record for batching several parameter points: the library evaluates points one at a time;
    this measures whether a batched pass would pay here (same chunks, float64 accumulation in both).
    """
    from torch.func import functional_call, grad_and_value, vmap

    from lca_cli.core.evalset import make_chunks
    from lca_cli.core.layout import Layout
    from lca_cli.core.losses import builtin_loss
    from lca_cli.core.model import prepare_model
    from lca_cli.core.objective import Objective
    from lca_cli.core.vectors import flatten, unflatten

    dtype = getattr(torch, spec.dtype)
    x, y = make_data(spec, spec.samples)
    model = prepare_model(build_model(spec.name), "batch").to(device, dtype)
    layout = Layout.from_module(model)
    evalset = make_chunks("train", (x, y), spec.batch_size, device, dtype)
    obj = Objective(model, layout, evalset, builtin_loss("cross_entropy"), dtype)
    v1 = flatten(layout, dict(model.named_parameters()), torch.float64)
    v2 = v1 + 1e-3 * torch.randn_like(v1)
    fixed = {k: b for k, b in model.named_buffers()}
    weights = [xc.shape[0] / spec.samples for xc, _ in evalset.chunks]

    def chunk_loss(flat: torch.Tensor, xc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        tensors = {**fixed, **unflatten(layout, flat)}
        return F.cross_entropy(functional_call(model, tensors, (xc,)), yc)

    batched_fn = vmap(grad_and_value(chunk_loss), in_dims=(0, None, None))

    def separate() -> tuple[torch.Tensor, torch.Tensor]:
        (l1, g1), (l2, g2) = obj.value_and_grad(v1, fixed), obj.value_and_grad(v2, fixed)
        return torch.stack([l1, l2]), torch.stack([g1, g2])

    def batched() -> tuple[torch.Tensor, torch.Tensor]:
        points = torch.stack([v1, v2]).to(dtype)
        loss = torch.zeros(2, dtype=torch.float64, device=device)
        grad = torch.zeros(points.shape, dtype=torch.float64, device=device)
        for (xc, yc), w in zip(evalset.chunks, weights, strict=True):
            g, val = batched_fn(points, xc, yc)
            grad.add_(g.detach(), alpha=w)
            loss.add_(val.detach().double() * w)
        return loss, grad

    try:
        loss_s, gs = separate()
        loss_b, gb = batched()
    except Exception as exc:  # e.g. train-mode BatchNorm writing its buffers inside vmap
        return {"size": spec.name, "error": f"{type(exc).__name__}: {exc}"[:200]}
    err = float((gb - gs).abs().max() / gs.abs().max())
    loss_err = float((loss_b - loss_s).abs().max())
    times: dict[str, list[float]] = {"separate": [], "batched": []}
    for r in range(reps):
        for name, fn in (
            (("separate", separate), ("batched", batched)) if r % 2 else (("batched", batched), ("separate", separate))
        ):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    sep, bat = min(times["separate"]), min(times["batched"])
    return {"size": spec.name, "separate_ms": 1e3 * sep, "batched_ms": 1e3 * bat, "batched_over_separate": bat / sep,
            "max_rel_grad_diff": err, "max_loss_diff": loss_err}  # fmt: skip


def per_gradient(spec: Size, device: torch.device, reps: int = 60) -> dict[str, Any]:
    """One full-set gradient of the library against one of the floor, alternating ``reps`` times in one process.

    Each measurement takes tens of milliseconds, so neighbours see the same machine: this isolates the cost of
    :meth:`lca_cli.core.objective.Objective.value_and_grad` (float64 accumulation, functional evaluation) from the
    drift that makes whole runs (seconds each) noisy on a shared host. The median of the per-pair ratios is
    reported.
    """
    from lca_cli.core.evalset import make_chunks
    from lca_cli.core.layout import Layout
    from lca_cli.core.losses import builtin_loss
    from lca_cli.core.model import prepare_model
    from lca_cli.core.objective import Objective
    from lca_cli.core.vectors import flatten

    dtype = getattr(torch, spec.dtype)
    x, y = make_data(spec, spec.samples)
    floor_model = _prepared_model(spec, device)
    chunks = _chunks(x, y, spec.batch_size, device, spec.dtype)
    model = prepare_model(build_model(spec.name), "batch").to(device, dtype)
    layout = Layout.from_module(model)
    obj = Objective(model, layout, make_chunks("train", (x, y), spec.batch_size, device, dtype),
                    builtin_loss("cross_entropy"), dtype)  # fmt: skip
    v = flatten(layout, dict(model.named_parameters()), torch.float64)
    fixed = {k: b.clone() for k, b in model.named_buffers()}

    def floor() -> None:
        floor_gradient(floor_model, chunks)

    def library() -> None:
        obj.value_and_grad(v, fixed)

    times: dict[str, list[float]] = {"floor": [], "library": []}
    floor()  # warm-up (thread pools, allocator)
    library()
    for r in range(reps):
        for name, fn in (("floor", floor), ("library", library)) if r % 2 else (("library", library), ("floor", floor)):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    ratios = [a / b for a, b in zip(times["library"], times["floor"], strict=True)]
    return {"size": spec.name, "reps": reps, "floor_ms": 1e3 * statistics.median(times["floor"]),
            "library_ms": 1e3 * statistics.median(times["library"]), "ratio_median": statistics.median(ratios),
            "ratio_q1_q3": [float(q) for q in np.quantile(ratios, [0.25, 0.75])]}  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# --busy: the thread choice with another CPU-bound job on every core


def busy_workers(n: int) -> list[subprocess.Popen[bytes]]:
    """Start ``n`` CPU-bound processes (a Python busy loop each): another job on every core."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_workers(workers: Sequence[subprocess.Popen[bytes]]) -> None:
    """Stop the processes :func:`busy_workers` started (by their own handles, nothing else)."""
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(timeout=30)


def busy_settings(cores: int) -> list[int | str]:
    """``--threads`` values the busy bench compares: auto, and every explicit count up to the cores."""
    return ["auto", *range(1, cores + 1)]


def run_busy(spec: Size, run_dir: Path, data: Path, device: torch.device, rounds: int) -> dict[str, Any]:
    """``lca compute`` (defaults) at every ``--threads`` setting, alternating, ``rounds`` times (child process)."""
    settings = busy_settings(_usable_cores())
    times: dict[str, list[float]] = {str(t): [] for t in settings}
    chosen: list[int] = []
    warm = run_dir.parent / f"{run_dir.name}_warm"
    if not warm.exists():
        link_prefix(run_dir, warm, 2)
    run_compute(spec, warm, data, device, 2, {"threads": 1}, "default")
    for r in range(rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        for t in order:
            res = run_compute(spec, run_dir, data, device, 2, {"threads": t}, "default")
            times[str(t)].append(res["seconds"] / res["pairs"])
            if t == "auto":
                chosen.append(res["threads"])
            print(f"  round {r + 1} threads {t!s:4s} {times[str(t)][-1]:.4f} s/pair", file=sys.stderr, flush=True)
    return {"times": times, "chosen": chosen}


def summarize_busy(size: str, result: dict[str, Any]) -> dict[str, Any]:
    """Median s/pair per setting and auto over the best explicit setting (median of per-round ratios)."""
    times = result["times"]
    explicit = [k for k in times if k != "auto"]
    best = min(explicit, key=lambda k: statistics.median(times[k]))
    rounds = [a / min(times[k][i] for k in explicit) for i, a in enumerate(times["auto"])]
    return {
        "size": size,
        "s_per_pair": {k: statistics.median(v) for k, v in times.items()},
        "best_explicit": best,
        "auto_over_best": statistics.median(a / b for a, b in zip(times["auto"], times[best], strict=True)),
        "auto_over_best_of_round": statistics.median(rounds),
        "auto_chose": sorted(set(result["chosen"])),
    }


def _usable_cores() -> int:
    from lca_cli.computation.tuning import usable_cores

    return usable_cores()


# --------------------------------------------------------------------------------------------------------
# --accuracy: the defaults against the tests' float64 reference, on ordinary runs


def _accuracy_config(model: str, mkw: dict[str, Any], optimizer: str, lr: float, flatten: bool) -> dict[str, Any]:
    return {
        "model": {"factory": f"lca_cli.training.zoo.models:{model}", "kwargs": mkw},
        "data": {
            "train": {"factory": "lca_cli.training.zoo.data:digits", "kwargs": {"split": "train", "flatten": flatten}}
        },
        "loss": {"name": "cross_entropy"},
        "train": {"iterations": 200, "batch_size": 128, "optimizer": optimizer, "lr": lr, "seed": 0},
    }


_MLP = {"in_features": 64, "hidden": [32], "out_features": 10, "seed": 0}
_CNN = {"in_channels": 1, "size": 8, "channels": [8, 16], "classes": 10, "hidden": 32, "seed": 0}
#: Ordinary runs on scikit-learn's digits (1,500 training samples, the evaluation set too): tanh and ReLU MLPs
#: and a ReLU + max-pool CNN, SGD (momentum 0.9) and Adam, 200 steps of batch 128: early and late training.
ACCURACY_CASES: dict[str, dict[str, Any]] = {
    "relu_mlp_adam": _accuracy_config("mlp", {**_MLP, "activation": "relu"}, "adam", 1e-3, True),
    "relu_mlp_sgd": _accuracy_config("mlp", {**_MLP, "activation": "relu"}, "sgd", 0.1, True),
    "wide_relu_adam": _accuracy_config("mlp", {**_MLP, "hidden": [128, 128], "activation": "relu"}, "adam", 1e-3, True),
    "tanh_mlp_sgd": _accuracy_config("mlp", {**_MLP, "activation": "tanh"}, "sgd", 0.1, True),
    "cnn_adam": _accuracy_config("small_cnn", _CNN, "adam", 2e-3, False),
    "cnn_sgd": _accuracy_config("small_cnn", _CNN, "sgd", 0.05, False),
}
#: The settings compared: the defaults (and in a float64 network), plain Simpson, the former defaults and their
#: residual-only loosening.
ACCURACY_VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "per-pair target (--l1-scope pair)": {"l1_scope": "pair"},
    "defaults, --dtype float64": {"dtype": "float64"},
    "plain Simpson (--max-splits 2)": {"max_splits": 2},
    "former defaults (--refine doubling --dtype float64)": {"refine": "doubling", "dtype": "float64"},
    "doubling, --rtol 1e-3 (float32)": {"refine": "doubling", "rtol": 1e-3},
}


def accuracy_case(name: str, root: Path, pairs: int, threads: int | str) -> list[dict[str, Any]]:
    """Train one case, compute it with every variant, and compare with the 32-sub-interval float64 reference."""
    from safetensors.torch import load_file

    from lca_cli.computation.config import build_model, call_factory, parse_config
    from lca_cli.computation.runner import compute
    from lca_cli.store.lcastore import LcaStore
    from lca_cli.training.train import train_run

    sys.path.insert(0, str(REPO / "tests"))
    import reference  # the tests' slow, obviously-correct float64 code

    raw = ACCURACY_CASES[name]
    raw = {**raw, "train": {**raw["train"], "iterations": pairs}}
    config = parse_config(raw, name)
    run = train_run(config, root / name, overwrite=True)
    states = [load_file(str(p)) for p in sorted(run.glob("step_*.safetensors"))]
    x, y = call_factory(config.data["train"], None, "[data.train]")
    t0 = time.perf_counter()
    ref_lca, ref_loss = reference.reference_run(
        lambda: build_model(config), states, x, y, reference.ref_loss("cross_entropy"), 32
    )
    ref_seconds = time.perf_counter() - t0
    half = len(ref_lca) // 2
    rows = []
    for variant, over in ACCURACY_VARIANTS.items():
        out = root / f"{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        cfg = config.with_overrides(threads=threads, **over)
        t0 = time.perf_counter()
        result = compute(run, cfg, out)
        seconds = time.perf_counter() - t0
        store = LcaStore.open(out)
        lca = np.asarray(store.array("train", "lca")[:], dtype=np.float64)
        per_pair = np.abs(lca - ref_lca).sum(1) / np.abs(ref_lca).sum(1)
        dl = np.abs(np.diff(store.read("train", "loss"))).sum()
        rows.append({
            "case": name, "variant": variant, "pairs": len(lca),
            "rel_l1": reference.relative_l1(lca, ref_lca),
            "rel_l1_early": reference.relative_l1(lca[:half], ref_lca[:half]),
            "rel_l1_late": reference.relative_l1(lca[half:], ref_lca[half:]),
            "worst_pair": float(per_pair.max()),
            "conservation": float(np.abs(store.read("train", "residual")).sum() / dl),
            "flagged": int(store.read("train", "flagged").sum()),
            "gradients_per_pair": float(store.read("train", "splits").mean()),
            "seconds": seconds, "threads": result.threads, "reference_seconds": ref_seconds,
            "max_loss_diff": float(np.abs(store.read("train", "loss") - ref_loss).max()),
        })  # fmt: skip
        print(f"  {name}: {variant}: relative L1 {rows[-1]['rel_l1']:.2e}, {rows[-1]['gradients_per_pair']:.2f} "
              f"gradients/pair, {seconds:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
    return rows


def accuracy_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of :func:`accuracy_case` rows."""
    lines = [
        "| run | setting | gradients / pair | relative L1 (all; first half; second half; worst pair) "
        "| Σ\\|r\\| / Σ\\|ΔL\\| | flagged | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['gradients_per_pair']:.2f} | {r['rel_l1']:.2e}; "
            f"{r['rel_l1_early']:.2e}; {r['rel_l1_late']:.2e}; {r['worst_pair']:.1e} | {r['conservation']:.1e} "
            f"| {r['flagged']} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# scaling: one process against several, each a real `lca compute` (or torchrun) in fresh processes


def _scaling_config(spec: Size, run_dir: Path, data_path: Path, args: argparse.Namespace) -> None:
    """Write the run's lca.toml (the factories of this script, imported from PYTHONPATH=scripts).

    Written directly: the writer's ``write_run_config`` refuses factories of the running script (a training
    script would run again); this one only defines functions when imported.
    """
    from lca_cli.training.record import dump_toml

    doc = {
        "model": {"factory": "bench:build_model", "kwargs": {"size": spec.name}},
        "data": {"factory": "bench:load_data", "kwargs": {"path": str(data_path)}},
        "loss": {"name": "cross_entropy"},
        "compute": {"max_splits": args.max_splits, "batch_size": spec.batch_size, "dtype": spec.dtype},
    }
    (run_dir / "lca.toml").write_text(dump_toml(doc))


def _scaling_run(kind: str, run_dir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One timed ``lca compute`` of the whole run into a fresh store; ``kind``: 1x1, 1x2, torchrun, cooperate."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPTS), str(REPO), os.environ.get("PYTHONPATH", "")])}
    n = args.processes
    base = ["compute", str(run_dir), "--out", str(out), "--json", "--progress", "none", "--device", args.device]
    threads = ["--threads", "2" if kind == "1x2" else "1"]
    py = [sys.executable, "-m", "lca_cli"]
    t0 = time.perf_counter()
    if kind == "torchrun":
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
        cmd = [torchrun, "--standalone", "--nproc-per-node", str(n), "-m", "lca_cli", *base, *threads]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        outputs = [done.stdout]
        codes = [done.returncode]
    elif kind == "cooperate":
        cmd = [*py, *base, *threads, "--cooperate"]
        pipe = subprocess.PIPE
        procs = [subprocess.Popen(cmd, stdout=pipe, stderr=pipe, text=True, env=env) for _ in range(n)]
        results = [p.communicate() for p in procs]
        outputs = [o for o, _ in results]
        codes = [p.returncode for p in procs]
    else:
        done = subprocess.run([*py, *base, *threads], capture_output=True, text=True, env=env, check=False)
        outputs, codes = [done.stdout], [done.returncode]
    wall = time.perf_counter() - t0
    if any(codes):
        raise RuntimeError(f"{kind} failed: {codes}")
    docs = [json.loads(o.strip().splitlines()[-1]) for o in outputs if o.strip()]
    # The pair loop of the whole job: rank 0's (torchrun) or the owner's (cooperate), which waits for the rest.
    lead = next((d for d in docs if d.get("role") == "owner"), docs[0])
    pairs = sum(d["computed"] for d in docs) if kind == "cooperate" else lead["computed"]
    return {"wall_s": wall, "loop_s": lead["seconds"], "pairs": pairs, "split": [d["computed"] for d in docs]}


def scaling(args: argparse.Namespace, sizes: Sequence[str]) -> int:
    """The scaling row (see the module docstring): prints a table and, with ``--json``, every round."""
    kinds = [k for k in ("1x1", "1x2", "torchrun", "cooperate") if k in args.scaling_kinds.split(",")]
    if "1x1" not in kinds:
        kinds.insert(0, "1x1")  # the baseline of every ratio
    info = machine()
    print(f"# lca bench --scaling {info['date']} on {info['cpu']} ({info['cores']} cores, torch {info['torch']}), "
          f"device {args.device}, {args.processes} processes, max_splits {args.max_splits}",
          file=sys.stderr)  # fmt: skip
    tmp_ctx = tempfile.TemporaryDirectory(prefix="lca-bench-") if args.keep is None else None
    root = Path(tmp_ctx.name) if tmp_ctx else args.keep
    assert root is not None
    rows, measured = [], {}
    try:
        for name in sizes:
            spec = _spec(name, args.quick, args.samples, args.batch_size, args.dtype)
            pairs = args.pairs or (6 if args.quick else 4 * spec.pairs)
            run_dir = root / f"{name}_scaling_run"
            data = make_run(spec, run_dir, pairs + 1, spec.samples)
            _scaling_config(spec, run_dir, data, args)
            got: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            for r in range(args.rounds or (1 if args.quick else 3)):
                for kind in round_order(list(kinds), r):
                    res = _scaling_run(kind, run_dir, root / f"{name}_{kind}.zarr", args)
                    got[kind].append(res)
                    print(f"  {name} round {r} {kind:9s} {res['pairs'] / res['loop_s']:8.2f} pairs/s loop "
                          f"({res['loop_s']:.2f} s), wall {res['wall_s']:.2f} s, split {res['split']}",
                          file=sys.stderr)  # fmt: skip
            measured[name] = got
            base = statistics.median(g["pairs"] / g["loop_s"] for g in got["1x1"])
            for kind in kinds:
                rates = [g["pairs"] / g["loop_s"] for g in got[kind]]
                walls = [g["pairs"] / g["wall_s"] for g in got[kind]]
                rows.append({"size": name, "kind": kind, "pairs": pairs,
                             "pairs_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
                             "wall_pairs_per_s": statistics.median(walls),
                             "over_1x1": statistics.median(rates) / base})  # fmt: skip
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    n = args.processes
    labels = {"1x1": "1 process, 1 thread", "1x2": "1 process, 2 threads",
              "torchrun": f"torchrun, {n} x 1 thread", "cooperate": f"{n} x --cooperate, 1 thread"}  # fmt: skip
    print("| size | processes | pairs/s (loop; median, range) | x 1 process | pairs/s with start-up |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['size']} | {labels[row['kind']]} | {row['pairs_per_s']:.2f} ({row['min']:.2f}-{row['max']:.2f}) "
              f"| {row['over_1x1']:.2f} | {row['wall_pairs_per_s']:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "scaling": rows, "rounds": measured}, indent=1))
    return 0


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    rest = list(sys.argv[1:] if argv is None else argv)
    if "--model-sizes" in rest:  # the model-size sweep has its own options: hand them all to it
        rest.remove("--model-sizes")
        from bench_sizes import main as model_sizes

        return model_sizes(rest)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model-sizes", action="store_true", help="only: the model-size sweep, scripts/bench_sizes.py (its options)"
    )
    p.add_argument("--sizes", default="small,mnist_fc,resnet20", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--pairs", type=int, default=0, help="pairs per size (default: per size; 3 with --quick)")
    p.add_argument("--rounds", type=int, default=0, help="timing rounds (default 5; 1 with --quick)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the children (default: torch's)")
    p.add_argument("--no-peak", action="store_true", help="skip the per-kind peak-memory runs")
    p.add_argument("--quick", action="store_true", help="tiny evaluation sets, 3 pairs, one round (seconds)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--samples", type=int, default=0, help="evaluation-set size (default: per size)")
    p.add_argument("--batch-size", type=int, default=0, help="evaluation chunk (default: per size)")
    p.add_argument("--max-splits", type=int, default=2, help="cap on sub-intervals (2 = plain Simpson)")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float64"), help="network dtype of all three kinds"
    )
    p.add_argument(
        "--kinds", default=",".join(KINDS), help=f"which of {','.join(KINDS + ABLATIONS)} to run (ablations: opt-in)"
    )
    p.add_argument("--compute-options", default="{}", help="extra ComputeOptions as JSON, e.g. '{\"compile\": true}'")
    p.add_argument("--memory", action="store_true", help="also: peak RSS of compute over 30 vs 300 pairs (MNIST-FC)")
    p.add_argument("--memory-pairs", default="30,300", help="pair counts of --memory")
    p.add_argument("--json", type=Path, help="write all measurements here")
    p.add_argument("--vmap-check", action="store_true", help="only: 2 points separately vs one vmap pass, per size")
    p.add_argument(
        "--per-gradient",
        action="store_true",
        help="only: one library gradient vs one floor gradient, alternated --rounds times (default 60)",
    )
    p.add_argument(
        "--busy",
        action="store_true",
        help="only: lca compute (defaults) at --threads auto and every explicit count, with a CPU-bound job on "
        "every core",
    )
    p.add_argument(
        "--accuracy",
        action="store_true",
        help="only: the defaults against the float64 reference on ordinary runs (--cases; --pairs, default 200)",
    )
    p.add_argument(
        "--cost-per-accuracy",
        action="store_true",
        help="only: default gradients per pair beside the oracle minimum, and the overhead per gradient "
        "(scripts/oracle.py; --cases of its runs, --pairs, --rounds, --quick)",
    )
    p.add_argument("--l1-tol", type=float, default=1e-3, help="--cost-per-accuracy: the per-run contract")
    p.add_argument("--cases", default="", help="--accuracy / --cost-per-accuracy cases, comma-separated (default: all)")
    p.add_argument("--keep", type=Path, help="generate runs here and keep them (default: a temp dir, deleted)")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="only: pairs/s of lca compute with 1 and 2 processes (torchrun, --cooperate) and 1 process x 2 threads",
    )
    p.add_argument("--processes", type=int, default=2, help="processes of the --scaling multi-process kinds")
    p.add_argument(
        "--scaling-kinds",
        default="1x1,torchrun,cooperate",
        help="which of 1x1,1x2,torchrun,cooperate --scaling runs (1x2: one process with two threads)",
    )
    # internal: one measurement in a child process
    p.add_argument("--child", choices=(*KINDS, *ABLATIONS, "time", "busy"), help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    if args.cost_per_accuracy:
        import oracle  # scripts/oracle.py (imports this module)

        args.rounds = args.rounds or (1 if args.quick else 2)
        return oracle.main(args)
    args.rounds = args.rounds or (1 if args.quick else 5)

    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown size(s) {unknown}; known: {list(SIZES)}")
    if args.accuracy:
        return accuracy_main(args)
    if args.busy:
        return busy_main(args, sizes)
    if args.vmap_check or args.per_gradient:
        if args.threads:
            torch.set_num_threads(args.threads)
        for name in sizes:
            spec = _spec(name, args.quick, args.samples, args.batch_size, args.dtype)
            if args.vmap_check:
                r = vmap_check(spec, torch.device(args.device), 3 if args.quick else 10)
            else:
                r = per_gradient(spec, torch.device(args.device), args.rounds or (4 if args.quick else 60))
            print(json.dumps(r))
        return 0
    if args.scaling:
        return scaling(args, sizes)
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    rounds = args.rounds
    info = machine()
    print(f"# lca bench {info['date']} on {info['cpu']} ({info['cores']} cores, torch {info['torch']}, "
          f"{info['torch_threads']} threads), device {args.device}, max_splits {args.max_splits}, "
          f"{rounds} round(s)", file=sys.stderr)  # fmt: skip

    tmp_ctx = tempfile.TemporaryDirectory(prefix="lca-bench-") if args.keep is None else None
    root = Path(tmp_ctx.name) if tmp_ctx else args.keep
    assert root is not None
    summaries, cases, memory = [], [], {}
    try:
        for name in sizes:
            spec = _spec(name, args.quick, args.samples, args.batch_size, args.dtype)
            pairs = args.pairs or (3 if args.quick else spec.pairs)
            run_dir = root / f"{name}_run"
            t0 = time.perf_counter()
            data = make_run(spec, run_dir, pairs + 1, spec.samples)
            print(f"{name}: {spec.description}; {pairs} pairs, {spec.samples} samples, batch {spec.batch_size} "
                  f"(run generated in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)  # fmt: skip
            case = Case(name, spec.description, pairs, spec.samples)
            case.rounds = _child(args, "time", name, run_dir, data, rounds)
            for kind in [] if args.no_peak else kinds:
                case.memory[kind] = _child(args, kind, name, run_dir, data)
                print(f"  peak memory {kind:8s} {case.memory[kind]['peak_rss_mib']:.0f} MiB", file=sys.stderr)
            cases.append(case)
            summaries.append(summarize_case(case))
        if args.memory:
            spec = _spec("mnist_fc", args.quick, args.samples, args.batch_size, args.dtype)
            counts = [int(c) for c in args.memory_pairs.split(",")]
            big = root / "mem_run"
            data = make_run(spec, big, max(counts) + 1, spec.samples)
            for c in counts:
                d = root / f"mem_{c}"
                link_prefix(big, d, c + 1)
                res = _child(args, "compute", "mnist_fc", d, data)
                memory[c] = res
                print(f"  memory: {c} pairs: peak RSS {res['peak_rss_mib']:.1f} MiB, "
                      f"{res['seconds'] / res['pairs']:.4f} s/pair", file=sys.stderr)  # fmt: skip
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()

    print(format_table(summaries))
    for s in summaries:
        extra = f", loop only {s['compute_loop_s_per_pair']:.4f} s/pair" if "compute_loop_s_per_pair" in s else ""
        res = f", max |residual| {s['max_abs_residual']:.2e}" if "max_abs_residual" in s else ""
        print(f"{s['size']}: {SIZES[s['size']].description}{extra}{res}")
        if "default_per_gradient_over_floor" in s:
            rounds_ = s["default_per_gradient_over_floor_rounds"]
            call, loop = s["default_call_gradients_per_pair"], s["default_gradients_per_pair"]
            print(f"  default per gradient / floor per gradient: {s['default_per_gradient_over_floor']:.3f} (median "
                  f"of rounds; {min(rounds_):.3f}-{max(rounds_):.3f}; {call:.2f} gradients per pair in the call, "
                  f"{loop:.2f} in the pair loop)")  # fmt: skip
        for k in ABLATIONS:
            if f"{k}_over_compute" in s:
                print(f"  {k}/compute: {s[f'{k}_over_compute']:.3f} (median {s[f'{k}_over_compute_median']:.3f})")
    if memory:
        lo, hi = min(memory), max(memory)
        ratio = memory[hi]["peak_rss_mib"] / memory[lo]["peak_rss_mib"]
        print(f"peak RSS of compute (mnist_fc): {lo} pairs {memory[lo]['peak_rss_mib']:.1f} MiB, "
              f"{hi} pairs {memory[hi]['peak_rss_mib']:.1f} MiB, ratio {ratio:.3f}")  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": {k: str(v) for k, v in vars(args).items()},
                    "summary": summaries,
                    "cases": [asdict(c) for c in cases],
                    "memory": memory,
                },
                indent=1,
            )
        )
    return 0


def accuracy_main(args: argparse.Namespace) -> int:
    """``--accuracy``: every case, every variant, one table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(f"# lca bench --accuracy {info['date']} on {info['cpu']} ({info['cores']} cores, torch {info['torch']})",
          file=sys.stderr)  # fmt: skip
    tmp_ctx = tempfile.TemporaryDirectory(prefix="lca-acc-") if args.keep is None else None
    root = Path(tmp_ctx.name) if tmp_ctx else args.keep
    assert root is not None
    rows: list[dict[str, Any]] = []
    try:
        for name in [c.strip() for c in (args.cases or ",".join(ACCURACY_CASES)).split(",") if c.strip()]:
            if name not in ACCURACY_CASES:
                raise SystemExit(f"unknown case {name!r}; known: {', '.join(ACCURACY_CASES)}")
            rows += accuracy_case(name, root, args.pairs or (4 if args.quick else 200), args.threads or "auto")
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    print(accuracy_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "accuracy": rows}, indent=1))
    return 0


def busy_main(args: argparse.Namespace, sizes: Sequence[str]) -> int:
    """``--busy``: per size, a child times every ``--threads`` setting while busy loops hold every core."""
    rounds = args.rounds
    info = machine()
    cores = _usable_cores()
    print(f"# lca bench --busy {info['date']} on {info['cpu']} ({cores} usable cores, a busy loop on each), "
          f"{rounds} round(s)", file=sys.stderr)  # fmt: skip
    tmp_ctx = tempfile.TemporaryDirectory(prefix="lca-busy-") if args.keep is None else None
    root = Path(tmp_ctx.name) if tmp_ctx else args.keep
    assert root is not None
    out = []
    try:
        for name in sizes:
            spec = _spec(name, args.quick, args.samples, args.batch_size, args.dtype)
            pairs = args.pairs or (3 if args.quick else min(spec.pairs, 30))
            run_dir = root / f"{name}_run"
            data = make_run(spec, run_dir, pairs + 1, spec.samples)
            workers = busy_workers(cores)
            try:
                res = _child(args, "busy", name, run_dir, data, rounds)
            finally:
                stop_workers(workers)
            out.append(summarize_busy(name, res))
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    print("| size | s/pair by --threads (median) | auto chose | auto / best explicit (median of rounds) |")
    print("|---|---|---|---|")
    for r in out:
        per = ", ".join(f"{k}: {v:.4f}" for k, v in r["s_per_pair"].items())
        print(f"| {r['size']} | {per} | {r['auto_chose']} | {r['auto_over_best']:.3f} (best: {r['best_explicit']}; "
              f"vs the best of each round {r['auto_over_best_of_round']:.3f}) |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "busy": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
