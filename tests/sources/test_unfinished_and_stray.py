"""A newest checkpoint still being written, and training state beside the checkpoints.

A cron job may fire while training writes its newest checkpoint: that one is treated as not yet written (a note,
the pairs before it computed, exit 0) whether it is a ``.safetensors`` or a ``torch.save`` file, and the next call
appends it once it is whole. An incomplete checkpoint before the newest stays an error (exit 5). Optimizer,
scheduler and RNG files saved beside the checkpoints, under any name, are ignored with a note.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from runs import make_tiny_run
from safetensors.torch import load_file

from lca_cli.cli.app import main
from lca_cli.errors import EXIT_CODES
from lca_cli.sources import find_checkpoints
from lca_cli.store.lcastore import LcaStore

STEPS = 4


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("src"), steps=STEPS)


def lca(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def run_of(source: Path, dst: Path, fmt: str) -> list[Path]:
    """The source run's checkpoints as ``fmt`` files in ``dst`` (with its lca.toml); their paths in step order."""
    dst.mkdir(parents=True)
    for name in ("lca.toml", "tinyfactories.py"):
        shutil.copy2(source / name, dst / name)
    paths = []
    for step in range(STEPS + 1):
        src = source / f"step_{step:08d}.safetensors"
        if fmt == "safetensors":
            paths.append(Path(shutil.copy2(src, dst / src.name)))
        else:  # the PyTorch tutorial's dict, one torch.save file per step
            paths.append(dst / f"ckpt_{step}.pt")
            torch.save({"model_state_dict": load_file(str(src)), "step": step}, paths[-1])
    return paths


def truncate(path: Path) -> bytes:
    """Cut ``path`` to half its length, as a writer interrupted half-way leaves it; returns the whole content."""
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    return whole


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_a_newest_checkpoint_being_written_waits_for_the_next_call(
    capsys: pytest.CaptureFixture[str], source: Path, tmp_path: Path, fmt: str
) -> None:
    paths = run_of(source, tmp_path / "run", fmt)
    whole = truncate(paths[-1])
    code, err = lca(capsys, "compute", tmp_path / "run")
    assert code == 0, err
    assert "is incomplete (still being written?): treated as not yet written" in err
    store = LcaStore.open(tmp_path / "run" / "lca.zarr")
    assert store.steps.tolist() == list(range(STEPS)) and store.done().all()
    paths[-1].write_bytes(whole)  # the writer finished: the next call appends its pair
    code, err = lca(capsys, "compute", tmp_path / "run")
    assert code == 0, err
    store = LcaStore.open(tmp_path / "run" / "lca.zarr")
    assert store.steps.tolist() == list(range(STEPS + 1)) and store.done().all()


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_an_incomplete_checkpoint_before_the_newest_is_an_error(
    capsys: pytest.CaptureFixture[str], source: Path, tmp_path: Path, fmt: str
) -> None:
    paths = run_of(source, tmp_path / "run", fmt)
    truncate(paths[2])
    code, err = lca(capsys, "compute", tmp_path / "run")
    assert code == EXIT_CODES["checkpoint"], err
    assert paths[2].name in err


def test_training_state_beside_the_checkpoints_is_ignored_whatever_its_name(
    capsys: pytest.CaptureFixture[str], source: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run_of(source, run, "pt")
    param = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    param.sum().backward()
    opt.step()  # momentum buffers: an optimizer state_dict holds float tensors
    torch.save(opt.state_dict(), run / "opt.pt")
    torch.save(opt.state_dict(), run / "opt_3.pt")  # the same step as ckpt_3.pt
    torch.save(torch.optim.lr_scheduler.StepLR(opt, 3).state_dict(), run / "sched.pt")  # no tensors
    torch.save(torch.get_rng_state(), run / "rng.pt")  # a uint8 tensor
    notes: list[str] = []
    assert [r.step for r in find_checkpoints(run, notes=notes)] == list(range(STEPS + 1))
    assert any("opt.pt (an optimizer state_dict)" in n and "training state, not model weights" in n for n in notes), (
        notes
    )
    code, err = lca(capsys, "compute", run)
    assert code == 0, err
    assert "training state, not model weights" in err
    assert LcaStore.open(run / "lca.zarr").steps.tolist() == list(range(STEPS + 1))
