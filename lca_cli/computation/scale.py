"""The run scale of ``l1_tol`` (``l1_scope="run"``): measured once, when a store is created, and recorded in it.

A pair's accuracy budget is ``l1_tol * max(||lca||_1, S)``, where S is :data:`SCALE_FRACTION` of the run's mean
``||lca||_1``, estimated from the Euler rows of :data:`SCALE_PAIRS` pairs spread over the run. Recording it in
the store keeps every row a function of its pair and the store alone (a resumed or extended run uses the same).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from lca_cli.computation.engine import PairEngine, Point
from lca_cli.computation.options import SCALE_FRACTION, SCALE_PAIRS
from lca_cli.errors import StoreError
from lca_cli.store.lcastore import LcaStore

__all__ = ["SCALE_FRACTION", "SCALE_PAIRS", "SLOW_SCALE_SECONDS", "l1_scales_of", "measure_l1_scales", "scale_pairs"]

#: A run scale expected to take longer than this is announced in a note.
SLOW_SCALE_SECONDS = 5.0


def scale_pairs(n_pairs: int, count: int = SCALE_PAIRS) -> list[int]:
    """The pairs, spread evenly over a run of ``n_pairs``, that estimate its scale (the middle of each slice).

    Args:
        n_pairs: Pairs of the run (checkpoints - 1).
        count: How many to take (all of them when the run has fewer).

    Returns:
        Increasing pair indices.

    """
    m = min(count, n_pairs)
    return [((2 * j + 1) * n_pairs) // (2 * m) for j in range(m)]


def measure_l1_scales(
    engine: PairEngine,
    read: Callable[[int], Point],
    n_pairs: int,
    note: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> dict[str, float] | None:
    """Per set, a run's scale of ``||lca||_1``: a fraction of the mean of ``||Δ ⊙ ∇L(v_t)||_1`` over a few pairs.

    :data:`SCALE_FRACTION` of the mean over :func:`scale_pairs`. That norm is the Euler row's, one gradient per
    sampled pair; its mean was 0.95-1.13 times the mean plain-Simpson ``||lca||_1`` on the bench's runs (1.82 on
    one SGD CNN, where a few pairs are far larger than the rest; a larger scale loosens the budget of the
    smaller pairs only; BENCHMARKS.md). It is measured once, when the store is created, and recorded in it, so
    every row depends only on its pair and the store.

    Args:
        engine: The pair engine (its objectives evaluate the gradients).
        read: ``i -> (point vector, fixed buffers)`` of checkpoint ``i``, on the engine's device.
        n_pairs: Pairs of the run.
        note: Told, when the first gradient says the rest will take more than :data:`SLOW_SCALE_SECONDS`, what
            is being done (before the progress display starts, a big model would otherwise sit silent).
        stop: When set, the measurement ends before its next gradient (a big model's take minutes).

    Returns:
        ``{set: scale}`` in loss units (0.0 when the run has no pair; pairs whose norm is not finite are left out);
        None when stopped.

    """
    norms: dict[str, list[float]] = {s: [] for s in engine.objectives}
    picked = scale_pairs(n_pairs)
    t0, done = time.perf_counter(), 0
    for t in picked:
        v0, fixed0 = read(t)
        delta = engine.delta(v0, read(t + 1)[0])  # (D,) accumulation dtype (exact in float64), a pooled buffer
        for s, obj in engine.objectives.items():
            if stop is not None and stop.is_set():
                return None
            grad = obj.value_and_grad(v0, fixed0)[1]  # (D,) accumulation dtype
            norm = float(torch.linalg.vector_norm(grad.mul_(delta), 1))
            if np.isfinite(norm):  # a diverged checkpoint is the pair loop's to report, in one line
                norms[s].append(norm)
            done += 1
            if note is not None and done == 1:
                rest = (time.perf_counter() - t0) * (len(picked) * len(norms) - 1)
                if rest > SLOW_SCALE_SECONDS:
                    note(
                        f"measuring the run scale of --l1-tol on {len(picked)} pair(s) ({len(picked) * len(norms)} "
                        f"gradients, about {rest:.0f} s more; once per store, --l1-scope pair skips it)"
                    )
    return {s: SCALE_FRACTION * float(np.mean(v)) if v else 0.0 for s, v in norms.items()}


def l1_scales_of(store: LcaStore, scope: str) -> dict[str, float]:
    """The run scales a store recorded (``l1_scope="run"``), per set; empty for ``"pair"``.

    Args:
        store: The store.
        scope: The store's ``l1_scope``.

    Returns:
        ``{set: scale}``.

    Raises:
        StoreError: If the store's settings say ``"run"`` and it holds no scale.

    """
    if scope != "run":
        return {}
    recorded = store.attrs.get("l1_scale")
    if not isinstance(recorded, dict) or set(recorded) != set(store.sets):
        raise StoreError(
            f"{store.path} was made with --l1-scope run but records no run scale (l1_scale): recompute it with "
            "--overwrite, or pass --l1-scope pair to a new store"
        )
    return {str(k): float(v) for k, v in recorded.items()}
