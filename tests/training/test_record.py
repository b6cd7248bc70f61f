"""The training-side writer: names, metadata, atomic writes, copies, background errors, lca.toml."""

from __future__ import annotations

import math
import threading
import tomllib
from pathlib import Path

import pytest
import reference
import safetensors.torch
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lca_cli.computation.config import FactorySpec, load_config
from lca_cli.computation.follow import END_MARKER
from lca_cli.errors import LcaError
from lca_cli.sources import find_checkpoints, read_checkpoint
from lca_cli.training.record import CheckpointWriter, checkpoint_name, dump_toml, write_run_config


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_checkpoint_name() -> None:
    assert checkpoint_name(42) == "step_00000042.safetensors"
    assert checkpoint_name(0) == "step_00000000.safetensors"
    assert checkpoint_name(7, digits=3) == "step_007.safetensors"
    assert checkpoint_name(123456789) == "step_123456789.safetensors"  # wider than the padding: still right


@pytest.mark.parametrize("background", [True, False])
def test_writes_names_metadata_and_state(tmp_path: Path, background: bool) -> None:
    model = reference.bn_mlp(seed=0)
    with CheckpointWriter(tmp_path / "run", background=background) as ckpt:
        paths = [ckpt.save(model, step) for step in (0, 5, 10)]
        ckpt.save({"w": torch.arange(3.0)}, step=11)  # a plain mapping works too
    assert [p.name for p in paths] == [checkpoint_name(s) for s in (0, 5, 10)]
    for p, step in zip(paths, (0, 5, 10), strict=True):
        assert metadata(p) == {"step": str(step)}
    state = load_file(str(paths[0]))
    assert state.keys() == model.state_dict().keys()  # parameters and buffers (BatchNorm statistics)
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v)
    assert [r.step for r in find_checkpoints(tmp_path / "run")] == [0, 5, 10, 11]


def test_background_and_foreground_files_are_identical(tmp_path: Path) -> None:
    for mode in ("bg", "fg"):
        net = reference.tanh_mlp(seed=0)
        with CheckpointWriter(tmp_path / mode, background=mode == "bg") as ckpt:
            for step in range(3):
                ckpt.save(net, step)
                with torch.no_grad():
                    for p in net.parameters():
                        p.mul_(0.9).add_(0.01)
    names = sorted(p.name for p in (tmp_path / "fg").iterdir())
    ends = [END_MARKER, *(checkpoint_name(s) for s in range(3))]  # the end marker: training ended
    assert names == sorted(p.name for p in (tmp_path / "bg").iterdir()) == sorted(ends)
    for name in names:
        assert (tmp_path / "bg" / name).read_bytes() == (tmp_path / "fg" / name).read_bytes()


def test_saved_tensors_are_copies_in_background_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = safetensors.torch.save_file
    release = threading.Event()

    def slow_save(*args, **kwargs):
        assert release.wait(10)  # the writer thread runs only after the loop has changed the weights
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", slow_save)
    model = reference.tanh_mlp(seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with CheckpointWriter(tmp_path, background=True) as ckpt:
        path = ckpt.save(model, 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # the optimiser step, in place
        release.set()
        ckpt.flush()
    saved = load_file(str(path))
    for k, v in before.items():
        assert torch.equal(saved[k], v), k


def test_final_name_appears_only_when_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = safetensors.torch.save_file
    seen: list[tuple[str, bool]] = []

    def watching_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        name = Path(filename).name
        seen.append((name, (tmp_path / checkpoint_name(int(metadata["step"]))).exists()))

    monkeypatch.setattr(safetensors.torch, "save_file", watching_save)
    with CheckpointWriter(tmp_path) as ckpt:
        ckpt.save(reference.linear_model(), 3)
    # Serialised to a hidden temporary name; the final name did not exist while writing.
    assert seen == [(".step_00000003.safetensors.partial", False)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [END_MARKER, "step_00000003.safetensors"]


@pytest.mark.parametrize("background", [True, False])
def test_failed_write_leaves_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, background: bool) -> None:
    def failing_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x10\x00\x00\x00half a header")  # part of the file, then the disk fills up
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    model = reference.linear_model()
    ckpt = CheckpointWriter(tmp_path, background=background)
    if background:
        ckpt.save(model, 1)  # returns at once; the failure happens in the writer thread
        with pytest.raises(LcaError, match="No space left on device"):
            ckpt.flush()
        with pytest.raises(LcaError, match="failed earlier"):
            ckpt.save(model, 2)
        with pytest.raises(LcaError):
            ckpt.close()
    else:
        with pytest.raises(LcaError, match="No space left"):
            ckpt.save(model, 1)
        ckpt.close()
    assert not list(tmp_path.glob("step_*.safetensors"))
    assert list(tmp_path.iterdir()) == []  # the half-written temporary file is removed too
    assert find_checkpoints(tmp_path) == []


def test_partial_files_are_ignored_next_to_real_ones(tmp_path: Path) -> None:
    with CheckpointWriter(tmp_path) as ckpt:
        ckpt.save(reference.linear_model(), 0)
        ckpt.save(reference.linear_model(), 1)
    (tmp_path / ".step_00000002.safetensors.partial").write_bytes(b"junk")
    refs = find_checkpoints(tmp_path)
    assert [r.step for r in refs] == [0, 1]
    assert read_checkpoint(refs[1]).keys() == reference.linear_model().state_dict().keys()


def test_close_is_idempotent_and_context_manager_closes(tmp_path: Path) -> None:
    ckpt = CheckpointWriter(tmp_path)
    ckpt.save(reference.linear_model(), 0)
    ckpt.close()
    ckpt.close()
    assert (tmp_path / checkpoint_name(0)).exists()


def test_write_run_config_round_trip(tmp_path: Path) -> None:
    path = write_run_config(
        tmp_path / "run",
        model="reference:tanh_mlp",
        model_kwargs={"hidden": 16, "seed": 3, "widths": [1, 2], "name": 'a "quoted" \\ name', "flag": True},
        data={
            "train": "reference:blobs",
            "val": {"factory": "reference:blobs", "kwargs": {"n": 50, "seed": 1, "opts": {"a": 1.5}}},
        },
        loss="mse",
        compute={"max_splits": 8, "tolerance": 1e-6, "dtype": "float64"},
    )
    assert path == tmp_path / "run" / "lca.toml"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # the temporary file is gone
    cfg = load_config(path)
    assert cfg.model == FactorySpec(
        "reference:tanh_mlp",
        {"hidden": 16, "seed": 3, "widths": [1, 2], "name": 'a "quoted" \\ name', "flag": True},
    )
    assert dict(cfg.data) == {
        "train": FactorySpec("reference:blobs", {}),
        "val": FactorySpec("reference:blobs", {"n": 50, "seed": 1, "opts": {"a": 1.5}}),
    }
    assert cfg.loss_name == "mse" and cfg.loss_factory is None
    assert cfg.compute.max_splits == 8 and cfg.compute.tolerance == 1e-6 and cfg.compute.dtype == "float64"
    assert cfg.base_dir == path.parent.resolve()


def test_write_config_single_set_and_loss_factory(tmp_path: Path) -> None:
    with CheckpointWriter(tmp_path) as ckpt:
        ckpt.write_config(model="m:build", data="d:load", data_kwargs={"split": "test"}, loss="pkg.losses:fn")
    cfg = load_config(tmp_path / "lca.toml")
    assert dict(cfg.data) == {"train": FactorySpec("d:load", {"split": "test"})}
    assert cfg.loss_name is None and cfg.loss_factory == "pkg.losses:fn"


def test_dump_toml_values() -> None:
    doc = {
        "t": {
            "int": -3,
            "float": 0.1,
            "tiny": 1e-300,
            "nan": math.nan,
            "inf": -math.inf,
            "s": "line\nbreak",
            "empty": {},
            "nested": {"a": [1, 2], "b c": "x"},
            "dotted.key": 1,
        },
        "data.val": {"factory": "a:b"},
    }
    back = tomllib.loads(dump_toml(doc))
    t = back["t"]
    assert t["int"] == -3 and t["float"] == 0.1 and t["tiny"] == 1e-300
    assert math.isnan(t["nan"]) and t["inf"] == -math.inf
    assert t["s"] == "line\nbreak" and t["empty"] == {} and t["nested"] == {"a": [1, 2], "b c": "x"}
    assert t["dotted.key"] == 1
    assert back["data"]["val"] == {"factory": "a:b"}
    with pytest.raises(TypeError):
        dump_toml({"t": {"x": object()}})


# -- refusals made when writing, not when computing -------------------------------------------------------------


def test_folder_with_another_runs_checkpoints_is_refused_unless_appending(tmp_path: Path) -> None:
    from lca_cli.errors import RunDirError

    with CheckpointWriter(tmp_path / "run") as ckpt:
        ckpt.save(reference.linear_model(), 0)
        ckpt.save(reference.linear_model(), 1)
    with pytest.raises(RunDirError, match=r"already holds 2 checkpoint\(s\), steps 0..1.*append=True"):
        CheckpointWriter(tmp_path / "run")
    with CheckpointWriter(tmp_path / "run", append=True) as ckpt:
        ckpt.save(reference.linear_model(), 2)
    assert [r.step for r in find_checkpoints(tmp_path / "run")] == [0, 1, 2]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("no checkpoints here")
    CheckpointWriter(tmp_path / "other").close()  # a folder without checkpoints is fine


def test_write_config_refuses_main_factories_and_bad_compute_options(tmp_path: Path) -> None:
    from lca_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="__main__ is not your script"):
        write_run_config(tmp_path, model="__main__:build", data="d:load")
    with pytest.raises(ConfigError, match="max-splits: 3 is not a power of two"):
        write_run_config(tmp_path, model="m:build", data="d:load", compute={"max_splits": 3})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) max_split"):
        write_run_config(tmp_path, model="m:build", data="d:load", compute={"max_split": 4})
    with pytest.raises(ConfigError, match="'hinge' is not one of"):
        write_run_config(tmp_path, model="m:build", data="d:load", loss="hinge")
    assert not (tmp_path / "lca.toml").exists()


def test_write_config_refuses_a_factory_in_the_running_training_script(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "train_here.py"
    script.write_text(
        "import sys\n"
        "from lca_cli.training.record import write_run_config\n"
        "from lca_cli.errors import ConfigError\n"
        "def build():\n    return None\n"
        "try:\n"
        "    write_run_config(sys.argv[1], model='train_here:build', data='train_here:build')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert "is defined in the running script" in done.stdout and "run the script" in done.stdout, done
    assert not (tmp_path / "run" / "lca.toml").exists()


def test_tied_model_is_saved_once_per_shared_tensor(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5))
    net[1].weight = net[0].weight
    with CheckpointWriter(tmp_path, background=False) as ckpt:
        path = ckpt.save(net, 0)
    saved = load_file(str(path))
    assert set(saved) == {"0.weight", "1.bias"} and torch.equal(saved["0.weight"], net[0].weight.detach())


def test_end_marker_only_when_training_finished(tmp_path: Path) -> None:
    with CheckpointWriter(tmp_path / "done") as ckpt:
        ckpt.save(reference.linear_model(), 0)
    assert (tmp_path / "done" / END_MARKER).exists()

    with pytest.raises(RuntimeError, match="diverged"), CheckpointWriter(tmp_path / "raised") as ckpt:
        ckpt.save(reference.linear_model(), 0)
        ckpt.save(reference.linear_model(), 1)
        raise RuntimeError("diverged")
    # what was saved is on disk (a rerun with append=True continues), but training did not finish
    assert [r.step for r in find_checkpoints(tmp_path / "raised")] == [0, 1]
    assert not (tmp_path / "raised" / END_MARKER).exists()


def test_refused_factory_in_the_running_script_leaves_no_end_marker(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "train_here.py"
    script.write_text(
        "import sys, torch\n"
        "from lca_cli.training.record import CheckpointWriter\n"
        "from lca_cli.errors import ConfigError\n"
        "def build():\n    return torch.nn.Linear(2, 2)\n"
        "try:\n"
        "    with CheckpointWriter(sys.argv[1]) as ckpt:\n"
        "        ckpt.save(build(), 0)\n"
        "        ckpt.write_config(model='train_here:build', data='train_here:build')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert "is defined in the running script" in done.stdout, done
    assert not (tmp_path / "run" / "lca.toml").exists()
    assert not (tmp_path / "run" / END_MARKER).exists()


@pytest.mark.parametrize("background", [True, False])
def test_second_save_of_a_step_is_refused(tmp_path: Path, background: bool) -> None:
    from lca_cli.errors import UsageError

    model = reference.linear_model()
    with CheckpointWriter(tmp_path, background=background) as ckpt:
        ckpt.save(model, 0)
        ckpt.flush()
        first = load_file(str(tmp_path / checkpoint_name(0)))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        with pytest.raises(UsageError, match=r"^step 0 was already saved to .*; each step is saved once") as info:
            ckpt.save(model, 0)
        assert "\n" not in str(info.value)
        ckpt.save(model, 1)
    # the first save of step 0 stands
    assert all(torch.equal(first[k], v) for k, v in load_file(str(tmp_path / checkpoint_name(0))).items())
