"""Stores are bit-for-bit what the release before the layered layout computed (issue "One house").

The digests in ``tests/data/golden_stores.json`` were written by the code before the package was reorganised
(``python tests/test_golden.py --write`` on commit c62a5bc), from runs these tests train the same way; a
refactoring that changes one bit of any array of these stores fails here. ``lca compute`` runs as a user runs
it: a separate process, default flags except the one each case is about and ``--threads 1`` (below).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

TESTS_DIR = Path(__file__).resolve().parent
GOLDEN = TESTS_DIR / "data" / "golden_stores.json"

# name -> (run kind of reference.RUN_KINDS, extra compute flags)
CASES: dict[str, tuple[str, list[str]]] = {
    "tanh_mlp-defaults": ("tanh_mlp", []),
    "bn_mlp-defaults": ("bn_mlp", []),
    "relu_mlp-neuron": ("relu_mlp", ["--granularity", "neuron"]),
}


def store_digests(store: Path) -> dict[str, str]:
    """SHA-256 of every array's values (dtype, shape and bytes) in a store, keyed by its path in the group."""
    out: dict[str, str] = {}
    root = zarr.open_group(store, mode="r")

    def walk(group: zarr.Group, prefix: str) -> None:
        for name, member in sorted(group.members()):
            path = f"{prefix}{name}"
            if isinstance(member, zarr.Group):
                walk(member, path + "/")
            else:
                values = np.ascontiguousarray(member[...])
                h = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
                h.update(values.tobytes())
                out[path] = h.hexdigest()

    walk(root, "")
    return out


def compute_case(tmp: Path, name: str) -> dict[str, str]:
    """Train the case's run into ``tmp`` and compute its store with ``lca compute`` in a fresh process."""
    from conftest import train_run

    kind, flags = CASES[name]
    run = train_run(tmp / name, kind)
    # One thread: `--threads auto` picks a count by timing, and a BatchNorm reduction's float sum order (so its
    # last bits) depends on the count. Everything else is the user's default.
    cmd = [sys.executable, "-m", "lca_cli", "compute", str(run), "--threads", "1", *flags]
    # The run's factories are tests/reference.py's, found on PYTHONPATH as a user's own package would be.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return store_digests(run / "lca.zarr")


@pytest.mark.parametrize("name", sorted(CASES))
def test_store_bits_unchanged(tmp_path: Path, name: str) -> None:
    golden = json.loads(GOLDEN.read_text())[name]
    got = compute_case(tmp_path, name)
    assert sorted(got) == sorted(golden), "the store's arrays changed"
    changed = [path for path in golden if got[path] != golden[path]]
    assert not changed, f"arrays whose bits changed: {changed}"


if __name__ == "__main__":  # pragma: no cover - writes the golden file from the current code
    import tempfile

    sys.path.insert(0, str(TESTS_DIR))
    assert sys.argv[1:] == ["--write"], "usage: python tests/test_golden.py --write"
    with tempfile.TemporaryDirectory() as d:
        digests = {name: compute_case(Path(d), name) for name in sorted(CASES)}
    GOLDEN.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
