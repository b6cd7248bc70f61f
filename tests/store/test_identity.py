"""Fingerprints see every byte of a checkpoint; stores of older lca (sampled fingerprints) are upgraded once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import run_lca
from runs import FACTORIES
from safetensors.torch import save_file

from lca_cli.store.identity import SCHEME, SCHEME_ATTR, fingerprint, fingerprints
from lca_cli.store.lcastore import LcaStore

#: 300k parameters: a 1.2 MB checkpoint, over the 576 KiB the sampled fingerprint hashed whole.
HIDDEN = 30000


def _big_run(root: Path, steps: int = 3) -> Path:
    """A run of ``steps + 1`` checkpoints of a wide MLP (written directly: no training needed)."""
    run = root / "run"
    run.mkdir()
    (run / "tinyfactories.py").write_text(FACTORIES)
    (run / "lca.toml").write_text(
        '[model]\nfactory = "tinyfactories:model"\n'
        f"kwargs = {{ hidden = {HIDDEN} }}\n"
        '[data]\nfactory = "tinyfactories:data"\n[loss]\nname = "cross_entropy"\n'
    )
    namespace: dict[str, object] = {}
    exec(compile(FACTORIES, "tinyfactories", "exec"), namespace)
    net = namespace["model"](hidden=HIDDEN)  # type: ignore[operator]
    g = torch.Generator().manual_seed(3)
    for step in range(steps + 1):
        state = {
            k: (v + 0.01 * step * torch.randn(v.shape, generator=g)).contiguous() for k, v in net.state_dict().items()
        }
        save_file(state, str(run / f"step_{step:08d}.safetensors"), metadata={"step": str(step)})
    return run


def _compute(run: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``lca compute RUN --out OUT --quiet`` in a fresh process with the default threads (not a fork: see
    ``faults.fork_start``)."""
    return run_lca("compute", run, "--out", out, "--quiet", timeout=600)


def _flip_middle_byte(path: Path) -> None:
    """Change the byte in the middle of a file: between the 2nd and 3rd of the old fingerprint's samples."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_byte_the_samples_missed_changes_the_fingerprint(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(np.random.default_rng(0).bytes(1_200_000))
    before, legacy = fingerprint(f), fingerprint(f, whole=False)
    _flip_middle_byte(f)
    assert fingerprint(f, whole=False) == legacy  # the old sampling never read it
    assert fingerprint(f) != before


def test_small_files_have_the_same_fingerprint_in_both_schemes(tmp_path: Path) -> None:
    # A store of an older lca over small checkpoints (all of the golden ones) records the same bytes.
    f = tmp_path / "x.bin"
    f.write_bytes(np.random.default_rng(1).bytes(500_000))
    assert fingerprint(f) == fingerprint(f, whole=False)


@pytest.mark.slow
def test_a_used_checkpoint_changed_where_the_samples_missed_is_refused(tmp_path: Path) -> None:
    run = _big_run(tmp_path)
    out = tmp_path / "s.zarr"
    assert _compute(run, out).returncode == 0
    assert LcaStore.open(out).attrs[SCHEME_ATTR] == SCHEME
    last = run / "step_00000003.safetensors"
    _flip_middle_byte(last)  # the last checkpoint: every resume checks it
    proc = _compute(run, out)
    assert proc.returncode == 6, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "computed from other checkpoints" in lines[0] and last.name in lines[0], lines


@pytest.mark.slow
def test_a_store_with_sampled_fingerprints_is_checked_the_old_way_then_upgraded(tmp_path: Path) -> None:
    run = _big_run(tmp_path)
    out = tmp_path / "s.zarr"
    assert _compute(run, out).returncode == 0
    refs = sorted(run.glob("*.safetensors"))
    # As an older lca wrote it: sampled fingerprints, no scheme attribute.
    store = LcaStore.open(out, mode="r+")
    store.set_fingerprints(range(len(refs)), fingerprints(refs, whole=False))
    meta = json.loads((out / "zarr.json").read_text())
    del meta["attributes"][SCHEME_ATTR]
    (out / "zarr.json").write_text(json.dumps(meta))
    assert _compute(run, out).returncode == 0  # same files: accepted
    store = LcaStore.open(out)
    assert store.attrs[SCHEME_ATTR] == SCHEME
    np.testing.assert_array_equal(store.fingerprints, fingerprints(refs))  # now by every byte
    _flip_middle_byte(refs[-1])
    assert _compute(run, out).returncode == 6
