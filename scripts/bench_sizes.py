#!/usr/bin/env python
"""Model-size sweep (issue 26): ``lca compute`` against a minimal script, per gradient and per byte.

For each size (plain-PyTorch ReLU MLPs, widths chosen to hit the parameter count: ``1M``, ``4M``, ``16M``,
``64M`` by default) it writes a barely-moving run: SGD on batches of 32 from a training set of other samples
(``--train fullbatch``: gradient descent on the 256-sample evaluation set itself), the learning rate chosen so that
a step lowers the evaluation loss by about 1e-4 (as in fine-tuning with a small learning rate), 5 pairs written by
:class:`lca_cli.training.record.CheckpointWriter`. Then, each in a FRESH child process
(so that peak memory and page faults are the child's own), alternating which goes first round by round:

* ``script``: the minimal script. Per pair 3 gradients (start, midpoint, end; the end's gradient is the next
  pair's start, so 2 new ones per pair), the plain Simpson row ``delta * (g0 + 4 gm + g1) / 6`` accumulated in
  float32, each row appended to a raw file; checkpoints read tensor by tensor with ``safetensors`` into two
  preallocated flat vectors, the model's parameters views of a third.
* ``lca``: :func:`lca_cli.computation.compute_run` (what ``lca compute`` runs) with default options, into a
  fresh store.

Printed per size: time per gradient (the pair loop's wall time over its gradients; and the whole call's) of each
and the ratio lca/script, peak RSS (VmHWM) of each and the ratio, minor page faults per gradient (getrusage in
the child over the pair loop, the scope of the time per gradient: lca's run scale, accumulation probe and
pre-flight gradients are outside it, as they are outside its gradients; the whole child's faults per gradient are
in ``--json`` as ``call_faults_per_grad``) and the ratio, lca's gradients
per pair (the whole call's, over all of its gradients as the call's time per gradient is), and peak bytes per
parameter (also above a bare child's RSS: torch and lca imported, nothing built).

Memory: never two children at once (the parent is small; the run's checkpoints are written by a child too).
On a shared machine each child runs under ``flock LOCK`` (``--lock``, default ``/work/tools/bench.lock`` where it
exists) so that no other benchmark overlaps it; when an ancestor already holds that lock (the whole sweep run as
``flock LOCK python scripts/bench_sizes.py``) the children do not take it again (that would deadlock).

The code measured is whatever ``import lca_cli`` finds (``PYTHONPATH`` first): the header prints its path, so
``PYTHONPATH=/other/worktree python scripts/bench_sizes.py`` measures another checkout with the same script.

Usage::

    python scripts/bench_sizes.py                         # 1M,4M,16M,64M, 2 rounds (tens of minutes on 2 cores)
    python scripts/bench_sizes.py --sizes 1M,16M --rounds 3
    python scripts/bench_sizes.py --quick                 # seconds: one tiny size, 2 pairs, one round
    python scripts/bench_sizes.py --device cuda --sizes 16M,64M,256M

``--json FILE`` writes every measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
try:  # the lca_cli on PYTHONPATH (another worktree's, to compare) wins; else this checkout's
    import lca_cli  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))
if str(SCRIPTS) not in sys.path:  # imported by file path (the tests): scripts/bench.py beside it
    sys.path.insert(0, str(SCRIPTS))

from bench import _peak_rss_mib, _sync  # noqa: E402  (one way to read peak memory and sync a device)

KINDS = ("script", "lca")
IN_DIM = 512  # input features
CLASSES = 10
HIDDEN = 3  # hidden layers of equal width
SAMPLES = 256  # evaluation set (also the full training batch)
TARGET_DROP = 1e-4  # loss change of the first step
DEFAULT_LOCK = Path("/work/tools/bench.lock")


# --------------------------------------------------------------------------------------------------------
# the model and the data (importable as "bench_sizes:build_model" / "bench_sizes:load_data" by lca configs)


def parse_size(text: str) -> int:
    """``"1M"`` -> 1_000_000, ``"250k"`` -> 250_000, ``"5000"`` -> 5000."""
    t = text.strip().lower()
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(t[-1:], 1.0)
    return int(float(t[:-1] if scale != 1.0 else t) * scale)


def width_for(params: int) -> int:
    """Hidden width ``w`` whose MLP (IN_DIM, w x HIDDEN, CLASSES) has about ``params`` parameters.

    Parameters: ``(HIDDEN - 1) w^2 + (IN_DIM + HIDDEN + CLASSES) w + CLASSES``; the positive root, rounded.
    """
    a, b, c = HIDDEN - 1, IN_DIM + HIDDEN + CLASSES, CLASSES - params
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


def build_model(width: int, seed: int = 0) -> nn.Module:
    """The ReLU MLP ``IN_DIM -> width (x HIDDEN) -> CLASSES`` (config: ``factory = "bench_sizes:build_model"``)."""
    dims = [IN_DIM, *([width] * HIDDEN), CLASSES]
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for k in range(1, len(dims)):
            layers[f"fc{k}"] = nn.Linear(dims[k - 1], dims[k])
            if k < len(dims) - 1:
                layers[f"act{k}"] = nn.ReLU()
    return nn.Sequential(layers)


def n_params(width: int) -> int:
    """Exact parameter count of :func:`build_model` at ``width``."""
    dims = [IN_DIM, *([width] * HIDDEN), CLASSES]
    return sum(dims[k - 1] * dims[k] + dims[k] for k in range(1, len(dims)))


def make_data(n: int = SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-dependent random inputs (learnable, so the loss moves): ``x`` (n, IN_DIM) float32, ``y`` (n,)."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(CLASSES, IN_DIM, generator=gen)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    x = 0.5 * protos[y] + 0.5 * torch.rand(n, IN_DIM, generator=gen)
    return x.contiguous(), y


def load_data(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Data factory (config: ``factory = "bench_sizes:load_data"``): the evaluation set the parent saved."""
    blob = np.load(path)
    return torch.from_numpy(blob["x"]), torch.from_numpy(blob["y"])


def make_train(n: int = 2048, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A training set of the evaluation set's task (its class prototypes), other samples."""
    protos = torch.rand(CLASSES, IN_DIM, generator=torch.Generator().manual_seed(0))  # make_data's, seed 0
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    x = 0.5 * protos[y] + 0.5 * torch.rand(n, IN_DIM, generator=gen)
    return x.contiguous(), y


def make_run(width: int, run_dir: Path, data_path: Path, pairs: int, train: str = "minibatch") -> dict[str, Any]:
    """Write ``pairs + 1`` checkpoints of SGD whose steps lower the evaluation loss by ~``TARGET_DROP``.

    The learning rate is ``TARGET_DROP / |g|^2`` with ``g`` the evaluation set's gradient at the initial weights
    (first order: a step of ``lr g`` lowers the loss by ``lr |g|^2``). ``train="minibatch"`` (fine-tuning as it
    is run: batches of 32 from a training set of 2,048 other samples, so each step's direction is noisy) or
    ``"fullbatch"`` (gradient descent on the evaluation set itself: the smoothest path, plain Simpson's best case).
    Returns the learning rate and the evaluation loss at every checkpoint.
    """
    from lca_cli.training.record import CheckpointWriter

    x, y = load_data(str(data_path))
    tx, ty = make_train()
    gen = torch.Generator().manual_seed(2)
    model = build_model(width)
    params = list(model.parameters())

    def loss_and_grad(xb: torch.Tensor, yb: torch.Tensor) -> float:
        model.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        return float(loss)

    losses = [loss_and_grad(x, y)]
    sq = [float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None]
    lr = TARGET_DROP / sum(sq)
    with CheckpointWriter(run_dir) as ckpt:
        ckpt.save(model, 0)
        for step in range(1, pairs + 1):
            if train == "minibatch":
                idx = torch.randint(0, len(ty), (32,), generator=gen)
                loss_and_grad(tx[idx], ty[idx])
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad, alpha=lr)  # type: ignore[arg-type]
            ckpt.save(model, step)
            with torch.no_grad():
                losses.append(float(F.cross_entropy(model(x), y)))
            if train == "fullbatch":
                loss_and_grad(x, y)
    return {"lr": lr, "losses": losses, "train": train}


# --------------------------------------------------------------------------------------------------------
# the two measurements (each in a fresh child)


def run_script(width: int, run_dir: Path, data_path: Path, device: torch.device) -> dict[str, Any]:
    """The minimal script: 2 new gradients per pair (end reuse), plain Simpson rows in float32.

    Buffers (N parameters, float32): the model's parameters as views of one flat ``theta``, their ``.grad`` views
    of one flat ``grad``, the start and end checkpoints ``a``/``b``, the running sum ``acc`` and the start
    gradient ``g0``: 6 N, plus the activations of the 256 samples.
    """
    from safetensors import safe_open

    model = build_model(width).to(device)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    n = sum(sizes)
    theta, grad = torch.empty(n, device=device), torch.zeros(n, device=device)
    with torch.no_grad():
        for p, th, gr in zip(model.parameters(), theta.split(sizes), grad.split(sizes), strict=True):
            th.view_as(p).copy_(p)
            p.data = th.view_as(p)  # the parameter IS a view of theta: setting a point is one copy
            p.grad = gr.view_as(p)  # backward accumulates in place into grad
    x, y = load_data(str(data_path))
    x, y = x.to(device), y.to(device)
    files = sorted(run_dir.glob("*.safetensors"))
    a, b = torch.empty(n, device=device), torch.empty(n, device=device)
    acc, g0 = torch.empty(n, device=device), torch.empty(n, device=device)
    views_a, views_b = dict(zip(names, a.split(sizes), strict=True)), dict(zip(names, b.split(sizes), strict=True))

    def load(path: Path, into: dict[str, torch.Tensor]) -> None:
        with safe_open(str(path), framework="pt") as f:
            for name in names:  # one tensor at a time: no second copy of the checkpoint
                into[name].copy_(f.get_tensor(name).reshape(-1))

    def gradient() -> None:
        grad.zero_()
        with torch.enable_grad():  # called inside the loop's no_grad block
            F.cross_entropy(model(x), y).backward()

    out = open(run_dir.parent / f"{run_dir.name}.rows.f32", "wb")  # noqa: SIM115
    _sync(device)
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    load(files[0], views_a)
    with torch.no_grad():
        theta.copy_(a)
    gradient()
    g0.copy_(grad)
    gradients = 1
    for t in range(len(files) - 1):
        load(files[t + 1], views_b)
        with torch.no_grad():
            torch.add(a, b, out=theta).mul_(0.5)  # midpoint
            gradient()
            torch.add(g0, grad, alpha=4.0, out=acc)
            theta.copy_(b)  # end
            gradient()
            acc.add_(grad)
            g0.copy_(grad)  # the next pair's start gradient
            torch.sub(b, a, out=a).mul_(acc).div_(6.0)  # the row, in a (no longer needed)
        gradients += 2
        out.write(a.cpu().numpy().tobytes())
        a, b, views_a, views_b = b, a, views_b, views_a
    out.close()
    _sync(device)
    return {
        "loop_seconds": time.perf_counter() - t0, "pairs": len(files) - 1, "gradients": gradients,
        "loop_minflt": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0,
    }  # fmt: skip


class _LoopFaults:
    """A progress reporter that takes the process's minor page faults when the pair loop starts and ends."""

    def __init__(self) -> None:
        self.start_faults = self.end_faults = 0

    def start(self, info: Any) -> None:
        self.start_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def update(self, info: Any) -> None:
        pass

    def finish(self, info: Any) -> None:
        self.end_faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _config(width: int, data_path: Path, device: torch.device, extra: dict[str, Any]) -> Any:
    from lca_cli.computation.config import ComputeOptions, Config, FactorySpec

    return Config(
        model=FactorySpec("bench_sizes:build_model", {"width": width}),
        data={"train": FactorySpec("bench_sizes:load_data", {"path": str(data_path)})},
        loss_name="cross_entropy",
        # Default options (the device is where the sweep runs), unless --lca-options says otherwise.
        compute=ComputeOptions(**{"device": str(device), **extra}),
        base_dir=SCRIPTS,
    )


def run_lca(
    width: int, run_dir: Path, data_path: Path, device: torch.device, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``compute_run`` with default options (or ``extra`` ones) into a fresh store."""
    from lca_cli.computation import compute_run

    out = run_dir.parent / f"{run_dir.name}.lca.zarr"
    shutil.rmtree(out, ignore_errors=True)
    faults = _LoopFaults()
    res = compute_run(
        run_dir, out, config=_config(width, data_path, device, extra or {}), overwrite=True, progress=faults
    )
    _sync(device)
    return {
        "loop_seconds": res.seconds,
        "loop_minflt": faults.end_faults - faults.start_faults,
        "pairs": res.computed,
        "gradients": res.gradients_per_pair * res.computed,  # the loop's (the scope of loop_seconds)
        # The call's, per pair: its survey's and accumulation probe's too, less what the loop took back from them.
        "call_gradients": res.gradients,
        "gradients_per_pair": res.gradients / max(1, res.computed),
        "threads": res.threads,
        "flagged": sum(len(v) for v in res.flagged.values()),
    }


def child_main(args: argparse.Namespace) -> None:
    """One measurement in this fresh process, printed as one ``BENCH {json}`` line."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run_dir, data = Path(args.run_dir), Path(args.data)
    if args.child == "make":
        print("BENCH " + json.dumps(make_run(args.width, run_dir, data, args.pairs, args.train)), flush=True)
        return
    if args.child == "bare":
        import lca_cli.computation  # what both children import before building anything

        where = str(Path(lca_cli.computation.__file__).parent.parent)  # the code the children measure
        print("BENCH " + json.dumps({"peak_rss_mib": _peak_rss_mib(), "lca_cli": where}), flush=True)
        return
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    if args.child == "script":
        res = run_script(args.width, run_dir, data, device)
    else:
        res = run_lca(args.width, run_dir, data, device, json.loads(args.lca_options))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    res.update(
        seconds=time.perf_counter() - t0,
        minflt=r1.ru_minflt - r0.ru_minflt,
        cpu_seconds=(r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        sys_seconds=r1.ru_stime - r0.ru_stime,
        peak_rss_mib=_peak_rss_mib(),
    )
    if device.type == "cuda":
        res["peak_device_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print("BENCH " + json.dumps(res), flush=True)


# --------------------------------------------------------------------------------------------------------
# orchestration


def _ancestor_holds(lock: Path) -> bool:
    """Whether this process or an ancestor holds a flock on ``lock`` (``/proc/locks``; False where unknown)."""
    try:
        ino = lock.stat().st_ino
        holders = set()
        for line in Path("/proc/locks").read_text().splitlines():
            f = line.split()
            if len(f) >= 6 and f[1] == "FLOCK" and f[5].rsplit(":", 1)[-1] == str(ino):
                holders.add(int(f[4]))
        pid = os.getpid()
        while pid > 1:
            if pid in holders:
                return True
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # ppid, after the (comm) field
    except (OSError, ValueError):
        return False
    return False


def lock_prefix(lock: str) -> list[str]:
    """``["flock", LOCK]`` when each child must take the shared lock; ``[]`` when none or already held above."""
    if not lock or lock == "none":
        return []
    path = Path(lock)
    if not path.exists() or shutil.which("flock") is None or _ancestor_holds(path):
        return []
    return ["flock", str(path)]


def child(args: argparse.Namespace, kind: str, width: int, run_dir: Path, data: Path) -> dict[str, Any]:
    """Run one measurement in a fresh child process; its ``BENCH`` line parsed."""
    cmd = [*lock_prefix(args.lock), sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--width", str(width), "--run-dir", str(run_dir), "--data", str(data), "--pairs", str(args.pairs),
           "--threads", str(args.threads), "--device", args.device, "--train", args.train,
           "--lca-options", args.lca_options]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"child {kind} (width {width}) failed with exit code {proc.returncode}")
    result: dict[str, Any] = json.loads(lines[-1][6:])
    return result


def summarize(size: str, width: int, rounds: dict[str, list[dict[str, Any]]], bare_mib: float) -> dict[str, Any]:
    """Medians over rounds, per kind, and the ratios lca/script (of the medians)."""
    n = n_params(width)
    row: dict[str, Any] = {"size": size, "width": width, "params": n}
    for kind in KINDS:
        rs = rounds[kind]
        med = {
            "grad_s": statistics.median(r["loop_seconds"] / r["gradients"] for r in rs),
            "call_grad_s": statistics.median(r["seconds"] / r.get("call_gradients", r["gradients"]) for r in rs),
            "peak_mib": max(r["peak_rss_mib"] for r in rs),
            "faults_per_grad": statistics.median(r["loop_minflt"] / r["gradients"] for r in rs),
            "call_faults_per_grad": statistics.median(r["minflt"] / r["gradients"] for r in rs),
            "sys_share": statistics.median(r["sys_seconds"] / max(r["cpu_seconds"], 1e-9) for r in rs),
        }
        med["bytes_per_param"] = med["peak_mib"] * 2**20 / n
        med["bytes_per_param_above_bare"] = (med["peak_mib"] - bare_mib) * 2**20 / n
        if "peak_device_mib" in rs[0]:
            med["peak_device_mib"] = max(r["peak_device_mib"] for r in rs)
        row[kind] = med
    row["gradients_per_pair"] = statistics.median(r["gradients_per_pair"] for r in rounds["lca"])
    row["ratio"] = {
        k: row["lca"][k] / row["script"][k] for k in ("grad_s", "call_grad_s", "peak_mib", "faults_per_grad")
    }
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per size: per gradient, peak memory, faults, bytes per parameter; lca/script ratios."""
    head = (f"{'size':>5} {'params':>11} | {'s/grad script':>13} {'lca':>8} {'ratio':>6} | {'peak MiB script':>15} "
            f"{'lca':>7} {'ratio':>6} | {'faults/grad script':>18} {'lca':>8} {'ratio':>6} | {'grads/pair':>10} | "
            f"{'B/param script':>14} {'lca':>6} | {'above bare: script':>18} {'lca':>6}")  # fmt: skip
    out = [head, "-" * len(head)]
    for r in rows:
        s, lc, q = r["script"], r["lca"], r["ratio"]
        out.append(
            f"{r['size']:>5} {r['params']:>11,} | {s['grad_s']:>13.4f} {lc['grad_s']:>8.4f} {q['grad_s']:>6.2f} | "
            f"{s['peak_mib']:>15.0f} {lc['peak_mib']:>7.0f} {q['peak_mib']:>6.2f} | {s['faults_per_grad']:>18.0f} "
            f"{lc['faults_per_grad']:>8.0f} {q['faults_per_grad']:>6.2f} | {r['gradients_per_pair']:>10.1f} | "
            f"{s['bytes_per_param']:>14.1f} {lc['bytes_per_param']:>6.1f} | "
            f"{s['bytes_per_param_above_bare']:>18.1f} {lc['bytes_per_param_above_bare']:>6.1f}"
        )
    return "\n".join(out)


def machine() -> dict[str, Any]:
    """Where it ran: host, CPUs, load at the start, torch."""
    return {"host": platform.node(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(), "torch": torch.__version__}


def sweep(args: argparse.Namespace) -> int:
    """Generate each size's run, then alternate the two kinds round by round in fresh children."""
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    info = machine()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lca_bench_sizes_"))
    root.mkdir(parents=True, exist_ok=True)
    rows, runs = [], {}
    try:
        data = root / "eval.npz"
        x, y = make_data()
        np.savez(data, x=x.numpy(), y=y.numpy())
        bare_child = child(args, "bare", 1, root, data)
        bare, info["lca_cli"] = bare_child["peak_rss_mib"], bare_child["lca_cli"]
        print(f"# lca_cli measured: {info['lca_cli']}; torch {info['torch']}; {info['cpus']} CPUs; load "
              f"{' '.join(f'{v:.2f}' for v in info['loadavg'])}; {args.threads} threads; device {args.device}; "
              f"{args.pairs} pairs, {args.rounds} rounds; lock: {' '.join(lock_prefix(args.lock)) or 'none'}",
              file=sys.stderr, flush=True)  # fmt: skip
        for size in sizes:
            width = width_for(parse_size(size))
            run_dir = root / f"run_{size}"
            if not run_dir.exists():
                runs[size] = child(args, "make", width, run_dir, data)
                drops = np.diff(runs[size]["losses"])
                print(f"# {size}: width {width}, {n_params(width):,} parameters, {args.train} SGD, lr "
                      f"{runs[size]['lr']:.3g}, evaluation loss change per step {drops.mean():.2e} (from "
                      f"{drops.min():.2e} to {drops.max():.2e})", file=sys.stderr, flush=True)  # fmt: skip
            rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
            for r in range(args.rounds):
                for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                    res = child(args, kind, width, run_dir, data)
                    rounds[kind].append(res)
                    g = res["gradients"]
                    print(f"  {size} round {r + 1} {kind:6s} {res['loop_seconds'] / g:.4f} s/grad, "
                          f"{g / res['pairs']:.1f} grads/pair, peak {res['peak_rss_mib']:.0f} MiB, "
                          f"{res['loop_minflt'] / g:.0f} faults/grad in the loop ({res['minflt'] / g:.0f} in the "
                          "call)", file=sys.stderr, flush=True)  # fmt: skip
            row = summarize(size, width, rounds, bare)
            row["rounds"], row["run"] = rounds, runs.get(size)
            rows.append(row)
            if not args.keep:
                shutil.rmtree(run_dir, ignore_errors=True)  # disk: 64M is 256 MB a checkpoint
                shutil.rmtree(root / f"{run_dir.name}.lca.zarr", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    print(
        f"lca_cli: {info['lca_cli']}; load at start {info['loadavg'][0]:.2f}, at end {info['loadavg_end'][0]:.2f}; "
        f"bare child (torch + lca imported): {bare:.0f} MiB"
    )
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "bare_rss_mib": bare, "rows": rows}, indent=1))
    return 0


def _exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so that ``finally`` blocks remove the runs (a 64M run is 1.5 GB)."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the sweep, or one child measurement."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1M,4M,16M,64M", help="parameter counts, e.g. 1M,16M,250k")
    p.add_argument("--rounds", type=int, default=2, help="rounds of both kinds per size (fresh children each)")
    p.add_argument("--pairs", type=int, default=5, help="checkpoint pairs per run")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every child")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument(
        "--train", choices=("minibatch", "fullbatch"), default="minibatch",
        help="the run: SGD on batches of 32 of a training set (default), or gradient descent on the evaluation set",
    )  # fmt: skip
    p.add_argument(
        "--lca-options", default="{}",
        help='ComputeOptions for lca as JSON (default: none, lca\'s defaults), e.g. \'{"threads": 2}\' to fix '
        "lca's threads to the script's",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke test: one tiny size (30k), 2 pairs, one round")
    p.add_argument(
        "--lock",
        default=None,
        help=f"flock file per child (default {DEFAULT_LOCK} where it exists; "
        "none with --quick, which takes seconds; 'none': no lock)",
    )
    p.add_argument("--keep", help="write the runs here and keep them (default: a temporary directory)")
    p.add_argument("--json", help="write every measurement here")
    p.add_argument("--child", choices=("make", "bare", *KINDS), help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    if args.quick:
        args.sizes, args.pairs, args.rounds = "30k", 2, 1
    _exit_on_sigterm()
    if args.lock is None:
        args.lock = str(DEFAULT_LOCK) if DEFAULT_LOCK.exists() and not args.quick else ""
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
