"""How the per-run accuracy target's scale was chosen: the local scheme replayed on cached gradients.

``record`` trains the cases of ``bench.py --accuracy`` (or reuses runs already there) and evaluates, in a float64
network, the loss and gradient at every point ``k / K`` of every pair. ``rules`` replays
:func:`lca_cli.core.integrate.integrate_pair` (the library's own code) on those points for each scale fraction: the
run scale ``S`` is the fraction times the mean Euler-row norm ``||Δ ⊙ ∇L(θ_t)||_1`` over the pairs
:func:`lca_cli.computation.scale.scale_pairs` picks (as ``lca compute`` measures it; fraction 0 is
``--l1-scope pair``),
and each run's relative L1 error is taken against composite Simpson on all ``K`` sub-intervals::

    python scripts/accuracy_study.py record --dir /tmp/lca-study    # 6 x 200 x 33 float64 gradients: ~2 GB
    python scripts/accuracy_study.py rules --dir /tmp/lca-study --fractions 0,0.8,1
    python scripts/accuracy_study.py calibrate --dir /tmp/lca-study --factors 1,1.25
    python scripts/accuracy_study.py oracle --dir /tmp/lca-study

``oracle`` computes each run's oracle minimum (issue 23; :mod:`oracle`, as ``bench.py --cost-per-accuracy``
does from a fresh grid): the fewest gradients per pair with which some allocation of dyadic Simpson panel trees
over the run's pairs meets the per-run contract, beside the per-pair oracle (every pair within ``l1_tol`` of its
own norm) and the library's scheme replayed at the default scale.

``calibrate`` measures an alternative that was not built: the first panel's indicator factor taken from the run
(``c`` times the ratio ``||S_2 - S_4||_1 / ||Δ (g_0 + g_1 - 2 g_m)||_1 / 12`` over the scale's pairs, clipped to
``[--floor, JUMP_FACTOR]``) instead of :data:`lca_cli.core.integrate.JUMP_FACTOR`; the scheme is replayed by a numpy
copy of the local rule, checked against the library's own replay at ``c = 0`` (the default). BENCHMARKS.md
("A per-run target with a recorded scale" and "Where the default path's cost goes") has the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import bench  # noqa: E402  (the --accuracy cases)
import oracle  # noqa: E402  (the oracle minimum)


def record(case: str, folder: Path, points: int, pairs: int) -> Path:
    """Train ``case`` and save float64 losses ``L (T, K+1)``, gradients ``G (T, K+1, D)`` and steps ``D (T, D)``."""
    from lca_cli.computation.config import build_model, call_factory, parse_config
    from lca_cli.core.evalset import make_chunks
    from lca_cli.core.layout import Layout
    from lca_cli.core.losses import builtin_loss
    from lca_cli.core.model import prepare_model
    from lca_cli.core.objective import Objective
    from lca_cli.core.vectors import split_state
    from lca_cli.sources import find_checkpoints, read_checkpoint
    from lca_cli.training.train import train_run

    raw = bench.ACCURACY_CASES[case]
    config = parse_config({**raw, "train": {**raw["train"], "iterations": pairs}}, case)
    run = folder / case
    if not (run / "lca.toml").exists():
        train_run(config, run, overwrite=True)
    model = prepare_model(build_model(config), "batch").double()
    layout = Layout.from_module(model)
    data = call_factory(config.data["train"], None, "[data.train]")
    chunks = make_chunks("train", data, 4096, torch.device("cpu"), torch.float64)
    objective = Objective(model, layout, chunks, builtin_loss("cross_entropy"), torch.float64)
    states = [split_state(read_checkpoint(r), layout, torch.device("cpu"))[0] for r in find_checkpoints(run)]
    n = len(states) - 1
    grads = np.zeros((n, points + 1, layout.size))
    losses = np.zeros((n, points + 1))
    steps = np.zeros((n, layout.size))
    t0 = time.perf_counter()
    for t in range(n):
        delta = states[t + 1] - states[t]
        steps[t] = delta.numpy()
        for k in range(points + 1):
            loss, grad = objective.value_and_grad(states[t] + (k / points) * delta, {})
            losses[t, k], grads[t, k] = float(loss), grad.numpy()
    out = folder / f"{case}.npz"
    np.savez(out, G=grads, L=losses, D=steps)
    print(f"{case}: {n} pairs, {layout.size} parameters, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def simpson(grads: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Composite Simpson on every point of one pair's grid: ``(D,)``."""
    k = grads.shape[0] - 1
    w = np.full(k + 1, 2.0)
    w[1::2], w[0], w[-1] = 4.0, 1.0, 1.0
    return step * np.tensordot(w / (3 * k), grads, axes=(0, 0))


Grid = tuple[np.ndarray, np.ndarray, np.ndarray]


def load_grid(path: Path, cap: int) -> Grid:
    """A recorded grid ``(G, L, D)``, its points thinned to ``cap`` sub-intervals.

    ``cap`` is both the scheme's cap and the reference's count of sub-intervals.
    """
    z = np.load(path)
    every = (z["L"].shape[1] - 1) // cap
    return z["G"][:, ::every], z["L"][:, ::every], z["D"]


def run_scale(grid: Grid, fraction: float) -> float:
    """The run scale as ``lca compute`` measures it: ``fraction`` of the mean Euler-row norm over the sampled pairs."""
    from lca_cli.computation.scale import scale_pairs

    grads, _, steps = grid
    return fraction * float(np.mean([np.abs(steps[t] * grads[t, 0]).sum() for t in scale_pairs(len(steps))]))


def replay(grid: Grid, fraction: float, l1_tol: float) -> tuple[float, float, float, int]:
    """``(relative L1 of the run, conservation, gradients per pair, flagged pairs)`` of the local scheme."""
    from lca_cli.core.integrate import Evaluation, integrate_pair

    grads, losses, steps = grid
    n, points = grads.shape[0], grads.shape[1] - 1
    scale = run_scale(grid, fraction)
    err = norm = res = moved = used = 0.0
    flagged = 0
    for t in range(n):
        g = torch.from_numpy(grads[t])
        lt = torch.from_numpy(losses[t])

        def point(s: float, g: torch.Tensor = g, lt: torch.Tensor = lt) -> tuple[torch.Tensor, torch.Tensor]:
            k = round(s * points)
            return lt[k], g[k]

        r = integrate_pair(
            point, torch.from_numpy(steps[t]), Evaluation(lt[0], g[0]), Evaluation(lt[points], g[points]),
            refine="local", max_splits=points, l1_tol=l1_tol, l1_scale=scale,
        )  # fmt: skip
        ref = simpson(grads[t], steps[t])
        err += float(np.abs(r.lca.numpy() - ref).sum())
        norm += float(np.abs(ref).sum())
        res += abs(r.residual)
        moved += abs(r.loss1 - r.loss0)
        used += r.splits
        flagged += int(r.flagged)
    return err / norm, res / moved if moved else 0.0, used / n, flagged


def _panel(g: np.ndarray, lt: np.ndarray, step: np.ndarray, a: int, b: int, k: int) -> tuple[np.ndarray, float, float]:
    """One Simpson panel ``[a, b]`` of a ``k``-interval grid: its row, indicator (without factor) and residual."""
    m, w = (a + b) // 2, (b - a) / k
    row = step * (g[a] + 4 * g[m] + g[b]) * w / 6
    indicator = float(np.abs(step * (g[a] + g[b] - 2 * g[m])).sum()) * w / 12
    return row, indicator, abs(float(lt[b] - lt[a]) - float(row.sum()))


def local_rule(
    g: np.ndarray, lt: np.ndarray, step: np.ndarray, l1_tol: float, scale: float, first: float, cap: int
) -> tuple[np.ndarray, int]:
    """The local scheme (:mod:`lca_cli.core.integrate`) with factor ``first`` on the whole pair's panel only."""
    from lca_cli.core.integrate import JUMP_FACTOR

    k = g.shape[0] - 1
    min_width = 2 * k // cap
    row, ind, res = _panel(g, lt, step, 0, k, k)
    budget = l1_tol * max(float(np.abs(row).sum()), scale)
    state = {"bank": 0.0, "used": 2}
    rows: list[np.ndarray] = []

    def visit(a: int, b: int, panel: tuple[np.ndarray, float, float], factor: float) -> None:
        r, i, e = panel
        est, share = max(factor * i, e), budget * (b - a) / k
        if est <= share + state["bank"] or b - a <= min_width:
            rows.append(r)
            if est <= share + state["bank"]:
                state["bank"] += share - est
            return
        m = (a + b) // 2
        state["used"] += 2
        visit(a, m, _panel(g, lt, step, a, m, k), JUMP_FACTOR)
        visit(m, b, _panel(g, lt, step, m, b, k), JUMP_FACTOR)

    visit(0, k, (row, ind, res), first)
    return np.sum(rows, axis=0), state["used"]


def calibrate(path: Path, factors: list[float], floor: float, l1_tol: float, cap: int) -> list[str]:
    """Plain Simpson's error against its indicator, and the run-calibrated first-panel factor, for one run."""
    from lca_cli.computation.scale import SCALE_FRACTION, scale_pairs
    from lca_cli.core.integrate import JUMP_FACTOR

    grid = load_grid(path, cap)
    grads, losses, steps = grid
    n, k = grads.shape[0], grads.shape[1] - 1
    sampled = scale_pairs(n)
    scale = run_scale(grid, SCALE_FRACTION)
    refs = [simpson(grads[t], steps[t]) for t in range(n)]
    norm = sum(float(np.abs(r).sum()) for r in refs)
    err1 = ind1 = diff = 0.0
    diff_s = ind_s = 0.0
    for t in range(n):
        g, lt, d = grads[t], losses[t], steps[t]
        s2, i1, _ = _panel(g, lt, d, 0, k, k)  # plain Simpson and its indicator (without factor)
        s4 = _panel(g, lt, d, 0, k // 2, k)[0] + _panel(g, lt, d, k // 2, k, k)[0]  # one split
        e, dd = float(np.abs(s2 - refs[t]).sum()), float(np.abs(s2 - s4).sum())
        err1, ind1, diff = err1 + e, ind1 + i1, diff + dd
        if t in sampled:
            diff_s, ind_s = diff_s + dd, ind_s + i1
    rho = diff_s / ind_s if ind_s > 0 else 0.0
    cells = [f"plain {err1 / norm:.2e}; error/indicator {err1 / ind1:.2f}; two-level difference/error "
             f"{diff / err1:.2f}; sampled ratio {rho:.2f}"]  # fmt: skip
    for c in [0.0, *factors]:
        first = JUMP_FACTOR if c == 0 else min(JUMP_FACTOR, max(floor, c * rho))
        err = used = 0.0
        for t in range(n):
            row, u = local_rule(grads[t], losses[t], steps[t], l1_tol, scale, first, cap)
            err += float(np.abs(row - refs[t]).sum())
            used += u
        if c == 0:  # the numpy copy must be the library's scheme
            library = replay(grid, SCALE_FRACTION, l1_tol)
            assert abs(library[2] - used / n) < 1e-9 and abs(library[0] - err / norm) <= 1e-6 * library[0] + 1e-12, (
                library
            )
        cells.append(f"{'default' if c == 0 else f'c = {c:g} (factor {first:.2f})'}: {err / norm:.2e} @ {used / n:.2f}")
    return cells


def oracle_row(path: Path, l1_tol: float, cap: int) -> str:
    """One table row of ``oracle``: the oracle minimum of a recorded run beside the library's replayed scheme."""
    from lca_cli.computation.scale import SCALE_FRACTION

    grid = load_grid(path, cap)
    grads, _, steps = grid
    curves = [oracle.pair_curve(grads[t], steps[t])[0] for t in range(len(steps))]
    alloc = oracle.allocate(curves, l1_tol)
    plain = sum(c.errors[0] for c in curves) / sum(c.norm for c in curves)
    rel, _, used, flagged = replay(grid, SCALE_FRACTION, l1_tol)
    return (f"| {path.stem} | {len(curves)} | {alloc.gradients_per_pair:.2f} ({alloc.lower_bound:.2f}) -> "
            f"{alloc.rel_l1:.2e} | {oracle.per_pair_minimum(curves, l1_tol):.2f} | {plain:.2e} | {used:.2f} -> "
            f"{rel:.2e} ({flagged} flagged) | {used / alloc.gradients_per_pair:.2f} |")  # fmt: skip


def main() -> int:
    """Command line: ``record``, ``rules``, ``calibrate`` or ``oracle``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("record", "rules", "calibrate", "oracle"))
    p.add_argument("--dir", type=Path, required=True, help="where runs and gradient grids are kept")
    p.add_argument("--cases", default=",".join(bench.ACCURACY_CASES), help="comma-separated --accuracy cases")
    p.add_argument("--points", type=int, default=32, help="sub-intervals of the grid (the cap and the reference)")
    p.add_argument("--pairs", type=int, default=200, help="training steps per case")
    p.add_argument("--fractions", default="0,0.8,1", help="run-scale fractions to replay (0 = per pair)")
    p.add_argument("--cap", type=int, default=32, help="rules: sub-intervals used of the grid's (a divisor)")
    p.add_argument("--l1-tol", type=float, default=1e-3)
    p.add_argument("--factors", default="1,1.25", help="calibrate: multiples c of the sampled ratio to replay")
    p.add_argument("--floor", type=float, default=0.0, help="calibrate: least first-panel factor")
    args = p.parse_args()
    torch.set_num_threads(1)
    args.dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in args.cases.split(",") if c]
    if args.what == "record":
        for case in cases:
            record(case, args.dir, args.points, args.pairs)
        return 0
    if args.what == "calibrate":
        factors = [float(c) for c in args.factors.split(",")]
        for case in cases:
            print(f"{case}: " + " | ".join(calibrate(args.dir / f"{case}.npz", factors, args.floor, args.l1_tol,
                                                     args.cap)), flush=True)  # fmt: skip
        return 0
    if args.what == "oracle":
        print("| run | pairs | oracle minimum (lower bound) -> its relative L1 | per-pair oracle | plain Simpson "
              "| the library's scheme replayed | scheme / oracle |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for case in cases:
            print(oracle_row(args.dir / f"{case}.npz", args.l1_tol, args.cap), flush=True)
        return 0
    fractions = [float(f) for f in args.fractions.split(",")]
    print("| run | " + " | ".join(f"f = {f:g}" if f else "per pair" for f in fractions) + " |")
    print("|---|" + "---|" * len(fractions))
    for case in cases:
        cells = []
        grid = load_grid(args.dir / f"{case}.npz", args.cap)
        for f in fractions:
            rel, cons, gpp, flagged = replay(grid, f, args.l1_tol)
            cells.append(f"{rel:.2e} @ {gpp:.2f} (cons. {cons:.1e}, {flagged} flagged)")
        print(f"| {case} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
