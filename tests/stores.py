"""Small synthetic stores for the analysis and reporting tests: random LCA rows with consistent small arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lca_cli.core.layout import Layout
from lca_cli.store import BlockRows, LcaStore

SHAPES = [
    ("fc1.weight", (6, 4)),
    ("fc1.bias", (6,)),
    ("fc2.weight", (3, 6)),
    ("fc2.bias", (3,)),
    ("scale", ()),
]


def make_store(
    path: Path,
    *,
    n_pairs: int = 50,
    sets: tuple[str, ...] = ("train",),
    rows_per_chunk: int = 8,
    seed: int = 0,
    done_rows: np.ndarray | None = None,
    first_step: int = 0,
    step_size: int = 2,
    residual_scale: float = 1e-8,
    shapes: list[tuple[str, tuple[int, ...]]] | None = None,
    values: np.ndarray | None = None,
    dtype: str | None = None,
) -> tuple[LcaStore, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A store with random LCA rows, consistent small arrays, exact zeros in column 0.

    ``residual_scale`` sets the size of the per-pair residuals (the integration error). ``values``: ``(n_pairs,
    P)`` LCA rows to store in every set instead of random ones (a constructed store whose answers are known);
    ``dtype``: the run's dtype recorded in the store's evaluation details.
    Returns the store, the full ``lca`` per set and the loss per set.
    """
    layout = Layout.from_shapes(SHAPES if shapes is None else shapes)
    steps = [first_step + step_size * i for i in range(n_pairs + 1)]
    store = LcaStore.create(
        path,
        layout=layout,
        sets=sets,
        steps=steps,
        attrs={"method": "rk4", "tolerance": 1e-7, "rtol": 1e-4, "max_splits": 32}
        | ({"evaluation": {"dtype": dtype}} if dtype else {}),
        rows_per_chunk=rows_per_chunk,
    )
    rng = np.random.default_rng(seed)
    full, losses = {}, {}
    done = np.ones(n_pairs, bool) if done_rows is None else done_rows
    for si, s in enumerate(sets):
        lca = (rng.normal(size=(n_pairs, layout.size)) * 1e-3 - 1e-4 * (si + 1)).astype(np.float32)
        lca[:, 0] = 0.0  # a parameter that never moves the loss
        lca[3, 5] = 0.0
        if values is not None:
            lca = np.asarray(values, dtype=np.float32).copy()
        res = rng.normal(size=n_pairs) * residual_scale
        buf = np.zeros(n_pairs)
        loss = np.empty(n_pairs + 1)
        loss[0] = 2.3
        loss[1:] = loss[0] + np.cumsum(lca.astype(np.float64).sum(1) + res + buf)
        tl = np.stack([lca[:, p.offset : p.stop].astype(np.float64).sum(1) for p in layout.params], 1)
        th = np.stack([(lca[:, p.offset : p.stop] < 0).sum(1) for p in layout.params], 1)
        tu = np.stack([(lca[:, p.offset : p.stop] > 0).sum(1) for p in layout.params], 1)
        flagged = np.zeros(n_pairs, bool)
        flagged[7] = True
        # One block for all rows (write_block slices across chunks), then unmark the rows not done.
        store.write_block(s, BlockRows(0, lca, loss, res, np.full(n_pairs, 2, np.int32), flagged, tl, th, tu, buf))
        if not done.all():
            store.array(s, "done")[:] = done
        full[s], losses[s] = lca, loss
    return LcaStore.open(path), full, losses
