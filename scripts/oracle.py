"""Cost per accuracy: the default path's gradients per pair beside the oracle minimum (issue 23).

``python scripts/bench.py --cost-per-accuracy`` (this module's :func:`main`) trains each run, computes it with
``lca compute``'s defaults (:func:`lca_cli.computation.compute_run`, the code on ``PYTHONPATH``), times the floor
(two plain float32 gradients per pair) beside it, evaluates every pair in a float64 network at the dyadic points
``k / K`` (``K = 32`` unless a run says less), and prints one table row per run:

* **oracle minimum**: the fewest gradients per pair with which *some* allocation of Simpson panels over the run's
  pairs meets the per-run contract ``sum_t ||row_t - ref_t||_1 <= l1_tol * sum_t ||ref_t||_1`` (``ref_t``:
  composite Simpson on all ``K`` sub-intervals, float64). Each pair's options are dyadic panel trees: a tree of
  ``L`` leaf panels costs ``2 L`` gradients (the library's count: plain Simpson is 2, each split adds 2; the start
  gradient is the previous pair's end). For every ``L`` the pair's error is the least exact error
  ``||sum of leaf errors||_1`` of three families of trees: the one that minimises the sum of its leaves'
  ``||S_panel - ref_panel||_1`` (a dynamic programme over the dyadic tree), the uniform ones (``2^j`` panels),
  and those grown one split at a time, each the split that lowers the exact error most. The allocation over
  pairs is greedy on the lower convex hull of each pair's (cost, error) curve, taking the largest error decrease
  per gradient first until the run meets its budget. That is an achievable allocation, so the figure is an upper
  bound on the true optimum over these trees; the same greedy with its last step taken fractionally is the
  optimum of the convexified problem, a lower bound over these options (printed as ``lower bound``). The reference
  is the finest tree, so the error of a pair at the cap is 0 by construction.
* **per-pair oracle**: the fewest gradients if every pair had to meet ``l1_tol`` of its own ``||ref_t||_1`` (the
  contract before ``--l1-scope run``; the earlier study's 6.06 for the ReLU CNN with Adam was of this kind).
* **default**: gradients per pair of the default path, its ratio to the oracle minimum, its relative L1 against
  ``ref`` and its flagged pairs.
* **overhead per gradient**: the default call's time per gradient (the whole call: model and data, store,
  every pair) over the floor's time per gradient (:func:`bench.floor_gradient`, the same checkpoints, chunks
  and threads), side by side in this process, the median over ``--rounds`` rounds whose order alternates.

Usage::

    python scripts/bench.py --cost-per-accuracy --quick         # 3-12 pairs per run (the CNN grids dominate)
    flock /work/tools/bench.lock python scripts/bench.py --cost-per-accuracy      # the full mode, for the record
    python scripts/bench.py --cost-per-accuracy --cases relu_mlp_adam --pairs 20 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import heapq
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402  (the accuracy cases, the bench sizes, the floor gradient)

# --------------------------------------------------------------------------------------------------------
# the oracle: per pair a (cost, error) curve of dyadic panel trees, then the cheapest allocation over pairs


@dataclass
class PairCurve:
    """One pair's options: ``costs`` (gradients, ascending) and ``errors`` (``||row - ref||_1``), and ``norm``."""

    costs: list[int]
    errors: list[float]
    norm: float  # ||ref||_1 of the pair


def pair_curve(grads: np.ndarray, step: np.ndarray) -> tuple[PairCurve, np.ndarray]:
    """The options of one pair from its gradients at ``k / K``: ``grads (K + 1, D)``, ``step (D,)`` (``Δ``).

    Returns:
        The pair's curve and its reference row ``(D,)``: composite Simpson on all ``K`` sub-intervals.
    """
    k = grads.shape[0] - 1
    if k < 2 or k & (k - 1):
        raise ValueError(f"the grid needs a power of two >= 2 sub-intervals, not {k}")
    # panels[(a, w)]: the Simpson row of [a, a + w] (w sub-intervals of 1 / K), width 2 the finest.
    rows: dict[tuple[int, int], np.ndarray] = {}
    w = 2
    while w <= k:
        for a in range(0, k, w):
            rows[a, w] = step * (grads[a] + 4 * grads[a + w // 2] + grads[a + w]) * (w / (6 * k))
        w *= 2
    ref_of: dict[tuple[int, int], np.ndarray] = {(a, 2): rows[a, 2] for a in range(0, k, 2)}
    w = 4
    while w <= k:  # the reference restricted to a panel: the sum of its finest panels
        for a in range(0, k, w):
            ref_of[a, w] = ref_of[a, w // 2] + ref_of[a + w // 2, w // 2]
        w *= 2
    err = {p: rows[p] - ref_of[p] for p in rows}  # (D,) each: the panel's signed error
    bound = {p: float(np.abs(e).sum()) for p, e in err.items()}
    # best[(a, w)][L] = (sum of leaf bounds, leaves): the tree of L leaves under the panel with the least bound.
    best: dict[tuple[int, int], dict[int, tuple[float, list[tuple[int, int]]]]] = {}
    w = 2
    while w <= k:
        for a in range(0, k, w):
            own: dict[int, tuple[float, list[tuple[int, int]]]] = {1: (bound[a, w], [(a, w)])}
            if w > 2:
                left, right = best[a, w // 2], best[a + w // 2, w // 2]
                for n1, (b1, l1) in left.items():
                    for n2, (b2, l2) in right.items():
                        if n1 + n2 not in own or b1 + b2 < own[n1 + n2][0]:
                            own[n1 + n2] = (b1 + b2, l1 + l2)
            best[a, w] = own
        w *= 2
    options: dict[int, float] = {}
    for n, (_, leaves) in best[0, k].items():
        options[2 * n] = float(np.abs(np.sum([err[p] for p in leaves], axis=0)).sum())
    # The bound ignores that panels' signed errors cancel in the row (ReLU kinks): a second family of trees grows
    # one split at a time, each time the split that lowers the exact error of the row most.
    leaves, total = [(0, k)], err[0, k].copy()
    while True:
        cands = [(a, w) for a, w in leaves if w > 2]
        if not cands:
            break
        changes = {(a, w): err[a, w // 2] + err[a + w // 2, w // 2] - err[a, w] for a, w in cands}
        pick = min(cands, key=lambda p: float(np.abs(total + changes[p]).sum()))
        a, w = pick
        leaves = [q for q in leaves if q != pick] + [(a, w // 2), (a + w // 2, w // 2)]
        total += changes[pick]
        options[2 * len(leaves)] = min(options[2 * len(leaves)], float(np.abs(total).sum()))
    w = k
    while w >= 2:  # the uniform trees, measured exactly
        n = k // w
        e = float(np.abs(np.sum([err[a, w] for a in range(0, k, w)], axis=0)).sum())
        options[2 * n] = min(options.get(2 * n, np.inf), e)
        w //= 2
    costs = sorted(options)
    reference = ref_of[0, k]
    return PairCurve(costs, [options[c] for c in costs], float(np.abs(reference).sum())), reference


def lower_hull(costs: Sequence[int], errors: Sequence[float]) -> list[tuple[int, float]]:
    """The lower convex hull of ``(cost, error)`` from the cheapest point, errors strictly decreasing."""
    pts: list[tuple[int, float]] = []
    for c, e in sorted(zip(costs, errors, strict=True)):
        if pts and e >= pts[-1][1]:
            continue  # dearer and no better
        while len(pts) >= 2:
            (c0, e0), (c1, e1) = pts[-2], pts[-1]
            if (e1 - e0) * (c - c0) >= (e - e0) * (c1 - c0):  # pts[-1] on or above the chord
                pts.pop()
            else:
                break
        pts.append((c, e))
    return pts


@dataclass
class Allocation:
    """The oracle's allocation over a run's pairs."""

    gradients_per_pair: float  # the greedy allocation (achievable)
    lower_bound: float  # its convexified optimum (last step fractional)
    rel_l1: float  # the allocation's relative L1 (its exact per-pair errors summed)
    reachable: bool  # False: even the finest tree of every pair misses the budget (never on a K-grid reference)
    chosen: list[int] = field(default_factory=list)  # gradients per pair


def allocate(curves: Sequence[PairCurve], l1_tol: float) -> Allocation:
    """The cheapest allocation meeting ``sum errors <= l1_tol * sum norms`` (greedy on the convex hulls).

    Every pair starts at its cheapest option; the hull steps are then taken in order of error decrease per
    gradient (largest first; within a pair the hull's slopes decrease, so its steps come in order) until the run
    meets its budget.
    """
    hulls = [lower_hull(c.costs, c.errors) for c in curves]
    budget = l1_tol * sum(c.norm for c in curves)
    level = [0] * len(hulls)
    err = sum(h[0][1] for h in hulls)
    cost = float(sum(h[0][0] for h in hulls))
    n = max(len(hulls), 1)
    heap = [(-(h[0][1] - h[1][1]) / (h[1][0] - h[0][0]), i) for i, h in enumerate(hulls) if len(h) > 1]
    heapq.heapify(heap)
    bound = cost  # the convexified optimum: the step that crosses the budget taken only as far as needed
    while err > budget and heap:
        _, i = heapq.heappop(heap)
        h, j = hulls[i], level[i]
        dc, de = h[j + 1][0] - h[j][0], h[j][1] - h[j + 1][1]
        bound = cost + dc * min(1.0, (err - budget) / de)
        level[i] = j + 1
        err, cost = err - de, cost + dc
        if j + 2 < len(h):
            heapq.heappush(heap, (-(h[j + 1][1] - h[j + 2][1]) / (h[j + 2][0] - h[j + 1][0]), i))
    total = sum(c.norm for c in curves)
    chosen = [hulls[i][level[i]][0] for i in range(len(hulls))]
    return Allocation(cost / n, bound / n, err / total if total else 0.0, err <= budget, chosen)


def per_pair_minimum(curves: Sequence[PairCurve], l1_tol: float) -> float:
    """Mean over pairs of the cheapest option with ``error <= l1_tol * ||ref||_1`` of the pair itself."""
    out = []
    for c in curves:
        fits = [cost for cost, e in zip(c.costs, c.errors, strict=True) if e <= l1_tol * c.norm]
        out.append(min(fits) if fits else c.costs[-1])
    return float(np.mean(out)) if out else 0.0


# --------------------------------------------------------------------------------------------------------
# the float64 grid of one pair


def plain_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The mean loss of a run's config, written out plainly (the runs here use ``cross_entropy`` or ``mse``)."""
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "mse":
        return lambda out, y: ((out.reshape(-1) - y.reshape(-1)) ** 2).mean()
    raise SystemExit(f"Error: the cost-per-accuracy bench knows the losses cross_entropy and mse, not {name!r}")


class GridEvaluator:
    """Loss and gradient in a float64 copy of the model, the whole evaluation set at once (``eval()`` mode)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss: str) -> None:
        self.net = copy.deepcopy(model).double().eval()
        self.params = [p for _, p in self.net.named_parameters()]
        self.names = [n for n, _ in self.net.named_parameters()]
        self.x = inputs.double() if inputs.is_floating_point() else inputs
        self.y = targets.double() if targets.is_floating_point() else targets
        self.loss = plain_loss(loss)

    def flat(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """A checkpoint's parameters as one float64 vector ``(D,)`` in ``named_parameters()`` order."""
        return torch.cat([state[n].reshape(-1).double() for n in self.names])

    def value_and_grad(self, v: torch.Tensor) -> tuple[float, np.ndarray]:
        """``(L(v), ∇L(v) (D,))`` in float64."""
        offset = 0
        with torch.no_grad():
            for p in self.params:
                p.copy_(v[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        for p in self.params:
            p.grad = None
        loss = self.loss(self.net(self.x), self.y)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.reshape(-1) for p in self.params]).numpy()  # type: ignore[union-attr]

    def pair_grid(self, v0: torch.Tensor, v1: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Gradients ``(K + 1, D)`` at ``v0 + (j / K) (v1 - v0)`` and the step ``Δ (D,)``."""
        delta = v1 - v0
        grads = np.stack([self.value_and_grad(v0 + (j / k) * delta)[1] for j in range(k + 1)])
        return grads, delta.numpy()


# --------------------------------------------------------------------------------------------------------
# the runs


@dataclass(frozen=True)
class Run:
    """One cost-per-accuracy run: an accuracy case (``config``) or a bench size (``size``), and its pairs."""

    name: str
    description: str
    pairs: int  # full mode
    quick_pairs: int
    points: int = 32  # sub-intervals of the grid: the reference and the oracle's finest tree
    config: dict[str, Any] | None = None
    size: str = ""


def _mlp_case(hidden: list[int], activation: str, optimizer: str, lr: float, **train: Any) -> dict[str, Any]:
    raw = bench._accuracy_config("mlp", {**bench._MLP, "hidden": hidden, "activation": activation}, optimizer, lr, True)
    raw["train"].update(train)
    return raw


RUNS: dict[str, Run] = {
    **{n: Run(n, "digits, 200 steps of batch 128", 200, 6, config=c) for n, c in bench.ACCURACY_CASES.items()},
    # Fine-tuning-like: a ~1.1M-parameter ReLU MLP that plain SGD with a small learning rate barely moves (the
    # loss changes by about 1e-4 a step), the runs that went to the cap in issue 23.
    "barely_moving_relu": Run(
        "barely_moving_relu",
        "MLP 64-1024-1024-10 ReLU (1,126,410), SGD lr 6e-4 no momentum, digits",
        pairs=30,
        quick_pairs=3,
        points=16,
        config=_mlp_case([1024, 1024], "relu", "sgd", 6e-4, momentum=0.0),
    ),
    # Held out: not one of the runs the estimator is tuned on (issue 23's ~300k tanh MLP with SGD + momentum).
    "heldout_tanh_momentum": Run(
        "heldout_tanh_momentum",
        "MLP 64-512-512-10 tanh (301,066), SGD lr 0.02 momentum 0.9, digits",
        pairs=300,
        quick_pairs=12,
        points=8,  # 9 float64 gradients a pair over 300 pairs; Simpson on 8 sub-intervals of a tanh net is ~1/256
        # of plain Simpson's error away from the integral
        config=_mlp_case([512, 512], "tanh", "sgd", 0.02, momentum=0.9),
    ),
    # The bench's two sizes of the overhead target (SGD with momentum on random class-dependent data), over the
    # pairs the overhead bench times (100 and 300): the same runs for both targets.
    **{n: Run(n, bench.SIZES[n].description, bench.SIZES[n].pairs, 6, 16, size=n) for n in ("mnist_fc", "wide")},
}
#: The runs of the table: the six accuracy cases, the barely-moving and the held-out run, the two bench sizes.
DEFAULT_RUNS = tuple(RUNS)


def prepare(run: Run, root: Path, pairs: int, quick: bool) -> tuple[Path, Any]:
    """Train (or generate) the run's checkpoints under ``root``; return the run directory and its ``Config``."""
    from lca_cli.computation.config import ComputeOptions, parse_config
    from lca_cli.training.train import train_run

    if run.config is not None:
        raw = {**run.config, "train": {**run.config["train"], "iterations": pairs}}
        config = parse_config(raw, run.name)
        return train_run(config, root / run.name, overwrite=True), config
    spec = bench._spec(run.size, quick, None, None)
    run_dir = root / run.name
    shutil.rmtree(run_dir, ignore_errors=True)
    data = bench.make_run(spec, run_dir, pairs + 1, spec.samples)
    return run_dir, bench._config(spec, data, ComputeOptions(batch_size=spec.batch_size))


def _states(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    from lca_cli.sources import find_checkpoints, read_checkpoint

    return [read_checkpoint(r) for r in find_checkpoints(run_dir)]


def time_floor(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, states: Sequence[dict[str, torch.Tensor]], batch: int, loss: str
) -> float:
    """Seconds for the floor over the run: two plain float32 gradients per pair.

    As :func:`bench.floor_gradient` (weighted chunk losses backpropagated into float32 ``.grad``), with the run's
    loss.
    """
    net = copy.deepcopy(model).float().eval()
    chunks = bench._chunks(x, y.float() if y.is_floating_point() else y, batch, torch.device("cpu"))
    params = dict(net.named_parameters())
    fn = plain_loss(loss)
    t0 = time.perf_counter()
    for t in range(len(states) - 1):
        for state in (states[t], states[t + 1]):  # what Simpson with end-point reuse evaluates: 2 per pair
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(state[n])
            net.zero_grad(set_to_none=False)
            for xc, yc, w in chunks:
                (fn(net(xc), yc) * w).backward()
    return time.perf_counter() - t0


def time_default(run_dir: Path, config: Any, out: Path) -> tuple[float, Any]:
    """``compute_run`` with the defaults into a fresh store, timed around the whole call."""
    from lca_cli.computation import compute_run

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = compute_run(run_dir, out, config=config)
    return time.perf_counter() - t0, result


def measure(run: Run, root: Path, pairs: int, quick: bool, rounds: int, l1_tol: float) -> dict[str, Any]:
    """One table row: train, default vs floor side by side, then the oracle from the float64 grid."""
    from lca_cli.computation.config import build_model, call_factory
    from lca_cli.store.lcastore import LcaStore

    run_dir, config = prepare(run, root, pairs, quick)
    states = _states(run_dir)
    model = build_model(config)
    x, y = call_factory(config.data["train"], None, "[data.train]")
    out = root / f"{run.name}.zarr"
    ratios, threads = [], 0
    warm = root / f"{run.name}_warm"  # untimed first calls (imports, thread pools, allocator) on one pair
    if not warm.exists():
        bench.link_prefix(run_dir, warm, 2)
    time_default(warm, config, root / f"{run.name}_warm.zarr")
    time_floor(model, x, y, states[:2], config.compute.batch_size, config.loss_name or "")
    for r in range(rounds):
        order = ("default", "floor") if r % 2 == 0 else ("floor", "default")
        t: dict[str, float] = {}
        for kind in order:
            if kind == "default":
                t["default"], result = time_default(run_dir, config, out)
                threads = result.threads
                torch.set_num_threads(threads)  # the floor at the threads the default chose
                # Every gradient of the call (its survey's too, less those the loop took from it) per pair.
                gpp = result.gradients / max(1, result.computed)
                loop = float(LcaStore.open(out).read("train", "splits").mean())  # the pairs' sub-intervals
            else:
                t["floor"] = time_floor(model, x, y, states, config.compute.batch_size, config.loss_name or "")
        ratios.append((t["default"] / gpp) / (t["floor"] / 2))
        print(f"  {run.name} round {r + 1}: default {t['default']:.2f} s ({gpp:.2f} gradients/pair), floor "
              f"{t['floor']:.2f} s: per gradient {ratios[-1]:.3f}x", file=sys.stderr, flush=True)  # fmt: skip
    store = LcaStore.open(out)
    lca = store.array("train", "lca")
    flagged = int(store.read("train", "flagged").sum())
    grid = GridEvaluator(model, x, y, config.loss_name or "")
    curves, err, t0 = [], 0.0, time.perf_counter()
    v = [grid.flat(s) for s in states]
    for t_ in range(len(states) - 1):
        grads, step = grid.pair_grid(v[t_], v[t_ + 1], run.points)
        curve, ref = pair_curve(grads, step)
        curves.append(curve)
        err += float(np.abs(np.asarray(lca[t_], dtype=np.float64) - ref).sum())
    grid_s = time.perf_counter() - t0
    alloc = allocate(curves, l1_tol)
    norm = sum(c.norm for c in curves)
    plain = sum(c.errors[0] for c in curves) / norm
    row = {
        "run": run.name, "description": run.description, "pairs": len(curves), "points": run.points,
        "oracle": alloc.gradients_per_pair, "oracle_lower_bound": alloc.lower_bound, "oracle_rel_l1": alloc.rel_l1,
        "oracle_reachable": alloc.reachable, "per_pair_oracle": per_pair_minimum(curves, l1_tol),
        "plain_simpson_rel_l1": plain, "default": gpp, "sub_intervals": loop, "ratio": gpp / alloc.gradients_per_pair,
        "rel_l1": err / norm, "flagged": flagged, "overhead_per_gradient": statistics.median(ratios),
        "overhead_rounds": ratios, "threads": threads, "grid_seconds": grid_s,
        "curves": [asdict(c) for c in curves],
    }  # fmt: skip
    print(f"  {run.name}: oracle {alloc.gradients_per_pair:.2f} (lower bound {alloc.lower_bound:.2f}), default "
          f"{gpp:.2f}, relative L1 {row['rel_l1']:.2e}, grid {grid_s:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
    return row


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table of :func:`measure` rows."""
    lines = [
        "| run | pairs (grid K) | oracle minimum (lower bound; per-pair oracle) "
        "| default gradients / pair (sub-intervals) | default / oracle | overhead per gradient (rounds) "
        "| relative L1 (plain Simpson) | flagged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        over = ", ".join(f"{x:.3f}" for x in r["overhead_rounds"])
        lines.append(
            f"| {r['run']} | {r['pairs']} ({r['points']}) | {r['oracle']:.2f} ({r['oracle_lower_bound']:.2f}; "
            f"{r['per_pair_oracle']:.2f}) | {r['default']:.2f} ({r['sub_intervals']:.2f}) | {r['ratio']:.2f} | "
            f"{r['overhead_per_gradient']:.3f} ({over}) | {r['rel_l1']:.2e} ({r['plain_simpson_rel_l1']:.2e}) "
            f"| {r['flagged']} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``bench.py --cost-per-accuracy``: every run of ``--cases`` (default :data:`DEFAULT_RUNS`), one table."""
    names = [c.strip() for c in (args.cases or ",".join(DEFAULT_RUNS)).split(",") if c.strip()]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        raise SystemExit(f"Error: unknown run(s) {', '.join(unknown)}; known: {', '.join(RUNS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    before = torch.get_num_threads()
    info = bench.machine()
    rounds = args.rounds or 1
    print(f"# lca bench --cost-per-accuracy {info['date']} on {info['cpu']} ({info['cores']} cores, torch "
          f"{info['torch']}), {'quick' if args.quick else 'full'} mode, {rounds} round(s)",
          file=sys.stderr)  # fmt: skip
    tmp_ctx = tempfile.TemporaryDirectory(prefix="lca-cpa-") if args.keep is None else None
    root = Path(tmp_ctx.name) if tmp_ctx else args.keep
    assert root is not None
    rows = []
    try:
        for name in names:
            run = RUNS[name]
            pairs = args.pairs or (run.quick_pairs if args.quick else run.pairs)
            rows.append(measure(run, root, pairs, args.quick, rounds, args.l1_tol))
            torch.set_num_threads(before)
            if tmp_ctx is not None:  # the held-out run's checkpoints and store are ~0.7 GB in full mode
                for path in (root / name, root / f"{name}.zarr", root / f"{name}_warm.zarr"):
                    shutil.rmtree(path, ignore_errors=True)
            if args.json:  # after every run: a long full mode keeps what it measured if a later run fails
                args.json.write_text(json.dumps({"machine": info, "cost_per_accuracy": rows}, indent=1))
    finally:
        if tmp_ctx is not None:
            tmp_ctx.cleanup()
    print(table(rows))
    return 0
