"""Tests of lca_cli.training.train (the training loop behind scripts/train.py) and of the script itself."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from lca_cli.computation.config import load_config, parse_config
from lca_cli.computation.runner import compute
from lca_cli.errors import ConfigError, RunDirError, UsageError
from lca_cli.store.lcastore import LcaStore
from lca_cli.training.train import batch_indices, frozen_parameter_names, parse_train_options, train_run

REPO = Path(__file__).resolve().parents[2]

MLP = {
    "factory": "lca_cli.training.zoo.models:mlp",
    "kwargs": {"in_features": 36, "hidden": [8, 6], "out_features": 3, "seed": 0},
}
DATA = {
    "factory": "lca_cli.training.zoo.data:synthetic_images",
    "kwargs": {"n": 48, "size": 6, "classes": 3, "seed": 0},
}


def config(tmp_path: Path, **train: object) -> Path:
    """A tiny config file (MLP on synthetic images, a held-out set, a [compute] table and [train])."""
    text = f"""
[model]
factory = "{MLP["factory"]}"
kwargs = {{ in_features = 36, hidden = [8, 6], out_features = 3, seed = 0 }}

[data.train]
factory = "{DATA["factory"]}"
kwargs = {{ n = 48, size = 6, classes = 3, seed = 0 }}

[data.val]
factory = "{DATA["factory"]}"
kwargs = {{ n = 16, size = 6, classes = 3, seed = 1 }}

[loss]
name = "cross_entropy"

[compute]
max_splits = 4
device = "cpu"

[train]
"""
    base = {"iterations": 5, "batch_size": 8, "lr": 0.1, "seed": 0}
    base.update(train)
    for key, value in base.items():
        if isinstance(value, str):
            text += f'{key} = "{value}"\n'
        elif isinstance(value, list):
            text += f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]\n"
        else:
            text += f"{key} = {value}\n"
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


def checkpoints(run: Path) -> list[Path]:
    return sorted(run.glob("step_*.safetensors"))


def test_writes_a_checkpoint_per_iteration_with_step_metadata_and_lca_toml(tmp_path: Path) -> None:
    seen: list[tuple[int, int, float]] = []
    run = train_run(config(tmp_path), tmp_path / "run", progress=lambda i, n, loss: seen.append((i, n, loss)))
    files = checkpoints(run)
    assert [p.name for p in files] == [f"step_{i:08d}.safetensors" for i in range(6)]
    for i, p in enumerate(files):
        with safe_open(str(p), framework="pt") as f:
            assert f.metadata()["step"] == str(i)
            assert set(f.keys()) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"}
    assert [s[:2] for s in seen] == [(i, 5) for i in range(1, 6)]
    assert all(np.isfinite(s[2]) for s in seen)
    cfg = load_config(run / "lca.toml")  # strict parser: no [train], all tables round-trip
    assert cfg.train == {}
    assert cfg.model.factory == MLP["factory"] and dict(cfg.model.kwargs) == MLP["kwargs"]
    assert list(cfg.data) == ["train", "val"]
    assert cfg.data["val"].kwargs["seed"] == 1
    assert cfg.loss_name == "cross_entropy"
    assert cfg.compute.max_splits == 4 and cfg.compute.device == "cpu"
    assert "[train]" not in (run / "lca.toml").read_text()


def test_step_zero_is_the_initial_model_and_weights_move(tmp_path: Path) -> None:
    from lca_cli.training.zoo.models import mlp

    run = train_run(config(tmp_path), tmp_path / "run")
    init = mlp(**MLP["kwargs"]).state_dict()  # type: ignore[arg-type]
    first, last = load_file(str(checkpoints(run)[0])), load_file(str(checkpoints(run)[-1]))
    for k, v in init.items():
        assert torch.equal(first[k], v)
    assert not torch.equal(first["fc1.weight"], last["fc1.weight"])


def test_same_seed_same_checkpoints_other_seed_differs(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    a = train_run(cfg, tmp_path / "a")
    b = train_run(cfg, tmp_path / "b")
    c = train_run(cfg, tmp_path / "c", seed=1)
    for pa, pb in zip(checkpoints(a), checkpoints(b), strict=True):
        assert pa.read_bytes() == pb.read_bytes()
    last_a, last_c = load_file(str(checkpoints(a)[-1])), load_file(str(checkpoints(c)[-1]))
    assert not torch.equal(last_a["fc1.weight"], last_c["fc1.weight"])


def test_training_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_run(config(tmp_path), tmp_path / "run")
    assert torch.equal(torch.rand(3), expected)


def test_iterations_override(tmp_path: Path) -> None:
    run = train_run(config(tmp_path), tmp_path / "run", iterations=2)
    assert len(checkpoints(run)) == 3


@pytest.mark.parametrize("freeze_from", [0, 3])
def test_frozen_layers_are_bitwise_constant_and_get_lca_exactly_zero(tmp_path: Path, freeze_from: int) -> None:
    # Weight decay and momentum would both move a parameter whose gradient is merely zero: check neither does.
    cfg = config(tmp_path, freeze=["fc3"], freeze_from=freeze_from, weight_decay=0.01, iterations=6)
    run = train_run(cfg, tmp_path / "run")
    states = [load_file(str(p)) for p in checkpoints(run)]
    for state in states[freeze_from:]:
        for name in ("fc3.weight", "fc3.bias"):
            assert torch.equal(state[name], states[freeze_from][name])  # bitwise identical
    if freeze_from > 0:
        assert not torch.equal(states[0]["fc3.weight"], states[freeze_from]["fc3.weight"])
    assert not torch.equal(states[freeze_from]["fc2.weight"], states[-1]["fc2.weight"])

    result = compute(run, load_config(run / "lca.toml"), run / "lca.zarr")
    store = LcaStore.open(result.store)
    fc3 = [p for p in store.layout.params if p.name.startswith("fc3.")]
    others = [p for p in store.layout.params if not p.name.startswith("fc3.")]
    for first, rows in store.iter_lca("train"):
        frozen_rows = rows[max(0, freeze_from - first) :]  # pairs t >= freeze_from
        for p in fc3:
            assert np.all(frozen_rows[:, p.offset : p.stop] == 0.0)
        assert any(np.any(rows[:, p.offset : p.stop] != 0.0) for p in others)


def test_refuses_a_non_empty_run_dir_unless_overwrite(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    run = train_run(cfg, tmp_path / "run", iterations=3)
    compute(run, load_config(run / "lca.toml"), run / "lca.zarr")
    (run / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not empty"):
        train_run(cfg, run, iterations=2)
    assert len(checkpoints(run)) == 4  # untouched
    train_run(cfg, run, iterations=2, overwrite=True)
    assert len(checkpoints(run)) == 3  # old step 3 removed
    assert not (run / "lca.zarr").exists()
    assert (run / "notes.txt").read_text() == "mine"  # files that are not the run's are kept


def test_config_errors_leave_the_run_dir_alone(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        train_run(config(tmp_path, epochs=3), tmp_path / "run")
    with pytest.raises(ConfigError, match="matches no parameter"):
        train_run(config(tmp_path, freeze=["fc9"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError):
        train_run(config(tmp_path), tmp_path / "run", iterations=0)
    # A model that does not fit its data: one line before anything is written (it was a traceback after step 0
    # and lca.toml were, so that a rerun also needed --overwrite).
    misfit = config(tmp_path).read_text().replace("in_features = 36", "in_features = 35")
    (tmp_path / "misfit.toml").write_text(misfit)
    with pytest.raises(ConfigError, match="the model, data and loss do not fit: RuntimeError: mat1 and mat2"):
        train_run(tmp_path / "misfit.toml", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_parse_train_options_validates_values() -> None:
    assert parse_train_options({}).batch_size == 250
    assert parse_train_options({"optimizer": "adam"}).optimizer == "adam"
    for bad in ({"lr": 0}, {"lr": "x"}, {"iterations": 0}, {"optimizer": "lbfgs"}, {"freeze": "fc3"}, {"data": 3}):
        with pytest.raises(ConfigError):
            parse_train_options(bad)
    spec = parse_train_options({"data": {"factory": "a.b:c", "kwargs": {"n": 1}}}).data
    assert spec is not None and spec.factory == "a.b:c" and dict(spec.kwargs) == {"n": 1}


def test_train_data_table_overrides_the_evaluation_set(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "model": MLP,
            "data": {"factory": DATA["factory"], "kwargs": {"n": 4, "size": 6, "classes": 3}},
            "train": {"iterations": 2, "batch_size": 32, "data": DATA},
        }
    )
    run = train_run(cfg, tmp_path / "run")  # batch 32 > 4 eval samples: only works with the bigger train data
    assert len(checkpoints(run)) == 3
    assert load_config(run / "lca.toml").data["train"].kwargs["n"] == 4


def test_batch_norm_running_stats_update_during_training(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "model": {"factory": "lca_cli.training.zoo.models:resnet20", "kwargs": {"num_classes": 3}},
            "data": {"factory": DATA["factory"], "kwargs": {"n": 8, "channels": 3, "size": 8, "classes": 3}},
            "train": {"iterations": 1, "batch_size": 4},
        }
    )
    run = train_run(cfg, tmp_path / "run")
    s0, s1 = (load_file(str(p)) for p in checkpoints(run))
    assert not torch.equal(s0["bn1.running_mean"], s1["bn1.running_mean"])
    assert int(s1["bn1.num_batches_tracked"]) == 1


def test_batch_indices_cover_each_epoch_once() -> None:
    gen = torch.Generator().manual_seed(0)
    it = batch_indices(10, 4, gen)
    first = torch.cat([next(it) for _ in range(5)])  # 20 indices = two epochs
    assert sorted(first[:10].tolist()) == list(range(10))
    assert sorted(first[10:].tolist()) == list(range(10))


def test_frozen_parameter_names_match_whole_components() -> None:
    names = ["layer1.0.w", "layer10.w", "fc.weight", "fc.bias"]
    assert frozen_parameter_names(names, ["layer1"]) == ["layer1.0.w"]
    assert frozen_parameter_names(names, ["fc"]) == ["fc.weight", "fc.bias"]
    assert frozen_parameter_names(names, ["fc.bias"]) == ["fc.bias"]


def _script_main():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("lca_train_script", REPO / "scripts" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_trains_and_reports_errors_in_one_line(tmp_path: Path) -> None:
    main = _script_main()
    cfg = config(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(main, [str(cfg), str(tmp_path / "run"), "--iterations", "2", "-q"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == ""
    assert "Wrote 3 checkpoints" in ok.stderr and len(ok.stderr.strip().splitlines()) == 1
    again = runner.invoke(main, [str(cfg), str(tmp_path / "run")])
    assert again.exit_code == RunDirError.exit_code
    assert again.stderr.strip().startswith("Error:") and len(again.stderr.strip().splitlines()) == 1
    bad = runner.invoke(main, [str(tmp_path / "missing.toml"), str(tmp_path / "run2")])
    assert bad.exit_code == ConfigError.exit_code and bad.stderr.startswith("Error:")


@pytest.mark.slow
def test_script_runs_as_a_program(tmp_path: Path) -> None:
    script = REPO / "scripts" / "train.py"
    done = subprocess.run(
        [sys.executable, str(script), str(config(tmp_path)), str(tmp_path / "run"), "--iterations", "1", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert len(checkpoints(tmp_path / "run")) == 2
