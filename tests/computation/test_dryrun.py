"""``lca compute --dry-run``: the plan before a long run, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from runs import make_tiny_run

from lca_cli.cli.app import main
from lca_cli.computation.config import load_config
from lca_cli.computation.distributed import Scope
from lca_cli.computation.dryrun import dry_run, store_bytes
from lca_cli.computation.plan import Schedule, build_plan
from lca_cli.computation.runner import compute
from lca_cli.store.lcastore import LcaStore


def test_store_bytes_counts_padded_chunks() -> None:
    total, lca = store_bytes(n_pairs=10, columns=100, tensors=4, sets=2, rows_per_chunk=4)
    assert lca == 2 * 12 * 100 * 4  # 10 rows padded to 3 chunks of 4
    assert total == lca + 2 * 12 * (46 + 4 * 24)


def test_dry_run_writes_nothing_and_plans_what_compute_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_tiny_run(tmp_path, steps=12)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--dry-run", "--json", "--threads", "1", "--granularity", "neuron"])
    assert info.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no store, no lock, no claims folder
    assert doc["store_state"] == "new" and doc["pairs"] == doc["to_compute"] == 12 and doc["columns"] == 15
    assert doc["store_bytes"] < doc["parameter_store_bytes"]  # neuron rows: less disk
    assert doc["gradients_per_pair"] == {"train": 2.0} and doc["seconds_per_gradient"]["train"] > 0
    assert doc["estimate_seconds"] == pytest.approx(12 * 2 * doc["seconds_per_gradient"]["train"])
    # The measured store of this run, once computed, is what the plan said.
    config = load_config(run / "lca.toml").with_overrides(threads=1)
    compute(run, config, run / "lca.zarr", schedule=Schedule(Scope(stop=5)))
    store = LcaStore.open(run / "lca.zarr")
    files = [p for p in (run / "lca.zarr" / "train").rglob("*") if p.is_file() and "c" in p.relative_to(
        run / "lca.zarr" / "train").parts]  # fmt: skip
    lca_files = sum(p.stat().st_size for p in files if p.relative_to(run / "lca.zarr" / "train").parts[0] == "lca")
    assert lca_files == store_bytes(12, 123, 4, 1, store.rows_per_chunk)[1] + 4  # one chunk, with its checksum
    later = dry_run(build_plan(run, config, None, schedule=Schedule(Scope(shard=0, shards=2))))
    assert later.done == 5 and later.store_state.startswith("exists: 5 of 12 pairs done")
    assert later.in_scope == 0 and later.to_compute == 0  # one chunk of 12 rows: shard 0/2 holds none, 1/2 all
    splits = store.read("train", "splits")[store.done()]
    assert later.gradients_per_pair == {"train": pytest.approx(float(np.mean(splits)))}
    assert any("pairs" in line for line in later.lines())
    # Before any pair is done the estimate is a lower bound (refinement may add gradients), and says so; once
    # pairs are done it uses their measured mean.
    first = dry_run(build_plan(run, config, tmp_path / "other.zarr", schedule=Schedule()))
    assert "estimate   at least " in "\n".join(first.lines())
    assert "at least" not in "\n".join(later.lines())


def test_dry_run_of_data_that_does_not_fit_is_compute_s_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It timed a gradient before any pre-flight: a label out of range was a traceback and exit 70.
    run = make_tiny_run(tmp_path, steps=2)
    # A module of its own: "tinyfactories" may already be imported from another test's run.
    extra = "\n\ndef bad_data():\n    x, y = data()\n    return x, y + 40\n"
    (run / "misfitdata.py").write_text((run / "tinyfactories.py").read_text() + extra)
    config = (run / "lca.toml").read_text().replace("tinyfactories:data", "misfitdata:bad_data")
    (run / "lca.toml").write_text(config)
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--dry-run", "--threads", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 3 and err.strip().splitlines() == [
        "Error: evaluation set 'train' does not fit the model: label 42 is out of range for the model's 3 classes "
        "(outputs (3,) per sample)"
    ]
    assert not (run / "lca.zarr").exists()


def _as_float64(run: Path) -> None:
    """Rewrite every checkpoint of a run in float64 (its metadata kept): a float64 training run."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    for path in sorted(run.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = {k: t.double() if t.is_floating_point() else t for k, t in load_file(path).items()}
        save_file(tensors, path, metadata=metadata)


def test_dry_run_of_a_float64_run_plans_float64_as_compute_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # --dtype auto is the checkpoints' dtype. The dry run resolved it without reading a checkpoint, so a float64
    # run was planned and timed as float32 while compute ran it in float64; both now build one plan.
    import lca_cli.computation.entry as entry
    import lca_cli.computation.runner as runner

    run = make_tiny_run(tmp_path, steps=3)
    _as_float64(run)
    planned: list[str] = []
    for module in (entry, runner):
        real = module.build_plan

        def spy(*args, real=real, **kwargs):  # type: ignore[no-untyped-def]
            plan = real(*args, **kwargs)
            planned.append(plan.options.dtype)
            return plan

        monkeypatch.setattr(module, "build_plan", spy)
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--dry-run", "--json", "--threads", "1"])
    assert info.value.code == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float64"
    with pytest.raises(SystemExit) as info:
        main(["compute", str(run), "--quiet", "--threads", "1", "--l1-scope", "pair"])
    assert info.value.code == 0
    assert LcaStore.open(run / "lca.zarr").attrs["identity"]["compute"]["dtype"] == "float64"
    assert planned == ["float64", "float64"]  # one plan each, from the same builder
