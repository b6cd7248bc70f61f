"""``scripts/bench_sizes.py``: the model-size sweep's models, its lock handling and a ``--quick`` run end to end."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from load_scripts import load_script

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(scope="module")
def sizes() -> ModuleType:
    return load_script("bench_sizes")


@pytest.mark.parametrize("text", ["1M", "4M", "16M", "64M", "250k"])
def test_widths_hit_the_parameter_counts(sizes: ModuleType, text: str) -> None:
    target = sizes.parse_size(text)
    width = sizes.width_for(target)
    assert abs(sizes.n_params(width) - target) / target < 0.01
    if target <= 1_000_000:  # building the big ones costs memory; the count formula is checked on these
        assert sum(p.numel() for p in sizes.build_model(width).parameters()) == sizes.n_params(width)


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock(1)")
def test_children_take_the_lock_unless_an_ancestor_holds_it(sizes: ModuleType, tmp_path: Path) -> None:
    lock = tmp_path / "bench.lock"
    lock.touch()
    assert sizes.lock_prefix(str(lock)) == ["flock", str(lock)]
    assert sizes.lock_prefix("none") == []
    # Under `flock LOCK python ...` a child taking the same lock again would wait forever.
    probe = (
        f"import sys; sys.path.insert(0, {str(SCRIPTS)!r}); import bench_sizes; "
        f"print(bench_sizes.lock_prefix({str(lock)!r}))"
    )
    out = subprocess.run(["flock", str(lock), sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_quick_sweep_runs_end_to_end_through_bench_py(tmp_path: Path) -> None:
    out = tmp_path / "sizes.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench.py"), "--model-sizes", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "faults/grad" in proc.stdout and "grads/pair" in proc.stdout
    doc = json.loads(out.read_text())
    (row,) = doc["rows"]
    assert doc["machine"]["lca_cli"]  # which code was measured
    for kind in ("script", "lca"):
        m = row[kind]
        assert m["grad_s"] > 0 and m["peak_mib"] > doc["bare_rss_mib"] * 0.5 and m["faults_per_grad"] > 0
    # The script takes exactly 2 new gradients per pair plus the first; lca at least as many (Simpson's 3 points).
    (script_round,) = row["rounds"]["script"]
    assert script_round["gradients"] == 2 * script_round["pairs"] + 1
    assert row["gradients_per_pair"] >= 2.0
    losses = row["run"]["losses"]
    drop = (losses[0] - losses[-1]) / (len(losses) - 1)  # minibatch steps: noisy, about 1e-4 on average
    assert 2e-5 < drop < 5e-4 and max(abs(b - a) for a, b in itertools.pairwise(losses)) < 1e-3
