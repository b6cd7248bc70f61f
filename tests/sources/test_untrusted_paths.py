"""Paths and numbers that come from a run's files are data: confined to the run, checked before use (issue 22).

Before: a shard index naming ``../../../decoy/secret.safetensors`` or an absolute path was read with no note
(and ``--follow --prune`` deleted the decoy), a step beyond int64 crashed with exit 70, and a valid
checkpoint whose name is not UTF-8 was called unreadable ("delete or re-save it").
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cli
from runs import make_tiny_run
from safetensors.torch import load_file, save_file

from lca_cli.errors import EXIT_CODES


def one_line(code: int, err: str, expected: str, *needles: str) -> str:
    assert code == EXIT_CODES[expected], (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("paths"), steps=3)


def folder_run(flat: Path, where: Path) -> Path:
    """The flat run as Hugging Face-style sharded step folders: checkpoint-N/ with an index and one shard."""
    run = where / "run"
    run.mkdir(parents=True)
    for name in ("lca.toml", "tinyfactories.py"):
        shutil.copy(flat / name, run / name)
    for i, path in enumerate(sorted(flat.glob("step_*.safetensors"))):
        folder = run / f"checkpoint-{i}"
        folder.mkdir()
        shard = "model-00001-of-00001.safetensors"
        tensors = load_file(path)
        save_file(tensors, folder / shard)
        index = {"metadata": {}, "weight_map": dict.fromkeys(tensors, shard)}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return run


@pytest.fixture
def decoy(tmp_path: Path) -> Path:
    folder = tmp_path / "decoy"
    folder.mkdir()
    path = folder / "secret.safetensors"
    path.write_bytes(b"not lca's to read or delete")
    return path


def point_index(folder: Path, target: str) -> None:
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"] = dict.fromkeys(index["weight_map"], target)
    index_path.write_text(json.dumps(index))


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_a_shard_index_naming_a_file_outside_is_refused(
    capsys: pytest.CaptureFixture[str], flat_run: Path, tmp_path: Path, decoy: Path, how: str
) -> None:
    run = folder_run(flat_run, tmp_path / "a" / "b")  # run/checkpoint-1/../../../decoy is tmp_path/a/decoy
    victim = run / "checkpoint-1"
    if how == "relative":
        relative = Path(os.path.relpath(decoy, victim))
        assert relative.parts[0] == ".."
        target = str(relative)
    else:
        target = str(decoy)
    point_index(victim, target)
    before = decoy.read_bytes()
    code, out, err = run_cli(capsys, "compute", run, "--quiet")
    one_line(code, err, "checkpoint", "outside", "checkpoint-1")
    assert out == "" and decoy.read_bytes() == before


def test_a_model_file_linking_outside_the_run_is_refused(
    capsys: pytest.CaptureFixture[str], flat_run: Path, tmp_path: Path, decoy: Path
) -> None:
    run = folder_run(flat_run, tmp_path / "x")
    victim = run / "checkpoint-2"
    shard = victim / "model-00001-of-00001.safetensors"
    shutil.copy(shard, decoy)
    shard.unlink()
    shard.symlink_to(decoy)
    code, _, err = run_cli(capsys, "compute", run, "--quiet")
    one_line(code, err, "checkpoint", "outside", "checkpoint-2")
    assert decoy.exists()


def test_a_symlinked_step_folder_is_read(capsys: pytest.CaptureFixture[str], flat_run: Path, tmp_path: Path) -> None:
    """A step folder that links to a folder outside the run is read (its files are its own); never pruned."""
    run = folder_run(flat_run, tmp_path / "x")
    elsewhere = tmp_path / "elsewhere"
    (run / "checkpoint-3").rename(elsewhere)
    (run / "checkpoint-3").symlink_to(elsewhere, target_is_directory=True)
    code, _, err = run_cli(capsys, "compute", run, "--quiet")
    assert code == 0, err
    assert (elsewhere / "model-00001-of-00001.safetensors").exists()


def test_a_step_beyond_int64_is_one_line(capsys: pytest.CaptureFixture[str], flat_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(flat_run, run, ignore=shutil.ignore_patterns("*.zarr"))
    last = sorted(run.glob("step_*.safetensors"))[-1]
    save_file(load_file(last), last, metadata={"step": str(2**70)})
    code, _, err = run_cli(capsys, "compute", run, "--quiet")
    one_line(code, err, "checkpoint", "out of range", last.name)


def test_a_name_that_is_not_utf8_says_so(capsys: pytest.CaptureFixture[str], flat_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(flat_run, run, ignore=shutil.ignore_patterns("*.zarr"))
    odd = os.fsdecode(os.fsencode(run) + b"/step_\xff00000002.safetensors")
    os.rename(run / "step_00000002.safetensors", odd)
    code, _, err = run_cli(capsys, "compute", run, "--quiet")
    line = one_line(code, err, "checkpoint", "not valid UTF-8", "rename it", "\\xff")
    assert "re-save" not in line


def test_under_follow_a_refused_index_stops_at_once(
    capsys: pytest.CaptureFixture[str], flat_run: Path, tmp_path: Path, decoy: Path
) -> None:
    """--follow waited 30 minutes (its idle timeout) on a refused index as if it were a file being written."""
    import signal
    import time

    run = folder_run(flat_run, tmp_path / "a" / "b")
    point_index(run / "checkpoint-1", str(decoy))
    before = decoy.read_bytes()

    def ring(*_: object) -> None:
        raise TimeoutError("--follow kept waiting on a refused checkpoint")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(60)
    start = time.monotonic()
    try:
        code, _, err = run_cli(capsys, "compute", run, "--follow", "--until", "3", "--prune", "--quiet")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    one_line(code, err, "checkpoint", "outside", "checkpoint-1")
    assert time.monotonic() - start < 30
    assert decoy.read_bytes() == before
