"""The pair loop's memory: parameter-sized buffers reused, never allocated per gradient or per pair."""

from __future__ import annotations

import torch
from conftest import RunCache

from lca_cli.computation.engine import build_engine, preload_points, run_pairs
from lca_cli.sources import find_checkpoints

CPU = torch.device("cpu")


def test_pair_loop_reuses_its_buffers(runs: RunCache) -> None:
    # Every parameter-sized vector of the loop (gradients, delta, rows, temporaries, the scratch block) comes from
    # the engine's pool: a second and a third pass over the run's pairs (more gradients, the same refinement)
    # allocate no new one, and the pool stays a fixed handful of vectors whatever the number of gradients.
    run_dir, config = runs.run("relu_mlp")
    engine, _, expected = build_engine(config.with_overrides(dtype="float32"), CPU)
    refs = find_checkpoints(run_dir)
    points = preload_points(engine, expected, refs, CPU)
    assert run_pairs(engine, points) == len(refs) - 1
    held = [(b.data_ptr(), b.dtype, b.numel()) for b in engine.pool._all]
    for _ in range(2):
        run_pairs(engine, points)
        assert [(b.data_ptr(), b.dtype, b.numel()) for b in engine.pool._all] == held
    size = engine.vlayout.size
    vectors = sum(b.numel() for b in engine.pool._all if b.numel() >= size) / size
    # At most: delta, 3 gradients, 2 more per level of refinement depth (log2(max_splits) - 1 levels), the
    # running row and the panel's row or temporaries (2).
    levels = config.compute.max_splits.bit_length() - 2
    assert vectors <= 1 + 3 + 2 * levels + 1 + 2, vectors


def test_read_ahead_is_bounded_in_bytes(runs: RunCache, monkeypatch) -> None:
    # Two checkpoints ahead of a small model's, one ahead of a model whose point vector is over READ_AHEAD_BYTES
    # (a 64M-parameter float32 model holds 256 MB per checkpoint): never none, never more than asked.
    from lca_cli.computation import engine as engine_module
    from lca_cli.computation.engine import CheckpointLoader

    run_dir, config = runs.run("tanh_mlp")
    eng, _, expected = build_engine(config, CPU)
    loader = CheckpointLoader(find_checkpoints(run_dir), expected, eng.vlayout, CPU)
    try:
        loader.get(0)
        assert loader.window == 2 and set(loader._futures) == {1, 2}
        monkeypatch.setattr(engine_module, "READ_AHEAD_BYTES", 4 * eng.vlayout.size - 1)
        assert loader.window == 1
        loader.get(1)
        assert set(loader._futures) == {2}
    finally:
        loader.close()
